//! Type-aware copy: the fallback when the target refuses `RESTORE` (a
//! `DUMP` payload from a newer Redis than the target, or a target that
//! forbids the command, as managed services and ACLs may).
//!
//! The read is one `MULTI` on the source with every type's read command
//! for the key (`TYPE`, `PTTL`, `GET`, `HGETALL`, `LRANGE`, `SMEMBERS`,
//! `ZRANGE .. WITHSCORES`, `XRANGE`): atomic, and the ones of the wrong
//! type answer `WRONGTYPE` inside the `EXEC`. The write is one `MULTI` on
//! the target that builds the value under a temporary key, sets the TTL,
//! and renames it over the key (`RENAME`) or next to it (`RENAMENX`, which
//! never overwrites): the key is never seen half-built.
//!
//! Not copied: a stream's consumer groups and last-generated ID (entries
//! only), and module types (counted as failed).

use bytes::Bytes;

use crate::protocol::{Command, Value};

/// Elements per write command.
const CHUNK: usize = 500;
/// The index, among the `EXEC` results, of each read.
const TYPE: usize = 0;
const PTTL: usize = 1;

/// What a type-aware read found.
#[derive(Debug, PartialEq)]
pub enum Read {
    /// The key does not exist (expired or deleted).
    Gone,
    /// A type this copy cannot rebuild (a module type).
    Unsupported(String),
    Value(Typed),
}

#[derive(Debug, PartialEq)]
pub struct Typed {
    /// Remaining TTL in ms; -1: none.
    pub pttl: i64,
    /// The commands that rebuild the value under a key (the first
    /// argument after each command name is a placeholder key).
    pub build: Vec<Vec<Bytes>>,
    /// Payload bytes (for rate limits and reports).
    pub bytes: u64,
}

