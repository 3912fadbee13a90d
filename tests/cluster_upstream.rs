//! A Redis Cluster as an upstream (issue 17): a client of cutover sees one
//! standalone Redis while new (or old) is a real three-primary cluster.
//! Commands go to the node owning their slot; multi-key commands with
//! keys anywhere are split and merged byte-identical to a standalone
//! Redis; `MOVED` and `ASK` during a live slot migration are followed
//! without the client seeing them; a cross-slot write the cluster refuses
//! as the mirror is copied instead.

mod support;

use std::time::Duration;

use cutover::routing::{Phase, Side};
use support::{
    assert_same_keys, exchange, resp, wait_for, Config, RedisCluster, RedisServer, TestProxy,
};

fn clustered(old: &str, new: &str, cluster_side: &[Side], phase: Phase) -> String {
    let mut c = Config::new(old, new).route("default", None, phase);
    for &side in cluster_side {
        c = c.upstream(side, "cluster", true);
    }
    c.text()
}

/// A standalone old, a three-primary cluster as new (seeded at node
/// `seed`), and cutover over them with the default route in `phase`.
async fn old_and_cluster(seed: usize, phase: Phase) -> (RedisServer, RedisCluster, TestProxy) {
    let old = RedisServer::start();
    let cluster = RedisCluster::start(3);
    let text = clustered(
        &old.addr(),
        &cluster.nodes[seed].addr(),
        &[Side::New],
        phase,
    );
    let proxy = TestProxy::start_text(&text).await;
    (old, cluster, proxy)
}

/// Sends `script` to both and asserts the replies are the same bytes.
async fn same_bytes(proxy: &TestProxy, reference: &RedisServer, script: &[Vec<u8>]) {
    let input: Vec<u8> = script.concat();
    let (via_proxy, _) = exchange(proxy.addr, &input).await;
    let (direct, _) = exchange(reference.addr(), &input).await;
    assert_eq!(
        hello_masked(&via_proxy),
        hello_masked(&direct),
        "through cutover (cluster) vs one Redis"
    );
}

/// The reply text with `HELLO`'s connection id and server mode masked
/// (a cluster node says `cluster`, and ids differ between servers).
fn hello_masked(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply).into_owned();
    let text = text.replace("$7\r\ncluster\r\n", "$10\r\nstandalone\r\n");
    match text.split_once("$2\r\nid\r\n:") {
        Some((a, b)) => {
            let rest = b.split_once("\r\n").map_or("", |(_, r)| r);
            format!("{a}$2\r\nid\r\n:N\r\n{rest}")
        }
        None => text,
    }
}

#[tokio::test]
async fn multi_key_commands_across_slots_answer_like_one_redis() {
    let (old, reference) = (RedisServer::start(), RedisServer::start());
    let cluster = RedisCluster::start(3);
    let proxy = TestProxy::start_text(&clustered(
        &old.addr(),
        &cluster.nodes[1].addr(),
        &[Side::New],
        Phase::NewOnly,
    ))
    .await;
    let keys = ["a", "b", "c", "{x}d", "foo", "bar"];
    // The keys are on all three primaries.
    let mut ports: Vec<u16> = keys.iter().map(|k| cluster.node_of(k).port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "keys spread over every node");
    let script = vec![
        resp(&[
            "MSET", "a", "1", "b", "2", "c", "3", "{x}d", "4", "foo", "5",
        ]),
        resp(&["MGET", "a", "b", "c", "nope", "{x}d", "a", "foo", "bar"]),
        resp(&["DEL", "a", "nope", "b"]),
        resp(&["EXISTS", "a", "c", "c", "foo"]),
        resp(&["TOUCH", "c", "{x}d", "bar"]),
        resp(&["UNLINK", "c"]),
        resp(&["DBSIZE"]),
        resp(&["MGET", "foo"]),
        resp(&["MSET", "a"]),
        resp(&["SET", "bar", "x"]),
        resp(&["INCR", "bar"]),
        resp(&["HELLO", "3"]),
        resp(&["MGET", "a", "foo", "zzz", "bar"]),
        resp(&["DEL", "foo", "bar", "{x}d"]),
        resp(&["DBSIZE"]),
    ];
    same_bytes(&proxy, &reference, &script).await;
}

