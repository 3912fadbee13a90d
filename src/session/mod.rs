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
mod conn;
mod expect;
mod fallback;
mod held;
mod keyspace;
mod moving;
mod order;
mod plan;
mod pubsub;
mod refusal;
mod route;
mod seam;
mod side;
mod state;
mod target;
mod timer;
mod tx;
mod upstream;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;
use tracing::{debug, trace};

use crate::commands::StateCmd;
use crate::error::UpstreamError;
use crate::protocol::{Command, RequestParser};
use crate::repair::{Entered, Keys};
use crate::routing::{PerSide, RouteStats, RouteTable, Side};
use crate::shared::Shared;

use order::{Drained, ReplyOrder};
use side::{Link, Outbound, Sent, SideConn};
pub use state::ConnState;
use target::{
    keys_at, written_keys, Check, Element, MirrorWrite, PendingState, ShadowSlot, Target,
};
use tx::TxState;

/// Stop reading from a client that has this many replies outstanding or
/// this many reply bytes unread (Redis's output-buffer limits, simplified).
const MAX_PENDING_REPLIES: usize = 100_000;
const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// How long a closing session waits for mirrored writes still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Session<R, W> {
    shared: Arc<Shared>,
    client_rd: R,
    client_wr: W,
    cbuf: BytesMut,
    parser: RequestParser,
    out: BytesMut,
    order: ReplyOrder,
    sides: PerSide<SideConn>,
    /// State the client set and an upstream accepted: what a new upstream
    /// connection is set up with.
    state: ConnState,
    /// State commands sent but not yet answered, in order.
    pending_state: VecDeque<PendingState>,
    tx: TxState,
    /// Mirrored writes waiting for an authoritative reply, and those queued
    /// behind them.
    held: held::MirrorQueue,
    /// Accumulates routes' shadow fractions; a read is shadowed each time
    /// it passes 1 (evenly spaced, no randomness needed).
    shadow_credit: f64,
    subs: pubsub::Subscriptions,
    /// The side the connection's SCAN iteration runs on.
    scan_side: Option<Side>,
    /// `KEYS` asked of both caches, by id.
    keys_merges: keyspace::KeysMerges,
    /// The side each HSCAN/SSCAN/ZSCAN iteration runs on, by database and
    /// key.
    key_scans: std::collections::HashMap<(Option<u32>, Bytes), Side>,
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
    /// The client closed its connection (or it failed): a blocking command
    /// of its is abandoned at once, as Redis does, so nothing is popped on
    /// its behalf.
    client_closed: bool,
    drain_deadline: Option<Instant>,
    /// A command held (with all that follows) while its route settles
    /// after a flip (`moving.rs`).
    stalled: Option<moving::Stalled>,
    /// When the client last sent bytes (for `limits.idle_timeout_secs`).
    last_heard: Instant,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    /// The proxy address the client connected to (`[listen] cluster`).
    reached: Option<std::net::SocketAddr>,
    /// A cache takes shared connections (`connections = "shared"`).
    shared_mode: bool,
    /// The session needed connection state: its connections are its own
    /// from then on (`seam.rs`).
    own_conns: bool,
    /// On shared connections, those opened with `HELLO 3` (`seam.rs`).
    shared_resp3: bool,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub fn new(shared: Arc<Shared>, client_rd: R, client_wr: W) -> Session<R, W> {
        let shared_mode = shared.upstreams.iter().any(|u| u.shared().is_some());
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
            order: ReplyOrder::default(),
            sides: PerSide::from_fn(|side| SideConn::new(side, depth)),
            state: ConnState::default(),
            pending_state: VecDeque::new(),
            tx: TxState::default(),
            held: held::MirrorQueue::default(),
            shadow_credit: 0.0,
            subs: pubsub::Subscriptions::default(),
            scan_side: None,
            keys_merges: keyspace::KeysMerges::new(),
            key_scans: std::collections::HashMap::new(),
            compares: compare::Compares::default(),
            tracking_table: None,
            table_changes,
            caching: None,
            authenticated: !auth_on,
            auth_on,
            reading: true,
            parse_paused: false,
            client_gone: false,
            client_closed: false,
            drain_deadline: None,
            stalled: None,
            shared_mode,
            own_conns: false,
            shared_resp3: false,
            last_heard: Instant::now(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            reached: None,
        }
    }

    /// The proxy address the client connected to.
    pub fn reached_at(mut self, local: Option<std::net::SocketAddr>) -> Session<R, W> {
        self.reached = local;
        self
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
            if self.stalled.is_some() {
                self.resume_for_own();
            }
            if self.client_closed {
                self.abandon_blocked();
            }
            if self.finished() {
                break;
            }
            let room = self.order.len() < MAX_PENDING_REPLIES && !self.backpressured();
            if self.parse_paused && self.reading && room {
                // Commands read before the client fell behind come first.
                self.parse_paused = false;
                self.on_client_bytes();
                continue;
            }
            self.arm_timer();
            let can_read = self.reading && room && !self.parse_paused && self.stalled.is_none();
            let write_client = !self.out.is_empty() && !self.client_gone;
            let timer_armed = self.timer_at.is_some();
            let watch_table = self.tracking_table.is_some()
                || !self.subs.is_empty()
                || self.stalled.is_some()
                || self.sides.iter().any(SideConn::blocked);
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
                    _ => {
                        self.reading = false;
                        self.client_closed = true;
                    }
                },
                () = &mut self.timer, if timer_armed => self.on_timer(),
                r = self.table_changes.changed(), if watch_table => match r {
                    Ok(()) => {
                        if self.tracking_table.is_some() {
                            self.on_table_change();
                        }
                        self.move_blocked();
                        self.move_subscriptions();
                        self.resume_stalled();
                    }
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

    /// No longer reading, and done draining (or out of time for it: what
    /// is still in flight is given up).
    fn finished(&mut self) -> bool {
        if self.reading {
            return false;
        }
        if self.done() {
            return true;
        }
        let deadline = *self
            .drain_deadline
            .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
        if Instant::now() >= deadline {
            self.abandon();
            return true;
        }
        false
    }

    fn done(&self) -> bool {
        let client_done = self.client_gone || (self.order.is_empty() && self.out.is_empty());
        client_done
            && self.stalled.is_none()
            && self.held.is_empty()
            && self.sides.iter().all(SideConn::settled)
    }

    fn client_left(&mut self) {
        self.client_gone = true;
        self.client_closed = true;
        self.reading = false;
        self.out.clear();
    }

    /// The client is gone: a connection blocked in its blocking command
    /// (a `BLPOP` waiting for a push) is closed now rather than drained,
    /// or it would pop an element into nowhere when one arrives. What was
    /// queued behind it never ran: mirrored writes among it are journalled.
    fn abandon_blocked(&mut self) {
        // A transaction it left open is discarded, as Redis does, and what
        // waited behind it on that connection goes out.
        if let Some(tx) = self.tx.open.take() {
            if let (Some(side), false) = (tx.side, tx.lost) {
                let discard = Outbound::from(Target::Quiet("DISCARD of a client that left"))
                    .in_tx(side::TxMark::Close);
                self.send(side, &Command::from_args(&[b"DISCARD"]), discard);
            }
        }
        for side in Side::BOTH {
            if self.sides[side].blocked() {
                debug!(%side, "client left while blocked: closing its upstream connection");
                let err = UpstreamError::Abandoned {
                    side,
                    addr: self.shared.upstream(side).addr().into(),
                };
                self.fail_side(side, err);
            }
        }
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
            if self.stalled.is_some() {
                // The rest waits behind the held command.
                return;
            }
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
        self.order.local(reply);
    }

    fn close_after_replies(&mut self) {
        self.order.close();
        self.reading = false;
        self.cbuf.clear();
    }

    /// Sends `cmd` to `side`, opening the connection if needed, with what
    /// its reply is for. `None` when it was not sent: a mirrored write to
    /// a mirror in its reconnect backoff is counted as failed and its keys
    /// journalled instead.
    fn send(&mut self, side: Side, cmd: &Command, out: impl Into<Outbound>) -> Option<Sent> {
        let mut out = out.into();
        if self.sides[side].diverged {
            match &out.target {
                Target::Mirror(w) => {
                    // Not in the client's state there (a database it
                    // refused): journalled, copied in the right one later.
                    RouteStats::bump(&w.stats.mirror_failed);
                    self.journal_lost(w);
                    return None;
                }
                Target::Client { .. } | Target::Effect(_) if self.sides[side].settled() => {
                    // Reconnected with the client's state: the cache that
                    // refused it refuses it again, and says so.
                    self.sides[side].link = Link::Idle;
                    self.sides[side].diverged = false;
                }
                _ => {}
            }
        }
        if self.sides[side].is_idle() {
            if let Target::Mirror(w) = &out.target {
                if !self.shared.upstream(side).may_try() {
                    RouteStats::bump(&w.stats.mirror_failed);
                    self.journal_lost(w);
                    return None;
                }
            }
            self.open(side);
        }
        let old_keys = matches!(&out.target, Target::Keys(p) if p.side == Side::Old && !p.again);
        if old_keys
            || matches!(
                out.target,
                Target::Client { .. }
                    | Target::Effect(_)
                    | Target::FallbackNew(_)
                    | Target::ScanPage(_)
            )
        {
            self.order.upstream(side);
        }
        if matches!(out.target, Target::Mirror(_) | Target::Quiet(_)) {
            out.backlog = Some(self.shared.backlog.take(cmd.raw().len()));
        }
        out.subscribed = self.subs.on(side) && !self.resp3();
        let timeout = self.shared.upstream(side).config.command_timeout();
        if out.movable.is_some() && !self.sides[side].asked_id {
            // Its id lets a flip unblock it from another connection.
            self.sides[side].asked_id = true;
            let id = Command::from_args(&[&b"CLIENT"[..], b"ID"]);
            self.sides[side].push(&id, Target::ClientId.into(), timeout);
        }
        Some(self.sides[side].push(cmd, out, timeout))
    }

    /// Starts connecting to `side` with the client's state.
    fn open(&mut self, side: Side) {
        let upstream = self.shared.upstream(side);
        let sc = &mut self.sides[side];
        if let Some(pool) = upstream.shared().filter(|_| !self.own_conns) {
            // No state of the client's own: a shared connection (in the
            // upstream's database).
            let own_credentials = upstream.config.password.is_some();
            // (A name or library set is kept here, not on the connection.)
            if self
                .state
                .connection_part()
                .replay(0, own_credentials)
                .is_empty()
            {
                let depth = self.shared.limits.max_reply_depth;
                let handle = pool.attach(depth, self.shared_resp3);
                sc.link = side::Link::Shared(Box::new(handle));
                return;
            }
        }
        {
            let shared = self.shared.clone();
            let own_credentials = upstream.config.password.is_some();
            let mut setup = upstream.base_setup();
            setup.extend(self.state.replay(upstream.config.db, own_credentials));
            let depth = self.shared.limits.max_reply_depth;
            sc.link = Link::Connecting(tokio::spawn(async move {
                shared.upstream(side).connect(setup, depth).await
            }));
            // State sent but not yet confirmed: this connection gets each
            // once the side that answers it accepted it, and waits until
            // then (a RESET goes at once).
            for p in self.pending_state.iter_mut() {
                if p.kind != StateCmd::Reset {
                    p.gate = Some(sc.gate());
                } else if let Some(cmd) = state::for_other_side(p.kind, &p.cmd, own_credentials) {
                    // RESET logs out and selects db 0: the proxy's own
                    // credentials and database again after it.
                    sc.push(&cmd, Target::Quiet("connection state").into(), None);
                    for (_, step) in upstream.initial_setup() {
                        sc.push(&step, Target::Quiet("connection state").into(), None);
                    }
                }
            }
        }
    }

    /// Whether mirrored commands of `len` bytes (`count` of them) would
    /// take the mirror backlog past its bound.
    fn backlog_full(&self, len: usize, count: usize) -> bool {
        self.shared
            .backlog
            .full(len, count, self.shared.limits.mirror_backlog_bytes)
    }

    /// A mirrored write was lost: its keys go to the journal, copied from
    /// the side that answered once the mirror is back.
    fn journal_lost(&self, w: &MirrorWrite) {
        self.shared
            .repairer
            .lost(&w.stats, w.from, w.db, w.keys.keys());
    }

    /// One confirmation (or the error replacing them all) for wait `id`.
    fn sub_ack(&mut self, id: u64, error: Option<Bytes>) {
        self.order.ack(id, error);
    }

    /// Moves replies whose turn has come to the client output buffer.
    fn drain_ready(&mut self) {
        if self
            .order
            .drain(&mut self.sides, &mut self.out, self.client_gone)
            == Drained::Close
        {
            self.reading = false;
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
