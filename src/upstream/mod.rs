//! Connections to the two caches. Each client session opens its own
//! connection to each side it needs (DESIGN: no multiplexing by default), so
//! this module only knows how to open one: TCP connect with a deadline, then
//! the setup commands (upstream credentials, then the client's replayed
//! connection state), each reply checked. It also keeps a per-upstream
//! reconnect backoff shared by all sessions, so a dead mirror is not hammered
//! by every client at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::UpstreamConfig;
use crate::error::UpstreamError;
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::protocol::{Command, ReplyScanner};
use crate::routing::Side;
use crate::tls::{self, TlsError};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One cache as configured, plus its shared reconnect state.
#[derive(Debug)]
pub struct Upstream {
    pub side: Side,
    pub config: UpstreamConfig,
    dialer: Arc<Dialer>,
    backoff: Arc<Mutex<Reconnect>>,
    /// `cluster = true`: its topology and the counters of its routing.
    cluster: Option<Arc<cluster::Cluster>>,
    /// `connections = "shared"`: the connections sessions share.
    shared: Option<Arc<shared::Pool>>,
    /// Connections of their own open now (sessions' in `dedicated` mode
    /// or with connection state, and the proxy's tools): those
    /// [`Upstream::connect`] opened.
    pub dedicated: Arc<AtomicU64>,
}

/// How a connection to one node of a cache is opened: TCP with TLS when
/// configured, then setup commands whose replies are checked.
#[derive(Debug)]
pub struct Dialer {
    pub side: Side,
    pub config: UpstreamConfig,
    tls: Option<tls::Connector>,
}

/// Reconnect state shared by every session's connection to one cache.
#[derive(Debug)]
struct Reconnect {
    backoff: Backoff,
    /// Why the last connect failed, while it is failing (for status).
    last_error: Option<String>,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            last_error: None,
        }
    }
}

/// An open, set-up connection.
#[derive(Debug)]
pub struct Conn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// Counted among its upstream's connections of their own while it
    /// lives ([`Upstream::connect`]).
    pub open: Option<Counted>,
}

/// One in a gauge of open connections, until dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicU64>);

