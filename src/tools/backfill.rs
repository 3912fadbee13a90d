//! `cutover backfill` (standalone): copies a route's keys from old to new.
//!
//! SCAN on old (`MATCH` per route pattern, optional `TYPE`), then per batch
//! one `MULTI; DUMP k PTTL k ...; EXEC` on old (value and remaining TTL read
//! atomically) and pipelined `RESTORE k <remaining ttl> <payload>` on new,
//! without `REPLACE` (a type-aware copy, `super::typed`, when new refuses
//! `RESTORE`): a key new already has (written through a proxy, or
//! copied before) is never overwritten. Keys that expired or were deleted
//! between the scan and the read are skipped.
//!
//! What standalone cannot guarantee (printed with every run): it does not
//! see the proxy's writes, so a key new already has is left alone even
//! when it is only partly there (dual-write applying `HSET`, `SADD`,
//! `RPUSH`, `INCR`... to a key new did not have yet makes one); a key
//! deleted through the proxy after this copy read it comes back on new
//! until its TTL ends; and a write reaching old alone after the read is
//! not copied. `cutover verify --repair` afterwards (writes quiet), or the
//! in-proxy backfill (`crate::backfill`), closes all three.
//!
//! Rate-limited (keys/s, bytes/s); resumable: after each batch the scan
//! position is saved (temp file, fsync, rename) to the cursor file, which a
//! later run resumes from and a finished run removes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{text, typed, Caches, KeyScan, ToolError};
use crate::protocol::{Command, Value};
use crate::repair::{restore, Repairer};
use crate::routing::Side;

pub const STANDALONE_CAVEAT: &str = "standalone backfill: it cannot see writes made through a proxy, so (1) a key new already has is left alone even if only partly there (dual-write applying HSET/SADD/RPUSH/INCR to a key new lacked makes one), (2) a key deleted through the proxy after this copy read it comes back on new until its TTL ends, (3) a write reaching old alone after the read is not copied; run `cutover verify --repair` afterwards, or backfill inside the serving proxy (POST /routes/{name}/backfill), which guarantees all three";

#[derive(Clone, Debug)]
pub struct Options {
    pub route: Option<String>,
    pub batch: usize,
    /// Keys per second at most.
    pub max_keys_per_sec: Option<u64>,
    /// Payload bytes per second at most.
    pub max_bytes_per_sec: Option<u64>,
    /// Only keys of this type (`SCAN ... TYPE`).
    pub type_filter: Option<String>,
    /// Where the scan position is saved; `None`: not resumable.
    pub cursor_file: Option<PathBuf>,
    /// Draw a progress bar (on a terminal); otherwise log lines.
    pub progress_bar: bool,
    /// Stop after this many batches (tests: a run killed halfway).
    pub stop_after_batches: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            route: None,
            batch: 500,
            max_keys_per_sec: None,
            max_bytes_per_sec: None,
            type_filter: None,
            cursor_file: None,
            progress_bar: false,
            stop_after_batches: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Keys the scans returned.
    pub scanned: u64,
    pub copied: u64,
    /// Already on new: left alone.
    pub existed: u64,
    /// Expired or deleted before they were read.
    pub gone: u64,
    /// Could not be copied, by `RESTORE` or type by type.
    pub failed: u64,
    /// Copied type by type because new refused `RESTORE` (or old `DUMP`);
    /// included in `copied`.
    #[serde(default)]
    pub typed: u64,
    /// Live only: written through the proxy during their copy, so read
    /// and copied again.
    #[serde(default)]
    pub redone: u64,
    /// Live only: still busy or written after every attempt, handed to
    /// the repair queue (which copies them the same careful way).
    #[serde(default)]
    pub handed_to_repair: u64,
    pub bytes: u64,
}

/// What the cursor file holds.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    routes: Vec<String>,
    /// Index into `routes` of the one in progress.
    at: usize,
    scan: KeyScan,
    counts: Counts,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub routes: Vec<String>,
    pub counts: Counts,
    pub resumed: bool,
    /// Stopped early (`stop_after_batches`): the cursor file was kept.
    pub interrupted: bool,
    pub seconds: f64,
    /// The first refusal, when any key failed.
    pub first_error: Option<String>,
}

