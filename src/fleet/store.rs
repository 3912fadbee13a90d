//! The fleet's control record, kept in the caches themselves: one hash
//! under `cutover:fleet:{<name>}` on old and on new (on a clustered side,
//! on the node owning its slot). Its fields:
//!
//! | field | what |
//! | --- | --- |
//! | `epoch` | the record's epoch, for the compare-and-set |
//! | `record` | [`Record`] as JSON: every route's decided phase and ramp |
//! | `member:<id>` | [`Member`] as JSON: one instance's heartbeat |
//! | `prepare_epoch`, `prepare` | a flip being prepared: its epoch and [`Record`] |
//! | `ack:<id>` | the highest epoch member `<id>` acknowledged as prepared |
//! | `lease` | `<id>\|<until>`: the member running auto-cutover, until (the cache's clock, ms) |
//!
//! A record is written to both caches with a compare-and-set script (only
//! over a lower epoch); readers take the higher epoch of the two, so the
//! record survives either cache being down.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{value, Command, Value};
use crate::routing::{PerSide, Side};
use crate::upstream::client::Client;
use crate::upstream::Upstream;

/// Keys under this prefix are the fleet's: refused to clients, skipped
/// by backfill and verify.
pub const RESERVED_PREFIX: &[u8] = b"cutover:fleet:";

/// Writes `ARGV[2]` as the record with epoch `ARGV[1]` unless the stored
/// epoch is as high; answers the stored epoch after.
const COMMIT: &str = "local e = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') \
    if e < tonumber(ARGV[1]) then \
      redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'record', ARGV[2]) \
      return tonumber(ARGV[1]) end \
    return e";

/// Records `ARGV[2]` as the flip to epoch `ARGV[1]` being prepared,
/// unless a record or a prepared flip of that epoch or higher exists;
/// answers 1 when it did.
const PREPARE: &str = "local e = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') \
    local p = tonumber(redis.call('HGET', KEYS[1], 'prepare_epoch') or '0') \
    local n = tonumber(ARGV[1]) \
    if e < n and p < n then \
      redis.call('HSET', KEYS[1], 'prepare_epoch', ARGV[1], 'prepare', ARGV[2]) \
      return 1 end \
    return 0";

/// Drops the prepared flip of epoch `ARGV[1]` (an aborted flip).
const ABORT: &str = "if redis.call('HGET', KEYS[1], 'prepare_epoch') == ARGV[1] then \
      redis.call('HDEL', KEYS[1], 'prepare', 'prepare_epoch') return 1 end \
    return 0";

/// Takes or renews the auto-cutover lease for member `ARGV[1]` for
/// `ARGV[2]` ms (by the cache's clock) unless another member holds it
/// unexpired; answers 1 when this member holds it now.
const LEASE: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    local cur = redis.call('HGET', KEYS[1], 'lease') \
    if cur then \
      local id, untl = string.match(cur, '^(.*)|(%d+)$') \
      if id and id ~= ARGV[1] and tonumber(untl) > now then return 0 end \
    end \
    redis.call('HSET', KEYS[1], 'lease', ARGV[1] .. '|' .. string.format('%d', now + tonumber(ARGV[2]))) \
    return 1";

pub use crate::control::Decision;

/// The fleet's phases under one epoch, and who set them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub epoch: u64,
    pub routes: BTreeMap<String, Decision>,
    /// The member that committed it.
    pub by: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What it was for (`phase route=... to=...`).
    pub why: String,
}

/// One instance's heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub listen: String,
    pub admin: Option<String>,
    pub version: String,
    /// The epoch whose phases it serves (0: none yet).
    pub applied: u64,
    pub started_ms: u64,
    pub seen_ms: u64,
    /// Per route: its counters.
    #[serde(default)]
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per route: its journal size.
    #[serde(default)]
    pub journal_keys: BTreeMap<String, u64>,
    /// Per route: its shadow-read window (what auto-cutover sums).
    #[serde(default)]
    pub shadow: BTreeMap<String, crate::shadow::Agreement>,
}

/// What one cache holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    pub record: Option<Record>,
    pub members: Vec<Member>,
    /// The flip being prepared, if any.
    pub prepare: Option<Record>,
    /// Per member, the highest epoch it acknowledged.
    pub acks: BTreeMap<String, u64>,
    /// The auto-cutover lease: holder and until when (the cache's clock).
    pub lease: Option<(String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Upstream(#[from] crate::error::UpstreamError),
    #[error("unexpected reply from the {side} cache: {reply}")]
    Unexpected { side: Side, reply: String },
}

/// The record's key for fleet `name`.
pub fn key(name: &str) -> String {
    format!("cutover:fleet:{{{name}}}")
}

/// Reads and writes the record on both caches, over connections of its
/// own (with their own reconnect backoff).
pub struct Store {
    key: String,
    upstreams: PerSide<Upstream>,
    clients: tokio::sync::Mutex<PerSide<Client>>,
    depth: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("key", &self.key).finish()
    }
}

