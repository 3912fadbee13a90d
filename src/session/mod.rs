//! One client connection: decode, classify, route, and return replies in the
//! order the client sent its commands.
//!
//! A session is a single task owning the client socket and the client's own
//! connection to each upstream it uses (opened lazily). Commands are parsed
//! from the client's bytes, routed with one load of the routing table each,
//! and their original bytes appended to the chosen upstream's write buffer,
//! so a pipeline goes out in one write. Every command sent records what its
//! reply is for ([`Target`]): the client (a slot in `order`), a mirror (counted
//! and dropped), or setup (checked and dropped). Replies from each upstream
//! arrive in send order, so matching is positional; `order` then interleaves
//! the two sides back into the client's order.
//!
//! What a session must not do: wait on a mirror. A mirror's replies, errors,
//! slowness or death only change counters.

mod auth;
mod compare;
mod fallback;
mod held;
mod plan;
mod pubsub;
mod refusal;
mod route;
mod side;
mod state;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;
use tracing::{debug, trace, warn};

use crate::commands::{self, StateCmd};
use crate::error::UpstreamError;
use crate::protocol::{Command, ReplyKind, RequestParser, Value};
use crate::repair::{Entered, Keys};
use crate::routing::{PerSide, RouteStats, RouteTable, Side};
use crate::shared::Shared;

use side::{Expect, Link, Outbound, Ready, Sent, SideConn, SideEvent};
pub use state::ConnState;

