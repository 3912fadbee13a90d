//! Client request framing: a flat, resumable parser for RESP multibulk and
//! inline commands that mirrors Redis 7's own `processMultibulkBuffer`,
//! `processInlineBuffer` and `sdssplitargs`, limits and error strings included.
//!
//! It never allocates from a length the client declared: arguments are
//! recorded as offsets into the frame as their bytes arrive, and a partial
//! frame keeps its progress so no byte is scanned twice. A multibulk frame is
//! forwarded upstream as the exact bytes the client sent; an inline command is
//! re-encoded as multibulk (upstream must tokenise it exactly as we did).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use super::ProtocolError;

/// Redis's `PROTO_INLINE_MAX_SIZE`: the longest inline request or
/// count line it waits for before giving up.
pub const INLINE_MAX_SIZE: usize = 64 * 1024;

/// Redis's default `proto-max-bulk-len`.
pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// One complete client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The bytes to forward upstream (the client's own for multibulk).
    raw: Bytes,
    /// `(start, end)` of each argument inside `raw`.
    args: SmallVec<[(u32, u32); 6]>,
}

impl Command {
    /// Builds a command by encoding `args` as a RESP multibulk.
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Command {
        let mut out =
            BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
        let mut offsets = SmallVec::new();
        put_header(&mut out, b'*', args.len());
        for a in args {
            let a = a.as_ref();
            put_header(&mut out, b'$', a.len());
            let start = out.len() as u32;
            out.extend_from_slice(a);
            offsets.push((start, out.len() as u32));
            out.extend_from_slice(b"\r\n");
        }
        Command {
            raw: out.freeze(),
            args: offsets,
        }
    }

    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args
            .get(i)
            .map(|&(s, e)| &self.raw[s as usize..e as usize])
    }

    /// Argument `i` sharing the command's buffer (no copy).
    pub fn arg_bytes(&self, i: usize) -> Option<Bytes> {
        self.args
            .get(i)
            .map(|&(s, e)| self.raw.slice(s as usize..e as usize))
    }

    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.args
            .iter()
            .map(|&(s, e)| &self.raw[s as usize..e as usize])
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &[u8] {
        self.arg(0).unwrap_or(b"")
    }
}

fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    out.put_u8(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Where a partial multibulk frame stopped.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes of the buffer belonging to the frame so far.
    pos: usize,
    /// Arguments still expected; 0 before the count line was read.
    remaining: usize,
    /// Length of the bulk whose header was read but whose body was not.
    bulk_len: Option<usize>,
    args: SmallVec<[(u32, u32); 6]>,
}

/// Resumable request parser. Feed it the connection's read buffer after each
/// read; it splits complete commands off the front.
#[derive(Debug)]
pub struct RequestParser {
    max_bulk_len: usize,
    progress: Progress,
}

impl Default for RequestParser {
    fn default() -> Self {
        RequestParser::new(DEFAULT_MAX_BULK_LEN)
    }
}

impl RequestParser {
    pub fn new(max_bulk_len: usize) -> RequestParser {
        RequestParser {
            max_bulk_len,
            progress: Progress::default(),
        }
    }

