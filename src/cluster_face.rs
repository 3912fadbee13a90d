//! `[listen] cluster = true`: cutover answers the Redis Cluster API as a
//! one-node cluster that owns all 16,384 slots at its announced address,
//! so an application built on a cluster client (Lettuce
//! `RedisClusterClient`, go-redis `ClusterClient`, redis-py `RedisCluster`,
//! Jedis `JedisCluster`) points at cutover unchanged and never sees
//! `MOVED`: every slot is here.
//!
//! Answered here, never sent to a cache: `CLUSTER SLOTS`, `SHARDS`,
//! `NODES`, `MYID`, `INFO`, `KEYSLOT`, and `READONLY`, `READWRITE`,
//! `ASKING` (`+OK`). The node id is derived from the announced address, so
//! it is stable across restarts (and the same on instances that announce
//! the same address).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::routing::slot::key_slot;

/// The cluster a client sees through cutover.
#[derive(Debug)]
pub struct ClusterFace {
    /// `[listen] announce`, or the listen address when it names one host.
    announce: Option<(String, u16)>,
}

/// Where a client reaches this node.
struct Here {
    host: String,
    port: u16,
    id: String,
}

fn bulk(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes());
}

fn int(out: &mut Vec<u8>, i: i64) {
    out.extend_from_slice(format!(":{i}\r\n").as_bytes());
}

/// A map header: RESP3 `%n`, RESP2 a flat array of `2n`.
fn map(out: &mut Vec<u8>, n: usize, resp3: bool) {
    let head = match resp3 {
        true => format!("%{n}\r\n"),
        false => format!("*{}\r\n", 2 * n),
    };
    out.extend_from_slice(head.as_bytes());
}

/// A text reply (`CLUSTER INFO`, `NODES`): verbatim in RESP3, as Redis.
fn text(out: &mut Vec<u8>, s: &str, resp3: bool) {
    match resp3 {
        true => out.extend_from_slice(format!("={}\r\ntxt:{s}\r\n", s.len() + 4).as_bytes()),
        false => bulk(out, s),
    }
}

impl ClusterFace {
    /// `announce` (`host:port`, validated) or else `listen` when it names
    /// one host and port (otherwise each client is told the address it
    /// connected to).
    pub fn new(announce: Option<&str>, listen: &str) -> ClusterFace {
        let split = |a: &str| {
            let (host, port) = a.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_string(), port.parse().ok()?))
        };
        let announce = match announce {
            Some(a) => split(a),
            // A wildcard host or port 0 says nothing a client can use.
            None => {
                split(listen).filter(|(h, p)| !matches!(h.as_str(), "0.0.0.0" | "::") && *p != 0)
            }
        };
        ClusterFace { announce }
    }

    fn here(&self, local: Option<SocketAddr>) -> Here {
        let (host, port) = match (&self.announce, local) {
            (Some((h, p)), _) => (h.clone(), *p),
            (None, Some(a)) => (a.ip().to_string(), a.port()),
            (None, None) => ("127.0.0.1".to_string(), 6379),
        };
        let id = sha1_smol::Sha1::from(format!("cutover {host}:{port}"))
            .digest()
            .to_string();
        Here { host, port, id }
    }

    /// The reply to the cluster command `name` (a table entry name such as
    /// `cluster|slots`), for a client that reached this proxy at `local`.
    pub fn answer(
        &self,
        name: &str,
        args: &[&[u8]],
        resp3: bool,
        local: Option<SocketAddr>,
    ) -> Bytes {
        let here = self.here(local);
        let mut out = Vec::new();
        match name {
            "cluster|myid" => bulk(&mut out, &here.id),
            "cluster|keyslot" => match args {
                [_, _, key] => int(&mut out, i64::from(key_slot(key))),
                _ => out.extend_from_slice(
                    b"-ERR wrong number of arguments for 'cluster|keyslot' command\r\n",
                ),
            },
            "cluster|slots" => {
                out.extend_from_slice(b"*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n");
                bulk(&mut out, &here.host);
                int(&mut out, i64::from(here.port));
                bulk(&mut out, &here.id);
                map(&mut out, 0, resp3);
            }
            "cluster|shards" => {
                out.extend_from_slice(b"*1\r\n");
                map(&mut out, 2, resp3);
                bulk(&mut out, "slots");
                out.extend_from_slice(b"*2\r\n:0\r\n:16383\r\n");
                bulk(&mut out, "nodes");
                out.extend_from_slice(b"*1\r\n");
                map(&mut out, 7, resp3);
                let fields: [(&str, Option<&str>, i64); 7] = [
                    ("id", Some(&here.id), 0),
                    ("port", None, i64::from(here.port)),
                    ("ip", Some(&here.host), 0),
                    ("endpoint", Some(&here.host), 0),
                    ("role", Some("master"), 0),
                    ("replication-offset", None, 0),
                    ("health", Some("online"), 0),
                ];
                for (k, s, i) in fields {
                    bulk(&mut out, k);
                    match s {
                        Some(s) => bulk(&mut out, s),
                        None => int(&mut out, i),
                    }
                }
            }
            "cluster|nodes" => {
                let (h, p, id) = (&here.host, here.port, &here.id);
                let line = format!(
                    "{id} {h}:{p}@{} myself,master - 0 0 1 connected 0-16383\n",
                    u32::from(p) + 10000
                );
                text(&mut out, &line, resp3);
            }
            "cluster|info" => {
                let info = "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n";
                text(&mut out, info, resp3);
            }
            // READONLY, READWRITE, ASKING.
            _ => out.extend_from_slice(b"+OK\r\n"),
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_announced_one_else_the_listeners_else_the_clients() {
        let local: SocketAddr = "10.1.2.3:6400".parse().unwrap();
        let f = ClusterFace::new(Some("cutover.example:7000"), "0.0.0.0:6400");
        let h = f.here(Some(local));
        assert_eq!((h.host.as_str(), h.port), ("cutover.example", 7000));
        assert_eq!(h.id.len(), 40);
        let f = ClusterFace::new(None, "127.0.0.1:6400");
        assert_eq!(f.here(Some(local)).host, "127.0.0.1");
        let f = ClusterFace::new(None, "0.0.0.0:6400");
        assert_eq!(f.here(Some(local)).host, "10.1.2.3");
        // Stable: derived from the address.
        assert_eq!(f.here(Some(local)).id, f.here(Some(local)).id);
    }

    #[test]
    fn keyslot_and_slots_read_as_redis_writes_them() {
        let f = ClusterFace::new(Some("h:1"), "0.0.0.0:1");
        let slot = f.answer(
            "cluster|keyslot",
            &[b"CLUSTER", b"KEYSLOT", b"foo"],
            false,
            None,
        );
        assert_eq!(&slot[..], b":12182\r\n");
        let bad = f.answer("cluster|keyslot", &[b"CLUSTER", b"KEYSLOT"], false, None);
        assert!(bad.starts_with(b"-ERR wrong number of arguments"));
        let slots = f.answer("cluster|slots", &[], false, None);
        assert!(slots.starts_with(b"*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$1\r\nh\r\n:1\r\n$40\r\n"));
        assert!(slots.ends_with(b"*0\r\n"));
    }
}
