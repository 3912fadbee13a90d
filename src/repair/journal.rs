//! The mirror-failure journal: keys whose mirrored write was lost (the
//! mirror down, a timeout, a dropped connection, an error reply to a write
//! nothing compared, a copy that could not reach the mirror) wait here
//! until the mirror is reachable again, then are copied from the side that
//! answered the client, through the repair path.
//!
//! It is bounded (`[journal] max_keys`, one entry per key however often it
//! failed). A key that does not fit marks its route "needs verify" (status,
//! metrics, persisted): the mirror may then differ in keys nobody recorded,
//! and only a verify pass can tell.
//!
//! It survives a restart: the drain task writes it (temp file, fsync,
//! rename) within [`FLUSH_EVERY`] of a change and at shutdown; a restarted
//! proxy loads it and resumes draining. A crash can lose at most the last
//! [`FLUSH_EVERY`] of entries.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::RepairJob;
use crate::routing::{RouteStats, Router, Side};

/// Longest a change waits to be written to disk.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

type DbKey = (Option<u32>, Bytes);

#[derive(Debug)]
struct Entry {
    stats: Arc<RouteStats>,
    /// The side that answered the client: the copy comes from there.
    from: Side,
    /// See [`RepairJob::follows`].
    follows: bool,
    /// Repairer sequence number of the last failure recorded for it.
    stamp: u64,
    /// A copy is queued for it.
    queued: bool,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<DbKey, Entry>,
    /// Routes marked "needs verify", by name.
    verify: BTreeMap<Arc<str>, Arc<RouteStats>>,
}

