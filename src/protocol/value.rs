//! Decoding of one complete, already framed reply into a value, for the few
//! places that must look inside a reply (the effect of a blocking pop, the
//! array an EXEC returned). The forwarding path never decodes: it sends the
//! framed bytes on unchanged.
//!
//! Both protocols decode to the same shapes: a RESP2 null bulk and a RESP3
//! null are both [`Value::Nil`], arrays, sets and pushes are all
//! [`Value::Array`], so a caller does not care which protocol the client
//! chose.

use bytes::Bytes;

use super::request::string2ll;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+` simple string, `$` bulk string, `=` verbatim string (format
    /// prefix removed), `(` big number, `,` double: the text as sent.
    Str(Bytes),
    Error(Bytes),
    Int(i64),
    Bool(bool),
    Nil,
    /// `*`, `~` (set) and `>` (push).
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Deepest nesting [`decode`] builds a [`Value`] for, whatever it is given:
/// decoding recurses, and a reply the scanner passes through may be far
/// deeper. A deeper reply is not decoded (it is not compared, and a write
/// whose effect it would tell is treated as of unknown outcome).
pub const MAX_DECODE_DEPTH: usize = 512;

/// Decodes the complete reply `frame` (as split off by the reply scanner).
/// `None` if it is malformed or not complete; `depth` bounds nesting (and
/// [`MAX_DECODE_DEPTH`] bounds `depth`).
pub fn decode(frame: &Bytes, depth: usize) -> Option<Value> {
    let mut pos = 0;
    let v = decode_at(frame, &mut pos, depth.min(MAX_DECODE_DEPTH))?;
    (pos == frame.len()).then_some(v)
}

fn line<'a>(frame: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let start = *pos;
    let cr = memchr::memchr(b'\r', frame.get(start..)?)?;
    let end = start + cr;
    if frame.get(end + 1) != Some(&b'\n') {
        return None;
    }
    *pos = end + 2;
    Some(&frame[start..end])
}

fn decode_at(frame: &Bytes, pos: &mut usize, depth: usize) -> Option<Value> {
    let ty = *frame.get(*pos)?;
    *pos += 1;
    let start = *pos;
    let text = line(frame, pos)?;
    let text_bytes = || frame.slice(start..start + text.len());
    Some(match ty {
        b'+' | b'(' | b',' => Value::Str(text_bytes()),
        b'-' => Value::Error(text_bytes()),
        b':' => Value::Int(string2ll(text)?),
        b'_' => Value::Nil,
        b'#' => Value::Bool(text == b"t"),
        b'$' | b'=' | b'!' => {
            let len = string2ll(text)?;
            if len < 0 {
                return Some(Value::Nil);
            }
            let len = usize::try_from(len).ok()?;
            let body_start = *pos;
            let body_end = body_start.checked_add(len)?;
            if frame.get(body_end..body_end + 2)? != b"\r\n" {
                return None;
            }
            *pos = body_end + 2;
            let mut body = frame.slice(body_start..body_end);
            match ty {
                b'!' => return Some(Value::Error(body)),
                // Verbatim strings start with a three-letter format and ':'.
                b'=' if body.len() >= 4 => body = body.slice(4..),
                _ => {}
            }
            Value::Str(body)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = string2ll(text)?;
            if n < 0 {
                return Some(Value::Nil);
            }
            if depth == 0 {
                return None;
            }
            // Never trust a length before the elements exist: cap the
            // preallocation by what the frame could possibly hold.
            let n = usize::try_from(n).ok()?;
            let cap = n.min(frame.len() / 3);
            if ty == b'%' || ty == b'|' {
                let mut map = Vec::with_capacity(cap);
                for _ in 0..n {
                    let k = decode_at(frame, pos, depth - 1)?;
                    let v = decode_at(frame, pos, depth - 1)?;
                    map.push((k, v));
                }
                if ty == b'|' {
                    // An attribute precedes the actual reply: skip it
                    // (one level down, so a chain of them is bounded too).
                    return decode_at(frame, pos, depth - 1);
                }
                Value::Map(map)
            } else {
                let mut items = Vec::with_capacity(cap);
                for _ in 0..n {
                    items.push(decode_at(frame, pos, depth - 1)?);
                }
                Value::Array(items)
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Option<Value> {
        decode(&Bytes::copy_from_slice(s.as_bytes()), 8)
    }

    fn s(x: &str) -> Value {
        Value::Str(Bytes::copy_from_slice(x.as_bytes()))
    }

    #[test]
    fn decodes_both_protocols_to_the_same_shapes() {
        assert_eq!(d("$-1\r\n"), Some(Value::Nil));
        assert_eq!(d("*-1\r\n"), Some(Value::Nil));
        assert_eq!(d("_\r\n"), Some(Value::Nil));
        assert_eq!(
            d("*2\r\n$1\r\nk\r\n$2\r\nv1\r\n"),
            Some(Value::Array(vec![s("k"), s("v1")]))
        );
        assert_eq!(
            d(">2\r\n+a\r\n:5\r\n"),
            Some(Value::Array(vec![s("a"), Value::Int(5)]))
        );
        assert_eq!(d("=8\r\ntxt:abcd\r\n"), Some(s("abcd")));
        assert_eq!(d(",1.5\r\n"), Some(s("1.5")));
        assert_eq!(
            d("%1\r\n+k\r\n:1\r\n"),
            Some(Value::Map(vec![(s("k"), Value::Int(1))]))
        );
        assert_eq!(d("|1\r\n+a\r\n+b\r\n:7\r\n"), Some(Value::Int(7)));
        assert_eq!(
            d("-ERR x\r\n"),
            Some(Value::Error(Bytes::from_static(b"ERR x")))
        );
    }

    #[test]
    fn rejects_truncated_malformed_and_too_deep() {
        assert_eq!(d("$3\r\nab\r\n"), None);
        assert_eq!(d("*2\r\n+a\r\n"), None);
        assert_eq!(d(":x\r\n"), None);
        assert_eq!(
            d("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
            None
        );
        assert_eq!(d("+a\r\n+b\r\n"), None);
        // A huge declared length is not preallocated.
        assert_eq!(d("*99999999999\r\n"), None);
    }

    #[test]
    fn a_reply_deeper_than_decoding_goes_is_refused_without_recursing() {
        let mut deep = "*1\r\n".repeat(100_000);
        deep.push_str(":1\r\n");
        let frame = Bytes::from(deep);
        assert_eq!(decode(&frame, usize::MAX), None);
        let attrs = "|1\r\n+k\r\n+v\r\n".repeat(100_000) + ":1\r\n";
        assert_eq!(decode(&Bytes::from(attrs), usize::MAX), None);
    }
}
