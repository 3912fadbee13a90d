//! A clustered cache over TLS with credentials (the managed-cache shape:
//! Azure Managed Redis on 10000, Premium on 6380): the topology gives each
//! node's TLS port, every node connection is TLS checked against the
//! node's announced hostname (or the upstream's name for a node known by
//! IP), and authenticates with the upstream's credentials.

mod support;

use cutover::routing::{Phase, Side};
use redis::AsyncCommands;
use support::pki::Pki;
use support::{Config, RedisCluster, RedisServer, TestProxy};

async fn run(announce_hostname: bool) {
    let pki = Pki::new("cutover cluster CA");
    let leaf = pki.server();
    let mut extra = vec![];
    if announce_hostname {
        extra.extend([
            "--cluster-announce-hostname",
            "localhost",
            "--cluster-preferred-endpoint-type",
            "hostname",
        ]);
    }
    let cluster = RedisCluster::start_tls(3, &pki, &leaf, &extra);
    // Credentials once the cluster formed (the test's own checks below
    // authenticate too).
    for n in &cluster.nodes {
        n.run(&["CONFIG", "SET", "requirepass", "s3cret"]);
    }
    let old = RedisServer::start();
    let seed = cluster.nodes[1].tls_addr();
    let lines = format!(
        "tls = true\nca_file = \"{}\"\npassword = \"s3cret\"\ncluster = true",
        pki.ca_file().display()
    );
    let text = Config::new(&old.addr(), &seed)
        .upstream_toml(Side::New, &lines)
        .route("default", None, Phase::DualWrite)
        .text();
    let proxy = TestProxy::start_text(&text).await;
    let mut c = proxy.conn().await;
    for i in 0..100 {
        let _: () = c.set(format!("k{i}"), i).await.unwrap();
    }
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let got: Vec<i64> = c.mget(&keys).await.unwrap();
    assert_eq!(got, (0..100).collect::<Vec<i64>>());
    proxy.wait_mirrors_settled().await;
    assert_eq!(proxy.stat("default", "mirror_errors"), 0);
    assert_eq!(proxy.stat("default", "mirror_failed"), 0);
    let mut total = 0;
    for n in &cluster.nodes {
        let url = format!("redis://:s3cret@127.0.0.1:{}/", n.port);
        let mut s = redis::Client::open(url).unwrap().get_connection().unwrap();
        let here: i64 = redis::cmd("DBSIZE").query(&mut s).unwrap();
        assert!(here > 0, "keys on every node");
        total += here;
    }
    assert_eq!(total, 100, "hostname announced: {announce_hostname}");
}

#[tokio::test]
async fn tls_nodes_known_by_ip_are_checked_against_the_upstream_name() {
    run(false).await;
}

#[tokio::test]
async fn tls_nodes_announcing_a_hostname_are_checked_against_it() {
    run(true).await;
}
