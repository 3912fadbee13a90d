//! A fleet: several cutover instances (`[fleet] name`, same upstreams)
//! serving one phase table, kept in a control record in the caches
//! themselves ([`store`]).
//!
//! Each member, every `heartbeat_ms`, writes its heartbeat (id, addresses,
//! version, the epoch it serves, its routes' counters) to both caches and
//! reads the record; every 50 ms it looks at the record's epochs: a flip
//! being prepared is acknowledged, a committed epoch higher than the one
//! it serves is adopted (the higher of the two caches' wins). A flip on
//! any member prepares the next epoch and waits for every live member's
//! acknowledgement (or aborts), then commits it and waits for every live
//! member to serve it ([`run::flip`]). A member silent for five heartbeats
//! is absent: it no longer holds flips back.
//!
//! Between the first and the last member applying a flip, the window
//! ([`window`]) keeps the keys written and holds repair copies. A member
//! that cannot read the record for five heartbeats, or serves an older
//! epoch, is out of date ([`Fleet::out_of_date`]): `/status`, `/ready`,
//! metrics and the log say so. One member at a time, holding a lease in
//! the record's hash, runs auto-cutover on the fleet's figures ([`auto`]).

pub mod auto;
pub mod store;
pub mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

pub use store::{Decision, Member, Record, Store, RESERVED_PREFIX};

use crate::config::FleetConfig;
use crate::routing::{PerSide, Side};

/// What the fleet works on: the phase decisions, the routing table and the
/// repairer (the parts of the proxy's shared state it needs).
#[derive(Clone, Debug)]
pub struct Parts {
    pub control: std::sync::Arc<crate::control::Control>,
    pub router: std::sync::Arc<crate::routing::Router>,
    pub repairer: std::sync::Arc<crate::repair::Repairer>,
}

/// Heartbeats a member may miss before it is absent.
const ABSENT_AFTER: u64 = 5;

/// This instance as a member of its fleet.
#[derive(Debug)]
pub struct Fleet {
    pub config: FleetConfig,
    pub id: String,
    pub store: Store,
    /// The epoch whose phases this member serves.
    pub applied: AtomicU64,
    /// The highest prepared epoch this member acknowledged.
    pub acked: AtomicU64,
    pub started_ms: u64,
    pub listen: Mutex<String>,
    pub admin: Mutex<Option<String>>,
    /// The last read: the record and the members, and per cache the error
    /// that kept it from being read.
    pub seen: Mutex<Seen>,
    /// A flip's window this member has open ([`window`]).
    pub window: Mutex<Option<window::Window>>,
    /// Until when this member holds the auto-cutover lease.
    lease_until: Mutex<Option<Instant>>,
}

/// What the last read of the record found.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub record: Option<Record>,
    pub members: Vec<Member>,
    /// The flip being prepared (the higher epoch of the two caches').
    pub prepare: Option<Record>,
    /// Per member, the highest epoch it acknowledged.
    pub acks: std::collections::BTreeMap<String, u64>,
    /// The auto-cutover lease's holder and until when (the cache's clock).
    pub lease: Option<(String, u64)>,
    /// Per cache read, the record's epoch there (0: none).
    pub epochs: PerSide<Option<u64>>,
    pub errors: PerSide<Option<String>>,
    /// When the record was last read from at least one cache.
    pub at: Option<Instant>,
}

/// What `/metrics` says of the fleet.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// The record's epoch, and the one this member serves.
    pub epoch: u64,
    pub applied: u64,
    pub out_of_date: bool,
    /// Members heard from within five heartbeats, and the others listed.
    pub live: usize,
    pub absent: usize,
    /// Live members serving an older epoch than the record's.
    pub behind: usize,
    /// This member holds the auto-cutover lease.
    pub lease: bool,
}

/// A member as `GET /fleet` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    /// Heard from within five heartbeats.
    pub live: bool,
    /// Serves an older epoch than the record's.
    pub behind: bool,
}

pub fn now_ms() -> u64 {
    crate::control::now_ms()
}

impl Fleet {
    pub fn new(config: FleetConfig, store: Store) -> Fleet {
        let started_ms = now_ms();
        let id = format!(
            "{}-{}-{:x}",
            hostname(),
            std::process::id(),
            started_ms & 0xffff_ffff
        );
        Fleet {
            config,
            id,
            store,
            applied: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            started_ms,
            listen: Mutex::default(),
            admin: Mutex::default(),
            seen: Mutex::default(),
            window: Mutex::default(),
            lease_until: Mutex::default(),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_ms.max(10))
    }

    /// Whether `m` was heard from recently enough to count.
    pub fn is_live(&self, m: &Member) -> bool {
        now_ms().saturating_sub(m.seen_ms) <= ABSENT_AFTER * self.config.heartbeat_ms
    }

    /// Reads the record and the members from both caches: the higher
    /// epoch wins; a member's latest heartbeat of the two.
    pub async fn read(&self) -> Seen {
        let mut seen = Seen::default();
        for side in Side::BOTH {
            match self.store.read(side).await {
                Ok(held) => {
                    seen.at = Some(Instant::now());
                    seen.epochs[side] = Some(held.record.as_ref().map_or(0, |r| r.epoch));
                    if held.record.as_ref().map(|r| r.epoch) > seen.record.as_ref().map(|r| r.epoch)
                    {
                        seen.record = held.record;
                    }
                    let epoch = |r: &Option<Record>| r.as_ref().map(|r| r.epoch);
                    if epoch(&held.prepare) > epoch(&seen.prepare) {
                        seen.prepare = held.prepare;
                    }
                    if held.lease.as_ref().map(|l| l.1) > seen.lease.as_ref().map(|l| l.1) {
                        seen.lease = held.lease;
                    }
                    for (id, e) in held.acks {
                        let a = seen.acks.entry(id).or_default();
                        *a = (*a).max(e);
                    }
                    for m in held.members {
                        match seen.members.iter_mut().find(|x| x.id == m.id) {
                            Some(x) if x.seen_ms < m.seen_ms => *x = m,
                            Some(_) => {}
                            None => seen.members.push(m),
                        }
                    }
                }
                Err(e) => seen.errors[side] = Some(e.to_string()),
            }
        }
        seen.members.sort_by(|a, b| a.id.cmp(&b.id));
        seen
    }

