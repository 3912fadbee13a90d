//! The client's connection to one cache: one ordered outbound queue.
//!
//! Every command bound for that connection goes through [`SideConn::push`]:
//! the client's own, mirrored writes, held effects, retries, probes, shadow
//! reads and the proxy's own state commands. What its reply is for is
//! decided before it is sent ([`Outbound`]) and travels with it
//! ([`Expect`]); replies arrive in send order, so matching is positional.
//! `push` returns a [`Sent`] handle; [`SideConn::fail`] drops the
//! connection and returns one [`Lost`] value describing what went with it.

use std::collections::VecDeque;
use std::future::pending;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

pub(super) use super::expect::{Expect, Outbound, TxMark};
use super::fallback::FallbackOld;
use super::keyspace::KeysPart;
use super::moving::MovedSlot;
use super::{MirrorWrite, Target};
use crate::error::UpstreamError;
use crate::protocol::{Command, ReplyScanner};
use crate::routing::{RouteStats, Side};
use crate::upstream::{shared, Conn};

/// Replies a session may owe on a shared connection at a time: a client
/// that stops reading holds at most this many in the proxy.
pub(super) const MAX_SHARED_OWED: usize = 32;

/// A command held back by a gate, or the gate.
#[derive(Debug)]
enum Gated {
    Gate(u64),
    Cmd(Box<(Bytes, Expect, Option<Duration>, Option<TxMark>)>),
}

/// A gate on one connection (see [`SideConn::gate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Gate {
    conn: u64,
    id: u64,
}

/// A command queued on a side: its place among everything ever sent there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sent {
    pub(super) side: Side,
    pub(super) seq: u64,
}

/// What a failed connection took with it, in send order where it matters.
#[derive(Debug, Default)]
pub(super) struct Lost {
    /// It failed while still connecting (its failure was logged by the
    /// upstream's backoff).
    pub(super) was_connecting: bool,
    /// Client-bound replies answered with the error instead.
    pub(super) failed_replies: usize,
    /// Effect tickets whose authoritative reply will never come.
    pub(super) effects: Vec<u64>,
    /// Subscription waits whose confirmations will never come.
    pub(super) acks: Vec<u64>,
    /// Mirrored writes never answered.
    pub(super) writes: Vec<MirrorWrite>,
    /// Writes whose authoritative reply never came: the outcome there is
    /// unknown, the mirror may have applied them.
    pub(super) unknown: Vec<MirrorWrite>,
    /// Fallback reads on old never answered.
    pub(super) fallbacks: Vec<FallbackOld>,
    /// Blocking commands moved here at a flip, never answered.
    pub(super) moved: Vec<MovedSlot>,
    /// `KEYS` answers never given, with old's place kept in the order.
    pub(super) keys: Vec<(KeysPart, Option<u64>)>,
}

/// A client-bound reply in its side's order.
#[derive(Debug)]
pub(super) enum Ready {
    Done(Bytes),
    /// Answered by the other cache instead (a read fallback): filled when
    /// that reply comes. Push frames that arrived after it wait with it.
    Pending(Vec<Bytes>),
}

pub(super) enum Link {
    Idle,
    Connecting(JoinHandle<Result<Conn, UpstreamError>>),
    Up(Conn),
    /// A place on a shared connection (`connections = "shared"`).
    Shared(Box<shared::Handle>),
}

pub(super) enum SideEvent {
    Connected(Result<Conn, UpstreamError>),
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    /// The queued commands went to the shared connection.
    Handed,
    /// The shared connection failed with this session's commands on it.
    SharedFailed(UpstreamError),
    /// The shared connection had closed while it owed the session
    /// nothing: the queued commands go to another one.
    SharedGone,
}

