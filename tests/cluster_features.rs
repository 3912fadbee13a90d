//! Transactions, scripts, blocking commands and pub/sub with a Redis
//! Cluster answering (issue 17, item 5): each runs on the node owning its
//! keys, subscriptions work cluster-wide (sharded ones by slot), and a
//! consumer blocked on a cluster node is moved at a flip like one blocked
//! on a standalone cache.

mod support;

use std::time::Duration;

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::{resp, wait_for, Config, RawClient, RedisCluster, RedisServer, TestProxy};

async fn proxy_to(old: &str, new: &str, routes: &[(&str, Option<&[&str]>, Phase)]) -> TestProxy {
    let mut c = Config::new(old, new).upstream(Side::New, "cluster", true);
    for &(name, patterns, phase) in routes {
        c = c.route(name, patterns, phase);
    }
    TestProxy::start_text(&c.text()).await
}

#[tokio::test]
async fn transactions_and_scripts_run_on_the_node_of_their_keys() {
    let old = RedisServer::start();
    let cluster = RedisCluster::start(3);
    let proxy = proxy_to(
        &old.addr(),
        &cluster.nodes[0].addr(),
        &[("default", None, Phase::NewOnly)],
    )
    .await;
    let mut c = proxy.conn().await;
    // A transaction on one slot, on a node other than the first.
    let tag = "{user7}";
    let mut tx = redis::pipe();
    tx.atomic()
        .incr(format!("{tag}:n"), 2)
        .rpush(format!("{tag}:l"), "a")
        .get(format!("{tag}:n"));
    let got: (i64, i64, i64) = tx.query_async(&mut c).await.unwrap();
    assert_eq!(got, (2, 1, 2));
    let on_node: i64 = redis::cmd("GET")
        .arg(format!("{tag}:n"))
        .query(&mut cluster.node_of(tag).sync())
        .unwrap();
    assert_eq!(on_node, 2);
    // WATCH on that node: a change made in between aborts the EXEC.
    let mut raw = proxy.raw().await;
    raw.send(&resp(&["WATCH", "{user7}:n"])).await;
    assert_eq!(raw.read_replies(1).await, b"+OK\r\n");
    let _: i64 = c.incr(format!("{tag}:n"), 1).await.unwrap();
    let mut script = Vec::new();
    for cmd in [&["MULTI"][..], &["INCR", "{user7}:n"], &["EXEC"]] {
        script.extend(resp(cmd));
    }
    raw.send(&script).await;
    assert_eq!(raw.read_replies(3).await, b"+OK\r\n+QUEUED\r\n*-1\r\n");
    // Keys of two slots in one transaction: refused as a cluster does.
    let mut script = Vec::new();
    for cmd in [
        &["MULTI"][..],
        &["SET", "{a}x", "1"],
        &["SET", "{b}y", "1"],
        &["EXEC"],
    ] {
        script.extend(resp(cmd));
    }
    raw.send(&script).await;
    let reply = String::from_utf8(raw.read_replies(4).await).unwrap();
    assert!(reply.starts_with("+OK\r\n+QUEUED\r\n-CROSSSLOT"), "{reply}");
    assert!(reply.contains("-EXECABORT"), "{reply}");
    // Empty transaction: nothing to run.
    let mut script = resp(&["MULTI"]);
    script.extend(resp(&["EXEC"]));
    raw.send(&script).await;
    assert_eq!(raw.read_replies(2).await, b"+OK\r\n*0\r\n");
    // Scripts: on the node of their keys, or any node without keys.
    let sum: i64 = redis::cmd("EVAL")
        .arg("return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('LLEN', KEYS[2])")
        .arg(2)
        .arg(format!("{tag}:n"))
        .arg(format!("{tag}:l"))
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(sum, 14);
    let one: i64 = redis::cmd("EVAL")
        .arg("return 1")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(one, 1);
    // SCRIPT LOAD reaches every node: EVALSHA works on any key.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1])")
        .query_async(&mut c)
        .await
        .unwrap();
    for key in ["a", "b", "c", "foo"] {
        let _: () = c.set(key, key).await.unwrap();
        let v: String = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, key);
    }
}

#[tokio::test]
async fn subscriptions_work_cluster_wide_and_sharded_ones_by_slot() {
    let old = RedisServer::start();
    let cluster = RedisCluster::start(3);
    let proxy = proxy_to(
        &old.addr(),
        &cluster.nodes[0].addr(),
        &[("default", None, Phase::NewOnly)],
    )
    .await;
    for resp3 in [false, true] {
        let mut sub = proxy.raw().await;
        if resp3 {
            sub.send(&resp(&["HELLO", "3"])).await;
            sub.read_replies(1).await;
        }
        sub.send(&resp(&["SUBSCRIBE", "news", "sport"])).await;
        sub.read_replies(2).await;
        sub.send(&resp(&["PSUBSCRIBE", "ev:*"])).await;
        sub.read_replies(1).await;
        sub.send(&resp(&["SSUBSCRIBE", "{shard}:a", "{shard}:b"]))
            .await;
        let confirmed = String::from_utf8(sub.read_replies(2).await).unwrap();
        assert!(confirmed.contains("ssubscribe"), "{confirmed}");
        // Published through cutover and straight to any node alike.
        let mut p = proxy.conn().await;
        let _: i64 = p.publish("news", "n1").await.unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("ev:login")
            .arg("e1")
            .query(&mut cluster.nodes[2].sync())
            .unwrap();
        let _: i64 = redis::cmd("SPUBLISH")
            .arg("{shard}:b")
            .arg("s1")
            .query_async(&mut p)
            .await
            .unwrap();
        let got = String::from_utf8(sub.read_replies(3).await).unwrap();
        for part in ["n1", "e1", "s1", "smessage", "pmessage"] {
            assert!(got.contains(part), "{part} in {got:?}");
        }
        // Unsubscribing from everything: one confirmation per channel.
        sub.send(&resp(&["UNSUBSCRIBE"])).await;
        let got = String::from_utf8(sub.read_replies(2).await).unwrap();
        assert!(got.contains("news") && got.contains("sport"), "{got}");
        sub.send(&resp(&["SUNSUBSCRIBE"])).await;
        sub.read_replies(2).await;
        sub.send(&resp(&["PUNSUBSCRIBE"])).await;
        sub.read_replies(1).await;
        sub.send(&resp(&["PING"])).await;
        let pong = String::from_utf8(sub.read_replies(1).await).unwrap();
        assert_eq!(pong, "+PONG\r\n", "out of subscribed mode, RESP3 {resp3}");
    }
}

