//! Comparison of the two replies to a mirrored write.
//!
//! A plain mirrored write (verbatim, sent to the mirror at once) is given a
//! compare id carried by both of its expectations. Whichever reply arrives
//! second settles it: equal replies (after RESP2/RESP3 normalising) count
//! as compared; different ones count a mismatch and queue a copy of each
//! key from the authoritative side to the mirror. A write mirrored as its
//! effect (one command) is checked against the reply the authoritative side
//! implies instead ([`Session::check_effect`]), and a mirrored transaction
//! element by element against the authoritative EXEC array
//! ([`Session::check_exec`]). Writes held behind an effect are not
//! compared in this version; neither are
//! `PUBLISH`/`SPUBLISH` (receiver counts differ by design, and their "key"
//! is a channel).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Element, MirrorWrite, Session, ShadowSlot};
use crate::commands::{self, CommandSpec};
use crate::compare::{effect_agrees, replies_agree, values_agree};
use crate::protocol::{Command, Value};
use crate::repair::RepairJob;
use crate::routing::{PerSide, RouteStats, Side};
use crate::shadow::{self, Order, Outcome};
use std::sync::atomic::Ordering as AtomicOrdering;

/// Writes with more keys than this are not compared.
const MAX_KEYS: usize = super::plan::MAX_COMPARED_KEYS;

#[derive(Debug)]
pub(super) struct Compare {
    replies: PerSide<Option<Bytes>>,
    settled: bool,
    /// The mirror did not have the (in-place updated) key before the write.
    mirror_lacked: bool,
    /// A shadow read, not a write: how to compare, and whether a difference
    /// queues a copy.
    shadow: Option<(Order, bool)>,
    cmd: Command,
    spec: &'static CommandSpec,
    stats: Arc<RouteStats>,
    from: Side,
    db: Option<u32>,
}

#[derive(Debug, Default)]
pub(super) struct Compares {
    open: VecDeque<Compare>,
    /// Id of `open[0]`.
    base: u64,
}

impl Compares {
    fn push(&mut self, c: Compare) -> u64 {
        self.open.push_back(c);
        self.base + self.open.len() as u64 - 1
    }

