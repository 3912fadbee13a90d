//! Per-command routing decisions: which side answers, which side mirrors,
//! and which commands the proxy answers itself.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::held::{Pending, TxItem};
use super::{compare, state, Outbound, Session, Target, Tx};
use crate::commands::{self, Kind, StateCmd, TxCmd};
use crate::config::UnknownPolicy;
use crate::mirror;
use crate::protocol::Command;
use crate::routing::{PerSide, Phase, RouteStats, RouteTable, Side};

/// The route a command's keys fall in and the phase they are served in, or
/// why they cannot be carried.
enum Resolved {
    Route(usize, Phase),
    CrossRoute(String),
}

/// Finds the route of the keys at `positions` (the default route when there
/// are none) and their phase (a ramped `read-new` decides per key). Keys
/// served in different phases cannot be served by one side.
fn resolve(table: &RouteTable, cmd: &Command, positions: &[usize]) -> Resolved {
    let mut keys = positions.iter().filter_map(|&i| cmd.arg(i));
    let Some(first) = keys.next() else {
        let route = table.default_route();
        return Resolved::Route(route, table.routes[route].keyless_phase());
    };
    let route = table.route_of(first);
    let phase = table.routes[route].phase_for(first);
    for key in keys {
        let other = table.route_of(key);
        let other_phase = table.routes[other].phase_for(key);
        if other_phase != phase {
            let (a, b) = (&table.routes[route], &table.routes[other]);
            let what = if route == other {
                format!(
                    "route '{}' is ramping {}% of its keys to read-new: keys needing one side must share a hash tag",
                    a.name,
                    a.ramp_percent.unwrap_or(0)
                )
            } else {
                format!("'{}' is {}, '{}' is {}", a.name, phase, b.name, other_phase)
            };
            return Resolved::CrossRoute(format!(
                "-CROSSROUTE keys in request don't hash to routes in the same phase ({what})\r\n"
            ));
        }
    }
    Resolved::Route(route, phase)
}

fn err(msg: String) -> Bytes {
    Bytes::from(format!("-ERR {}\r\n", msg.replace(['\r', '\n'], " ")))
}

