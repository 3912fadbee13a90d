//! Divergence repair: when the mirror's reply to a mirrored write differs
//! from the authoritative reply, the key is copied from the authoritative
//! cache to the mirror.
//!
//! One background task does every copy on its own connection to each cache
//! (never a client's): `MULTI; DUMP key; PTTL key; EXEC` on the
//! authoritative side reads value and remaining TTL atomically, then
//! `RESTORE key ttl value REPLACE` (or `DEL` when the key is gone) on the
//! mirror.
//!
//! A copy must neither apply a write twice nor undo a newer one:
//!
//! - it waits until no mirrored write to the key is still on its way to
//!   the mirror ([`InFlight`]; writes of other clients too), so the read
//!   sees every write the mirror has or will have applied;
//! - sessions report every mirrored write to a key with a copy pending
//!   ([`Repairer::note_write`]; free when nothing is pending). A write
//!   reported after the copy started may miss the read yet reach the mirror
//!   before the `RESTORE`: the copy then does not write, or redoes itself
//!   from a fresh read (`repair_skipped` counts these; after
//!   [`MAX_ATTEMPTS`] it gives up, counted as failed);
//! - writes it cannot see (another instance of a fleet) are guarded
//!   against by the target itself: the `RESTORE` applies only if the key
//!   there is unchanged since before the read (`guarded.rs`).
//!
//! While a fleet flip's window is open on a route (members may disagree on
//! which cache answers), its copies wait in the journal: two members
//! copying one key in opposite directions could each erase the other's
//! write. The window's close copies its keys in the direction agreed.

mod copy;
mod direction;
mod guarded;
mod inflight;
pub mod journal;

pub(crate) use copy::{restore, restore_command, snapshot_commands};
pub use inflight::{Entered, InFlight, Keys};
pub use journal::Journal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::error::UpstreamError;
use crate::protocol::{text, Command};
use crate::routing::PerSide;
use crate::routing::{RouteStats, Router, Side};
use crate::upstream::client::Client;
use crate::upstream::Upstream;

/// Copies queued at once; beyond this a mismatch is counted as dropped.
pub const QUEUE: usize = 10_000;
pub const MAX_ATTEMPTS: u8 = 10;
/// Longest a copy waits for mirrored writes to its key to be answered (a
/// hot key may never be quiet; the copy then goes ahead).
const SETTLE_MAX: Duration = Duration::from_secs(1);
/// After a copy could not reach a cache, copies involving it are journalled
/// without trying for this long, doubling per failure up to the max.
const SIDE_RETRY_MIN: Duration = Duration::from_millis(500);
const SIDE_RETRY_MAX: Duration = Duration::from_secs(5);

/// One key to copy from `from` to the other side.
#[derive(Debug)]
pub struct RepairJob {
    pub from: Side,
    /// `from` answered for the key's route when the copy was queued, and
    /// the copy follows the route: if it flips before the copy runs, the
    /// copy reads from the side that answers then. `false` for fills
    /// (read fallback, backfill), which copy old to new on purpose.
    pub follows: bool,
    /// The database the client selected; `None`: each upstream's `db`.
    pub db: Option<u32>,
    pub key: Bytes,
    pub stats: Arc<RouteStats>,
}

#[derive(Debug)]
pub struct Queued {
    job: RepairJob,
    attempt: u8,
}

#[derive(Debug, Default)]
struct Pending {
    /// Repair copies queued for this key and not finished (at most one).
    jobs: usize,
    /// Other copies under way (backfill batches).
    watchers: usize,
    /// Sequence number of the last write reported for it.
    last_write: u64,
}

type DbKey = Option<u32>;

#[derive(Debug)]
pub struct Repairer {
    /// Mirrored writes not yet answered, per key slot.
    pub inflight: Arc<InFlight>,
    /// Keys whose mirrored write was lost, waiting for the mirror.
    pub journal: Journal,
    tx: mpsc::Sender<Queued>,
    pending: Mutex<HashMap<DbKey, HashMap<Bytes, Pending>>>,
    pending_keys: AtomicUsize,
    seq: AtomicU64,
    /// Per cache, after copies failed to reach it: until when copies
    /// involving it are journalled without trying.
    down: Mutex<PerSide<Backoff>>,
    /// Per cache: it refused the guard script, copies to it are plain.
    unguarded: PerSide<AtomicBool>,
}