impl Counted {
    fn new(gauge: &Arc<AtomicU64>) -> Counted {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A command run while a connection is set up, named for error messages
/// (never with its arguments: they may hold credentials).
pub type SetupStep = (&'static str, Command);

/// The setup step that may be refused: `CLIENT SETINFO`, which caches
/// before Redis 7.2 do not know, replays library attributes cutover kept
/// for a session on shared connections (answered as 7.2 would): not worth
/// failing its connection for.
pub const SETINFO_STEP: &str = "CLIENT SETINFO";

impl Upstream {
    /// Fails when the TLS material in `config` cannot be loaded.
    pub fn new(side: Side, config: UpstreamConfig) -> Result<Upstream, TlsError> {
        let dialer = Arc::new(Dialer {
            side,
            tls: tls::connector(side.name(), &config)?,
            config: config.clone(),
        });
        let cluster = config
            .cluster
            .then(|| Arc::new(cluster::Cluster::new(dialer.clone())));
        let backoff = Arc::<Mutex<Reconnect>>::default();
        let shared = (config.connections == crate::config::Connections::Shared).then(|| {
            Arc::new(shared::Pool::new(
                dialer.clone(),
                backoff.clone(),
                config.shared_per_node,
                dialer.initial_setup(),
                cluster.clone(),
            ))
        });
        Ok(Upstream {
            side,
            dialer,
            config,
            backoff,
            cluster,
            shared,
            dedicated: Arc::default(),
        })
    }

    /// The same cache with a backoff of its own (for the proxy's tools).
    pub fn fresh(&self) -> Upstream {
        Upstream {
            side: self.side,
            config: self.config.clone(),
            dialer: self.dialer.clone(),
            backoff: Arc::default(),
            cluster: self.cluster.clone(),
            // The tools open connections of their own.
            shared: None,
            dedicated: self.dedicated.clone(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.dialer.tls.is_some()
    }

    /// The cluster this upstream is, with `cluster = true`.
    pub fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Its routing counters, when it is a cluster.
    pub fn cluster_snapshot(&self) -> Option<cluster::ClusterSnapshot> {
        let c = self.cluster.as_ref()?;
        let n = &c.counters;
        let get = cluster::Counters::get;
        Some(cluster::ClusterSnapshot {
            side: Some(self.side),
            primaries: c.topology().map_or(0, |t| t.primaries.len() as u64),
            moved: get(&n.moved),
            ask: get(&n.ask),
            split: get(&n.split),
            fanout: get(&n.fanout),
            refreshes: get(&n.refreshes),
            refresh_failures: get(&n.refresh_failures),
        })
    }

    /// The shared connections, with `connections = "shared"`.
    pub fn shared(&self) -> Option<&Arc<shared::Pool>> {
        self.shared.as_ref()
    }

    pub fn dialer(&self) -> &Arc<Dialer> {
        &self.dialer
    }

    /// Why connecting fails, while it does.
    pub fn last_error(&self) -> Option<String> {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.last_error.clone()
    }

    /// An I/O error on a connection to this upstream; a TLS one (an alert,
    /// a certificate the cache refused) says why.
    pub fn io_error(&self, source: std::io::Error) -> UpstreamError {
        self.dialer.io_error(self.addr(), source)
    }

    pub fn addr(&self) -> &str {
        &self.config.address
    }

    /// False while the upstream is in backoff after failed connects: a
    /// mirror write is then counted as failed instead of waiting.
    pub fn may_try(&self) -> bool {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.backoff.may_try(Instant::now())
    }

    /// Counts a failed connect. The first one after a success is logged as
    /// a warning; the rest of an outage only at debug, so thousands of
    /// sessions hitting one dead cache do not flood the log.
    pub fn record_failure(&self, err: &UpstreamError) {
        record_failure(&self.backoff, err);
    }

    pub fn record_success(&self) {
        record_success(&self.backoff, self.side, self.addr());
    }

    /// The commands every new connection starts with: the upstream's own
    /// credentials and database.
    pub fn base_setup(&self) -> Vec<SetupStep> {
        self.dialer.base_setup()
    }

    /// [`Dialer::initial_setup`].
    pub fn initial_setup(&self) -> Vec<SetupStep> {
        self.dialer.initial_setup()
    }

    /// Connects and runs `setup`, all within the connect timeout. To a
    /// cluster, the connection is to a router of this client's own that
    /// sends each command to the node owning its keys.
    pub async fn connect(
        &self,
        setup: Vec<SetupStep>,
        max_depth: usize,
    ) -> Result<Conn, UpstreamError> {
        let after = self.config.connect_timeout();
        let dial = async {
            match &self.cluster {
                Some(cluster) => cluster.connect(setup, max_depth).await,
                None => self.dialer.open(self.addr(), None, &setup, max_depth).await,
            }
        };
        let result = match tokio::time::timeout(after, dial).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ConnectTimeout {
                side: self.side,
                addr: self.addr().into(),
                after,
            }),
        };
        match result {
            Ok(mut conn) => {
                self.record_success();
                conn.open = Some(Counted::new(&self.dedicated));
                Ok(conn)
            }
            Err(e) => {
                self.record_failure(&e);
                Err(e)
            }
        }
    }
}

impl Dialer {
    pub fn io_error(&self, addr: &str, source: std::io::Error) -> UpstreamError {
        let (side, addr) = (self.side, addr.to_string());
        match self.tls.as_ref().and_then(|_| tls::explain(&source)) {
            Some(reason) => UpstreamError::Tls { side, addr, reason },
            None => UpstreamError::Io { side, addr, source },
        }
    }

    /// The upstream's credentials, for every connection to it.
    /// The state a connection has before any client's: the proxy's
    /// credentials and the upstream's database (what a shared connection
    /// is opened with, and what a connection gets back after `RESET`).
    pub fn initial_setup(&self) -> Vec<SetupStep> {
        let mut steps = self.base_setup();
        if self.config.db != 0 {
            let db = self.config.db.to_string();
            steps.push((
                "SELECT (upstream db)",
                Command::from_args(&[b"SELECT", db.as_bytes()]),
            ));
        }
        steps
    }

    pub fn base_setup(&self) -> Vec<SetupStep> {
        let mut steps = Vec::new();
        if let Some(pass) = &self.config.password {
            let cmd = match &self.config.username {
                Some(user) => {
                    Command::from_args(&[b"AUTH", user.as_bytes(), pass.expose().as_bytes()])
                }
                None => Command::from_args(&[b"AUTH", pass.expose().as_bytes()]),
            };
            steps.push(("AUTH (upstream credentials)", cmd));
        }
        steps
    }

    /// Opens a connection to `addr` (with TLS, checked against `host` when
    /// it is a node's announced name) and runs `setup`. No deadline: the
    /// caller's.
    pub async fn open(
        &self,
        addr: &str,
        host: Option<&str>,
        setup: &[SetupStep],
        max_depth: usize,
    ) -> Result<Conn, UpstreamError> {
        let side = self.side;
        let io_err = |source| self.io_error(addr, source);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect {
                side,
                addr: addr.into(),
                source,
            })?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let stream = match &self.tls {
            None => Stream::Tcp(tcp),
            Some(tls) => Stream::Tls(Box::new(tls.connect_to(host, tcp).await.map_err(|e| {
                UpstreamError::Tls {
                    side,
                    addr: addr.into(),
                    reason: tls::explain(&e).unwrap_or_else(|| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => {
                            "the cache closed the connection during the handshake".into()
                        }
                        _ => e.to_string(),
                    }),
                }
            })?)),
        };
        let (rd, wr) = stream.split();
        let mut conn = Conn { rd, wr, open: None };
        if !setup.is_empty() {
            self.run_setup(&mut conn, addr, setup, max_depth).await?;
        }
        Ok(conn)
    }

    /// Sends `cmd` on `conn` (to `addr`) and reads its reply, within the
    /// command timeout.
    pub async fn ask(
        &self,
        conn: &mut Conn,
        addr: &str,
        cmd: &Command,
        max_depth: usize,
    ) -> Result<bytes::Bytes, UpstreamError> {
        let side = self.side;
        let io_err = |source| self.io_error(addr, source);
        let exchange = async {
            conn.wr.write_all(cmd.raw()).await.map_err(io_err)?;
            let mut scanner = ReplyScanner::new(max_depth);
            let mut buf = BytesMut::with_capacity(4096);
            let reply = self.read_reply(conn, addr, &mut scanner, &mut buf).await?;
            Ok(reply.bytes)
        };
        let after = self.config.command_timeout().unwrap_or(Duration::MAX);
        tokio::time::timeout(after, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout {
                side,
                addr: addr.into(),
                after,
            }))
    }

