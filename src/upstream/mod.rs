//! Connections to the two caches. Each client session opens its own
//! connection to each side it needs (DESIGN: no multiplexing by default), so
//! this module only knows how to open one: TCP connect with a deadline, then
//! the setup commands (upstream credentials, then the client's replayed
//! connection state), each reply checked. It also keeps a per-upstream
//! reconnect backoff shared by all sessions, so a dead mirror is not hammered
//! by every client at once.

use std::sync::Mutex;
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
    tls: Option<tls::Connector>,
    backoff: Mutex<Reconnect>,
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
}

/// A command run while a connection is set up, named for error messages
/// (never with its arguments: they may hold credentials).
pub type SetupStep = (&'static str, Command);

impl Upstream {
    /// Fails when the TLS material in `config` cannot be loaded.
    pub fn new(side: Side, config: UpstreamConfig) -> Result<Upstream, TlsError> {
        Ok(Upstream {
            side,
            tls: tls::connector(side.name(), &config)?,
            config,
            backoff: Mutex::default(),
        })
    }

    /// The same cache with a backoff of its own (for the proxy's tools).
    pub fn fresh(&self) -> Upstream {
        Upstream {
            side: self.side,
            config: self.config.clone(),
            tls: self.tls.clone(),
            backoff: Mutex::default(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Why connecting fails, while it does.
    pub fn last_error(&self) -> Option<String> {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.last_error.clone()
    }

    /// An I/O error on a connection to this upstream; a TLS one (an alert,
    /// a certificate the cache refused) says why.
    pub fn io_error(&self, source: std::io::Error) -> UpstreamError {
        let (side, addr) = (self.side, self.addr().to_string());
        match self.tls.as_ref().and_then(|_| tls::explain(&source)) {
            Some(reason) => UpstreamError::Tls { side, addr, reason },
            None => UpstreamError::Io { side, addr, source },
        }
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
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
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

    pub fn record_success(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let failed_attempts = b.backoff.failures();
        if failed_attempts > 0 {
            info!(side = %self.side, addr = %self.addr(), failed_attempts, "upstream reachable again");
        }
        *b = Reconnect::default();
    }

    /// The commands every new connection starts with: the upstream's own
    /// credentials and database.
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

    /// Connects and runs `setup`, all within the connect timeout.
    pub async fn connect(
        &self,
        setup: Vec<SetupStep>,
        max_depth: usize,
    ) -> Result<Conn, UpstreamError> {
        let after = self.config.connect_timeout();
        let result = match tokio::time::timeout(after, self.connect_inner(setup, max_depth)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ConnectTimeout {
                side: self.side,
                addr: self.addr().into(),
                after,
            }),
        };
        match &result {
            Ok(_) => self.record_success(),
            Err(e) => self.record_failure(e),
        }
        result
    }

    async fn connect_inner(
        &self,
        setup: Vec<SetupStep>,
        max_depth: usize,
    ) -> Result<Conn, UpstreamError> {
        let (side, addr) = (self.side, self.addr());
        let io_err = |source| self.io_error(source);
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
            Some(tls) => Stream::Tls(Box::new(tls.connect(tcp).await.map_err(|e| {
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
        let (mut rd, mut wr) = stream.split();
        if !setup.is_empty() {
            let mut out = BytesMut::new();
            for (_, cmd) in &setup {
                out.extend_from_slice(cmd.raw());
            }
            wr.write_all(&out).await.map_err(io_err)?;
            let mut scanner = ReplyScanner::new(max_depth);
            let mut buf = BytesMut::with_capacity(1024);
            for (step, _) in &setup {
                let reply = loop {
                    if let Some(r) =
                        scanner
                            .next(&mut buf)
                            .map_err(|source| UpstreamError::Protocol {
                                side,
                                addr: addr.into(),
                                source,
                            })?
                    {
                        break r;
                    }
                    if rd.read_buf(&mut buf).await.map_err(io_err)? == 0 {
                        return Err(UpstreamError::Closed {
                            side,
                            addr: addr.into(),
                        });
                    }
                };
                if reply.is_error() {
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
        }
        Ok(Conn { rd, wr })
    }
}

pub mod client;
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
