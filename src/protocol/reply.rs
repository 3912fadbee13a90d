//! Upstream reply framing: finds where each complete RESP2/RESP3 reply ends
//! so its bytes can be forwarded unchanged.
//!
//! The scanner is resumable: a reply that arrives in many reads is scanned
//! once, each byte looked at no more than once (a 2 MB bulk is skipped by its
//! length, not walked). Aggregates are tracked with an explicit stack bounded
//! by a nesting limit, so a hostile or broken upstream cannot overflow the
//! thread stack. It does not decode values: callers that must look inside a
//! reply decode the framed bytes themselves.

use bytes::{Bytes, BytesMut};

use super::request::string2ll;

/// Deepest aggregate nesting accepted from an upstream. Most replies stay
/// under ten levels, but Redis itself sends far deeper ones (a Lua table
/// that contains itself comes back about 8,000 levels deep, ending in
/// `-ERR reached lua stack limit`), and the client must get them exactly.
/// The scanner is iterative and each level costs a few bytes of reply, so
/// the bound only stops a runaway stream.
pub const DEFAULT_MAX_DEPTH: usize = 1 << 20;

/// What the top-level frame is, as far as the proxy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// `-` or `!`: an error reply.
    Error,
    /// `>`: a RESP3 push frame, out of band: never the reply to a command.
    Push,
    /// Anything else.
    Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Bytes,
    pub kind: ReplyKind,
}

impl Reply {
    pub fn is_error(&self) -> bool {
        self.kind == ReplyKind::Error
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("invalid reply type byte 0x{0:02x}")]
    BadType(u8),
    #[error("invalid length in reply header")]
    BadLength,
    #[error("reply line not terminated by CRLF")]
    BadLineEnd,
    #[error("reply nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("streamed RESP3 replies are not supported")]
    Streamed,
}

/// Resumable reply scanner; one per upstream connection.
#[derive(Debug)]
pub struct ReplyScanner {
    max_depth: usize,
    /// Bytes of the buffer known to belong to the frame being scanned.
    pos: usize,
    /// When inside a bulk body: the offset just past its trailing CRLF.
    bulk_end: Option<usize>,
    /// Elements still expected at each open level; `stack[0]` is the root.
    stack: Vec<u64>,
    kind: Option<ReplyKind>,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        ReplyScanner::new(DEFAULT_MAX_DEPTH)
    }
}

impl ReplyScanner {
    pub fn new(max_depth: usize) -> ReplyScanner {
        ReplyScanner {
            max_depth,
            pos: 0,
            bulk_end: None,
            stack: Vec::new(),
            kind: None,
        }
    }

    /// Splits the next complete reply off the front of `buf`, or returns
    /// `Ok(None)` when it is not all there yet.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        if self.stack.is_empty() {
            if buf.is_empty() {
                return Ok(None);
            }
            self.stack.push(1);
        }
        loop {
            if let Some(end) = self.bulk_end {
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(ReplyError::BadLineEnd);
                }
                self.pos = end;
                self.bulk_end = None;
                if self.element_done() {
                    return Ok(Some(self.finish(buf)));
                }
                continue;
            }
            let Some(cr) = memchr::memchr(b'\r', &buf[self.pos..]) else {
                return Ok(None);
            };
            let line_end = self.pos + cr;
            if line_end + 1 >= buf.len() {
                return Ok(None);
            }
            if buf[line_end + 1] != b'\n' {
                return Err(ReplyError::BadLineEnd);
            }
            let ty = buf[self.pos];
            if line_end == self.pos {
                return Err(ReplyError::BadType(ty));
            }
            let header = &buf[self.pos + 1..line_end];
            let depth = self.stack.len();
            if depth == 1 && ty != b'|' && self.kind.is_none() {
                self.kind = Some(match ty {
                    b'-' | b'!' => ReplyKind::Error,
                    b'>' => ReplyKind::Push,
                    _ => ReplyKind::Value,
                });
            }
            let next = line_end + 2;
            if self.header(ty, header, next, depth)? {
                return Ok(Some(self.finish(buf)));
            }
        }
    }

    /// Takes one header line (type `ty`, its text `header`, the next line
    /// at `next`); true when it completed the frame.
    #[inline]
    fn header(
        &mut self,
        ty: u8,
        header: &[u8],
        next: usize,
        depth: usize,
    ) -> Result<bool, ReplyError> {
        match ty {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                self.pos = next;
                Ok(self.element_done())
            }
            b'$' | b'!' | b'=' => {
                if header == b"?" {
                    return Err(ReplyError::Streamed);
                }
                let len = string2ll(header).ok_or(ReplyError::BadLength)?;
                self.pos = next;
                if len >= 0 {
                    self.bulk_end = Some(next + len as usize + 2);
                    return Ok(false);
                }
                // RESP2 null bulk `$-1`.
                if ty != b'$' || len != -1 {
                    return Err(ReplyError::BadLength);
                }
                Ok(self.element_done())
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => self.aggregate(ty, header, next, depth),
            other => Err(ReplyError::BadType(other)),
        }
    }

    /// An aggregate's header: its elements are counted on the stack.
    #[inline]
    fn aggregate(
        &mut self,
        ty: u8,
        header: &[u8],
        next: usize,
        depth: usize,
    ) -> Result<bool, ReplyError> {
        if header == b"?" {
            return Err(ReplyError::Streamed);
        }
        let n = string2ll(header).ok_or(ReplyError::BadLength)?;
        self.pos = next;
        if n < 0 {
            // RESP2 null array `*-1`.
            if ty != b'*' || n != -1 {
                return Err(ReplyError::BadLength);
            }
            return Ok(self.element_done());
        }
        let mut n = n as u64;
        if ty == b'%' || ty == b'|' {
            n *= 2;
        }
        if ty == b'|' {
            // An attribute annotates the element after it and is not
            // counted as one itself.
            *self.stack.last_mut().expect("root level") += 1;
        }
        if n == 0 {
            return Ok(self.element_done());
        }
        if depth > self.max_depth {
            return Err(ReplyError::TooDeep(self.max_depth));
        }
        self.stack.push(n);
        Ok(false)
    }

    /// Marks one element complete; true when the whole frame is.
    fn element_done(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return false;
            }
            self.stack.pop();
        }
        true
    }

    fn finish(&mut self, buf: &mut BytesMut) -> Reply {
        let bytes = buf.split_to(self.pos).freeze();
        let kind = self.kind.take().unwrap_or(ReplyKind::Value);
        self.pos = 0;
        Reply { bytes, kind }
    }
}

