//! `cutover serve` as a child process: the binary operators run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::free_port;

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
        // A process cannot report the port it got: give it free ones.
        let mut doc: toml::Table = text.parse().expect("test config is TOML");
        for (section, port) in [("listen", port), ("admin", admin_port)] {
            if let Some(t) = doc.get_mut(section).and_then(toml::Value::as_table_mut) {
                if t.get("address").and_then(toml::Value::as_str) == Some("127.0.0.1:0") {
                    t.insert("address".into(), format!("127.0.0.1:{port}").into());
                }
            }
        }
        let text = toml::to_string(&doc).unwrap();
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
    /// Resident memory: what the process touched.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Virtual memory: what it reserved, touched or not (a buffer sized
    /// from a client's promise shows here even before it is written).
    pub fn virtual_kib(&self) -> u64 {
        self.proc_status_kib("VmSize:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
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
        match r.counts.get(name) {
            Some(&n) => n,
            None => panic!(
                "route {route} has no counter {name:?}: {:?}",
                r.counts.keys().collect::<Vec<_>>()
            ),
        }
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
