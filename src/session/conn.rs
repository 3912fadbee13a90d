//! The client's connection state as the caches confirm it: state commands
//! (SELECT, HELLO, AUTH, CLIENT SETNAME, ...) sent to every upstream
//! connection, recorded once the answering side accepted them, replayed on
//! connections opened later; the protocol replies are in; client-side
//! caching across flips.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::plan::display_name;
use super::refusal::Refusal;
use super::side::{Outbound, TxMark};
use super::tx::TxState;
use super::{state, PendingState, Session, Target};
use crate::commands::StateCmd;
use crate::protocol::Command;
use crate::routing::Side;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Whether replies to the client are RESP3: the last HELLO sent decides,
    /// answered or not (commands pipelined after it are already under it).
    pub(super) fn resp3(&self) -> bool {
        for p in self.pending_state.iter().rev() {
            match (p.kind, p.cmd.arg(1)) {
                (StateCmd::Hello, Some(b"3")) => return true,
                (StateCmd::Hello, Some(b"2")) | (StateCmd::Reset, _) => return false,
                _ => {}
            }
        }
        self.state.is_resp3()
    }

    /// The state behind `gate` on `side` is settled (`diverged`: that cache
    /// refused what the client's state is): what waited goes on, mirrored
    /// writes among it journalled if it diverged.
    pub(super) fn state_settled(&mut self, side: Side, gate: super::side::Gate, diverged: bool) {
        for w in self.sides[side].ungate(gate, diverged) {
            crate::routing::RouteStats::bump(&w.stats.mirror_failed);
            self.journal_lost(&w);
        }
    }

    /// A `RESET` was sent and not yet answered.
    pub(super) fn resetting(&self) -> bool {
        self.pending_state.iter().any(|p| p.kind == StateCmd::Reset)
    }

    /// The reply to the oldest state command answered by `side` arrived.
    pub(super) fn confirm_state(&mut self, side: Side, accepted: bool) {
        if let Some(i) = self.pending_state.iter().position(|p| p.side == side) {
            let p = self.pending_state.remove(i).expect("index is in range");
            if accepted {
                self.state.apply(p.kind, &p.cmd);
            }
            if let Some(gate) = p.gate {
                // The other cache's connection gets it only now, and only
                // if it was accepted here.
                let other = side.other();
                let own_credentials = self.shared.upstreams[other].config.password.is_some();
                let carried = accepted
                    .then(|| state::for_other_side(p.kind, &p.cmd, own_credentials))
                    .flatten();
                match carried {
                    Some(c) => {
                        self.sides[other].carry(gate, &c, |next| Target::OtherState(next).into())
                    }
                    None => self.state_settled(other, gate, false),
                }
            }
        }
        match (self.state.is_tracking(), &self.tracking_table) {
            (true, None) => {
                self.table_changes.mark_unchanged();
                self.tracking_table = Some(self.shared.router.current());
            }
            (false, Some(_)) => self.tracking_table = None,
            _ => {}
        }
    }

    /// The routing table changed while client tracking is on. Keys now read
    /// from the other cache are not tracked there: a RESP3 client is told
    /// to drop its whole cache (the push Redis sends on FLUSHALL), after
    /// every reply to a read routed by the previous table.
    pub(super) fn on_table_change(&mut self) {
        let now = self.shared.router.current();
        let moved = self
            .tracking_table
            .as_ref()
            .is_some_and(|before| !now.reads_same_as(before));
        if moved && self.resp3() {
            self.local(Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n_\r\n"));
        }
        self.tracking_table = Some(now);
    }

    /// A pending `CLIENT CACHING` applies to the next command: when that
    /// goes to the other cache, the flag moves there (and a PING clears it
    /// where it was set, as any command but CLIENT does in Redis).
    pub(super) fn place_caching(&mut self, side: Side) {
        if let Some((set_on, caching)) = self.caching.take() {
            if set_on != side {
                self.send(side, &caching, Target::Quiet("CLIENT CACHING"));
                self.send(
                    set_on,
                    &Command::from_args(&[b"PING"]),
                    Target::Quiet("PING"),
                );
            }
        }
    }

    /// Connection-state commands go to every connection the client has open,
    /// the reply from the default route's read side; connections opened later
    /// get the state replayed.
    pub(super) fn send_state(&mut self, kind: StateCmd, cmd: &Command, reply_side: Side) {
        if self.tx.open.is_some() && kind != StateCmd::Reset {
            return self.refuse(Refusal::StateInMulti {
                name: display_name(cmd),
            });
        }
        if kind == StateCmd::Reset {
            self.tx = TxState::default();
        }
        // Sent before it is recorded as pending, so a connection this opens
        // is not set up with the very command it is about to carry.
        // RESET ends a transaction the client has open there.
        let mark = |out: Outbound| match kind {
            StateCmd::Reset => out.in_tx(TxMark::Close),
            _ => out,
        };
        self.send(reply_side, cmd, mark(Target::Client { state: true }.into()));
        let other = reply_side.other();
        let own_credentials = self.shared.upstreams[other].config.password.is_some();
        let mut gate = None;
        if !self.sides[other].is_idle() {
            if kind == StateCmd::Reset {
                if let Some(cmd) = state::for_other_side(kind, cmd, own_credentials) {
                    self.send(other, &cmd, mark(Target::Quiet("connection state").into()));
                }
            } else {
                // Carried there once this side accepted it.
                gate = Some(self.sides[other].gate());
            }
        }
        self.pending_state.push_back(PendingState {
            side: reply_side,
            kind,
            cmd: cmd.clone(),
            gate,
        });
        if kind == StateCmd::Reset {
            // RESET also drops every subscription, silently: cleared once
            // it is sent, so messages that still come ahead of its reply
            // are known for what they are.
            self.subs.clear();
            // RESET logs the upstream connection out and selects db 0:
            // give it back the proxy's own credentials and database.
            for side in Side::BOTH {
                if self.sides[side].is_idle() {
                    continue;
                }
                for (_, step) in self.shared.upstream(side).initial_setup() {
                    self.send(side, &step, Target::Quiet("connection state"));
                }
            }
        }
    }
}
