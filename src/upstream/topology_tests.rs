//! The topology parsers on replies as Redis 7 writes them.

use super::*;

/// A RESP value written out: `S` bulk strings, `I` integers, `A` arrays,
/// `M` RESP3 maps.
enum R {
    S(&'static str),
    I(i64),
    A(Vec<R>),
    M(Vec<(&'static str, R)>),
}
use R::{A, I, M, S};

fn enc(r: &R, out: &mut Vec<u8>) {
    match r {
        S(s) => out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes()),
        I(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        A(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            items.iter().for_each(|i| enc(i, out));
        }
        M(pairs) => {
            out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes());
            for (k, v) in pairs {
                enc(&S(k), out);
                enc(v, out);
            }
        }
    }
}

fn value(r: R) -> Value {
    let mut out = Vec::new();
    enc(&r, &mut out);
    value::decode(&Bytes::from(out), 32).expect("valid")
}

/// A shard as a RESP2 flat array: slot ranges, then (id, endpoint, role,
/// tls-port) per node.
fn shard(slots: &[i64], nodes: &[(&'static str, &'static str, &'static str, i64)]) -> R {
    let nodes = nodes
        .iter()
        .map(|&(id, endpoint, role, tls)| {
            let mut n = vec![S("id"), S(id), S("port"), I(7000), S("ip"), S("10.0.0.1")];
            n.extend([S("endpoint"), S(endpoint), S("role"), S(role)]);
            if tls > 0 {
                n.extend([S("tls-port"), I(tls)]);
            }
            A(n)
        })
        .collect();
    A(vec![
        S("slots"),
        A(slots.iter().map(|&s| I(s)).collect()),
        S("nodes"),
        A(nodes),
    ])
}

#[test]
fn shards_give_each_slot_its_primary() {
    let reply = value(A(vec![
        shard(
            &[0, 5460, 10000, 10001],
            &[
                ("a", "a.cache.example", "master", 10000),
                ("a2", "?", "replica", 0),
            ],
        ),
        shard(&[5461, 9999, 10002, 16383], &[("b", "?", "master", 0)]),
    ]));
    let t = Topology::from_shards(&reply).unwrap();
    assert_eq!(t.primaries.len(), 2);
    assert_eq!(t.unassigned(), 0);
    let a = t.owner(0).unwrap();
    assert_eq!((a.id.as_str(), a.host.as_str()), ("a", "a.cache.example"));
    assert_eq!(a.addr(true).as_deref(), Some("a.cache.example:10000"));
    assert_eq!(a.addr(false).as_deref(), Some("a.cache.example:7000"));
    assert_eq!(t.owner(5460).unwrap().id, "a");
    assert_eq!(t.owner(10001).unwrap().id, "a");
    // An unknown endpoint ("?") falls back to the IP.
    let b = t.owner(5461).unwrap();
    assert_eq!((b.id.as_str(), b.host.as_str()), ("b", "10.0.0.1"));
    assert_eq!(b.addr(true).as_deref(), Some("10.0.0.1:7000"));
    assert_eq!(t.owner(16383).unwrap().id, "b");
    assert_eq!(t.owner(16384), None);
}

#[test]
fn resp3_shards_and_a_shard_without_primary() {
    let node = |id, role| {
        M(vec![
            ("id", S(id)),
            ("port", I(6379)),
            ("ip", S("127.0.0.1")),
            ("endpoint", S("127.0.0.1")),
            ("role", S(role)),
        ])
    };
    let reply = value(A(vec![
        M(vec![
            ("slots", A(vec![I(0), I(99)])),
            ("nodes", A(vec![node("x", "master")])),
        ]),
        // Failing over: no primary, its slots unowned for now.
        M(vec![
            ("slots", A(vec![I(100), I(16383)])),
            ("nodes", A(vec![node("y", "replica")])),
        ]),
    ]));
    let t = Topology::from_shards(&reply).unwrap();
    assert_eq!(t.primaries.len(), 1);
    assert_eq!(t.unassigned(), 16384 - 100);
    assert_eq!(
        t.owner(99).unwrap().addr(false).as_deref(),
        Some("127.0.0.1:6379")
    );
    assert!(t.owner(100).is_none());
}

#[test]
fn slots_give_the_same_map() {
    let node = |host, port, id| A(vec![S(host), I(port), S(id)]);
    let reply = value(A(vec![
        A(vec![
            I(0),
            I(8000),
            node("h1", 7001, "one"),
            node("h9", 7009, "r"),
        ]),
        A(vec![I(8001), I(16383), node("h2", 7002, "two")]),
    ]));
    let t = Topology::from_slots(&reply).unwrap();
    assert_eq!(t.primaries.len(), 2);
    assert_eq!(t.unassigned(), 0);
    assert_eq!(
        t.owner(8000).unwrap().addr(false).as_deref(),
        Some("h1:7001")
    );
    assert_eq!(t.owner(8001).unwrap().id, "two");
}

#[test]
fn malformed_replies_are_errors() {
    let bad_range = value(A(vec![shard(&[5, 16384], &[("a", "h", "master", 0)])]));
    assert_eq!(
        Topology::from_shards(&bad_range),
        Err(TopologyError::BadRange {
            start: 5,
            end: 16384
        })
    );
    assert!(Topology::from_shards(&value(I(1))).is_err());
    assert!(Topology::from_shards(&value(A(vec![A(vec![S("slots")])]))).is_err());
    assert!(Topology::from_slots(&value(A(vec![A(vec![I(0), I(1)])]))).is_err());
    let odd = value(A(vec![shard(&[0, 1, 2], &[("a", "h", "master", 0)])]));
    assert!(Topology::from_shards(&odd).is_err());
}
