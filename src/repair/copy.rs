//! One copy: the key read atomically (value and remaining TTL) from one
//! cache and written to the other, guarded there (`guarded.rs`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{debug, warn};

use super::{call_in, guarded, Copier, CopyError, Link, Queued, RepairJob};
use crate::protocol::{text, value, Command, Value};
use crate::routing::{PerSide, Side};

/// Copies the key; `Ok(false)` when a write to it went through after
/// `start` (before the read was answered): nothing was written, to be
/// redone from a fresh read.
pub(super) async fn copy(
    copier: &Copier,
    links: &mut PerSide<Link>,
    q: &Queued,
    start: u64,
) -> Result<bool, CopyError> {
    let job = &q.job;
    let (from, to) = (job.from, job.from.other());
    let key = &job.key[..];
    let fp = fingerprint(copier, links, to, job).await?;
    let read = snapshot_commands(key).to_vec();
    let replies = call_in(&mut links[from], copier, from, job.db, read).await?;
    let exec = value::decode(&replies[3], copier.depth).ok_or(CopyError::Unexpected("EXEC"))?;
    if copier.repairer.written_since(job, start) {
        return Ok(false);
    }
    let write = match restore_command(key, &exec, true) {
        Ok(Some(write)) => write,
        // (With `replace` a gone key is a DEL, never nothing.)
        Ok(None) | Err(()) => {
            return Err(CopyError::Refused(
                "MULTI DUMP PTTL EXEC",
                text(&replies[3]),
            ))
        }
    };
    let write = match &fp {
        Some(fp) => guarded::guarded(&write, fp),
        None => write,
    };
    let r = call_in(&mut links[to], copier, to, job.db, vec![write]).await?;
    if r[0].first() == Some(&b'-') {
        return Err(CopyError::Refused("RESTORE", text(&r[0])));
    }
    if fp.is_some() {
        match guarded::applied(&r[0]) {
            Some(true) => {}
            Some(false) => return Ok(false),
            None => return Err(CopyError::Unexpected("the guarded RESTORE")),
        }
    }
    debug!(%from, %to, "key copied");
    Ok(true)
}

/// The key's fingerprint on the target `to`, for a guarded write; `None`
/// when that cache runs no scripts for us (then copies to it are plain).
async fn fingerprint(
    copier: &Copier,
    links: &mut PerSide<Link>,
    to: Side,
    job: &RepairJob,
) -> Result<Option<Bytes>, CopyError> {
    let unguarded = &copier.repairer.unguarded[to];
    if unguarded.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let cmd = vec![guarded::fingerprint(&job.key)];
    let r = call_in(&mut links[to], copier, to, job.db, cmd).await?;
    match guarded::read(&r[0]) {
        guarded::Fingerprint::Is(fp) => Ok(Some(fp)),
        guarded::Fingerprint::NoScripts(why) => {
            if !unguarded.swap(true, Ordering::Relaxed) {
                warn!(side = %to, reply = %why, "the cache refuses the repair's guard script: copies to it are plain RESTOREs, which a write through another fleet member at the same moment can undo");
            }
            Ok(None)
        }
    }
}

/// Reads a key's value and remaining TTL atomically.
pub(crate) fn snapshot_commands(key: &[u8]) -> [Command; 4] {
    [
        Command::from_args(&[&b"MULTI"[..]]),
        Command::from_args(&[&b"DUMP"[..], key]),
        Command::from_args(&[&b"PTTL"[..], key]),
        Command::from_args(&[&b"EXEC"[..]]),
    ]
}

/// What writes the snapshot `exec` (the EXEC reply to
/// [`snapshot_commands`]) on the other cache: `RESTORE key ttl payload`
/// (with `REPLACE` when `replace`), or, for a key that is gone, `DEL` when
/// `replace` and nothing (`Ok(None)`) otherwise. `Err` when `exec` is not
/// a snapshot.
pub(crate) fn restore_command(
    key: &[u8],
    exec: &Value,
    replace: bool,
) -> Result<Option<Command>, ()> {
    let Some([dump, Value::Int(pttl)]) = exec.as_array() else {
        return Err(());
    };
    match dump {
        Value::Str(payload) if *pttl != -2 => Ok(Some(restore(key, payload, *pttl, replace))),
        Value::Nil | Value::Str(_) if replace => Ok(Some(Command::from_args(&[&b"DEL"[..], key]))),
        Value::Nil | Value::Str(_) => Ok(None),
        _ => Err(()),
    }
}

/// `RESTORE key ttl payload [REPLACE]` for a key read with `DUMP` and
/// `PTTL` (`pttl` in ms, -1 for none, 0 for a key about to expire): the
/// remaining TTL, relative, so
/// the two caches' clocks need not agree (the key lives on new longer by
/// the time between the read and the write).
pub(crate) fn restore(key: &[u8], payload: &[u8], pttl: i64, replace: bool) -> Command {
    // `PTTL` answers 0 for a key in its last millisecond: RESTORE's 0
    // would make it persistent, so it gets 1 ms.
    let ttl = match pttl {
        0 => "1".to_string(),
        p if p > 0 => p.to_string(),
        _ => "0".into(),
    };
    let mut args: Vec<&[u8]> = vec![b"RESTORE", key, ttl.as_bytes(), payload];
    if replace {
        args.push(b"REPLACE");
    }
    Command::from_args(&args)
}
