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
//! `BLMPOP`, `BZMPOP`), and `XREAD`/`XREADGROUP ... BLOCK ms` (a `$` or
//! `>` id means the same on the cache it moves to: entries added since
//! it blocked would have answered it). `WAIT`/`WAITAOF` stay: they wait
//! for that cache's replicas to take that connection's writes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::held::Pending;
use super::plan::{self, ConnView, How, Plan, Routed};
use super::side::{Outbound, Ready};
use super::{Session, Target};
use crate::commands;
use crate::protocol::{Command, Reply};
use crate::routing::{BlockedHold, Side, MAX_SETTLE};

/// A command held while its route settles after a flip.
#[derive(Debug)]
pub(super) struct Stalled {
    cmd: Command,
    /// When it stops waiting (and the flip stops waiting for blocked
    /// commands not yet moved).
    pub(super) until: Instant,
    /// Held until the session has left the shared connections
    /// (`seam.rs`), not for a flip.
    for_own: bool,
}

impl Stalled {
    /// `cmd` held until the shared connections owe the session nothing
    /// (their command timeouts bound that; the deadline is a backstop).
    pub(super) fn for_own(cmd: Command) -> Stalled {
        Stalled {
            cmd,
            until: Instant::now() + Duration::from_secs(3600),
            for_own: true,
        }
    }

    pub(super) fn is_for_own(&self) -> bool {
        self.for_own
    }
}

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
    /// The timeout is in milliseconds (`XREAD ... BLOCK`), not seconds.
    millis: bool,
    /// Registered with the router: a flip that moves its keys' reads
    /// holds their writes until this is moved or answered (and, once
    /// served, until its effect has landed on the mirror).
    pub(super) hold: Option<BlockedHold>,
}