/// One shadow read in flight, released when its reply came or was lost.
#[derive(Debug)]
struct ShadowSlot(Arc<AtomicUsize>);

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stop reading from a client that has this many replies outstanding or
/// this many reply bytes unread (Redis's output-buffer limits, simplified).
const MAX_PENDING_REPLIES: usize = 100_000;
const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// How long a closing session waits for mirrored writes still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the reply to a command sent upstream goes.
#[derive(Debug)]
enum Target {
    /// To the client, in order. `state`: a connection-state command, which
    /// becomes part of the confirmed state if this reply is not an error.
    Client { state: bool },
    /// To the client, in order; then the held mirrored write waiting for
    /// this reply (ticket) is derived from it and released.
    Effect(u64),
    /// One confirmation frame of a (un)subscribe the proxy answers itself
    /// once every frame of it arrived (the wait with this id).
    SubAck(u64),
    /// A mirrored write: counted on its route, never shown to the client.
    Mirror(MirrorWrite),
    /// A mirrored EVALSHA (this command): on NOSCRIPT it is retried as
    /// EVAL with the body the proxy saw.
    MirrorEvalSha(MirrorWrite, Command),
    /// `EXISTS key` sent to the mirror ahead of compared write `id`, which
    /// changes its key in place: 0 means the mirror lacked the key.
    Probe(u64),
    /// To the client, in order, unless it is empty: then the read is asked
    /// of old (read fallback).
    FallbackNew(Box<fallback::FallbackRead>),
    /// A fallback read on old: its reply takes new's place.
    FallbackOld(Box<fallback::FallbackOld>),
    /// A shadow read on the other cache: compared, never shown.
    Shadow(#[allow(dead_code)] ShadowSlot), // held for its Drop
    /// Proxy-internal (state propagated to the other side, a DISCARD in
    /// place of an aborted EXEC): dropped, errors logged.
    Quiet(&'static str),
}

/// A write sent to the mirror side.
#[derive(Debug)]
struct MirrorWrite {
    stats: Arc<RouteStats>,
    /// The side that answered the client: copies come from there.
    from: Side,
    db: Option<u32>,
    /// Its keys, counted in flight until it is answered or lost (a copy of
    /// one of them waits).
    keys: Entered,
    /// For a write mirrored as its effect, the reply that shows the mirror
    /// held what the authoritative side did; another one queues a copy.
    check: Option<Box<Value>>,
}

/// The keys `cmd` writes, by the command table (for commands the proxy
/// builds: effects, transaction bodies).
fn written_keys(cmd: &Command) -> Keys {
    match commands::lookup(cmd) {
        Some(spec) => keys_at(cmd, &commands::key_positions(spec, cmd)),
        None => Keys::new(),
    }
}

fn keys_at(cmd: &Command, positions: &[usize]) -> Keys {
    positions.iter().filter_map(|&i| cmd.arg_bytes(i)).collect()
}

/// A position in the client's reply order.
#[derive(Debug)]
enum Slot {
    /// The next client-bound reply from this side.
    Upstream(Side),
    /// A reply made by the proxy (errors, QUIT's OK).
    Local(Bytes),
    /// Close the connection once everything before this is written.
    Close,
    /// A reply made by the proxy that waits for upstream confirmations
    /// (`sub_waits[id]` frames still to come).
    Wait(u64, Bytes),
}

/// An open MULTI.
///
/// MULTI itself is answered by the proxy and sent upstream only once the
/// first queued command (or WATCH) tells which side the transaction runs on.
#[derive(Debug, Default)]
struct Tx {
    /// The authoritative side of every command queued so far.
    side: Option<Side>,
    /// A command was refused while queueing: EXEC aborts, as Redis does
    /// after a queueing error.
    aborted: bool,
    /// The connection to `side` dropped: MULTI is gone there, so further
    /// commands must not be sent (they would run at once).
    lost: bool,
    /// A command was served by the other side: EXEC fails with this error
    /// and nothing runs anywhere (Redis cluster's CROSSSLOT at EXEC).
    crossroute: Option<refusal::Refusal>,
    /// Commands queued on `side` so far: the index of the next one in the
    /// EXEC reply.
    queued: usize,
    /// Writes to mirror as one MULTI block once EXEC returns an array.
    mirror: Vec<held::TxItem>,
}

pub struct Session<R, W> {
    shared: Arc<Shared>,
    client_rd: R,
    client_wr: W,
    cbuf: BytesMut,
    parser: RequestParser,
    out: BytesMut,
    order: VecDeque<Slot>,
    sides: PerSide<SideConn>,
    /// State the client set and an upstream accepted: what a new upstream
    /// connection is set up with.
    state: ConnState,
    /// State commands sent but not yet answered, with the side that answers.
    /// A connection opened meanwhile gets them after its setup.
    pending_state: VecDeque<(Side, StateCmd, Command)>,
    tx: Option<Tx>,
    /// Mirrored writes waiting for an authoritative reply, and those queued
    /// behind them.
    held: VecDeque<held::Held>,
    ticket: u64,
    /// Accumulates routes' shadow fractions; a read is shadowed each time
    /// it passes 1 (evenly spaced, no randomness needed).
    shadow_credit: f64,
    subs: pubsub::Subscriptions,
    /// Subscriptions held on each side's connection.
    sub_count: PerSide<usize>,
    /// Confirmation frames still expected, per proxy-made (un)subscribe
    /// reply; an upstream error replaces that reply.
    sub_waits: HashMap<u64, (usize, Option<Bytes>)>,
    /// The side WATCH went to; MULTI must follow it there.
    watch_side: Option<Side>,
    /// The side the connection's SCAN iteration runs on.
    scan_side: Option<Side>,
    /// Mirrored writes whose two replies are being compared.
    compares: compare::Compares,
    /// With client tracking on: the table reads were routed by, to tell
    /// the client to flush its cache when a key's read side changes.
    tracking_table: Option<Arc<RouteTable>>,
    table_changes: watch::Receiver<u64>,
    /// A `CLIENT CACHING` sent to this side, which must follow the next
    /// command to whichever cache serves it.
    caching: Option<(Side, Command)>,
    /// Whether commands pass `[auth]`: true from the start without it.
    authenticated: bool,
    /// The session started with `[auth]`: every command goes through the gate.
    auth_on: bool,
    /// Still reading commands from the client.
    reading: bool,
    /// Commands are waiting in `cbuf`, unparsed, until the client takes
    /// some of its replies.
    parse_paused: bool,
    /// Client output failed: replies are dropped, mirrors still drained.
    client_gone: bool,
    drain_deadline: Option<Instant>,
    /// When the client last sent bytes (for `limits.idle_timeout_secs`).
    last_heard: Instant,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub fn new(shared: Arc<Shared>, client_rd: R, client_wr: W) -> Session<R, W> {
        let depth = shared.limits.max_reply_depth;
        let parser = RequestParser::new(shared.limits.max_bulk_len);
        let table_changes = shared.router.changes();
        let auth_on = shared.auth.load().is_some();
        Session {
            shared,
            client_rd,
            client_wr,
            cbuf: BytesMut::with_capacity(16 * 1024),
            parser,
            out: BytesMut::with_capacity(16 * 1024),
            order: VecDeque::new(),
            sides: PerSide::from_fn(|side| SideConn::new(side, depth)),
            state: ConnState::default(),
            pending_state: VecDeque::new(),
            tx: None,
            held: VecDeque::new(),
            ticket: 0,
            shadow_credit: 0.0,
            subs: pubsub::Subscriptions::default(),
            sub_count: PerSide::default(),
            sub_waits: HashMap::new(),
            watch_side: None,
            scan_side: None,
            compares: compare::Compares::default(),
            tracking_table: None,
            table_changes,
            caching: None,
            authenticated: !auth_on,
            auth_on,
            reading: true,
            parse_paused: false,
            client_gone: false,
            drain_deadline: None,
            last_heard: Instant::now(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
        }
    }

    /// Runs until the client leaves (or is closed) and in-flight mirrored
    /// writes have landed, or `shutdown` fires and the session has drained.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Created once: a future made per loop turn would register and
        // deregister a waiter on every command.
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        let mut stopping = false;
        if self.authenticated {
            self.open_early();
        }
        loop {
            self.drain_ready();
            if !self.reading {
                if self.done() {
                    break;
                }
                let deadline = *self
                    .drain_deadline
                    .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if Instant::now() >= deadline {
                    self.abandon();
                    break;
                }
            }
            let room = self.order.len() < MAX_PENDING_REPLIES && !self.backpressured();
            if self.parse_paused && self.reading && room {
                // Commands read before the client fell behind come first.
                self.parse_paused = false;
                self.on_client_bytes();
                continue;
            }
            self.arm_timer();
            let can_read = self.reading && room && !self.parse_paused;
            let write_client = !self.out.is_empty() && !self.client_gone;
            let timer_armed = self.timer_at.is_some();
            let tracking = self.tracking_table.is_some();
            let backpressured = self.backpressured();
            let (old, new) = self.sides.both_mut();
            let read_old = !backpressured || !old.head_feeds_client();
            let read_new = !backpressured || !new.head_feeds_client();
            tokio::select! {
                biased;
                ev = old.event(read_old) => self.on_side_event(Side::Old, ev),
                ev = new.event(read_new) => self.on_side_event(Side::New, ev),
                r = self.client_wr.write(&self.out), if write_client => match r {
                    Ok(n) if n > 0 => self.out.advance(n),
                    _ => self.client_left(),
                },
                r = self.client_rd.read_buf(&mut self.cbuf), if can_read => match r {
                    Ok(n) if n > 0 => self.on_client_bytes(),
                    _ => self.reading = false,
                },
                () = &mut self.timer, if timer_armed => self.on_timer(),
                r = self.table_changes.changed(), if tracking => match r {
                    Ok(()) => self.on_table_change(),
                    Err(_) => self.tracking_table = None,
                },
                () = &mut stop, if !stopping => {
                    stopping = true;
                    self.reading = false;
                }
            }
        }
        // What abandon() answered still reaches the client, briefly bounded.
        self.drain_ready();
        if !self.client_gone && !self.out.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.client_wr.write_all(&self.out))
                    .await;
        }
        let _ = self.client_wr.shutdown().await;
    }

