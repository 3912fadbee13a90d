//! Whole-keyspace comparison of two servers, test data, and a seedable
//! random generator.

use super::RedisServer;

pub fn get(conn: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(conn).unwrap()
}

/// One key as a comparison sees it: type, value in a canonical form (sets
/// and hashes sorted), and remaining TTL in milliseconds (-1: none).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyState {
    pub kind: String,
    pub value: redis::Value,
    pub pttl: i64,
}

/// Every key of db 0 with its type, value and TTL.
pub fn keyspace(conn: &mut redis::Connection) -> std::collections::BTreeMap<Vec<u8>, KeyState> {
    let mut out = std::collections::BTreeMap::new();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(conn).unwrap();
        let q = |c: &mut redis::Connection, args: &[&[u8]]| -> redis::Value {
            let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query(c).unwrap()
        };
        let sorted = |v: redis::Value| match v {
            redis::Value::Array(mut items) => {
                items.sort_by_key(|i| format!("{i:?}"));
                redis::Value::Array(items)
            }
            other => other,
        };
        let value = match kind.as_str() {
            "none" => continue, // expired or deleted meanwhile
            "string" => q(conn, &[b"GET", &key]),
            "list" => q(conn, &[b"LRANGE", &key, b"0", b"-1"]),
            "set" => sorted(q(conn, &[b"SMEMBERS", &key])),
            "zset" => q(conn, &[b"ZRANGE", &key, b"0", b"-1", b"WITHSCORES"]),
            "hash" => {
                // Pairs, sorted by field.
                let flat: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(&key).query(conn).unwrap();
                let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = flat
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect();
                pairs.sort();
                redis::Value::Array(
                    pairs
                        .into_iter()
                        .flat_map(|(f, v)| {
                            [redis::Value::BulkString(f), redis::Value::BulkString(v)]
                        })
                        .collect(),
                )
            }
            "stream" => q(conn, &[b"XRANGE", &key, b"-", b"+"]),
            other => panic!("unexpected type {other}"),
        };
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query(conn).unwrap();
        out.insert(key, KeyState { kind, value, pttl });
    }
    out
}

/// Asserts old and new hold the same keys, types and values, and TTLs
/// within `ttl_tolerance_ms`.
pub fn assert_same_keyspace(old: &RedisServer, new: &RedisServer, ttl_tolerance_ms: i64) {
    let a = keyspace(&mut old.sync());
    let b = keyspace(&mut new.sync());
    assert_same_keys(&a, &b, ttl_tolerance_ms);
}

/// Asserts two keyspaces (of a server or a whole cluster) hold the same
/// keys, types and values, and TTLs within `ttl_tolerance_ms`.
pub fn assert_same_keys(
    a: &std::collections::BTreeMap<Vec<u8>, KeyState>,
    b: &std::collections::BTreeMap<Vec<u8>, KeyState>,
    ttl_tolerance_ms: i64,
) {
    let names = |m: &std::collections::BTreeMap<Vec<u8>, KeyState>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(a), names(b), "old and new hold different keys");
    for (key, x) in a {
        let y = &b[key];
        let k = String::from_utf8_lossy(key);
        assert_eq!(x.kind, y.kind, "type of {k}");
        assert_eq!(x.value, y.value, "value of {k}");
        let ttl_ok = (x.pttl < 0 && y.pttl < 0 && x.pttl == y.pttl)
            || (x.pttl >= 0 && y.pttl >= 0 && (x.pttl - y.pttl).abs() <= ttl_tolerance_ms);
        assert!(ttl_ok, "TTL of {k}: old {} ms, new {} ms", x.pttl, y.pttl);
    }
}

/// `n` keys of every type, half of them with a TTL: `h{i}` hashes, `l{i}`
/// lists, `set{i}` sets, `z{i}` sorted sets, `x{i}` streams, `sess:{i}` and
/// `s{i}` strings (`i` by `i % 10`: 0 to 4, 5, the rest).
pub fn populate(server: &RedisServer, n: usize) {
    let mut c = server.sync();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut p = redis::pipe();
        for &i in chunk {
            let key = match i % 10 {
                0 => {
                    p.cmd("HSET")
                        .arg(format!("h{i}"))
                        .arg("a")
                        .arg(i)
                        .arg("b")
                        .arg("x")
                        .ignore();
                    format!("h{i}")
                }
                1 => {
                    p.cmd("RPUSH").arg(format!("l{i}")).arg(i).arg("y").ignore();
                    format!("l{i}")
                }
                2 => {
                    p.cmd("SADD")
                        .arg(format!("set{i}"))
                        .arg(i)
                        .arg("z")
                        .ignore();
                    format!("set{i}")
                }
                3 => {
                    p.cmd("ZADD").arg(format!("z{i}")).arg(1.5).arg(i).ignore();
                    format!("z{i}")
                }
                4 => {
                    p.cmd("XADD")
                        .arg(format!("x{i}"))
                        .arg("*")
                        .arg("f")
                        .arg(i)
                        .ignore();
                    format!("x{i}")
                }
                5 => {
                    p.cmd("SET").arg(format!("sess:{i}")).arg(i).ignore();
                    format!("sess:{i}")
                }
                _ => {
                    p.cmd("SET").arg(format!("s{i}")).arg(i).ignore();
                    format!("s{i}")
                }
            };
            if i % 2 == 0 {
                p.cmd("EXPIRE").arg(&key).arg(1000 + i % 5000).ignore();
            }
        }
        let _: () = p.query(&mut c).unwrap();
    }
}

/// xorshift64*: small, seedable, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