/// The table a command was routed by is no longer current.
#[derive(Debug)]
pub(super) struct Stale;

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
        let (at, millis) = match name {
            "blpop" | "brpop" | "brpoplpush" | "blmove" | "bzpopmin" | "bzpopmax" => {
                (cmd.len().checked_sub(1)?, false)
            }
            "blmpop" | "bzmpop" => (1, false),
            "xread" | "xreadgroup" => (block_ms_at(cmd)?, true),
            _ => return None,
        };
        let timeout = std::str::from_utf8(cmd.arg(at)?).ok()?;
        let timeout = match millis {
            true => Duration::from_millis(timeout.parse().ok()?),
            false => {
                let secs: f64 = timeout.parse().ok()?;
                if !secs.is_finite() || secs < 0.0 {
                    return None;
                }
                Duration::from_secs_f64(secs)
            }
        };
        Some(Box::new(Movable {
            cmd: cmd.clone(),
            started: Instant::now(),
            timeout: (!timeout.is_zero()).then_some(timeout),
            at,
            millis,
            hold: None,
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
        let left = match self.millis {
            true => left.as_millis().max(1).to_string(),
            false => format!("{:.3}", left.as_secs_f64()),
        };
        let mut args: Vec<&[u8]> = self.cmd.args().collect();
        args[self.at] = left.as_bytes();
        Some(Command::from_args(&args))
    }

    fn again(&self, cmd: Command, hold: BlockedHold) -> Box<Movable> {
        Box::new(Movable {
            cmd,
            started: self.started,
            timeout: self.timeout,
            at: self.at,
            millis: self.millis,
            hold: Some(hold),
        })
    }

    /// Whether it was routed by a table that has since been replaced.
    fn stale(&self) -> bool {
        self.hold.as_ref().is_some_and(BlockedHold::stale)
    }
}

/// Where `XREAD`/`XREADGROUP`'s `BLOCK` milliseconds are (options come
/// before `STREAMS`); `None` when it does not block.
fn block_ms_at(cmd: &Command) -> Option<usize> {
    let mut i = 1;
    loop {
        let arg = cmd.arg(i)?.to_ascii_lowercase();
        i += match &arg[..] {
            b"block" => return Some(i + 1),
            b"streams" => return None,
            // GROUP <group> <consumer>: names that may read "block".
            b"group" => 3,
            b"count" => 2,
            _ => 1,
        };
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

    /// `cmd` as a movable blocking command, registered with the router
    /// under the table it was routed by; `Err` when that table is no longer
    /// current (a flip came between routing and sending).
    pub(super) fn movable(&self, cmd: &Command, r: &Routed) -> Result<Option<Box<Movable>>, Stale> {
        let Some(mut m) = r.blocking.then(|| Movable::of(cmd)).flatten() else {
            return Ok(None);
        };
        m.hold = Some(self.shared.router.block(r.version).ok_or(Stale)?);
        Ok(Some(m))
    }

    /// The table changed (or a blocked command answered, and the one
    /// behind it now blocks): each connection blocked in a command whose
    /// keys are now read from the other cache is unblocked there; those
    /// that stay where they are say so, so a flip waits for them no more.
    pub(super) fn move_blocked(&mut self) {
        for side in Side::BOTH {
            for i in 0..self.sides[side].inflight.len() {
                let e = &self.sides[side].inflight[i];
                let stays = match &e.movable {
                    Some(m) if m.stale() => self.runs_on_now(&m.cmd) == Some(side),
                    _ => continue,
                };
                let e = &mut self.sides[side].inflight[i];
                if stays {
                    if let Some(hold) = e.movable.as_mut().and_then(|m| m.hold.as_mut()) {
                        hold.confirm();
                    }
                }
            }
            let sc = &self.sides[side];
            let Some(head) = sc.inflight.front() else {
                continue;
            };
            let (Some(m), Some(id)) = (&head.movable, sc.client_id) else {
                continue;
            };
            if head.unblocking || !m.stale() || self.runs_on_now(&m.cmd) == Some(side) {
                continue;
            }
            debug!(%side, "route flipped under a blocked command: unblocking it to move it");
            if let Some(head) = self.sides[side].inflight.front_mut() {
                head.unblocking = true;
            }
            self.shared.unblock(side, id);
        }
    }

    /// Holds `cmd`, and the client's commands after it, until its route
    /// has settled.
    pub(super) fn stall(&mut self, cmd: Command) {
        debug!("route settling after a flip: holding the client's commands");
        let until = Instant::now() + MAX_SETTLE;
        self.stalled = Some(Stalled {
            cmd,
            until,
            for_own: false,
        });
    }

    /// The table changed, or the hold ran out: the held command is routed
    /// again (and held again if its route still settles, by the same
    /// deadline), then the commands behind it.
    pub(super) fn resume_stalled(&mut self) {
        let Some(held) = self.stalled.take() else {
            return;
        };
        if held.until <= Instant::now() && !held.for_own {
            self.shared.router.settle_now();
        }
        self.dispatch(held.cmd);
        match &mut self.stalled {
            Some(again) => again.until = held.until,
            None => self.on_client_bytes(),
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
        // Registered under the table it is routed by (again if a flip
        // comes between).
        let (cmd, r, hold) = loop {
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
            if let Some(hold) = self.shared.router.block(r.version) {
                break (cmd, r, hold);
            }
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
            .movable(Some(m.again(cmd.clone(), hold)));
        self.send(r.authoritative, &cmd, out);
    }

    /// The moved command answered: its reply fills the client's slot.
    pub(super) fn moved_reply(&mut self, slot: MovedSlot, reply: Bytes, hold: Option<BlockedHold>) {
        if let Some(ticket) = slot.effect {
            self.resolve_effect_holding(ticket, Some(&reply), hold);
        }
        self.sides[slot.from].fill(slot.pos, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Command::from_args(&args)
    }

    #[test]
    fn xread_block_is_found_past_group_names_that_read_block() {
        let c = cmd(&[
            "XREADGROUP",
            "GROUP",
            "block",
            "block",
            "COUNT",
            "1",
            "BLOCK",
            "0",
            "STREAMS",
            "s",
            ">",
        ]);
        assert_eq!(block_ms_at(&c), Some(7));
        let c = cmd(&["XREAD", "STREAMS", "block", "0"]);
        assert_eq!(block_ms_at(&c), None);
        let m = Movable::of(&cmd(&["XREAD", "BLOCK", "2500", "STREAMS", "s", "$"])).unwrap();
        assert!(m.millis && m.timeout == Some(Duration::from_millis(2500)));
        let again = m.remaining().unwrap();
        let ms: u64 = std::str::from_utf8(again.arg(2).unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2500).contains(&ms), "{ms}");
        assert!(
            Movable::of(&cmd(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]))
                .unwrap()
                .timeout
                .is_none()
        );
    }
}
