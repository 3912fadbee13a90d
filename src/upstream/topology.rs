//! A Redis Cluster's topology: which primary owns each of the 16,384 hash
//! slots, read from `CLUSTER SHARDS` (Redis 7 and later), or from
//! `CLUSTER SLOTS` where that is refused (older servers, some managed
//! caches).
//!
//! A node is reached at its announced endpoint: a hostname where the cache
//! announces one (managed caches do, and their certificates name it), its
//! IP otherwise. With TLS the node's `tls-port` is used when `CLUSTER
//! SHARDS` gives one.
//!
//! Every connection to a clustered upstream routes by this map
//! ([`super::cluster`]); it is read at the first connection and again
//! periodically, after a `MOVED` and when a node fails.

use bytes::Bytes;

use super::Dialer;
use crate::error::UpstreamError;
use crate::protocol::{value, Command, Value};
use crate::routing::slot::SLOTS;

/// No primary owns the slot.
const UNASSIGNED: u16 = u16::MAX;

/// One primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// Where clients reach it: the announced endpoint, else the IP.
    pub host: String,
    /// Its plaintext port (`None` when it has only a TLS one).
    pub port: Option<u16>,
    pub tls_port: Option<u16>,
}

impl Node {
    /// `host:port`, on the TLS port when `tls` and the node has one.
    pub fn addr(&self, tls: bool) -> Option<String> {
        let port = match tls {
            true => self.tls_port.or(self.port),
            false => self.port,
        }?;
        Some(format!("{}:{port}", self.host))
    }
}

/// The primaries and the slot each owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub primaries: Vec<Node>,
    /// Per slot, the index of its primary (or [`UNASSIGNED`]).
    owners: Vec<u16>,
}

/// A reply that is not a topology.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("malformed CLUSTER {command} reply: {what}")]
    Malformed {
        command: &'static str,
        what: &'static str,
    },
    #[error("slot range {start}-{end} is out of 0-16383")]
    BadRange { start: i64, end: i64 },
}

/// Why a topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("not a cluster, or CLUSTER refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Malformed(#[from] TopologyError),
}

/// The `(key, value)` pairs of a RESP3 map or a RESP2 flat array.
fn fields(v: &Value) -> Option<Vec<(&[u8], &Value)>> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Some((&k.as_bytes()?[..], v)))
            .collect(),
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|kv| Some((&kv[0].as_bytes()?[..], &kv[1])))
            .collect(),
        _ => None,
    }
}

fn field<'a>(fields: &[(&[u8], &'a Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
}