/// Consumers blocked on the cluster's node, moved at a flip both ways:
/// each element reaches exactly one consumer and both caches end empty.
#[tokio::test]
async fn consumers_blocked_on_a_cluster_node_move_at_a_flip() {
    for (before, after) in [
        (Phase::ReadNew, Phase::DualWrite),
        (Phase::DualWrite, Phase::ReadNew),
    ] {
        let old = RedisServer::start();
        let cluster = RedisCluster::start(3);
        let new_node = cluster.node_of("session:jobs");
        let config = |phase: Phase| {
            Config::new(&old.addr(), &cluster.nodes[0].addr())
                .upstream(Side::New, "cluster", true)
                .route("session", Some(&["session:*"]), phase)
                .route("default", None, Phase::OldOnly)
                .text()
        };
        let proxy = TestProxy::start_text(&config(before)).await;
        let consumer = |mut c: RawClient| {
            tokio::spawn(async move {
                c.send(&resp(&["BLPOP", "session:jobs", "0"])).await;
                String::from_utf8(c.read_replies(1).await).unwrap()
            })
        };
        let mut consumers = Vec::new();
        for _ in 0..3 {
            consumers.push(consumer(proxy.raw().await));
        }
        let blocked = |side: Side| match side {
            Side::Old => support::blocked_clients(&old),
            Side::New => support::blocked_clients(new_node),
        };
        wait_for("3 blocked before the flip", async || {
            blocked(before.authoritative()) == 3
        })
        .await;
        proxy.rewrite_config(&config(after));
        proxy.wait_phase("session", after).await;
        consumers.push(consumer(proxy.raw().await));
        wait_for("all 4 blocked where the route reads now", async || {
            blocked(after.authoritative()) == 4 && blocked(before.authoritative()) == 0
        })
        .await;
        let mut p = proxy.conn().await;
        let jobs: Vec<String> = (1..=4).map(|i| format!("e{i}")).collect();
        let _: i64 = p.rpush("session:jobs", &jobs).await.unwrap();
        let mut got = Vec::new();
        for c in consumers {
            let reply = tokio::time::timeout(Duration::from_secs(10), c)
                .await
                .expect("every consumer is served")
                .unwrap();
            got.push(reply.rsplit("\r\n").nth(1).unwrap().to_string());
        }
        got.sort();
        assert_eq!(got, jobs, "{before} -> {after}: each element exactly once");
        proxy.wait_mirrors_settled().await;
        let left: i64 = redis::cmd("LLEN")
            .arg("session:jobs")
            .query(&mut old.sync())
            .unwrap();
        let left_new: i64 = redis::cmd("LLEN")
            .arg("session:jobs")
            .query(&mut new_node.sync())
            .unwrap();
        assert_eq!((left, left_new), (0, 0));
    }
}

/// Connection state reaches every node connection, also those opened
/// after it was set; `SELECT` of another database is refused as a cluster
/// refuses it. (Dedicated connections in either test mode: on shared ones
/// cutover keeps the name itself, tests/shared_seam.rs.)
#[tokio::test]
async fn connection_state_is_on_every_node_and_select_is_refused_clearly() {
    let old = RedisServer::start();
    let cluster = RedisCluster::start(3);
    let text = Config::new(&old.addr(), &cluster.nodes[0].addr())
        .upstream(Side::New, "cluster", true)
        .upstream(Side::New, "connections", "dedicated")
        .route("default", None, Phase::NewOnly)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut raw = proxy.raw().await;
    raw.send(&resp(&["CLIENT", "SETNAME", "checkout-7"])).await;
    assert_eq!(raw.read_replies(1).await, b"+OK\r\n");
    // Keys on every node, after the name was set.
    for key in ["a", "b", "c", "foo", "bar"] {
        raw.send(&resp(&["SET", key, "1"])).await;
        assert_eq!(raw.read_replies(1).await, b"+OK\r\n");
    }
    for n in &cluster.nodes {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut n.sync())
            .unwrap();
        assert!(list.contains("name=checkout-7"), "{}: {list}", n.addr());
    }
    raw.send(&resp(&["SELECT", "1"])).await;
    let reply = String::from_utf8(raw.read_replies(1).await).unwrap();
    assert!(
        reply.contains("SELECT is not allowed in cluster mode"),
        "{reply}"
    );
    raw.send(&resp(&["GET", "foo"])).await;
    assert_eq!(raw.read_replies(1).await, b"$1\r\n1\r\n");
}
