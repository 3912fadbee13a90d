//! Effect translation: what the mirror must run so that it ends up where the
//! authoritative side did, for writes whose outcome is not decided by their
//! arguments alone.
//!
//! Such a write is sent to the authoritative side only; once its reply is
//! known, [`translate`] turns the reply into the deterministic commands that
//! reproduce the same change (what Redis itself propagates to replicas).
//! The mirror never runs a blocking or random command.
//!
//! Decisions, for every write the table tips as `nondeterministic_output`
//! and every blocking write:
//!
//! | command | mirrored as |
//! | --- | --- |
//! | `BLPOP` / `BRPOP` | `LPOP` / `RPOP` of the key that was popped |
//! | `BLMOVE` / `BRPOPLPUSH` | `LMOVE` / `RPOPLPUSH` of the same keys |
//! | `BLMPOP` | `LPOP` / `RPOP key count` of the key and count popped |
//! | `BZPOPMIN` / `BZPOPMAX` / `BZMPOP` | `ZREM key member...` of the popped members |
//! | `SPOP` | `SREM key member...` of the popped members |
//! | `XADD` with `*` or `<ms>-*` | `XADD` with the ID the authoritative side assigned |
//! | `XREADGROUP` (`>` IDs) | `XCLAIM key group consumer 0 id... FORCE JUSTID LASTID id`, or `XGROUP SETID` with `NOACK` |
//! | `XCLAIM` | `XCLAIM` with min-idle-time 0 restricted to the IDs it claimed |
//! | `XAUTOCLAIM` | `XCLAIM key group consumer 0 id...` of the IDs it claimed |
//! | `MIGRATE` | refused (moves data out of the cache) |
//!
//! Left verbatim, on purpose: `XTRIM` and `XADD` with `~` trimming (the
//! amount trimmed depends on the stream's node layout, identical when both
//! caches have the same `stream-node-max-*` settings and history); `LMPOP`,
//! `ZPOPMIN`, `ZMPOP` and friends (deterministic given the same data);
//! `XREADGROUP` on history IDs (only delivery counters change); scripts
//! (Redis 7 replicates a script's effects, but a proxy only sees the call:
//! a script that calls `SPOP` or `TIME` may diverge, and divergence repair
//! is what catches it).
//! Random reads (`SRANDMEMBER`, `RANDOMKEY`, `HRANDFIELD`, ...) are reads:
//! one side answers, nothing is mirrored.

use bytes::Bytes;

use crate::protocol::{Command, Value};

/// How to derive the mirror's commands from the authoritative reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `BLPOP`/`BRPOP`: reply `[key, element]`.
    Pop { left: bool },
    /// `BLMOVE src dst from to timeout`: reply the element moved.
    LMove,
    /// `BRPOPLPUSH src dst timeout`: reply the element moved.
    RPopLPush,
    /// `BLMPOP`: reply `[key, [elements]]`.
    LMPop { left: bool },
    /// `BZPOPMIN`/`BZPOPMAX`: reply `[key, member, score]`.
    ZPop,
    /// `BZMPOP`: reply `[key, [[member, score]...]]`.
    ZMPop,
    /// `SPOP key [count]`: reply a member, nil, or an array of members.
    SPop,
    /// `XADD` whose ID argument (at this index) is to be assigned.
    XAdd { id_at: usize },
    /// `XREADGROUP GROUP g c ... STREAMS k... id...`. `checked`: one
    /// stream read with `>` (not NOACK): the mirror's XCLAIM must claim
    /// exactly the IDs delivered (it claims none when the entries have not
    /// reached it yet: another client's XADD racing this read's effect).
    XReadGroup { checked: bool },
    /// `XCLAIM key group consumer min-idle id... [options]`: options begin
    /// at this index.
    XClaim { options_at: usize },
    /// `XAUTOCLAIM key group consumer min-idle start [COUNT n] [JUSTID]`.
    XAutoClaim,
}

fn eq(a: Option<&[u8]>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b.as_bytes()))
}

