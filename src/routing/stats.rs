//! Per-route counters and latency histograms: relaxed atomics the data
//! path bumps; `metrics` reads them at scrape time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{PerSide, Phase, Side};

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
    /// EVALSHA sent to the mirror as EVAL with the body the proxy saw.
    pub script_retries: AtomicU64,
    /// EVALSHA the mirror did not know and whose body never passed through
    /// the proxy: not applied on the mirror, its keys copied.
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
    /// Commands whose keys span hash slots in a way a Redis Cluster
    /// refuses (`-CROSSSLOT`), counted while either cache is clustered:
    /// what the application relies on that a clustered cache cannot serve.
    pub cross_slot: AtomicU64,
    /// Those commands by name, and the last few seen.
    pub cross_slot_seen: Mutex<CrossSlotSeen>,
    /// A fleet flip of this route is between prepare and the last member
    /// applying it: the keys written meanwhile are kept, to be copied from
    /// the side that answers after it (`fleet::window`).
    pub window_open: AtomicBool,
    pub window_keys: Mutex<std::collections::HashSet<(Option<u32>, bytes::Bytes)>>,
    /// Reply latency by the phase the command was routed in and the
    /// upstream that answered.
    latency: [PerSide<Latency>; 4],
}

/// Cross-slot commands of a route: counts by command name (at most
/// [`CrossSlotSeen::MAX_NAMES`]) and the latest samples (name and keys,
/// never values).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CrossSlotSeen {
    pub commands: std::collections::BTreeMap<String, u64>,
    pub samples: std::collections::VecDeque<String>,
}

impl CrossSlotSeen {
    const MAX_NAMES: usize = 32;
    const MAX_SAMPLES: usize = 8;

    pub fn record(&mut self, name: &str, sample: String) {
        if let Some(n) = self.commands.get_mut(name) {
            *n += 1;
        } else if self.commands.len() < Self::MAX_NAMES {
            self.commands.insert(name.to_string(), 1);
        }
        if self.samples.len() == Self::MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }
}

impl RouteStats {
    /// Keeps `keys` (written in `db`) while a fleet flip's window is open.
    pub fn note_window_write<'a>(&self, db: Option<u32>, keys: impl Iterator<Item = &'a [u8]>) {
        if !self.window_open.load(Ordering::Acquire) {
            return;
        }
        let mut set = self.window_keys.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            set.insert((db, bytes::Bytes::copy_from_slice(k)));
        }
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self, phase: Phase, side: Side) -> &Latency {
        &self.latency[phase.index()][side]
    }

    pub fn named(name: &str) -> RouteStats {
        RouteStats {
            name: name.into(),
            ..RouteStats::default()
        }
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 25] {
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
            ("cross_slot", g(&self.cross_slot)),
        ]
    }
}

/// Bucket upper bounds, microseconds: 100 µs to 2.5 s.
const BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A latency histogram with fixed buckets: one relaxed add for the bucket,
/// one for the sum.
#[derive(Debug, Default)]
pub struct Latency {
    /// Non-cumulative counts; the last is +Inf.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (sum in seconds, count, non-cumulative buckets with upper bounds).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                count += n;
                let upper = BOUNDS_US
                    .get(i)
                    .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
                (upper, n)
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_their_bounds() {
        let h = Latency::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(10));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[1], (0.00025, 1));
        assert_eq!(buckets.last().unwrap().1, 1);
        assert!(buckets.last().unwrap().0.is_infinite());
        assert!((sum - 10.000201).abs() < 1e-9);
    }
}
