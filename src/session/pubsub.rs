//! Pub/sub through the proxy.
//!
//! A channel (or pattern, or shard channel) is routed like a key: the first
//! route whose patterns match its name decides, and the subscription goes to
//! that route's read side. In a dual phase PUBLISH goes to both sides, so a
//! subscriber receives each message published through the proxy exactly
//! once, from the side it subscribed on. A subscription stays on the side it
//! was made on when the route flips between `dual-write` and `read-new`
//! (both sides receive every publish then), and follows the route when it
//! leaves its side (`new-only`, or back to `old-only`).
//!
//! Subscriptions may be split across the two upstream connections, so the
//! confirmations the client sees are made here, from the session's own set
//! of subscriptions, with the counts Redis would give. Each is released only
//! after the upstreams confirmed their part, so a client that publishes
//! right after its SUBSCRIBE returned cannot miss its own message.
//!
//! Upstream frames that are messages (`message`, `pmessage`, `smessage`)
//! pass through to the client as they arrive, in a pipeline too; in RESP3
//! every push frame does.

use bytes::Bytes;
use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::refusal::Refusal;
use super::{Session, Target};
use crate::commands::PubSubCmd;
use crate::protocol::Command;
use crate::routing::{BlockedHold, PerSide, Side};

/// The client's subscriptions and the side each one lives on.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    channels: HashMap<Bytes, Side>,
    patterns: HashMap<Bytes, Side>,
    shards: HashMap<Bytes, Side>,
    /// Subscriptions held on each side's connection.
    on_side: PerSide<usize>,
    /// Registered with the router while there are subscriptions: a flip
    /// that changes where a route publishes settles until they have moved
    /// (`routing/settle.rs`), so no message published after it is lost.
    hold: Option<BlockedHold>,
    /// Moves (subscribe there, unsubscribe here) not yet confirmed.
    moving: usize,
}

/// What one (un)subscribe command changes: the names each side's
/// connection must be sent, and the confirmations the client gets.
struct Change {
    per_side: PerSide<Vec<Bytes>>,
    confirmations: Vec<u8>,
}

