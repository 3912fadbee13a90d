//! Routes, phases and the hot-swappable routing table.
//!
//! The whole table lives behind one `ArcSwap`: a session loads it once per
//! command, so a flip is a single pointer swap and a command already routed
//! finishes under the table it was routed by. Counters are kept per route
//! name outside the table, so they survive reloads.

mod glob;
pub mod slot;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use glob::{string_match, Pattern};

use crate::config::{CommandsConfig, RouteConfig, UnknownPolicy};
use crate::metrics::Latency;

/// One of the two caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Old,
    New,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Old, Side::New];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A route's migration phase (see DESIGN.md's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    OldOnly,
    DualWrite,
    ReadNew,
    NewOnly,
}

impl Phase {
    /// In migration order.
    pub const ALL: [Phase; 4] = [
        Phase::OldOnly,
        Phase::DualWrite,
        Phase::ReadNew,
        Phase::NewOnly,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Steps between two phases in migration order (1 for neighbours).
    pub fn distance(self, other: Phase) -> usize {
        self.index().abs_diff(other.index())
    }

    /// The dual phase whose mirror is `side`.
    pub fn mirroring_to(side: Side) -> Phase {
        match side {
            Side::New => Phase::DualWrite,
            Side::Old => Phase::ReadNew,
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }
    /// Where reads go, and whose write reply the client sees.
    pub fn authoritative(self) -> Side {
        match self {
            Phase::OldOnly | Phase::DualWrite => Side::Old,
            Phase::ReadNew | Phase::NewOnly => Side::New,
        }
    }

    /// Where writes are mirrored, in the dual phases.
    pub fn mirror(self) -> Option<Side> {
        match self {
            Phase::DualWrite => Some(Side::New),
            Phase::ReadNew => Some(Side::Old),
            Phase::OldOnly | Phase::NewOnly => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::OldOnly => "old-only",
            Phase::DualWrite => "dual-write",
            Phase::ReadNew => "read-new",
            Phase::NewOnly => "new-only",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-route counters. Relaxed atomics: they are statistics, not sync points.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// The route's name (the journal persists keys by it).
    pub name: Arc<str>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    /// Writes sent to the mirror side.
    pub mirrored: AtomicU64,
    /// Mirrored writes whose mirror reply was not an error.
    pub mirror_ok: AtomicU64,
    /// Mirrored writes the mirror answered with an error reply.
    pub mirror_errors: AtomicU64,
    /// Mirrored writes that never got a reply: mirror down, connection lost,
    /// timed out. These keys may differ on the mirror until repaired.
    pub mirror_failed: AtomicU64,
    /// Mirrored writes not sent because the mirror backlog was full
    /// (`limits.mirror_backlog_bytes`): journalled for repair instead.
    pub mirror_shed: AtomicU64,
    /// EVALSHA the mirror did not know, retried there with the body.
    pub script_retries: AtomicU64,
    /// EVALSHA the mirror did not know and whose body never passed through
    /// the proxy: not applied on the mirror.
    pub script_unknown: AtomicU64,
    /// Mirrored writes whose two replies were compared.
    pub compared: AtomicU64,
    /// Compared writes whose replies differed: the key is copied.
    pub mismatches: AtomicU64,
    /// Compared in-place writes (`HSET`, `SADD`, ...) whose key the mirror
    /// did not have before: the key is copied.
    pub mirror_missing: AtomicU64,
    /// Keys copied from the authoritative side to the mirror.
    pub repaired: AtomicU64,
    /// Copies that failed (an upstream error, a refused RESTORE).
    pub repair_failed: AtomicU64,
    /// Copies skipped because a newer write to the key went through.
    pub repair_skipped: AtomicU64,
    /// Mismatches not copied because the repair queue was full.
    pub repair_dropped: AtomicU64,
    /// Keys recorded in the mirror-failure journal.
    pub journalled: AtomicU64,
    /// Keys not recorded because the journal was full (the route then
    /// needs a verify pass).
    pub journal_overflow: AtomicU64,
    /// Client commands answered with a proxy error because the cache
    /// serving them failed (connect error, timeout, dropped connection).
    pub upstream_failed: AtomicU64,
    /// Why auto-cutover has not flipped the route (yet), when it is on.
    pub auto_status: Mutex<Option<String>>,
    /// Reads new answered with nothing, answered from old instead (read
    /// fallback).
    pub fallbacks: AtomicU64,
    /// Reads also sent to the other cache and compared.
    pub shadow_reads: AtomicU64,
    /// Their outcomes, and the sliding agreement window.
    pub shadow: crate::shadow::ShadowStats,
    /// Keys of this route in the journal now (a gauge).
    pub journal_keys: AtomicU64,
    /// The journal overflowed for this route: the mirror may differ in keys
    /// nobody recorded. Cleared by the operator after a verify pass.
    pub needs_verify: AtomicBool,
    /// Reply latency by the phase the command was routed in and the
    /// upstream that answered.
    latency: [[Latency; 2]; 4],
}

impl RouteStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self, phase: Phase, side: Side) -> &Latency {
        &self.latency[phase.index()][side.index()]
    }

    pub fn named(name: &str) -> RouteStats {
        RouteStats {
            name: name.into(),
            ..RouteStats::default()
        }
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 24] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("reads", g(&self.reads)),
            ("writes", g(&self.writes)),
            ("mirrored", g(&self.mirrored)),
            ("mirror_ok", g(&self.mirror_ok)),
            ("mirror_errors", g(&self.mirror_errors)),
            ("mirror_failed", g(&self.mirror_failed)),
            ("mirror_shed", g(&self.mirror_shed)),
            ("script_retries", g(&self.script_retries)),
            ("script_unknown", g(&self.script_unknown)),
            ("compared", g(&self.compared)),
            ("mismatches", g(&self.mismatches)),
            ("mirror_missing", g(&self.mirror_missing)),
            ("repaired", g(&self.repaired)),
            ("repair_failed", g(&self.repair_failed)),
            ("repair_skipped", g(&self.repair_skipped)),
            ("repair_dropped", g(&self.repair_dropped)),
            ("upstream_failed", g(&self.upstream_failed)),
            ("fallbacks", g(&self.fallbacks)),
            ("shadow_reads", g(&self.shadow_reads)),
            ("shadow_agree", g(&self.shadow.agree)),
            ("shadow_missing", g(&self.shadow.missing)),
            ("shadow_differ", g(&self.shadow.differ)),
            ("journalled", g(&self.journalled)),
            ("journal_overflow", g(&self.journal_overflow)),
        ]
    }
}

#[derive(Debug)]
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
    pub auto_cutover: Option<crate::config::AutoCutover>,
    pub stats: Arc<RouteStats>,
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
#[derive(Debug)]
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

    /// Notified after each table change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// Atomically installs a table built from `routes` (already validated).
    /// Returns the new version. Writers are serialised by the stats lock.
    pub fn replace(&self, routes: &[RouteConfig], commands: &CommandsConfig) -> u64 {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let version = self.table.load().version + 1;
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
            })
            .collect();
        self.table.store(Arc::new(RouteTable {
            routes,
            unknown: commands.unknown,
            allow: CommandsConfig::normalized(&commands.allow),
            deny: CommandsConfig::normalized(&commands.deny),
            version,
        }));
        self.installed.send_replace(version);
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, patterns: Option<&[&str]>, phase: Phase) -> RouteConfig {
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