#[derive(Debug)]
pub struct Journal {
    file: Option<PathBuf>,
    max_keys: usize,
    inner: Mutex<Inner>,
    len: AtomicUsize,
    dirty: AtomicBool,
    /// Saves that failed (logged once per run of failures).
    save_failures: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load the journal {path}: {message}")]
pub struct JournalError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    route: String,
    db: Option<u32>,
    from: Side,
    /// See [`RepairJob::follows`]; absent in journals written before it
    /// existed, whose entries were all copies that follow their route.
    #[serde(default = "yes")]
    follows: bool,
    /// The key, hex-encoded (keys are binary).
    key: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    version: u32,
    keys: Vec<FileEntry>,
    needs_verify: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &c in b {
        s.push(char::from(DIGITS[usize::from(c >> 4)]));
        s.push(char::from(DIGITS[usize::from(c & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

impl Journal {
    /// An empty journal, persisted to `file` when given.
    pub fn new(file: Option<PathBuf>, max_keys: usize) -> Journal {
        Journal {
            file,
            max_keys,
            inner: Mutex::default(),
            len: AtomicUsize::new(0),
            dirty: AtomicBool::new(false),
            save_failures: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Loads the persisted journal, if any; its routes' counters come from
    /// `router`. Returns the number of keys loaded.
    pub fn load(&self, router: &Router) -> Result<usize, JournalError> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let err = |message: String| JournalError {
            path: path.clone(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err(e.to_string())),
        };
        let file: JournalFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut inner = self.lock();
        for name in file.needs_verify {
            let stats = router.stats_for(&name);
            stats.needs_verify.store(true, Ordering::Relaxed);
            inner.verify.insert(name.into(), stats);
        }
        for e in file.keys {
            let key = unhex(&e.key).ok_or_else(|| err(format!("key {:?} is not hex", e.key)))?;
            let stats = router.stats_for(&e.route);
            if inner.keys.len() >= self.max_keys {
                stats.needs_verify.store(true, Ordering::Relaxed);
                inner.verify.insert(stats.name.clone(), stats);
                continue;
            }
            stats.journal_keys.fetch_add(1, Ordering::Relaxed);
            inner.keys.insert(
                (e.db, Bytes::from(key)),
                Entry {
                    stats,
                    from: e.from,
                    follows: e.follows,
                    stamp: 0,
                    queued: false,
                },
            );
        }
        let n = inner.keys.len();
        self.len.store(n, Ordering::Relaxed);
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` waits for a copy here.
    pub fn contains(&self, db: Option<u32>, key: &Bytes) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.lock().keys.contains_key(&(db, key.clone()))
    }

    /// Records that a mirrored write to `key` was lost. `stamp` orders it
    /// against copies (see [`Journal::copied`]).
    pub fn record(
        &self,
        stats: &Arc<RouteStats>,
        (from, follows): (Side, bool),
        db: Option<u32>,
        key: &Bytes,
        stamp: u64,
    ) {
        let mut inner = self.lock();
        if let Some(e) = inner.keys.get_mut(&(db, key.clone())) {
            // Failed again: copy again (a copy under way may predate it).
            e.stamp = stamp;
            e.from = from;
            e.follows = follows;
            e.queued = false;
        } else if inner.keys.len() >= self.max_keys {
            RouteStats::bump(&stats.journal_overflow);
            if !stats.needs_verify.swap(true, Ordering::Relaxed) {
                warn!(route = %stats.name, max_keys = self.max_keys, "mirror-failure journal full: the route needs a verify pass");
            }
            inner.verify.insert(stats.name.clone(), stats.clone());
        } else {
            RouteStats::bump(&stats.journalled);
            stats.journal_keys.fetch_add(1, Ordering::Relaxed);
            // Its own copy: `key` may be a slice of a client's read buffer,
            // which it would keep alive for as long as it is journalled.
            inner.keys.insert(
                (db, Bytes::copy_from_slice(key)),
                Entry {
                    stats: stats.clone(),
                    from,
                    follows,
                    stamp,
                    queued: false,
                },
            );
            self.len.store(inner.keys.len(), Ordering::Relaxed);
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Up to `max` keys not queued yet whose two caches `reachable` says
    /// may be tried, as copies to queue; they are marked queued.
    pub fn take(&self, max: usize, reachable: impl Fn(Side) -> bool) -> Vec<RepairJob> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for ((db, key), e) in inner.keys.iter_mut() {
            if out.len() >= max {
                break;
            }
            if e.queued || !reachable(e.from) || !reachable(e.from.other()) {
                continue;
            }
            // A fleet flip's window is open on its route: copied at its close.
            if e.stats.window_open.load(Ordering::Acquire) {
                continue;
            }
            e.queued = true;
            out.push(RepairJob {
                from: e.from,
                db: *db,
                key: key.clone(),
                stats: e.stats.clone(),
                follows: e.follows,
            });
        }
        out
    }

    /// A copy of `key` that started at sequence `start` succeeded: the
    /// entry goes unless a failure was recorded after the copy started.
    pub fn copied(&self, db: Option<u32>, key: &Bytes, start: u64) {
        if self.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let k = (db, key.clone());
        match inner.keys.get_mut(&k) {
            Some(e) if e.stamp < start => {
                e.stats.journal_keys.fetch_sub(1, Ordering::Relaxed);
                inner.keys.remove(&k);
                self.len.store(inner.keys.len(), Ordering::Relaxed);
                self.dirty.store(true, Ordering::Relaxed);
            }
            Some(e) => e.queued = false,
            None => {}
        }
    }

    /// A copy of `key` did not succeed: it stays, to be retried.
    pub fn release(&self, db: Option<u32>, key: &Bytes) {
        if self.is_empty() {
            return;
        }
        if let Some(e) = self.lock().keys.get_mut(&(db, key.clone())) {
            e.queued = false;
        }
    }

    /// Clears a route's "needs verify" mark (after a verify pass). False
    /// when it was not set.
    pub fn clear_needs_verify(&self, stats: &RouteStats) -> bool {
        let was = stats.needs_verify.swap(false, Ordering::Relaxed);
        self.lock().verify.remove(&stats.name);
        self.dirty.store(true, Ordering::Relaxed);
        was
    }

    /// Writes the journal to its file if it changed since the last save.
    pub fn save(&self) {
        let Some(path) = &self.file else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let body = {
            let inner = self.lock();
            let file = JournalFile {
                version: 1,
                keys: inner
                    .keys
                    .iter()
                    .map(|((db, key), e)| FileEntry {
                        route: e.stats.name.to_string(),
                        db: *db,
                        from: e.from,
                        follows: e.follows,
                        key: hex(key),
                    })
                    .collect(),
                needs_verify: inner.verify.keys().map(|k| k.to_string()).collect(),
            };
            serde_json::to_vec(&file).unwrap_or_default()
        };
        match crate::persist::write_atomically(path, &body) {
            Ok(()) => {
                self.save_failures.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                // Retried at the next flush.
                self.dirty.store(true, Ordering::Relaxed);
                if self.save_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(path = %path.display(), error = %e, "cannot write the mirror-failure journal; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    #[test]
    fn keys_are_kept_once_bounded_and_removed_only_by_a_later_copy() {
        let j = Journal::new(None, 2);
        let stats = Arc::new(RouteStats::named("r"));
        j.record(&stats, (Side::Old, true), None, &key("a"), 1);
        j.record(&stats, (Side::Old, true), None, &key("a"), 2);
        j.record(&stats, (Side::Old, true), Some(1), &key("a"), 3);
        assert_eq!(j.len(), 2);
        assert!(!stats.needs_verify.load(Ordering::Relaxed));
        j.record(&stats, (Side::Old, true), None, &key("b"), 4);
        assert_eq!(j.len(), 2);
        assert!(stats.needs_verify.load(Ordering::Relaxed));
        assert_eq!(stats.journal_overflow.load(Ordering::Relaxed), 1);
        // The mirror (new) unreachable: nothing to take.
        assert!(j.take(10, |s| s == Side::Old).is_empty());
        let jobs = j.take(10, |_| true);
        assert_eq!(jobs.len(), 2);
        assert!(j.take(10, |_| true).is_empty(), "queued once");
        // A copy that started before the last failure does not clear it.
        j.copied(None, &key("a"), 2);
        assert_eq!(j.len(), 2);
        j.copied(None, &key("a"), 5);
        assert_eq!(j.len(), 1);
        j.release(Some(1), &key("a"));
        assert_eq!(j.take(10, |_| true).len(), 1);
        assert_eq!(stats.journal_keys.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        let router = Router::new(&[], &Default::default());
        let j = Journal::new(Some(path.clone()), 10);
        let stats = router.stats_for("sessions");
        j.record(&stats, (Side::New, true), Some(3), &key("k\r\n\0"), 1);
        j.clear_needs_verify(&stats);
        stats.needs_verify.store(true, Ordering::Relaxed);
        j.lock().verify.insert(stats.name.clone(), stats.clone());
        j.save();
        let router2 = Router::new(&[], &Default::default());
        let j2 = Journal::new(Some(path), 10);
        assert_eq!(j2.load(&router2).unwrap(), 1);
        let jobs = j2.take(10, |_| true);
        assert_eq!(jobs[0].key, key("k\r\n\0"));
        assert_eq!(jobs[0].db, Some(3));
        assert_eq!(jobs[0].from, Side::New);
        let stats2 = router2.stats_for("sessions");
        assert!(stats2.needs_verify.load(Ordering::Relaxed));
        assert_eq!(stats2.journal_keys.load(Ordering::Relaxed), 1);
        assert_eq!(hex(b"\x00\xff"), "00ff");
        assert_eq!(unhex("00ff"), Some(vec![0, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
