//! The member's side of the fleet: the heartbeat loop (read the record,
//! adopt a newer epoch, write the heartbeat), the read at start, and the
//! fleet-wide flip.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Parts as Shared;
use super::{now_ms, Fleet, Member, MemberView, Record};
use crate::control::{FlipError, RouteStatus, Source};
use crate::routing::{Phase, Side};

/// Members silent this many heartbeats are removed from the record.
const FORGET_AFTER: u64 = 30;

/// One heartbeat: the record read from both caches (a newer epoch
/// adopted), then this member's heartbeat written.
pub async fn tick(shared: &Shared, fleet: &Fleet) {
    let seen = fleet.read().await;
    if let Some(record) = seen.record.as_ref().filter(|r| r.epoch > fleet.applied()) {
        adopt(shared, fleet, record);
    }
    if seen.at.is_none() {
        warn!(
            old = ?seen.errors[Side::Old],
            new = ?seen.errors[Side::New],
            "fleet record unreachable on both caches; serving the last phases"
        );
    }
    let forget = FORGET_AFTER * fleet.config.heartbeat_ms;
    let stale: Vec<String> = seen
        .members
        .iter()
        .filter(|m| now_ms().saturating_sub(m.seen_ms) > forget)
        .map(|m| m.id.clone())
        .collect();
    super::window::close_if_done(shared, fleet, &seen);
    let mut seen = seen;
    restore(fleet, &mut seen).await;
    fleet.keep(seen);
    fleet.store.heartbeat(&me(shared, fleet), &stale).await;
    if shared
        .router
        .current()
        .routes
        .iter()
        .any(|r| r.auto_cutover.is_some())
    {
        fleet.renew_lease().await;
    }
}

/// Writes the record back where a cache read lacks it or holds an older
/// epoch (a `FLUSHALL`, a cache restarted empty or failed over to a
/// replica that missed it), from what was read now or, when both lost it,
/// before; so a member starting while the other cache is down still finds
/// it. The compare-and-set never lowers an epoch.
async fn restore(fleet: &Fleet, seen: &mut super::Seen) {
    if seen.at.is_none() {
        return;
    }
    let last = fleet
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record
        .clone();
    let epoch = |r: &Option<Record>| r.as_ref().map_or(0, |r| r.epoch);
    if epoch(&last) > epoch(&seen.record) {
        seen.record = last;
    }
    let Some(record) = &seen.record else { return };
    let behind: Vec<Side> = Side::BOTH
        .into_iter()
        .filter(|&s| seen.epochs[s].is_some_and(|e| e < record.epoch))
        .collect();
    if behind.is_empty() {
        return;
    }
    fleet.store.commit(record).await;
    info!(epoch = record.epoch, sides = ?behind, "fleet record written back where it was missing or older");
}

/// Applies `record`'s phases here; its epoch is then the one served.
fn adopt(shared: &Shared, fleet: &Fleet, record: &Record) {
    match shared.control.adopt(&shared.router, &record.routes) {
        Ok(()) => {
            fleet.applied.store(record.epoch, Ordering::Release);
            fleet.log_adopted(record);
        }
        Err(e) => warn!(epoch = record.epoch, error = %e, "cannot apply the fleet record"),
    }
}

/// This member's heartbeat now.
fn me(shared: &Shared, fleet: &Fleet) -> Member {
    let table = shared.router.current();
    let mut counts = std::collections::BTreeMap::new();
    let mut journal_keys = std::collections::BTreeMap::new();
    let mut shadow = std::collections::BTreeMap::new();
    for r in &table.routes {
        let c = r
            .stats
            .snapshot()
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        counts.insert(r.name.to_string(), c);
        let j = r.stats.journal_keys.load(Ordering::Relaxed);
        journal_keys.insert(r.name.to_string(), j);
        shadow.insert(r.name.to_string(), r.stats.shadow.agreement());
    }
    Member {
        id: fleet.id.clone(),
        listen: fleet
            .listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        admin: fleet
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        applied: fleet.applied(),
        started_ms: fleet.started_ms,
        seen_ms: now_ms(),
        counts,
        journal_keys,
        shadow,
    }
}

/// How often the record's epoch is looked at between heartbeats, so a
/// flip reaches every member well within a second.
const POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Heartbeats until shutdown; between them, a newer epoch on either cache
/// is adopted at once.
pub async fn run(shared: Shared, fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let mut beat = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL.min(fleet.heartbeat())) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (mut newer, mut prepared) = (false, 0);
        for side in Side::BOTH {
            if let Ok((e, p)) = fleet.store.epochs(side).await {
                newer |= e > fleet.applied();
                prepared = prepared.max(p);
            }
        }
        // A flip being prepared: its window opens here, then this member
        // acknowledges it.
        if prepared > fleet.applied() && prepared > fleet.acked.load(Ordering::Acquire) {
            let seen = fleet.read().await;
            if let Some(p) = seen.prepare.as_ref().filter(|p| p.epoch == prepared) {
                super::window::open(&shared, &fleet, p);
                fleet.store.ack(&fleet.id, prepared).await;
                fleet.acked.store(prepared, Ordering::Release);
            }
        }
        if fleet
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            // Closing needs every member's epoch: a read each poll meanwhile.
            let seen = fleet.read().await;
            super::window::close_if_done(&shared, &fleet, &seen);
        }
        if newer || beat.elapsed() >= fleet.heartbeat() {
            tick(&shared, &fleet).await;
            beat = std::time::Instant::now();
        }
    }
}