/// What an upstream frame is, for a connection that has subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameKind {
    Message,
    Confirmation,
    Other,
}

/// Classifies an array or push frame by its first element, a bulk string
/// read in place (this runs for every message: no decoding, no allocation).
pub fn frame_kind(frame: &[u8]) -> FrameKind {
    let first_bulk = || -> Option<&[u8]> {
        if !matches!(frame.first(), Some(b'*' | b'>')) {
            return None;
        }
        let header_end = memchr::memchr(b'\n', frame)? + 1;
        let rest = frame.get(header_end..)?;
        let len_end = memchr::memchr(b'\r', rest)?;
        let len: usize = std::str::from_utf8(rest.strip_prefix(b"$")?.get(..len_end - 1)?)
            .ok()?
            .parse()
            .ok()?;
        rest.get(len_end + 2..len_end + 2 + len)
    };
    let Some(kind) = first_bulk() else {
        return FrameKind::Other;
    };
    match kind {
        b"message" | b"pmessage" | b"smessage" => FrameKind::Message,
        b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
        | b"sunsubscribe" => FrameKind::Confirmation,
        _ => FrameKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(input: &[u8]) -> Result<Vec<Vec<u8>>, ReplyError> {
        let mut s = ReplyScanner::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = s.next(&mut buf)? {
            out.push(r.bytes.to_vec());
        }
        assert!(
            buf.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(&buf)
        );
        Ok(out)
    }

    const FRAMES: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR bad\r\n",
        b":-12\r\n",
        b"$5\r\nhe\r\no\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n",
        b"_\r\n",
        b",3.14\r\n",
        b"#t\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"%2\r\n+first\r\n:1\r\n+second\r\n*1\r\n:2\r\n",
        b"~2\r\n+a\r\n+b\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n",
        b"*1\r\n|1\r\n+ttl\r\n:3\r\n+inner\r\n",
    ];

    #[test]
    fn every_frame_type_is_framed_exactly() {
        for f in FRAMES {
            assert_eq!(
                scan_all(f).unwrap(),
                vec![f.to_vec()],
                "{:?}",
                String::from_utf8_lossy(f)
            );
        }
        let all: Vec<u8> = FRAMES.concat();
        assert_eq!(
            scan_all(&all).unwrap(),
            FRAMES.iter().map(|f| f.to_vec()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn kinds() {
        let mut s = ReplyScanner::default();
        let mut buf =
            BytesMut::from(&b"-ERR x\r\n>2\r\n+a\r\n+b\r\n|1\r\n+a\r\n+b\r\n!1\r\nx\r\n:1\r\n"[..]);
        let kinds: Vec<_> = std::iter::from_fn(|| s.next(&mut buf).unwrap())
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                ReplyKind::Error,
                ReplyKind::Push,
                ReplyKind::Error,
                ReplyKind::Value
            ]
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = b"*1\r\n".repeat(10_000);
        let mut s = ReplyScanner::new(512);
        let mut buf = BytesMut::from(&deep[..]);
        assert_eq!(s.next(&mut buf), Err(ReplyError::TooDeep(512)));
    }

    #[test]
    fn the_default_depth_admits_what_redis_sends() {
        // What Redis 7 answers to a self-containing Lua table.
        let mut deep = b"*1\r\n".repeat(7_995);
        deep.extend_from_slice(b"-ERR reached lua stack limit\r\n");
        let mut s = ReplyScanner::default();
        let mut buf = BytesMut::from(&deep[..]);
        let r = s.next(&mut buf).expect("scanned").expect("complete");
        assert_eq!(&r.bytes[..], &deep[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn large_bulk_in_small_reads_is_scanned_once() {
        let body = vec![b'x'; 2_300_000];
        let mut frame = format!("${}\r\n", body.len()).into_bytes();
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b"\r\n");
        let mut s = ReplyScanner::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for chunk in frame.chunks(16 * 1024) {
            buf.extend_from_slice(chunk);
            assert!(got.is_none());
            got = s.next(&mut buf).unwrap();
            // Once the header is read, `pos` never moves back into the body.
            assert!(s.bulk_end.is_some() || got.is_some());
        }
        assert_eq!(got.unwrap().bytes.len(), frame.len());
    }

    #[test]
    fn malformed_replies() {
        assert_eq!(scan_all(b"?x\r\n"), Err(ReplyError::BadType(b'?')));
        assert_eq!(scan_all(b"$x\r\n"), Err(ReplyError::BadLength));
        assert_eq!(scan_all(b"$?\r\n"), Err(ReplyError::Streamed));
        assert_eq!(scan_all(b"+OK\rx"), Err(ReplyError::BadLineEnd));
        assert_eq!(scan_all(b"$1\r\nabc"), Err(ReplyError::BadLineEnd));
    }

    /// Generates a random RESP3 value with redis-protocol's encoder, the
    /// oracle for where a frame ends.
    fn arb_frame() -> impl Strategy<Value = redis_protocol::resp3::types::BytesFrame> {
        use redis_protocol::resp3::types::BytesFrame as F;
        let leaf = prop_oneof![
            any::<i64>().prop_map(|data| F::Number {
                data,
                attributes: None
            }),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(|d| F::BlobString {
                data: d.into(),
                attributes: None
            }),
            "[a-z ]{0,10}".prop_map(|s| F::SimpleString {
                data: s.into_bytes().into(),
                attributes: None
            }),
            "[A-Z]{1,5} [a-z]{0,10}".prop_map(|s| F::SimpleError {
                data: s.into(),
                attributes: None
            }),
            Just(F::Null),
            any::<bool>().prop_map(|data| F::Boolean {
                data,
                attributes: None
            }),
            (-1e6f64..1e6).prop_map(|data| F::Double {
                data,
                attributes: None
            }),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(|data| F::Array {
                    data,
                    attributes: None
                }),
                prop::collection::vec(inner.clone(), 0..5).prop_map(|data| F::Push {
                    data,
                    attributes: None
                }),
                prop::collection::vec((any::<i64>(), inner), 0..4).prop_map(|kv| F::Map {
                    data: kv
                        .into_iter()
                        .map(|(k, v)| (
                            F::Number {
                                data: k,
                                attributes: None
                            },
                            v
                        ))
                        .collect(),
                    attributes: None,
                }),
            ]
        })
    }

    fn encode(f: &redis_protocol::resp3::types::BytesFrame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        redis_protocol::resp3::encode::complete::extend_encode(&mut buf, f, false).unwrap();
        buf.to_vec()
    }

    proptest! {
        /// Frames of every type, concatenated and fed in random splits,
        /// come out one by one with their exact bytes.
        #[test]
        fn random_frames_in_random_splits(frames in prop::collection::vec(arb_frame(), 1..6), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
            let encoded: Vec<Vec<u8>> = frames.iter().map(encode).collect();
            let input = encoded.concat();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.push(input.len());
            points.sort();
            let mut s = ReplyScanner::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for pt in points {
                buf.extend_from_slice(&input[last..pt]);
                last = pt;
                while let Some(r) = s.next(&mut buf).unwrap() {
                    got.push(r.bytes.to_vec());
                }
            }
            prop_assert_eq!(got, encoded);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(prop_oneof![
            Just(b'*'), Just(b'$'), Just(b'%'), Just(b'|'), Just(b'>'), Just(b'\r'), Just(b'\n'),
            Just(b'1'), Just(b'-'), Just(b'2'), Just(b'0'), any::<u8>(),
        ], 0..200)) {
            let mut s = ReplyScanner::default();
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = s.next(&mut buf) {}
        }
    }
}