fn display_name(cmd: &Command) -> String {
    String::from_utf8_lossy(&cmd.name()[..cmd.name().len().min(128)]).to_lowercase()
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn dispatch(&mut self, cmd: Command) {
        let table = self.shared.router.load();
        let (spec, kind) = match commands::lookup(&cmd) {
            Some(spec) => {
                let shown = || spec.name.replace('|', " ");
                if commands::listed(spec, &table.deny) {
                    return self.refuse_in_tx(err(format!(
                        "cutover: '{}' is refused by [commands] deny",
                        shown()
                    )));
                }
                let kind = commands::classify(spec, &cmd);
                if commands::is_admin(spec) && !matches!(kind, Kind::Unsupported(_)) {
                    if !commands::listed(spec, &table.allow) {
                        let upper = shown().to_uppercase();
                        let container = upper.split(' ').next().unwrap_or_default().to_string();
                        return self.refuse_in_tx(err(format!(
                            "cutover refuses '{}' by default (an admin command would reach one cache only, or change both behind the operator's back); add \"{upper}\" or \"{container}\" to [commands] allow to forward it",
                            shown()
                        )));
                    }
                    let kind = if commands::admin_reads(spec) {
                        Kind::Read
                    } else {
                        Kind::Write
                    };
                    (Some(spec), kind)
                } else {
                    (Some(spec), kind)
                }
            }
            None => match table.unknown {
                UnknownPolicy::Refuse => {
                    return self.local(err(format!(
                        "unknown command '{}' (not in cutover's command table from Redis {}; set [commands] unknown = \"write\" or \"read\" to forward it)",
                        display_name(&cmd),
                        commands::TABLE_REDIS_VERSION
                    )))
                }
                UnknownPolicy::Write => (None, Kind::Write),
                UnknownPolicy::Read => (None, Kind::Read),
            },
        };
        let default_side = table.routes[table.default_route()]
            .keyless_phase()
            .authoritative();
        if !self.subs.is_empty() && !self.resp3() {
            // The RESP2 subscribed state.
            match kind {
                Kind::PubSub(_) | Kind::Quit | Kind::State(StateCmd::Reset) => {}
                _ if spec.is_some_and(|s| s.name == "ping") && cmd.len() <= 2 => {
                    let arg = cmd.arg(1).unwrap_or_default();
                    let mut reply = format!("*2\r\n$4\r\npong\r\n${}\r\n", arg.len()).into_bytes();
                    reply.extend_from_slice(arg);
                    reply.extend_from_slice(b"\r\n");
                    return self.local(Bytes::from(reply));
                }
                _ => {
                    let name = spec.map_or_else(|| display_name(&cmd), |s| s.name.to_string());
                    return self.local(super::pubsub::subscribed_refusal(&name));
                }
            }
        }
        match kind {
            Kind::PubSub(what) => {
                drop(table);
                self.pubsub(what, &cmd)
            }
            Kind::Unsupported(reason) => {
                let name = spec.map_or_else(|| display_name(&cmd), |s| s.name.replace('|', " "));
                self.local(err(format!("cutover does not support '{name}': {reason}")))
            }
            Kind::Quit => {
                self.local(Bytes::from_static(b"+OK\r\n"));
                self.close_after_replies();
            }
            Kind::State(state) => self.send_state(state, &cmd, default_side),
            Kind::Transaction(t) => self.transaction(t, &cmd, &table, default_side),
            Kind::Read | Kind::Write => {
                let positions = spec
                    .map(|s| commands::key_positions(s, &cmd))
                    .unwrap_or_default();
                let (route, phase) = match resolve(&table, &cmd, &positions) {
                    Resolved::Route(r, phase) => (&table.routes[r], phase),
                    Resolved::CrossRoute(reply) => return self.refuse_in_tx(Bytes::from(reply)),
                };
                let blocking = spec.is_some_and(commands::is_blocking);
                let write = kind == Kind::Write;
                let mut authoritative = phase.authoritative();
                if spec.is_some_and(|s| s.name == "scan") {
                    // A cursor only means something on the cache that issued
                    // it: a scan stays on its side even if the route flips.
                    if cmd.arg(1) == Some(b"0") || self.scan_side.is_none() {
                        self.scan_side = Some(authoritative);
                    }
                    authoritative = self.scan_side.unwrap_or(authoritative);
                }
                // Mirroring a command Redis will reject for its arity only
                // doubles the error.
                // Script and function libraries go to every cache some route
                // uses, so an FCALL or EVALSHA finds them wherever it runs.
                let mirror = phase
                    .mirror()
                    .or_else(|| {
                        let everywhere = spec.is_some_and(commands::loads_code);
                        let other = authoritative.other();
                        (everywhere && table.uses(other)).then_some(other)
                    })
                    .filter(|_| write && spec.is_none_or(|s| commands::arity_ok(s, cmd.len())));
                let body_at = match spec.map(|s| s.name) {
                    Some("eval" | "eval_ro") => Some(1),
                    Some("script|load") => Some(2),
                    _ => None,
                };
                if let Some(body) = body_at.and_then(|i| cmd.arg(i)) {
                    self.shared.scripts.remember(body);
                }
                let effect = match (spec, mirror) {
                    (Some(s), Some(_)) => mirror::effect_of(s.name, &cmd),
                    _ => None,
                };
                if self.tx.is_some() {
                    let route_desc = format!("route '{}' ({})", route.name, phase);
                    let stats = route.stats.clone();
                    drop(table);
                    let arity_ok = spec.is_none_or(|s| commands::arity_ok(s, cmd.len()));
                    return self.queue_in_tx(
                        cmd,
                        authoritative,
                        mirror,
                        effect,
                        stats,
                        arity_ok,
                        route_desc,
                    );
                }
                if blocking && mirror.is_some() && effect.is_none() {
                    return self.local(err(format!(
                        "cutover: blocking write '{}' on route '{}' in {} is not supported (its effect cannot be mirrored)",
                        display_name(&cmd),
                        route.name,
                        phase
                    )));
                }
                RouteStats::bump(if write {
                    &route.stats.writes
                } else {
                    &route.stats.reads
                });
                let stats = route.stats.clone();
                let (shadow_reads, shadow_repair) = (route.shadow_reads, route.shadow_repair);
                let read_fallback = route.read_fallback;
                drop(table);
                if spec.is_some_and(|s| s.name == "client|caching") {
                    self.caching = Some((authoritative, cmd.clone()));
                } else {
                    self.place_caching(authoritative);
                }
                match (mirror, effect) {
                    (Some(m), Some(effect)) => {
                        let ticket = self.defer_mirror(
                            m,
                            Pending::One {
                                effect,
                                cmd: cmd.clone(),
                                stats: stats.clone(),
                            },
                            (!blocking).then(|| super::keys_at(&cmd, &positions)),
                        );
                        // Reported once its keys are held (see InFlight).
                        self.note_write(&cmd, &positions);
                        let out = Outbound::from(Target::Effect(ticket))
                            .blocking(blocking)
                            .routed(&stats, phase);
                        self.send(authoritative, &cmd, out);
                    }
                    (Some(m), None) => {
                        let evalsha = spec.is_some_and(|s| s.name == "evalsha");
                        // An EVALSHA the mirror may answer NOSCRIPT (and run
                        // again as EVAL) is not compared.
                        let compare = spec
                            .filter(|s| {
                                !evalsha
                                    && self.held.is_empty()
                                    && compare::comparable(s)
                                    && compare::key_count_ok(positions.len())
                            })
                            .map(|s| self.compare_open(s, &cmd, &stats, authoritative));
                        let keys = super::keys_at(&cmd, &positions);
                        // In flight until both caches answered; reported
                        // once held (see InFlight).
                        let hold = self.shared.repairer.inflight.hold(keys.clone());
                        let out = Outbound::from(Target::Client { state: false })
                            .blocking(blocking)
                            .routed(&stats, phase)
                            .compared(compare)
                            .holding(hold);
                        self.send(authoritative, &cmd, out);
                        if let Some(id) = compare {
                            // A key changed in place: ask the mirror first
                            // whether it has it at all.
                            // (Not for tracking clients: a read there would
                            // make the mirror send invalidations too.)
                            let in_place = spec.is_some_and(commands::updates_in_place)
                                && !self.state.is_tracking();
                            let reachable =
                                !self.sides[m].is_idle() || self.shared.upstream(m).may_try();
                            if let Some(key) = positions.first().and_then(|&i| cmd.arg(i)) {
                                if in_place && reachable {
                                    let probe = Command::from_args(&[&b"EXISTS"[..], key]);
                                    self.send(m, &probe, Target::Probe(id));
                                }
                            }
                        }
                        let sent = self.mirror(m, &cmd, stats, keys, evalsha, compare);
                        self.note_write(&cmd, &positions);
                        if let Some(id) = compare {
                            if sent.is_none() {
                                self.compare_drop(id);
                            }
                        }
                    }
                    (None, _)
                        if read_fallback
                            && !write
                            && !blocking
                            && phase == Phase::ReadNew
                            && positions.len() == 1
                            && !self.state.is_tracking()
                            && spec.is_some_and(|s| super::fallback::falls_back(s.name)) =>
                    {
                        let key = positions.first().and_then(|&i| cmd.arg_bytes(i));
                        let target = match key {
                            Some(key) => {
                                Target::FallbackNew(Box::new(super::fallback::FallbackRead {
                                    cmd: cmd.clone(),
                                    key,
                                    db: self.current_db(),
                                    stats: stats.clone(),
                                }))
                            }
                            None => Target::Client { state: false },
                        };
                        let out = Outbound::from(target)
                            .blocking(blocking)
                            .routed(&stats, phase);
                        self.send(authoritative, &cmd, out);
                    }
                    (None, _) => {
                        // A read in a dual phase may be shadowed to the
                        // other cache (never behind this client's held
                        // writes, which it would overtake there).
                        let other = authoritative.other();
                        let shadow = spec
                            .filter(|_| {
                                !write
                                    && !blocking
                                    && phase.mirror().is_some()
                                    && self.held.is_empty()
                                    // Tracking there would push another
                                    // cache's invalidations to the client.
                                    && !self.state.is_tracking()
                                    && (!self.sides[other].is_idle()
                                        || self.shared.upstream(other).may_try())
                            })
                            .and_then(|s| Some((s, crate::shadow::order_for(s.name)?)))
                            .filter(|_| compare::key_count_ok(positions.len()))
                            .and_then(|(s, order)| {
                                Some((s, order, self.shadow_sample(shadow_reads)?))
                            });
                        let out = Outbound::from(Target::Client { state: false })
                            .blocking(blocking)
                            .routed(&stats, phase);
                        let Some((s, order, slot)) = shadow else {
                            self.send(authoritative, &cmd, out);
                            return;
                        };
                        RouteStats::bump(&stats.shadow_reads);
                        let id = self.shadow_open(
                            s,
                            &cmd,
                            &stats,
                            authoritative,
                            (order, shadow_repair),
                        );
                        self.send(authoritative, &cmd, out.compared(Some(id)));
                        let shadow = Outbound::from(Target::Shadow(slot)).compared(Some(id));
                        if self.send(other, &cmd, shadow).is_none() {
                            self.compare_drop(id);
                        }
                    }
                }
            }
        }
    }

    /// A command refused by the proxy: inside MULTI it also aborts the
    /// transaction, as a queueing error does in Redis.
    pub(super) fn refuse_in_tx(&mut self, reply: Bytes) {
        if let Some(tx) = &mut self.tx {
            tx.aborted = true;
        }
        self.local(reply)
    }

    /// Connection-state commands go to every connection the client has open,
    /// the reply from the default route's read side; connections opened later
    /// get the state replayed.
    fn send_state(&mut self, kind: StateCmd, cmd: &Command, reply_side: Side) {
        if self.tx.is_some() && kind != StateCmd::Reset {
            return self.refuse_in_tx(err(format!(
                "cutover: '{}' inside MULTI is not supported (connection state must be known when it is sent)",
                display_name(cmd)
            )));
        }
        if kind == StateCmd::Reset {
            // RESET also drops every subscription, silently.
            self.tx = None;
            self.watch_side = None;
            self.subs.clear();
            self.sub_count = PerSide::default();
        }
        // Sent before it is recorded as pending, so a connection this opens
        // is not set up with the very command it is about to carry.
        self.send(reply_side, cmd, Target::Client { state: true });
        self.pending_state
            .push_back((reply_side, kind, cmd.clone()));
        let other = reply_side.other();
        let own_credentials = self.shared.upstreams[other].config.password.is_some();
        if !self.sides[other].is_idle() {
            if let Some(cmd) = state::for_other_side(kind, cmd, own_credentials) {
                self.send(other, &cmd, Target::Quiet("connection state"));
            }
        }
        if kind == StateCmd::Reset {
            // RESET logs the upstream connection out and selects db 0:
            // give it back the proxy's own credentials and database.
            for side in Side::BOTH {
                if self.sides[side].is_idle() {
                    continue;
                }
                let upstream = self.shared.upstream(side);
                let mut steps = upstream.base_setup();
                if upstream.config.db != 0 {
                    let db = upstream.config.db.to_string();
                    steps.push(("SELECT", Command::from_args(&[b"SELECT", db.as_bytes()])));
                }
                for (_, step) in steps {
                    self.send(side, &step, Target::Quiet("connection state"));
                }
            }
        }
    }

    /// A command inside MULTI. It is sent to the transaction's side (which
    /// the first command decides) and its write, if mirrored, held for the
    /// mirror's MULTI block. A command served by the other side is not sent:
    /// it is answered QUEUED and EXEC fails for the whole block, like
    /// CROSSSLOT in a Redis cluster.
    #[allow(clippy::too_many_arguments)]
    fn queue_in_tx(
        &mut self,
        cmd: Command,
        authoritative: Side,
        mirror: Option<Side>,
        effect: Option<mirror::Effect>,
        stats: Arc<RouteStats>,
        arity_ok: bool,
        route_desc: String,
    ) {
        let Some(side) = self.tx_side(authoritative) else {
            return self.refuse_in_tx(err(format!(
                "cutover: the connection to the cache serving this MULTI was lost; '{}' not queued",
                display_name(&cmd)
            )));
        };
        if side != authoritative && arity_ok {
            let tx = self.tx.as_mut().expect("in a transaction");
            tx.crossroute.get_or_insert_with(|| {
                format!(
                    "-CROSSROUTE Transaction discarded: '{}' on {route_desc} is served by the {authoritative} cache, earlier commands by the {side} cache\r\n",
                    display_name(&cmd)
                )
            });
            return self.local(Bytes::from_static(b"+QUEUED\r\n"));
        }
        let tx = self.tx.as_mut().expect("in a transaction");
        let index = tx.queued;
        tx.queued += 1;
        if let Some(m) = mirror.filter(|_| side == authoritative) {
            debug_assert_ne!(m, side);
            tx.mirror.push(TxItem {
                index,
                cmd: cmd.clone(),
                effect,
                stats,
            });
        }
        self.send(side, &cmd, Target::Client { state: false });
    }

    /// The side of the open transaction, fixed to `want` (and MULTI sent
    /// there) if no command decided it yet. `None` when its connection was
    /// lost.
    fn tx_side(&mut self, want: Side) -> Option<Side> {
        let tx = self.tx.as_mut()?;
        if tx.lost {
            return None;
        }
        if let Some(side) = tx.side {
            return Some(side);
        }
        tx.side = Some(want);
        self.send(
            want,
            &Command::from_args(&[b"MULTI"]),
            Target::Quiet("MULTI"),
        );
        Some(want)
    }

    fn transaction(&mut self, t: TxCmd, cmd: &Command, table: &RouteTable, default_side: Side) {
        let client = || Target::Client { state: false };
        match t {
            TxCmd::Multi => {
                if self.tx.is_some() {
                    return self.local(Bytes::from_static(
                        b"-ERR MULTI calls can not be nested\r\n",
                    ));
                }
                // After WATCH the side is known: MULTI goes there now.
                match self.watch_side {
                    Some(side) => {
                        self.tx = Some(Tx {
                            side: Some(side),
                            ..Tx::default()
                        });
                        self.send(side, cmd, client());
                    }
                    None => {
                        self.tx = Some(Tx::default());
                        self.local(Bytes::from_static(b"+OK\r\n"));
                    }
                }
            }
            TxCmd::Exec | TxCmd::Discard => {
                self.watch_side = None;
                let Some(tx) = self.tx.take() else {
                    {
                        self.send(default_side, cmd, client());
                        return;
                    }
                };
                let discard = |s: &mut Self| {
                    if let (Some(side), false) = (tx.side, tx.lost) {
                        s.send(
                            side,
                            &Command::from_args(&[b"DISCARD"]),
                            Target::Quiet("DISCARD of a transaction that cannot run"),
                        );
                    }
                };
                if t == TxCmd::Discard {
                    return match tx.side.filter(|_| !tx.lost) {
                        Some(side) => {
                            self.send(side, cmd, client());
                        }
                        None => self.local(Bytes::from_static(b"+OK\r\n")),
                    };
                }
                if tx.aborted {
                    discard(self);
                    return self.local(Bytes::from_static(
                        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                    ));
                }
                if let Some(reply) = &tx.crossroute {
                    discard(self);
                    return self.local(Bytes::from(reply.clone()));
                }
                let Some(side) = tx.side else {
                    // Nothing queued and nothing watched: nothing to run.
                    return self.local(Bytes::from_static(b"*0\r\n"));
                };
                if tx.mirror.is_empty() {
                    {
                        self.send(side, cmd, client());
                        return;
                    }
                }
                let mirror_side = side.other();
                let keys = tx
                    .mirror
                    .iter()
                    .flat_map(|item| super::written_keys(&item.cmd))
                    .collect();
                let ticket = self.defer_mirror(mirror_side, Pending::Tx(tx.mirror), Some(keys));
                self.send(side, cmd, Target::Effect(ticket));
            }
            TxCmd::Watch => {
                if self.tx.is_some() {
                    return self.local(Bytes::from_static(
                        b"-ERR WATCH inside MULTI is not allowed\r\n",
                    ));
                }
                let positions: Vec<usize> = (1..cmd.len()).collect();
                let side = match resolve(table, cmd, &positions) {
                    Resolved::Route(_, phase) => phase.authoritative(),
                    Resolved::CrossRoute(reply) => return self.local(Bytes::from(reply)),
                };
                if self.watch_side.is_some_and(|w| w != side) {
                    return self.local(err(
                        "cutover: WATCH of keys served by a different cache than the keys already watched".into(),
                    ));
                }
                self.watch_side = Some(side);
                self.send(side, cmd, client());
            }
            TxCmd::Unwatch => {
                if self.tx.is_some() {
                    // Queued like any command.
                    return match self.tx_side(default_side) {
                        Some(side) => {
                            self.tx.as_mut().expect("in a transaction").queued += 1;
                            self.send(side, cmd, client());
                        }
                        None => self.refuse_in_tx(err(
                            "cutover: the connection to the cache serving this MULTI was lost"
                                .into(),
                        )),
                    };
                }
                let side = self.watch_side.take().unwrap_or(default_side);
                self.send(side, cmd, client());
            }
        }
    }
}