/// The effect translation a write needs when mirrored, or `None` when it
/// is mirrored verbatim. `name` is the table's (lowercase) name.
pub fn effect_of(name: &str, cmd: &Command) -> Option<Effect> {
    Some(match name {
        "blpop" => Effect::Pop { left: true },
        "brpop" => Effect::Pop { left: false },
        "blmove" => Effect::LMove,
        "brpoplpush" => Effect::RPopLPush,
        "blmpop" => {
            // BLMPOP timeout numkeys key... LEFT|RIGHT [COUNT n]
            let numkeys = crate::protocol::request::string2ll(cmd.arg(2)?)?;
            let dir = cmd.arg(3 + usize::try_from(numkeys).ok()?);
            Effect::LMPop {
                left: eq(dir, "left"),
            }
        }
        "bzpopmin" | "bzpopmax" => Effect::ZPop,
        "bzmpop" => Effect::ZMPop,
        "spop" => Effect::SPop,
        "xadd" => {
            let id_at = xadd_id_position(cmd)?;
            // An explicit ID is deterministic: verbatim is exact.
            if !cmd.arg(id_at)?.contains(&b'*') {
                return None;
            }
            Effect::XAdd { id_at }
        }
        "xreadgroup" => Effect::XReadGroup {
            checked: xreadgroup_checked(cmd),
        },
        "xclaim" => {
            let mut i = 5;
            while let Some(a) = cmd.arg(i) {
                if is_xclaim_option(a) {
                    break;
                }
                i += 1;
            }
            Effect::XClaim { options_at: i }
        }
        "xautoclaim" => Effect::XAutoClaim,
        _ => return None,
    })
}

fn is_xclaim_option(a: &[u8]) -> bool {
    ["idle", "time", "retrycount", "force", "justid", "lastid"]
        .iter()
        .any(|o| a.eq_ignore_ascii_case(o.as_bytes()))
}

/// `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] id ...`
fn xadd_id_position(cmd: &Command) -> Option<usize> {
    let mut i = 2;
    loop {
        let a = cmd.arg(i)?;
        if a.eq_ignore_ascii_case(b"nomkstream") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"maxlen") || a.eq_ignore_ascii_case(b"minid") {
            i += 1;
            if matches!(cmd.arg(i)?, b"=" | b"~") {
                i += 1;
            }
            i += 1;
            if eq(cmd.arg(i), "limit") {
                i += 2;
            }
        } else {
            return Some(i);
        }
    }
}

/// Commands that reproduce on the mirror what `cmd` did on the authoritative
/// side, given its reply there. Empty when it changed nothing (a timed-out
/// block, an empty pop, an error).
pub fn translate(effect: &Effect, cmd: &Command, reply: &Value) -> Vec<Command> {
    translate_inner(effect, cmd, reply).unwrap_or_default()
}

fn translate_inner(effect: &Effect, cmd: &Command, reply: &Value) -> Option<Vec<Command>> {
    if matches!(reply, Value::Nil | Value::Error(_)) {
        return None;
    }
    match effect {
        Effect::Pop { .. } | Effect::LMove | Effect::RPopLPush | Effect::LMPop { .. } => {
            list_effect(effect, cmd, reply).map(|c| vec![c])
        }
        Effect::ZPop | Effect::ZMPop | Effect::SPop => {
            removal_effect(effect, cmd, reply).map(|c| vec![c])
        }
        Effect::XAdd { .. }
        | Effect::XReadGroup { .. }
        | Effect::XClaim { .. }
        | Effect::XAutoClaim => stream_effect(effect, cmd, reply),
    }
}

/// Blocking list pops and moves: the non-blocking command of the same keys.
fn list_effect(effect: &Effect, cmd: &Command, reply: &Value) -> Option<Command> {
    match effect {
        Effect::Pop { left } => {
            let [key, _elem] = reply.as_array()? else {
                return None;
            };
            let verb: &[u8] = if *left { b"LPOP" } else { b"RPOP" };
            Some(Command::from_args(&[verb, key.as_bytes()?]))
        }
        Effect::LMove => {
            reply.as_bytes()?;
            Some(Command::from_args(&[
                &b"LMOVE"[..],
                cmd.arg(1)?,
                cmd.arg(2)?,
                cmd.arg(3)?,
                cmd.arg(4)?,
            ]))
        }
        Effect::RPopLPush => {
            reply.as_bytes()?;
            Some(Command::from_args(&[
                &b"RPOPLPUSH"[..],
                cmd.arg(1)?,
                cmd.arg(2)?,
            ]))
        }
        Effect::LMPop { left } => {
            let [key, elems] = reply.as_array()? else {
                return None;
            };
            let n = elems.as_array()?.len().to_string();
            let verb: &[u8] = if *left { b"LPOP" } else { b"RPOP" };
            Some(Command::from_args(&[verb, key.as_bytes()?, n.as_bytes()]))
        }
        _ => None,
    }
}