    /// Returns the next complete command, `Ok(None)` when more bytes are
    /// needed, or the protocol error Redis would reply with. Empty requests
    /// (`*0`, `*-1`, blank inline lines) are consumed silently, as Redis does.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, ProtocolError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            let parsed = if buf[0] == b'*' {
                self.parse_multibulk(buf)?
            } else {
                parse_inline(buf)?
            };
            match parsed {
                Parsed::Incomplete => return Ok(None),
                Parsed::Empty => continue,
                Parsed::Command(cmd) => return Ok(Some(cmd)),
            }
        }
    }

    fn parse_multibulk(&mut self, buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
        let p = &mut self.progress;
        if p.pos == 0 {
            let Some(line_end) = find_cr_line(buf, 0)? else {
                return incomplete_or(buf.len(), ProtocolError::TooBigMbulkCount);
            };
            let count =
                string2ll(&buf[1..line_end]).ok_or(ProtocolError::InvalidMultibulkLength)?;
            if count > i32::MAX as i64 {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            if count <= 0 {
                buf.advance(line_end + 2);
                return Ok(Parsed::Empty);
            }
            p.pos = line_end + 2;
            p.remaining = count as usize;
        }
        while p.remaining > 0 {
            let len = match p.bulk_len {
                Some(len) => len,
                None => {
                    let Some(line_end) = find_cr_line(buf, p.pos)? else {
                        return incomplete_or(buf.len() - p.pos, ProtocolError::TooBigBulkCount);
                    };
                    if buf[p.pos] != b'$' {
                        return Err(ProtocolError::ExpectedDollar(buf[p.pos]));
                    }
                    let len = string2ll(&buf[p.pos + 1..line_end])
                        .filter(|&n| n >= 0 && n as u64 <= self.max_bulk_len as u64)
                        .ok_or(ProtocolError::InvalidBulkLength)?
                        as usize;
                    p.pos = line_end + 2;
                    p.bulk_len = Some(len);
                    len
                }
            };
            // Redis does not check the two bytes after a bulk are CRLF; neither
            // do we, so the upstream sees exactly what Redis would have parsed.
            if buf.len() - p.pos < len + 2 {
                return Ok(Parsed::Incomplete);
            }
            let start = p.pos;
            p.args.push((start as u32, (start + len) as u32));
            p.pos += len + 2;
            p.bulk_len = None;
            p.remaining -= 1;
        }
        let done = std::mem::take(p);
        let raw = buf.split_to(done.pos).freeze();
        Ok(Parsed::Command(Command {
            raw,
            args: done.args,
        }))
    }
}

enum Parsed {
    Incomplete,
    Empty,
    Command(Command),
}

fn incomplete_or(pending: usize, err: ProtocolError) -> Result<Parsed, ProtocolError> {
    if pending > INLINE_MAX_SIZE {
        Err(err)
    } else {
        Ok(Parsed::Incomplete)
    }
}

/// Finds the `\r` ending the line that starts at `from`, as Redis does with
/// `strchr(.., '\r')`, and requires one more byte after it (which Redis skips
/// without checking it is `\n`). `Ok(None)`: not all there yet.
fn find_cr_line(buf: &[u8], from: usize) -> Result<Option<usize>, ProtocolError> {
    match memchr::memchr(b'\r', &buf[from..]) {
        Some(i) if from + i + 1 < buf.len() => Ok(Some(from + i)),
        _ => Ok(None),
    }
}

fn parse_inline(buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return incomplete_or(buf.len(), ProtocolError::TooBigInline);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let args = split_args(&buf[..line_end]).ok_or(ProtocolError::UnbalancedQuotes)?;
    buf.advance(nl + 1);
    if args.is_empty() {
        return Ok(Parsed::Empty);
    }
    Ok(Parsed::Command(Command::from_args(&args)))
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs`: whitespace-separated tokens, `"..."` with C-style
/// escapes (`\n \r \t \b \a \xHH`), `'...'` with only `\'`. A closing quote
/// must be followed by whitespace or the end. `None` means unbalanced quotes.
/// The line is a C string to Redis: a NUL byte ends it.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = match memchr::memchr(0, line) {
        Some(i) => &line[..i],
        None => line,
    };
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            let c = at(p);
            if inq {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && hex(at(p + 2)).is_some()
                    && hex(at(p + 3)).is_some()
                {
                    cur.push(hex(at(p + 2))? * 16 + hex(at(p + 3))?);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    cur.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else if insq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        if c != 0 {
                            p += 1;
                        }
                        break;
                    }
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    _ => cur.push(c),
                }
            }
            p += 1;
        }
        args.push(cur);
    }
}

/// Redis's `string2ll`: optional `-`, no `+`, no leading zeros, no spaces,
/// must fit in an i64.
pub fn string2ll(s: &[u8]) -> Option<i64> {
    match s {
        [] => None,
        [b'0'] => Some(0),
        [b'-', rest @ ..] => parse_positive(rest).and_then(|v| {
            if v <= i64::MAX as u64 + 1 {
                Some((v as i128).wrapping_neg() as i64)
            } else {
                None
            }
        }),
        _ => parse_positive(s).and_then(|v| i64::try_from(v).ok()),
    }
}

