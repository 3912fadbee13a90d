//! Routes, phases and the hot-swappable routing table.
//!
//! The whole table lives behind one `ArcSwap`: a session loads it once per
//! command, so a flip is a single pointer swap and a command already routed
//! finishes under the table it was routed by. Counters are kept per route
//! name outside the table, so they survive reloads.

mod config;
mod glob;
mod settle;
mod side;
pub mod slot;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use glob::{string_match, Pattern};
pub use settle::{BlockedHold, MAX_SETTLE};
pub use side::{PerSide, Phase, Side};
pub use stats::{CrossSlotSeen, Latency, RouteStats};

pub use config::{AutoCutover, CommandsConfig, RouteConfig, UnknownPolicy};

#[derive(Clone, Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub patterns: Vec<Pattern>,
    pub phase: Phase,
    /// `read-new` only: keys whose hash slot is below this share (percent)
    /// are served as `read-new`, the rest as `dual-write`.
    pub ramp_percent: Option<u8>,
    /// Fraction of reads shadowed to the other cache in a dual phase.
    pub shadow_reads: f64,
    /// Shadow reads that find a difference queue a copy.
    pub shadow_repair: bool,
    /// `read-new`: reads new misses are answered from old.
    pub read_fallback: bool,
    /// Automatic cutover policy, when on.
    pub auto_cutover: Option<AutoCutover>,
    pub stats: Arc<RouteStats>,
    /// Its keys' reads moved to another cache while blocking commands were
    /// in flight: sessions hold its commands until those have moved
    /// (`settle.rs`).
    pub settling: bool,
}

impl Route {
    /// The phase `key` is served in: the route's, except in a ramped
    /// `read-new`, where the key's hash slot decides (the same for every
    /// command on that key, and on every proxy instance).
    pub fn phase_for(&self, key: &[u8]) -> Phase {
        match self.ramp_percent {
            Some(p) if self.phase == Phase::ReadNew && p < 100 => {
                let ramped =
                    u32::from(slot::key_slot(key)) * 100 < u32::from(p) * slot::SLOTS as u32;
                if ramped {
                    Phase::ReadNew
                } else {
                    Phase::DualWrite
                }
            }
            _ => self.phase,
        }
    }

    /// The phase of keyless commands: a ramped `read-new` keeps them on
    /// `dual-write` until the ramp reaches 100.
    pub fn keyless_phase(&self) -> Phase {
        match self.ramp_percent {
            Some(p) if self.phase == Phase::ReadNew && p < 100 => Phase::DualWrite,
            _ => self.phase,
        }
    }
}

/// An immutable routing table; the last route is the default. Everything a
/// reload may change lives here, so one load gives a consistent view.
#[derive(Clone, Debug)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub unknown: UnknownPolicy,
    /// `[commands] allow` / `deny`, normalized (`config|get`).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub version: u64,
}

impl RouteTable {
    /// Index of the first route whose patterns match `key` (the default
    /// route when none does).
    pub fn route_of(&self, key: &[u8]) -> usize {
        let last = self.routes.len() - 1;
        self.routes[..last]
            .iter()
            .position(|r| r.patterns.iter().any(|p| p.matches(key)))
            .unwrap_or(last)
    }

    pub fn default_route(&self) -> usize {
        self.routes.len() - 1
    }

    /// Whether some route reads from or writes to `side`.
    pub fn uses(&self, side: Side) -> bool {
        self.routes
            .iter()
            .any(|r| r.phase.authoritative() == side || r.phase.mirror() == Some(side))
    }

    /// Whether keys are read from both caches (routes, or a ramp, read from
    /// different ones): keyspace-wide reads (`KEYS`, `SCAN`) then ask both.
    pub fn reads_split(&self) -> bool {
        let mut reads: PerSide<bool> = PerSide::default();
        for r in &self.routes {
            reads[r.phase.authoritative()] = true;
            if r.phase == Phase::ReadNew && r.ramp_percent.is_some_and(|p| p < 100) {
                reads[Side::Old] = true;
            }
        }
        reads[Side::Old] && reads[Side::New]
    }

    /// Whether a route is settling after a flip (see `settle.rs`).
    pub fn settling(&self) -> bool {
        self.routes.iter().any(|r| r.settling)
    }

    /// The cache `key` is read from.
    pub fn read_side(&self, key: &[u8]) -> Side {
        self.routes[self.route_of(key)]
            .phase_for(key)
            .authoritative()
    }

    /// Whether every key is read from the same cache under both tables.
    pub fn reads_same_as(&self, other: &RouteTable) -> bool {
        self.routes.len() == other.routes.len()
            && self.routes.iter().zip(&other.routes).all(|(a, b)| {
                a.patterns == b.patterns
                    && a.phase.authoritative() == b.phase.authoritative()
                    && a.ramp_percent == b.ramp_percent
            })
    }
}

/// Holds the live table and the counters; the single writer of the swap.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<RouteTable>,
    stats: Mutex<HashMap<String, Arc<RouteStats>>>,
    /// The installed version, for sessions that must act on a change
    /// without waiting for their next command (client-side caching).
    installed: watch::Sender<u64>,
    /// Movable blocking commands in flight; also serialises installs.
    blocked: Mutex<settle::Blocked>,
}

