//! A mirror that dies mid-run costs the client nothing.

mod support;

use std::time::Duration;

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::{get, RedisServer, TestProxy};

#[tokio::test]
async fn killed_mirror_causes_zero_client_errors() {
    let (old, mut new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("s", Some(&["s:*"]), Phase::DualWrite),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(proxy.conn().await);
    }
    let mut errors = 0;
    for i in 0..2000 {
        if i == 600 {
            // Every write so far answered by the mirror: the count below
            // does not depend on how far behind it was at the kill.
            proxy.wait_mirrors_settled().await;
            new.kill();
        }
        let c = &mut clients[i % 4];
        let key = format!("s:{i}");
        if c.set::<_, _, ()>(&key, i).await.is_err() {
            errors += 1;
        }
        match c.get::<_, Option<i64>>(&key).await {
            Ok(Some(v)) if v == i as i64 => {}
            _ => errors += 1,
        }
    }
    assert_eq!(errors, 0, "client saw errors after the mirror died");
    proxy.wait_mirrors_settled().await;
    let mut o = old.sync();
    for i in 0..2000 {
        assert!(
            get(&mut o, &format!("s:{i}")).is_some(),
            "s:{i} missing on old"
        );
    }
    assert!(
        proxy.stat("s", "mirror_failed") > 0,
        "writes the mirror missed are counted"
    );
    // Before the kill every mirrored write succeeded.
    assert!(proxy.stat("s", "mirror_ok") >= 600);
    assert_eq!(
        proxy.stat("s", "mirror_ok") + proxy.stat("s", "mirror_failed"),
        2000
    );
}

#[tokio::test]
async fn mirror_down_from_the_start_and_coming_back() {
    let old = RedisServer::start();
    let mut new = RedisServer::start();
    let new_port = new.port;
    new.kill();
    let proxy = TestProxy::start_text(&support::config_text(
        &old.addr(),
        &format!("127.0.0.1:{new_port}"),
        &[("default", None, Phase::DualWrite)],
        "",
    ))
    .await;
    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    assert!(proxy.stat("default", "mirror_failed") > 0);

    // The mirror comes back on the same port: after the backoff, mirrored
    // writes land again, on the same client connection.
    let back = RedisServer::start_on_port(new_port);
    assert_eq!(back.port, new_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _: () = c.set("after", "1").await.unwrap();
        if get(&mut back.sync(), "after").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mirror never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn stalled_mirror_costs_the_client_nothing_and_times_out() {
    let (old, new) = support::start_pair();
    let relay = support::StallingRelay::start(new.addr()).await;
    let text = support::Config::new(&old.addr(), &relay.addr.to_string())
        .route("default", None, Phase::DualWrite)
        // Long enough that a client held up by the mirror would show it
        // beyond any scheduling noise.
        .command_timeout(Side::New, 2000)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.conn().await;
    let _: () = c.set("warm", 1).await.unwrap();
    proxy.wait_mirrors_settled().await;

    relay.stall(true);
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let started = std::time::Instant::now();
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
        let v: i64 = c.get(format!("k{i}")).await.unwrap();
        assert_eq!(v, i);
        slowest = slowest.max(started.elapsed());
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "a stalled mirror slowed the client: {slowest:?}"
    );
    // Its writes time out: counted, the connection and what it held dropped.
    proxy.wait_mirrors_settled().await;
    assert!(proxy.stat("default", "mirror_failed") > 0);

    relay.stall(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _: () = c.set("after", "1").await.unwrap();
        if get(&mut new.sync(), "after").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mirror never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A restarted mirror answers `-LOADING` until it has read its data back.
/// Copies it refuses that way are kept in the journal and made once it is
/// loaded (they were dropped before: the soak found it).
#[tokio::test]
async fn a_mirror_still_loading_after_a_restart_is_repaired_once_loaded() {
    let old = RedisServer::start();
    // 200 us per key loaded: 10,000 keys keep it loading for about 2 s.
    let mut new = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--key-load-delay",
        "200",
        // Answer (-LOADING) while loading, not only every 2 MB loaded.
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    let proxy = TestProxy::start(&old, &new, &[("default", None, Phase::DualWrite)]).await;
    let mut c = proxy.conn().await;
    // The same 10,000 keys on both, through the proxy, then in new's AOF.
    let mut p = redis::pipe();
    for i in 0..10_000 {
        p.cmd("HSET").arg(format!("h{i}")).arg("a").arg(i).ignore();
    }
    let _: () = p.query_async(&mut c).await.unwrap();
    proxy.wait_mirrors_settled().await;
    new.run(&["BGREWRITEAOF"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = match new.run(&["INFO", "persistence"]) {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "AOF rewrite never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut i = 0u64;
    let mut write = |c: &mut redis::aio::MultiplexedConnection| {
        i += 1;
        let n = i;
        let mut c = c.clone();
        async move {
            let _: () = c.set(format!("w:{n}"), n).await.unwrap();
            let _: i64 = c.incr(format!("ctr:{}", n % 50), 1).await.unwrap();
            let _: i64 = c
                .hset(format!("h{}", (n * 10) % 10_000), "w", n)
                .await
                .unwrap();
        }
    };
    for _ in 0..100 {
        write(&mut c).await;
    }
    new.kill();
    for _ in 0..200 {
        write(&mut c).await;
    }
    new.restart_loading();
    // Writes go on while new loads: it answers them -LOADING.
    let loading_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < loading_until {
        write(&mut c).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = proxy.admin("GET", "/status", None).await;
        let status: cutover::admin::StatusView = serde_json::from_str(&body).unwrap();
        let journal: u64 = status.routes.iter().map(|r| r.journal_keys).sum();
        if journal == 0 && proxy.stat("default", "repaired") > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "journal never drained: {journal}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.wait_mirrors_settled().await;
    support::assert_same_keyspace(&old, &new, 1000);
}
