//! `cutover backfill` and `cutover verify` with a Redis Cluster on either
//! side (issue 17, item 7): the source's keyspace is scanned on every
//! primary, each key copied to the node owning it, and verify compares
//! them all.

mod support;

use cutover::config::Settings;
use cutover::routing::{Phase, Side};
use cutover::tools::{backfill, verify, Caches};
use support::{populate, Config, RedisCluster, RedisServer};

fn settings(old: &str, new: &str, clustered: &[Side], dir: &tempfile::TempDir) -> Settings {
    let mut c = Config::new(old, new).route("default", None, Phase::DualWrite);
    for &side in clustered {
        c = c.upstream(side, "cluster", true);
    }
    let path = dir.path().join(format!("cutover-{}.toml", clustered.len()));
    std::fs::write(&path, c.text()).unwrap();
    Settings::load(&path).unwrap()
}

fn cluster_dbsize(cluster: &RedisCluster) -> i64 {
    cluster
        .nodes
        .iter()
        .map(|n| redis::cmd("DBSIZE").query::<i64>(&mut n.sync()).unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_verify_standalone_to_cluster_and_back() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let old = RedisServer::start();
    populate(&old, 10_000);
    let cluster = RedisCluster::start(3);
    // Standalone -> cluster.
    let s = settings(&old.addr(), &cluster.nodes[1].addr(), &[Side::New], &dir);
    let mut caches = Caches::new(&s).unwrap();
    let before = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert_eq!(before.differences.get("missing"), Some(&10_000));
    let report = backfill::run(&mut caches, &backfill::Options::default())
        .await
        .unwrap();
    assert_eq!(
        (report.counts.copied, report.counts.failed),
        (10_000, 0),
        "{report:?}"
    );
    assert_eq!(cluster_dbsize(&cluster), 10_000);
    for n in &cluster.nodes {
        let here: i64 = redis::cmd("DBSIZE").query(&mut n.sync()).unwrap();
        assert!(here > 2_500, "keys on every primary: {here}");
    }
    let after = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(after.equal, "{}", after.render());
    assert_eq!(after.keys, 10_000);
    // Cluster -> standalone: the cluster scanned node by node.
    let back = RedisServer::start();
    let s = settings(&cluster.nodes[0].addr(), &back.addr(), &[Side::Old], &dir);
    let mut caches = Caches::new(&s).unwrap();
    let report = backfill::run(&mut caches, &backfill::Options::default())
        .await
        .unwrap();
    assert_eq!(
        (report.counts.copied, report.counts.failed),
        (10_000, 0),
        "{report:?}"
    );
    let after = verify::run(&mut caches, &verify::Options::default())
        .await
        .unwrap();
    assert!(after.equal, "{}", after.render());
    // (Each keyspace is read key by key: TTLs are read seconds apart.)
    support::assert_same_keyspace(&old, &back, 15_000);
}