impl Store {
    pub fn new(name: &str, upstreams: &PerSide<Upstream>, depth: usize) -> Store {
        Store {
            key: key(name),
            upstreams: PerSide::from_fn(|s| upstreams[s].fresh()),
            clients: tokio::sync::Mutex::new(PerSide::from_fn(|_| Client::new())),
            depth,
        }
    }

    async fn call(&self, side: Side, cmds: &[Command]) -> Result<Vec<Bytes>, StoreError> {
        let mut clients = self.clients.lock().await;
        Ok(clients[side]
            .call(&self.upstreams[side], self.depth, cmds)
            .await?)
    }

    /// What `side` holds.
    pub async fn read(&self, side: Side) -> Result<Held, StoreError> {
        let cmd = Command::from_args(&[b"HGETALL", self.key.as_bytes()]);
        let reply = self.call(side, &[cmd]).await?.remove(0);
        let unexpected = || StoreError::Unexpected {
            side,
            reply: crate::protocol::text(&reply),
        };
        let items = match value::decode(&reply, self.depth) {
            Some(Value::Array(items)) => items
                .chunks(2)
                .filter_map(|kv| Some((kv[0].as_bytes()?.clone(), kv.get(1)?.as_bytes()?.clone())))
                .collect::<Vec<_>>(),
            Some(Value::Map(pairs)) => pairs
                .into_iter()
                .filter_map(|(k, v)| Some((k.as_bytes()?.clone(), v.as_bytes()?.clone())))
                .collect(),
            _ => return Err(unexpected()),
        };
        let mut held = Held::default();
        for (field, json) in items {
            if &field[..] == b"record" {
                held.record = serde_json::from_slice(&json).ok();
            } else if &field[..] == b"prepare" {
                held.prepare = serde_json::from_slice(&json).ok();
            } else if let Some(id) = field.strip_prefix(b"ack:") {
                let epoch = std::str::from_utf8(&json).ok().and_then(|e| e.parse().ok());
                let id = String::from_utf8_lossy(id).into_owned();
                held.acks.insert(id, epoch.unwrap_or(0));
            } else if &field[..] == b"lease" {
                let text = String::from_utf8_lossy(&json);
                held.lease = text
                    .rsplit_once('|')
                    .and_then(|(id, until)| Some((id.to_string(), until.parse().ok()?)));
            } else if field.starts_with(b"member:") {
                if let Ok(m) = serde_json::from_slice(&json) {
                    held.members.push(m);
                }
            }
        }
        Ok(held)
    }

    /// The epochs stored on `side`: the record's and the prepared flip's
    /// (0 for none).
    pub async fn epochs(&self, side: Side) -> Result<(u64, u64), StoreError> {
        let key = self.key.as_bytes();
        let cmd = Command::from_args(&[&b"HMGET"[..], key, b"epoch", b"prepare_epoch"]);
        let reply = self.call(side, &[cmd]).await?.remove(0);
        let num = |v: &Value| match v {
            Value::Str(e) => std::str::from_utf8(e)
                .ok()
                .and_then(|e| e.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        match value::decode(&reply, 4) {
            Some(Value::Array(v)) if v.len() == 2 => Ok((num(&v[0]), num(&v[1]))),
            _ => Err(StoreError::Unexpected {
                side,
                reply: crate::protocol::text(&reply),
            }),
        }
    }

    /// Runs `script` on both caches; per cache, its integer answer.
    async fn script(&self, script: &str, args: &[&[u8]]) -> PerSide<Result<i64, StoreError>> {
        let mut argv: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), b"1", self.key.as_bytes()];
        argv.extend_from_slice(args);
        let cmd = Command::from_args(&argv);
        let mut out = PerSide::from_fn(|_| Ok(0));
        for side in Side::BOTH {
            out[side] = match self.call(side, std::slice::from_ref(&cmd)).await {
                Ok(r) => match value::decode(&r[0], 4) {
                    Some(Value::Int(n)) => Ok(n),
                    _ => Err(StoreError::Unexpected {
                        side,
                        reply: crate::protocol::text(&r[0]),
                    }),
                },
                Err(e) => Err(e),
            };
        }
        out
    }

