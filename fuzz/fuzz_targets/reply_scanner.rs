//! Any bytes from an upstream give whole replies, a malformed-reply error or
//! a request for more bytes: never a panic, whatever the nesting.
#![no_main]

use bytes::BytesMut;
use cutover::protocol::ReplyScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scanner = ReplyScanner::new(64);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = scanner.next(&mut buf) {}
});
