//! The client listener: accept, enforce `maxclients`, spawn a session per
//! connection, and shut down by dropping into drain mode.
//!
//! Shutdown: a `watch` flag flips; the accept loop stops, each session stops
//! reading, finishes the commands it has in flight (their mirrored writes
//! included) and exits; [`Proxy::shutdown`] waits for all of them, bounded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::reload;
use crate::routing::{Router, Side};
use crate::session::{Session, Shared};
use crate::upstream::Upstream;

/// How long shutdown waits for sessions to drain.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// A running proxy.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds the listener and starts serving. With `config_path`, the routing
    /// table is reloaded on SIGHUP and whenever that file changes.
    pub async fn start(settings: Settings, config_path: Option<PathBuf>) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(&settings.listen.address).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            router: Router::new(&settings.routes, &settings.commands),
            upstreams: [
                Upstream::new(Side::Old, settings.upstreams.old.clone()),
                Upstream::new(Side::New, settings.upstreams.new.clone()),
            ],
            limits: settings.limits.clone(),
            scripts: Default::default(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            shutdown_rx.clone(),
        ))];
        if let Some(path) = config_path {
            tasks.push(tokio::spawn(reload::watch(
                path,
                settings,
                shared.clone(),
                shutdown_rx,
            )?));
        }
        info!(%addr, routes = %describe(&shared.router), "cutover listening");
        Ok(Proxy {
            addr,
            shared,
            shutdown,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets sessions drain, and returns when they have.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for route in &self.shared.router.current().routes {
            let c = route.stats.snapshot();
            let get = |name| c.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
            info!(
                route = %route.name,
                phase = %route.phase,
                reads = get("reads"),
                writes = get("writes"),
                mirrored = get("mirrored"),
                mirror_ok = get("mirror_ok"),
                mirror_errors = get("mirror_errors"),
                mirror_failed = get("mirror_failed"),
                "route counters at shutdown"
            );
        }
    }
}

/// `name=phase, ...` for logs.
pub fn describe(router: &Router) -> String {
    let table = router.load();
    table
        .routes
        .iter()
        .map(|r| format!("{}={}", r.name, r.phase))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let maxclients = shared.limits.maxclients;
    let slots = Arc::new(Semaphore::new(maxclients));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(sock, peer));
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            debug!(%peer, "client connected");
            let (rd, wr) = sock.into_split();
            Session::new(shared, rd, wr).run(shutdown).await;
            debug!(%peer, "client disconnected");
            drop(permit);
        });
    }
    // Every session holds a permit until it has drained.
    let all = u32::try_from(maxclients).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("shutdown: some client sessions did not drain in time");
    }
}

async fn refuse(mut sock: TcpStream, peer: SocketAddr) {
    warn!(%peer, "max number of clients reached");
    let _ = sock
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = sock.shutdown().await;
}