impl Router {
    /// Builds a router from validated route configs.
    pub fn new(routes: &[RouteConfig], commands: &CommandsConfig) -> Router {
        let router = Router {
            table: ArcSwap::from_pointee(RouteTable {
                routes: Vec::new(),
                unknown: commands.unknown,
                allow: Vec::new(),
                deny: Vec::new(),
                version: 0,
            }),
            stats: Mutex::new(HashMap::new()),
            installed: watch::Sender::new(0),
            blocked: Mutex::default(),
        };
        router.replace(routes, commands);
        router
    }

    /// The current table; hold the guard for one command, not longer.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.table.load()
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The counters of the route called `name` (created if it has none
    /// yet: a journal entry for a route the config no longer has).
    pub fn stats_for(&self, name: &str) -> Arc<RouteStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RouteStats::named(name)))
            .clone()
    }

    /// `name=phase, ...` of the current table, for logs.
    pub fn describe(&self) -> String {
        let table = self.load();
        table
            .routes
            .iter()
            .map(|r| format!("{}={}", r.name, r.phase))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Notified after each table change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// Atomically installs a table built from `routes` (already validated).
    /// Returns the new version. Writers are serialised by the stats lock,
    /// then the `blocked` lock.
    pub fn replace(&self, routes: &[RouteConfig], commands: &CommandsConfig) -> u64 {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let routes = routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                patterns: r
                    .patterns
                    .iter()
                    .flatten()
                    .map(|p| Pattern::new(p.as_bytes()))
                    .collect(),
                phase: r.phase,
                ramp_percent: r.ramp_percent.filter(|_| r.phase == Phase::ReadNew),
                shadow_reads: r.shadow_reads,
                shadow_repair: r.shadow_repair,
                read_fallback: r.read_fallback,
                auto_cutover: r.auto_cutover,
                stats: stats
                    .entry(r.name.clone())
                    .or_insert_with(|| Arc::new(RouteStats::named(&r.name)))
                    .clone(),
                settling: false,
            })
            .collect();
        let mut next = RouteTable {
            routes,
            unknown: commands.unknown,
            allow: CommandsConfig::normalized(&commands.allow),
            deny: CommandsConfig::normalized(&commands.deny),
            version: 0,
        };
        let mut blocked = self.blocked();
        Router::mark_settling(&self.table.load(), &mut next, &blocked);
        if next.settling() {
            blocked.since = Some(std::time::Instant::now());
        }
        self.install(next)
    }

    /// Stores `table` as the next version and tells the sessions. Called
    /// with the `blocked` lock held (see `settle.rs`).
    fn install(&self, mut table: RouteTable) -> u64 {
        let version = self.table.load().version + 1;
        table.version = version;
        self.table.store(Arc::new(table));
        self.installed.send_replace(version);
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    pub(super) fn cfg(name: &str, patterns: Option<&[&str]>, phase: Phase) -> RouteConfig {
        RouteConfig {
            ramp_percent: None,
            shadow_reads: 0.0,
            shadow_repair: false,
            read_fallback: false,
            auto_cutover: None,
            name: name.into(),
            patterns: patterns.map(|p| p.iter().map(|s| s.to_string()).collect()),
            phase,
        }
    }

    #[test]
    fn first_match_wins_and_default_catches_rest() {
        let r = Router::new(
            &[
                cfg("a", Some(&["user:admin:*"]), Phase::OldOnly),
                cfg("b", Some(&["user:*", "u:*"]), Phase::DualWrite),
                cfg("default", None, Phase::OldOnly),
            ],
            &CommandsConfig::default(),
        );
        let t = r.load();
        assert_eq!(t.route_of(b"user:admin:1"), 0);
        assert_eq!(t.route_of(b"user:7"), 1);
        assert_eq!(t.route_of(b"u:7"), 1);
        assert_eq!(t.route_of(b"other"), 2);
    }

    #[test]
    fn stats_survive_a_reload_and_versions_increase() {
        let r = Router::new(
            &[
                cfg("s", Some(&["s:*"]), Phase::DualWrite),
                cfg("default", None, Phase::OldOnly),
            ],
            &CommandsConfig::default(),
        );
        RouteStats::bump(&r.load().routes[0].stats.writes);
        let v = r.replace(
            &[
                cfg("s", Some(&["s:*"]), Phase::ReadNew),
                cfg("default", None, Phase::OldOnly),
            ],
            &CommandsConfig {
                unknown: UnknownPolicy::Write,
                ..CommandsConfig::default()
            },
        );
        let t = r.load();
        assert_eq!(t.version, v);
        assert_eq!(t.routes[0].phase, Phase::ReadNew);
        assert_eq!(t.routes[0].stats.writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn phase_sides() {
        assert_eq!(
            (Phase::OldOnly.authoritative(), Phase::OldOnly.mirror()),
            (Side::Old, None)
        );
        assert_eq!(
            (Phase::DualWrite.authoritative(), Phase::DualWrite.mirror()),
            (Side::Old, Some(Side::New))
        );
        assert_eq!(
            (Phase::ReadNew.authoritative(), Phase::ReadNew.mirror()),
            (Side::New, Some(Side::Old))
        );
        assert_eq!(
            (Phase::NewOnly.authoritative(), Phase::NewOnly.mirror()),
            (Side::New, None)
        );
    }
}