/// What a fleet-wide flip answers.
#[derive(Debug, Serialize)]
pub struct FlipOutcome {
    #[serde(flatten)]
    pub route: RouteStatus,
    pub epoch: u64,
    pub members: Vec<MemberView>,
    /// Live members that did not apply the epoch within `flip_timeout_ms`.
    pub behind: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetFlipError {
    #[error(transparent)]
    Flip(#[from] FlipError),
    #[error("the fleet record could be written on neither cache (old: {old}; new: {new})")]
    Unreachable { old: String, new: String },
    #[error("another flip committed epoch {epoch} first; read the status and retry")]
    Lost { epoch: u64 },
    #[error("aborted, nothing changed: fleet members did not acknowledge within flip_timeout_ms: {}; retry, or force to proceed without them", members.join(", "))]
    Aborted { members: Vec<String> },
}

/// Why neither cache took the prepared flip: another flip got there
/// first, or neither could be reached.
fn refused(
    prepared: &crate::routing::PerSide<Result<bool, super::store::StoreError>>,
    epoch: u64,
) -> FleetFlipError {
    if Side::BOTH.iter().any(|&s| matches!(prepared[s], Ok(false))) {
        return FleetFlipError::Lost { epoch };
    }
    unreachable_error(|s| prepared[s].as_ref().err().map(ToString::to_string))
}

fn unreachable_error(err: impl Fn(Side) -> Option<String>) -> FleetFlipError {
    FleetFlipError::Unreachable {
        old: err(Side::Old).unwrap_or_default(),
        new: err(Side::New).unwrap_or_default(),
    }
}

/// Writes `record` to both caches; `Ok` when one took it.
async fn commit(fleet: &Fleet, record: &Record) -> Result<(), FleetFlipError> {
    let stored = fleet.store.commit(record).await;
    let won = Side::BOTH
        .iter()
        .any(|&s| matches!(stored[s], Ok(e) if e == record.epoch));
    if !won {
        let higher = Side::BOTH
            .iter()
            .filter_map(|&s| stored[s].as_ref().ok().copied())
            .max();
        return Err(match higher {
            Some(epoch) => FleetFlipError::Lost { epoch },
            None => unreachable_error(|s| stored[s].as_ref().err().map(ToString::to_string)),
        });
    }
    Ok(())
}

/// Flips `route` for the whole fleet in two steps: *prepare* the next
/// epoch on both caches and wait for every live member to acknowledge it
/// (without `force`, a member that does not within `flip_timeout_ms`
/// aborts the flip: nothing changes anywhere); then *commit* it to both
/// caches, apply it here, and wait for every live member to serve it.
pub async fn flip(
    shared: &Shared,
    fleet: &Fleet,
    route: &str,
    phase: Phase,
    ramp_percent: Option<u8>,
    force: bool,
    source: Source,
) -> Result<FlipOutcome, FleetFlipError> {
    shared.control.check_flip(route, phase, force)?;
    let seen = fleet.read().await;
    let base = [
        seen.record.as_ref().map_or(0, |r| r.epoch),
        seen.prepare.as_ref().map_or(0, |r| r.epoch),
        fleet.applied(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let mut routes = shared.control.decisions();
    let ramp_percent = ramp_percent.filter(|_| phase == Phase::ReadNew);
    routes.insert(
        route.to_string(),
        super::Decision {
            phase,
            ramp_percent,
        },
    );
    let record = Record {
        epoch: base + 1,
        routes,
        by: fleet.id.clone(),
        at_ms: now_ms(),
        why: format!("{} route={route} to={phase}", source.name()),
    };
    // Prepare: every live member acknowledges before anything changes.
    let prepared = fleet.store.prepare(&record).await;
    if !Side::BOTH.iter().any(|&s| matches!(prepared[s], Ok(true))) {
        return Err(refused(&prepared, base + 1));
    }
    super::window::open(shared, fleet, &record);
    fleet.store.ack(&fleet.id, record.epoch).await;
    fleet.acked.store(record.epoch, Ordering::Release);
    let missing = fleet.wait_acked(record.epoch).await;
    if !missing.is_empty() && !force {
        fleet.store.abort(record.epoch).await;
        super::window::close_if_done(shared, fleet, &fleet.read().await);
        warn!(epoch = record.epoch, ?missing, "fleet flip aborted");
        return Err(FleetFlipError::Aborted { members: missing });
    }
    commit(fleet, &record).await?;
    shared.control.adopt(&shared.router, &record.routes)?;
    fleet.applied.store(record.epoch, Ordering::Release);
    fleet.log_adopted(&record);
    fleet.store.heartbeat(&me(shared, fleet), &[]).await;
    let behind = fleet.wait_applied(record.epoch).await;
    let seen = fleet.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    super::window::close_if_done(shared, fleet, &seen);
    let route = shared
        .control
        .status()
        .into_iter()
        .find(|r| r.name == route)
        .expect("checked above");
    Ok(FlipOutcome {
        route,
        epoch: record.epoch,
        members: fleet.members(),
        behind,
    })
}
