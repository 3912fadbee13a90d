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

use crate::admin;
use crate::config::Settings;
use crate::control::{Control, StateError};
use crate::reload;
use crate::repair::{self, Repairer};
use crate::routing::{Router, Side};
use crate::session::{Session, Shared};
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error(
        "cannot start the admin listener on {0}: {1} (set [admin] address, or enabled = false)"
    )]
    Admin(String, std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] crate::repair::journal::JournalError),
    #[error("cannot watch for config reloads: {0}")]
    Reload(std::io::Error),
}

/// How long shutdown waits for sessions to drain.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// A running proxy.
pub struct Proxy {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds the listeners and starts serving. With `config_path`, the
    /// routing table is reloaded on SIGHUP and whenever that file changes,
    /// and admin flips are persisted beside it.
    pub async fn start(
        settings: Settings,
        config_path: Option<PathBuf>,
    ) -> Result<Proxy, StartError> {
        let listener = TcpListener::bind(&settings.listen.address)
            .await
            .map_err(|e| StartError::Listen(settings.listen.address.clone(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(settings.listen.address.clone(), e))?;
        let admin_listener = if settings.admin.enabled {
            Some(
                TcpListener::bind(&settings.admin.address)
                    .await
                    .map_err(|e| StartError::Admin(settings.admin.address.clone(), e))?,
            )
        } else {
            None
        };
        let state_path = config_path.as_deref().map(|p| settings.admin.state_path(p));
        let (control, routes) = Control::start(&settings.routes, &settings.commands, state_path)?;
        let journal = crate::repair::Journal::new(
            config_path.as_deref().map(|p| settings.journal.path(p)),
            settings.journal.max_keys,
        );
        let (repairer, repairs) = Repairer::new(journal);
        let shared = Arc::new(Shared {
            router: Router::new(&routes, &settings.commands),
            control,
            upstreams: [
                Upstream::new(Side::Old, settings.upstreams.old.clone()),
                Upstream::new(Side::New, settings.upstreams.new.clone()),
            ],
            limits: settings.limits.clone(),
            scripts: Default::default(),
            repairer,
            shadow_inflight: Default::default(),
            backfills: Default::default(),
        });
        let journalled = shared.repairer.journal.load(&shared.router)?;
        if journalled > 0 {
            info!(keys = journalled, "resuming the mirror-failure journal");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx.clone())),
            tokio::spawn(repair::run(shared.clone(), repairs, shutdown_rx.clone())),
        ];
        tasks.push(tokio::spawn(repair::drain_journal(
            shared.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::control::auto::run(
            shared.clone(),
            shutdown_rx.clone(),
        )));
        let admin_addr = match admin_listener {
            Some(l) => {
                let admin_addr = l.local_addr().ok();
                let token = settings.admin.token.clone();
                tasks.push(tokio::spawn(admin::serve(
                    l,
                    shared.clone(),
                    token,
                    shutdown_rx.clone(),
                )));
                admin_addr
            }
            None => None,
        };
        if let Some(path) = config_path {
            tasks.push(tokio::spawn(
                reload::watch(path, settings, shared.clone(), shutdown_rx)
                    .map_err(StartError::Reload)?,
            ));
        }
        info!(%addr, admin = ?admin_addr, routes = %describe(&shared.router), "cutover listening");
        Ok(Proxy {
            addr,
            admin_addr,
            shared,
            shutdown,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
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
        // Sessions that drained after the journal task stopped may have
        // journalled more.
        self.shared.repairer.journal.save();
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
