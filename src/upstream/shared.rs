//! Shared upstream connections (`connections = "shared"`).
//!
//! A few pipelined connections to a cache carry the commands of every
//! session that holds no connection state. A session attaches to one of
//! them ([`Pool::attach`], round robin) and hands it its commands in
//! batches (the bytes, and how many replies they ask for); the
//! connection's task writes the batches of all its sessions together,
//! remembers whose replies come next, and hands each session its reply
//! frames in order. A session's commands stay in its own order on one
//! connection, so its replies (and read-your-writes across its mirrored
//! writes) are as on a connection of its own.
//!
//! Isolation: a connection takes no more batches while it carries
//! [`MAX_AHEAD`] bytes of requests not yet answered (the batches wait in
//! its queue), and a session with nothing owed on its connection sends its
//! next batch on the least loaded connection of its thread (fewest
//! replies owed, under that byte bound), so sessions drift away from a
//! connection held up by a slow command or a very large reply.
//!
//! To a clustered cache, each shared connection is a router of its own
//! ([`Cluster::connect`]) with a connection to each node it reaches, so a
//! node sees as many shared connections as a standalone cache would.
//!
//! A shared connection that fails fails the batches it carried (each
//! session sees its connection fail, as with a dedicated one) and is
//! opened again by the next session attaching. A session that needs
//! connection state leaves it for a dedicated connection (`session`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::cluster::Cluster;
use super::{Conn, Dialer, Reconnect, SetupStep};
use crate::error::UpstreamError;
use crate::protocol::reply::ReplyError;
use crate::protocol::ReplyScanner;

/// What a session hears back from its shared connection.
#[derive(Debug)]
pub enum Reply {
    /// Whole reply frames to its commands, in order.
    Frames(Vec<Bytes>),
    /// The shared connection failed (or could not be opened) with its
    /// commands outstanding.
    Failed(UpstreamError),
}

/// Bytes of requests a shared connection carries ahead of their replies
/// before it takes no more batches.
pub const MAX_AHEAD: usize = 1 << 20;

/// Commands of one session: their bytes and how many replies they ask
/// for, and where the replies go.
struct Batch {
    bytes: Bytes,
    count: usize,
    to: mpsc::UnboundedSender<Reply>,
}

/// One shared connection as its sessions see it: where batches go, and
/// how loaded it is.
#[derive(Clone, Debug)]
struct Slot {
    tx: mpsc::UnboundedSender<Batch>,
    load: Arc<Load>,
}

/// Requests handed to a shared connection and not yet answered.
#[derive(Debug, Default)]
struct Load {
    replies: AtomicUsize,
    bytes: AtomicUsize,
}

impl Slot {
    /// Lower is less loaded: under the byte bound first, then the
    /// fewest replies owed.
    fn load(&self) -> (bool, usize) {
        let bytes = self.load.bytes.load(Ordering::Relaxed);
        let replies = self.load.replies.load(Ordering::Relaxed);
        (bytes >= MAX_AHEAD, replies)
    }
}

/// The shared connections to one cache: `per_node` for each session
/// thread ([`crate::workers`]), so a session and its shared connections
/// run on one thread; and as many again opened with `HELLO 3` for the
/// sessions on RESP3, when there are some.
pub struct Pool {
    /// Each session thread's connections, by (thread, RESP3).
    slots: Mutex<HashMap<(usize, bool), Vec<Slot>>>,
    per_node: usize,
    next: AtomicUsize,
    /// Run on each connection opened: the upstream's credentials and
    /// database.
    setup: Vec<SetupStep>,
    dialer: Arc<Dialer>,
    /// A clustered cache: each shared connection is a router of its own
    /// with a connection to each node it reaches.
    cluster: Option<Arc<Cluster>>,
    backoff: Arc<Mutex<Reconnect>>,
    /// Whether the cache takes `HELLO 3`: 0 not known yet, 1 it does, 2
    /// it refused it (as Redis before 6 does).
    resp3: Arc<AtomicU8>,
    /// Shared connections open now, and sessions attached now.
    pub open: Arc<AtomicU64>,
    pub attached: Arc<AtomicU64>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("per_node", &self.per_node)
            .finish()
    }
}

/// A session's place on its thread's shared connections.
#[derive(Debug)]
pub struct Handle {
    conns: Vec<Slot>,
    /// The connection carrying this session's commands now, and how many
    /// replies it owes the session.
    at: usize,
    owed: usize,
    reply_tx: mpsc::UnboundedSender<Reply>,
    rx: mpsc::UnboundedReceiver<Reply>,
    attached: Arc<AtomicU64>,
}

