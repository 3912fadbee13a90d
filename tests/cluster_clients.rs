//! `[listen] cluster = true` (issue 17, item 8): cutover answers the
//! Redis Cluster API as a one-node cluster owning every slot, byte for
//! byte in the shape a real one-node Redis Cluster answers, so cluster
//! clients work through it unchanged and never see `MOVED`.

mod support;

use cutover::routing::Phase;
use support::{resp, RawClient, RedisCluster, RedisServer, TestProxy};

/// A proxy in `dual-write` over `old` and `new` with `[listen] cluster = true`.
async fn cluster_proxy(old: &RedisServer, new: &RedisServer) -> TestProxy {
    let text = support::config_text(
        &old.addr(),
        &new.addr(),
        &[("default", None, Phase::DualWrite)],
        "[listen]\ncluster = true\n",
    );
    TestProxy::start_text(&text).await
}

/// `args`' reply from `addr`, after `HELLO proto`.
async fn ask(addr: &str, proto: &str, args: &[&str]) -> String {
    let mut c = RawClient::connect(addr).await;
    c.send(&resp(&["HELLO", proto])).await;
    c.read_replies(1).await;
    c.send(&resp(args)).await;
    String::from_utf8(c.read_replies(1).await).unwrap()
}

#[tokio::test]
async fn the_cluster_api_reads_like_a_one_node_redis_cluster() {
    let real = RedisCluster::start(1);
    let node = &real.nodes[0];
    let (old, new) = support::start_pair();
    let proxy = cluster_proxy(&old, &new).await;
    let here = proxy.addr.to_string();
    let myid = ask(&here, "2", &["CLUSTER", "MYID"]).await;
    let real_id = ask(&node.addr(), "2", &["CLUSTER", "MYID"]).await;
    let id = myid.lines().nth(1).unwrap().to_string();
    let rid = real_id.lines().nth(1).unwrap().to_string();
    assert_eq!(id.len(), 40);
    let port = proxy.addr.port().to_string();
    for proto in ["2", "3"] {
        for cmd in [
            &["CLUSTER", "SLOTS"][..],
            &["CLUSTER", "SHARDS"],
            &["CLUSTER", "KEYSLOT", "foo"],
        ] {
            // A node that never met another announces no address (empty:
            // "where you reached me"); cutover names the one it was reached at.
            let want = ask(&node.addr(), proto, cmd)
                .await
                .replace(&rid, &id)
                .replace(&node.port.to_string(), &port)
                .replace("$0\r\n\r\n", "$9\r\n127.0.0.1\r\n");
            let got = ask(&here, proto, cmd).await;
            assert_eq!(got, want, "RESP{proto} {cmd:?}");
        }
        let info = ask(&here, proto, &["CLUSTER", "INFO"]).await;
        assert!(info.contains("cluster_state:ok\r\n") && info.contains("cluster_slots_ok:16384"));
        let nodes = ask(&here, proto, &["CLUSTER", "NODES"]).await;
        assert!(
            nodes.contains(&format!("{id} 127.0.0.1:{port}@")),
            "{nodes}"
        );
        assert!(
            nodes.contains("myself,master - 0 0 1 connected 0-16383"),
            "{nodes}"
        );
    }
    for cmd in ["READONLY", "READWRITE", "ASKING"] {
        assert_eq!(ask(&here, "2", &[cmd]).await, "+OK\r\n");
    }
}

/// redis-py's `RedisCluster` discovers cutover as the one node of a
/// cluster and runs a mixed workload through it (keys on every slot, a
/// cluster pipeline, reads split by slot) with no error; in `dual-write`
/// both caches get the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_cluster_client_works_through_cutover() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = support::python_client();
    let (old, new) = support::start_pair();
    let proxy = cluster_proxy(&old, &new).await;
    let out = tokio::process::Command::new(&python)
        .arg(format!("{root}/tests/clients/redis_py_cluster.py"))
        .arg(proxy.addr.port().to_string())
        .arg(old.port.to_string())
        .arg(new.port.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success() && out.stdout.starts_with(b"OK"),
        "redis-py cluster run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `redis` crate's async cluster client, likewise: keys on every slot,
/// multi-slot reads it splits itself, no error, both caches written.
#[tokio::test]
async fn the_redis_crate_cluster_client_works_through_cutover() {
    use redis::AsyncCommands;
    let (old, new) = support::start_pair();
    let proxy = cluster_proxy(&old, &new).await;
    let client = redis::cluster::ClusterClient::new(vec![proxy.url()]).unwrap();
    let mut c = client.get_async_connection().await.unwrap();
    for i in 0..200 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    for i in (0..200).step_by(7) {
        let v: i64 = c.get(format!("k{i}")).await.unwrap();
        assert_eq!(v, i);
    }
    let n: i64 = c.incr("counter", 5).await.unwrap();
    assert_eq!(n, 5);
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    let got: Vec<i64> = c.mget(&keys).await.unwrap();
    assert_eq!(got, (0..30).collect::<Vec<i64>>());
    proxy.wait_mirrors_settled().await;
    for s in [&old, &new] {
        let v: Option<i64> = s.conn().await.get("k199").await.unwrap();
        assert_eq!(v, Some(199), "{}", s.addr());
    }
}

/// A cluster client through cutover to two clustered caches: it sees one
/// node owning every slot, cutover routes each command to the cache
/// node owning it; `CLUSTER COUNTKEYSINSLOT`/`GETKEYSINSLOT` are answered
/// by the read side's node owning the slot.
#[tokio::test]
async fn a_cluster_client_works_through_cutover_to_clustered_caches() {
    use cutover::routing::Side;
    use redis::AsyncCommands;
    let (old, new) = (RedisCluster::start(3), RedisCluster::start(3));
    let text = support::Config::new(&old.nodes[0].addr(), &new.nodes[0].addr())
        .upstream(Side::Old, "cluster", true)
        .upstream(Side::New, "cluster", true)
        .route("default", None, Phase::DualWrite)
        .with("[listen]\ncluster = true\n")
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let client = redis::cluster::ClusterClient::new(vec![proxy.url()]).unwrap();
    let mut c = client.get_async_connection().await.unwrap();
    for i in 0..200 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
        let _: () = c.hset(format!("h{i}"), "f", i).await.unwrap();
    }
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    let got: Vec<i64> = c.mget(&keys).await.unwrap();
    assert_eq!(got, (0..30).collect::<Vec<i64>>());
    let n: i64 = c.incr("counter", 5).await.unwrap();
    assert_eq!(n, 5);
    proxy.wait_mirrors_settled().await;
    support::assert_same_keys(&old.keyspace(), &new.keyspace(), 0);
    assert_eq!(old.keyspace().len(), 401);
    // Read side (old, in dual-write): the node owning the slot answers.
    let slot = cutover::routing::slot::key_slot(b"k1").to_string();
    let direct: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(&slot)
        .query(&mut old.node_of("k1").sync())
        .unwrap();
    assert!(direct >= 1);
    let via = ask(
        &proxy.addr.to_string(),
        "2",
        &["CLUSTER", "COUNTKEYSINSLOT", &slot],
    )
    .await;
    assert_eq!(via, format!(":{direct}\r\n"));
    let via = ask(
        &proxy.addr.to_string(),
        "2",
        &["CLUSTER", "GETKEYSINSLOT", &slot, "100"],
    )
    .await;
    assert!(via.contains("\r\nk1\r\n"), "{via}");
}
