//! Blocked commands follow a flip.
//!
//! A `BLPOP` blocked on old when its route flips to read from new would
//! otherwise stay there: a push mirrored to old feeds it while a consumer
//! blocked on new gets the same element, and each side's mirrored pop then
//! removes another one (duplicates on one side, losses on the other). So
//! at a table change a connection blocked in a command whose keys are now
//! read from the other cache is unblocked (`CLIENT UNBLOCK id TIMEOUT`, over
//! a connection of its own) and, if it was not served meanwhile, the
//! command is sent again under the new table with what remains of its
//! timeout. The client's reply keeps its place.
//!
//! Covered: the blocking pops whose timeout is an argument in seconds
//! (`BLPOP`, `BRPOP`, `BRPOPLPUSH`, `BLMOVE`, `BZPOPMIN`, `BZPOPMAX`,
//! `BLMPOP`, `BZMPOP`). `XREAD`/`XREADGROUP ... BLOCK` and `WAIT` stay
//! where they are.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::held::Pending;
use super::plan::{self, ConnView, How, Plan};
use super::side::{Outbound, Ready};
use super::{Session, Target};
use crate::commands;
use crate::protocol::{Command, Reply};
use crate::routing::Side;

/// A blocking command that may be moved to the other cache.
#[derive(Debug)]
pub(super) struct Movable {
    pub(super) cmd: Command,
    /// When the client sent it: its timeout runs from there.
    started: Instant,
    /// `None`: it blocks for ever (timeout 0).
    timeout: Option<Duration>,
    /// The argument holding the timeout.
    at: usize,
}

/// Where the reply to a moved command goes: the client's slot on the side
/// it was first sent to, and the effect its mirror waits for.
#[derive(Debug)]
pub(super) struct MovedSlot {
    pub(super) from: Side,
    pub(super) pos: u64,
    pub(super) effect: Option<u64>,
}

impl Movable {
    /// `cmd` as a movable blocking command, if it is one.
    pub(super) fn of(cmd: &Command) -> Option<Box<Movable>> {
        let name = commands::entry(cmd)?.spec.name;
        let at = match name {
            "blpop" | "brpop" | "brpoplpush" | "blmove" | "bzpopmin" | "bzpopmax" => {
                cmd.len().checked_sub(1)?
            }
            "blmpop" | "bzmpop" => 1,
            _ => return None,
        };
        let secs: f64 = std::str::from_utf8(cmd.arg(at)?).ok()?.parse().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Some(Box::new(Movable {
            cmd: cmd.clone(),
            started: Instant::now(),
            timeout: (secs > 0.0).then(|| Duration::from_secs_f64(secs)),
            at,
        }))
    }

    /// The command again with what remains of its timeout; `None` when it
    /// has run out.
    fn remaining(&self) -> Option<Command> {
        let Some(timeout) = self.timeout else {
            return Some(self.cmd.clone());
        };
        let left = timeout.checked_sub(self.started.elapsed())?;
        if left < Duration::from_millis(1) {
            return None;
        }
        let secs = format!("{:.3}", left.as_secs_f64());
        let mut args: Vec<&[u8]> = self.cmd.args().collect();
        args[self.at] = secs.as_bytes();
        Some(Command::from_args(&args))
    }

    fn again(&self, cmd: Command) -> Box<Movable> {
        Box::new(Movable {
            cmd,
            started: self.started,
            timeout: self.timeout,
            at: self.at,
        })
    }
}

/// A blocking command's "nothing came" reply (what `CLIENT UNBLOCK ...
/// TIMEOUT` makes it answer).
pub(super) fn is_nil(reply: &[u8]) -> bool {
    matches!(reply, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n")
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Where `cmd` would run now (its authoritative side under the current
    /// table); `None` if it would not be routed.
    fn runs_on_now(&self, cmd: &Command) -> Option<Side> {
        let table = self.shared.router.load();
        match plan::plan(&table, commands::entry(cmd), cmd, &ConnView::default()) {
            Plan::Routed(r) => Some(r.authoritative),
            _ => None,
        }
    }

    /// The table changed: each connection blocked in a command whose keys
    /// are now read from the other cache is unblocked there.
    pub(super) fn move_blocked(&mut self) {
        for side in Side::BOTH {
            let sc = &self.sides[side];
            let Some(head) = sc.inflight.front() else {
                continue;
            };
            let (Some(m), Some(id)) = (&head.movable, sc.client_id) else {
                continue;
            };
            if head.unblocking || self.runs_on_now(&m.cmd) == Some(side) {
                continue;
            }
            debug!(%side, "route flipped under a blocked command: unblocking it to move it");
            if let Some(head) = self.sides[side].inflight.front_mut() {
                head.unblocking = true;
            }
            self.shared.unblock(side, id);
        }
    }

    /// A command unblocked to be moved answered `nil` on `side`: it was not
    /// served there, so it is sent where its keys are read now, with what
    /// remains of its timeout; its reply takes the place this one had.
    pub(super) fn reissue(&mut self, side: Side, target: Target, m: Movable, nil: Reply) {
        let (from, pos, effect) = match target {
            Target::Moved(slot) => (slot.from, slot.pos, slot.effect),
            Target::Client { .. } | Target::Effect(_) => {
                let effect = match target {
                    Target::Effect(ticket) => Some(ticket),
                    _ => None,
                };
                let sc = &mut self.sides[side];
                let pos = sc.ready_base + sc.ready.len() as u64;
                sc.ready.push_back(Ready::Pending(Vec::new()));
                (side, pos, effect)
            }
            _ => unreachable!("only client-bound blocking commands are movable"),
        };
        // Not served: its mirror gets nothing.
        if let Some(ticket) = effect {
            self.resolve_effect(ticket, Some(&nil.bytes));
        }
        let table = self.shared.router.load();
        let planned = m.remaining().map(|cmd| {
            let p = plan::plan(&table, commands::entry(&cmd), &cmd, &ConnView::default());
            (cmd, p)
        });
        drop(table);
        let Some((cmd, Plan::Routed(r))) = planned else {
            // Its time ran out meanwhile: the nil is its answer.
            self.sides[from].fill(pos, nil.bytes);
            return;
        };
        let effect = match (&r.how, r.mirror) {
            (How::Effect(e), Some(mirror)) => {
                let pending = Pending::One {
                    effect: e.clone(),
                    cmd: cmd.clone(),
                    stats: r.stats.clone(),
                };
                Some(self.defer_mirror(mirror, pending, None))
            }
            _ => None,
        };
        debug!(from = %side, to = %r.authoritative, "blocked command moved after a flip");
        let slot = MovedSlot { from, pos, effect };
        let out = Outbound::from(Target::Moved(Box::new(slot)))
            .blocking(true)
            .routed(&r.stats, r.phase)
            .movable(Some(m.again(cmd.clone())));
        self.send(r.authoritative, &cmd, out);
    }

    /// The moved command answered: its reply fills the client's slot.
    pub(super) fn moved_reply(&mut self, slot: MovedSlot, reply: Bytes) {
        if let Some(ticket) = slot.effect {
            self.resolve_effect(ticket, Some(&reply));
        }
        self.sides[slot.from].fill(slot.pos, reply);
    }
}
