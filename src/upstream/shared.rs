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
//! A shared connection that fails fails the batches it carried (each
//! session sees its connection fail, as with a dedicated one) and is
//! opened again by the next session attaching. A session that needs
//! connection state leaves it for a dedicated connection (`session`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

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

/// Commands of one session: their bytes and how many replies they ask
/// for, and where the replies go.
struct Batch {
    bytes: Bytes,
    count: usize,
    to: mpsc::UnboundedSender<Reply>,
}

/// The shared connections to one cache.
pub struct Pool {
    slots: Vec<Mutex<Option<mpsc::UnboundedSender<Batch>>>>,
    next: AtomicUsize,
    dialer: Arc<Dialer>,
    backoff: Arc<Mutex<Reconnect>>,
    /// Shared connections open now, and sessions attached now.
    pub open: Arc<AtomicU64>,
    pub attached: Arc<AtomicU64>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// A session's place on a shared connection.
#[derive(Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Batch>,
    reply_tx: mpsc::UnboundedSender<Reply>,
    rx: mpsc::UnboundedReceiver<Reply>,
    attached: Arc<AtomicU64>,
}

impl Handle {
    /// Hands `bytes` (`count` whole commands) to the shared connection.
    /// False when it is gone: the session's connection failed.
    pub fn send(&self, bytes: Bytes, count: usize) -> bool {
        let to = self.reply_tx.clone();
        self.tx.send(Batch { bytes, count, to }).is_ok()
    }

    /// The shared connection's task has ended (it closed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The next replies (or the failure); `None` never while the handle
    /// lives (it holds a sender of its own).
    pub async fn recv(&mut self) -> Option<Reply> {
        self.rx.recv().await
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
    ) -> Pool {
        Pool {
            slots: (0..per_node.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            dialer,
            backoff,
            open: Arc::default(),
            attached: Arc::default(),
        }
    }

    /// A place on the next shared connection, opening it if it is not.
    pub fn attach(&self, setup: Vec<SetupStep>, depth: usize) -> Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        let tx = match slot.as_ref().filter(|tx| !tx.is_closed()) {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                let task = Mux {
                    dialer: self.dialer.clone(),
                    backoff: self.backoff.clone(),
                    setup,
                    depth,
                    open: self.open.clone(),
                };
                tokio::spawn(task.run(rx));
                *slot = Some(tx.clone());
                tx
            }
        };
        let (reply_tx, rx) = mpsc::unbounded_channel();
        self.attached.fetch_add(1, Ordering::Relaxed);
        Handle {
            tx,
            reply_tx,
            rx,
            attached: self.attached.clone(),
        }
    }
}

/// One shared connection's task.
struct Mux {
    dialer: Arc<Dialer>,
    backoff: Arc<Mutex<Reconnect>>,
    setup: Vec<SetupStep>,
    depth: usize,
    open: Arc<AtomicU64>,
}

/// Whose replies come next on the connection, and how many.
type Owed = VecDeque<(usize, mpsc::UnboundedSender<Reply>)>;

impl Mux {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Batch>) {
        let dialer = &self.dialer;
        let addr = dialer.config.address.clone();
        let connect = dialer.open(&addr, None, &self.setup, self.depth);
        let conn = match tokio::time::timeout(dialer.config.connect_timeout(), connect).await {
            Ok(Ok(conn)) => {
                super::record_success(&self.backoff, dialer.side, &addr);
                conn
            }
            Ok(Err(e)) => return self.refuse(rx, e).await,
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
            owed.push_back((b.count, b.to));
        }
        for (_, to) in owed {
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
        let Conn { mut rd, mut wr } = conn;
        let (side, addr) = (self.dialer.side, self.dialer.config.address.clone());
        let (mut wbuf, mut rbuf) = (BytesMut::new(), BytesMut::new());
        let mut scanner = ReplyScanner::new(self.depth);
        loop {
            tokio::select! {
                biased;
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return UpstreamError::Closed { side, addr },
                    Ok(_) => {
                        if let Err(source) = deliver(&mut scanner, &mut rbuf, owed) {
                            return UpstreamError::Protocol { side, addr, source };
                        }
                    }
                    Err(e) => return self.dialer.io_error(&addr, e),
                },
                r = wr.write(&wbuf), if !wbuf.is_empty() => match r {
                    Ok(n) if n > 0 => bytes::Buf::advance(&mut wbuf, n),
                    Ok(_) => return UpstreamError::Closed { side, addr },
                    Err(e) => return self.dialer.io_error(&addr, e),
                },
                b = rx.recv() => match b {
                    Some(b) => {
                        take(&mut wbuf, owed, b);
                        // Everything already queued goes in the same write.
                        while let Ok(b) = rx.try_recv() {
                            take(&mut wbuf, owed, b);
                        }
                    }
                    None => return UpstreamError::Closed { side, addr },
                },
            }
        }
    }
}

fn take(wbuf: &mut BytesMut, owed: &mut Owed, b: Batch) {
    wbuf.extend_from_slice(&b.bytes);
    match owed.back_mut() {
        // The same session again: one entry.
        Some((n, to)) if to.same_channel(&b.to) => *n += b.count,
        _ => owed.push_back((b.count, b.to)),
    }
}

/// Hands every whole reply in `rbuf` to the session it is owed to, the
/// consecutive replies of one session in one message.
fn deliver(
    scanner: &mut ReplyScanner,
    rbuf: &mut BytesMut,
    owed: &mut Owed,
) -> Result<(), ReplyError> {
    let mut run: Vec<Bytes> = Vec::new();
    while let Some((n, to)) = owed.front_mut() {
        let Some(reply) = scanner.next(rbuf)? else {
            break;
        };
        run.push(reply.bytes);
        *n -= 1;
        if *n == 0 {
            // A session that left meanwhile drops its replies.
            let _ = to.send(Reply::Frames(std::mem::take(&mut run)));
            owed.pop_front();
        }
    }
    if let Some((_, to)) = owed.front().filter(|_| !run.is_empty()) {
        let _ = to.send(Reply::Frames(run));
    }
    Ok(())
}