/// The client's connection to one upstream and what is in flight on it.
pub(super) struct SideConn {
    pub(super) side: Side,
    pub(super) link: Link,
    /// Bytes queued for the upstream (written when connected and writable).
    pub(super) wbuf: BytesMut,
    /// On a shared connection: where each command queued in `wbuf` ends
    /// (counted from the first byte ever queued: `whanded` bytes were
    /// handed over), so that commands go over in whole pieces and at most
    /// [`MAX_SHARED_OWED`] replies are owed at a time.
    wends: VecDeque<usize>,
    whanded: usize,
    pub(super) rbuf: BytesMut,
    pub(super) scanner: ReplyScanner,
    pub(super) inflight: VecDeque<Expect>,
    /// Client-bound replies that arrived before their turn in `order`.
    pub(super) ready: VecDeque<Ready>,
    /// Replies taken from `ready` so far: absolute positions for fills.
    pub(super) ready_base: u64,
    /// The client's MULTI is open on this connection: anything else sent
    /// here would be queued in it (and run at its EXEC, or be dropped by
    /// its DISCARD), so it waits in `deferred` until the transaction ends.
    client_tx: bool,
    /// Commands held back while `client_tx`, with their command timeout
    /// (their deadline runs from when they are sent).
    deferred: VecDeque<(Bytes, Expect, Option<Duration>)>,
    /// Commands queued here so far.
    sent: u64,
    /// Commands held back by gates (connection state the other cache has
    /// not answered yet), with the gates, in order.
    gated: VecDeque<Gated>,
    gates: usize,
    next_gate: u64,
    /// Which connection this is (one more each time it is dropped): a gate
    /// of an earlier one means nothing to it.
    conn_id: u64,
    /// It refused a connection state the answering cache accepted: it is
    /// not in the client's state, so mirrored writes are not sent to it.
    pub(super) diverged: bool,
    /// The connection's id on the cache (`CLIENT ID`), asked for ahead of
    /// its first movable blocking command.
    pub(super) client_id: Option<i64>,
    pub(super) asked_id: bool,
}