impl Repairer {
    pub fn new(journal: Journal) -> (Repairer, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let r = Repairer {
            inflight: Arc::default(),
            journal,
            tx,
            pending: Mutex::new(HashMap::new()),
            pending_keys: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            down: Mutex::new(PerSide::from_fn(|_| {
                Backoff::new(SIDE_RETRY_MIN, SIDE_RETRY_MAX)
            })),
            unguarded: PerSide::from_fn(|_| AtomicBool::new(false)),
        };
        (r, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DbKey, HashMap<Bytes, Pending>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether copies may try `side` now (it did not just fail them).
    pub fn side_usable(&self, side: Side) -> bool {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        down[side].may_try(Instant::now())
    }

    fn side_failed(&self, side: Side) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        down[side].fail(Instant::now());
    }

    fn side_ok(&self, side: Side) {
        self.down.lock().unwrap_or_else(|e| e.into_inner())[side].reset();
    }

    /// Mirrored writes to `keys` were lost: journal them for a copy from
    /// `from` once the mirror is back.
    pub fn lost(&self, stats: &Arc<RouteStats>, from: Side, db: DbKey, keys: &[Bytes]) {
        for key in keys {
            self.journal
                .record(stats, (from, true), db, key, self.next_seq());
        }
    }

    /// Whether a copy of `key` is queued, under way or journalled: the two
    /// caches may differ on it until it lands (a read must not fall back
    /// to old for it, which could bring back what a lost DEL removed).
    pub fn pending_for(&self, db: DbKey, key: &Bytes) -> bool {
        let queued = self.pending_keys.load(Ordering::SeqCst) > 0
            && self
                .lock()
                .get(&db)
                .is_some_and(|m| m.get(&key[..]).is_some_and(|p| p.jobs > 0));
        queued || self.journal.contains(db, key)
    }

    /// A write to `key` went through the proxy (called for mirrored writes).
    pub fn note_write(&self, db: DbKey, key: &[u8]) {
        if self.pending_keys.load(Ordering::SeqCst) == 0 {
            return;
        }
        let seq = self.next_seq();
        if let Some(p) = self.lock().get_mut(&db).and_then(|m| m.get_mut(key)) {
            p.last_write = seq;
        }
    }

    /// Queues a copy. False (counted, and the key journalled) when the
    /// queue is full. A key
    /// already queued is not queued twice: the copy waiting reads it later,
    /// and one under way is redone because the write behind this mismatch
    /// was noted.
    pub fn submit(&self, job: RepairJob) -> bool {
        if !self.add(job.db, &job.key, |p| {
            let first = p.jobs == 0;
            p.jobs = 1;
            first
        }) {
            return true;
        }
        let stats = job.stats.clone();
        // Owned: a queued copy must not keep a client's read buffer alive.
        let job = RepairJob {
            key: Bytes::copy_from_slice(&job.key),
            ..job
        };
        let queued = Queued { job, attempt: 0 };
        match self.tx.try_send(queued) {
            Ok(()) => true,
            Err(e) => {
                RouteStats::bump(&stats.repair_dropped);
                self.postpone(&e.into_inner().job);
                false
            }
        }
    }

    /// Starts watching writes to `key` for a copy outside the repair
    /// queue (a backfill batch): from now on [`Repairer::note_write`]
    /// records them. Pair with [`Repairer::release`].
    pub fn register(&self, db: DbKey, key: &Bytes) {
        self.add(db, key, |p| {
            p.watchers += 1;
            true
        });
    }

    fn add(&self, db: DbKey, key: &Bytes, f: impl FnOnce(&mut Pending) -> bool) -> bool {
        let mut map = self.lock();
        let keys = map.entry(db).or_default();
        if let Some(p) = keys.get_mut(&key[..]) {
            return f(p);
        }
        self.pending_keys.fetch_add(1, Ordering::SeqCst);
        // Owned: `key` may be a slice of a client's read buffer.
        f(keys.entry(Bytes::copy_from_slice(key)).or_default())
    }

    /// A copy's start: a write to a registered key reported after this
    /// makes [`Repairer::written_after`] true.
    pub fn start(&self) -> u64 {
        self.next_seq()
    }

    /// Whether a write to `key` (registered) was reported after `start`.
    pub fn written_after(&self, db: DbKey, key: &[u8], start: u64) -> bool {
        self.lock()
            .get(&db)
            .and_then(|m| m.get(key))
            .is_some_and(|p| p.last_write > start)
    }

    fn written_since(&self, job: &RepairJob, seq: u64) -> bool {
        self.written_after(job.db, &job.key, seq)
    }

    /// Ends one copy of `key` begun with [`Repairer::register`].
    pub fn release(&self, db: DbKey, key: &[u8]) {
        self.remove(db, key, |p| p.watchers = p.watchers.saturating_sub(1));
    }

    fn remove(&self, db: DbKey, key: &[u8], f: impl FnOnce(&mut Pending)) {
        let mut map = self.lock();
        let Some(keys) = map.get_mut(&db) else {
            return;
        };
        if let Some(p) = keys.get_mut(key) {
            f(p);
            if p.jobs == 0 && p.watchers == 0 {
                keys.remove(key);
                self.pending_keys.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if keys.is_empty() {
            map.remove(&db);
        }
    }

    /// Ends a queued copy without copying: its key goes to the journal,
    /// copied once both caches take copies again.
    fn postpone(&self, job: &RepairJob) {
        self.finish(job);
        let seq = self.next_seq();
        self.journal
            .record(&job.stats, (job.from, job.follows), job.db, &job.key, seq);
    }

    fn finish(&self, job: &RepairJob) {
        self.remove(job.db, &job.key, |p| p.jobs = p.jobs.saturating_sub(1));
    }

    /// Copies waiting or in flight.
    pub fn pending(&self) -> usize {
        self.pending_keys.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0} answered {1}")]
    Refused(&'static str, String),
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
    /// The cache cannot take commands for now (loading its data after a
    /// restart, busy with a script): the key waits in the journal.
    #[error("{0} cache answered {1}")]
    NotNow(Side, String),
}

impl CopyError {
    /// The cache to try again later, when the copy can succeed then.
    fn retry_side(&self) -> Option<Side> {
        match self {
            CopyError::Upstream(e) => Some(e.side()),
            CopyError::NotNow(side, _) => Some(*side),
            CopyError::Refused(..) | CopyError::Unexpected(_) => None,
        }
    }
}

/// Error replies that mean "not now" rather than "never": a restarted
/// cache loading its data, a long script, a replica without its master.
fn not_now(side: Side, reply: &[u8]) -> Option<CopyError> {
    const TRANSIENT: [&[u8]; 4] = [b"-LOADING", b"-BUSY", b"-MASTERDOWN", b"-TRYAGAIN"];
    TRANSIENT
        .iter()
        .any(|p| reply.starts_with(p))
        .then(|| CopyError::NotNow(side, text(reply)))
}

/// One repair connection per side.
type Link = Client;

/// What the copier runs on: the serving proxy's upstreams (their backoff
/// included), the repairer, and the reply depth limit.
#[derive(Clone, Debug)]
pub struct Copier {
    pub repairer: Arc<Repairer>,
    pub upstreams: Arc<PerSide<Upstream>>,
    pub depth: usize,
    /// The live routes: a copy runs only while its route still writes the
    /// side it copies from.
    pub router: Arc<Router>,
}

async fn call_in(
    link: &mut Link,
    copier: &Copier,
    side: Side,
    db: Option<u32>,
    cmds: Vec<Command>,
) -> Result<Vec<Bytes>, CopyError> {
    let upstream = &copier.upstreams[side];
    match link.call_in(upstream, copier.depth, db, &cmds).await? {
        Ok(replies) => match replies.iter().find_map(|r| not_now(side, r)) {
            Some(e) => Err(e),
            None => Ok(replies),
        },
        Err(refusal) => {
            Err(not_now(side, &refusal)
                .unwrap_or_else(|| CopyError::Refused("SELECT", text(&refusal))))
        }
    }
}

/// Runs the copies until shutdown.
pub async fn run(
    copier: Copier,
    mut rx: mpsc::Receiver<Queued>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut links = PerSide::from_fn(|_| Link::new());
    loop {
        let mut q = tokio::select! {
            q = rx.recv() => match q { Some(q) => q, None => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let repairer = &copier.repairer;
        let stats = q.job.stats.clone();
        if stats.window_open.load(Ordering::Acquire) {
            // A fleet flip's window: the close copies it.
            repairer.postpone(&q.job);
            continue;
        }
        match direction::source(&copier, &q.job) {
            Some(from) => q.job.from = from,
            None => continue,
        }
        let (from, to) = (q.job.from, q.job.from.other());
        if !repairer.side_usable(from) || !repairer.side_usable(to) {
            // A cache that just failed copies: keep the key for later
            // instead of waiting out a timeout per key.
            repairer.postpone(&q.job);
            continue;
        }
        // Start first: a write reported after it is seen by the checks,
        // one reported before was held, so settling waits for it.
        let start = repairer.start();
        // Still in flight after the wait: treated as a write that raced
        // the copy (read again later), never copied under it.
        let settled = settle(repairer, &q.job.key, Instant::now() + SETTLE_MAX).await;
        let copied = match settled {
            true => copy::copy(&copier, &mut links, &q, start).await,
            false => Ok(false),
        };
        match copied {
            Ok(true) if !repairer.written_since(&q.job, start) => {
                repairer.side_ok(from);
                repairer.side_ok(to);
                RouteStats::bump(&stats.repaired);
                repairer.journal.copied(q.job.db, &q.job.key, start);
                repairer.finish(&q.job);
            }
            Ok(_) if q.attempt + 1 < MAX_ATTEMPTS => {
                // A write raced the copy: read again.
                RouteStats::bump(&stats.repair_skipped);
                let again = Queued {
                    attempt: q.attempt + 1,
                    ..q
                };
                if let Err(e) = repairer.tx.try_send(again) {
                    RouteStats::bump(&stats.repair_dropped);
                    repairer.postpone(&e.into_inner().job);
                }
            }
            Ok(_) => {
                RouteStats::bump(&stats.repair_skipped);
                RouteStats::bump(&stats.repair_failed);
                warn!(from = %q.job.from, attempts = MAX_ATTEMPTS, "repair copy gave up for now: the key was written during every attempt; journalled");
                repairer.postpone(&q.job);
            }
            Err(e) => match e.retry_side() {
                Some(side) => {
                    // A cache unreachable or not taking commands yet: the
                    // journal retries once it is back.
                    repairer.side_failed(side);
                    debug!(from = %q.job.from, error = %e, "repair copy could not reach a cache; journalled");
                    repairer.postpone(&q.job);
                }
                None => {
                    RouteStats::bump(&stats.repair_failed);
                    warn!(from = %q.job.from, error = %e, "repair copy failed");
                    repairer.finish(&q.job);
                    repairer.journal.release(q.job.db, &q.job.key);
                }
            },
        }
    }
}

/// Feeds the journal's keys to the copier while their mirror may be tried,
/// and saves the journal; until shutdown (which saves it a last time).
pub async fn drain_journal(copier: Copier, mut shutdown: watch::Receiver<bool>) {
    let repairer = &copier.repairer;
    let mut tick = tokio::time::interval(journal::FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if !repairer.journal.is_empty() {
            let room = (QUEUE / 2).saturating_sub(repairer.pending());
            let reachable =
                |side: Side| copier.upstreams[side].may_try() && repairer.side_usable(side);
            for job in repairer.journal.take(room.min(1000), reachable) {
                let (db, key) = (job.db, job.key.clone());
                if !repairer.submit(job) {
                    repairer.journal.release(db, &key);
                }
            }
        }
        save_journal(repairer).await;
    }
    save_journal(repairer).await;
}

async fn save_journal(repairer: &Arc<Repairer>) {
    let r = repairer.clone();
    let _ = tokio::task::spawn_blocking(move || r.journal.save()).await;
}

/// Waits, up to `until`, until no mirrored write to the key (or its slot)
/// is unanswered by either cache: one still on its way would otherwise
/// land after the copy and apply twice, or be missed by its read. False
/// when it was still busy at `until`.
pub(crate) async fn settle(repairer: &Repairer, key: &[u8], until: Instant) -> bool {
    loop {
        if !repairer.inflight.busy(key) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests;