    /// With a route in a dual phase, opens both connections now: a write
    /// whose mirror connection is still being set up would reach the mirror
    /// later than it reaches the authoritative side, and another client
    /// acting on its effect (a blocked pop it feeds) could get there first.
    /// Called at start, or once the client authenticated to the proxy.
    fn open_early(&mut self) {
        let dual = self
            .shared
            .router
            .load()
            .routes
            .iter()
            .any(|r| r.phase.mirror().is_some());
        if dual {
            for side in Side::BOTH {
                if self.sides[side].is_idle() && self.shared.upstream(side).may_try() {
                    self.open(side);
                }
            }
        }
    }

    fn done(&self) -> bool {
        let client_done = self.client_gone || (self.order.is_empty() && self.out.is_empty());
        client_done && self.held.is_empty() && self.sides.iter().all(SideConn::settled)
    }

    fn client_left(&mut self) {
        self.client_gone = true;
        self.reading = false;
        self.out.clear();
    }

    /// Gives up on whatever is still in flight when the drain times out.
    fn abandon(&mut self) {
        for s in Side::BOTH {
            let err = UpstreamError::Timeout {
                side: s,
                addr: self.shared.upstream(s).addr().into(),
                after: DRAIN_TIMEOUT,
            };
            if !self.sides[s].settled() {
                self.fail_side(s, err);
            }
        }
    }

