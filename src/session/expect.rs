//! What a command sent to a cache expects of its reply: decided before it
//! is sent ([`Outbound`]), carried with it in its connection's queue
//! ([`Expect`]) until the reply comes or the connection is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::moving::Movable;
use super::Target;
use crate::mirror::backlog::Share;
use crate::routing::{Phase, RouteStats, Side};

#[derive(Debug)]
pub(super) struct Expect {
    pub(super) target: Target,
    /// When the reply is overdue; `None` for blocking commands.
    pub(super) deadline: Option<Instant>,
    /// For the latency histograms; `None` for blocking commands.
    pub(super) timing: Option<Timing>,
    /// The comparison this reply settles, with the other side's.
    pub(super) compare: Option<u64>,
    /// A blocking command: at the head of the queue, the connection is
    /// blocked in it.
    pub(super) blocking: bool,
    /// Sent while this connection held subscriptions in RESP2: its reply
    /// cannot be a `message` array, so one arriving now is a message.
    pub(super) subscribed: bool,
    /// A blocking command that may move to the other cache at a flip.
    pub(super) movable: Option<Box<Movable>>,
    /// `CLIENT UNBLOCK` was sent for it (to move it): a nil reply means it
    /// was not served here.
    pub(super) unblocking: bool,
    /// For the authoritative half of a mirrored write: its keys, counted in
    /// flight until this reply (a copy of one of them waits for both), and
    /// what to journal if this reply is lost (the mirror may have applied
    /// the write, the authoritative side may or may not have).
    pub(super) write: Option<Unconfirmed>,
    /// A write to the mirror: its share of the mirror backlog until this
    /// reply (or its loss).
    _backlog: Option<Share>,
}

/// The authoritative half of a mirrored write, until its reply: the
/// database it was sent in and its keys, counted in flight. (Its route and
/// side are the command's own: [`Timing::route`] and the connection's.)
#[derive(Debug)]
pub(super) struct Unconfirmed {
    pub(super) db: Option<u32>,
    pub(super) keys: crate::repair::Entered,
}

#[derive(Debug)]
pub(super) struct Timing {
    pub(super) sent: Instant,
    /// The route and the phase a client-bound command was routed in (a
    /// mirrored write's come from its target).
    pub(super) route: Option<(Arc<RouteStats>, Phase)>,
}

impl Expect {
    /// What `out` expects, sent now with command timeout `timeout`; and its
    /// part in the client's transaction.
    pub(super) fn of(out: Outbound, timeout: Option<Duration>) -> (Expect, Option<TxMark>) {
        let (deadline, timing) = if out.blocking {
            (None, None)
        } else {
            let now = Instant::now();
            let timing = Timing {
                sent: now,
                route: out.route,
            };
            (timeout.map(|t| now + t), Some(timing))
        };
        let expect = Expect {
            target: out.target,
            deadline,
            timing,
            compare: out.compare,
            blocking: out.blocking,
            subscribed: out.subscribed,
            movable: out.movable,
            unblocking: false,
            write: out.hold,
            _backlog: out.backlog,
        };
        (expect, out.tx)
    }

    pub(super) fn untimed(target: Target) -> Expect {
        Expect {
            target,
            deadline: None,
            timing: None,
            compare: None,
            blocking: false,
            subscribed: false,
            movable: None,
            unblocking: false,
            write: None,
            _backlog: None,
        }
    }

    /// Records the reply latency of this command, answered by `side`.
    pub(super) fn observe(&self, side: Side) {
        let Some(t) = &self.timing else { return };
        match (&t.route, &self.target) {
            (Some((stats, phase)), _) => stats.latency(*phase, side).observe(t.sent.elapsed()),
            (None, Target::Mirror(w)) => w
                .stats
                .latency(Phase::mirroring_to(side), side)
                .observe(t.sent.elapsed()),
            _ => {}
        }
    }
}

/// A command's part in the client's own transaction on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxMark {
    /// The client's `MULTI`: from here the connection queues commands.
    Open,
    /// A command queued in it.
    Inside,
    /// `EXEC`, `DISCARD` or `RESET`: the transaction ends here.
    Close,
}

/// What a command about to be sent expects of its reply, decided before it
/// is sent: whom the reply is for, whether it may block, the route whose
/// latency it counts in, the comparison it settles, the keys it holds in
/// flight and its share of the mirror backlog.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) target: Target,
    pub(super) blocking: bool,
    pub(super) route: Option<(Arc<RouteStats>, Phase)>,
    pub(super) compare: Option<u64>,
    pub(super) hold: Option<Unconfirmed>,
    /// Sent while the connection holds RESP2 subscriptions.
    pub(super) subscribed: bool,
    pub(super) backlog: Option<Share>,
    /// Its part in the client's transaction; `None` for everything else,
    /// which waits while one is open there.
    pub(super) tx: Option<TxMark>,
    /// A blocking command that may move at a flip.
    pub(super) movable: Option<Box<Movable>>,
}

impl From<Target> for Outbound {
    fn from(target: Target) -> Outbound {
        Outbound {
            target,
            blocking: false,
            route: None,
            compare: None,
            hold: None,
            backlog: None,
            tx: None,
            movable: None,
            subscribed: false,
        }
    }
}

impl Outbound {
    /// Exempt from the command timeout (a blocking command).
    pub(super) fn blocking(mut self, blocking: bool) -> Outbound {
        self.blocking = blocking;
        self
    }

    /// A client-bound command routed by this route in this phase: its
    /// latency is recorded there.
    pub(super) fn routed(mut self, stats: &Arc<RouteStats>, phase: Phase) -> Outbound {
        self.route = Some((stats.clone(), phase));
        self
    }

    /// A blocking command that may move to the other cache at a flip.
    pub(super) fn movable(mut self, m: Option<Box<Movable>>) -> Outbound {
        self.movable = m;
        self
    }

    /// Its part in the client's transaction.
    pub(super) fn in_tx(mut self, mark: TxMark) -> Outbound {
        self.tx = Some(mark);
        self
    }

    /// Its reply settles comparison `id` (with the other side's).
    pub(super) fn compared(mut self, id: Option<u64>) -> Outbound {
        self.compare = id;
        self
    }

    /// The authoritative half of mirrored write `hold`: its keys stay
    /// counted in flight until it is answered, and are journalled if it is
    /// lost.
    pub(super) fn holding(mut self, hold: Unconfirmed) -> Outbound {
        self.hold = Some(hold);
        self
    }
}
