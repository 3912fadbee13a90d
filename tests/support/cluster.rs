//! Real Redis Clusters of throwaway `redis-server`s: `cluster-enabled
//! yes`, the 16,384 slots split between the primaries, nodes met, and
//! `cluster_state:ok` on every node before a test gets it.

use std::time::{Duration, Instant};

use super::RedisServer;

pub struct RedisCluster {
    /// The primaries, in slot order: node `i` owns the `i`-th share.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..primaries)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect();
        let per = 16_384 / primaries;
        for (i, node) in nodes.iter().enumerate() {
            let start = i * per;
            let end = if i + 1 == primaries {
                16_383
            } else {
                (i + 1) * per - 1
            };
            let (start, end) = (start.to_string(), end.to_string());
            node.run(&["CLUSTER", "ADDSLOTSRANGE", &start, &end]);
        }
        for node in &nodes[1..] {
            nodes[0].run(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()]);
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Every node sees every other and all slots served.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ok = self.nodes.iter().all(|n| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.sync())
                    .unwrap();
                info.contains("cluster_state:ok") && info.contains(&want)
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never formed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
