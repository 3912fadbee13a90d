//! Real Redis Clusters of throwaway `redis-server`s: `cluster-enabled
//! yes`, the 16,384 slots split between the primaries, nodes met, and
//! `cluster_state:ok` on every node before a test gets it.

use std::time::{Duration, Instant};

use super::RedisServer;

pub struct RedisCluster {
    /// The primaries, in slot order: node `i` owns the `i`-th share.
    pub nodes: Vec<RedisServer>,
    /// Replicas added with [`RedisCluster::add_replica`].
    pub replicas: Vec<RedisServer>,
    extra: Vec<String>,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> RedisCluster {
        RedisCluster::start_from(primaries, RedisServer::start_with)
    }

    /// With `extra` arguments on every node (and replica added later).
    pub fn start_with(primaries: usize, extra: &[&str]) -> RedisCluster {
        let mut c = RedisCluster::start_from(primaries, |args| {
            let mut all = args.to_vec();
            all.extend_from_slice(extra);
            RedisServer::start_with(&all)
        });
        c.extra = extra.iter().map(|s| s.to_string()).collect();
        c
    }

    /// A replica of primary `of`, met and in sync before this returns.
    pub fn add_replica(&mut self, of: usize) -> &RedisServer {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let replica = RedisServer::start_with(&args);
        let port = replica.port.to_string();
        self.nodes[0].run(&["CLUSTER", "MEET", "127.0.0.1", &port]);
        let primary_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.nodes[of].sync())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&primary_id)
                .query(&mut replica.sync());
            if r.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never met its primary"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.sync())
                .unwrap();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.replicas.push(replica);
        self.replicas.last().expect("just pushed")
    }

    /// Nodes that also serve TLS with `leaf` on a port of their own (the
    /// cluster bus and the test's checks stay on the plain ports), and
    /// `extra` arguments.
    pub fn start_tls(
        primaries: usize,
        pki: &super::pki::Pki,
        leaf: &super::pki::Leaf,
        extra: &[&str],
    ) -> RedisCluster {
        RedisCluster::start_from(primaries, |args| {
            let mut all = args.to_vec();
            // The node announces its TLS port (`tls-port` in CLUSTER SHARDS).
            all.extend_from_slice(&["--tls-cluster", "yes"]);
            all.extend_from_slice(extra);
            RedisServer::start_tls(pki, leaf, &all)
        })
    }

    fn start_from(primaries: usize, start: impl Fn(&[&str]) -> RedisServer) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..primaries)
            .map(|_| {
                start(&[
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
            let port = node.tls_port.unwrap_or(node.port).to_string();
            nodes[0].run(&["CLUSTER", "MEET", "127.0.0.1", &port]);
        }
        let cluster = RedisCluster {
            nodes,
            replicas: Vec::new(),
            extra: Vec::new(),
        };
        cluster.wait_ok();
        cluster
    }

    /// Every key of every primary.
    pub fn keyspace(&self) -> std::collections::BTreeMap<Vec<u8>, super::KeyState> {
        let mut all = std::collections::BTreeMap::new();
        for n in &self.nodes {
            all.extend(super::keyspace(&mut n.sync()));
        }
        all
    }

    /// The node serving `key` now (as node 0 sees it).
    pub fn node_of(&self, key: &str) -> &RedisServer {
        let slot = cutover::routing::slot::key_slot(key.as_bytes());
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.nodes[0].sync())
            .unwrap();
        let line = nodes.lines().find(|l| owns(l, slot)).expect("slot owned");
        let addr = line.split_whitespace().nth(1).expect("address");
        let port: u16 = addr
            .split(['@', ','])
            .next()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .expect("port");
        self.nodes.iter().find(|n| n.port == port).expect("a node")
    }

    /// Moves `slot` from node `from` to node `to` as `redis-cli --cluster
    /// reshard` does: `IMPORTING`/`MIGRATING`, `MIGRATE` of its keys a few
    /// at a time (`between` runs after each batch), then `SETSLOT NODE`.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize, mut between: impl FnMut()) {
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let id = |n: &RedisServer| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut n.sync())
                .unwrap()
        };
        let (src_id, dst_id) = (id(src), id(dst));
        let s = slot.to_string();
        dst.run(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id]);
        src.run(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id]);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(3)
                .query(&mut src.sync())
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let mut m = redis::cmd("MIGRATE");
            m.arg("127.0.0.1")
                .arg(dst.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            let _: () = m.query(&mut src.sync()).unwrap();
            between();
        }
        // As redis-cli does: the importing node first (it owns the slot
        // from then on), then the source (it answers MOVED from then on),
        // then the others. The other way round, the source would send
        // clients to a node still refusing the slot, and back.
        let mut order = vec![to, from];
        order.extend((0..self.nodes.len()).filter(|i| *i != to && *i != from));
        for i in order {
            self.nodes[i].run(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]);
        }
        // A moment for the nodes to agree before the caller goes on.
        let deadline = Instant::now() + Duration::from_secs(10);
        let agreed = |n: &RedisServer| {
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut n.sync())
                .unwrap();
            nodes
                .lines()
                .find(|l| owns(l, slot))
                .is_some_and(|l| l.starts_with(&dst_id))
        };
        // (A wait, not a check: the test's own assertions say whether
        // clients noticed anything.) A gossip message the source sent
        // before it let the slot go can reach the destination after it
        // took the slot and, with a higher config epoch, take it back
        // (seen: the destination pointing at the source for good). Then
        // the destination claims it again with a newer epoch, as
        // `redis-cli --cluster fix` would.
        let mut reclaim = Instant::now() + Duration::from_secs(1);
        while !self.nodes.iter().all(agreed) && Instant::now() < deadline {
            if Instant::now() >= reclaim && !agreed(dst) {
                dst.run(&["CLUSTER", "BUMPEPOCH"]);
                dst.run(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]);
                reclaim = Instant::now() + Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|r| {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => a <= slot && slot <= b,
            _ => false,
        }
    })
}
