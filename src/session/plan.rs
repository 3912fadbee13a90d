//! Classify → plan: what one client command does, decided by a pure
//! function of the routing table, the command's table entry, the command
//! and the little connection state that matters ([`ConnView`]). No
//! sockets, no counters: unit tests call [`plan`] directly.
//!
//! What a plan leaves to execution is what depends on the moment: whether
//! this client has mirrored writes held (no comparison, no shadow read,
//! no fallback behind them), whether the other cache is reachable (no
//! probe or shadow read into a backoff), and the shadow sampling.
//!
//! Decision order (each step can end it):
//!
//! 1. the table: `[commands] deny`, admin commands `allow` does not name,
//!    unknown commands under `[commands] unknown`;
//! 2. the RESP2 subscribed state: only (un)subscribe, PING, QUIT, RESET;
//! 3. the kind: pub/sub, unsupported, QUIT, connection state, transaction
//!    control ([`Plan`] variants, executed by their own parts);
//! 4. reads and writes: the route and phase of the keys (CROSSROUTE when
//!    their phases differ), the side that answers (a SCAN stays on the
//!    cache that issued its cursor), the mirror (a dual phase's, or every
//!    cache for script/function loads), then how ([`How`]).

use std::sync::Arc;

use bytes::Bytes;

pub(super) use super::keyspace::Merge;
use super::refusal::Refusal;
use crate::commands::{
    self, CommandSpec, Entry, KeyPositions, KeyspaceRead, Kind, PubSubCmd, StateCmd, Traits, TxCmd,
};
use crate::compare::Order;
use crate::mirror::{self, Effect};
use crate::protocol::Command;
use crate::routing::{Phase, RouteStats, RouteTable, Side, UnknownPolicy};

/// Writes (and shadowed reads) with more keys than this are not compared.
pub(super) const MAX_COMPARED_KEYS: usize = 16;

/// The connection state a plan depends on.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ConnView {
    /// A MULTI is open.
    pub(super) in_tx: bool,
    /// Subscribed in RESP2: only a few commands are allowed.
    pub(super) subscribed_resp2: bool,
    /// `CLIENT TRACKING` is on: nothing may read on the client's behalf.
    pub(super) tracking: bool,
    /// The cache this command's cursor iteration runs on (the
    /// connection's SCAN, or the HSCAN/SSCAN/ZSCAN of its key).
    pub(super) scan_side: Option<Side>,
}

#[derive(Debug)]
pub(super) enum Plan {
    /// Answered by the proxy with an error.
    Refuse(Refusal),
    /// Answered by the proxy (PING while subscribed in RESP2).
    Reply(Bytes),
    /// `+OK`, then close.
    Quit,
    PubSub(PubSubCmd),
    /// A connection-state command, answered by this side (the default
    /// route's read side) and applied to every connection.
    State(StateCmd, Side),
    /// MULTI/EXEC/DISCARD/WATCH/UNWATCH; the side is the default route's
    /// read side.
    Tx(TxCmd, Side),
    // Not boxed: one allocation per command is what the data path avoids.
    #[allow(clippy::large_enum_variant)]
    Routed(Routed),
}

/// A read or write with its route decided.
#[derive(Debug)]
pub(super) struct Routed {
    pub(super) traits: Traits,
    /// Its table entry (`None`: unknown, forwarded by policy).
    pub(super) spec: Option<&'static CommandSpec>,
    pub(super) stats: Arc<RouteStats>,
    pub(super) phase: Phase,
    pub(super) authoritative: Side,
    pub(super) mirror: Option<Side>,
    pub(super) write: bool,
    pub(super) blocking: bool,
    /// Redis accepts its argument count (a write it will refuse is not
    /// mirrored, and does not count against a transaction's side).
    pub(super) arity_ok: bool,
    pub(super) positions: KeyPositions,
    /// A SCAN: the cache its iteration runs on from now.
    pub(super) scan_side: Option<Side>,
    pub(super) shadow_fraction: f64,
    pub(super) shadow_repair: bool,
    pub(super) how: How,
    /// Its route is settling after a flip (`routing/settle.rs`): held.
    pub(super) settling: bool,
    /// The table version it was routed by.
    pub(super) version: u64,
}

/// How a routed command is carried.
#[derive(Debug, PartialEq)]
pub(super) enum How {
    /// Inside MULTI: queued on the transaction's side; a mirrored write
    /// is held for the mirror's MULTI block (as its effect, if it has one).
    /// `route`: the route and phase, for a CROSSROUTE at EXEC.
    Queue {
        effect: Option<Effect>,
        route: String,
    },
    /// To the answering side; the mirror gets the effect derived from its
    /// reply.
    Effect(Effect),
    /// To both sides verbatim. `compare`: the two replies may be compared
    /// (unless writes are held); `probe`: the mirror is first asked
    /// whether it has the key the write changes in place.
    Mirror { compare: bool, probe: bool },
    /// To new; an empty reply is asked of old instead (read fallback).
    Fallback,
    /// To the answering side only; `shadow`: the read may be shadowed to
    /// the other cache and compared this way.
    Read { shadow: Option<Order> },
    /// `KEYS`, `DBSIZE`, `RANDOMKEY` with routes read from both caches:
    /// asked of both, each one's keys kept where they are read from.
    Both(Merge),
    /// `SCAN` with routes read from both caches: old's keyspace, then new's,
    /// the cursor saying which.
    Scan,
    /// `PUBLISH`/`SPUBLISH` in a dual phase: to both caches, answered with
    /// the sum of their receiver counts.
    Publish,
}

