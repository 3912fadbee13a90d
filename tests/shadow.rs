//! Shadow reads: reads also sent to the other cache, compared off the
//! client's path; the agreement ratio shows a route warming up.

mod support;

use std::time::{Duration, Instant};

use cutover::routing::Phase;
use support::{assert_same_keyspace, RedisServer, TestProxy};

const KEYS: usize = 300;

fn shadowed(old: &RedisServer, new: &RedisServer, fraction: &str, repair: bool) -> String {
    support::Config::new(&old.addr(), &new.addr())
        .route_toml(
            "default",
            None,
            Phase::DualWrite,
            &format!("shadow_reads = {fraction}\nshadow_repair = {repair}\n"),
        )
        .text()
}

/// (samples, ratio) of the route's shadow agreement in `GET /status`.
async fn agreement(proxy: &TestProxy) -> (u64, Option<f64>) {
    let (code, body) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = &v["routes"][0]["shadow"];
    (s["samples"].as_u64().unwrap(), s["ratio"].as_f64())
}

async fn read_all(proxy: &TestProxy) {
    let mut c = proxy.conn().await;
    // Pipelines of 100, each shadow read answered before the next: within
    // the 256 shadow reads allowed in flight however slowly new answers
    // (the client's own replies come from old, which may be well ahead).
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        settle(proxy).await;
        let mut pipe = redis::pipe();
        for &i in chunk {
            if i % 3 == 0 {
                pipe.cmd("HGETALL").arg(format!("h{i}"));
            } else {
                pipe.cmd("GET").arg(format!("s{i}"));
            }
        }
        let _: redis::Value = pipe.query_async(&mut c).await.unwrap();
    }
    settle(proxy).await;
}

/// Waits until every shadow read was answered and every copy made.
async fn settle(proxy: &TestProxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shared = proxy.proxy.as_ref().unwrap().shared();
        let idle = shared
            .shadow_inflight
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0;
        if idle && shared.repairer.pending() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "shadow reads never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreement_rises_from_zero_to_one_as_repair_warms_the_route() {
    let (old, new) = support::start_pair();
    {
        let mut c = old.sync();
        let mut pipe = redis::pipe();
        for i in 0..KEYS {
            if i % 3 == 0 {
                pipe.cmd("HSET")
                    .arg(format!("h{i}"))
                    .arg("a")
                    .arg(i)
                    .arg("b")
                    .arg("x")
                    .ignore();
            } else {
                pipe.cmd("SET")
                    .arg(format!("s{i}"))
                    .arg(i)
                    .arg("EX")
                    .arg(1000)
                    .ignore();
            }
        }
        let _: () = pipe.query(&mut c).unwrap();
    }
    let proxy = TestProxy::start_text(&shadowed(&old, &new, "1.0", true)).await;
    assert_eq!(agreement(&proxy).await, (0, None));

    // Cold: new has nothing, every shadow read finds the key missing.
    read_all(&proxy).await;
    let (samples, ratio) = agreement(&proxy).await;
    assert_eq!(samples, KEYS as u64);
    assert_eq!(ratio, Some(0.0));
    assert_eq!(proxy.stat("default", "shadow_missing"), KEYS as u64);

    // Those reads queued copies: from now on every read agrees, and the
    // ratio climbs as the window slides.
    let mut seen = vec![0.0];
    while *seen.last().unwrap() < 1.0 {
        assert!(seen.len() <= 5, "{seen:?}");
        read_all(&proxy).await;
        let (_, ratio) = agreement(&proxy).await;
        let ratio = ratio.unwrap();
        assert!(ratio > *seen.last().unwrap(), "{seen:?} then {ratio}");
        seen.push(ratio);
    }
    assert_eq!(agreement(&proxy).await, (1000, Some(1.0)), "{seen:?}");
    assert_eq!(proxy.stat("default", "shadow_differ"), 0);
    assert_same_keyspace(&old, &new, 1000);
    let (_, metrics) = proxy.admin("GET", "/metrics", None).await;
    let lines = metrics.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let gauge = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| s.value.clone())
    };
    assert_eq!(
        gauge("cutover_route_shadow_agreement"),
        Some(prometheus_parse::Value::Gauge(1.0)),
        "{metrics}"
    );
    assert_eq!(
        gauge("cutover_route_journal_keys"),
        Some(prometheus_parse::Value::Gauge(0.0))
    );
    assert_eq!(
        gauge("cutover_route_needs_verify"),
        Some(prometheus_parse::Value::Gauge(0.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraction_shadows_that_share_and_differences_are_only_counted_without_repair() {
    let (old, new) = support::start_pair();
    for i in 0..KEYS {
        let _: () = redis::cmd("SET")
            .arg(format!("s{i}"))
            .arg("old")
            .query(&mut old.sync())
            .unwrap();
        if i % 3 == 0 {
            let _: () = redis::cmd("SET")
                .arg(format!("s{i}"))
                .arg("stale")
                .query(&mut new.sync())
                .unwrap();
        }
    }
    let proxy = TestProxy::start_text(&shadowed(&old, &new, "0.5", false)).await;
    let mut c = proxy.conn().await;
    for i in 0..KEYS {
        let v: String = redis::cmd("GET")
            .arg(format!("s{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, "old", "the client always sees the authoritative reply");
    }
    settle(&proxy).await;
    let shadowed = proxy.stat("default", "shadow_reads");
    assert!(
        (140..=160).contains(&shadowed),
        "{shadowed} of {KEYS} shadowed"
    );
    let differ = proxy.stat("default", "shadow_differ");
    let missing = proxy.stat("default", "shadow_missing");
    assert!(
        differ > 0 && missing > 0,
        "{differ} differ, {missing} missing"
    );
    assert_eq!(proxy.stat("default", "repaired"), 0, "shadow_repair is off");
}
