//! The proxy running in the test's own process, on port 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cutover::config::Settings;
use cutover::routing::Phase;
use cutover::Proxy;

use super::{config_text, init_tracing, RawClient, RedisServer, RouteSpec};

pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
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

    /// The caches in `GET /status` (`upstreams`), old first.
    pub async fn upstream_status(&self) -> Vec<serde_json::Value> {
        let (_, body) = self.admin("GET", "/status", None).await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["upstreams"].as_array().unwrap().clone()
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
        // A positive signal, so the deadline only bounds a hang: generous
        // enough for a loaded two-core machine (a mirror fsyncing every
        // write behind thousands of them takes a while there).
        let deadline = Instant::now() + Duration::from_secs(60);
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
