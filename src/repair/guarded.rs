//! Copies that do not undo a write they cannot see.
//!
//! [`super::InFlight`] and [`super::Repairer::note_write`] see the writes
//! of this instance's clients only. Another instance of a fleet writing
//! the same key meanwhile is invisible to them: its mirrored write can
//! land on the target between this copy's read of the source and its
//! `RESTORE`, which would then erase it on one cache only (and its replies
//! agreed, so nothing would notice). So the copy is guarded by the
//! target's own state: before reading the source it takes a fingerprint of
//! the key on the target (its `DUMP` and absolute expiry, hashed by the
//! cache), and the write is a script that applies only when the key still
//! has that fingerprint. A changed key makes the copy read again.
//!
//! What remains is the other order: a write already in the source's
//! snapshot whose mirrored copy reaches the target after the guarded
//! write applies twice there; its mirror reply then disagrees with the
//! source's (for a write whose reply shows it: `INCR`, `RPUSH`...), and
//! the key is copied again.
//!
//! A cache that refuses scripts (an ACL without `EVAL`, scripting
//! disabled) gets the unguarded `RESTORE`, as before, with a warning once.

use bytes::Bytes;

use crate::protocol::Command;

/// `ARGV[1]`: `fp` answers the key's fingerprint (an empty string for no
/// key); `cas` runs the command `ARGV[3..]` on the key when its
/// fingerprint is still `ARGV[2]` and answers 1, else 0.
const SCRIPT: &str = "\
local d = redis.call('DUMP', KEYS[1]) \
local fp = '' \
if d then \
  local e = redis.pcall('PEXPIRETIME', KEYS[1]) \
  if type(e) == 'table' then e = '' end \
  fp = redis.sha1hex(d .. '|' .. tostring(e)) \
end \
if ARGV[1] == 'fp' then return fp end \
if fp ~= ARGV[2] then return 0 end \
redis.call(ARGV[3], KEYS[1], unpack(ARGV, 4)) \
return 1";

/// Reads the key's fingerprint on the target.
pub(super) fn fingerprint(key: &[u8]) -> Command {
    Command::from_args(&[&b"EVAL"[..], SCRIPT.as_bytes(), b"1", key, b"fp"])
}

/// `write` (`RESTORE key ...` or `DEL key`) applied only while the key's
/// fingerprint is still `fp`.
pub(super) fn guarded(write: &Command, fp: &[u8]) -> Command {
    let mut args: Vec<&[u8]> = vec![b"EVAL", SCRIPT.as_bytes(), b"1"];
    let mut w = write.args();
    let name = w.next().unwrap_or_default();
    let key = w.next().unwrap_or_default();
    args.extend([key, b"cas", fp, name]);
    args.extend(w);
    Command::from_args(&args)
}

/// What the target answered to [`fingerprint`].
#[derive(Debug, PartialEq)]
pub(super) enum Fingerprint {
    Is(Bytes),
    /// The cache runs no scripts for us: copy unguarded.
    NoScripts(String),
}

pub(super) fn read(reply: &Bytes) -> Fingerprint {
    match crate::protocol::value::decode(reply, 4) {
        Some(crate::protocol::Value::Str(fp)) => Fingerprint::Is(fp),
        _ => Fingerprint::NoScripts(crate::protocol::text(reply)),
    }
}

/// Whether the guarded write applied (`Some(false)`: the key changed).
pub(super) fn applied(reply: &[u8]) -> Option<bool> {
    match reply {
        b":1\r\n" => Some(true),
        b":0\r\n" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guarded_write_carries_the_write_after_the_fingerprint() {
        let w = Command::from_args(&[&b"RESTORE"[..], b"k", b"0", b"payload", b"REPLACE"]);
        let g = guarded(&w, b"abc");
        let args: Vec<&[u8]> = g.args().collect();
        assert_eq!(
            &args[2..],
            &[
                &b"1"[..],
                b"k",
                b"cas",
                b"abc",
                b"RESTORE",
                b"0",
                b"payload",
                b"REPLACE"
            ]
        );
        let d = guarded(&Command::from_args(&[&b"DEL"[..], b"k"]), b"");
        assert_eq!(
            d.args().skip(3).collect::<Vec<_>>(),
            [&b"k"[..], b"cas", b"", b"DEL"]
        );
    }

    #[test]
    fn replies_are_read() {
        assert_eq!(
            read(&Bytes::from_static(b"$2\r\nab\r\n")),
            Fingerprint::Is(Bytes::from_static(b"ab"))
        );
        assert!(matches!(
            read(&Bytes::from_static(b"-NOPERM no\r\n")),
            Fingerprint::NoScripts(_)
        ));
        assert_eq!(applied(b":1\r\n"), Some(true));
        assert_eq!(applied(b":0\r\n"), Some(false));
        assert_eq!(applied(b"-ERR x\r\n"), None);
    }
}