#[tokio::test]
async fn scan_keys_and_flush_cover_every_node() {
    let (old, reference) = (RedisServer::start(), RedisServer::start());
    let cluster = RedisCluster::start(3);
    let proxy = TestProxy::start_text(&clustered(
        &old.addr(),
        &cluster.nodes[0].addr(),
        &[Side::New],
        Phase::NewOnly,
    ))
    .await;
    let mut c = proxy.conn().await;
    let mut expected: Vec<String> = (0..300).map(|i| format!("key:{i}")).collect();
    for k in &expected {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    expected.sort();
    // SCAN walks every node; the cursor says where it is.
    let mut cursor: u64 = 0;
    let mut seen = Vec::new();
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(50)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, expected);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("key:*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, expected);
    let n: usize = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 300);
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(info.contains("db0:keys=300,"), "{info}");
    let k: Option<String> = redis::cmd("RANDOMKEY").query_async(&mut c).await.unwrap();
    assert!(k.is_some_and(|k| k.starts_with("key:")));
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    for node in &cluster.nodes {
        let n: usize = redis::cmd("DBSIZE").query(&mut node.sync()).unwrap();
        assert_eq!(n, 0, "FLUSHALL reached every primary");
    }
    let k: Option<String> = redis::cmd("RANDOMKEY").query_async(&mut c).await.unwrap();
    assert_eq!(k, None);
    drop(reference);
}

#[tokio::test]
async fn dual_write_to_a_cluster_leaves_it_equal_to_old() {
    let (old, cluster, proxy) = old_and_cluster(2, Phase::DualWrite).await;
    let mut c = proxy.conn().await;
    for i in 0..200 {
        let k = format!("k{i}");
        let mut p = redis::pipe();
        p.cmd("SET").arg(&k).arg(i).ignore();
        p.cmd("HSET").arg(format!("h{i}")).arg("f").arg(i).ignore();
        p.cmd("RPUSH").arg(format!("l{}", i % 7)).arg(i).ignore();
        p.cmd("MSET")
            .arg(format!("m{i}"))
            .arg(1)
            .arg(format!("n{i}"))
            .arg(2)
            .ignore();
        p.cmd("INCRBY").arg("counter").arg(i).ignore();
        if i % 3 == 0 {
            p.cmd("DEL").arg(format!("m{i}")).arg(&k).ignore();
        }
        if i % 5 == 0 {
            p.cmd("PEXPIRE").arg(format!("h{i}")).arg(100_000).ignore();
        }
        let _: () = p.query_async(&mut c).await.unwrap();
    }
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    let a = support::keyspace(&mut old.sync());
    assert!(a.len() > 500);
    assert_same_keys(&a, &cluster.keyspace(), 2000);
}

#[tokio::test]
async fn a_cross_slot_rename_the_cluster_refuses_is_copied_to_it() {
    let (old, cluster, proxy) = old_and_cluster(0, Phase::DualWrite).await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("SET")
        .arg("{a}x")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_ne!(cluster.node_of("{a}x").port, cluster.node_of("{b}y").port);
    // Old renames; the cluster refuses (CROSSSLOT): the client sees old's OK.
    let _: () = redis::cmd("RENAME")
        .arg("{a}x")
        .arg("{b}y")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.wait_mirrors_settled().await;
    wait_for("the renamed key copied to the cluster", async || {
        support::get(&mut cluster.node_of("{b}y").sync(), "{b}y").as_deref() == Some("v")
    })
    .await;
    wait_for("the old name gone from the cluster", async || {
        support::get(&mut cluster.node_of("{a}x").sync(), "{a}x").is_none()
    })
    .await;
    assert_same_keys(&support::keyspace(&mut old.sync()), &cluster.keyspace(), 0);
    // The readiness counter: what the application sent that the cluster
    // cannot serve as one command (split commands are served).
    let _: () = redis::cmd("MSET")
        .arg("{a}1")
        .arg(1)
        .arg("{b}2")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("SUNIONSTORE")
        .arg("{c}u")
        .arg("{a}s")
        .arg("{b}s")
        .query_async(&mut c)
        .await
        .unwrap();
    // A transaction whose keys span slots counts once, at the crossing.
    let mut tx = redis::pipe();
    tx.atomic()
        .set("{a}t", 1)
        .set("{a}u", 1)
        .set("{b}t", 1)
        .set("{c}t", 1);
    let _: () = tx.query_async(&mut c).await.unwrap();
    assert_eq!(proxy.stat("default", "cross_slot"), 3);
    let (code, status) = proxy.admin("GET", "/status", None).await;
    assert_eq!(code, 200);
    let status: cutover::admin::StatusView = serde_json::from_str(&status).unwrap();
    let seen = &status.routes[0].cross_slot;
    assert_eq!(seen.commands.get("rename"), Some(&1), "{seen:?}");
    assert_eq!(seen.commands.get("sunionstore"), Some(&1), "{seen:?}");
    assert_eq!(seen.commands.get("multi"), Some(&1), "{seen:?}");
    assert_eq!(seen.samples[0], "RENAME {a}x {b}y");
    let text = cutover::admin::render_status(&status);
    assert!(
        text.contains(
            "cross-slot commands a clustered cache refuses: multi x1, rename x1, sunionstore x1"
        ),
        "{text}"
    );
}

