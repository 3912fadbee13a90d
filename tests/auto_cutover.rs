//! Auto-cutover: a route flips itself to read-new once its thresholds are
//! met (and not before), and back to dual-write when new fails.

mod support;

use std::time::{Duration, Instant};

use cutover::routing::Phase;
use support::{RedisServer, TestProxy};

fn auto_config(old: &RedisServer, new: &RedisServer, policy: &str) -> String {
    support::Config::new(&old.addr(), &new.addr())
        .route_toml(
            "default",
            None,
            Phase::DualWrite,
            &format!("shadow_reads = 1.0\nshadow_repair = true\n\n[auto_cutover]\n{policy}\n"),
        )
        .text()
}

async fn route_status(proxy: &TestProxy) -> serde_json::Value {
    let (code, body) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["routes"][0].clone()
}

async fn read_keys(proxy: &TestProxy, n: usize) {
    let mut c = proxy.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let _: redis::Value = pipe.query_async(&mut c).await.unwrap();
    proxy.wait_mirrors_settled().await;
    // Shadow replies are compared when both are in: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let shared = proxy.proxy.as_ref().unwrap().shared();
    while shared
        .shadow_inflight
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until the route is in `phase` and auto-cutover reports it
/// (panics after `within`). The controller flips the route, then records
/// the flip in its status line: between the two, a status can show the
/// new phase beside the line from before.
async fn wait_phase(proxy: &TestProxy, phase: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    let reported = format!("in {phase}");
    loop {
        let r = route_status(proxy).await;
        let line = r["auto_cutover"].as_str().unwrap_or_default();
        if r["phase"] == phase && line.starts_with(&reported) {
            return r;
        }
        assert!(Instant::now() < deadline, "never reached {phase}: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_to_read_new_only_once_samples_and_agreement_pass() {
    let (old, new) = support::start_pair();
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut old.sync())
            .unwrap();
    }
    let policy = "min_agreement = 0.99\nmin_samples = 500\nmin_dual_write_secs = 1";
    let proxy = TestProxy::start_text(&auto_config(&old, &new, policy)).await;

    // Cold: 100 shadow reads, all missing on new.
    read_keys(&proxy, 100).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = route_status(&proxy).await;
    assert_eq!(r["phase"], "dual-write", "{r}");
    assert!(
        r["auto_cutover"]
            .as_str()
            .unwrap()
            .contains("100 shadow reads of the 500 needed"),
        "{r}"
    );
    // Enough samples, not enough agreement (400 of 500).
    for _ in 0..4 {
        read_keys(&proxy, 100).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = route_status(&proxy).await;
    assert_eq!(r["phase"], "dual-write", "{r}");
    assert!(
        r["auto_cutover"]
            .as_str()
            .unwrap()
            .contains("agreement 0.8000 below 0.99"),
        "{r}"
    );
    // The window slides to 1000 agreeing reads: it flips.
    for _ in 0..6 {
        read_keys(&proxy, 100).await;
    }
    let r = wait_phase(&proxy, "read-new", Duration::from_secs(3)).await;
    assert_eq!(r["source"], "auto", "{r}");
    assert!(
        r["auto_cutover"]
            .as_str()
            .unwrap()
            .contains("flipped to read-new"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_out_the_dual_write_time_and_flips_back_when_new_fails() {
    let old = RedisServer::start();
    let mut new = RedisServer::start();
    let policy = "min_agreement = 0.99\nmin_samples = 50\nmin_dual_write_secs = 3\nmax_new_error_rate = 0.2\nerror_window_secs = 2\nmin_commands = 10";
    let started = Instant::now();
    let proxy = TestProxy::start_text(&auto_config(&old, &new, policy)).await;
    let mut c = proxy.conn().await;
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Both caches agree from the start: only the time keeps it waiting.
    read_keys(&proxy, 100).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = route_status(&proxy).await;
    assert_eq!(r["phase"], "dual-write", "{r}");
    assert!(
        r["auto_cutover"]
            .as_str()
            .unwrap()
            .contains("in dual-write for"),
        "{r}"
    );
    let r = wait_phase(&proxy, "read-new", Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "flipped early: {r}"
    );
    assert_eq!(r["source"], "auto");

    // New dies: reads fail (new is authoritative now) until the policy
    // flips the route back and old answers again.
    new.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = 0;
    loop {
        let r: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg("k1").query_async(&mut c).await;
        match r {
            Ok(v) if route_status(&proxy).await["phase"] == "dual-write" => {
                assert_eq!(v.as_deref(), Some("1"));
                break;
            }
            Ok(_) => {}
            Err(_) => failures += 1,
        }
        assert!(Instant::now() < deadline, "never flipped back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failures > 0);
    let r = route_status(&proxy).await;
    assert_eq!(r["source"], "auto");
    assert!(
        r["auto_cutover"]
            .as_str()
            .unwrap()
            .contains("flipped back to dual-write"),
        "{r}"
    );
}
