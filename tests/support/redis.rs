//! Throwaway `redis-server` processes on free ports, in temp dirs, killed
//! and reaped on drop. A missing `redis-server` fails loudly.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{connect, pki};

/// A free port a cluster node can use too: its bus port (10,000 higher)
/// must be a valid port, or the node refuses to start.
pub fn free_port() -> u16 {
    let mut port = 0;
    for _ in 0..1000 {
        port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port <= 55_535 {
            break;
        }
    }
    port
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

    /// Connections this server has from others than the one asking.
    pub fn clients(&self) -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.sync())
            .unwrap();
        list.lines().count() - 1
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

/// `blocked_clients` in `server`'s INFO.
pub fn blocked_clients(server: &RedisServer) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut server.sync())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
