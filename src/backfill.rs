//! Backfill inside a serving proxy (`POST /routes/{name}/backfill`): the
//! same scan and batched copy as `cutover backfill`, made exact by the
//! proxy's knowledge of every write.
//!
//! The route must be in `dual-write`: old is authoritative and every write
//! also goes to new, so a key's value on old, read when no write to it is
//! on its way to either cache, is what new must hold. Per batch:
//!
//! 1. the keys are registered with the repairer: from then on every write
//!    the proxy sends to one of them is reported (with a sequence number);
//! 2. the copy takes its start number, then waits until no write to those
//!    keys is unanswered by either cache (a write reported before the start
//!    was counted in flight before it was reported: see `repair::InFlight`);
//! 3. one `MULTI; DUMP; PTTL ...; EXEC` on old, then `RESTORE ... REPLACE`
//!    on new, except for keys reported written after the start (their read
//!    may predate the write);
//! 4. keys reported written after the start, even once their `RESTORE`
//!    landed (the write may have reached new first), are copied again from
//!    a fresh read, up to [`ATTEMPTS`] times; then they go to the repair
//!    queue, which copies them the same way one by one.
//!
//! So a write through the proxy after a key's read is never overwritten by
//! that read, and a key deleted through the proxy is never brought back.
//! Keys that expire on old are skipped; `RESTORE` carries the remaining TTL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::repair::{settle, RepairJob, Repairer};
use crate::routing::{PerSide, Phase, RouteStats, Router, Side};
use crate::tools::backfill::{copy_keys, pace, Counts, Options};
use crate::tools::{Caches, KeyScan, ToolError};
use crate::upstream::Upstream;

/// Tries per key (fresh reads) before it is handed to the repair queue.
pub const ATTEMPTS: usize = 5;
/// Longest a batch waits for writes to its keys to be answered.
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// The in-proxy backfills, by route name: the one running or the last one.
#[derive(Debug)]
pub struct Backfills {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    parts: Arc<Parts>,
}

/// What a backfill runs on: the serving proxy's table, caches and repairer.
#[derive(Debug)]
struct Parts {
    router: Arc<Router>,
    upstreams: Arc<PerSide<Upstream>>,
    repairer: Arc<Repairer>,
    depth: usize,
}

#[derive(Debug)]
pub struct Job {
    pub route: String,
    started: SystemTime,
    since: Instant,
    cancel: AtomicBool,
    progress: Mutex<Progress>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    state: State,
    counts: Counts,
    error: Option<String>,
    first_refusal: Option<String>,
    finished: Option<SystemTime>,
    seconds: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum State {
    #[default]
    Running,
    Done,
    Cancelled,
    Failed,
}

/// A backfill in `GET /status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JobView {
    pub state: String,
    pub started: String,
    pub finished: Option<String>,
    pub seconds: f64,
    pub keys_per_sec: u64,
    #[serde(flatten)]
    pub counts: Counts,
    pub error: Option<String>,
    /// The first refusal of a `RESTORE` (or `DUMP`), when any key took the
    /// type-aware path or failed.
    pub first_refusal: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no route named {0:?}")]
    NoSuchRoute(String),
    #[error("route {route:?} is in {phase}: an exact backfill needs dual-write (every write reaching both caches, old authoritative); flip it there first, or use the standalone `cutover backfill`")]
    NotDualWrite { route: String, phase: Phase },
    #[error("a backfill of route {0:?} is already running (DELETE /routes/{0}/backfill stops it)")]
    Running(String),
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
        }
    }
}

impl Job {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn view(&self) -> JobView {
        let p = self.lock().clone();
        let seconds = match p.finished {
            Some(_) => p.seconds,
            None => self.since.elapsed().as_secs_f64(),
        };
        let fmt = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        JobView {
            state: p.state.name().to_string(),
            started: fmt(self.started),
            finished: p.finished.map(fmt),
            seconds,
            keys_per_sec: (p.counts.scanned as f64 / seconds.max(0.001)) as u64,
            counts: p.counts,
            error: p.error,
            first_refusal: p.first_refusal,
        }
    }

    fn finish(&self, state: State, error: Option<String>) {
        let mut p = self.lock();
        p.state = state;
        p.error = error;
        p.finished = Some(SystemTime::now());
        p.seconds = self.since.elapsed().as_secs_f64();
    }
}

impl Backfills {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route's backfill, running or last finished.
    pub fn get(&self, route: &str) -> Option<Arc<Job>> {
        self.lock().get(route).cloned()
    }

    /// Asks the route's running backfill to stop after its batch.
    pub fn cancel(&self, route: &str) -> Option<Arc<Job>> {
        let job = self.get(route).filter(|j| j.state() == State::Running)?;
        job.cancel.store(true, Ordering::Relaxed);
        Some(job)
    }
}

impl Backfills {
    /// Backfills of the routes `router` serves, copying between `upstreams`
    /// (with connections of their own) under `repairer`'s watch.
    pub fn new(
        router: Arc<Router>,
        upstreams: Arc<PerSide<Upstream>>,
        repairer: Arc<Repairer>,
        depth: usize,
    ) -> Backfills {
        Backfills {
            jobs: Mutex::default(),
            parts: Arc::new(Parts {
                router,
                upstreams,
                repairer,
                depth,
            }),
        }
    }