impl SideConn {
    pub(super) fn new(side: Side, max_depth: usize) -> SideConn {
        SideConn {
            side,
            link: Link::Idle,
            wbuf: BytesMut::new(),
            wends: VecDeque::new(),
            whanded: 0,
            rbuf: BytesMut::new(),
            scanner: ReplyScanner::new(max_depth),
            inflight: VecDeque::new(),
            ready: VecDeque::new(),
            ready_base: 0,
            client_tx: false,
            deferred: VecDeque::new(),
            sent: 0,
            client_id: None,
            asked_id: false,
            gated: VecDeque::new(),
            gates: 0,
            next_gate: 0,
            conn_id: 0,
            diverged: false,
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        matches!(self.link, Link::Idle)
    }

    /// On a shared connection.
    pub(super) fn is_shared(&self) -> bool {
        matches!(self.link, Link::Shared(_))
    }

    /// A command was queued in `wbuf`: on a shared connection, where it
    /// ends.
    fn note_queued(&mut self) {
        if self.is_shared() {
            self.wends.push_back(self.whanded + self.wbuf.len());
        }
    }

    /// A new place on a shared connection, the commands queued here
    /// going there (the one given before had closed owing nothing).
    pub(super) fn reattach(&mut self, handle: shared::Handle) {
        self.link = Link::Shared(Box::new(handle));
    }

    /// Leaves the shared connection once nothing of this session is on it
    /// (the next command opens a connection of its own). False while
    /// replies are still owed there.
    pub(super) fn leave_shared(&mut self) -> bool {
        if !self.is_shared() {
            return true;
        }
        if !(self.inflight.is_empty() && self.wbuf.is_empty()) {
            return false;
        }
        self.link = Link::Idle;
        self.rbuf.clear();
        self.whanded = 0;
        true
    }

    /// Whether the connection is blocked in a client's blocking command:
    /// everything sent before it was answered, so it is running now.
    pub(super) fn blocked(&self) -> bool {
        self.inflight.front().is_some_and(|e| e.blocking)
    }

    pub(super) fn settled(&self) -> bool {
        self.inflight.is_empty()
            && self.wbuf.is_empty()
            && self.deferred.is_empty()
            && self.gated.is_empty()
    }

    /// The client's MULTI is open on this connection.
    pub(super) fn in_client_tx(&self) -> bool {
        self.client_tx
    }

    /// Whether the reply at the head of this connection's queue goes to
    /// the client (or, with nothing queued, a push frame would).
    pub(super) fn head_feeds_client(&self) -> bool {
        match self.inflight.front().map(|e| &e.target) {
            None => true,
            Some(t) => matches!(
                t,
                Target::Client { .. }
                    | Target::Effect(_)
                    | Target::SubAck(_)
                    | Target::FallbackNew(_)
                    | Target::FallbackOld(_)
                    | Target::Moved(_)
                    | Target::Keys(_)
                    | Target::ScanPage(_)
            ),
        }
    }

    /// The next thing that happens on this connection. With `read` false
    /// (the client is not taking its replies) nothing is read from it.
    pub(super) async fn event(&mut self, read: bool) -> SideEvent {
        match &mut self.link {
            Link::Idle => pending().await,
            Link::Connecting(task) => SideEvent::Connected(match task.await {
                Ok(r) => r,
                Err(e) => Err(UpstreamError::Io {
                    side: self.side,
                    addr: String::new(),
                    source: std::io::Error::other(e),
                }),
            }),
            Link::Shared(h) => {
                let owed = self.inflight.len().saturating_sub(self.wends.len());
                let room = MAX_SHARED_OWED.saturating_sub(owed).min(self.wends.len());
                if room > 0 {
                    if owed == 0 && h.is_closed() {
                        // Nothing of ours on it: another one takes these.
                        return SideEvent::SharedGone;
                    }
                    let end = self.wends[room - 1] - self.whanded;
                    let bytes = self.wbuf.split_to(end).freeze();
                    self.whanded += end;
                    self.wends.drain(..room);
                    return match h.send(bytes, room) {
                        true => SideEvent::Handed,
                        false => SideEvent::Read(Ok(0)),
                    };
                }
                if !read {
                    return pending().await;
                }
                match h.recv().await {
                    Some(shared::Reply::Frames(frames)) => {
                        let n = frames.iter().map(Bytes::len).sum();
                        for f in frames {
                            self.rbuf.extend_from_slice(&f);
                        }
                        SideEvent::Read(Ok(n))
                    }
                    Some(shared::Reply::Failed(e)) => SideEvent::SharedFailed(e),
                    None => SideEvent::Read(Ok(0)),
                }
            }
            Link::Up(conn) => {
                let want_write = !self.wbuf.is_empty();
                tokio::select! {
                    biased;
                    r = conn.wr.write(&self.wbuf), if want_write => SideEvent::Wrote(r),
                    r = conn.rd.read_buf(&mut self.rbuf), if read => SideEvent::Read(r),
                    else => pending().await,
                }
            }
        }
    }

    /// Queues `cmd` with what its reply is for; the connection must be
    /// open or opening. `timeout`: the upstream's command timeout.
    pub(super) fn push(&mut self, cmd: &Command, out: Outbound, timeout: Option<Duration>) -> Sent {
        let (expect, tx) = Expect::of(out, timeout);
        if self.gates > 0 {
            let held = Box::new((cmd.raw().clone(), expect, timeout, tx));
            self.gated.push_back(Gated::Cmd(held));
        } else {
            self.place(cmd.raw(), expect, timeout, tx);
        }
        self.sent += 1;
        Sent {
            side: self.side,
            seq: self.sent,
        }
    }

    /// Queues a command no gate holds back: behind the client's open
    /// transaction (unless part of it), or on the wire.
    fn place(
        &mut self,
        raw: &Bytes,
        expect: Expect,
        timeout: Option<Duration>,
        tx: Option<TxMark>,
    ) {
        if self.client_tx && tx.is_none() {
            // (The command's bytes are copied only when they must wait.)
            self.deferred.push_back((raw.clone(), expect, timeout));
        } else {
            self.wbuf.extend_from_slice(raw);
            self.note_queued();
            self.inflight.push_back(expect);
        }
        match tx {
            Some(TxMark::Open) => self.client_tx = true,
            Some(TxMark::Close) => self.end_client_tx(),
            Some(TxMark::Inside) | None => {}
        }
    }

    /// Holds back everything sent here from now on until [`SideConn::ungate`]
    /// (a connection-state command the other cache answers: this one gets it
    /// only if that one accepted it). Returns the gate's name.
    pub(super) fn gate(&mut self) -> Gate {
        self.gates += 1;
        self.next_gate += 1;
        self.gated.push_back(Gated::Gate(self.next_gate));
        Gate {
            conn: self.conn_id,
            id: self.next_gate,
        }
    }

    fn gate_at(&self, gate: Gate) -> Option<usize> {
        if gate.conn != self.conn_id {
            return None;
        }
        self.gated
            .iter()
            .position(|g| matches!(g, Gated::Gate(id) if *id == gate.id))
    }

    /// The other cache accepted the state command `gate` waited for:
    /// `cmd` (this connection's version of it) takes the gate's place, and
    /// a new gate right behind it holds what waited until this cache
    /// answers it too (`make` builds what `cmd` expects, naming that gate).
    /// A gate of a connection since dropped is ignored.
    pub(super) fn carry(&mut self, gate: Gate, cmd: &Command, make: impl FnOnce(Gate) -> Outbound) {
        let Some(i) = self.gate_at(gate) else {
            return;
        };
        self.next_gate += 1;
        let next = Gate {
            conn: self.conn_id,
            id: self.next_gate,
        };
        let (expect, tx) = Expect::of(make(next), None);
        self.gated[i] = Gated::Cmd(Box::new((cmd.raw().clone(), expect, None, tx)));
        self.gated.insert(i + 1, Gated::Gate(next.id));
        self.flush_gated(&mut Vec::new());
    }

    /// `gate` opens: what it held back goes on, up to the next gate. With
    /// `diverged` (this cache refused a state the client is in), mirrored
    /// writes among it are not sent but returned, and so are those sent
    /// here from now on ([`SideConn::diverged`]).
    pub(super) fn ungate(&mut self, gate: Gate, diverged: bool) -> Vec<MirrorWrite> {
        let mut dropped = Vec::new();
        let Some(i) = self.gate_at(gate) else {
            return dropped;
        };
        self.gates -= 1;
        self.gated.remove(i);
        self.diverged |= diverged;
        self.flush_gated(&mut dropped);
        dropped
    }

    /// Sends what the gates no longer hold back (a diverged connection's
    /// mirrored writes go to `dropped` instead).
    fn flush_gated(&mut self, dropped: &mut Vec<MirrorWrite>) {
        while let Some(Gated::Cmd(..)) = self.gated.front() {
            let Some(Gated::Cmd(held)) = self.gated.pop_front() else {
                unreachable!("checked above")
            };
            let (raw, mut expect, timeout, tx) = *held;
            if self.diverged {
                if let Target::Mirror(_) = expect.target {
                    let Target::Mirror(w) = expect.target else {
                        unreachable!("checked above")
                    };
                    dropped.push(w);
                    continue;
                }
            }
            // Its deadline runs from when it is sent.
            if expect.deadline.is_some() {
                expect.deadline = timeout.map(|t| Instant::now() + t);
            }
            self.place(&raw, expect, timeout, tx);
        }
    }

    /// One more reply frame to the command queued last (a (un)subscribe
    /// is confirmed once per channel), untimed.
    pub(super) fn expect_another(&mut self, target: Target) {
        let expect = Expect::untimed(target);
        if self.gates > 0 {
            let held = Box::new((Bytes::new(), expect, None, None));
            self.gated.push_back(Gated::Cmd(held));
        } else if self.client_tx {
            self.deferred.push_back((Bytes::new(), expect, None));
        } else {
            self.inflight.push_back(expect);
        }
    }

    /// Fills the client's reply at absolute position `pos` of this side's
    /// replies, left pending for an answer from elsewhere (a fallback read
    /// on old, a blocking command moved at a flip). Push frames that came
    /// after it, waiting with it, follow it.
    pub(super) fn fill(&mut self, pos: u64, answer: Bytes) {
        let Some(i) = pos
            .checked_sub(self.ready_base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(slot) = self.ready.get_mut(i) {
            if let Ready::Pending(pushes) = slot {
                let mut joined = BytesMut::from(&answer[..]);
                for p in pushes.iter() {
                    joined.extend_from_slice(p);
                }
                *slot = Ready::Done(joined.freeze());
            }
        }
    }

    /// The client's transaction ended: what waited for it goes out now,
    /// in order, its deadlines running from now.
    fn end_client_tx(&mut self) {
        self.client_tx = false;
        let now = Instant::now();
        // (Never on a shared connection: a transaction has its own.)
        for (raw, mut expect, timeout) in self.deferred.drain(..) {
            if expect.deadline.is_some() {
                expect.deadline = timeout.map(|t| now + t);
            }
            if let Some(t) = &mut expect.timing {
                t.sent = now;
            }
            self.wbuf.extend_from_slice(&raw);
            self.inflight.push_back(expect);
        }
    }

    /// Drops the connection: every client-bound reply still expected
    /// becomes `reply` (in its place), buffers are cleared, and what else
    /// was in flight is returned. `abandoned`: the proxy closed it (the
    /// client left), so it is no upstream failure.
    pub(super) fn fail(&mut self, reply: &Bytes, max_depth: usize, abandoned: bool) -> Lost {
        let mut lost = Lost {
            was_connecting: matches!(self.link, Link::Connecting(_)),
            ..Lost::default()
        };
        if let Link::Connecting(task) = &self.link {
            task.abort();
        }
        self.client_tx = false;
        let deferred = self.deferred.drain(..).map(|(_, e, _)| e);
        let gated = self.gated.drain(..).filter_map(|g| match g {
            Gated::Cmd(held) => Some(held.1),
            Gated::Gate(_) => None,
        });
        let expects: Vec<Expect> = self
            .inflight
            .drain(..)
            .chain(deferred)
            .chain(gated)
            .collect();
        for e in expects {
            let failed_route = e.timing.as_ref().and_then(|t| t.route.as_ref());
            if let (Some(w), Some((stats, _))) = (e.write, failed_route) {
                lost.unknown.push(MirrorWrite {
                    stats: stats.clone(),
                    from: self.side,
                    db: w.db,
                    keys: w.keys,
                    check: None,
                    hold: None,
                });
            }
            match e.target {
                Target::Keys(p) => {
                    // Old's answer has the client's place: kept for the merge.
                    let reserved = (p.side == Side::Old && !p.again).then(|| {
                        lost.failed_replies += 1;
                        let pos = self.ready_base + self.ready.len() as u64;
                        self.ready.push_back(Ready::Pending(Vec::new()));
                        pos
                    });
                    lost.keys.push((*p, reserved));
                }
                Target::Client { .. } | Target::FallbackNew(_) | Target::ScanPage(_) => {
                    self.ready.push_back(Ready::Done(reply.clone()));
                    lost.failed_replies += 1;
                    if let Some((stats, _)) = failed_route.filter(|_| !abandoned) {
                        RouteStats::bump(&stats.upstream_failed);
                    }
                }
                Target::FallbackOld(f) => lost.fallbacks.push(*f),
                Target::Moved(slot) => lost.moved.push(*slot),
                Target::Effect(ticket) => {
                    self.ready.push_back(Ready::Done(reply.clone()));
                    lost.failed_replies += 1;
                    lost.effects.push(ticket);
                }
                Target::SubAck(id) => lost.acks.push(id),
                Target::Probe(_)
                | Target::Shadow(_)
                | Target::Quiet(_)
                | Target::ClientId
                | Target::MoveAck
                | Target::OtherState(_) => {}
                Target::Mirror(w) => {
                    RouteStats::bump(&w.stats.mirror_failed);
                    lost.writes.push(w);
                }
            }
        }
        self.reset(max_depth);
        lost
    }

    /// Back to no connection, with nothing sent and no state.
    fn reset(&mut self, max_depth: usize) {
        self.gates = 0;
        self.conn_id += 1;
        self.diverged = false;
        self.link = Link::Idle;
        self.client_id = None;
        self.asked_id = false;
        self.wbuf.clear();
        self.wends.clear();
        self.whanded = 0;
        self.rbuf.clear();
        self.scanner = ReplyScanner::new(max_depth);
    }
}