    fn on_client_bytes(&mut self) {
        self.last_heard = Instant::now();
        loop {
            if self.order.len() >= MAX_PENDING_REPLIES {
                // The rest waits in the buffer until the client takes
                // some replies.
                if !self.parse_paused {
                    trace!(
                        pending = self.order.len(),
                        out = self.out.len(),
                        "client not taking its replies: not reading from it"
                    );
                }
                self.parse_paused = true;
                return;
            }
            match self.parser.parse(&mut self.cbuf) {
                Ok(Some(cmd)) => {
                    let cmd = match self.auth_on {
                        true => match self.auth_gate(cmd) {
                            Some(cmd) => cmd,
                            None => continue,
                        },
                        false => cmd,
                    };
                    self.dispatch(cmd);
                    if !self.reading {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    debug!(error = %e, "client protocol error; closing");
                    self.local(
                        refusal::Refusal::Protocol {
                            error: e.to_string(),
                        }
                        .reply(),
                    );
                    self.close_after_replies();
                    return;
                }
            }
        }
    }

    /// Queues a proxy-made reply in order.
    fn local(&mut self, reply: Bytes) {
        self.order.push_back(Slot::Local(reply));
    }

    fn close_after_replies(&mut self) {
        self.order.push_back(Slot::Close);
        self.reading = false;
        self.cbuf.clear();
    }

    /// Sends `cmd` to `side`, opening the connection if needed, with what
    /// its reply is for. `None` when it was not sent: a mirrored write to
    /// a mirror in its reconnect backoff is counted as failed and its keys
    /// journalled instead.
    fn send(&mut self, side: Side, cmd: &Command, out: impl Into<Outbound>) -> Option<Sent> {
        let mut out = out.into();
        if self.sides[side].is_idle() {
            if let Target::Mirror(w) | Target::MirrorEvalSha(w, _) = &out.target {
                if !self.shared.upstream(side).may_try() {
                    RouteStats::bump(&w.stats.mirror_failed);
                    self.journal_lost(w);
                    return None;
                }
            }
            self.open(side);
        }
        if matches!(
            out.target,
            Target::Client { .. } | Target::Effect(_) | Target::FallbackNew(_)
        ) {
            self.order.push_back(Slot::Upstream(side));
        }
        if matches!(
            out.target,
            Target::Mirror(_) | Target::MirrorEvalSha(..) | Target::Quiet(_)
        ) {
            out.backlog = Some(self.shared.backlog.take(cmd.raw().len()));
        }
        let timeout = self.shared.upstream(side).config.command_timeout();
        Some(self.sides[side].push(cmd, out, timeout))
    }

    /// Starts connecting to `side` with the client's state.
    fn open(&mut self, side: Side) {
        let upstream = self.shared.upstream(side);
        let sc = &mut self.sides[side];
        {
            let shared = self.shared.clone();
            let own_credentials = upstream.config.password.is_some();
            let mut setup = upstream.base_setup();
            setup.extend(self.state.replay(upstream.config.db, own_credentials));
            let depth = self.shared.limits.max_reply_depth;
            sc.link = Link::Connecting(tokio::spawn(async move {
                shared.upstream(side).connect(setup, depth).await
            }));
            // State sent but not yet confirmed goes right after the setup, in
            // order, ahead of this command; if the side that answers it
            // refuses it, this side's refusal is only logged.
            for (_, kind, cmd) in &self.pending_state {
                if let Some(cmd) = state::for_other_side(*kind, cmd, own_credentials) {
                    sc.push(&cmd, Target::Quiet("connection state").into(), None);
                }
            }
        }
    }

    fn on_side_event(&mut self, side: Side, ev: SideEvent) {
        let sc = &mut self.sides[side];
        match ev {
            SideEvent::Connected(Ok(conn)) => sc.link = Link::Up(conn),
            SideEvent::Connected(Err(e)) => self.fail_side(side, e),
            SideEvent::Wrote(Ok(n)) if n > 0 => sc.wbuf.advance(n),
            SideEvent::Read(Ok(n)) if n > 0 => self.on_upstream_bytes(side),
            SideEvent::Wrote(r) | SideEvent::Read(r) => {
                let upstream = self.shared.upstream(side);
                let err = match r {
                    Err(source) => upstream.io_error(source),
                    Ok(_) => UpstreamError::Closed {
                        side,
                        addr: upstream.addr().into(),
                    },
                };
                if let UpstreamError::Tls { .. } = err {
                    // With TLS 1.3 a cache refuses a client certificate
                    // after our side of the handshake is done: a connect
                    // failure all the same, for the backoff and status.
                    upstream.record_failure(&err);
                }
                self.fail_side(side, err);
            }
        }
    }

    fn on_upstream_bytes(&mut self, side: Side) {
        loop {
            let sc = &mut self.sides[side];
            let reply = match sc.scanner.next(&mut sc.rbuf) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(source) => {
                    let addr = self.shared.upstream(side).addr().into();
                    return self.fail_side(side, UpstreamError::Protocol { side, addr, source });
                }
            };
            let awaiting_ack = matches!(
                sc.inflight.front(),
                Some(Expect {
                    target: Target::SubAck(_),
                    ..
                })
            );
            let pubsub = self.sub_count[side] > 0 || awaiting_ack;
            if reply.kind == ReplyKind::Push || pubsub {
                match pubsub::frame_kind(&reply.bytes) {
                    pubsub::FrameKind::Confirmation if awaiting_ack => {
                        let Some(Expect {
                            target: Target::SubAck(id),
                            ..
                        }) = sc.inflight.pop_front()
                        else {
                            unreachable!("checked above")
                        };
                        self.sub_ack(id, None);
                        continue;
                    }
                    // A message can only follow the replies to everything
                    // sent before the subscription; in RESP2 an array is a
                    // message only when no other reply is due.
                    pubsub::FrameKind::Message
                        if reply.kind == ReplyKind::Push
                            || sc.inflight.is_empty()
                            || awaiting_ack =>
                    {
                        if !self.client_gone {
                            self.out.extend_from_slice(&reply.bytes);
                        }
                        continue;
                    }
                    _ if reply.kind == ReplyKind::Push => {
                        // Out of band (invalidations, ...): never the reply
                        // to a command, but never ahead of one this side
                        // sent before it either: an invalidation overtaking
                        // the reply to an earlier read would leave a client
                        // cache holding the value it invalidates.
                        if !self.client_gone {
                            match self.sides[side].ready.back_mut() {
                                Some(Ready::Done(last)) => {
                                    let mut joined =
                                        BytesMut::with_capacity(last.len() + reply.bytes.len());
                                    joined.extend_from_slice(last);
                                    joined.extend_from_slice(&reply.bytes);
                                    *last = joined.freeze();
                                }
                                Some(Ready::Pending(pushes)) => pushes.push(reply.bytes),
                                None => self.out.extend_from_slice(&reply.bytes),
                            }
                        }
                        continue;
                    }
                    _ => {}
                }
            }
            let sc = &mut self.sides[side];
            let Some(expect) = sc.inflight.pop_front() else {
                let addr = self.shared.upstream(side).addr().into();
                warn!(%side, "reply with no command waiting for it; dropping the connection");
                return self.fail_side(side, UpstreamError::Closed { side, addr });
            };
            expect.observe(side);
            if let Some(id) = expect.compare {
                self.compare_reply(id, side, &reply.bytes);
            }
            match expect.target {
                Target::Client { state } => {
                    if state {
                        self.confirm_state(side, !reply.is_error());
                    }
                    self.sides[side].ready.push_back(Ready::Done(reply.bytes));
                }
                Target::Effect(ticket) => {
                    let value = (!reply.is_error()).then_some(&reply.bytes);
                    self.resolve_effect(ticket, value);
                    self.sides[side].ready.push_back(Ready::Done(reply.bytes));
                }
                Target::MirrorEvalSha(w, cmd) if reply.bytes.starts_with(b"-NOSCRIPT") => {
                    self.retry_script(side, w, &cmd);
                }
                Target::Mirror(w) | Target::MirrorEvalSha(w, _) => {
                    if let Some(expected) = &w.check {
                        self.check_effect(&w, expected, &reply.bytes);
                    }
                    let stats = &w.stats;
                    if reply.is_error() {
                        RouteStats::bump(&stats.mirror_errors);
                        // A compared or checked write is copied if the
                        // authoritative side did not fail alike.
                        if expect.compare.is_none() && w.check.is_none() {
                            self.journal_lost(&w);
                        }
                        debug!(%side, reply = %String::from_utf8_lossy(&reply.bytes).trim_end(), "mirror replied with an error");
                    } else {
                        RouteStats::bump(&stats.mirror_ok);
                    }
                }
                Target::FallbackNew(read) if !reply.is_error() => {
                    self.fallback_reply(*read, reply.bytes);
                }
                Target::FallbackNew(_) => {
                    self.sides[side].ready.push_back(Ready::Done(reply.bytes));
                }
                Target::FallbackOld(f) => self.fallback_filled(*f, Some(reply.bytes)),
                Target::Shadow(_) => {}
                Target::Probe(id) => {
                    if &reply.bytes[..] == b":0\r\n" {
                        self.compare_missing(id);
                    }
                }
                Target::SubAck(id) => {
                    // An error instead of a confirmation (an ACL refusal):
                    // it answers the whole command.
                    let sc = &mut self.sides[side];
                    while matches!(sc.inflight.front(), Some(Expect { target: Target::SubAck(i), .. }) if *i == id)
                    {
                        sc.inflight.pop_front();
                    }
                    self.sub_ack(id, Some(reply.bytes));
                }
                Target::Quiet(what) => {
                    if reply.is_error() {
                        warn!(%side, what, reply = %String::from_utf8_lossy(&reply.bytes).trim_end(), "upstream refused a command the proxy sent");
                    }
                }
            }
        }
    }