impl Handle {
    /// Hands `bytes` (`count` whole commands) to the shared connection:
    /// the one the session's replies are owed on, or with none owed the
    /// least loaded. False when it is gone: the session's connection
    /// failed.
    pub fn send(&mut self, bytes: Bytes, count: usize) -> bool {
        if self.owed == 0 {
            self.at = self.least_loaded();
        }
        let slot = &self.conns[self.at];
        slot.load.replies.fetch_add(count, Ordering::Relaxed);
        slot.load.bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        self.owed += count;
        let to = self.reply_tx.clone();
        slot.tx.send(Batch { bytes, count, to }).is_ok()
    }

    /// The open connection with the lowest load, the current one on a tie.
    fn least_loaded(&self) -> usize {
        let open = |i: &usize| !self.conns[*i].tx.is_closed();
        let mut best = Some(self.at).filter(open);
        for i in (0..self.conns.len()).filter(open) {
            if best.is_none_or(|b| self.conns[i].load() < self.conns[b].load()) {
                best = Some(i);
            }
        }
        best.unwrap_or(self.at)
    }

    /// The shared connections this session could use have closed (with
    /// replies owed: the one owing them).
    pub fn is_closed(&self) -> bool {
        match self.owed {
            0 => self.conns.iter().all(|c| c.tx.is_closed()),
            _ => self.conns[self.at].tx.is_closed(),
        }
    }

    /// The next replies (or the failure); `None` never while the handle
    /// lives (it holds a sender of its own).
    pub async fn recv(&mut self) -> Option<Reply> {
        let reply = self.rx.recv().await;
        match &reply {
            Some(Reply::Frames(f)) => self.owed = self.owed.saturating_sub(f.len()),
            Some(Reply::Failed(_)) => self.owed = 0,
            None => {}
        }
        reply
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.attached.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(super) fn new(
        dialer: Arc<Dialer>,
        backoff: Arc<Mutex<Reconnect>>,
        per_node: usize,
        setup: Vec<SetupStep>,
        cluster: Option<Arc<Cluster>>,
    ) -> Pool {
        Pool {
            slots: Mutex::default(),
            per_node: per_node.max(1),
            next: AtomicUsize::new(0),
            setup,
            dialer,
            cluster,
            backoff,
            resp3: Arc::default(),
            open: Arc::default(),
            attached: Arc::default(),
        }
    }

    /// A place on this session thread's shared connections of the
    /// protocol (RESP3 or not), starting on the next in turn, opening
    /// those that are not open.
    pub fn attach(&self, depth: usize, resp3: bool) -> Handle {
        let conns = self.open_slots(depth, resp3);
        let (reply_tx, rx) = mpsc::unbounded_channel();
        self.attached.fetch_add(1, Ordering::Relaxed);
        Handle {
            conns,
            at: self.next.fetch_add(1, Ordering::Relaxed) % self.per_node,
            owed: 0,
            reply_tx,
            rx,
            attached: self.attached.clone(),
        }
    }

    /// Whether the cache takes `HELLO 3` (`None`: not known yet).
    pub fn takes_resp3(&self) -> Option<bool> {
        match self.resp3.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n == 1),
        }
    }

    /// Opens this thread's RESP3 shared connections, which finds out
    /// whether the cache takes `HELLO 3`.
    pub fn try_resp3(&self, depth: usize) {
        self.open_slots(depth, true);
    }

    /// This thread's shared connections of the protocol, opening those
    /// that are not open.
    fn open_slots(&self, depth: usize, resp3: bool) -> Vec<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mine = slots.entry((crate::workers::current(), resp3)).or_default();
        mine.retain(|s| !s.tx.is_closed());
        while mine.len() < self.per_node {
            let (tx, rx) = mpsc::unbounded_channel();
            let load = Arc::<Load>::default();
            let mut setup = self.setup.clone();
            if resp3 {
                setup.push((
                    "HELLO",
                    crate::protocol::Command::from_args(&[&b"HELLO"[..], b"3"]),
                ));
            }
            let task = Mux {
                dialer: self.dialer.clone(),
                cluster: self.cluster.clone(),
                backoff: self.backoff.clone(),
                setup,
                depth,
                open: self.open.clone(),
                load: load.clone(),
                resp3: resp3.then(|| self.resp3.clone()),
            };
            tokio::spawn(task.run(rx));
            mine.push(Slot { tx, load });
        }
        mine.clone()
    }
}