/// A live slot migration on the clustered new cache during a dual-write
/// load: writes keep coming, `MOVED` and `ASK` are followed (counted in
/// the metrics), the client sees no error, and old and new end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reshard_of_new_is_invisible_to_clients() {
    let (old, cluster, proxy) = old_and_cluster(0, Phase::DualWrite).await;
    // Keys of one slot (a hash tag), plus keys elsewhere.
    let tag = "{mig}";
    let slot = cutover::routing::slot::key_slot(tag.as_bytes());
    let from = cluster
        .nodes
        .iter()
        .position(|n| n.port == cluster.node_of(tag).port)
        .unwrap();
    let to = (from + 1) % 3;
    let mut c = proxy.conn().await;
    for i in 0..60 {
        let _: () = redis::cmd("SET")
            .arg(format!("{tag}:{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    proxy.wait_mirrors_settled().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop) = (proxy.url(), stop.clone());
        tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = n % 80;
                let mut p = redis::pipe();
                p.cmd("INCR").arg(format!("{tag}:{i}")).ignore();
                p.cmd("RPUSH").arg(format!("{tag}:list")).arg(n).ignore();
                p.cmd("SET").arg(format!("other:{i}")).arg(n).ignore();
                p.cmd("GET").arg(format!("{tag}:{}", (i + 1) % 80)).ignore();
                let r: redis::RedisResult<()> = p.query_async(&mut c).await;
                r.unwrap_or_else(|e| panic!("client saw an error during the reshard: {e}"));
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| {
        cluster.move_slot(slot, from, to, || {
            std::thread::sleep(Duration::from_millis(30))
        })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = load.await.unwrap();
    assert!(
        batches > 10,
        "the load ran during the reshard ({batches} batches)"
    );
    proxy.wait_mirrors_settled().await;
    let metrics = proxy.admin("GET", "/metrics", None).await.1;
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("upstream=\"new\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("cutover_cluster_moved_total") > 0,
        "MOVED followed\n{metrics}"
    );
    assert!(
        count("cutover_cluster_ask_total") > 0,
        "ASK followed\n{metrics}"
    );
    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    assert_eq!(cluster.node_of(tag).port, cluster.nodes[to].port);
    assert_same_keys(&support::keyspace(&mut old.sync()), &cluster.keyspace(), 0);
}

/// Shadow reads with the clustered cache on the other side: each read is
/// also asked of the node owning its key and compared; with both caches
/// equal, they all agree.
#[tokio::test]
async fn shadow_reads_compare_with_the_node_owning_the_key() {
    let old = RedisServer::start();
    let cluster = RedisCluster::start(3);
    let text = Config::new(&old.addr(), &cluster.nodes[0].addr())
        .upstream(Side::New, "cluster", true)
        .route_toml("default", None, Phase::DualWrite, "shadow_reads = 1.0")
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.conn().await;
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    proxy.wait_mirrors_settled().await;
    for i in 0..100 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, i);
    }
    wait_for("every read shadowed", async || {
        proxy.stat("default", "shadow_agree") == 100
    })
    .await;
    assert_eq!(proxy.stat("default", "shadow_differ"), 0);
    assert_eq!(proxy.stat("default", "shadow_missing"), 0);
}

/// A slot moved during a `SCAN` from a node the walk has not reached to
/// one it has already walked: its keys are still returned (the walk goes
/// by slot runs, and the moved slot is walked where it is now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_every_key_across_a_slot_move() {
    let (_old, cluster, proxy) = old_and_cluster(0, Phase::NewOnly).await;
    let mut c = proxy.conn().await;
    // A tag on the last node's slots (node 2: 10922-16383).
    let tag = (0..)
        .map(|i| format!("t{i}"))
        .find(|t| cutover::routing::slot::key_slot(t.as_bytes()) > 11_000)
        .unwrap();
    let slot = cutover::routing::slot::key_slot(tag.as_bytes());
    let mut expected = Vec::new();
    for i in 0..300 {
        expected.push(format!("k{i}"));
    }
    for i in 0..60 {
        expected.push(format!("{{{tag}}}:{i}"));
    }
    for k in &expected {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    expected.sort();
    let mut cursor: u64 = 0;
    let mut seen = Vec::new();
    let mut moved = false;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(10)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(page);
        if next == 0 {
            break;
        }
        // Once the walk is past node 0's slots, move the slot there.
        if !moved && next & 0x3fff >= 5461 {
            tokio::task::block_in_place(|| cluster.move_slot(slot, 2, 0, || {}));
            moved = true;
            // Traffic to the slot meets MOVED: the map learns the move.
            let _: Option<String> = redis::cmd("GET")
                .arg(format!("{{{tag}}}:0"))
                .query_async(&mut c)
                .await
                .unwrap();
        }
        cursor = next;
    }
    assert!(moved, "the slot moved during the walk");
    seen.sort();
    seen.dedup();
    assert_eq!(seen, expected);
}