fn text(v: &Value) -> Option<String> {
    v.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn port(v: Option<&Value>) -> Option<u16> {
    match v? {
        Value::Int(p) => u16::try_from(*p).ok().filter(|p| *p > 0),
        _ => None,
    }
}

/// An announced endpoint, unless it is unknown (`?`) or empty.
fn endpoint(v: Option<&Value>) -> Option<String> {
    v.and_then(text).filter(|e| !e.is_empty() && e != "?")
}

impl Topology {
    fn empty() -> Topology {
        Topology {
            primaries: Vec::new(),
            owners: vec![UNASSIGNED; SLOTS],
        }
    }

    /// The primary that owns `slot`.
    pub fn owner(&self, slot: u16) -> Option<&Node> {
        let i = *self.owners.get(usize::from(slot))?;
        self.primaries.get(usize::from(i))
    }

    /// The index in `primaries` of the primary that owns `slot`.
    pub fn owner_index(&self, slot: u16) -> Option<usize> {
        let i = *self.owners.get(usize::from(slot))?;
        (i != UNASSIGNED).then_some(usize::from(i))
    }

    /// Each primary's first slot, with its index, in slot order.
    pub fn first_slots(&self) -> Vec<(u16, usize)> {
        let mut firsts: Vec<(u16, usize)> = Vec::with_capacity(self.primaries.len());
        for (slot, &o) in self.owners.iter().enumerate() {
            if o != UNASSIGNED && !firsts.iter().any(|&(_, p)| p == usize::from(o)) {
                firsts.push((slot as u16, usize::from(o)));
            }
        }
        firsts
    }

    /// How many slots no primary owns.
    pub fn unassigned(&self) -> usize {
        self.owners.iter().filter(|&&o| o == UNASSIGNED).count()
    }

    /// Gives `start..=end` to `node` (added once, by id).
    fn assign(&mut self, node: Node, start: i64, end: i64) -> Result<(), TopologyError> {
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        let Some((s, e)) = range.filter(|(s, e)| s <= e && *e < SLOTS) else {
            return Err(TopologyError::BadRange { start, end });
        };
        let i = match self.primaries.iter().position(|p| p.id == node.id) {
            Some(i) => i,
            None => {
                self.primaries.push(node);
                self.primaries.len() - 1
            }
        };
        // At most SLOTS primaries, so the index fits.
        self.owners[s..=e].fill(i as u16);
        Ok(())
    }

    /// From a `CLUSTER SHARDS` reply: each shard's slot ranges and its
    /// primary (`role master`).
    pub fn from_shards(reply: &Value) -> Result<Topology, TopologyError> {
        let bad = |what| TopologyError::Malformed {
            command: "SHARDS",
            what,
        };
        let mut topology = Topology::empty();
        for shard in reply.as_array().ok_or(bad("not an array"))? {
            let shard = fields(shard).ok_or(bad("a shard is not a map"))?;
            let slots = field(&shard, "slots").and_then(Value::as_array);
            let nodes = field(&shard, "nodes").and_then(Value::as_array);
            let (slots, nodes) = slots
                .zip(nodes)
                .ok_or(bad("a shard lacks slots or nodes"))?;
            let primary = nodes
                .iter()
                .filter_map(fields)
                .find(|n| field(n, "role").and_then(text).as_deref() == Some("master"));
            let Some(primary) = primary else {
                // A shard with no primary (failing over) owns nothing now.
                continue;
            };
            let ip = field(&primary, "ip").and_then(text);
            let node = Node {
                id: field(&primary, "id")
                    .and_then(text)
                    .ok_or(bad("a node has no id"))?,
                host: endpoint(field(&primary, "endpoint"))
                    .or(ip)
                    .ok_or(bad("a node has no address"))?,
                port: port(field(&primary, "port")),
                tls_port: port(field(&primary, "tls-port")),
            };
            for pair in slots.chunks(2) {
                match pair {
                    [Value::Int(s), Value::Int(e)] => topology.assign(node.clone(), *s, *e)?,
                    _ => return Err(bad("slots are not pairs of integers")),
                }
            }
        }
        Ok(topology)
    }

    /// From a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, ...],
    /// replicas...]` per range.
    pub fn from_slots(reply: &Value) -> Result<Topology, TopologyError> {
        let bad = |what| TopologyError::Malformed {
            command: "SLOTS",
            what,
        };
        let mut topology = Topology::empty();
        for range in reply.as_array().ok_or(bad("not an array"))? {
            let Some([Value::Int(s), Value::Int(e), Value::Array(primary), ..]) = range.as_array()
            else {
                return Err(bad("a range is not [start, end, node, ...]"));
            };
            let (host, port_v, id) = match &primary[..] {
                [host, port_v, id, ..] => (host, port_v, id),
                _ => return Err(bad("a node is not [host, port, id, ...]")),
            };
            let node = Node {
                id: text(id).ok_or(bad("a node has no id"))?,
                // Empty until a node has met another: "where you reached me".
                host: endpoint(Some(host)).unwrap_or_default(),
                port: port(Some(port_v)),
                tls_port: None,
            };
            topology.assign(node, *s, *e)?;
        }
        Ok(topology)
    }
}

/// Reads the topology of the cluster `dialer` reaches: from its address,
/// else from each seed in turn.
pub async fn discover(dialer: &Dialer, depth: usize) -> Result<Topology, DiscoverError> {
    let mut last = None;
    let seeds = std::iter::once(&dialer.config.address).chain(&dialer.config.seeds);
    for seed in seeds {
        let after = dialer.config.connect_timeout() + dialer.config.connect_timeout();
        match tokio::time::timeout(after, discover_at(dialer, seed, depth)).await {
            Ok(Ok(t)) => return Ok(t),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(DiscoverError::Upstream(UpstreamError::ConnectTimeout {
                    side: dialer.side,
                    addr: seed.clone(),
                    after,
                }))
            }
        }
    }
    Err(last.unwrap_or(DiscoverError::Refused("no address to discover from".into())))
}

/// Reads the topology from the node at `seed`.
async fn discover_at(dialer: &Dialer, seed: &str, depth: usize) -> Result<Topology, DiscoverError> {
    let mut conn = dialer.open(seed, None, &dialer.base_setup(), depth).await?;
    let mut refusal = None;
    for (sub, parse) in [
        (&b"SHARDS"[..], Topology::from_shards as fn(&Value) -> _),
        (&b"SLOTS"[..], Topology::from_slots),
    ] {
        let cmd = Command::from_args(&[&b"CLUSTER"[..], sub]);
        let reply: Bytes = dialer.ask(&mut conn, seed, &cmd, depth).await?;
        match value::decode(&reply, depth) {
            Some(Value::Error(e)) => refusal = Some(String::from_utf8_lossy(&e).into_owned()),
            Some(v) => {
                let mut topology = parse(&v)?;
                // A node that announces no address is where the seed is.
                let host = seed.rsplit_once(':').map_or("", |(h, _)| h);
                for p in topology.primaries.iter_mut().filter(|p| p.host.is_empty()) {
                    p.host = host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string();
                }
                if topology.primaries.is_empty() {
                    return Err(DiscoverError::Refused("no slot is assigned".into()));
                }
                return Ok(topology);
            }
            None => {
                return Err(TopologyError::Malformed {
                    command: "SHARDS",
                    what: "undecodable",
                }
                .into())
            }
        }
    }
    Err(DiscoverError::Refused(refusal.unwrap_or_default()))
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