/// One shared connection's task.
struct Mux {
    dialer: Arc<Dialer>,
    cluster: Option<Arc<Cluster>>,
    backoff: Arc<Mutex<Reconnect>>,
    setup: Vec<SetupStep>,
    depth: usize,
    open: Arc<AtomicU64>,
    load: Arc<Load>,
    /// A RESP3 connection: told whether `HELLO 3` was taken.
    resp3: Option<Arc<AtomicU8>>,
}

/// Whose replies come next on the connection: how many, and the bytes of
/// the requests they answer.
type Owed = VecDeque<(usize, usize, mpsc::UnboundedSender<Reply>)>;

impl Mux {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Batch>) {
        let dialer = &self.dialer;
        let addr = dialer.config.address.clone();
        let connect = async {
            match &self.cluster {
                Some(cluster) => cluster.connect(self.setup.clone(), self.depth).await,
                None => dialer.open(&addr, None, &self.setup, self.depth).await,
            }
        };
        let conn = match tokio::time::timeout(dialer.config.connect_timeout(), connect).await {
            Ok(Ok(conn)) => {
                super::record_success(&self.backoff, dialer.side, &addr);
                if let Some(r) = &self.resp3 {
                    r.store(1, Ordering::Relaxed);
                }
                conn
            }
            Ok(Err(e)) => {
                if let (Some(r), UpstreamError::Handshake { step: "HELLO", .. }) = (&self.resp3, &e)
                {
                    r.store(2, Ordering::Relaxed);
                }
                return self.refuse(rx, e).await;
            }
            Err(_) => {
                let e = UpstreamError::ConnectTimeout {
                    side: dialer.side,
                    addr,
                    after: dialer.config.connect_timeout(),
                };
                return self.refuse(rx, e).await;
            }
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        let mut owed = Owed::new();
        let failure = self.serve(conn, &mut rx, &mut owed).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
        debug!(side = %dialer.side, error = %failure, "shared connection closed");
        if let UpstreamError::Tls { .. } = failure {
            // With TLS 1.3 a cache refuses a client certificate after our
            // side of the handshake is done: a connect failure all the same.
            super::record_failure(&self.backoff, &failure);
        }
        rx.close();
        while let Ok(b) = rx.try_recv() {
            owed.push_back((b.count, 0, b.to));
        }
        for (_, _, to) in owed {
            let _ = to.send(Reply::Failed(failure.again()));
        }
    }

    /// The connection could not be opened: every batch queued on it fails.
    async fn refuse(self, mut rx: mpsc::UnboundedReceiver<Batch>, e: UpstreamError) {
        super::record_failure(&self.backoff, &e);
        rx.close();
        while let Some(b) = rx.recv().await {
            let _ = b.to.send(Reply::Failed(e.again()));
        }
    }

    /// Writes the batches and hands out the replies until the connection
    /// fails or no session is left; what ended it.
    async fn serve(
        &self,
        conn: Conn,
        rx: &mut mpsc::UnboundedReceiver<Batch>,
        owed: &mut Owed,
    ) -> UpstreamError {
        let Conn { mut rd, mut wr, .. } = conn;
        let (side, addr) = (self.dialer.side, self.dialer.config.address.clone());
        let (mut wbuf, mut rbuf) = (BytesMut::new(), BytesMut::new());
        let mut scanner = ReplyScanner::new(self.depth);
        // Bytes of the requests taken and not yet answered.
        let mut ahead = 0;
        loop {
            tokio::select! {
                biased;
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return UpstreamError::Closed { side, addr },
                    Ok(_) => {
                        match deliver(&mut scanner, &mut rbuf, owed, &self.load) {
                            Ok(answered) => ahead -= answered,
                            Err(source) => return UpstreamError::Protocol { side, addr, source },
                        }
                    }
                    Err(e) => return self.dialer.io_error(&addr, e),
                },
                r = wr.write(&wbuf), if !wbuf.is_empty() => match r {
                    Ok(n) if n > 0 => bytes::Buf::advance(&mut wbuf, n),
                    Ok(_) => return UpstreamError::Closed { side, addr },
                    Err(e) => return self.dialer.io_error(&addr, e),
                },
                b = rx.recv(), if ahead < MAX_AHEAD => match b {
                    Some(b) => {
                        ahead += take(&mut wbuf, owed, b);
                        // Let the other sessions woken in this tick queue
                        // theirs: everything queued goes in one write.
                        tokio::task::yield_now().await;
                        while ahead < MAX_AHEAD {
                            let Ok(b) = rx.try_recv() else { break };
                            ahead += take(&mut wbuf, owed, b);
                        }
                    }
                    None => return UpstreamError::Closed { side, addr },
                },
            }
        }
    }
}

