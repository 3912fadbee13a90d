//! What the proxy decides once per command-table entry, not per command:
//! every policy that used to be a string compare on the data path.
//!
//! Each field names the decision and where its reasons are written down
//! (the module whose documentation holds the table). [`super::entry`]
//! returns an entry's spec with its traits in one lookup.

use super::spec::CommandSpec;
use super::{admin_reads, is_admin, is_blocking, loads_code, updates_in_place};
use crate::compare::Order;
use crate::shadow;

/// The decisions of one table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traits {
    /// May block its connection: exempt from the command timeout, never
    /// mirrored as it is ([`is_blocking`]).
    pub blocking: bool,
    /// Refused unless `[commands] allow` names it ([`is_admin`]).
    pub admin: bool,
    /// An allowed admin command that only looks: a read ([`admin_reads`]).
    pub admin_reads: bool,
    /// Changes the scripts or functions a cache can run: sent to every
    /// cache a route uses ([`loads_code`]).
    pub loads_code: bool,
    /// The argument holding a script body the proxy remembers for EVALSHA
    /// retries on the mirror (`EVAL`, `EVAL_RO`: 1; `SCRIPT LOAD`: 2).
    pub script_body_at: Option<usize>,
    /// `EVALSHA`: a mirror that answers NOSCRIPT runs it again as EVAL,
    /// so its two replies are not compared.
    pub evalsha: bool,
    /// A mirrored write whose two replies are worth comparing (not
    /// `PUBLISH`/`SPUBLISH`: receiver counts differ by design).
    pub comparable: bool,
    /// A write that changes its one key in place: the mirror is probed
    /// for the key before a compared write ([`updates_in_place`]).
    pub updates_in_place: bool,
    /// A read whose "nothing" reply may be answered from old instead
    /// (read fallback; the list and its reasons: `session::fallback`).
    pub falls_back: bool,
    /// How a shadowed read is compared, `None` when it is never shadowed
    /// (the table and its reasons: [`crate::shadow`]).
    pub shadow: Option<Order>,
    /// `SCAN`, `HSCAN`, `SSCAN`, `ZSCAN`: the position of the cursor, which
    /// only means something on the cache that issued it, so an iteration
    /// stays on that cache across flips. `SCAN`'s is 1; the others' is 2,
    /// after their key.
    pub sticky_cursor: Option<usize>,
    /// `CLIENT CACHING`: its effect moves to the cache serving the next
    /// command.
    pub client_caching: bool,
    /// `KEYS`, `SCAN`, `DBSIZE`, `RANDOMKEY`: reads of the whole keyspace,
    /// which ask both caches when routes read from different ones.
    pub keyspace_read: Option<KeyspaceRead>,
    /// `FLUSHALL`, `FLUSHDB`, `SWAPDB`: writes to the whole keyspace, so
    /// they reach every cache some route writes to, whatever the default
    /// route's phase (flushed keys of other routes must not come back
    /// after a flip).
    pub keyless_write: bool,
    /// `SCRIPT KILL`, `FUNCTION KILL`: the script may run on both caches
    /// (a mirrored one), so the kill goes to both.
    pub kills_script: bool,
    /// `PING`: answered by the proxy in the RESP2 subscribed state.
    pub ping: bool,
    /// `PUBLISH`, `SPUBLISH`: answers how many clients received it. In a
    /// dual phase subscribers are on both caches (a subscription stays
    /// where it was made across `dual-write` ⇄ `read-new`), so the answer
    /// is both caches' counts added up.
    pub counts_receivers: bool,
    /// `CLUSTER SLOTS|SHARDS|NODES|MYID|INFO|KEYSLOT`, `READONLY`,
    /// `READWRITE`, `ASKING`: answered by the proxy itself with
    /// `[listen] cluster = true` (`cluster_face.rs`).
    pub cluster_face: bool,
}

/// A read of the whole keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyspaceRead {
    Keys,
    Scan,
    DbSize,
    RandomKey,
}

impl Traits {
    /// The decisions for `spec`, taken once when the table is indexed.
    pub fn of(spec: &CommandSpec) -> Traits {
        let name = spec.name;
        Traits {
            blocking: is_blocking(spec),
            admin: is_admin(spec),
            admin_reads: admin_reads(spec),
            loads_code: loads_code(spec),
            script_body_at: match name {
                "eval" | "eval_ro" => Some(1),
                "script|load" => Some(2),
                _ => None,
            },
            evalsha: name == "evalsha",
            comparable: !matches!(name, "publish" | "spublish"),
            updates_in_place: updates_in_place(spec),
            falls_back: falls_back(name),
            shadow: shadow::order_for(name),
            sticky_cursor: match name {
                "scan" => Some(1),
                "hscan" | "sscan" | "zscan" => Some(2),
                _ => None,
            },
            client_caching: name == "client|caching",
            kills_script: matches!(name, "script|kill" | "function|kill"),
            keyless_write: matches!(name, "flushall" | "flushdb" | "swapdb"),
            keyspace_read: match name {
                "keys" => Some(KeyspaceRead::Keys),
                "scan" => Some(KeyspaceRead::Scan),
                "dbsize" => Some(KeyspaceRead::DbSize),
                "randomkey" => Some(KeyspaceRead::RandomKey),
                _ => None,
            },
            ping: name == "ping",
            counts_receivers: matches!(name, "publish" | "spublish"),
            cluster_face: matches!(
                name,
                "cluster|slots"
                    | "cluster|shards"
                    | "cluster|nodes"
                    | "cluster|myid"
                    | "cluster|info"
                    | "cluster|keyslot"
                    | "readonly"
                    | "readwrite"
                    | "asking"
            ),
        }
    }
}

/// Reads that may fall back from new to old (see `session::fallback` for
/// why these and not counts or membership tests).
fn falls_back(name: &str) -> bool {
    matches!(
        name,
        "get"
            | "hget"
            | "hmget"
            | "hgetall"
            | "hkeys"
            | "hvals"
            | "lrange"
            | "lindex"
            | "smembers"
            | "zrange"
            | "zscore"
    )
}
