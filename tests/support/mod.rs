//! Test harness: real `redis-server` processes on free ports, the proxy
//! in-process on port 0, and a raw RESP client for byte-level checks.
//!
//! A missing `redis-server` fails the test loudly; nothing here skips.

#![allow(dead_code, unreachable_pub)]

pub mod pki;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover::config::Settings;
use cutover::routing::Phase;
use cutover::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Two throwaway servers: `(old, new)`.
pub fn start_pair() -> (RedisServer, RedisServer) {
    (RedisServer::start(), RedisServer::start())
}

fn spawn_redis(port: u16, dir: &Path, log: &Path, extra: &[String]) -> Child {
    // Persistence off unless `extra` turns it on (later arguments win).
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "--logfile",
            log.to_str().unwrap(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server); tests never skip")
}

/// A throwaway redis-server, killed and reaped on drop.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port of a server from [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_inner(None, extra)
    }

    /// On a given port (a restarted server taking its old address back).
    pub fn start_on_port(port: u16) -> RedisServer {
        RedisServer::start_inner(Some(port), &[])
    }

    fn start_inner(fixed_port: Option<u16>, extra: &[&str]) -> RedisServer {
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = fixed_port.unwrap_or_else(free_port);
            let log = dir.path().join("redis.log");
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let child = spawn_redis(port, dir.path(), &log, &extra);
            let mut server = RedisServer {
                port,
                tls_port: None,
                child: Some(child),
                dir,
                extra,
            };
            if server.wait_ready(Duration::from_secs(5)) {
                return server;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            server.kill();
        }
        panic!("redis-server did not start; last log:\n{last_log}");
    }

    /// Starts the killed server again on its port, with its directory (and
    /// so its data, if it was started with persistence).
    pub fn restart(&mut self) {
        self.kill();
        let log = self.dir.path().join("redis.log");
        self.child = Some(spawn_redis(self.port, self.dir.path(), &log, &self.extra));
        assert!(
            self.wait_ready(Duration::from_secs(10)),
            "redis-server did not restart:\n{}",
            self.log()
        );
    }

    /// Starts the killed server again and returns as soon as it accepts
    /// connections, while it may still be loading its data (answering
    /// `-LOADING` to everything).
    pub fn restart_loading(&mut self) {
        self.kill();
        let log = self.dir.path().join("redis.log");
        self.child = Some(spawn_redis(self.port, self.dir.path(), &log, &self.extra));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Write;
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 7];
                // A password-protected server answers -NOAUTH: up all the same.
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A server that also serves TLS with `leaf` (issued by `pki`), on a
    /// port of its own; the plain port stays for checks from outside.
    /// Clients need no certificate unless `extra` says
    /// `--tls-auth-clients yes`.
    pub fn start_tls(pki: &pki::Pki, leaf: &pki::Leaf, extra: &[&str]) -> RedisServer {
        let tls_port = free_port().to_string();
        let mut args = vec![
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            leaf.cert.to_str().unwrap(),
            "--tls-key-file",
            leaf.key.to_str().unwrap(),
            "--tls-ca-cert-file",
        ];
        let ca = pki.ca_file();
        args.push(ca.to_str().unwrap());
        args.extend(["--tls-auth-clients", "no"]);
        args.extend(extra);
        let mut s = RedisServer::start_with(&args);
        s.tls_port = Some(tls_port.parse().unwrap());
        s
    }

    /// `127.0.0.1:port` of the TLS port.
    pub fn tls_addr(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.tls_port.expect("started with start_tls")
        )
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }

    /// A plain synchronous connection for checks from outside the proxy.
    pub fn sync(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Runs one command directly on this server (not through a proxy).
    pub fn run(&self, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.sync()).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The routes part of a config: `(name, patterns, phase)`, default last.
pub type RouteSpec<'a> = (&'a str, Option<&'a [&'a str]>, Phase);

pub fn config_text(old: &str, new: &str, routes: &[RouteSpec<'_>], extra: &str) -> String {
    let mut s = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[upstreams.old]\naddress = \"{old}\"\ncommand_timeout_ms = 2000\n\n[upstreams.new]\naddress = \"{new}\"\ncommand_timeout_ms = 2000\n\n"
    );
    for (name, patterns, phase) in routes {
        s.push_str(&format!("[[routes]]\nname = \"{name}\"\n"));
        if let Some(p) = patterns {
            let list: Vec<String> = p.iter().map(|p| format!("\"{p}\"")).collect();
            s.push_str(&format!("patterns = [{}]\n", list.join(", ")));
        }
        s.push_str(&format!("phase = \"{phase}\"\n\n"));
    }
    s.push_str(extra);
    if !extra.contains("[admin]") {
        // Tests run in parallel: never the fixed default admin port.
        s.push_str("\n[admin]\naddress = \"127.0.0.1:0\"\n");
    }
    s
}