    /// Drops the connection to `side`: the client gets an error for each
    /// reply it was waiting for from it, mirrored writes count as failed.
    fn fail_side(&mut self, side: Side, err: UpstreamError) {
        let reply = err.reply();
        let depth = self.shared.limits.max_reply_depth;
        let lost = self.sides[side].fail(&reply, depth);
        let (lost_mirrors, failed_replies) = (lost.writes.len(), lost.failed_replies);
        // Failures while connecting are logged once per outage by the
        // upstream; a dropped connection is worth a warning when it cost
        // something.
        if (lost_mirrors > 0 || failed_replies > 0) && !lost.was_connecting {
            warn!(error = %err, lost_mirrors, failed_replies, "upstream connection dropped");
        } else {
            debug!(error = %err, lost_mirrors, failed_replies, "upstream connection dropped");
        }
        for w in &lost.writes {
            self.journal_lost(w);
        }
        for f in lost.fallbacks {
            self.fallback_filled(f, None);
        }
        self.compares.abandon();
        // Their replies will never come: they were not applied.
        self.pending_state.retain(|(s, _, _)| *s != side);
        if let Some(tx) = self.tx.as_mut().filter(|t| t.side == Some(side)) {
            tx.lost = true;
            tx.aborted = true;
        }
        if self.watch_side == Some(side) {
            self.watch_side = None;
        }
        for ticket in lost.effects {
            self.resolve_effect(ticket, None);
        }
        for id in lost.acks {
            self.sub_ack(id, Some(reply.clone()));
        }
        // Subscriptions held there are gone and the client cannot be told
        // in-band: close it, as a dead Redis would, so it resubscribes.
        if self.sub_count[side] > 0 {
            warn!(%side, "upstream holding this client's subscriptions dropped; closing the client");
            self.sub_count[side] = 0;
            self.close_after_replies();
        }
    }