    /// The next reply on `conn` (to `addr`), reading more as needed.
    async fn read_reply(
        &self,
        conn: &mut Conn,
        addr: &str,
        scanner: &mut ReplyScanner,
        buf: &mut BytesMut,
    ) -> Result<crate::protocol::Reply, UpstreamError> {
        let side = self.side;
        loop {
            let next = scanner
                .next(buf)
                .map_err(|source| UpstreamError::Protocol {
                    side,
                    addr: addr.into(),
                    source,
                })?;
            if let Some(r) = next {
                return Ok(r);
            }
            let n = conn.rd.read_buf(buf).await;
            if n.map_err(|source| self.io_error(addr, source))? == 0 {
                return Err(UpstreamError::Closed {
                    side,
                    addr: addr.into(),
                });
            }
        }
    }

    /// Sends `setup` in one write; every reply must be a success.
    async fn run_setup(
        &self,
        conn: &mut Conn,
        addr: &str,
        setup: &[SetupStep],
        max_depth: usize,
    ) -> Result<(), UpstreamError> {
        let side = self.side;
        let io_err = |source| self.io_error(addr, source);
        let mut out = BytesMut::new();
        for (_, cmd) in setup {
            out.extend_from_slice(cmd.raw());
        }
        conn.wr.write_all(&out).await.map_err(io_err)?;
        let mut scanner = ReplyScanner::new(max_depth);
        let mut buf = BytesMut::with_capacity(1024);
        for (step, _) in setup {
            let reply = self.read_reply(conn, addr, &mut scanner, &mut buf).await?;
            if reply.is_error() && *step != SETINFO_STEP {
                let text = String::from_utf8_lossy(&reply.bytes[1..])
                    .trim_end()
                    .to_string();
                return Err(UpstreamError::Handshake {
                    side,
                    addr: addr.into(),
                    step,
                    reply: text,
                });
            }
        }
        Ok(())
    }
}

/// Counts a failed connect ([`Upstream::record_failure`]).
fn record_failure(backoff: &Mutex<Reconnect>, err: &UpstreamError) {
    let mut b = backoff.lock().unwrap_or_else(|e| e.into_inner());
    let failures = b.backoff.failures();
    if failures == 0 {
        warn!(error = %err, "upstream unreachable; retrying with backoff");
    } else {
        debug!(error = %err, failures, "upstream still unreachable");
    }
    b.last_error = Some(err.to_string());
    // Many sessions may fail in the same round (they all connected before
    // the first failure was known): the delay grows once per round, not
    // once per session, or one outage would jump straight to the cap.
    b.backoff.fail(Instant::now());
}

/// Counts a successful connect ([`Upstream::record_success`]).
fn record_success(backoff: &Mutex<Reconnect>, side: Side, addr: &str) {
    let mut b = backoff.lock().unwrap_or_else(|e| e.into_inner());
    let failed_attempts = b.backoff.failures();
    if failed_attempts > 0 {
        info!(%side, addr, failed_attempts, "upstream reachable again");
    }
    *b = Reconnect::default();
}

pub mod client;
pub mod cluster;
pub mod shared;
pub mod topology;

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let config: crate::config::UpstreamConfig =
            toml::from_str("address = \"127.0.0.1:1\"").expect("minimal upstream config");
        Upstream::new(Side::New, config).expect("no TLS")
    }

    fn refused() -> UpstreamError {
        UpstreamError::Closed {
            side: Side::New,
            addr: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn delay_doubles_from_100ms_to_a_5s_cap() {
        let b = Reconnect::default().backoff;
        let ms: Vec<u128> = (1..=8).map(|r| b.delay(r).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn sessions_failing_in_the_same_round_count_once() {
        let up = upstream();
        for _ in 0..1000 {
            up.record_failure(&refused());
        }
        assert_eq!(up.backoff.lock().unwrap().backoff.failures(), 1);
        assert!(!up.may_try(), "in backoff after a failed round");
        up.record_success();
        assert!(up.may_try());
        assert_eq!(up.backoff.lock().unwrap().backoff.failures(), 0);
    }
}