    /// Starts a backfill of `route` in the background.
    pub fn start(
        &self,
        route: &str,
        opts: Options,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Job>, StartError> {
        start(self, route, opts, shutdown)
    }
}

fn start(
    backfills: &Backfills,
    route: &str,
    opts: Options,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<Job>, StartError> {
    let parts = &backfills.parts;
    let table = parts.router.current();
    let r = table
        .routes
        .iter()
        .find(|r| &*r.name == route)
        .ok_or_else(|| StartError::NoSuchRoute(route.to_string()))?;
    if r.phase != Phase::DualWrite {
        return Err(StartError::NotDualWrite {
            route: route.to_string(),
            phase: r.phase,
        });
    }
    let job = {
        let mut jobs = backfills.lock();
        if jobs.get(route).is_some_and(|j| j.state() == State::Running) {
            return Err(StartError::Running(route.to_string()));
        }
        let job = Arc::new(Job {
            route: route.to_string(),
            started: SystemTime::now(),
            since: Instant::now(),
            cancel: AtomicBool::new(false),
            progress: Mutex::default(),
        });
        jobs.insert(route.to_string(), job.clone());
        job
    };
    info!(route, "backfill started through the admin API");
    let (parts, j) = (parts.clone(), job.clone());
    tokio::spawn(async move {
        let outcome = run(&parts, &j, &opts, shutdown).await;
        let c = j.lock().counts.clone();
        match outcome {
            Ok(state) => {
                info!(route = %j.route, ?state, scanned = c.scanned, copied = c.copied, typed = c.typed, redone = c.redone, handed_to_repair = c.handed_to_repair, failed = c.failed, "backfill finished");
                j.finish(state, None);
            }
            Err(e) => {
                warn!(route = %j.route, error = %e, scanned = c.scanned, "backfill failed");
                j.finish(State::Failed, Some(e.to_string()));
            }
        }
    });
    Ok(job)
}

async fn run(
    parts: &Parts,
    job: &Job,
    opts: &Options,
    shutdown: watch::Receiver<bool>,
) -> Result<State, ToolError> {
    let mut caches = Caches::serving(&parts.upstreams, parts.depth, parts.router.current());
    let route = caches.routes(Some(&job.route))?[0];
    let stats = caches.table.routes[route].stats.clone();
    let mut scan = KeyScan::new(route);
    let started = Instant::now();
    let mut counts = Counts::default();
    loop {
        if job.cancel.load(Ordering::Relaxed) || *shutdown.borrow() {
            return Ok(State::Cancelled);
        }
        let table = parts.router.current();
        let phase = table
            .routes
            .iter()
            .find(|r| *r.name == job.route)
            .map(|r| r.phase);
        if phase != Some(Phase::DualWrite) {
            return Err(ToolError::Refused(
                "the route",
                format!("left dual-write ({phase:?}) during the backfill; run it again once back"),
            ));
        }
        let Some(keys) = scan
            .next(
                &mut caches,
                Side::Old,
                opts.batch,
                opts.type_filter.as_deref(),
            )
            .await?
        else {
            return Ok(State::Done);
        };
        counts.scanned += keys.len() as u64;
        let refusal = copy_batch(&parts.repairer, &mut caches, keys, &stats, &mut counts).await?;
        {
            let mut p = job.lock();
            p.counts = counts.clone();
            if p.first_refusal.is_none() {
                p.first_refusal = refusal;
            }
        }
        pace(started, &counts, opts).await;
    }
}

/// Copies one batch exactly (see the module documentation).
async fn copy_batch(
    repairer: &Repairer,
    caches: &mut Caches,
    keys: Vec<Bytes>,
    stats: &Arc<RouteStats>,
    counts: &mut Counts,
) -> Result<Option<String>, ToolError> {
    for k in &keys {
        repairer.register(None, k);
    }
    let result = copy_registered(repairer, caches, &keys, stats, counts).await;
    for k in &keys {
        repairer.release(None, k);
    }
    result
}

async fn copy_registered(
    repairer: &Repairer,
    caches: &mut Caches,
    keys: &[Bytes],
    stats: &Arc<RouteStats>,
    counts: &mut Counts,
) -> Result<Option<String>, ToolError> {
    let mut todo = keys.to_vec();
    let mut first_refusal = None;
    for attempt in 0..ATTEMPTS {
        if todo.is_empty() {
            break;
        }
        if attempt > 0 {
            counts.redone += todo.len() as u64;
        }
        // Start first, then settle: see the module documentation.
        let start = repairer.start();
        let until = Instant::now() + SETTLE_MAX;
        let mut ready = Vec::with_capacity(todo.len());
        let mut busy = Vec::new();
        for k in todo {
            if settle(repairer, &k, until).await {
                ready.push(k);
            } else {
                busy.push(k);
            }
        }
        let (mut redo, refusal) =
            copy_keys(caches, &ready, Some((repairer, start)), counts).await?;
        first_refusal = first_refusal.or(refusal);
        redo.extend(busy);
        todo = redo;
    }
    for key in todo {
        counts.handed_to_repair += 1;
        repairer.submit(RepairJob {
            from: Side::Old,
            db: None,
            key,
            stats: stats.clone(),
            follows: false,
        });
    }
    Ok(first_refusal)
}