    /// The mirror does not know the script an EVALSHA named: run it there as
    /// EVAL with the body seen earlier (which also loads it), or count it.
    fn retry_script(&mut self, side: Side, w: MirrorWrite, evalsha: &Command) {
        let stats = &w.stats;
        let body = evalsha.arg(1).and_then(|sha| self.shared.scripts.body(sha));
        let Some(body) = body else {
            RouteStats::bump(&stats.script_unknown);
            RouteStats::bump(&stats.mirror_errors);
            self.journal_lost(&w);
            warn!(%side, "EVALSHA of a script the mirror lacks and the proxy never saw; not applied on the mirror");
            return;
        };
        RouteStats::bump(&stats.script_retries);
        // The retry stands in for the original: counted when it is answered.
        let mut args: Vec<&[u8]> = evalsha.args().collect();
        args[0] = b"EVAL";
        args[1] = &body;
        self.send(side, &Command::from_args(&args), Target::Mirror(w));
    }

    /// A mirrored write was lost: its keys go to the journal, copied from
    /// the side that answered once the mirror is back.
    /// Whether mirrored commands of `len` bytes (`count` of them) would
    /// take the mirror backlog past its bound.
    fn backlog_full(&self, len: usize, count: usize) -> bool {
        self.shared
            .backlog
            .full(len, count, self.shared.limits.mirror_backlog_bytes)
    }