/// Pops of members (sorted sets, sets): removal of the members popped.
fn removal_effect(effect: &Effect, cmd: &Command, reply: &Value) -> Option<Command> {
    match effect {
        Effect::ZPop => {
            let [key, member, _score] = reply.as_array()? else {
                return None;
            };
            Some(Command::from_args(&[
                &b"ZREM"[..],
                key.as_bytes()?,
                member.as_bytes()?,
            ]))
        }
        Effect::ZMPop => {
            let [key, pairs] = reply.as_array()? else {
                return None;
            };
            let mut args: Vec<&[u8]> = vec![b"ZREM", key.as_bytes()?];
            for pair in pairs.as_array()? {
                args.push(pair.as_array()?.first()?.as_bytes()?);
            }
            (args.len() > 2).then(|| Command::from_args(&args))
        }
        Effect::SPop => {
            let key = cmd.arg(1)?;
            let mut args: Vec<&[u8]> = vec![b"SREM", key];
            match reply {
                Value::Str(m) => args.push(m),
                Value::Array(ms) => {
                    for m in ms {
                        args.push(m.as_bytes()?);
                    }
                }
                _ => return None,
            }
            (args.len() > 2).then(|| Command::from_args(&args))
        }
        _ => None,
    }
}

/// Streams: the ID assigned, the entries delivered or claimed.
fn stream_effect(effect: &Effect, cmd: &Command, reply: &Value) -> Option<Vec<Command>> {
    let one = |c: Command| Some(vec![c]);
    match effect {
        Effect::XAdd { id_at } => {
            let id = reply.as_bytes()?;
            let args: Vec<&[u8]> = cmd
                .args()
                .enumerate()
                .map(|(i, a)| if i == *id_at { &id[..] } else { a })
                .collect();
            one(Command::from_args(&args))
        }
        Effect::XReadGroup { .. } => xreadgroup(cmd, reply),
        Effect::XClaim { options_at } => {
            let ids = claimed_ids(reply.as_array()?)?;
            let has_lastid = (*options_at..cmd.len()).any(|i| eq(cmd.arg(i), "lastid"));
            if ids.is_empty() && !has_lastid {
                return None;
            }
            let mut args = xclaim_of(cmd, &ids);
            args.extend(cmd.args().skip(*options_at));
            if ids.is_empty() {
                // XCLAIM needs at least one ID; one that cannot exist claims
                // nothing but still applies LASTID.
                args.insert(5, b"0-0");
            }
            one(Command::from_args(&args))
        }
        Effect::XAutoClaim => {
            let parts = reply.as_array()?;
            let ids = claimed_ids(parts.get(1)?.as_array()?)?;
            if ids.is_empty() {
                return None;
            }
            let mut args = xclaim_of(cmd, &ids);
            if (5..cmd.len()).any(|i| eq(cmd.arg(i), "justid")) {
                args.push(b"JUSTID");
            }
            one(Command::from_args(&args))
        }
        _ => None,
    }
}

/// What the mirror answers to the command [`translate`] made when it held
/// what the authoritative side did: the popped element(s), the number of
/// members removed, the stream ID. `None` where there is nothing to check
/// (several commands, stream group effects, nothing mirrored).
pub fn expected(effect: &Effect, reply: &Value) -> Option<Value> {
    if matches!(reply, Value::Nil | Value::Error(_)) {
        return None;
    }
    let count = |n: usize| Some(Value::Int(i64::try_from(n).ok()?));
    match effect {
        Effect::Pop { .. } => match reply.as_array()? {
            [_key, elem] => Some(elem.clone()),
            _ => None,
        },
        Effect::LMove | Effect::RPopLPush | Effect::XAdd { .. } => {
            reply.as_bytes().map(|b| Value::Str(b.clone()))
        }
        Effect::LMPop { .. } => match reply.as_array()? {
            [_key, elems] => Some(elems.clone()),
            _ => None,
        },
        Effect::ZPop => count(1),
        Effect::ZMPop => match reply.as_array()? {
            [_key, pairs] => count(pairs.as_array()?.len()),
            _ => None,
        },
        Effect::SPop => match reply {
            Value::Str(_) => count(1),
            Value::Array(ms) if !ms.is_empty() => count(ms.len()),
            _ => None,
        },
        Effect::XReadGroup { checked: true } => {
            let [(_, entries)] = streams_of(reply)?[..] else {
                return None;
            };
            let ids = claimed_ids(entries.as_array()?)?;
            Some(Value::Array(ids.into_iter().map(Value::Str).collect()))
        }
        Effect::XReadGroup { .. } | Effect::XClaim { .. } | Effect::XAutoClaim => None,
    }
}