    /// The members, live or not, with the epoch each serves.
    pub fn members(&self) -> Vec<MemberView> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = seen.record.as_ref().map_or(0, |r| r.epoch);
        seen.members
            .iter()
            .map(|m| MemberView {
                live: self.is_live(m),
                behind: m.applied < epoch,
                member: m.clone(),
            })
            .collect()
    }

    /// Waits until every live member but this one acknowledged the
    /// prepared `epoch`, at most `flip_timeout_ms`. Returns those that did
    /// not.
    pub async fn wait_acked(&self, epoch: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_millis(self.config.flip_timeout_ms);
        loop {
            let seen = self.read().await;
            let missing: Vec<String> = seen
                .members
                .iter()
                .filter(|m| self.is_live(m) && m.id != self.id)
                .filter(|m| seen.acks.get(&m.id).copied().unwrap_or(0) < epoch)
                .map(|m| m.id.clone())
                .collect();
            self.keep(seen);
            if missing.is_empty() || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every live member serves `epoch` (this one included),
    /// reading the record every few milliseconds, at most
    /// `flip_timeout_ms`. Returns the live members that did not.
    pub async fn wait_applied(&self, epoch: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_millis(self.config.flip_timeout_ms);
        loop {
            let seen = self.read().await;
            let behind: Vec<String> = seen
                .members
                .iter()
                .filter(|m| self.is_live(m) && m.applied < epoch && m.id != self.id)
                .map(|m| m.id.clone())
                .collect();
            self.keep(seen);
            if behind.is_empty() || Instant::now() >= deadline {
                if !behind.is_empty() {
                    warn!(
                        epoch,
                        ?behind,
                        "fleet members did not apply the flip in time"
                    );
                }
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Keeps a read as the last seen. A read that reached neither cache
    /// keeps the record and members read before (so `at` stays the time
    /// of the last successful read) and updates only the errors.
    pub fn keep(&self, seen: Seen) {
        let mut last = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.at {
            Some(_) => *last = seen,
            None => last.errors = seen.errors,
        }
    }

    /// Why this member may not serve the fleet's current phases: it has
    /// not read the record from either cache for five heartbeats (the
    /// others count it absent and flip without it), or it serves an epoch
    /// older than the record's. `None` when it is up to date.
    pub fn out_of_date(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.heartbeat() * ABSENT_AFTER as u32;
        match seen.at {
            None => return Some("the fleet record has not been read from either cache".into()),
            Some(at) if at.elapsed() > limit => {
                return Some(format!(
                    "the fleet record could not be read from either cache for {}s (serving the last phases read)",
                    at.elapsed().as_secs()
                ))
            }
            Some(_) => {}
        }
        let epoch = seen.record.as_ref().map_or(0, |r| r.epoch);
        let applied = self.applied();
        (applied < epoch).then(|| format!("serves fleet epoch {applied}, the record is at {epoch}"))
    }

    /// The fleet's figures for `/metrics`.
    pub fn figures(&self) -> Figures {
        let members = self.members();
        let epoch = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.record.as_ref().map_or(0, |r| r.epoch)
        };
        Figures {
            epoch,
            applied: self.applied(),
            out_of_date: self.out_of_date().is_some(),
            live: members.iter().filter(|m| m.live).count(),
            absent: members.iter().filter(|m| !m.live).count(),
            behind: members.iter().filter(|m| m.live && m.behind).count(),
            lease: self.holds_lease(),
        }
    }

    /// How long a lease lasts unless renewed (renewed every heartbeat).
    fn lease_ttl(&self) -> Duration {
        self.heartbeat() * 3
    }

    /// Takes or renews the auto-cutover lease ([`Store::lease`]). Counted from
    /// before the request, so this member stops deciding before any cache
    /// lets another take over.
    pub async fn renew_lease(&self) {
        let asked = Instant::now();
        let ttl = self.lease_ttl();
        let held = self.store.lease(&self.id, ttl.as_millis() as u64).await;
        let mut until = self.lease_until.lock().unwrap_or_else(|e| e.into_inner());
        let had = until.is_some_and(|u| Instant::now() < u);
        *until = held.then_some(asked + ttl);
        if held && !had {
            info!(member = %self.id, "auto-cutover lease taken: this member decides for the fleet");
        } else if had && !held {
            warn!(member = %self.id, "auto-cutover lease lost");
        }
    }

    /// Whether this member holds the auto-cutover lease now.
    pub fn holds_lease(&self) -> bool {
        let until = self.lease_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|u| Instant::now() < u)
    }

    /// The member holding the auto-cutover lease, as last read.
    pub fn lease_holder(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.lease.as_ref().map(|(id, _)| id.clone())
    }

    pub fn log_adopted(&self, record: &Record) {
        info!(epoch = record.epoch, by = %record.by, why = %record.why, "fleet record adopted");
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cutover".into())
}

pub mod run;
