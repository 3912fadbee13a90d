//! Shared upstream connections (issue 19): the connection budget (a
//! thousand idle clients and fifty busy ones cost each cache at most
//! `shared_per_node` connections per session thread, plus those of the
//! sessions that need their own, and `/status` and the metrics count both
//! kinds), and isolation (a client reading a very large reply slowly, or a
//! slow command, holds up no other client for longer than the cache
//! itself does).

mod support;

use std::time::{Duration, Instant};

use cutover::routing::{Phase, Side};
use support::{resp, Config, RawClient, RedisServer, TestProxy};

/// Both caches shared, `per_node` connections per session thread.
fn shared(old: &RedisServer, new: &RedisServer, phase: Phase, per_node: usize) -> String {
    let lines = format!("connections = \"shared\"\nshared_per_node = {per_node}\n");
    Config::new(&old.addr(), &new.addr())
        .route("default", None, phase)
        .upstream_toml(Side::Old, &lines)
        .upstream_toml(Side::New, &lines)
        .with(&format!("[listen]\nworkers = {WORKERS}"))
        .text()
}

const WORKERS: usize = 2;

/// Old shared (two connections), in `old-only`, on one session thread.
fn one_thread(old: &RedisServer, new: &RedisServer) -> String {
    Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::OldOnly)
        .upstream_toml(Side::Old, "connections = \"shared\"\nshared_per_node = 2")
        .with("[listen]\nworkers = 1")
        .text()
}

/// Sends `cmd` and reads its one reply.
async fn ask(c: &mut RawClient, cmd: &[&str]) -> Vec<u8> {
    c.send(&resp(cmd)).await;
    c.read_replies(1).await
}

