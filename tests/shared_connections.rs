//! Shared upstream connections (issue 19, first part): sessions without
//! connection state share a few pipelined connections per cache, the
//! number bounded whatever the number of clients; a session that needs
//! connection state moves to a connection of its own with its replies in
//! order; a shared connection that fails fails only the commands it
//! carried, with the usual error, and is opened again.

mod support;

use cutover::routing::{Phase, Side};
use support::{resp, wait_for, Config, RedisServer, TestProxy};

fn shared_config(old: &RedisServer, new: &RedisServer, phase: Phase) -> String {
    let shared = "connections = \"shared\"\nshared_per_node = 2\n";
    Config::new(&old.addr(), &new.addr())
        .route("default", None, phase)
        .upstream_toml(Side::Old, shared)
        .upstream_toml(Side::New, shared)
        // One session thread: two shared connections per cache in all.
        .with("[listen]\nworkers = 1")
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_two_connections_per_cache() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared_config(&old, &new, Phase::DualWrite)).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c = proxy.raw().await;
        c.send(&resp(&["SET", &format!("k{i}"), &i.to_string()]))
            .await;
        clients.push(c);
    }
    for c in clients.iter_mut() {
        assert_eq!(c.read_replies(1).await, b"+OK\r\n");
    }
    // Each reads its own key back, pipelined with a write.
    for (i, c) in clients.iter_mut().enumerate() {
        let (k, v) = (format!("k{i}"), format!("{i}"));
        c.send(&[resp(&["APPEND", &k, "x"]), resp(&["GET", &k])].concat())
            .await;
        let want = format!(":{}\r\n${}\r\n{v}x\r\n", v.len() + 1, v.len() + 1);
        assert_eq!(c.read_replies(2).await, want.as_bytes());
    }
    assert!(old.clients() <= 2, "old has {} connections", old.clients());
    assert!(new.clients() <= 2, "new has {} connections", new.clients());
    // /status and /metrics count them.
    for u in proxy.upstream_status().await {
        let shared = &u["shared"];
        assert!(shared["connections"].as_u64().unwrap() <= 2, "{u}");
        assert_eq!(shared["sessions"], 200, "{u}");
    }
    let (_, metrics) = proxy.admin("GET", "/metrics", None).await;
    assert!(
        metrics.contains("cutover_upstream_shared_sessions{upstream=\"old\"} 200.0"),
        "{metrics}"
    );
    proxy.wait_mirrors_settled().await;
    support::assert_same_keyspace(&old, &new, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_needing_state_moves_to_its_own_connection_in_order() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared_config(&old, &new, Phase::OldOnly)).await;
    let mut c = proxy.raw().await;
    let mut other = proxy.raw().await;
    other.send(&resp(&["SET", "a", "0"])).await;
    assert_eq!(other.read_replies(1).await, b"+OK\r\n");
    // Shared commands, then SELECT and more, in one pipeline: the replies
    // in order, the later commands in database 1.
    let pipeline = [
        resp(&["SET", "a", "1"]),
        resp(&["INCR", "a"]),
        resp(&["SELECT", "1"]),
        resp(&["SET", "a", "db1"]),
        resp(&["GET", "a"]),
        resp(&["BLPOP", "nothing", "0.1"]),
    ]
    .concat();
    c.send(&pipeline).await;
    assert_eq!(
        c.read_replies(6).await,
        b"+OK\r\n:2\r\n+OK\r\n+OK\r\n$3\r\ndb1\r\n*-1\r\n"
    );
    let a: String = redis::cmd("GET").arg("a").query(&mut old.sync()).unwrap();
    assert_eq!(a, "2", "the commands before SELECT ran in database 0");
    // A connection of its own now (in database 1); the other client
    // still shares one of the (at most two) shared connections.
    let own = |s: &RedisServer| {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut s.sync())
            .unwrap();
        list.lines().filter(|l| l.contains(" db=1 ")).count()
    };
    assert_eq!(own(&old), 1);
    assert!(old.clients() <= 3, "{} connections", old.clients());
    other.send(&resp(&["GET", "a"])).await;
    assert_eq!(other.read_replies(1).await, b"$1\r\n2\r\n");
    assert!(old.clients() <= 3, "{} connections", old.clients());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_connection_fails_its_commands_and_comes_back() {
    let (mut old, new) = support::start_pair();
    let proxy = TestProxy::start_text(&shared_config(&old, &new, Phase::OldOnly)).await;
    let (mut c, mut idle) = (proxy.raw().await, proxy.raw().await);
    for x in [&mut c, &mut idle] {
        x.send(&resp(&["SET", "a", "1"])).await;
        assert_eq!(x.read_replies(1).await, b"+OK\r\n");
    }
    old.kill();
    c.send(&resp(&["GET", "a"])).await;
    let reply = String::from_utf8(c.read_replies(1).await).unwrap();
    assert!(reply.starts_with("-ERR cutover: upstream old"), "{reply}");
    old.restart();
    wait_for("the shared connection is opened again", async || {
        let mut c = proxy.raw().await;
        c.send(&resp(&["SET", "b", "2"])).await;
        c.read_replies(1).await == b"+OK\r\n"
    })
    .await;
    // A client idle through it (nothing of its on the connection that
    // closed) goes on another one: no error.
    idle.send(&resp(&["GET", "b"])).await;
    assert_eq!(idle.read_replies(1).await, b"$1\r\n2\r\n");
}

/// A clustered cache shares too: each shared connection is a router with
/// one connection per node it reaches, so a node sees `shared_per_node`
/// per session thread, not one per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_cache_is_shared_node_by_node() {
    let old = RedisServer::start();
    let cluster = support::RedisCluster::start(3);
    let shared = "connections = \"shared\"\nshared_per_node = 1\n";
    let text = Config::new(&old.addr(), &cluster.nodes[0].addr())
        .route("default", None, Phase::DualWrite)
        .upstream_toml(Side::Old, shared)
        .upstream_toml(Side::New, &format!("{shared}cluster = true"))
        .with("[listen]\nworkers = 1")
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut c = proxy.raw().await;
        // Keys on every node, a multi-key write across slots among them.
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        c.send(&[resp(&["SET", &a, "1"]), resp(&["MSET", &b, "2", "c", "3"])].concat())
            .await;
        clients.push(c);
    }
    for c in clients.iter_mut() {
        assert_eq!(c.read_replies(2).await, b"+OK\r\n+OK\r\n");
    }
    for c in clients.iter_mut() {
        c.send(&resp(&["INCR", "a7"])).await;
        let reply = c.read_replies(1).await;
        assert!(
            reply.starts_with(b":"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
    assert!(old.clients() <= 1, "old has {}", old.clients());
    for n in &cluster.nodes {
        // The shared router's connection, and the one reading the slot map.
        assert!(n.clients() <= 2, "{} has {}", n.addr(), n.clients());
    }
    proxy.wait_mirrors_settled().await;
    assert_eq!(support::keyspace(&mut old.sync()), cluster.keyspace());
}