/// The route of the keys at `positions` (the default route when there are
/// none) and their phase (a ramped `read-new` decides per key). Keys
/// served in different phases cannot be served by one side.
pub(super) fn resolve(
    table: &RouteTable,
    cmd: &Command,
    positions: &[usize],
) -> Result<(usize, Phase), Refusal> {
    if let Some(key) = positions
        .iter()
        .filter_map(|&i| cmd.arg(i))
        .find(|k| k.starts_with(crate::fleet::RESERVED_PREFIX))
    {
        let key = String::from_utf8_lossy(&key[..key.len().min(128)]).into_owned();
        return Err(Refusal::Reserved { key });
    }
    let mut keys = positions.iter().filter_map(|&i| cmd.arg(i));
    let Some(first) = keys.next() else {
        let route = table.default_route();
        return Ok((route, table.routes[route].keyless_phase()));
    };
    let route = table.route_of(first);
    let phase = table.routes[route].phase_for(first);
    for key in keys {
        let other = table.route_of(key);
        let other_phase = table.routes[other].phase_for(key);
        if other_phase != phase {
            let (a, b) = (&table.routes[route], &table.routes[other]);
            let detail = if route == other {
                format!(
                    "route '{}' is ramping {}% of its keys to read-new: keys needing one side must share a hash tag",
                    a.name,
                    a.ramp_percent.unwrap_or(0)
                )
            } else {
                format!("'{}' is {}, '{}' is {}", a.name, phase, b.name, other_phase)
            };
            return Err(Refusal::CrossRoute { detail });
        }
    }
    Ok((route, phase))
}

/// The client's name for a command the table does not know (lowercase,
/// at most 128 bytes of it).
pub(super) fn display_name(cmd: &Command) -> String {
    String::from_utf8_lossy(&cmd.name()[..cmd.name().len().min(128)]).to_lowercase()
}

/// A table name as a client writes it: `config get`.
fn shown(name: &str) -> String {
    name.replace('|', " ")
}

/// The cache a SCAN runs on: a cursor only means something on the cache
/// that issued it, so an iteration stays there even if the route flips;
/// cursor 0 starts one on the route's read side.
fn scan_side(conn: &ConnView, cmd: &Command, cursor_at: usize, read_side: Side) -> Side {
    match conn.scan_side {
        Some(side) if cmd.arg(cursor_at) != Some(b"0") => side,
        _ => read_side,
    }
}

/// What [`how`] decides on.
struct Carried<'a> {
    spec: Option<&'static CommandSpec>,
    traits: &'a Traits,
    write: bool,
    phase: Phase,
    mirror: Option<Side>,
    /// How many keys it has.
    keys: usize,
    read_fallback: bool,
    tracking: bool,
}

/// How a routed command outside MULTI is carried (see [`How`]). The table
/// is looked at only for the keyspace-wide reads.
fn how(table: &RouteTable, c: &Carried<'_>, effect: Option<Effect>) -> How {
    let traits = c.traits;
    let split = || table.reads_split();
    match traits.keyspace_read {
        Some(KeyspaceRead::Keys) if split() => return How::Both(Merge::Keys),
        Some(KeyspaceRead::Scan) if split() => return How::Scan,
        Some(KeyspaceRead::DbSize) if split() => return How::Both(Merge::Count),
        Some(KeyspaceRead::RandomKey) if split() => return How::Both(Merge::RandomKey),
        _ if traits.counts_receivers && c.mirror.is_some() => return How::Publish,
        _ => {}
    }
    let keys_comparable = (1..=MAX_COMPARED_KEYS).contains(&c.keys);
    if let (Some(_), Some(effect)) = (c.mirror, effect) {
        How::Effect(effect)
    } else if c.mirror.is_some() {
        How::Mirror {
            // (An EVALSHA reaches the mirror as EVAL when the proxy saw
            // its body; a NOSCRIPT there differs, and its keys are copied.)
            compare: c.spec.is_some() && traits.comparable && keys_comparable,
            // Not for tracking clients: a read there would make the mirror
            // send invalidations too.
            probe: traits.updates_in_place && !c.tracking,
        }
    } else if c.read_fallback
        && !c.write
        && !traits.blocking
        && c.phase == Phase::ReadNew
        && c.keys == 1
        && !c.tracking
        && traits.falls_back
    {
        How::Fallback
    } else {
        // Tracking on the other cache would push its invalidations to the
        // client.
        let shadow = traits
            .shadow
            .filter(|_| !c.write && !traits.blocking && c.phase.mirror().is_some() && !c.tracking)
            .filter(|_| keys_comparable);
        How::Read { shadow }
    }
}