/// The `(dedicated, shared connections, sessions)` of each upstream in
/// `/status`, old first.
async fn status_counts(proxy: &TestProxy) -> Vec<(u64, u64, u64)> {
    let ups = proxy.upstream_status().await;
    ups.iter()
        .map(|u| {
            let n = |v: &serde_json::Value| v.as_u64().unwrap();
            (
                n(&u["dedicated"]),
                n(&u["shared"]["connections"]),
                n(&u["shared"]["sessions"]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_clients_and_fifty_busy_ones_use_a_bounded_number_of_connections() {
    let (old, new) = support::start_pair();
    let per_node = 2;
    let budget = per_node * WORKERS;
    let proxy = TestProxy::start_text(&shared(&old, &new, Phase::DualWrite, per_node)).await;
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut c = proxy.raw().await;
        c.send(&resp(&["SET", &format!("idle:{i}"), "x"])).await;
        idle.push(c);
    }
    for c in idle.iter_mut() {
        assert_eq!(c.read_replies(1).await, b"+OK\r\n");
    }
    // Fifty busy clients, while the caches' connections are counted.
    let stop = Instant::now() + Duration::from_millis(1500);
    let mut busy = Vec::new();
    for b in 0..50 {
        let mut c = proxy.raw().await;
        busy.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let k = format!("busy:{b}");
                assert_eq!(
                    ask(&mut c, &["INCR", &k]).await,
                    format!(":{}\r\n", n + 1).as_bytes()
                );
                n += 1;
            }
            n
        }));
    }
    let mut most = 0;
    while Instant::now() < stop {
        most = most.max(old.clients()).max(new.clients());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut done = 0;
    for b in busy {
        done += b.await.unwrap();
    }
    assert!(done > 50, "the busy clients ran ({done} commands)");
    assert!(
        most <= budget,
        "{most} connections to a cache (budget {budget})"
    );
    // The busy clients have gone (their sessions end as the proxy reads
    // their close).
    support::wait_for("the busy sessions ended", async || {
        status_counts(&proxy).await.iter().all(|c| c.2 == 1000)
    })
    .await;
    for (dedicated, conns, _) in status_counts(&proxy).await {
        assert_eq!(dedicated, 0);
        assert!(conns as usize <= budget, "{conns}");
    }
    // A session that needs state takes one connection of its own on each
    // cache (dual-write; the mirror's is opened as the write is mirrored,
    // after the client has its reply), counted apart.
    let mut own = proxy.raw().await;
    assert_eq!(ask(&mut own, &["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(ask(&mut own, &["SET", "k", "v"]).await, b"+OK\r\n");
    proxy.wait_mirrors_settled().await;
    for (dedicated, _, _) in status_counts(&proxy).await {
        assert_eq!(dedicated, 1);
    }
    assert!(old.clients() <= budget + 1);
    assert!(new.clients() <= budget + 1);
    let (_, metrics) = proxy.admin("GET", "/metrics", None).await;
    for want in [
        "cutover_upstream_dedicated_connections{upstream=\"old\"} 1",
        "cutover_upstream_dedicated_connections{upstream=\"new\"} 1",
        "cutover_upstream_shared_sessions{upstream=\"new\"} 1000",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    // Closing the session closes its own connections.
    drop(own);
    support::wait_for("the own connections closed", async || {
        status_counts(&proxy).await.iter().all(|c| c.0 == 0)
    })
    .await;
    proxy.wait_mirrors_settled().await;
    support::assert_same_keyspace(&old, &new, 0);
}

/// Small clients' round trips while `during` runs: how many, and the
/// slowest.
async fn small_clients(proxy: &TestProxy, n: usize, stop: Instant) -> (usize, Duration) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = proxy.raw().await;
        tasks.push(tokio::spawn(async move {
            let k = format!("small:{i}");
            let (mut count, mut slowest) = (0, Duration::ZERO);
            while Instant::now() < stop {
                let t = Instant::now();
                assert_eq!(ask(&mut c, &["SET", &k, "v"]).await, b"+OK\r\n");
                slowest = slowest.max(t.elapsed());
                count += 1;
            }
            (count, slowest)
        }));
    }
    let mut total = (0, Duration::ZERO);
    for t in tasks {
        let (c, s) = t.await.unwrap();
        total = (total.0 + c, total.1.max(s));
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_very_large_reply_holds_up_no_other_client() {
    let (old, new) = support::start_pair();
    // One session thread, two connections: every client shares them.
    let proxy = TestProxy::start_text(&one_thread(&old, &new)).await;
    // A list whose whole range is a 16 MB reply.
    let item = "x".repeat(100);
    let mut sync = old.sync();
    for _ in 0..40 {
        let mut p = redis::pipe();
        p.cmd("RPUSH").arg("big");
        for _ in 0..4000 {
            p.arg(&item);
        }
        p.exec(&mut sync).unwrap();
    }
    // The big client asks for it three times over and does not read.
    let mut big = proxy.raw().await;
    let lrange = resp(&["LRANGE", "big", "0", "-1"]);
    big.send(&lrange.repeat(3)).await;
    let hold = Duration::from_secs(3);
    let (count, slowest) = small_clients(&proxy, 20, Instant::now() + hold).await;
    println!("while a 3 x 16 MB reply sat unread: {count} small round trips, slowest {slowest:?}");
    assert!(count > 100, "{count} small round trips in {hold:?}");
    assert!(
        slowest < hold / 2,
        "a small command waited {slowest:?} behind the unread reply"
    );
    // The big client gets its replies whole, in order.
    let replies = big.read_replies(3).await;
    let one = {
        let mut d = support::RawClient::connect(old.addr()).await;
        d.send(&lrange).await;
        d.read_replies(1).await
    };
    assert!(one.len() > 16_000_000);
    assert!(replies == one.repeat(3), "the big replies differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_command_holds_up_others_no_longer_than_the_cache_does() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&one_thread(&old, &new)).await;
    // A script that busies the cache for a while, on a shared connection.
    // Redis runs one command at a time: the others wait for it, directly
    // or through cutover, and through cutover not much longer.
    let script = "local i = 0 while i < 30000000 do i = i + 1 end return i";
    let mut slow = proxy.raw().await;
    let stop = Instant::now() + Duration::from_millis(2000);
    let small = small_clients(&proxy, 20, stop);
    let slow_cmd = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        assert_eq!(
            ask(&mut slow, &["EVAL", script, "0"]).await,
            b":30000000\r\n"
        );
        t.elapsed()
    };
    let ((count, slowest), took) = tokio::join!(small, slow_cmd);
    println!("beside a script of {took:?}: {count} small round trips, slowest {slowest:?}");
    assert!(count > 100, "{count} small round trips");
    assert!(
        slowest < took + Duration::from_millis(500),
        "a small command waited {slowest:?} beside a script of {took:?}"
    );
}