fn parse_positive(s: &[u8]) -> Option<u64> {
    let (&first, _) = s.split_first()?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>, usize) {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match p.parse(&mut buf) {
                Ok(Some(c)) => out.push(c.args().map(|a| a.to_vec()).collect()),
                Ok(None) => return (out, None, buf.len()),
                Err(e) => return (out, Some(e), buf.len()),
            }
        }
    }

    fn v(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_keeps_raw_bytes() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let cmd = RequestParser::default().parse(&mut buf).unwrap().unwrap();
        assert_eq!(cmd.raw().as_ref(), input);
        assert_eq!(cmd.name(), b"GET");
        assert_eq!(cmd.arg(1), Some(&b"k"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands_and_quotes() {
        let (cmds, err, _) = parse_all(b"SET k \"a b\\x41\\n\"\r\nget 'it\\'s'\n\r\n  \n");
        assert!(err.is_none());
        assert_eq!(
            cmds,
            vec![
                vec![b"SET".to_vec(), b"k".to_vec(), b"a bA\n".to_vec()],
                v(&["get", "it's"])
            ]
        );
    }

    #[test]
    fn inline_is_reencoded_as_multibulk() {
        let mut buf = BytesMut::from(&b"ping hello\r\n"[..]);
        let cmd = RequestParser::default().parse(&mut buf).unwrap().unwrap();
        assert_eq!(cmd.raw().as_ref(), b"*2\r\n$4\r\nping\r\n$5\r\nhello\r\n");
    }

    #[test]
    fn redis_error_strings() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "Protocol error: invalid multibulk length"),
            (
                b"*2147483648\r\n",
                "Protocol error: invalid multibulk length",
            ),
            (b"*1\r\nx\r\n", "Protocol error: expected '$', got 'x'"),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n$536870913\r\n",
                "Protocol error: invalid bulk length",
            ),
            (
                b"set \"k v\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"set \"k\"v\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
        ];
        for (input, want) in cases {
            let (_, err, _) = parse_all(input);
            assert_eq!(
                err.map(|e| e.to_string()).as_deref(),
                Some(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn oversized_lines_are_refused_without_waiting_forever() {
        let long = vec![b'a'; INLINE_MAX_SIZE + 1];
        assert_eq!(parse_all(&long).1, Some(ProtocolError::TooBigInline));
        let mut mb = b"*1".to_vec();
        mb.extend(std::iter::repeat_n(b'1', INLINE_MAX_SIZE));
        assert_eq!(parse_all(&mb).1, Some(ProtocolError::TooBigMbulkCount));
    }

    #[test]
    fn empty_requests_are_skipped() {
        let (cmds, err, rest) = parse_all(b"*0\r\n*-1\r\n\r\n*1\r\n$4\r\nPING\r\n");
        assert!(err.is_none());
        assert_eq!(cmds, vec![v(&["PING"])]);
        assert_eq!(rest, 0);
    }

    #[test]
    fn huge_declared_lengths_allocate_nothing_up_front() {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*2147483647\r\n$536870912\r\nabc"[..]);
        assert_eq!(p.parse(&mut buf), Ok(None));
        assert!(p.progress.args.capacity() <= 6);
    }

    #[test]
    fn string2ll_matches_redis() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"-1"), Some(-1));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"9223372036854775808",
        ] {
            assert_eq!(string2ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn arb_command() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6).prop_map(|args| {
            let raw = Command::from_args(&args).raw().to_vec();
            (raw, args)
        })
    }

    proptest! {
        /// The same bytes in any chunking give the same commands.
        #[test]
        fn split_point_invariance(cmds in prop::collection::vec(arb_command(), 1..8), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let input: Vec<u8> = cmds.iter().flat_map(|(raw, _)| raw.clone()).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.push(input.len());
            points.sort();
            let mut parser = RequestParser::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for pt in points {
                buf.extend_from_slice(&input[last..pt]);
                last = pt;
                while let Some(c) = parser.parse(&mut buf).unwrap() {
                    let reencoded = Command::from_args(&c.args().collect::<Vec<_>>());
                    prop_assert_eq!(c.raw(), reencoded.raw());
                    got.push(c.args().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            let want: Vec<_> = cmds.into_iter().map(|(_, a)| a).collect();
            prop_assert_eq!(got, want);
            prop_assert!(buf.is_empty());
        }

        /// Any byte sequence yields commands, an error or a request for more.
        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_all(&input);
        }

        #[test]
        fn arbitrary_multibulk_like_bytes_never_panic(parts in prop::collection::vec(prop_oneof![
            Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()), Just(b"-1".to_vec()),
            Just(b"3".to_vec()), Just(b"99999999999".to_vec()), Just(b"abc".to_vec()), Just(b"\"".to_vec()),
        ], 0..40)) {
            let input: Vec<u8> = parts.concat();
            let _ = parse_all(&input);
        }
    }
}
