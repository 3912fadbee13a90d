//! Discovering a real Redis Cluster's topology (issue 17, its first part):
//! every slot's primary, from any node as the seed, by `CLUSTER SHARDS` and
//! `CLUSTER SLOTS` alike; a plain server is refused clearly.

mod support;

use bytes::Bytes;
use cutover::config::UpstreamConfig;
use cutover::protocol::value;
use cutover::routing::slot::key_slot;
use cutover::routing::Side;
use cutover::upstream::topology::{discover, DiscoverError, Topology};
use cutover::upstream::Upstream;
use support::{resp, RawClient, RedisCluster, RedisServer};

fn upstream(addr: &str) -> Upstream {
    let config: UpstreamConfig = toml::from_str(&format!("address = \"{addr}\"")).unwrap();
    Upstream::new(Side::New, config).unwrap()
}

#[tokio::test]
async fn discovery_maps_every_slot_to_the_node_that_serves_it() {
    let cluster = RedisCluster::start(3);
    let mut maps = Vec::new();
    for seed in &cluster.nodes {
        let t = discover(upstream(&seed.addr()).dialer(), 64).await.unwrap();
        assert_eq!(t.primaries.len(), 3);
        assert_eq!(t.unassigned(), 0);
        maps.push(t);
    }
    // Every seed agrees (each lists the shards in its own order).
    for m in &maps[1..] {
        assert_same_owners(&maps[0], m);
    }
    // The owner it names takes the key: no MOVED.
    let t = &maps[0];
    for i in 0..60 {
        let key = format!("k{i}");
        let owner = t.owner(key_slot(key.as_bytes())).unwrap();
        let addr = owner.addr(false).unwrap();
        let node = cluster.nodes.iter().find(|n| n.addr() == addr).unwrap();
        let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(1).query(&mut node.sync());
        assert!(r.is_ok(), "{key} on {addr}: {r:?}");
    }
    // CLUSTER SLOTS of the same cluster reads the same map.
    let mut raw = RawClient::connect(cluster.nodes[1].addr()).await;
    raw.send(&resp(&["CLUSTER", "SLOTS"])).await;
    let reply = value::decode(&Bytes::from(raw.read_replies(1).await), 64).unwrap();
    assert_same_owners(t, &Topology::from_slots(&reply).unwrap());
}

fn assert_same_owners(a: &Topology, b: &Topology) {
    for slot in 0..16_384u16 {
        let (x, y) = (a.owner(slot), b.owner(slot));
        assert_eq!(x, y, "slot {slot}");
    }
}

#[tokio::test]
async fn a_server_that_is_no_cluster_is_refused_clearly() {
    let plain = RedisServer::start();
    let err = discover(upstream(&plain.addr()).dialer(), 64)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DiscoverError::Refused(m) if m.contains("cluster support disabled")),
        "{err}"
    );
}

/// A one-node cluster that never met another announces no address: it is
/// where the seed is.
#[tokio::test]
async fn a_node_without_an_address_is_where_the_seed_is() {
    let cluster = RedisCluster::start(1);
    let seed = cluster.nodes[0].addr();
    let t = discover(upstream(&seed).dialer(), 64).await.unwrap();
    assert_eq!(t.owner(0).unwrap().addr(false), Some(seed.clone()));
    assert_eq!(t.owner(16383).unwrap().addr(false), Some(seed));
}