impl Subscriptions {
    /// Redis's count in (un)subscribe confirmations: channels + patterns,
    /// or shard channels alone for the shard commands.
    fn count(&self, shard: bool) -> usize {
        if shard {
            self.shards.len()
        } else {
            self.channels.len() + self.patterns.len()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty()
    }

    pub(super) fn clear(&mut self) {
        *self = Subscriptions::default();
    }

    /// The subscriptions are where their routes publish now: a flip need
    /// not wait for them.
    fn settled(&mut self) {
        if let Some(hold) = self.hold.as_mut() {
            hold.confirm();
        }
    }

    /// Whether `side`'s connection holds subscriptions (its arrays may be
    /// messages).
    pub(super) fn on(&self, side: Side) -> bool {
        self.on_side[side] > 0
    }

    /// `side`'s connection dropped: the subscriptions it held are gone.
    /// Whether it held any.
    pub(super) fn lost(&mut self, side: Side) -> bool {
        std::mem::take(&mut self.on_side[side]) > 0
    }

    /// Subscriptions on a cache their route no longer publishes to (a
    /// route gone to `new-only`, or back to `old-only`): each moves to the
    /// side `publishes` names first. Returns, per kind, what moved:
    /// `(subscribe command, name, from, to)`.
    fn stranded(
        &mut self,
        publishes: impl Fn(&[u8]) -> (Side, Option<Side>),
    ) -> Vec<(PubSubCmd, Bytes, Side, Side)> {
        let mut moved = Vec::new();
        let kinds = [
            (PubSubCmd::Subscribe, &mut self.channels),
            (PubSubCmd::PSubscribe, &mut self.patterns),
            (PubSubCmd::SSubscribe, &mut self.shards),
        ];
        for (what, set) in kinds {
            for (name, side) in set.iter_mut() {
                let (to, also) = publishes(name);
                if *side != to && also != Some(*side) {
                    moved.push((what, name.clone(), *side, to));
                    *side = to;
                }
            }
        }
        for (_, _, from, to) in &moved {
            self.on_side[*from] -= 1;
            self.on_side[*to] += 1;
        }
        moved
    }

    /// Applies `what` to `names` (every subscription of the kind for an
    /// UNSUBSCRIBE without arguments); a new subscription lives on the side
    /// `side_of` names.
    fn change(
        &mut self,
        what: PubSubCmd,
        names: Option<Vec<Bytes>>,
        resp3: bool,
        side_of: impl Fn(&[u8]) -> Side,
    ) -> Change {
        let mut count = self.count(what.shard());
        let set = match what {
            PubSubCmd::Subscribe | PubSubCmd::Unsubscribe => &mut self.channels,
            PubSubCmd::PSubscribe | PubSubCmd::PUnsubscribe => &mut self.patterns,
            PubSubCmd::SSubscribe | PubSubCmd::SUnsubscribe => &mut self.shards,
        };
        let names = names.unwrap_or_else(|| set.keys().cloned().collect());
        let mut per_side: PerSide<Vec<Bytes>> = PerSide::default();
        let mut out = Vec::new();
        for name in &names {
            if what.subscribes() {
                let side = match set.get(name) {
                    Some(side) => *side,
                    None => {
                        let side = side_of(name);
                        set.insert(name.clone(), side);
                        self.on_side[side] += 1;
                        count += 1;
                        side
                    }
                };
                per_side[side].push(name.clone());
            } else if let Some(side) = set.remove(name) {
                self.on_side[side] -= 1;
                count -= 1;
                per_side[side].push(name.clone());
            }
            confirmation(&mut out, resp3, what.name(), Some(name), count);
        }
        if names.is_empty() {
            confirmation(&mut out, resp3, what.name(), None, count);
        }
        Change {
            per_side,
            confirmations: out,
        }
    }
}

pub(super) use crate::protocol::reply::{frame_kind, FrameKind};

/// One confirmation frame as Redis writes it.
fn confirmation(out: &mut Vec<u8>, resp3: bool, kind: &str, channel: Option<&[u8]>, count: usize) {
    out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    out.extend_from_slice(format!("${}\r\n{kind}\r\n", kind.len()).as_bytes());
    match channel {
        Some(c) => {
            out.extend_from_slice(format!("${}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        None if resp3 => out.extend_from_slice(b"_\r\n"),
        None => out.extend_from_slice(b"$-1\r\n"),
    }
    out.extend_from_slice(format!(":{count}\r\n").as_bytes());
}

impl PubSubCmd {
    fn name(self) -> &'static str {
        match self {
            PubSubCmd::Subscribe => "subscribe",
            PubSubCmd::PSubscribe => "psubscribe",
            PubSubCmd::SSubscribe => "ssubscribe",
            PubSubCmd::Unsubscribe => "unsubscribe",
            PubSubCmd::PUnsubscribe => "punsubscribe",
            PubSubCmd::SUnsubscribe => "sunsubscribe",
        }
    }

    fn subscribes(self) -> bool {
        matches!(
            self,
            PubSubCmd::Subscribe | PubSubCmd::PSubscribe | PubSubCmd::SSubscribe
        )
    }

    fn shard(self) -> bool {
        matches!(self, PubSubCmd::SSubscribe | PubSubCmd::SUnsubscribe)
    }

    fn upstream_name(self) -> &'static [u8] {
        match self {
            PubSubCmd::Subscribe => b"SUBSCRIBE",
            PubSubCmd::PSubscribe => b"PSUBSCRIBE",
            PubSubCmd::SSubscribe => b"SSUBSCRIBE",
            PubSubCmd::Unsubscribe => b"UNSUBSCRIBE",
            PubSubCmd::PUnsubscribe => b"PUNSUBSCRIBE",
            PubSubCmd::SUnsubscribe => b"SUNSUBSCRIBE",
        }
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn pubsub(&mut self, what: PubSubCmd, cmd: &Command) {
        if self.tx.open.is_some() {
            // Redis queues these and runs them at EXEC; a proxy cannot split
            // a transaction's replies into pushes.
            return self.refuse(Refusal::PubSubInMulti { name: what.name() });
        }
        if what.subscribes() && cmd.len() < 2 {
            return self.refuse(Refusal::Arity { name: what.name() });
        }
        let resp3 = self.resp3();
        let names =
            (cmd.len() > 1).then(|| cmd.args().skip(1).map(Bytes::copy_from_slice).collect());
        let table = self.shared.router.load();
        let change = self.subs.change(what, names, resp3, |name| {
            table.routes[table.route_of(name)]
                .phase_for(name)
                .authoritative()
        });
        drop(table);
        self.hold_subscriptions();
        let (per_side, out) = (change.per_side, change.confirmations);
        let id = self.held.next_ticket();
        let mut frames_expected = 0;
        for side in Side::BOTH {
            let names = &per_side[side];
            if names.is_empty() {
                continue;
            }
            let mut args: Vec<&[u8]> = Vec::with_capacity(names.len() + 1);
            args.push(what.upstream_name());
            args.extend(names.iter().map(|n| &n[..]));
            // One confirmation frame per name, duplicates included.
            frames_expected += names.len();
            self.send_subscription(side, &Command::from_args(&args), id, names.len());
        }
        if frames_expected == 0 {
            self.local(Bytes::from(out));
        } else {
            self.order.wait(id, frames_expected, Bytes::from(out));
        }
    }

    /// The routing table changed: subscriptions on a cache their route no
    /// longer publishes to follow it (subscribed where it publishes now,
    /// then left where they were; the client sees neither). The route
    /// settles until both are confirmed, so a message published after the
    /// flip waits for the new subscription.
    pub(super) fn move_subscriptions(&mut self) {
        if self.subs.is_empty() {
            return;
        }
        let table = self.shared.router.load();
        let moved = self.subs.stranded(|name| {
            let phase = table.routes[table.route_of(name)].phase_for(name);
            (phase.authoritative(), phase.mirror())
        });
        drop(table);
        self.subs.moving += 2 * moved.len();
        if self.subs.moving == 0 {
            self.subs.settled();
        }
        for (what, name, from, to) in moved {
            debug!(%from, %to, "subscription follows its route");
            let leave = match what {
                PubSubCmd::Subscribe => PubSubCmd::Unsubscribe,
                PubSubCmd::PSubscribe => PubSubCmd::PUnsubscribe,
                _ => PubSubCmd::SUnsubscribe,
            };
            let join = Command::from_args(&[what.upstream_name(), &name]);
            self.send(to, &join, Target::MoveAck);
            let part = Command::from_args(&[leave.upstream_name(), &name]);
            self.send(from, &part, Target::MoveAck);
        }
    }

    /// Registers the connection's subscriptions with the router while it
    /// has any (see [`Subscriptions::hold`]).
    fn hold_subscriptions(&mut self) {
        if self.subs.is_empty() {
            self.subs.hold = None;
            return;
        }
        if self.subs.hold.is_some() {
            return;
        }
        let router = &self.shared.router;
        self.subs.hold = loop {
            if let Some(hold) = router.block(router.load().version) {
                break Some(hold);
            }
        };
    }

    /// A moved subscription's confirmation (or error) came.
    pub(super) fn move_acked(&mut self) {
        self.subs.moving = self.subs.moving.saturating_sub(1);
        if self.subs.moving == 0 {
            self.subs.settled();
        }
    }

    /// Sends a (un)subscribe upstream, expecting `frames` confirmations.
    fn send_subscription(&mut self, side: Side, cmd: &Command, id: u64, frames: usize) {
        self.send(side, cmd, Target::SubAck(id));
        for _ in 1..frames {
            self.sides[side].expect_another(Target::SubAck(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified_by_their_first_bulk() {
        let k = |s: &str| frame_kind(s.as_bytes());
        assert_eq!(
            k("*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
            FrameKind::Message
        );
        assert_eq!(
            k(">4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nm\r\n"),
            FrameKind::Message
        );
        assert_eq!(
            k(">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"),
            FrameKind::Confirmation
        );
        assert_eq!(
            k(">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),
            FrameKind::Other
        );
        assert_eq!(k("*2\r\n+message\r\n:1\r\n"), FrameKind::Other);
        assert_eq!(k("$7\r\nmessage\r\n"), FrameKind::Other);
        assert_eq!(k("*1\r\n$\r\n"), FrameKind::Other);
        assert_eq!(k("*1\r\n$99\r\nmess\r\n"), FrameKind::Other);
    }
}
