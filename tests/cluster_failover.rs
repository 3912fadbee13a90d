//! A primary of the clustered new cache dies during a dual-write load and
//! its replica takes over (issue 17, item 1): connections routed through
//! the dead node drop, their mirrored writes are journalled, the slot map
//! is read again (from the seeds the dead node is not), and once the
//! replica serves the slots every journalled key is copied: old and new
//! end equal, and the client, answered by old, saw no error.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover::routing::{Phase, Side};
use support::{assert_same_keys, wait_for, Config, RedisCluster, RedisServer, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_on_new_loses_no_write() {
    let old = RedisServer::start();
    let mut cluster = RedisCluster::start_with(3, &["--cluster-node-timeout", "1000"]);
    cluster.add_replica(0);
    let seeds: Vec<String> = cluster.nodes[1..].iter().map(|n| n.addr()).collect();
    let text = Config::new(&old.addr(), &cluster.nodes[0].addr())
        .upstream(Side::New, "cluster", true)
        .upstream(Side::New, "seeds", seeds)
        .route("default", None, Phase::DualWrite)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (proxy.url(), stop.clone());
        tokio::spawn(async move {
            let mut c = support::connect(&url).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut p = redis::pipe();
                for j in 0..4 {
                    p.cmd("SET")
                        .arg(format!("k{}", (n * 4 + j) % 500))
                        .arg(n)
                        .ignore();
                }
                p.cmd("INCR").arg("counter").ignore();
                let r: redis::RedisResult<()> = p.query_async(&mut c).await;
                r.unwrap_or_else(|e| panic!("the client saw an error: {e}"));
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[0].kill();
    let promoted = &cluster.replicas[0];
    wait_for("the replica promoted", async || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut promoted.sync())
            .unwrap();
        info.contains("role:master")
    })
    .await;
    // The load goes on with the replica serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let batches = load.await.unwrap();
    assert!(batches > 50, "{batches} batches");
    proxy.wait_mirrors_settled().await;
    let live = [&cluster.nodes[1], &cluster.nodes[2], promoted];
    let new_keys = || {
        let mut all = std::collections::BTreeMap::new();
        for n in live {
            all.extend(support::keyspace(&mut n.sync()));
        }
        all
    };
    let want = support::keyspace(&mut old.sync());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = new_keys();
        let differ: Vec<String> = want
            .iter()
            .filter(|(k, v)| got.get(*k).map(|g| &g.value) != Some(&v.value))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        if differ.is_empty() && got.len() == want.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} keys differ on new ({:?}...): {} mirror failures, {} mirror errors, {} journalled, {} copied, {} copies failed",
            differ.len(),
            &differ[..differ.len().min(5)],
            proxy.stat("default", "mirror_failed"),
            proxy.stat("default", "mirror_errors"),
            proxy.stat("default", "journalled"),
            proxy.stat("default", "repaired"),
            proxy.stat("default", "repair_failed"),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_same_keys(&want, &new_keys(), 0);
    eprintln!(
        "failover: {} mirrored, {} ok, {} errors, {} mirror failures, {} journalled, {} copied",
        proxy.stat("default", "mirrored"),
        proxy.stat("default", "mirror_ok"),
        proxy.stat("default", "mirror_errors"),
        proxy.stat("default", "mirror_failed"),
        proxy.stat("default", "journalled"),
        proxy.stat("default", "repaired")
    );
}