    /// Records `record` as the flip being prepared; per cache, whether it
    /// took it (no record or prepared flip of its epoch or higher there).
    pub async fn prepare(&self, record: &Record) -> PerSide<Result<bool, StoreError>> {
        let json = serde_json::to_string(record).expect("a record serializes");
        let epoch = record.epoch.to_string();
        let r = self
            .script(PREPARE, &[epoch.as_bytes(), json.as_bytes()])
            .await;
        let [old, new] = [Side::Old, Side::New].map(|s| r[s].as_ref().map(|n| *n == 1));
        let into = |x: Result<bool, &StoreError>, side| {
            x.map_err(|e| StoreError::Unexpected {
                side,
                reply: e.to_string(),
            })
        };
        PerSide::new(into(old, Side::Old), into(new, Side::New))
    }

    /// Takes or renews the auto-cutover lease for `id` for `ttl_ms`:
    /// whether `id` holds it now. Asked of old, then new: a cache where
    /// another member holds it ends the attempt (so two members racing for
    /// it cannot each win one cache); one that cannot be reached is
    /// skipped. Held when at least one cache granted it and none refused.
    pub async fn lease(&self, id: &str, ttl_ms: u64) -> bool {
        let ttl = ttl_ms.to_string();
        let key = self.key.as_bytes();
        let cmd = Command::from_args(&[
            b"EVAL",
            LEASE.as_bytes(),
            b"1",
            key,
            id.as_bytes(),
            ttl.as_bytes(),
        ]);
        let mut granted = false;
        for side in Side::BOTH {
            match self.call(side, std::slice::from_ref(&cmd)).await {
                Ok(r) if r[0].as_ref() == b":1\r\n" => granted = true,
                Ok(_) => return false,
                Err(_) => {}
            }
        }
        granted
    }

    /// Drops the prepared flip of `epoch` (aborted), where it is.
    pub async fn abort(&self, epoch: u64) {
        let epoch = epoch.to_string();
        let _ = self.script(ABORT, &[epoch.as_bytes()]).await;
    }

    /// Acknowledges the prepared flip of `epoch` as member `id`.
    pub async fn ack(&self, id: &str, epoch: u64) {
        let field = format!("ack:{id}");
        let epoch = epoch.to_string();
        let key = self.key.as_bytes();
        let cmd = Command::from_args(&[b"HSET", key, field.as_bytes(), epoch.as_bytes()]);
        for side in Side::BOTH {
            let _ = self.call(side, std::slice::from_ref(&cmd)).await;
        }
    }

    /// Writes `record` where its epoch is higher than the stored one.
    /// Returns, per cache, the epoch stored after (or the error).
    pub async fn commit(&self, record: &Record) -> PerSide<Result<u64, StoreError>> {
        let json = serde_json::to_string(record).expect("a record serializes");
        let epoch = record.epoch.to_string();
        let cmd = Command::from_args(&[
            b"EVAL",
            COMMIT.as_bytes(),
            b"1",
            self.key.as_bytes(),
            epoch.as_bytes(),
            json.as_bytes(),
        ]);
        let mut out = PerSide::from_fn(|_| Ok(0));
        for side in Side::BOTH {
            out[side] = match self.call(side, std::slice::from_ref(&cmd)).await {
                Ok(r) => match value::decode(&r[0], 4) {
                    Some(Value::Int(e)) => Ok(u64::try_from(e).unwrap_or(0)),
                    _ => Err(StoreError::Unexpected {
                        side,
                        reply: crate::protocol::text(&r[0]),
                    }),
                },
                Err(e) => Err(e),
            };
        }
        out
    }

    /// Writes `member`'s heartbeat to both caches and removes members
    /// silent for longer than `forget_ms`. Per cache, whether it worked.
    pub async fn heartbeat(&self, member: &Member, stale: &[String]) -> PerSide<bool> {
        let json = serde_json::to_string(member).expect("a member serializes");
        let field = format!("member:{}", member.id);
        let mut cmds = vec![Command::from_args(&[
            b"HSET",
            self.key.as_bytes(),
            field.as_bytes(),
            json.as_bytes(),
        ])];
        for id in stale {
            let (m, a) = (format!("member:{id}"), format!("ack:{id}"));
            let key = self.key.as_bytes();
            cmds.push(Command::from_args(&[
                b"HDEL",
                key,
                m.as_bytes(),
                a.as_bytes(),
            ]));
        }
        let mut out = PerSide::from_fn(|_| false);
        for side in Side::BOTH {
            out[side] = self.call(side, &cmds).await.is_ok();
        }
        out
    }
}