/// Decides what `cmd` (found in the table as `entry`, if it is) does.
pub(super) fn plan(
    table: &RouteTable,
    entry: Option<&'static Entry>,
    cmd: &Command,
    conn: &ConnView,
) -> Plan {
    let (kind, traits) = match entry {
        Some(e) => {
            let spec = e.spec;
            if commands::listed(spec, &table.deny) {
                let name = shown(spec.name);
                return Plan::Refuse(Refusal::Denied { name });
            }
            let kind = commands::classify(spec, cmd);
            let kind = if e.traits.admin && !matches!(kind, Kind::Unsupported(_)) {
                if !commands::listed(spec, &table.allow) {
                    let name = shown(spec.name);
                    return Plan::Refuse(Refusal::AdminNotAllowed { name });
                }
                if e.traits.admin_reads {
                    Kind::Read
                } else {
                    Kind::Write
                }
            } else {
                kind
            };
            (kind, e.traits)
        }
        None => match table.unknown {
            UnknownPolicy::Refuse => {
                let name = display_name(cmd);
                return Plan::Refuse(Refusal::Unknown { name });
            }
            UnknownPolicy::Write => (Kind::Write, Traits::default()),
            UnknownPolicy::Read => (Kind::Read, Traits::default()),
        },
    };
    let default_side = table.routes[table.default_route()]
        .keyless_phase()
        .authoritative();
    if conn.subscribed_resp2 {
        match kind {
            Kind::PubSub(_) | Kind::Quit | Kind::State(StateCmd::Reset) => {}
            _ if traits.ping && cmd.len() <= 2 => {
                let arg = cmd.arg(1).unwrap_or_default();
                let mut reply = format!("*2\r\n$4\r\npong\r\n${}\r\n", arg.len()).into_bytes();
                reply.extend_from_slice(arg);
                reply.extend_from_slice(b"\r\n");
                return Plan::Reply(Bytes::from(reply));
            }
            _ => {
                let name = entry.map_or_else(|| display_name(cmd), |e| e.spec.name.to_string());
                return Plan::Refuse(Refusal::Subscribed { name });
            }
        }
    }
    match kind {
        Kind::PubSub(what) => Plan::PubSub(what),
        Kind::Unsupported(reason) => {
            let name = entry.map_or_else(|| display_name(cmd), |e| shown(e.spec.name));
            Plan::Refuse(Refusal::Unsupported { name, reason })
        }
        Kind::Quit => Plan::Quit,
        Kind::State(state) => Plan::State(state, default_side),
        Kind::Transaction(t) => Plan::Tx(t, default_side),
        Kind::Read | Kind::Write => routed(table, entry, traits, kind == Kind::Write, cmd, conn),
    }
}

fn routed(
    table: &RouteTable,
    entry: Option<&'static Entry>,
    traits: Traits,
    write: bool,
    cmd: &Command,
    conn: &ConnView,
) -> Plan {
    let spec = entry.map(|e| e.spec);
    let positions = spec
        .map(|s| commands::key_positions(s, cmd))
        .unwrap_or_default();
    let (route_i, phase) = match resolve(table, cmd, &positions) {
        Ok(r) => r,
        Err(refusal) => return Plan::Refuse(refusal),
    };
    let route = &table.routes[route_i];
    let scan_side = traits
        .sticky_cursor
        .map(|at| scan_side(conn, cmd, at, phase.authoritative()));
    let authoritative = scan_side.unwrap_or(phase.authoritative());
    let arity_ok = spec.is_none_or(|s| commands::arity_ok(s, cmd.len()));
    // Mirroring a command Redis will reject for its arity only doubles the
    // error. Script and function libraries go to every cache some route
    // uses, so an FCALL or EVALSHA finds them wherever it runs.
    let mirror = phase
        .mirror()
        .or_else(|| {
            let other = authoritative.other();
            let everywhere = traits.loads_code || traits.keyless_write;
            (everywhere && table.uses(other)).then_some(other)
        })
        .filter(|_| write && arity_ok);
    let effect = match (spec, mirror) {
        (Some(s), Some(_)) => mirror::effect_of(s.name, cmd),
        _ => None,
    };
    let how = if conn.in_tx {
        How::Queue {
            effect,
            route: format!("route '{}' ({})", route.name, phase),
        }
    } else if traits.blocking && mirror.is_some() && effect.is_none() {
        return Plan::Refuse(Refusal::BlockingWrite {
            name: display_name(cmd),
            route: route.name.to_string(),
            phase,
        });
    } else {
        let carried = Carried {
            spec,
            traits: &traits,
            write,
            phase,
            mirror,
            keys: positions.len(),
            read_fallback: route.read_fallback,
            tracking: conn.tracking,
        };
        how(table, &carried, effect)
    };
    Plan::Routed(Routed {
        traits,
        spec,
        stats: route.stats.clone(),
        phase,
        authoritative,
        mirror,
        write,
        blocking: traits.blocking,
        arity_ok,
        positions,
        scan_side,
        shadow_fraction: route.shadow_reads,
        shadow_repair: route.shadow_repair,
        how,
        settling: route.settling,
        version: table.version,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
