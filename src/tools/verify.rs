//! `cutover verify`: compares a route's keys on old and new.
//!
//! Both caches are scanned (keys only on old, keys only on new). For each
//! key: existence, type, and TTL (both persistent, or both expiring within
//! the tolerance); in full mode the value too: equal `DUMP` payloads are
//! equal, otherwise the values are read by type and compared (hash fields
//! and set members as unordered, sorted sets with their scores). Keys over
//! 1 MiB (`MEMORY USAGE`) are never read whole: they are compared chunk by
//! chunk ([`streamed_equal`]). A key that
//! differs is re-checked (twice, 100 ms apart) before it is reported, so a
//! key that expired or was written while it was being compared is not a
//! difference when the caches really are in sync.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::{text, Caches, KeyScan, ToolError};
use crate::compare::{normal_read, Order};
use crate::protocol::{Command, Value};
use crate::repair::{restore_command, snapshot_commands};
use crate::routing::Side;

#[derive(Clone, Debug)]
pub struct Options {
    pub route: Option<String>,
    /// Existence, type and TTL class only.
    pub quick: bool,
    pub ttl_tolerance_ms: i64,
    /// Copy the authoritative side's value over each difference.
    pub repair: bool,
    /// Keys shown per kind of difference.
    pub sample: usize,
    pub batch: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            route: None,
            quick: false,
            ttl_tolerance_ms: 1000,
            repair: false,
            sample: 10,
            batch: 500,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// On old, not on new.
    Missing,
    /// On new, not on old.
    Extra,
    Type,
    Value,
    Ttl,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Missing,
        Kind::Extra,
        Kind::Type,
        Kind::Value,
        Kind::Ttl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Type => "type",
            Kind::Value => "value",
            Kind::Ttl => "ttl",
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub routes: Vec<String>,
    pub mode: &'static str,
    /// Keys compared (found on either side).
    pub keys: u64,
    pub differences: BTreeMap<&'static str, u64>,
    /// A few keys per kind (lossy UTF-8).
    pub samples: BTreeMap<&'static str, Vec<String>>,
    /// Differences found on the first look that were gone on a re-check.
    pub settled_on_recheck: u64,
    /// Compares of big keys (over 1 MiB) done in chunks rather than whole.
    pub streamed: u64,
    pub repaired: u64,
    pub equal: bool,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = format!(
            "verify ({}) of route(s) {}: {} keys compared\n",
            self.mode,
            self.routes.join(", "),
            self.keys
        );
        for k in Kind::ALL {
            let n = self.differences.get(k.name()).copied().unwrap_or(0);
            out.push_str(&format!("  {:<8} {n}\n", k.name()));
            for key in self.samples.get(k.name()).into_iter().flatten() {
                out.push_str(&format!("           {key}\n"));
            }
        }
        if self.settled_on_recheck > 0 {
            out.push_str(&format!(
                "  ({} keys differed at first and agreed on a re-check: written or expired meanwhile)\n",
                self.settled_on_recheck
            ));
        }
        if self.streamed > 0 {
            out.push_str(&format!(
                "  ({} big keys compared in chunks)\n",
                self.streamed
            ));
        }
        if self.repaired > 0 {
            out.push_str(&format!("  repaired {} keys\n", self.repaired));
        }
        out.push_str(if self.equal {
            "old and new are equal\n"
        } else {
            "old and new DIFFER\n"
        });
        out
    }
}

/// Per key: (type, pttl, dump) on one side.
#[derive(Debug, Clone, PartialEq)]
struct Look {
    kind: Bytes,
    pttl: i64,
    dump: Option<Bytes>,
}

impl Look {
    fn exists(&self) -> bool {
        &self.kind[..] != b"none"
    }
}

