//! The mirror-failure journal: writes whose mirror copy was lost are
//! recorded by key, survive a proxy restart, and are copied from the
//! authoritative side once the mirror is back; an overflow marks the route
//! "needs verify" instead of forgetting keys.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::routing::Phase;
use redis::AsyncCommands;
use support::{assert_same_keyspace, config_text, RedisServer, TestProxy};

/// The route's `journal_keys` and `needs_verify` as `GET /status` shows them.
async fn journal_status(proxy: &TestProxy) -> (u64, bool) {
    let (code, body) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = &v["routes"][0];
    (
        r["journal_keys"].as_u64().unwrap(),
        r["needs_verify"].as_bool().unwrap(),
    )
}

/// Writes mixed commands in its own keyspace until told to stop; returns
/// the number of client-visible errors.
async fn writer(url: String, me: u32, stop: Arc<AtomicBool>, errors: Arc<AtomicU64>) {
    let mut conn = support::connect(&url).await;
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = i % 50;
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(format!("w{me}:s:{k}")).arg(i);
        pipe.cmd("INCR").arg(format!("w{me}:n:{k}"));
        pipe.cmd("HSET")
            .arg(format!("w{me}:h:{k}"))
            .arg(format!("f{}", i % 7))
            .arg(i);
        pipe.cmd("RPUSH").arg(format!("w{me}:l:{k}")).arg(i);
        pipe.cmd("PEXPIRE")
            .arg(format!("w{me}:s:{k}"))
            .arg(600_000 + i);
        if i % 5 == 0 {
            pipe.cmd("DEL").arg(format!("w{me}:l:{}", (k + 3) % 50));
        }
        let r: redis::RedisResult<redis::Value> = pipe.query_async(&mut conn).await;
        if let Err(e) = r {
            eprintln!("writer {me}: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_down_for_ten_seconds_catches_up_from_the_journal_across_a_restart() {
    let old = RedisServer::start();
    // Killed with SIGKILL and restarted with what it had (AOF, fsync always):
    // an outage, not a data loss.
    let mut new = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|me| tokio::spawn(writer(proxy.url(), me, stop.clone(), errors.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    new.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "a client saw an error");
    assert!(proxy.stat("default", "mirror_failed") > 0);
    let (journalled, needs_verify) = journal_status(&proxy).await;
    assert!(journalled >= 100, "{journalled} keys journalled");
    assert!(!needs_verify);

    // The journal is on disk and comes back with the proxy.
    proxy.restart().await;
    assert_eq!(journal_status(&proxy).await, (journalled, false));

    new.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (left, _) = journal_status(&proxy).await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} keys still journalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.wait_mirrors_settled().await;
    assert!(proxy.stat("default", "repaired") >= journalled);
    assert_same_keyspace(&old, &new, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_marks_the_route_needs_verify_until_cleared() {
    let old = RedisServer::start();
    let mut new = RedisServer::start();
    let text = config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        "[journal]\nmax_keys = 5\n",
    );
    let proxy = TestProxy::start_text(&text).await;
    new.kill();
    let mut c = proxy.conn().await;
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    assert_eq!(journal_status(&proxy).await, (5, true));
    assert_eq!(proxy.stat("default", "journal_overflow"), 15);
    let (_, metrics) = proxy.admin("GET", "/metrics", None).await;
    assert!(
        metrics.contains("cutover_route_needs_verify{route=\"default\"} 1"),
        "{metrics}"
    );
    let (code, body) = proxy
        .admin("DELETE", "/routes/default/needs-verify", None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(journal_status(&proxy).await, (5, false));
    let (code, _) = proxy
        .admin("DELETE", "/routes/nope/needs-verify", None)
        .await;
    assert_eq!(code, 404);
}

/// Polls until the proxy's journal is empty.
async fn wait_drained(proxy: &TestProxy) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal_status(proxy).await.0 > 0 {
        assert!(Instant::now() < deadline, "the journal never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A copy journalled while old was authoritative must not run once the
/// route no longer writes old (read-new, then new-only before the journal
/// drained): old's value is older than new's, and copying it would
/// overwrite newer data on new. Here the journal on disk holds an old→new
/// copy and the proxy starts with the route in new-only.
#[tokio::test]
async fn a_journalled_copy_from_a_side_the_route_no_longer_writes_is_dropped() {
    let (old, new) = support::start_pair();
    let _: () = old.conn().await.set("k", "stale").await.unwrap();
    let _: () = new.conn().await.set("k", "newer").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = support::journal_of_k(dir.path(), "old");
    let text = support::Config::new(&old.addr(), &new.addr())
        .routes(&[("default", None, Phase::NewOnly)])
        .with(&journal)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    wait_drained(&proxy).await;
    assert_eq!(proxy.stat("default", "repaired"), 0);
    assert_eq!(proxy.stat("default", "repair_skipped"), 1);
    let v: Option<String> = new.conn().await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("newer"));
}

/// A copy queued while new answered (`read-new`), run after the route
/// went back to `dual-write`, copies from old, which answers now: copying
/// from new would overwrite old, the truth again, with new's older view (a
/// model run caught it: a list element a consumer had already popped on old
/// came back and was delivered twice). Here the journal on disk holds a
/// new→old copy and the proxy starts in `dual-write`.
#[tokio::test]
async fn a_queued_copy_reads_from_the_side_that_answers_now() {
    let (old, new) = support::start_pair();
    let _: () = old.conn().await.set("k", "truth").await.unwrap();
    let _: () = new.conn().await.set("k", "older").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = support::journal_of_k(dir.path(), "new");
    let text = support::Config::new(&old.addr(), &new.addr())
        .routes(&[("default", None, Phase::DualWrite)])
        .with(&journal)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    wait_drained(&proxy).await;
    assert_eq!(proxy.stat("default", "repaired"), 1);
    for (s, name) in [(&old, "old"), (&new, "new")] {
        let v: Option<String> = s.conn().await.get("k").await.unwrap();
        assert_eq!(v.as_deref(), Some("truth"), "{name}");
    }
}

/// The mirror image: a copy from old queued in `dual-write` that runs once
/// the route reads from new copies from new, which answers now; a fill
/// (journalled by a read fallback or a backfill, `"follows": false`)
/// still copies old to new.
#[tokio::test]
async fn a_copy_follows_its_route_to_read_new_and_a_fill_does_not() {
    for (follows, want) in [(true, "truth"), (false, "from-old")] {
        let (old, new) = support::start_pair();
        let _: () = old.conn().await.set("k", "from-old").await.unwrap();
        let _: () = new.conn().await.set("k", "truth").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let journal = support::journal_of_k(dir.path(), "old");
        if !follows {
            let file = dir.path().join("journal.json");
            let text = std::fs::read_to_string(&file).unwrap();
            let text = text.replace(r#""from":"old""#, r#""from":"old","follows":false"#);
            std::fs::write(&file, text).unwrap();
        }
        let text = support::Config::new(&old.addr(), &new.addr())
            .routes(&[("default", None, Phase::ReadNew)])
            .with(&journal)
            .text();
        let proxy = TestProxy::start_text(&text).await;
        wait_drained(&proxy).await;
        for (s, name) in [(&old, "old"), (&new, "new")] {
            let v: Option<String> = s.conn().await.get("k").await.unwrap();
            assert_eq!(v.as_deref(), Some(want), "follows {follows}: {name}");
        }
    }
}