/// An XREADGROUP reply's streams: RESP2 `[[key, entries]...]`, RESP3
/// `{key: entries}`.
fn streams_of(reply: &Value) -> Option<Vec<(&Value, &Value)>> {
    match reply {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|kv| match kv.as_array()? {
                    [k, v] => Some((k, v)),
                    _ => None,
                })
                .collect(),
        ),
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        _ => None,
    }
}

/// Whether an XREADGROUP reads one stream with `>`, acknowledging nothing:
/// its effect is one XCLAIM whose reply can be checked.
fn xreadgroup_checked(cmd: &Command) -> bool {
    let mut i = 4;
    let streams_at = loop {
        match cmd.arg(i) {
            Some(a) if a.eq_ignore_ascii_case(b"streams") => break i + 1,
            Some(a) if a.eq_ignore_ascii_case(b"noack") => return false,
            Some(_) => i += 2,
            None => return false,
        }
    };
    cmd.len() == streams_at + 2 && cmd.arg(streams_at + 1) == Some(b">")
}

/// `XCLAIM key group consumer 0 id...`, taking key, group and consumer
/// from `cmd` (an XCLAIM or XAUTOCLAIM).
fn xclaim_of<'a>(cmd: &'a Command, ids: &'a [Bytes]) -> Vec<&'a [u8]> {
    let mut args: Vec<&[u8]> = vec![b"XCLAIM"];
    args.extend(cmd.args().skip(1).take(3));
    args.push(b"0");
    args.extend(ids.iter().map(|b| &b[..]));
    args
}

/// The IDs in an XCLAIM-style reply: entries `[id, fields]` or bare IDs
/// (JUSTID); deleted entries (nil) are skipped.
fn claimed_ids(items: &[Value]) -> Option<Vec<Bytes>> {
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Str(id) => ids.push(id.clone()),
            Value::Array(entry) => ids.push(entry.first()?.as_bytes()?.clone()),
            Value::Nil => {}
            _ => return None,
        }
    }
    Some(ids)
}

/// `XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms] [NOACK] STREAMS
/// key... id...`: the new entries each stream delivered are claimed by the
/// same consumer on the mirror (which also moves the group's last ID).
fn xreadgroup(cmd: &Command, reply: &Value) -> Option<Vec<Command>> {
    let group = cmd.arg(2)?;
    let consumer = cmd.arg(3)?;
    let mut noack = false;
    let mut i = 4;
    let streams_at = loop {
        let a = cmd.arg(i)?;
        if a.eq_ignore_ascii_case(b"streams") {
            break i + 1;
        }
        if a.eq_ignore_ascii_case(b"noack") {
            noack = true;
            i += 1;
        } else {
            i += 2;
        }
    };
    let nstreams = (cmd.len() - streams_at) / 2;
    let per_key = streams_of(reply)?;
    let mut out = Vec::new();
    for (key, entries) in per_key {
        let key = key.as_bytes()?;
        let pos = (0..nstreams).find(|&j| cmd.arg(streams_at + j) == Some(&key[..]))?;
        // Only new entries (">") move the group; history reads change
        // delivery counters only.
        if cmd.arg(streams_at + nstreams + pos) != Some(b">") {
            continue;
        }
        let ids = claimed_ids(entries.as_array()?)?;
        let Some(last) = ids.last().cloned() else {
            continue;
        };
        if noack {
            out.push(Command::from_args(&[
                &b"XGROUP"[..],
                b"SETID",
                key,
                group,
                &last,
            ]));
        } else {
            let mut args: Vec<&[u8]> = vec![b"XCLAIM", key, group, consumer, b"0"];
            args.extend(ids.iter().map(|b| &b[..]));
            args.extend([&b"FORCE"[..], b"JUSTID", b"LASTID", &last]);
            out.push(Command::from_args(&args));
        }
    }
    Some(out)
}

#[cfg(test)]
#[path = "effect_tests.rs"]
mod tests;