async fn look(
    caches: &mut Caches,
    side: Side,
    keys: &[Bytes],
    dump: bool,
) -> Result<Vec<Look>, ToolError> {
    let mut cmds = Vec::with_capacity(keys.len() * 3);
    for k in keys {
        cmds.push(Command::from_args(&[&b"TYPE"[..], k]));
        cmds.push(Command::from_args(&[&b"PTTL"[..], k]));
        if dump {
            // An estimate (5 samples): cheap even for a big key.
            cmds.push(Command::from_args(&[&b"MEMORY"[..], b"USAGE", k]));
        }
    }
    let replies = caches.call(side, &cmds).await?;
    let per = if dump { 3 } else { 2 };
    let mut looks = Vec::with_capacity(keys.len());
    let mut small = Vec::new();
    for (i, r) in replies.chunks(per).enumerate() {
        let kind = match &r[0] {
            Value::Str(s) => s.clone(),
            other => return Err(ToolError::Refused("TYPE", format!("{other:?}"))),
        };
        let pttl = match &r[1] {
            Value::Int(n) => *n,
            other => return Err(ToolError::Refused("PTTL", format!("{other:?}"))),
        };
        // (MEMORY USAGE refused, e.g. by an ACL: every key is dumped.)
        if dump && !matches!(r[2], Value::Int(n) if n > BIG_KEY_BYTES) {
            small.push(i);
        }
        looks.push(Look {
            kind,
            pttl,
            dump: None,
        });
    }
    if small.is_empty() {
        return Ok(looks);
    }
    let dumps: Vec<Command> = small
        .iter()
        .map(|&i| Command::from_args(&[&b"DUMP"[..], &keys[i]]))
        .collect();
    for (&i, r) in small.iter().zip(caches.call(side, &dumps).await?) {
        looks[i].dump = match r {
            Value::Str(s) => Some(s),
            Value::Error(e) => return Err(ToolError::Refused("DUMP", text(&e))),
            _ => None,
        };
    }
    Ok(looks)
}

/// Keys above this (`MEMORY USAGE`, bytes) are compared in chunks, never
/// read whole.
const BIG_KEY_BYTES: i64 = 1 << 20;
/// Elements (or string bytes / 1024) per chunk of a big key.
const CHUNK: usize = 1000;

/// Runs `cmd` on both caches: whether they answered alike, and old's answer.
async fn same_on_both(caches: &mut Caches, cmd: &Command) -> Result<(bool, Vec<Value>), ToolError> {
    let x = caches.call(Side::Old, std::slice::from_ref(cmd)).await?;
    let y = caches.call(Side::New, std::slice::from_ref(cmd)).await?;
    Ok((x == y, x))
}

/// Compares a big key chunk by chunk (memory bounded by one chunk per
/// side): lengths first, then strings by `GETRANGE`, lists by `LRANGE`,
/// sorted sets by `ZRANGE .. WITHSCORES` (ordered), streams by `XRANGE ..
/// COUNT`, and hashes and sets by scanning old (`HSCAN`, `SSCAN`) and
/// asking new for the same fields or members (`HMGET`, `SMISMEMBER`): with
/// equal lengths, old's contents all on new means equal. `None` for a type
/// it cannot read.
async fn streamed_equal(
    caches: &mut Caches,
    key: &[u8],
    kind: &[u8],
) -> Result<Option<bool>, ToolError> {
    let len_cmd: &[u8] = match kind {
        b"string" => b"STRLEN",
        b"list" => b"LLEN",
        b"hash" => b"HLEN",
        b"set" => b"SCARD",
        b"zset" => b"ZCARD",
        b"stream" => b"XLEN",
        _ => return Ok(None),
    };
    let (same, a) = same_on_both(caches, &Command::from_args(&[len_cmd, key])).await?;
    let Some(Value::Int(n)) = a.first() else {
        return Err(ToolError::Unexpected("a length"));
    };
    if !same {
        return Ok(Some(false));
    }
    let n = usize::try_from(*n).unwrap_or(0);
    let k = key.to_vec();
    match kind {
        b"string" | b"list" | b"zset" => {
            let step = if kind == b"string" {
                CHUNK * 1024
            } else {
                CHUNK
            };
            for start in (0..n).step_by(step) {
                let (from, to) = (start.to_string(), (start + step - 1).to_string());
                let mut args = match kind {
                    b"string" => vec![b"GETRANGE".to_vec(), k.clone()],
                    b"list" => vec![b"LRANGE".to_vec(), k.clone()],
                    _ => vec![b"ZRANGE".to_vec(), k.clone()],
                };
                args.extend([from.into_bytes(), to.into_bytes()]);
                if kind == b"zset" {
                    args.push(b"WITHSCORES".to_vec());
                }
                if !same_on_both(caches, &Command::from_args(&args)).await?.0 {
                    return Ok(Some(false));
                }
            }
            Ok(Some(true))
        }
        b"stream" => {
            let mut from = b"-".to_vec();
            loop {
                let args = vec![
                    b"XRANGE".to_vec(),
                    k.clone(),
                    from.clone(),
                    b"+".to_vec(),
                    b"COUNT".to_vec(),
                    CHUNK.to_string().into_bytes(),
                ];
                let (same, x) = same_on_both(caches, &Command::from_args(&args)).await?;
                if !same {
                    return Ok(Some(false));
                }
                let last = x
                    .first()
                    .and_then(Value::as_array)
                    .and_then(|e| e.last())
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
                    .and_then(Value::as_bytes);
                match last {
                    Some(id) => from = [&b"("[..], id].concat(),
                    None => return Ok(Some(true)),
                }
            }
        }
        _ => {
            // hash or set: old's contents, chunk by chunk, looked up on new.
            let hash = kind == b"hash";
            let mut cursor = b"0".to_vec();
            loop {
                let scan: &[u8] = if hash { b"HSCAN" } else { b"SSCAN" };
                let cmd = Command::from_args(&[scan, key, &cursor, b"COUNT", b"1000"]);
                let r = caches.call(Side::Old, &[cmd]).await?;
                let Some([next, items]) = r[0].as_array() else {
                    return Err(ToolError::Unexpected("HSCAN/SSCAN"));
                };
                let items = items.as_array().unwrap_or_default();
                if !items.is_empty() {
                    let step = if hash { 2 } else { 1 };
                    let mut ask: Vec<&[u8]> =
                        vec![if hash { b"HMGET" } else { b"SMISMEMBER" }, key];
                    ask.extend(
                        items
                            .iter()
                            .step_by(step)
                            .filter_map(|v| v.as_bytes().map(|b| &b[..])),
                    );
                    let got = caches.call(Side::New, &[Command::from_args(&ask)]).await?;
                    let got = got[0].as_array().unwrap_or_default();
                    let want: Vec<Value> = if hash {
                        items.iter().skip(1).step_by(2).cloned().collect()
                    } else {
                        vec![Value::Int(1); items.len()]
                    };
                    if got != want.as_slice() {
                        return Ok(Some(false));
                    }
                }
                cursor = next.as_bytes().map(|b| b.to_vec()).unwrap_or_default();
                if cursor == b"0" || cursor.is_empty() {
                    return Ok(Some(true));
                }
            }
        }
    }
}

