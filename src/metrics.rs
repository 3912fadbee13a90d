//! Prometheus exposition of the proxy's counters.
//!
//! The data path only touches relaxed atomics: per-route counters
//! ([`RouteStats`]) and fixed-bucket latency histograms ([`Latency`]). At
//! scrape time a collector reads them and `prometheus-client` writes the
//! OpenMetrics text, so nothing on the data path takes a lock or looks a
//! metric up by labels.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::RouteStatus;
use crate::fleet::Figures;
use crate::routing::{Phase, RouteStats, Side};

pub use crate::upstream::cluster::ClusterSnapshot;

/// Per cache: connections of their own open now, and with shared
/// connections the open ones and the sessions on them.
pub type ConnectionFigures = Vec<(Side, u64, Option<(u64, u64)>)>;

/// Renders every metric as OpenMetrics text.
pub fn render(
    routes: Vec<(RouteStatus, Arc<RouteStats>)>,
    clusters: Vec<ClusterSnapshot>,
    fleet: Option<Figures>,
    connections: ConnectionFigures,
) -> String {
    let mut registry = Registry::with_prefix("cutover");
    let routes = Arc::new(routes);
    registry.register_collector(Box::new(Routes(routes)));
    registry.register_collector(Box::new(Clusters(clusters)));
    if let Some(f) = fleet {
        registry.register_collector(Box::new(Fleet(f)));
    }
    registry.register_collector(Box::new(Connections(connections)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct Routes(Arc<Vec<(RouteStatus, Arc<RouteStats>)>>);

type Labels = Vec<(&'static str, String)>;

/// One metric family written by hand from the snapshot.
fn family(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, Sample)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in samples {
        if labels.is_empty() {
            // One series without labels: `name value`, not `name{} value`.
            sample.encode(metric)?;
            return Ok(());
        }
        let m = metric.encode_family(&labels)?;
        sample.encode(m)?;
    }
    Ok(())
}

enum Sample {
    Counter(u64),
    Gauge(f64),
    Histogram(f64, u64, Vec<(f64, u64)>),
}

impl Sample {
    fn encode(&self, mut m: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Sample::Counter(v) => m.encode_counter::<NoLabelSet, _, u64>(v, None),
            Sample::Gauge(v) => m.encode_gauge(v),
            Sample::Histogram(sum, count, buckets) => {
                m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
            }
        }
    }
}

impl prometheus_client::collector::Collector for Routes {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let route = |s: &RouteStatus| vec![("route", s.name.clone())];
        family(
            &mut encoder,
            "route_phase",
            "1 for the phase each route is in (label phase)",
            MetricType::Gauge,
            self.0.iter().flat_map(|(s, _)| {
                Phase::ALL.into_iter().map(move |p| {
                    let mut l = route(s);
                    l.push(("phase", p.name().to_string()));
                    (l, Sample::Gauge(f64::from(u8::from(s.phase == p))))
                })
            }),
        )?;
        family(
            &mut encoder,
            "route_phase_since_seconds",
            "Unix time the route entered its current phase",
            MetricType::Gauge,
            self.0.iter().map(|(s, _)| {
                let secs = s
                    .since
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                (route(s), Sample::Gauge(secs))
            }),
        )?;
        let names = RouteStats::default().snapshot().map(|(n, _)| n);
        for (i, name) in names.iter().enumerate() {
            family(
                &mut encoder,
                &format!("route_{name}"),
                counter_help(name),
                MetricType::Counter,
                self.0
                    .iter()
                    .map(|(s, stats)| (route(s), Sample::Counter(stats.snapshot()[i].1))),
            )?;
        }
        family(
            &mut encoder,
            "route_shadow_agreement",
            "Share of the last 1000 shadow reads whose replies agreed (absent before the first)",
            MetricType::Gauge,
            self.0.iter().filter_map(|(s, stats)| {
                let ratio = stats.shadow.agreement().ratio?;
                Some((route(s), Sample::Gauge(ratio)))
            }),
        )?;
        family(
            &mut encoder,
            "route_journal_keys",
            "Keys of the route in the mirror-failure journal, waiting to be copied",
            MetricType::Gauge,
            self.0.iter().map(|(s, stats)| {
                let n = stats.journal_keys.load(Ordering::Relaxed);
                (route(s), Sample::Gauge(n as f64))
            }),
        )?;
        family(
            &mut encoder,
            "route_needs_verify",
            "1 when the journal overflowed for the route: run a verify pass",
            MetricType::Gauge,
            self.0.iter().map(|(s, stats)| {
                let v = stats.needs_verify.load(Ordering::Relaxed);
                (route(s), Sample::Gauge(f64::from(u8::from(v))))
            }),
        )?;
        family(
            &mut encoder,
            "request_duration_seconds",
            "Time from a command's send to its reply, per route, phase and upstream (blocking commands excluded)",
            MetricType::Histogram,
            self.0.iter().flat_map(|(s, stats)| {
                Phase::ALL.into_iter().flat_map(move |p| {
                    Side::BOTH.into_iter().filter_map(move |side| {
                        let h = stats.latency(p, side);
                        if h.count() == 0 {
                            return None;
                        }
                        let (sum, count, buckets) = h.snapshot();
                        let mut l = route(s);
                        l.push(("phase", p.name().to_string()));
                        l.push(("upstream", side.name().to_string()));
                        Some((l, Sample::Histogram(sum, count, buckets)))
                    })
                })
            }),
        )?;
        Ok(())
    }
}

#[derive(Debug)]
struct Clusters(Vec<ClusterSnapshot>);

/// A cluster counter's name, help and reader.
type ClusterCounter = (&'static str, &'static str, fn(&ClusterSnapshot) -> u64);

impl prometheus_client::collector::Collector for Clusters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let side = |c: &ClusterSnapshot| {
            let name = c.side.map_or("", |s| s.name());
            vec![("upstream", name.to_string())]
        };
        let counters: [ClusterCounter; 6] = [
            (
                "cluster_moved",
                "MOVED replies followed (slot moved: map patched, command resent)",
                |c| c.moved,
            ),
            (
                "cluster_ask",
                "ASK replies followed (ASKING, then resent to the importing node)",
                |c| c.ask,
            ),
            (
                "cluster_split",
                "Multi-key commands split by slot, replies merged",
                |c| c.split,
            ),
            (
                "cluster_fanout",
                "Commands asked of every primary (SCAN, KEYS, DBSIZE, FLUSHALL, ...)",
                |c| c.fanout,
            ),
            ("cluster_refreshes", "Slot maps read", |c| c.refreshes),
            (
                "cluster_refresh_failures",
                "Slot map reads that failed",
                |c| c.refresh_failures,
            ),
        ];
        for (name, help, get) in counters {
            family(
                &mut encoder,
                name,
                help,
                MetricType::Counter,
                self.0.iter().map(|c| (side(c), Sample::Counter(get(c)))),
            )?;
        }
        family(
            &mut encoder,
            "cluster_primaries",
            "Primaries in the clustered upstream's slot map",
            MetricType::Gauge,
            self.0
                .iter()
                .map(|c| (side(c), Sample::Gauge(c.primaries as f64))),
        )
    }
}