    fn get(&mut self, id: u64) -> Option<&mut Compare> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.open.get_mut(i)
    }

    fn pop_settled(&mut self) {
        while self.open.front().is_some_and(|c| c.settled) {
            self.open.pop_front();
            self.base += 1;
        }
    }

    /// A side's connection dropped: nothing open can be compared.
    pub(super) fn abandon(&mut self) {
        for c in &mut self.open {
            c.settled = true;
        }
        self.pop_settled();
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Opens a comparison for a mirrored write about to be sent.
    pub(super) fn compare_open(
        &mut self,
        spec: &'static CommandSpec,
        cmd: &Command,
        stats: &Arc<RouteStats>,
        from: Side,
    ) -> u64 {
        let db = self.current_db();
        self.compares.push(Compare {
            replies: PerSide::default(),
            settled: false,
            mirror_lacked: false,
            shadow: None,
            cmd: cmd.clone(),
            spec,
            stats: stats.clone(),
            from,
            db,
        })
    }

    pub(super) fn compare_drop(&mut self, id: u64) {
        if let Some(c) = self.compares.get(id) {
            c.settled = true;
            // It may wait behind an open compare (a stalled mirror's) until
            // popped: without its command, which can be large. (It stays:
            // ids are positions, and its authoritative reply still comes.)
            c.cmd = Command::from_args::<&[u8]>(&[]);
        }
        self.compares.pop_settled();
    }

    /// Shadows a read (already decided) about to be sent to `from`: returns
    /// the comparison id to tag both sends with.
    pub(super) fn shadow_open(
        &mut self,
        spec: &'static CommandSpec,
        cmd: &Command,
        stats: &Arc<RouteStats>,
        from: Side,
        how: (Order, bool),
    ) -> u64 {
        let id = self.compare_open(spec, cmd, stats, from);
        if let Some(c) = self.compares.get(id) {
            c.shadow = Some(how);
        }
        id
    }

    /// Whether the next read of a route shadowing `fraction` of them is
    /// shadowed, and a slot for it is free.
    pub(super) fn shadow_sample(&mut self, fraction: f64) -> Option<ShadowSlot> {
        if fraction <= 0.0 {
            return None;
        }
        self.shadow_credit += fraction;
        if self.shadow_credit < 1.0 {
            return None;
        }
        self.shadow_credit -= 1.0;
        let inflight = &self.shared.shadow_inflight;
        let max = self.shared.limits.max_shadow_reads;
        inflight
            .fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ShadowSlot(inflight.clone()))
    }

    /// The probe ahead of compared write `id` found its key missing on the
    /// mirror.
    pub(super) fn compare_missing(&mut self, id: u64) {
        if let Some(c) = self.compares.get(id) {
            c.mirror_lacked = true;
        }
    }

    /// The reply from `side` to compared write `id` arrived.
    pub(super) fn compare_reply(&mut self, id: u64, side: Side, reply: &Bytes) {
        let depth = self.shared.limits.max_reply_depth;
        let Some(c) = self.compares.get(id).filter(|c| !c.settled) else {
            return;
        };
        c.replies[side] = Some(reply.clone());
        let (Some(old), Some(new)) = (&c.replies[Side::Old], &c.replies[Side::New]) else {
            return;
        };
        c.settled = true;
        if let Some((order, repair)) = c.shadow {
            let (auth, other) = match c.from {
                Side::Old => (old, new),
                Side::New => (new, old),
            };
            let outcome = shadow::classify(auth, other, order, depth);
            c.stats.shadow.record(outcome);
            if repair && outcome != Outcome::Agree {
                let keys = commands::key_positions(c.spec, &c.cmd);
                for &i in keys.iter().take(MAX_KEYS) {
                    if let Some(key) = c.cmd.arg_bytes(i) {
                        self.shared.repairer.submit(RepairJob {
                            from: c.from,
                            db: c.db,
                            key,
                            stats: c.stats.clone(),
                            follows: true,
                        });
                    }
                }
            }
            self.compares.pop_settled();
            return;
        }
        RouteStats::bump(&c.stats.compared);
        let agree = replies_agree(old, new, depth);
        if !agree {
            RouteStats::bump(&c.stats.mismatches);
        } else if c.mirror_lacked {
            RouteStats::bump(&c.stats.mirror_missing);
        }
        if !agree || c.mirror_lacked {
            let keys = commands::key_positions(c.spec, &c.cmd);
            for &i in keys.iter().take(MAX_KEYS) {
                if let Some(key) = c.cmd.arg(i) {
                    self.shared.repairer.submit(RepairJob {
                        from: c.from,
                        db: c.db,
                        key: Bytes::copy_from_slice(key),
                        stats: c.stats.clone(),
                        follows: true,
                    });
                }
            }
        }
        self.compares.pop_settled();
    }

    /// The mirror answered a write mirrored as its effect with `reply`: if
    /// it is not what it answers when it held what the authoritative side
    /// did (a pop that found nothing there: another client's push had not
    /// reached it yet, or the list predates the migration), copy the keys.
    pub(super) fn check_effect(&self, w: &MirrorWrite, expected: &Value, reply: &Bytes) {
        let depth = self.shared.limits.max_reply_depth;
        RouteStats::bump(&w.stats.compared);
        if effect_agrees(expected, reply, depth) {
            return;
        }
        RouteStats::bump(&w.stats.mismatches);
        for key in w.keys.keys().iter().take(MAX_KEYS) {
            self.shared.repairer.submit(RepairJob {
                from: w.from,
                db: w.db,
                key: key.clone(),
                stats: w.stats.clone(),
                follows: true,
            });
        }
    }

    /// The mirror answered the EXEC of a mirrored transaction: each
    /// element of its array is checked against what the authoritative
    /// side's implies, and the keys of each that differs (an error there,
    /// a key that held something else) are copied. An EXEC that did not
    /// run the block copies every key.
    pub(super) fn check_exec(&self, w: &MirrorWrite, elements: &[Element], reply: &Bytes) {
        let depth = self.shared.limits.max_reply_depth;
        let got = crate::protocol::value::decode(reply, depth);
        let got = match got {
            Some(Value::Array(items)) if items.len() == elements.len() => Some(items),
            _ => None,
        };
        let copy = |keys: &[Bytes]| {
            for key in keys.iter().take(MAX_KEYS) {
                self.shared.repairer.submit(RepairJob {
                    from: w.from,
                    db: w.db,
                    key: key.clone(),
                    stats: w.stats.clone(),
                    follows: true,
                });
            }
        };
        let Some(got) = got else {
            RouteStats::bump(&w.stats.compared);
            RouteStats::bump(&w.stats.mismatches);
            for e in elements {
                copy(&e.keys);
            }
            return;
        };
        for (e, got) in elements.iter().zip(got) {
            let Some(expected) = &e.expected else {
                continue;
            };
            RouteStats::bump(&w.stats.compared);
            if !values_agree(expected, got) {
                RouteStats::bump(&w.stats.mismatches);
                copy(&e.keys);
            }
        }
    }

    /// Reports a mirrored write's keys to the repairer (a pending copy of
    /// one of them must not overwrite it).
    pub(super) fn note_write(&self, cmd: &Command, positions: &[usize]) {
        if self.shared.repairer.pending() == 0 {
            return;
        }
        let db = self.current_db();
        for &i in positions {
            if let Some(key) = cmd.arg(i) {
                self.shared.repairer.note_write(db, key);
            }
        }
    }

    /// The database the client's commands run in, if it selected one (the
    /// last SELECT sent counts, answered or not) other than the one both
    /// upstreams are configured with (`None` stands for that one, so a copy
    /// of key `k` finds writes to it whether or not the client sent
    /// `SELECT`).
    pub(super) fn current_db(&self) -> Option<u32> {
        let up = &self.shared.upstreams;
        self.selected_db()
            .filter(|&d| !Side::BOTH.iter().all(|&s| up[s].config.db == d))
    }

    fn selected_db(&self) -> Option<u32> {
        let pending = self
            .pending_state
            .iter()
            .rev()
            .find(|p| p.kind == crate::commands::StateCmd::Select)
            .and_then(|p| p.cmd.arg(1))
            .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok());
        pending.or_else(|| self.state.db())
    }
}
