//! Any bytes, in any chunking, give commands, a protocol error or a request
//! for more bytes: never a panic, never an allocation the input did not
//! pay for. Every command parsed is classified (key positions, route kind)
//! as the session would.
#![no_main]

use bytes::BytesMut;
use cutover::commands;
use cutover::protocol::RequestParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size, so split points vary too.
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut parser = RequestParser::new(1 << 20);
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(cmd)) => {
                    let _ = commands::entry(&cmd).map(|e| e.traits.sticky_cursor);
                    if let Some(spec) = commands::lookup(&cmd) {
                        let _ = commands::classify(spec, &cmd);
                        let _ = commands::key_positions(spec, &cmd);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
