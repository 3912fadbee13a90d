//! Mirrored writes that must wait for an authoritative reply.
//!
//! A write mirrored as its effect (a blocking pop, SPOP, XADD `*`, a MULTI
//! block) can only be sent to the mirror once the authoritative side has
//! answered. Mirrored writes the client sent after it wait behind it, so the
//! mirror applies this client's writes in the order the authoritative side
//! did. The wait costs the client nothing: those writes are queued behind
//! the same command on the authoritative connection too.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{
    written_keys, Check, Element, Entered, Keys, MirrorWrite, Outbound, Sent, Session, Target,
};
use crate::mirror::{self, Effect};
use crate::protocol::{value, Command, Value};
use crate::repair::InFlight;
use crate::routing::{BlockedHold, RouteStats, Side};

/// A write queued in a mirrored MULTI: its place in the EXEC reply.
#[derive(Debug)]
pub(super) struct TxItem {
    pub(super) index: usize,
    pub(super) cmd: Command,
    pub(super) effect: Option<Effect>,
    pub(super) stats: Arc<RouteStats>,
}

#[derive(Debug)]
pub(super) enum Pending {
    One {
        effect: Effect,
        cmd: Command,
        stats: Arc<RouteStats>,
    },
    Tx(Vec<TxItem>),
}

/// Commands for the mirror, sent together (a MULTI block is never split).
type Batch = Vec<(Command, Target)>;

#[derive(Debug)]
enum Work {
    Waiting(Pending),
    Ready(Batch),
}

#[derive(Debug)]
pub(super) struct Held {
    ticket: u64,
    side: Side,
    /// The database the client was in when it sent the write.
    db: Option<u32>,
    /// The keys of a waiting non-blocking effect, counted in flight: the
    /// authoritative side may already have applied it.
    _keys: Option<Entered>,
    work: Work,
}

/// This session's held mirrored writes, in the order the client sent them,
/// and the tickets that name the authoritative replies they wait for.
#[derive(Debug, Default)]
pub(super) struct MirrorQueue {
    held: VecDeque<Held>,
    /// The last ticket given out (also names subscription waits).
    ticket: u64,
}

impl MirrorQueue {
    /// Nothing held: a mirrored write may go out at once, a read may be
    /// shadowed or fall back without overtaking one.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(super) fn next_ticket(&mut self) -> u64 {
        self.ticket += 1;
        self.ticket
    }

    /// Holds mirrored commands ready to go, behind those waiting.
    fn push_ready(&mut self, side: Side, db: Option<u32>, batch: Batch) {
        let ticket = self.next_ticket();
        self.held.push_back(Held {
            ticket,
            side,
            db,
            _keys: None,
            work: Work::Ready(batch),
        });
    }

    /// Holds a write that waits for the reply to ticket it returns.
    fn push_waiting(
        &mut self,
        side: Side,
        db: Option<u32>,
        keys: Option<Entered>,
        pending: Pending,
    ) -> u64 {
        let ticket = self.next_ticket();
        self.held.push_back(Held {
            ticket,
            side,
            db,
            _keys: keys,
            work: Work::Waiting(pending),
        });
        ticket
    }

    /// The write waiting for `ticket`, with its mirror and database; it
    /// keeps its place (empty) until [`MirrorQueue::ready`] fills it.
    fn take_waiting(&mut self, ticket: u64) -> Option<(Side, Option<u32>, Pending)> {
        let h = self.held.iter_mut().find(|h| h.ticket == ticket)?;
        match std::mem::replace(&mut h.work, Work::Ready(Vec::new())) {
            Work::Waiting(pending) => Some((h.side, h.db, pending)),
            ready => {
                h.work = ready;
                None
            }
        }
    }

    /// What the write waiting for `ticket` became.
    fn ready(&mut self, ticket: u64, batch: Batch) {
        if let Some(h) = self.held.iter_mut().find(|h| h.ticket == ticket) {
            h.work = Work::Ready(batch);
        }
    }

    /// The oldest batch, once nothing before it waits, with its mirror and
    /// the database it was sent in.
    fn pop_ready(&mut self) -> Option<(Side, Option<u32>, Batch)> {
        if matches!(self.held.front()?.work, Work::Waiting(_)) {
            return None;
        }
        match self.held.pop_front()? {
            Held {
                side,
                db,
                work: Work::Ready(batch),
                ..
            } => Some((side, db, batch)),
            Held { .. } => None,
        }
    }
}