/// Queues batch `b` for writing; its size.
fn take(wbuf: &mut BytesMut, owed: &mut Owed, b: Batch) -> usize {
    let len = b.bytes.len();
    wbuf.extend_from_slice(&b.bytes);
    match owed.back_mut() {
        // The same session again: one entry.
        Some((n, bytes, to)) if to.same_channel(&b.to) => {
            *n += b.count;
            *bytes += len;
        }
        _ => owed.push_back((b.count, len, b.to)),
    }
    len
}

/// Hands every whole reply in `rbuf` to the session it is owed to, the
/// consecutive replies of one session in one message; the bytes of the
/// requests now wholly answered.
fn deliver(
    scanner: &mut ReplyScanner,
    rbuf: &mut BytesMut,
    owed: &mut Owed,
    load: &Load,
) -> Result<usize, ReplyError> {
    let mut run: Vec<Bytes> = Vec::new();
    let (mut replies, mut answered) = (0, 0);
    while let Some((n, bytes, to)) = owed.front_mut() {
        let Some(reply) = scanner.next(rbuf)? else {
            break;
        };
        run.push(reply.bytes);
        replies += 1;
        *n -= 1;
        if *n == 0 {
            // A session that left meanwhile drops its replies.
            let _ = to.send(Reply::Frames(std::mem::take(&mut run)));
            answered += *bytes;
            owed.pop_front();
        }
    }
    if let Some((_, _, to)) = owed.front().filter(|_| !run.is_empty()) {
        let _ = to.send(Reply::Frames(run));
    }
    load.replies.fetch_sub(replies, Ordering::Relaxed);
    load.bytes.fetch_sub(answered, Ordering::Relaxed);
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle on `n` connections (their queues returned), at `at`.
    fn handle(n: usize, at: usize) -> (Handle, Vec<mpsc::UnboundedReceiver<Batch>>) {
        let (mut conns, mut queues) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            conns.push(Slot {
                tx,
                load: Arc::default(),
            });
            queues.push(rx);
        }
        let (reply_tx, rx) = mpsc::unbounded_channel();
        let attached = Arc::new(AtomicU64::new(1));
        let h = Handle {
            conns,
            at,
            owed: 0,
            reply_tx,
            rx,
            attached,
        };
        (h, queues)
    }

    fn got(queues: &mut [mpsc::UnboundedReceiver<Batch>]) -> Vec<usize> {
        queues
            .iter_mut()
            .map(|q| std::iter::from_fn(|| q.try_recv().ok()).count())
            .collect()
    }

    #[test]
    fn a_session_owing_nothing_sends_on_the_least_loaded_connection() {
        let (mut h, mut queues) = handle(3, 0);
        h.conns[0].load.replies.store(5, Ordering::Relaxed);
        h.conns[1].load.replies.store(1, Ordering::Relaxed);
        h.conns[2].load.replies.store(3, Ordering::Relaxed);
        assert!(h.send(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), 1));
        assert_eq!(got(&mut queues), [0, 1, 0]);
        assert_eq!(h.conns[1].load.replies.load(Ordering::Relaxed), 2);
        assert_eq!(h.conns[1].load.bytes.load(Ordering::Relaxed), 14);
        // Owing a reply there, it stays there however loaded it gets.
        h.conns[1].load.replies.store(50, Ordering::Relaxed);
        assert!(h.send(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), 1));
        assert_eq!(got(&mut queues), [0, 1, 0]);
    }

    #[test]
    fn a_connection_past_the_byte_bound_is_avoided_and_a_tie_stays_put() {
        let (mut h, mut queues) = handle(2, 0);
        h.conns[0].load.bytes.store(MAX_AHEAD, Ordering::Relaxed);
        h.conns[1].load.replies.store(20, Ordering::Relaxed);
        assert!(h.send(Bytes::from_static(b"x"), 1));
        assert_eq!(got(&mut queues), [0, 1]);
        // Answered: owing nothing, on a tie it stays where it is.
        h.owed = 0;
        h.conns[0].load = Arc::default();
        h.conns[1].load = Arc::default();
        assert!(h.send(Bytes::from_static(b"x"), 1));
        assert_eq!(got(&mut queues), [0, 1]);
    }

    #[test]
    fn a_closed_connection_is_not_chosen_and_all_closed_is_closed() {
        let (mut h, mut queues) = handle(2, 0);
        drop(queues.remove(0));
        h.conns[1].load.replies.store(9, Ordering::Relaxed);
        assert!(!h.is_closed());
        assert!(h.send(Bytes::from_static(b"x"), 1));
        assert_eq!(got(&mut queues), [1]);
        h.owed = 0;
        drop(queues);
        assert!(h.is_closed());
    }
}