#[derive(Debug)]
struct Connections(ConnectionFigures);

impl prometheus_client::collector::Collector for Connections {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let side = |s: Side| vec![("upstream", s.name().to_string())];
        family(
            &mut encoder,
            "upstream_dedicated_connections",
            "Connections of their own open to the cache: sessions' in dedicated mode or with connection state, and the proxy's tools",
            MetricType::Gauge,
            self.0
                .iter()
                .map(|&(s, n, _)| (side(s), Sample::Gauge(n as f64))),
        )?;
        let shared: Vec<_> = self
            .0
            .iter()
            .filter_map(|&(s, _, p)| Some((s, p?.0, p?.1)))
            .collect();
        family(
            &mut encoder,
            "upstream_shared_connections",
            "Shared connections open to the cache (connections = \"shared\")",
            MetricType::Gauge,
            shared
                .iter()
                .map(|&(s, open, _)| (side(s), Sample::Gauge(open as f64))),
        )?;
        family(
            &mut encoder,
            "upstream_shared_sessions",
            "Client sessions on the cache's shared connections",
            MetricType::Gauge,
            shared
                .iter()
                .map(|&(s, _, n)| (side(s), Sample::Gauge(n as f64))),
        )
    }
}

#[derive(Debug)]
struct Fleet(Figures);

