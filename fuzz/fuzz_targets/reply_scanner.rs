//! Any bytes from an upstream, in any chunking, give whole replies, a
//! malformed-reply error or a request for more bytes: never a panic,
//! whatever the nesting (the default depth admits a million levels). The
//! frames are exactly the bytes they were cut from, and decoding one (for
//! comparisons and effects) never recurses past its own bound.
#![no_main]

use bytes::BytesMut;
use cutover::protocol::reply::DEFAULT_MAX_DEPTH;
use cutover::protocol::{value, ReplyScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut scanner = ReplyScanner::new(DEFAULT_MAX_DEPTH);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match scanner.next(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = value::decode(&frame.bytes, usize::MAX);
                    frames.extend_from_slice(&frame.bytes);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert_eq!(&frames[..], &input[..frames.len()], "frames are the input's bytes");
});
