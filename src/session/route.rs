//! Executing a command's [`Plan`]: one small function per strategy. The
//! decisions are taken in `plan`; what is decided here is only what
//! depends on the moment (held writes, a reachable mirror, sampling).

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::held::Pending;
use super::moving::{Movable, Stale};
use super::plan::{self, ConnView, How, Merge, Plan, Routed};
use super::refusal::Refusal;
use super::seam;
use super::{Outbound, Session, Target};
use crate::commands;
use crate::mirror;
use crate::protocol::Command;
use crate::routing::{RouteStats, Side};

/// Keys whose HSCAN/SSCAN/ZSCAN iteration a connection keeps pinned.
const MAX_KEY_SCANS: usize = 1024;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn dispatch(&mut self, cmd: Command) {
        let entry = commands::entry(&cmd);
        if self.answer_locally(entry, &cmd) {
            return;
        }
        let cmd = match self.shared_hello(entry, &cmd) {
            seam::Hello::Other if !self.ready_for(entry, &cmd) => return,
            seam::Hello::Other => cmd,
            seam::Hello::Done => return,
            seam::Hello::Send(hello) => hello,
        };
        if let Some(e) = entry.filter(|e| e.traits.cluster_face && self.tx.open.is_none()) {
            if let Some(face) = &self.shared.cluster_face {
                let args: Vec<&[u8]> = cmd.args().collect();
                let reply = face.answer(e.spec.name, &args, self.resp3(), self.reached);
                return self.local(reply);
            }
        }
        let conn = ConnView {
            in_tx: self.tx.open.is_some(),
            subscribed_resp2: !self.subs.is_empty() && !self.resp3(),
            tracking: self.state.is_tracking(),
            scan_side: self.scan_side_of(entry, &cmd),
        };
        // Inside a transaction (or after WATCH), the table it began under.
        let (table, pinned) = match self.tx.table() {
            Some(pinned) => (arc_swap::Guard::from_inner(pinned), true),
            None => (self.shared.router.load(), false),
        };
        match plan::plan(&table, entry, &cmd, &conn) {
            // A flip is moving blocked commands off the cache this route
            // read from: this waits (and all behind it) until they have.
            Plan::Routed(r) if r.settling && !pinned => self.stall(cmd),
            Plan::Tx(..) if !pinned && table.settling() => self.stall(cmd),
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
                self.execute(cmd, r)
            }
        }
    }

    fn execute(&mut self, cmd: Command, r: Routed) {
        if r.write {
            let keys = r.positions.iter().filter_map(|&i| cmd.arg(i));
            r.stats.note_window_write(self.current_db(), keys);
        }
        if self.shared.any_cluster() {
            if r.positions.len() > 1 {
                note_cross_slot(&cmd, &r);
            }
            if let Some(tx) = self.tx.open.as_mut() {
                note_tx_slot(tx, &cmd, &r);
            }
        }
        if let Some(body) = r.traits.script_body_at.and_then(|i| cmd.arg(i)) {
            self.shared.scripts.remember(body);
        }
        if let Some(side) = r.scan_side {
            self.pin_scan(r.traits.sticky_cursor, &cmd, side);
        }
        if let How::Queue { effect, route } = r.how {
            return self.queue_in_tx(
                cmd,
                r.authoritative,
                r.mirror,
                effect,
                r.stats,
                r.arity_ok,
                route,
            );
        }
        let movable = match self.movable(&cmd, &r) {
            Ok(m) => m,
            // Routed by a table a flip replaced meanwhile: routed again.
            Err(Stale) => return self.dispatch(cmd),
        };
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
        let mut out = Outbound::from(Target::Client { state: false })
            .blocking(r.blocking)
            .routed(&r.stats, r.phase)
            .movable(movable);
        match (&r.how, r.mirror) {
            (How::Effect(effect), Some(m)) => {
                let movable = out.movable.take();
                self.execute_effect(cmd, &r, (effect.clone(), m), movable)
            }
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
            _ if r.traits.kills_script => self.execute_kill(cmd, &r, out),
            (How::Both(merge), _) => self.execute_keys(&cmd, out, *merge),
            (How::Publish, Some(m)) => self.execute_publish(cmd, &r, m, out),
            (How::Scan, _) => self.execute_scan(&cmd, out),
            _ => {
                self.send(r.authoritative, &cmd, out);
            }
        }
    }

    /// `SCRIPT KILL`, `FUNCTION KILL`: a script a client runs in a dual
    /// phase runs on both caches, so the kill goes to both (the other's
    /// `NOTBUSY` is only logged); the reply is the read side's.
    fn execute_kill(&mut self, cmd: Command, r: &Routed, out: Outbound) {
        let other = r.authoritative.other();
        self.send(r.authoritative, &cmd, out);
        if !self.sides[other].is_idle() || self.shared.upstream(other).may_try() {
            self.send(other, &cmd, Target::Quiet("script kill"));
        }
    }

    /// A write mirrored as its effect: held for the mirror until the
    /// answering side's reply says what happened.
    fn execute_effect(
        &mut self,
        cmd: Command,
        r: &Routed,
        (effect, m): (mirror::Effect, Side),
        movable: Option<Box<Movable>>,
    ) {
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
            .routed(&r.stats, r.phase)
            .movable(movable);
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
        let hold = super::expect::Unconfirmed {
            db: self.current_db(),
            keys: self.shared.repairer.inflight.hold(keys.clone()),
        };
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

    /// `PUBLISH` in a dual phase: both caches' subscribers count. Behind
    /// this client's held writes (which it must not overtake on the
    /// mirror), or with the mirror unreachable, it is mirrored as before
    /// and answered with the answering side's count.
    fn execute_publish(&mut self, cmd: Command, r: &Routed, m: Side, out: Outbound) {
        let reachable = !self.sides[m].is_idle() || self.shared.upstream(m).may_try();
        if self.held.is_empty() && reachable && !self.sides[m].diverged {
            self.execute_keys(&cmd, out, Merge::Sum(r.authoritative));
        } else {
            self.execute_mirrored(cmd, r, m, (false, false), out);
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
        order: crate::compare::Order,
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

    /// The cache the iteration `cmd` continues runs on: the connection's
    /// SCAN, or the HSCAN/SSCAN/ZSCAN of its key in the current database.
    fn scan_side_of(&self, entry: Option<&commands::Entry>, cmd: &Command) -> Option<Side> {
        match entry?.traits.sticky_cursor? {
            1 => self.scan_side,
            _ => self
                .key_scans
                .get(&(self.current_db(), cmd.arg_bytes(1)?))
                .copied(),
        }
    }

    /// Records the cache an iteration runs on. Key iterations are kept for
    /// at most [`MAX_KEY_SCANS`] keys at once (past it every key's pin is
    /// dropped: an iteration over one of them that spans a flip continues
    /// on the route's read side).
    fn pin_scan(&mut self, cursor_at: Option<usize>, cmd: &Command, side: Side) {
        match cursor_at {
            Some(1) => self.scan_side = Some(side),
            Some(_) => {
                let Some(key) = cmd.arg_bytes(1) else { return };
                if self.key_scans.len() >= MAX_KEY_SCANS {
                    self.key_scans.clear();
                }
                self.key_scans.insert((self.current_db(), key), side);
            }
            None => {}
        }
    }

    /// Answers a refusal; inside MULTI the ones that Redis would count as
    /// queueing errors abort the transaction.
    pub(super) fn refuse(&mut self, refusal: Refusal) {
        if refusal.aborts_tx() {
            if let Some(tx) = &mut self.tx.open {
                tx.aborted = true;
            }
        }
        self.local(refusal.reply())
    }
}

/// Counts an open transaction once for its route when a command queued in
/// it has a key in another hash slot than the transaction's first key: a
/// Redis Cluster refuses it (`-CROSSSLOT`, then `EXECABORT`).
fn note_tx_slot(tx: &mut super::tx::Tx, cmd: &Command, r: &Routed) {
    for key in r.positions.iter().filter_map(|&i| cmd.arg(i)) {
        let slot = crate::routing::slot::key_slot(key);
        match tx.slot {
            None => tx.slot = Some((slot, false)),
            Some((first, false)) if first != slot => {
                tx.slot = Some((first, true));
                RouteStats::bump(&r.stats.cross_slot);
                let key = String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned();
                let name = plan::display_name(cmd).to_uppercase();
                let sample = format!("MULTI ... {name} {key} (slots {first} and {slot})");
                let mut seen = r
                    .stats
                    .cross_slot_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                seen.record("multi", sample);
                return;
            }
            Some((_, true)) => return,
            Some(_) => {}
        }
    }
}

/// Counts `cmd` for its route when its keys span hash slots and no
/// cluster connection splits it: a clustered cache refuses it
/// (`-CROSSSLOT`), so as the mirror it is copied instead, and answering it
/// fails.
fn note_cross_slot(cmd: &Command, r: &Routed) {
    let slot = |i: &usize| cmd.arg(*i).map(crate::routing::slot::key_slot);
    let first = r.positions.first().and_then(slot);
    if r.positions.iter().all(|i| slot(i) == first) {
        return;
    }
    let name = r.spec.map_or("?", |s| s.name);
    if crate::upstream::cluster::splits(name) {
        return;
    }
    RouteStats::bump(&r.stats.cross_slot);
    let mut sample = plan::display_name(cmd).to_uppercase();
    for i in r.positions.iter().take(4) {
        let key = cmd.arg(*i).unwrap_or_default();
        let key = String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned();
        sample.push(' ');
        sample.push_str(&key);
    }
    let mut seen = r
        .stats
        .cross_slot_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    seen.record(name, sample);
}