/// What a mirrored MULTI block becomes once EXEC's reply is known: the
/// writes (each as its effect, given its element of the EXEC array) inside
/// MULTI ... EXEC, or nothing when EXEC did not run it.
fn resolve_tx(
    items: Vec<TxItem>,
    reply: Option<&Value>,
    mirror: Side,
    db: Option<u32>,
    inflight: &Arc<InFlight>,
) -> Batch {
    let Some(results) = reply.and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut body = Vec::with_capacity(items.len());
    let mut keys = Keys::new();
    let mut checks = Vec::with_capacity(items.len());
    let mut last_stats = None;
    for item in items {
        let Some(result) = results.get(item.index) else {
            continue;
        };
        // Its element of the mirror's EXEC array must say what the
        // authoritative one did (for an effect of one command, what that
        // command answers when the mirror held the same).
        let (cmds, mut expected) = match &item.effect {
            Some(effect) => {
                let cmds = mirror::translate(effect, &item.cmd, result);
                let one = (cmds.len() == 1).then(|| mirror::effect::expected(effect, result));
                (cmds, one.flatten())
            }
            None => (vec![item.cmd], Some(result.clone())),
        };
        for cmd in cmds {
            let written = written_keys(&cmd);
            keys.extend(written.iter().cloned());
            checks.push(Element {
                expected: expected.take(),
                keys: written,
            });
            body.push((cmd, Target::Quiet("write queued in a mirrored MULTI")));
        }
        last_stats = Some(item.stats);
    }
    let Some(stats) = last_stats.filter(|_| !body.is_empty()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push((
        Command::from_args(&[b"MULTI"]),
        Target::Quiet("MULTI of a mirrored transaction"),
    ));
    out.extend(body);
    // The EXEC reply stands for the whole block in the route's counters,
    // and its keys are in flight until then.
    let exec = MirrorWrite {
        stats,
        from: mirror.other(),
        db,
        keys: inflight.hold(keys),
        check: Some(Box::new(Check::Exec(checks))),
        hold: None,
    };
    out.push((Command::from_args(&[b"EXEC"]), Target::Mirror(exec)));
    out
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Sends a verbatim mirrored write of `keys` (its reply settling
    /// comparison `compare`), or queues it behind a pending effect. `None`
    /// when it was not sent now (held, shed or journalled).
    pub(super) fn mirror(
        &mut self,
        side: Side,
        cmd: &Command,
        stats: Arc<RouteStats>,
        keys: Keys,
        evalsha: bool,
        compare: Option<u64>,
    ) -> Option<Sent> {
        let w = MirrorWrite {
            stats: stats.clone(),
            from: side.other(),
            db: self.current_db(),
            keys: self.shared.repairer.inflight.hold(keys),
            check: None,
            hold: None,
        };
        // An EVALSHA goes to the mirror as EVAL with the body the proxy
        // saw: a mirror that lacks the script (flushed, restarted) runs it
        // in its place, not after writes sent behind it.
        let eval = evalsha.then(|| self.as_eval(cmd)).flatten();
        if eval.is_some() {
            RouteStats::bump(&stats.script_retries);
        }
        let cmd = eval.as_ref().unwrap_or(cmd);
        let target = Target::Mirror(w);
        if self.held.is_empty() {
            RouteStats::bump(&stats.mirrored);
            if self.backlog_full(cmd.raw().len(), 1) {
                RouteStats::bump(&stats.mirror_shed);
                if let Target::Mirror(w) = &target {
                    self.journal_lost(w);
                }
                return None;
            }
            self.send(side, cmd, Outbound::from(target).compared(compare))
        } else {
            let db = self.current_db();
            self.held.push_ready(side, db, vec![(cmd.clone(), target)]);
            None
        }
    }

    /// `EVALSHA sha ...` as `EVAL body ...`, if the proxy saw the body.
    pub(super) fn as_eval(&self, evalsha: &Command) -> Option<Command> {
        let body = self.shared.scripts.body(evalsha.arg(1)?)?;
        let mut args: Vec<&[u8]> = evalsha.args().collect();
        args[0] = b"EVAL";
        args[1] = &body;
        Some(Command::from_args(&args))
    }

    /// Queues a mirrored write that waits for the authoritative reply to
    /// the command sent with `Target::Effect(ticket)`. `keys`: counted in
    /// flight meanwhile (not for blocking commands, which may wait long and
    /// change nothing until they reply).
    pub(super) fn defer_mirror(&mut self, side: Side, pending: Pending, keys: Option<Keys>) -> u64 {
        let db = self.current_db();
        let keys = keys.map(|k| self.shared.repairer.inflight.hold(k));
        self.held.push_waiting(side, db, keys, pending)
    }

    /// The authoritative reply for `ticket` arrived (`None`: it never will,
    /// the connection failed; an error reply means nothing happened, so
    /// nothing is mirrored): derive the mirror's commands, then send
    /// everything no longer waiting.
    pub(super) fn resolve_effect(&mut self, ticket: u64, reply: Option<&bytes::Bytes>) {
        self.resolve_effect_holding(ticket, reply, None);
    }

    /// [`Self::resolve_effect`] for a blocking command served: `hold`, its
    /// registration with the router, stays with its effect until the
    /// mirror has applied it.
    pub(super) fn resolve_effect_holding(
        &mut self,
        ticket: u64,
        reply: Option<&bytes::Bytes>,
        hold: Option<BlockedHold>,
    ) {
        let depth = self.shared.limits.max_reply_depth;
        let value = reply.and_then(|r| value::decode(r, depth));
        if let Some((side, db, pending)) = self.held.take_waiting(ticket) {
            let batch = match pending {
                Pending::One { effect, cmd, stats } => {
                    let one = (effect, cmd, stats);
                    self.effect_commands(side, db, one, value.as_ref(), hold)
                }
                Pending::Tx(items) => {
                    if value.is_none() {
                        self.tx_lost(&items, side, db);
                    }
                    let inflight = &self.shared.repairer.inflight;
                    resolve_tx(items, value.as_ref(), side, db, inflight)
                }
            };
            // Applied on the authoritative side only now: a copy of one of
            // these keys that read before must not write.
            for (_, target) in &batch {
                if let Target::Mirror(w) = target {
                    for key in w.keys.keys() {
                        self.shared.repairer.note_write(w.db, key);
                    }
                }
            }
            self.held.ready(ticket, batch);
        }
        self.flush_held();
    }

    /// The mirror's commands for one write mirrored as its effect, given
    /// the authoritative reply (`None`: unknown, its keys are journalled).
    fn effect_commands(
        &self,
        side: Side,
        db: Option<u32>,
        (effect, cmd, stats): (Effect, Command, Arc<RouteStats>),
        value: Option<&Value>,
        mut hold: Option<BlockedHold>,
    ) -> Batch {
        let Some(v) = value else {
            // Unknown outcome: the mirror may now differ.
            RouteStats::bump(&stats.mirror_failed);
            RouteStats::bump(&stats.mirrored);
            let keys = written_keys(&cmd);
            self.shared.repairer.lost(&stats, side.other(), db, &keys);
            return Vec::new();
        };
        let inflight = &self.shared.repairer.inflight;
        let cmds = mirror::translate(&effect, &cmd, v);
        // One command: its reply is checked.
        let mut check = (cmds.len() == 1)
            .then(|| mirror::effect::expected(&effect, v))
            .flatten()
            .map(Box::new);
        cmds.into_iter()
            .map(|c| {
                let w = MirrorWrite {
                    stats: stats.clone(),
                    from: side.other(),
                    db,
                    keys: inflight.hold(written_keys(&c)),
                    check: check.take().map(|v| Box::new(Check::Effect(*v))),
                    hold: hold.take().map(Box::new),
                };
                (c, Target::Mirror(w))
            })
            .collect()
    }

    /// A mirrored transaction whose EXEC reply never came: its keys are
    /// journalled (the block counts once).
    fn tx_lost(&self, items: &[TxItem], side: Side, db: Option<u32>) {
        if let Some(item) = items.first() {
            RouteStats::bump(&item.stats.mirror_failed);
            RouteStats::bump(&item.stats.mirrored);
        }
        for item in items {
            let keys = written_keys(&item.cmd);
            self.shared
                .repairer
                .lost(&item.stats, side.other(), db, &keys);
        }
    }

    /// Sends every held batch nothing before it waits for, in the
    /// database it was sent in: a SELECT the client pipelined after it
    /// reached the mirror's connection already, so the batch goes between a
    /// SELECT of its database and a SELECT back.
    fn flush_held(&mut self) {
        while let Some((side, db, batch)) = self.held.pop_ready() {
            // A batch is all or nothing: never half a MULTI block.
            let unreachable = self.sides[side].is_idle() && !self.shared.upstreams[side].may_try();
            let bytes = batch.iter().map(|(c, _)| c.raw().len()).sum();
            let shed = !unreachable && self.backlog_full(bytes, batch.len());
            let (then, now) = (self.db_on(side, db), self.db_on(side, self.current_db()));
            let switch = then != now && !batch.is_empty() && !unreachable && !shed;
            if switch {
                self.send(side, &select(then), Target::Quiet("SELECT of held writes"));
            }
            for (cmd, target) in batch {
                if let Target::Mirror(w) = &target {
                    RouteStats::bump(&w.stats.mirrored);
                    if unreachable || shed {
                        let counter = match shed {
                            true => &w.stats.mirror_shed,
                            false => &w.stats.mirror_failed,
                        };
                        RouteStats::bump(counter);
                        self.journal_lost(w);
                        continue;
                    }
                }
                if unreachable || shed {
                    continue;
                }
                debug!(%side, "sending a mirrored effect");
                self.send(side, &cmd, target);
            }
            if switch {
                self.send(
                    side,
                    &select(now),
                    Target::Quiet("SELECT after held writes"),
                );
            }
        }
    }

    /// The database number `db` (as [`Session::current_db`] gives it:
    /// `None` for the upstreams' own) is on `side`.
    fn db_on(&self, side: Side, db: Option<u32>) -> u32 {
        db.unwrap_or(self.shared.upstream(side).config.db)
    }
}

fn select(db: u32) -> Command {
    Command::from_args(&[b"SELECT", db.to_string().as_bytes()])
}
