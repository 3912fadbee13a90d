//! `cutover backfill` (standalone): copies a route's keys from old to new.
//!
//! SCAN on old (`MATCH` per route pattern, optional `TYPE`), then per batch
//! one `MULTI; DUMP k PTTL k ...; EXEC` on old (value and remaining TTL read
//! atomically) and pipelined `RESTORE k <expiry> <payload> ABSTTL` on new,
//! without `REPLACE`: a key new already has (written through a proxy, or
//! copied before) is never overwritten. Keys that expired or were deleted
//! between the scan and the read are skipped.
//!
//! What standalone cannot guarantee (printed with every run): a key deleted
//! from both caches after this copy read it is restored on new (it comes
//! back until its TTL ends); a write that reaches old but not new after the
//! read is not copied. Run inside a serving proxy to get both guarantees.
//!
//! Rate-limited (keys/s, bytes/s); resumable: after each batch the scan
//! position is saved (temp file, fsync, rename) to the cursor file, which a
//! later run resumes from and a finished run removes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{text, Caches, KeyScan, ToolError};
use crate::protocol::{Command, Value};
use crate::routing::Side;

pub const STANDALONE_CAVEAT: &str = "standalone backfill: RESTORE without REPLACE never overwrites a key new already has, but a key deleted from both caches after it was read here is restored on new, and a write reaching old alone after the read is not copied; run it through a serving proxy for both guarantees";

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
    /// RESTORE refused (e.g. a payload from a newer Redis).
    pub failed: u64,
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Copies one batch; returns the first refusal seen.
async fn copy_batch(
    caches: &mut Caches,
    keys: &[Bytes],
    counts: &mut Counts,
) -> Result<Option<String>, ToolError> {
    let mut read = Vec::with_capacity(keys.len() * 2 + 2);
    read.push(Command::from_args(&[&b"MULTI"[..]]));
    for k in keys {
        read.push(Command::from_args(&[&b"DUMP"[..], k]));
        read.push(Command::from_args(&[&b"PTTL"[..], k]));
    }
    read.push(Command::from_args(&[&b"EXEC"[..]]));
    let read_at = now_ms();
    let replies = caches.call(Side::Old, &read).await?;
    let Some(Value::Array(results)) = replies.last() else {
        return Err(ToolError::Refused("EXEC", format!("{:?}", replies.last())));
    };
    let mut writes = Vec::with_capacity(keys.len());
    for (key, pair) in keys.iter().zip(results.chunks(2)) {
        match pair {
            [Value::Str(payload), Value::Int(pttl)] if *pttl != -2 => {
                counts.bytes += payload.len() as u64;
                let cmd = if *pttl > 0 {
                    let at = (read_at + pttl).to_string();
                    Command::from_args(&[&b"RESTORE"[..], key, at.as_bytes(), payload, b"ABSTTL"])
                } else {
                    Command::from_args(&[&b"RESTORE"[..], key, b"0", payload])
                };
                writes.push(cmd);
            }
            [Value::Error(e), _] => return Err(ToolError::Refused("DUMP", text(e))),
            _ => counts.gone += 1,
        }
    }
    if writes.is_empty() {
        return Ok(None);
    }
    let mut first_error = None;
    for r in caches.call(Side::New, &writes).await? {
        match r {
            Value::Error(e) if e.starts_with(b"BUSYKEY") => counts.existed += 1,
            Value::Error(e) => {
                counts.failed += 1;
                first_error.get_or_insert_with(|| text(&e));
            }
            _ => counts.copied += 1,
        }
    }
    Ok(first_error)
}

/// Sleeps as long as the rate limits ask.
async fn pace(started: Instant, counts: &Counts, opts: &Options) {
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
            let err = copy_batch(caches, &keys, &mut counts).await?;
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