    fn journal_lost(&self, w: &MirrorWrite) {
        self.shared
            .repairer
            .lost(&w.stats, w.from, w.db, w.keys.keys());
    }

    /// One confirmation (or the error replacing them all) for wait `id`.
    fn sub_ack(&mut self, id: u64, error: Option<Bytes>) {
        if let Some((left, err)) = self.sub_waits.get_mut(&id) {
            if error.is_some() {
                *left = 0;
                err.get_or_insert_with(|| error.unwrap_or_default());
            } else {
                *left = left.saturating_sub(1);
            }
        }
    }

    /// Whether replies to the client are RESP3: the last HELLO sent decides,
    /// answered or not (commands pipelined after it are already under it).
    fn resp3(&self) -> bool {
        for (_, kind, cmd) in self.pending_state.iter().rev() {
            match (kind, cmd.arg(1)) {
                (StateCmd::Hello, Some(b"3")) => return true,
                (StateCmd::Hello, Some(b"2")) | (StateCmd::Reset, _) => return false,
                _ => {}
            }
        }
        self.state.is_resp3()
    }

    /// The reply to the oldest state command answered by `side` arrived.
    fn confirm_state(&mut self, side: Side, accepted: bool) {
        if let Some(i) = self.pending_state.iter().position(|(s, _, _)| *s == side) {
            let (_, kind, cmd) = self.pending_state.remove(i).expect("index is in range");
            if accepted {
                self.state.apply(kind, &cmd);
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
    fn on_table_change(&mut self) {
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
    fn place_caching(&mut self, side: Side) {
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

    /// Moves replies whose turn has come to the client output buffer.
    fn drain_ready(&mut self) {
        while let Some(slot) = self.order.front() {
            match slot {
                Slot::Upstream(side) => {
                    let sc = &mut self.sides[*side];
                    // A pending fallback holds its place (and those after).
                    if !matches!(sc.ready.front(), Some(Ready::Done(_))) {
                        return;
                    }
                    if let Some(Ready::Done(reply)) = sc.ready.pop_front() {
                        sc.ready_base += 1;
                        if !self.client_gone {
                            self.out.extend_from_slice(&reply);
                        }
                    }
                }
                Slot::Local(reply) => {
                    if !self.client_gone {
                        self.out.extend_from_slice(reply);
                    }
                }
                Slot::Close => {
                    self.reading = false;
                    self.order.clear();
                    return;
                }
                Slot::Wait(id, reply) => {
                    let id = *id;
                    match self.sub_waits.get(&id) {
                        Some((0, err)) => {
                            if !self.client_gone {
                                self.out.extend_from_slice(err.as_ref().unwrap_or(reply));
                            }
                            self.sub_waits.remove(&id);
                        }
                        Some(_) => return,
                        None => {}
                    }
                }
            }
            self.order.pop_front();
        }
    }

    /// Arms the one timer for the earliest of: the command deadline at the
    /// head of either side, and the drain deadline. It may fire early (the
    /// head moved on); `on_timer` then re-arms. Left armed while idle, so a
    /// request/reply loop does not touch the timer wheel per command.
    fn arm_timer(&mut self) {
        let heads = self
            .sides
            .iter()
            .filter_map(|s| s.inflight.front().and_then(|e| e.deadline));
        let next = heads
            .chain(self.drain_deadline)
            .chain(self.idle_deadline())
            .min();
        match (next, self.timer_at) {
            (None, _) => {}
            (Some(d), Some(at)) if at <= d => {}
            (Some(d), _) => {
                self.timer.as_mut().reset(d.into());
                self.timer_at = Some(d);
            }
        }
    }

    /// The client is not taking its replies: the proxy stops reading from
    /// it and, for replies bound to it, from its upstream connections (the
    /// caches hold them, as Redis holds a slow client's output).
    fn backpressured(&self) -> bool {
        !self.client_gone && self.out.len() >= MAX_OUTPUT_BYTES
    }

    /// When an idle client is closed: with `limits.idle_timeout_secs` set,
    /// while nothing is in flight (a blocked command is not idle) and it is
    /// not subscribed (Redis exempts both too).
    fn idle_deadline(&self) -> Option<Instant> {
        let secs = self.shared.limits.idle_timeout_secs;
        let idle = secs > 0 && self.reading && self.order.is_empty() && self.subs.is_empty();
        idle.then(|| self.last_heard + Duration::from_secs(secs))
    }

    fn on_timer(&mut self) {
        self.timer_at = None;
        let now = Instant::now();
        if self.idle_deadline().is_some_and(|d| d <= now) {
            debug!(
                idle_secs = self.shared.limits.idle_timeout_secs,
                "closing an idle client"
            );
            self.close_after_replies();
            return;
        }
        for side in Side::BOTH {
            let overdue = self.sides[side]
                .inflight
                .front()
                .and_then(|e| e.deadline)
                .is_some_and(|d| d <= now);
            if overdue && self.backpressured() {
                // Not read because the client does not read: not the
                // cache's fault. Checked again a timeout later.
                let up = self.shared.upstream(side);
                let after = up.config.command_timeout().unwrap_or_default();
                for e in self.sides[side].inflight.iter_mut() {
                    if e.deadline.is_some_and(|d| d <= now) {
                        e.deadline = Some(now + after);
                    }
                }
                continue;
            }
            if overdue {
                let up = self.shared.upstream(side);
                let after = up.config.command_timeout().unwrap_or_default();
                self.fail_side(
                    side,
                    UpstreamError::Timeout {
                        side,
                        addr: up.addr().into(),
                        after,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_error_reply_is_one_line() {
        let e = UpstreamError::Handshake {
            side: Side::New,
            addr: "h:1".into(),
            step: "SELECT",
            reply: "ERR x\r\ny".into(),
        };
        let r = e.reply();
        assert!(r.starts_with(b"-ERR cutover: upstream new (h:1)"));
        assert_eq!(r.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