/// `lines` added under the `[upstreams.*]` block whose address is `addr`,
/// in a config from [`config_text`].
pub fn upstream_lines(text: &str, addr: &str, lines: &str) -> String {
    let from = format!("address = \"{addr}\"\n");
    assert_eq!(text.matches(&from).count(), 1, "{addr} once in the config");
    text.replace(&from, &format!("{from}{lines}\n"))
}

/// The `command_timeout_ms` of the upstream at `addr`, in a config from
/// [`config_text`] (which sets 2000).
pub fn command_timeout(text: &str, addr: &str, ms: u64) -> String {
    let from = format!("address = \"{addr}\"\ncommand_timeout_ms = 2000");
    assert_eq!(text.matches(&from).count(), 1, "{addr} once in the config");
    text.replace(
        &from,
        &format!("address = \"{addr}\"\ncommand_timeout_ms = {ms}"),
    )
}

/// A proxy running in this process, with its config file in a temp dir.
pub struct TestProxy {
    pub proxy: Option<Proxy>,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(
        old: &RedisServer,
        new: &RedisServer,
        routes: &[RouteSpec<'_>],
    ) -> TestProxy {
        TestProxy::start_text(&config_text(&old.addr(), &new.addr(), routes, "")).await
    }

    pub async fn start_text(text: &str) -> TestProxy {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("cutover.toml");
        std::fs::write(&config_path, text).unwrap();
        let settings = Settings::load(&config_path).expect("test config is valid");
        let proxy = Proxy::start(settings, Some(config_path.clone()))
            .await
            .unwrap();
        let addr = proxy.local_addr();
        TestProxy {
            proxy: Some(proxy),
            addr,
            config_path,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// `http://host:port` of the admin API.
    pub fn admin_url(&self) -> String {
        let addr = self
            .proxy
            .as_ref()
            .unwrap()
            .admin_addr()
            .expect("admin enabled");
        format!("http://{addr}")
    }

    /// One admin API request: (status, body).
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        cutover::admin::client::request(
            &self.admin_url(),
            method,
            path,
            None,
            body.map(str::to_string),
        )
        .await
        .unwrap()
    }

    /// Stops the proxy and starts it again from the same config file (and
    /// state file), on new ports.
    pub async fn restart(&mut self) {
        self.shutdown().await;
        let settings = Settings::load(&self.config_path).expect("test config is valid");
        let proxy = Proxy::start(settings, Some(self.config_path.clone()))
            .await
            .unwrap();
        self.addr = proxy.local_addr();
        self.proxy = Some(proxy);
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr).await
    }

    /// Replaces the config file atomically (write + rename), as an operator's
    /// tooling would.
    pub fn rewrite_config(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    /// Counter `name` of route `route` (see `RouteStats::snapshot`).
    pub fn stat(&self, route: &str, name: &str) -> u64 {
        let table = self.proxy.as_ref().unwrap().shared().router.current();
        let r = table
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .expect("route exists");
        r.stats
            .snapshot()
            .iter()
            .find(|(n, _)| *n == name)
            .expect("counter exists")
            .1
    }

    pub fn phase(&self, route: &str) -> Phase {
        let table = self.proxy.as_ref().unwrap().shared().router.current();
        table
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .expect("route exists")
            .phase
    }

    /// Waits until every mirrored write has been answered or counted as
    /// failed, on every route: what the mirror will ever get has landed.
    pub async fn wait_mirrors_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shared = self.proxy.as_ref().unwrap().shared();
            let table = shared.router.current();
            // Copies queued by mismatches are part of settling.
            let settled = shared.repairer.pending() == 0
                && table.routes.iter().all(|r| {
                    let c: std::collections::HashMap<_, _> =
                        r.stats.snapshot().into_iter().collect();
                    c["mirror_ok"] + c["mirror_errors"] + c["mirror_failed"] >= c["mirrored"]
                });
            if settled {
                return;
            }
            assert!(Instant::now() < deadline, "mirrored writes never settled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `route` is in `phase` (a reload is asynchronous).
    pub async fn wait_phase(&self, route: &str, phase: Phase) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.phase(route) != phase {
            assert!(
                Instant::now() < deadline,
                "route {route} never reached {phase}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A raw TCP client speaking bytes, for edges a client library hides.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until `want` bytes arrived, EOF, or 5 s passed.
    pub async fn read_n(&mut self, want: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65536];
        while out.len() < want {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    }

    /// Reads everything until the server closes the connection (or 5 s).
    /// Returns the bytes and whether EOF was seen.
    pub async fn read_to_close(&mut self) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65536];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
                Err(_) => return (out, false),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads until `needle` has arrived (5 s at most, then panics); returns
    /// everything read.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut got = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !got.contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never got {needle:?}: {got:?}"
            );
            got.push_str(&String::from_utf8_lossy(
                &self.read_for(Duration::from_millis(50)).await,
            ));
        }
        got
    }

    /// Reads for `quiet` after the last byte, for replies of unknown length.
    pub async fn read_for(&mut self, quiet: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, self.stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

/// Sends `input` to a server and returns what came back before it closed or
/// went quiet, plus whether it closed.
pub async fn exchange(addr: impl tokio::net::ToSocketAddrs, input: &[u8]) -> (Vec<u8>, bool) {
    let mut c = RawClient::connect(addr).await;
    c.send(input).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), c.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn get(conn: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(conn).unwrap()
}

/// A TCP relay in front of a real server that can misbehave like a sick
/// cache: `stall` keeps reading requests but holds every reply back;
/// `delay` holds each reply that long; `freeze` stops reading requests too,
/// so they back up into the sender's socket and buffers.
pub struct StallingRelay {
    pub addr: SocketAddr,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingRelay {
    pub async fn start(target: String) -> StallingRelay {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (stall_flag, freeze_flag, delay) = (stalled.clone(), frozen.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let freeze = freeze_flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        while freeze.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let (stall, delay) = (stall_flag.clone(), delay.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let ms = delay.load(Ordering::Relaxed);
                        if ms > 0 {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        while stall.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StallingRelay {
            addr,
            stalled,
            frozen,
            delay_ms,
            task,
        }
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each reply (each chunk of reply bytes) waits this long.
    pub fn delay(&self, by: Duration) {
        self.delay_ms
            .store(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for StallingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One key as a comparison sees it: type, value in a canonical form (sets
/// and hashes sorted), and remaining TTL in milliseconds (-1: none).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyState {
    pub kind: String,
    pub value: redis::Value,
    pub pttl: i64,
}

/// Every key of db 0 with its type, value and TTL.
pub fn keyspace(conn: &mut redis::Connection) -> std::collections::BTreeMap<Vec<u8>, KeyState> {
    let mut out = std::collections::BTreeMap::new();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(conn).unwrap();
        let q = |c: &mut redis::Connection, args: &[&[u8]]| -> redis::Value {
            let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query(c).unwrap()
        };
        let sorted = |v: redis::Value| match v {
            redis::Value::Array(mut items) => {
                items.sort_by_key(|i| format!("{i:?}"));
                redis::Value::Array(items)
            }
            other => other,
        };
        let value = match kind.as_str() {
            "none" => continue, // expired or deleted meanwhile
            "string" => q(conn, &[b"GET", &key]),
            "list" => q(conn, &[b"LRANGE", &key, b"0", b"-1"]),
            "set" => sorted(q(conn, &[b"SMEMBERS", &key])),
            "zset" => q(conn, &[b"ZRANGE", &key, b"0", b"-1", b"WITHSCORES"]),
            "hash" => {
                // Pairs, sorted by field.
                let flat: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(&key).query(conn).unwrap();
                let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = flat
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect();
                pairs.sort();
                redis::Value::Array(
                    pairs
                        .into_iter()
                        .flat_map(|(f, v)| {
                            [redis::Value::BulkString(f), redis::Value::BulkString(v)]
                        })
                        .collect(),
                )
            }
            "stream" => q(conn, &[b"XRANGE", &key, b"-", b"+"]),
            other => panic!("unexpected type {other}"),
        };
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query(conn).unwrap();
        out.insert(key, KeyState { kind, value, pttl });
    }
    out
}

/// Asserts old and new hold the same keys, types and values, and TTLs
/// within `ttl_tolerance_ms`.
pub fn assert_same_keyspace(old: &RedisServer, new: &RedisServer, ttl_tolerance_ms: i64) {
    let a = keyspace(&mut old.sync());
    let b = keyspace(&mut new.sync());
    let names = |m: &std::collections::BTreeMap<Vec<u8>, KeyState>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b), "old and new hold different keys");
    for (key, x) in &a {
        let y = &b[key];
        let k = String::from_utf8_lossy(key);
        assert_eq!(x.kind, y.kind, "type of {k}");
        assert_eq!(x.value, y.value, "value of {k}");
        let ttl_ok = (x.pttl < 0 && y.pttl < 0 && x.pttl == y.pttl)
            || (x.pttl >= 0 && y.pttl >= 0 && (x.pttl - y.pttl).abs() <= ttl_tolerance_ms);
        assert!(ttl_ok, "TTL of {k}: old {} ms, new {} ms", x.pttl, y.pttl);
    }
}

/// `n` keys of every type, half of them with a TTL: `h{i}` hashes, `l{i}`
/// lists, `set{i}` sets, `z{i}` sorted sets, `x{i}` streams, `sess:{i}` and
/// `s{i}` strings (`i` by `i % 10`: 0 to 4, 5, the rest).
pub fn populate(server: &RedisServer, n: usize) {
    let mut c = server.sync();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut p = redis::pipe();
        for &i in chunk {
            let key = match i % 10 {
                0 => {
                    p.cmd("HSET")
                        .arg(format!("h{i}"))
                        .arg("a")
                        .arg(i)
                        .arg("b")
                        .arg("x")
                        .ignore();
                    format!("h{i}")
                }
                1 => {
                    p.cmd("RPUSH").arg(format!("l{i}")).arg(i).arg("y").ignore();
                    format!("l{i}")
                }
                2 => {
                    p.cmd("SADD")
                        .arg(format!("set{i}"))
                        .arg(i)
                        .arg("z")
                        .ignore();
                    format!("set{i}")
                }
                3 => {
                    p.cmd("ZADD").arg(format!("z{i}")).arg(1.5).arg(i).ignore();
                    format!("z{i}")
                }
                4 => {
                    p.cmd("XADD")
                        .arg(format!("x{i}"))
                        .arg("*")
                        .arg("f")
                        .arg(i)
                        .ignore();
                    format!("x{i}")
                }
                5 => {
                    p.cmd("SET").arg(format!("sess:{i}")).arg(i).ignore();
                    format!("sess:{i}")
                }
                _ => {
                    p.cmd("SET").arg(format!("s{i}")).arg(i).ignore();
                    format!("s{i}")
                }
            };
            if i % 2 == 0 {
                p.cmd("EXPIRE").arg(&key).arg(1000 + i % 5000).ignore();
            }
        }
        let _: () = p.query(&mut c).unwrap();
    }
}

/// xorshift64*: small, seedable, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `cutover serve` as a process (the binary operators run), on free ports,
/// logging at debug to a pipe the test can read after it stops.
pub struct Served {
    pub child: tokio::process::Child,
    /// Its stderr so far, drained as it comes (a full pipe would block it).
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    pub port: u16,
    /// `http://127.0.0.1:port` of its admin API.
    pub admin: String,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Starts it with `text` (from [`config_text`]: its `127.0.0.1:0`
    /// listener and admin addresses get free ports) and `env`.
    pub async fn start(text: &str, env: &[(&str, &str)]) -> Served {
        let port = free_port();
        let admin_port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        let text = text
            .replacen(
                "address = \"127.0.0.1:0\"",
                &format!("address = \"127.0.0.1:{port}\""),
                1,
            )
            .replace(
                "[admin]\naddress = \"127.0.0.1:0\"",
                &format!("[admin]\naddress = \"127.0.0.1:{admin_port}\""),
            );
        std::fs::write(&path, text).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--log",
                "debug",
            ])
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "proxy never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Served {
            child,
            logs,
            port,
            admin: format!("http://127.0.0.1:{admin_port}"),
            config: path,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its resident memory, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub async fn status(&self) -> cutover::admin::StatusView {
        let (code, body) =
            cutover::admin::client::request(&self.admin, "GET", "/status", None, None)
                .await
                .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Counter `name` of route `route`, from `/status`.
    pub async fn stat(&self, route: &str, name: &str) -> u64 {
        let s = self.status().await;
        let r = s.routes.iter().find(|r| r.status.name == route).unwrap();
        r.counts.get(name).copied().unwrap_or(0)
    }

    /// Sends `signal` (`"TERM"`, `"KILL"`), waits for it to exit (status
    /// returned), and starts it again from the same config file (same
    /// ports, journal and state).
    pub async fn restart(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of the signal")
            .unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args([
                "serve",
                "--config",
                self.config.to_str().unwrap(),
                "--log",
                "info",
            ])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "proxy never came back");
            if let Ok(Some(s)) = child.try_wait() {
                panic!("restarted proxy exited: {s}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = child;
        status
    }

    /// Stops it (SIGKILL) and returns what it logged.
    pub async fn stop_and_logs(&mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // The drain task reads to the end of the pipe.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.logs.lock().unwrap().clone()
    }
}