impl prometheus_client::collector::Collector for Fleet {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let f = &self.0;
        let gauges: [(&str, &str, f64); 5] = [
            ("fleet_epoch", "The fleet record's epoch (last read)", f.epoch as f64),
            ("fleet_applied_epoch", "The fleet epoch whose phases this member serves", f.applied as f64),
            (
                "fleet_out_of_date",
                "1 when this member could not read the fleet record for five heartbeats or serves an older epoch (see /status)",
                f64::from(u8::from(f.out_of_date)),
            ),
            (
                "fleet_lease",
                "1 while this member holds the auto-cutover lease (it decides for the fleet)",
                f64::from(u8::from(f.lease)),
            ),
            (
                "fleet_members_behind",
                "Live members serving an older epoch than the record's",
                f.behind as f64,
            ),
        ];
        for (name, help, v) in gauges {
            family(
                &mut encoder,
                name,
                help,
                MetricType::Gauge,
                [(vec![], Sample::Gauge(v))],
            )?;
        }
        family(
            &mut encoder,
            "fleet_members",
            "Members in the fleet record, live (heard from within five heartbeats) or absent",
            MetricType::Gauge,
            [("live", f.live), ("absent", f.absent)]
                .map(|(state, n)| (vec![("state", state.to_string())], Sample::Gauge(n as f64))),
        )
    }
}

fn counter_help(name: &str) -> &'static str {
    match name {
        "reads" => "Reads routed to the route's read side",
        "writes" => "Writes routed to the route's authoritative side",
        "mirrored" => "Writes sent to the mirror side",
        "mirror_ok" => "Mirrored writes the mirror answered without error",
        "mirror_errors" => "Mirrored writes the mirror answered with an error",
        "mirror_failed" => "Mirrored writes that never got a reply (mirror down, lost, timed out)",
        "mirror_shed" => "Mirrored writes not sent because the mirror backlog was full (journalled for repair)",
        "script_retries" => "EVALSHA sent to the mirror as EVAL with the script body the proxy saw",
        "script_unknown" => "EVALSHA the mirror did not know and whose body the proxy never saw",
        "compared" => "Mirrored writes whose two replies were compared",
        "mismatches" => "Compared writes whose replies differed (the key is copied to the mirror)",
        "mirror_missing" => {
            "Compared in-place writes whose key the mirror lacked before (the key is copied)"
        }
        "repaired" => "Keys copied from the authoritative side to the mirror",
        "repair_failed" => "Key copies that failed",
        "repair_skipped" => {
            "Key copy attempts redone or dropped: a newer write to the key went through the proxy or changed it on the mirror, or the route moved"
        }
        "repair_dropped" => "Mismatches not copied because the repair queue was full",
        "upstream_failed" => {
            "Client commands answered with a proxy error because their cache failed"
        }
        "fallbacks" => "Reads new answered with nothing, answered from old instead (read fallback; new is filled)",
        "shadow_reads" => "Reads also sent to the other cache and compared (shadow reads)",
        "shadow_agree" => "Shadow reads whose two replies agreed",
        "shadow_missing" => {
            "Shadow reads the other cache answered with nothing (the key is missing there)"
        }
        "shadow_differ" => "Shadow reads whose replies differed otherwise",
        "journalled" => {
            "Keys recorded in the mirror-failure journal (a mirrored write to them failed)"
        }
        "journal_overflow" => {
            "Keys not recorded because the journal was full (the route needs a verify pass)"
        }
        "cross_slot" => "Commands whose keys span hash slots as a Redis Cluster refuses (counted while a cache is clustered)",
        _ => "cutover route counter",
    }
}