fn load(path: &Path) -> Result<Option<Saved>, ToolError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| ToolError::Cursor {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ToolError::Cursor {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

fn save(path: &Path, saved: &Saved) -> Result<(), ToolError> {
    let body = serde_json::to_vec(saved).unwrap_or_default();
    crate::persist::write_atomically(path, &body).map_err(|e| ToolError::Cursor {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Copies `keys` from old to new: one atomic `MULTI; DUMP k PTTL k ...;
/// EXEC` on old (one per key on a clustered old), pipelined `RESTORE` (with `REPLACE` when `live`) on new,
/// and the type-aware copy for keys whose `RESTORE` (or `DUMP`) was
/// refused. With `live` (in a serving proxy), a key the proxy reports
/// written after `start` is not written from a read that may predate the
/// write, or is found written after its copy landed: it is returned, to be
/// copied again from a fresh read. Returns those keys and the first
/// refusal seen.
pub(crate) async fn copy_keys(
    caches: &mut Caches,
    keys: &[Bytes],
    live: Option<(&Repairer, u64)>,
    counts: &mut Counts,
) -> Result<(Vec<Bytes>, Option<String>), ToolError> {
    let replace = live.is_some();
    let written = |key: &[u8]| written_since(live, key);
    let mut redo = Vec::new();
    let mut first_error = None;
    let results = read_dumps(caches, keys).await?;
    let mut writes = Vec::with_capacity(keys.len());
    let mut restoring = Vec::with_capacity(keys.len());
    // Gone on old, deleted on new (live only): not counted as copied.
    let mut deleting = std::collections::HashSet::new();
    let mut typed = Vec::new();
    for (key, pair) in keys.iter().zip(results.chunks(2)) {
        if written(key) {
            redo.push(key.clone());
            continue;
        }
        match pair {
            [Value::Str(payload), Value::Int(pttl)] if *pttl != -2 => {
                counts.bytes += payload.len() as u64;
                writes.push(restore(key, payload, *pttl, replace));
                restoring.push(key.clone());
            }
            // DUMP refused (renamed, or forbidden to this user).
            [Value::Error(e), _] => {
                first_error.get_or_insert_with(|| format!("DUMP: {}", text(e)));
                typed.push(key.clone());
            }
            // Gone on old. Live, it goes on new too: an earlier attempt
            // of this batch may have restored it there after the DEL that
            // made it go reached new (the written-since check sent it
            // here), and nothing else would remove it again.
            _ if replace => {
                counts.gone += 1;
                writes.push(Command::from_args(&[&b"DEL"[..], key]));
                restoring.push(key.clone());
                deleting.insert(key.clone());
            }
            _ => counts.gone += 1,
        }
    }
    let mut landed = Vec::with_capacity(restoring.len());
    if !writes.is_empty() {
        let replies = caches.call(Side::New, &writes).await?;
        for (key, r) in restoring.into_iter().zip(replies) {
            match r {
                Value::Error(e) if e.starts_with(b"BUSYKEY") => counts.existed += 1,
                Value::Error(e) => {
                    first_error.get_or_insert_with(|| format!("RESTORE: {}", text(&e)));
                    typed.push(key);
                }
                _ => landed.push(key),
            }
        }
    }
    if !typed.is_empty() {
        copy_typed(
            caches,
            &typed,
            live,
            counts,
            &mut landed,
            &mut redo,
            &mut first_error,
        )
        .await?;
    }
    for key in landed {
        if written(&key) {
            redo.push(key);
        } else if !deleting.contains(&key) {
            counts.copied += 1;
        }
    }
    Ok((redo, first_error))
}

/// Each key's `DUMP` and `PTTL` on old, read together: one `MULTI` for the
/// batch, or one per key on a clustered old (a transaction runs in one
/// slot there).
async fn read_dumps(caches: &mut Caches, keys: &[Bytes]) -> Result<Vec<Value>, ToolError> {
    let per_key = caches.upstreams[Side::Old].cluster().is_some();
    let mut read = Vec::with_capacity(keys.len() * 4 + 2);
    let multi = || Command::from_args(&[&b"MULTI"[..]]);
    let exec = || Command::from_args(&[&b"EXEC"[..]]);
    if !per_key {
        read.push(multi());
    }
    for k in keys {
        if per_key {
            read.push(multi());
        }
        read.push(Command::from_args(&[&b"DUMP"[..], k]));
        read.push(Command::from_args(&[&b"PTTL"[..], k]));
        if per_key {
            read.push(exec());
        }
    }
    if !per_key {
        read.push(exec());
    }
    let replies = caches.call(Side::Old, &read).await?;
    let execs: Vec<Value> = match per_key {
        true => replies.into_iter().skip(3).step_by(4).collect(),
        false => replies.into_iter().last().into_iter().collect(),
    };
    let mut results = Vec::with_capacity(keys.len() * 2);
    for e in execs {
        match e {
            Value::Array(pair) => results.extend(pair),
            other => return Err(ToolError::Refused("EXEC", format!("{other:?}"))),
        }
    }
    Ok(results)
}

/// Whether the proxy reported a write to `key` after the live copy's start.
fn written_since(live: Option<(&Repairer, u64)>, key: &[u8]) -> bool {
    live.is_some_and(|(r, start)| r.written_after(None, key, start))
}

/// The type-aware copy of `keys` (their `RESTORE` was refused): keys
/// written go to `landed`, keys to read again to `redo`.
async fn copy_typed(
    caches: &mut Caches,
    keys: &[Bytes],
    live: Option<(&Repairer, u64)>,
    counts: &mut Counts,
    landed: &mut Vec<Bytes>,
    redo: &mut Vec<Bytes>,
    first_error: &mut Option<String>,
) -> Result<(), ToolError> {
    let replace = live.is_some();
    let reads: Vec<Command> = keys.iter().flat_map(|k| typed::read_commands(k)).collect();
    let per = typed::read_commands(b"").len();
    let replies = caches.call(Side::Old, &reads).await?;
    let mut writes = Vec::new();
    let mut writing = Vec::new();
    for (key, replies) in keys.iter().zip(replies.chunks(per)) {
        if written_since(live, key) {
            redo.push(key.clone());
            continue;
        }
        match replies.last().and_then(typed::parse) {
            Some(typed::Read::Gone) => counts.gone += 1,
            Some(typed::Read::Unsupported(kind)) => {
                counts.failed += 1;
                first_error
                    .get_or_insert_with(|| format!("type {kind} cannot be copied without RESTORE"));
            }
            Some(typed::Read::Value(t)) => {
                counts.bytes += t.bytes;
                let cmds = typed::write_commands(key, &t, replace);
                writing.push((key.clone(), cmds.len()));
                writes.extend(cmds);
            }
            None => {
                counts.failed += 1;
                first_error.get_or_insert_with(|| format!("type-aware read: {:?}", replies.last()));
            }
        }
    }
    if writes.is_empty() {
        return Ok(());
    }
    let replies = caches.call(Side::New, &writes).await?;
    let mut at = 0;
    for (key, n) in writing {
        at += n;
        match typed::written(&replies[at - 1]) {
            Ok(true) => {
                counts.typed += 1;
                landed.push(key);
            }
            Ok(false) => counts.existed += 1,
            Err(e) => {
                counts.failed += 1;
                first_error.get_or_insert_with(|| format!("type-aware write: {e}"));
            }
        }
    }
    Ok(())
}

/// Sleeps as long as the rate limits ask.
pub(crate) async fn pace(started: Instant, counts: &Counts, opts: &Options) {
    let mut wait = Duration::ZERO;
    let ahead = |done: u64, per_sec: u64| {
        Duration::from_secs_f64(done as f64 / per_sec.max(1) as f64)
            .saturating_sub(started.elapsed())
    };
    if let Some(k) = opts.max_keys_per_sec {
        wait = wait.max(ahead(counts.scanned, k));
    }
    if let Some(b) = opts.max_bytes_per_sec {
        wait = wait.max(ahead(counts.bytes, b));
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Runs (or resumes) a backfill.
pub async fn run(caches: &mut Caches, opts: &Options) -> Result<Report, ToolError> {
    let started = Instant::now();
    let route_ids = caches.routes(opts.route.as_deref())?;
    let names: Vec<String> = route_ids
        .iter()
        .map(|&r| caches.table.routes[r].name.to_string())
        .collect();
    let saved = match &opts.cursor_file {
        Some(p) => load(p)?.filter(|s| s.routes == names),
        None => None,
    };
    let resumed = saved.is_some();
    let (mut at, mut scan, mut counts) = match saved {
        Some(s) => {
            info!(route = %names[s.at], scanned = s.counts.scanned, "resuming backfill from its cursor file");
            (s.at, s.scan, s.counts)
        }
        None => (0, KeyScan::new(route_ids[0]), Counts::default()),
    };
    let total: u64 = match caches
        .call(Side::Old, &[Command::from_args(&[&b"DBSIZE"[..]])])
        .await?
        .first()
    {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let bar = opts.progress_bar.then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} keys scanned ({per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(counts.scanned);
        bar
    });
    let mut first_error = None;
    let mut batches = 0u64;
    let mut last_log = Instant::now();
    let mut interrupted = false;
    while at < route_ids.len() {
        let Some(keys) = scan
            .next(caches, Side::Old, opts.batch, opts.type_filter.as_deref())
            .await?
        else {
            at += 1;
            if let Some(&r) = route_ids.get(at) {
                scan = KeyScan::new(r);
            }
            continue;
        };
        counts.scanned += keys.len() as u64;
        if !keys.is_empty() {
            let (_, err) = copy_keys(caches, &keys, None, &mut counts).await?;
            if first_error.is_none() {
                first_error = err;
            }
        }
        if let Some(p) = &opts.cursor_file {
            save(
                p,
                &Saved {
                    routes: names.clone(),
                    at,
                    scan: scan.clone(),
                    counts: counts.clone(),
                },
            )?;
        }
        batches += 1;
        match &bar {
            Some(b) => {
                b.set_position(counts.scanned);
                b.set_message(format!(
                    "{} copied, {} already on new",
                    counts.copied, counts.existed
                ));
            }
            None if last_log.elapsed() >= Duration::from_secs(2) => {
                last_log = Instant::now();
                let rate = counts.scanned as f64 / started.elapsed().as_secs_f64().max(0.001);
                info!(
                    scanned = counts.scanned,
                    of = total,
                    copied = counts.copied,
                    keys_per_sec = rate as u64,
                    "backfill progress"
                );
            }
            None => {}
        }
        if opts.stop_after_batches.is_some_and(|n| batches >= n) {
            interrupted = true;
            break;
        }
        pace(started, &counts, opts).await;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if !interrupted {
        if let Some(p) = &opts.cursor_file {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(Report {
        routes: names,
        counts,
        resumed,
        interrupted,
        seconds: started.elapsed().as_secs_f64(),
        first_error,
    })
}
