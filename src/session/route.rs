//! Executing a command's [`Plan`]: one small function per strategy. The
//! decisions are taken in `plan`; what is decided here is only what
//! depends on the moment (held writes, a reachable mirror, sampling).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::held::{Pending, TxItem};
use super::plan::{self, display_name, ConnView, How, Plan, Routed};
use super::refusal::Refusal;
use super::{state, Outbound, Session, Target, Tx};
use crate::commands::{self, StateCmd, TxCmd};
use crate::mirror;
use crate::protocol::Command;
use crate::routing::{PerSide, RouteStats, RouteTable, Side};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn dispatch(&mut self, cmd: Command) {
        let entry = commands::entry(&cmd);
        let conn = ConnView {
            in_tx: self.tx.is_some(),
            subscribed_resp2: !self.subs.is_empty() && !self.resp3(),
            tracking: self.state.is_tracking(),
            scan_side: self.scan_side,
        };
        let table = self.shared.router.load();
        match plan::plan(&table, entry, &cmd, &conn) {
            Plan::Refuse(refusal) => self.refuse(refusal),
            Plan::Reply(reply) => self.local(reply),
            Plan::Quit => {
                self.local(Bytes::from_static(b"+OK\r\n"));
                self.close_after_replies();
            }
            Plan::PubSub(what) => {
                drop(table);
                self.pubsub(what, &cmd)
            }
            Plan::State(state, side) => self.send_state(state, &cmd, side),
            Plan::Tx(t, default_side) => self.transaction(t, &cmd, &table, default_side),
            Plan::Routed(r) => {
                drop(table);
                self.execute(cmd, *r)
            }
        }
    }

    fn execute(&mut self, cmd: Command, r: Routed) {
        if let Some(body) = r.traits.script_body_at.and_then(|i| cmd.arg(i)) {
            self.shared.scripts.remember(body);
        }
        if r.scan_side.is_some() {
            self.scan_side = r.scan_side;
        }
        if let How::Queue(effect) = r.how {
            let route_desc = format!("route '{}' ({})", r.route_name, r.phase);
            return self.queue_in_tx(
                cmd,
                r.authoritative,
                r.mirror,
                effect,
                r.stats,
                r.arity_ok,
                route_desc,
            );
        }
        RouteStats::bump(if r.write {
            &r.stats.writes
        } else {
            &r.stats.reads
        });
        if r.traits.client_caching {
            self.caching = Some((r.authoritative, cmd.clone()));
        } else {
            self.place_caching(r.authoritative);
        }
        let out = Outbound::from(Target::Client { state: false })
            .blocking(r.blocking)
            .routed(&r.stats, r.phase);
        match (&r.how, r.mirror) {
            (How::Effect(effect), Some(m)) => self.execute_effect(cmd, &r, effect.clone(), m),
            (How::Mirror { compare, probe }, Some(m)) => {
                self.execute_mirrored(cmd, &r, m, (*compare, *probe), out)
            }
            (How::Fallback, _) => self.execute_fallback(cmd, &r, out),
            (
                How::Read {
                    shadow: Some(order),
                },
                _,
            ) => self.execute_shadowed(cmd, &r, *order, out),
            _ => {
                self.send(r.authoritative, &cmd, out);
            }
        }
    }

    /// A write mirrored as its effect: held for the mirror until the
    /// answering side's reply says what happened.
    fn execute_effect(&mut self, cmd: Command, r: &Routed, effect: mirror::Effect, m: Side) {
        let keys = (!r.blocking).then(|| super::keys_at(&cmd, &r.positions));
        let pending = Pending::One {
            effect,
            cmd: cmd.clone(),
            stats: r.stats.clone(),
        };
        let ticket = self.defer_mirror(m, pending, keys);
        // Reported once its keys are held (see InFlight).
        self.note_write(&cmd, &r.positions);
        let out = Outbound::from(Target::Effect(ticket))
            .blocking(r.blocking)
            .routed(&r.stats, r.phase);
        self.send(r.authoritative, &cmd, out);
    }

    /// A write sent verbatim to both sides, its replies compared when it is
    /// not behind held writes.
    fn execute_mirrored(
        &mut self,
        cmd: Command,
        r: &Routed,
        m: Side,
        (compare, probe): (bool, bool),
        out: Outbound,
    ) {
        let compare = r
            .spec
            .filter(|_| compare && self.held.is_empty())
            .map(|spec| self.compare_open(spec, &cmd, &r.stats, r.authoritative));
        let keys = super::keys_at(&cmd, &r.positions);
        // In flight until both caches answered; reported once held (see
        // InFlight).
        let hold = self.shared.repairer.inflight.hold(keys.clone());
        self.send(r.authoritative, &cmd, out.compared(compare).holding(hold));
        if let Some(id) = compare.filter(|_| probe) {
            // A key changed in place: ask the mirror first whether it has
            // it at all.
            let reachable = !self.sides[m].is_idle() || self.shared.upstream(m).may_try();
            if let Some(key) = r.positions.first().and_then(|&i| cmd.arg(i)) {
                if reachable {
                    let probe = Command::from_args(&[&b"EXISTS"[..], key]);
                    self.send(m, &probe, Target::Probe(id));
                }
            }
        }
        let evalsha = r.traits.evalsha;
        let sent = self.mirror(m, &cmd, r.stats.clone(), keys, evalsha, compare);
        self.note_write(&cmd, &r.positions);
        if let (Some(id), None) = (compare, sent) {
            self.compare_drop(id);
        }
    }

    /// A read on new that old may answer instead when new has nothing.
    fn execute_fallback(&mut self, cmd: Command, r: &Routed, out: Outbound) {
        let key = r.positions.first().and_then(|&i| cmd.arg_bytes(i));
        let target = match key {
            Some(key) => Target::FallbackNew(Box::new(super::fallback::FallbackRead {
                cmd: cmd.clone(),
                key,
                db: self.current_db(),
                stats: r.stats.clone(),
            })),
            None => Target::Client { state: false },
        };
        self.send(r.authoritative, &cmd, Outbound { target, ..out });
    }

    /// A read that may also go to the other cache, off the client's path,
    /// and be compared (never behind this client's held writes, which it
    /// would overtake there, and never into a cache in backoff).
    fn execute_shadowed(
        &mut self,
        cmd: Command,
        r: &Routed,
        order: crate::shadow::Order,
        out: Outbound,
    ) {
        let other = r.authoritative.other();
        let eligible = self.held.is_empty()
            && (!self.sides[other].is_idle() || self.shared.upstream(other).may_try());
        let slot = eligible
            .then(|| self.shadow_sample(r.shadow_fraction))
            .flatten();
        let (Some(slot), Some(spec)) = (slot, r.spec) else {
            self.send(r.authoritative, &cmd, out);
            return;
        };
        RouteStats::bump(&r.stats.shadow_reads);
        let how = (order, r.shadow_repair);
        let id = self.shadow_open(spec, &cmd, &r.stats, r.authoritative, how);
        self.send(r.authoritative, &cmd, out.compared(Some(id)));
        let shadow = Outbound::from(Target::Shadow(slot)).compared(Some(id));
        if self.send(other, &cmd, shadow).is_none() {
            self.compare_drop(id);
        }
    }

    /// Answers a refusal; inside MULTI the ones that Redis would count as
    /// queueing errors abort the transaction.
    pub(super) fn refuse(&mut self, refusal: Refusal) {
        if refusal.aborts_tx() {
            if let Some(tx) = &mut self.tx {
                tx.aborted = true;
            }
        }
        self.local(refusal.reply())
    }

    /// Connection-state commands go to every connection the client has open,
    /// the reply from the default route's read side; connections opened later
    /// get the state replayed.
    fn send_state(&mut self, kind: StateCmd, cmd: &Command, reply_side: Side) {
        if self.tx.is_some() && kind != StateCmd::Reset {
            return self.refuse(Refusal::StateInMulti {
                name: display_name(cmd),
            });
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
            return self.refuse(Refusal::TxLost {
                name: Some(display_name(&cmd)),
            });
        };
        if side != authoritative && arity_ok {
            let tx = self.tx.as_mut().expect("in a transaction");
            tx.crossroute.get_or_insert_with(|| Refusal::CrossRouteTx {
                name: display_name(&cmd),
                route: route_desc,
                authoritative,
                side,
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
                    return self.refuse(Refusal::NestedMulti);
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
                    return self.refuse(Refusal::ExecAbort);
                }
                if let Some(refusal) = tx.crossroute.clone() {
                    discard(self);
                    return self.refuse(refusal);
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
                    return self.refuse(Refusal::WatchInMulti);
                }
                let positions: Vec<usize> = (1..cmd.len()).collect();
                let side = match plan::resolve(table, cmd, &positions) {
                    Ok((_, phase)) => phase.authoritative(),
                    // Not queued (WATCH inside MULTI was refused above).
                    Err(refusal) => return self.local(refusal.reply()),
                };
                if self.watch_side.is_some_and(|w| w != side) {
                    return self.refuse(Refusal::WatchOtherCache);
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
                        None => self.refuse(Refusal::TxLost { name: None }),
                    };
                }
                let side = self.watch_side.take().unwrap_or(default_side);
                self.send(side, cmd, client());
            }
        }
    }
}