/// The value of `key` read by type, normalised for comparison.
async fn value_of(
    caches: &mut Caches,
    side: Side,
    key: &[u8],
    kind: &[u8],
) -> Result<Option<Value>, ToolError> {
    let cmd: Vec<&[u8]> = match kind {
        b"string" => vec![b"GET", key],
        b"list" => vec![b"LRANGE", key, b"0", b"-1"],
        b"hash" => vec![b"HGETALL", key],
        b"set" => vec![b"SMEMBERS", key],
        b"zset" => vec![b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"],
        b"stream" => vec![b"XRANGE", key, b"-", b"+"],
        _ => return Ok(None),
    };
    let order = match kind {
        b"hash" => Order::Pairs,
        b"set" => Order::Unordered,
        _ => Order::AsIs,
    };
    let r = caches.call(side, &[Command::from_args(&cmd)]).await?;
    Ok(r.into_iter().next().map(|v| normal_read(v, order)))
}

/// How `key` differs, if it does.
async fn compare(
    caches: &mut Caches,
    key: &Bytes,
    old: &Look,
    new: &Look,
    opts: &Options,
    streamed: &mut u64,
) -> Result<Option<Kind>, ToolError> {
    match (old.exists(), new.exists()) {
        (false, false) => return Ok(None),
        (true, false) => return Ok(Some(Kind::Missing)),
        (false, true) => return Ok(Some(Kind::Extra)),
        (true, true) => {}
    }
    if old.kind != new.kind {
        return Ok(Some(Kind::Type));
    }
    let ttl_differs = match (old.pttl, new.pttl) {
        (a, b) if a < 0 || b < 0 => (a < 0) != (b < 0),
        (a, b) => !opts.quick && (a - b).abs() > opts.ttl_tolerance_ms,
    };
    if ttl_differs {
        return Ok(Some(Kind::Ttl));
    }
    if opts.quick || (old.dump.is_some() && old.dump == new.dump) {
        return Ok(None);
    }
    if old.dump.is_none() || new.dump.is_none() {
        // Big on one side at least: compared in chunks.
        *streamed += 1;
        return Ok(match streamed_equal(caches, key, &old.kind).await? {
            Some(true) => None,
            _ => Some(Kind::Value),
        });
    }
    let a = value_of(caches, Side::Old, key, &old.kind).await?;
    let b = value_of(caches, Side::New, key, &new.kind).await?;
    Ok(match (a, b) {
        (Some(a), Some(b)) if a == b => None,
        (Some(_), Some(_)) => Some(Kind::Value),
        // A type the tool cannot read: the payloads differ.
        _ => Some(Kind::Value),
    })
}

/// Compares `keys`; returns the differing ones.
async fn check(
    caches: &mut Caches,
    keys: &[Bytes],
    opts: &Options,
    streamed: &mut u64,
) -> Result<Vec<(Bytes, Kind)>, ToolError> {
    let dump = !opts.quick;
    let old = look(caches, Side::Old, keys, dump).await?;
    let new = look(caches, Side::New, keys, dump).await?;
    let mut out = Vec::new();
    for ((key, o), n) in keys.iter().zip(&old).zip(&new) {
        if let Some(kind) = compare(caches, key, o, n, opts, streamed).await? {
            out.push((key.clone(), kind));
        }
    }
    Ok(out)
}

/// Copies `key` from `from` to the other side (value and remaining TTL,
/// or a delete when `from` does not have it).
pub(crate) async fn copy_key(
    caches: &mut Caches,
    from: Side,
    key: &[u8],
    replace: bool,
) -> Result<CopyOutcome, ToolError> {
    let r = caches.call(from, &snapshot_commands(key)).await?;
    let write = match restore_command(key, &r[3], replace) {
        Ok(Some(write)) => write,
        Ok(None) => return Ok(CopyOutcome::Gone),
        Err(()) => {
            return Err(ToolError::Refused(
                "MULTI DUMP PTTL EXEC",
                format!("{:?}", r[3]),
            ))
        }
    };
    let r = caches.call(from.other(), &[write]).await?;
    match &r[0] {
        Value::Error(e) if e.starts_with(b"BUSYKEY") => Ok(CopyOutcome::Exists),
        Value::Error(e) => Err(ToolError::Refused("RESTORE", text(e))),
        _ => Ok(CopyOutcome::Copied),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CopyOutcome {
    Copied,
    /// The target already had the key (RESTORE without REPLACE).
    Exists,
    /// Gone from the source before it was read.
    Gone,
}

/// Runs the comparison (and the repair, when asked).
pub async fn run(caches: &mut Caches, opts: &Options) -> Result<Report, ToolError> {
    let routes = caches.routes(opts.route.as_deref())?;
    let mut report = Report {
        routes: routes
            .iter()
            .map(|&r| caches.table.routes[r].name.to_string())
            .collect(),
        mode: if opts.quick { "quick" } else { "full" },
        ..Report::default()
    };
    let mut differing: Vec<(Bytes, Kind, usize)> = Vec::new();
    for &route in &routes {
        let mut seen_on_old = HashSet::new();
        for side in [Side::Old, Side::New] {
            let mut scan = KeyScan::new(route);
            while let Some(keys) = scan.next(caches, side, opts.batch, None).await? {
                let keys: Vec<Bytes> = if side == Side::Old {
                    seen_on_old.extend(keys.iter().cloned());
                    keys
                } else {
                    keys.into_iter()
                        .filter(|k| !seen_on_old.contains(k))
                        .collect()
                };
                if keys.is_empty() {
                    continue;
                }
                report.keys += keys.len() as u64;
                for (k, kind) in check(caches, &keys, opts, &mut report.streamed).await? {
                    differing.push((k, kind, route));
                }
            }
        }
    }
    // Re-check before reporting: a key written or expired meanwhile settles.
    for _ in 0..2 {
        if differing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let keys: Vec<Bytes> = differing.iter().map(|(k, _, _)| k.clone()).collect();
        let still: HashSet<Bytes> = check(caches, &keys, opts, &mut report.streamed)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let before = differing.len();
        differing.retain(|(k, _, _)| still.contains(k));
        report.settled_on_recheck += (before - differing.len()) as u64;
    }
    for (key, kind, _) in &differing {
        *report.differences.entry(kind.name()).or_default() += 1;
        let sample = report.samples.entry(kind.name()).or_default();
        if sample.len() < opts.sample {
            sample.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    if opts.repair && !differing.is_empty() {
        for (key, _, route) in &differing {
            let from = caches.table.routes[*route].phase.authoritative();
            copy_key(caches, from, key, true).await?;
            report.repaired += 1;
        }
        let keys: Vec<Bytes> = differing.iter().map(|(k, _, _)| k.clone()).collect();
        let left = check(caches, &keys, opts, &mut report.streamed).await?;
        report.equal = left.is_empty();
        return Ok(report);
    }
    report.equal = differing.is_empty();
    Ok(report)
}
