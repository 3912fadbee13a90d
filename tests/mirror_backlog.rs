//! A slow, then stalled, then frozen mirror behind a real TCP relay, with the
//! proxy running as the operator runs it (its own process, so its resident
//! memory can be read): the client's latency stays the authoritative side's,
//! memory stays within `limits.mirror_backlog_bytes` plus a fixed overhead,
//! writes past the bound go to the repair journal, and once the mirror is
//! back the two caches end up identical.

mod support;

use std::time::{Duration, Instant};

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::{RedisServer, Served, StallingRelay};

const VALUE: usize = 16 * 1024;

/// Writes `n` unique keys of [`VALUE`] bytes from each of `clients`
/// connections at once; returns the slowest and the median write latency.
async fn write_burst(url: &str, tag: &str, clients: usize, n: usize) -> (Duration, Duration) {
    let value = "v".repeat(VALUE);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = support::connect(url).await;
        let (tag, value) = (tag.to_string(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(n);
            for i in 0..n {
                let started = Instant::now();
                let _: () = conn.set(format!("{tag}:{c}:{i}"), &value).await.unwrap();
                took.push(started.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (*all.last().unwrap(), all[all.len() / 2])
}

#[tokio::test]
async fn slow_then_stalled_mirror_costs_the_client_nothing_and_memory_stays_bounded() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let relay = StallingRelay::start(new.addr()).await;
    let bound: u64 = 4 << 20;
    // Never time the mirror out here: the byte bound alone must hold.
    let text = support::Config::new(&old.addr(), &relay.addr.to_string())
        .route("default", None, Phase::DualWrite)
        .with(&format!("[limits]\nmirror_backlog_bytes = {bound}\n"))
        .command_timeout(Side::New, 0)
        .text();
    let mut proxy = Served::start(&text, &[]).await;
    let url = proxy.url();

    // Warm up (connections, allocator), then the baseline.
    write_burst(&url, "warm", 4, 50).await;
    let baseline = proxy.rss_kib();

    // 1. A slow mirror: every reply 50 ms late. The client does not wait
    // for it: its median is the healthy median (measured now, under the
    // same load), far from the 50 ms it would be otherwise.
    let (_, healthy) = write_burst(&url, "healthy", 4, 100).await;
    relay.delay(Duration::from_millis(50));
    let (slowest, median) = write_burst(&url, "slow", 4, 100).await;
    assert!(
        median < healthy + Duration::from_millis(25),
        "median write latency {median:?} with a 50 ms mirror, {healthy:?} healthy"
    );
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");

    // 2. A stalled mirror (reads requests, answers nothing), then a frozen
    // one (reads nothing): 4 x 1500 writes of 16 KiB = 96 MiB through the
    // proxy, far past the bound.
    relay.delay(Duration::ZERO);
    relay.stall(true);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (peak, pid) = (peak.clone(), proxy.child.id().unwrap());
        tokio::spawn(async move {
            loop {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    {
                        peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (slowest_stalled, _) = write_burst(&url, "stalled", 4, 500).await;
    relay.freeze(true);
    let (slowest_frozen, _) = write_burst(&url, "frozen", 4, 1000).await;
    sampler.abort();
    let grew_kib = peak.load(std::sync::atomic::Ordering::Relaxed) - baseline;
    assert!(
        // Held up, a write would wait for ever (no command timeout here).
        slowest_stalled.max(slowest_frozen) < Duration::from_secs(2),
        "a stalled mirror held the client up: {slowest_stalled:?} / {slowest_frozen:?}"
    );
    // 96 MiB went through; the proxy grew by at most the bound and its
    // buffers (per-connection read/write buffers, the journal's keys).
    assert!(
        grew_kib < 32 * 1024,
        "resident memory grew by {grew_kib} KiB (bound {} KiB)",
        bound / 1024
    );
    let shed = proxy.stat("default", "mirror_shed").await;
    let journalled = proxy.stat("default", "journalled").await;
    assert!(shed > 1000, "writes past the bound were shed: {shed}");
    assert!(journalled >= shed, "and journalled: {journalled} < {shed}");

    // 3. The mirror comes back: what was queued lands, the journal is
    // copied, and the caches are identical.
    relay.freeze(false);
    relay.stall(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = proxy.status().await;
        let journal = s.routes.iter().map(|r| r.journal_keys).sum::<u64>();
        let same = {
            let mut o = old.sync();
            let mut n = new.sync();
            let a: i64 = redis::cmd("DBSIZE").query(&mut o).unwrap();
            let b: i64 = redis::cmd("DBSIZE").query(&mut n).unwrap();
            a == b
        };
        if journal == 0 && same {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirror never caught up: journal {journal}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::assert_same_keyspace(&old, &new, 1000);
    let logs = proxy.stop_and_logs().await;
    assert!(logs.contains("mirror backlog full"), "{logs}");
}