/// `MULTI`, the reads, `EXEC`.
pub fn read_commands(key: &[u8]) -> Vec<Command> {
    let c = |args: &[&[u8]]| Command::from_args(args);
    vec![
        c(&[b"MULTI"]),
        c(&[b"TYPE", key]),
        c(&[b"PTTL", key]),
        c(&[b"GET", key]),
        c(&[b"HGETALL", key]),
        c(&[b"LRANGE", key, b"0", b"-1"]),
        c(&[b"SMEMBERS", key]),
        c(&[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"]),
        c(&[b"XRANGE", key, b"-", b"+"]),
        c(&[b"EXEC"]),
    ]
}

/// Parses the `EXEC` reply to [`read_commands`]; `None` when it is not one.
pub fn parse(exec: &Value) -> Option<Read> {
    let results = exec.as_array()?;
    if results.len() != 8 {
        return None;
    }
    let kind = results[TYPE].as_bytes()?.clone();
    let Value::Int(pttl) = results[PTTL] else {
        return None;
    };
    let strings = |v: &Value| -> Option<Vec<Bytes>> {
        match v {
            Value::Array(items) => items.iter().map(|i| i.as_bytes().cloned()).collect(),
            Value::Map(pairs) => pairs
                .iter()
                .flat_map(|(k, v)| [k.as_bytes().cloned(), v.as_bytes().cloned()])
                .collect(),
            _ => None,
        }
    };
    let mut build: Vec<Vec<Bytes>> = Vec::new();
    let mut chunked = |name: &'static [u8], items: Vec<Bytes>, per: usize| {
        for chunk in items.chunks(CHUNK * per) {
            let mut args = vec![Bytes::from_static(name), Bytes::new()];
            args.extend(chunk.iter().cloned());
            build.push(args);
        }
    };
    match &kind[..] {
        b"none" => return Some(Read::Gone),
        b"string" => {
            chunked(b"SET", vec![results[2].as_bytes()?.clone()], 1);
        }
        b"hash" => {
            chunked(b"HSET", strings(&results[3])?, 2);
        }
        b"list" => {
            chunked(b"RPUSH", strings(&results[4])?, 1);
        }
        b"set" => {
            chunked(b"SADD", strings(&results[5])?, 1);
        }
        b"zset" => {
            // Member, score pairs; ZADD wants score, member.
            let items = strings(&results[6])?;
            let mut swapped = Vec::with_capacity(items.len());
            for pair in items.chunks(2) {
                let [m, s] = pair else { return None };
                swapped.extend([s.clone(), m.clone()]);
            }
            chunked(b"ZADD", swapped, 2);
        }
        b"stream" => {
            let entries = results[7].as_array()?;
            if entries.is_empty() {
                // An empty stream: made by adding an entry and deleting it.
                build.push(vec![
                    Bytes::from_static(b"XADD"),
                    Bytes::new(),
                    Bytes::from_static(b"0-1"),
                    Bytes::from_static(b"f"),
                    Bytes::from_static(b"v"),
                ]);
                build.push(vec![
                    Bytes::from_static(b"XDEL"),
                    Bytes::new(),
                    Bytes::from_static(b"0-1"),
                ]);
            }
            for e in entries {
                let [id, fields] = e.as_array()? else {
                    return None;
                };
                let mut args = vec![
                    Bytes::from_static(b"XADD"),
                    Bytes::new(),
                    id.as_bytes()?.clone(),
                ];
                args.extend(strings(fields)?);
                build.push(args);
            }
        }
        other => {
            return Some(Read::Unsupported(
                String::from_utf8_lossy(other).into_owned(),
            ))
        }
    }
    // What follows each command name and placeholder key is the value.
    let bytes = build
        .iter()
        .flat_map(|args| &args[2..])
        .map(|b| b.len() as u64)
        .sum();
    Some(Read::Value(Typed { pttl, build, bytes }))
}

/// The temporary key a value is built under: in `key`'s hash slot, so a
/// Redis Cluster takes the transaction that renames it onto `key`.
fn temp_key(key: &[u8]) -> Vec<u8> {
    use crate::routing::slot::key_slot;
    let mut t = b"__cutover_copy__:".to_vec();
    let slot = key_slot(key);
    if !key.is_empty() && !key.contains(&b'}') {
        // Untagged (or an unclosed tag): the whole key becomes the tag.
        t.push(b'{');
        t.extend_from_slice(key);
        t.push(b'}');
        return t;
    }
    t.extend_from_slice(key);
    if key_slot(&t) == slot {
        // The key's own tag hashes it.
        return t;
    }
    // A `}` with no tag before it: a suffix that lands in the slot.
    let base = t.len();
    for n in 0u32.. {
        t.truncate(base);
        t.extend_from_slice(format!(":{n}").as_bytes());
        if key_slot(&t) == slot {
            break;
        }
    }
    t
}

/// `MULTI`, the build under a temporary key, its TTL, `RENAME` (`replace`)
/// or `RENAMENX` onto `key`, cleanup, `EXEC`. With `RENAMENX`, the `EXEC`
/// result at [`renamed_at`] is 0 when `key` already existed (nothing
/// written).
pub fn write_commands(key: &[u8], typed: &Typed, replace: bool) -> Vec<Command> {
    let tmp = temp_key(key);
    let mut out = Vec::with_capacity(typed.build.len() + 6);
    out.push(Command::from_args(&[&b"MULTI"[..]]));
    out.push(Command::from_args(&[&b"DEL"[..], &tmp]));
    for args in &typed.build {
        let mut a: Vec<&[u8]> = args.iter().map(|b| &b[..]).collect();
        a[1] = &tmp;
        out.push(Command::from_args(&a));
    }
    if typed.pttl >= 0 {
        // (0: in its last millisecond; PEXPIRE 0 would delete it now.)
        let ttl = typed.pttl.max(1).to_string();
        out.push(Command::from_args(&[&b"PEXPIRE"[..], &tmp, ttl.as_bytes()]));
    }
    let rename: &[u8] = if replace { b"RENAME" } else { b"RENAMENX" };
    out.push(Command::from_args(&[rename, &tmp, key]));
    out.push(Command::from_args(&[&b"DEL"[..], &tmp]));
    out.push(Command::from_args(&[&b"EXEC"[..]]));
    out
}

/// Where, among the `EXEC` results of [`write_commands`], the rename's is.
pub fn renamed_at(results: &[Value]) -> Option<&Value> {
    results.len().checked_sub(2).map(|i| &results[i])
}

/// What the `EXEC` reply to [`write_commands`] says: `Ok(true)` written,
/// `Ok(false)` the key existed (`RENAMENX`), `Err` the first error.
pub fn written(exec: &Value) -> Result<bool, String> {
    let Some(results) = exec.as_array() else {
        return Err(match exec {
            Value::Error(e) => String::from_utf8_lossy(e).into_owned(),
            other => format!("unexpected EXEC reply {other:?}"),
        });
    };
    if let Some(Value::Error(e)) = results.iter().find(|r| matches!(r, Value::Error(_))) {
        return Err(String::from_utf8_lossy(e).into_owned());
    }
    Ok(!matches!(renamed_at(results), Some(Value::Int(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_key_shares_the_keys_slot() {
        use crate::routing::slot::key_slot;
        for key in [
            &b"plain"[..],
            b"{tag}x",
            b"a}b",
            b"{}x}",
            b"x{y",
            b"",
            b"}{a}",
        ] {
            assert_eq!(key_slot(&temp_key(key)), key_slot(key), "{key:?}");
        }
    }

    fn s(b: &str) -> Value {
        Value::Str(Bytes::copy_from_slice(b.as_bytes()))
    }

    fn wrong() -> Value {
        Value::Error(Bytes::from_static(b"WRONGTYPE"))
    }

    #[test]
    fn zset_scores_come_first_when_rebuilt() {
        let exec = Value::Array(vec![
            s("zset"),
            Value::Int(5000),
            wrong(),
            wrong(),
            wrong(),
            wrong(),
            Value::Array(vec![s("a"), s("1.5"), s("b"), s("2")]),
            wrong(),
        ]);
        let Some(Read::Value(t)) = parse(&exec) else {
            panic!("not parsed")
        };
        assert_eq!(t.pttl, 5000);
        assert_eq!(t.build.len(), 1);
        let args: Vec<&[u8]> = t.build[0].iter().map(|b| &b[..]).collect();
        assert_eq!(args, [&b"ZADD"[..], b"", b"1.5", b"a", b"2", b"b"]);
        let cmds = write_commands(b"k", &t, false);
        let names: Vec<&[u8]> = cmds.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                &b"MULTI"[..],
                b"DEL",
                b"ZADD",
                b"PEXPIRE",
                b"RENAMENX",
                b"DEL",
                b"EXEC"
            ]
        );
        assert_eq!(cmds[2].arg(1), Some(&b"__cutover_copy__:{k}"[..]));
    }

    #[test]
    fn gone_and_module_types() {
        let mut exec = vec![s("none"), Value::Int(-2)];
        exec.extend((0..6).map(|_| wrong()));
        assert_eq!(parse(&Value::Array(exec.clone())), Some(Read::Gone));
        exec[0] = s("ReJSON-RL");
        assert_eq!(
            parse(&Value::Array(exec)),
            Some(Read::Unsupported("ReJSON-RL".into()))
        );
        assert_eq!(parse(&Value::Nil), None);
    }

    #[test]
    fn big_lists_are_written_in_chunks() {
        let items: Vec<Value> = (0..1201).map(|i| s(&i.to_string())).collect();
        let exec = Value::Array(vec![
            s("list"),
            Value::Int(-1),
            wrong(),
            wrong(),
            Value::Array(items),
            wrong(),
            wrong(),
            wrong(),
        ]);
        let Some(Read::Value(t)) = parse(&exec) else {
            panic!("not parsed")
        };
        assert_eq!(t.build.len(), 3);
        assert_eq!(t.build[2].len(), 2 + 201);
        let cmds = write_commands(b"k", &t, true);
        assert!(cmds.iter().all(|c| c.name() != b"PEXPIRE"));
        assert_eq!(cmds[cmds.len() - 3].name(), b"RENAME");
    }
}
