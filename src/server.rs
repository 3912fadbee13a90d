//! The client listeners: accept (TLS on the main address when configured,
//! plain TCP on a second one if asked), enforce `maxclients` over both,
//! spawn a session per connection on the next session thread
//! ([`crate::workers`]), and shut down by dropping into drain mode.
//! A TLS handshake runs in the connection's own task, under a deadline, so a
//! slow or hostile client never holds up the accept loop.
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
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::admin;
use crate::backfill::Backfills;
use crate::config::Settings;
use crate::control::{Control, StateError};
use crate::net::Stream;
use crate::reload;
use crate::repair::{self, Repairer};
use crate::routing::{PerSide, Router, Side};
use crate::session::Session;
use crate::shared::Shared;
use crate::upstream::Upstream;
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    #[error("cannot start the session threads: {0}")]
    Workers(std::io::Error),
}

/// How long shutdown waits for sessions to drain.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running proxy.
pub struct Proxy {
    addr: SocketAddr,
    plain_addr: Option<SocketAddr>,
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
        let listen_tls = crate::tls::server_config(&settings.listen)?;
        let upstreams = PerSide::new(
            Upstream::new(Side::Old, settings.upstreams.old.clone())?,
            Upstream::new(Side::New, settings.upstreams.new.clone())?,
        );
        let (listener, addr) = bind(&settings.listen.address).await?;
        let plain = match &settings.listen.plain_address {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let plain_addr = plain.as_ref().map(|(_, a)| *a);
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
        let fleet = settings.fleet.is_some();
        let (control, routes) =
            Control::start(&settings.routes, &settings.commands, state_path, fleet)?;
        let journal = crate::repair::Journal::new(
            config_path.as_deref().map(|p| settings.journal.path(p)),
            settings.journal.max_keys,
        );
        let (repairer, repairs) = Repairer::new(journal);
        let (router, repairer) = (
            Arc::new(Router::new(&routes, &settings.commands)),
            Arc::new(repairer),
        );
        let upstreams = Arc::new(upstreams);
        let depth = settings.limits.max_reply_depth;
        let shared = Arc::new(Shared {
            router: router.clone(),
            control: Arc::new(control),
            upstreams: upstreams.clone(),
            listen_tls: arc_swap::ArcSwapOption::new(listen_tls),
            auth: arc_swap::ArcSwapOption::new(
                settings
                    .auth
                    .as_ref()
                    .map(|a| Arc::new(crate::auth::Users::new(a))),
            ),
            limits: settings.limits.clone(),
            scripts: Default::default(),
            repairer: repairer.clone(),
            shadow_inflight: Default::default(),
            backfills: Backfills::new(router, upstreams.clone(), repairer.clone(), depth),
            backlog: Default::default(),
            cluster_face: settings.listen.cluster.then(|| {
                let l = &settings.listen;
                crate::cluster_face::ClusterFace::new(l.announce.as_deref(), &l.address)
            }),
            checked: Default::default(),
            fleet: settings.fleet.clone().map(|f| {
                let store = crate::fleet::Store::new(&f.name, &upstreams, depth);
                Arc::new(crate::fleet::Fleet::new(f, store))
            }),
        });
        let journalled = shared.repairer.journal.load(&shared.router)?;
        if journalled > 0 {
            info!(keys = journalled, "resuming the mirror-failure journal");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        if let Some(fleet) = &shared.fleet {
            // The fleet's phases before the first client.
            *fleet.listen.lock().unwrap_or_else(|e| e.into_inner()) = addr.to_string();
            let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
            *fleet.admin.lock().unwrap_or_else(|e| e.into_inner()) = admin.map(|a| a.to_string());
            crate::fleet::run::tick(&shared.fleet_parts(), fleet).await;
        }
        let workers = Workers::start(settings.listen.workers()).map_err(StartError::Workers)?;
        let mut tasks = vec![tokio::spawn(accept_loop(
            Listeners {
                main: listener,
                main_tls: settings.listen.tls(),
                plain: plain.map(|(l, _)| l),
                workers,
            },
            shared.clone(),
            shutdown_rx.clone(),
        ))];
        let copier = repair::Copier {
            repairer,
            upstreams,
            depth,
            router: shared.router.clone(),
        };
        tasks.push(tokio::spawn(repair::run(
            copier.clone(),
            repairs,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(repair::drain_journal(
            copier,
            shutdown_rx.clone(),
        )));
        if let Some(fleet) = &shared.fleet {
            tasks.push(tokio::spawn(crate::fleet::run::run(
                shared.fleet_parts(),
                fleet.clone(),
                shutdown_rx.clone(),
            )));
        }
        match &shared.fleet {
            // One member decides for the fleet, on its figures.
            Some(fleet) => tasks.push(tokio::spawn(crate::fleet::auto::run(
                shared.fleet_parts(),
                fleet.clone(),
                shutdown_rx.clone(),
            ))),
            None => tasks.push(tokio::spawn(crate::control::auto::run(
                shared.control.clone(),
                shared.router.clone(),
                shutdown_rx.clone(),
            ))),
        }
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
        let (listen_is_tls, auth_on) = (settings.listen.tls(), settings.auth.is_some());
        if let Some(path) = config_path {
            tasks.push(tokio::spawn(
                reload::watch(path, settings, shared.clone(), shutdown_rx)
                    .map_err(StartError::Reload)?,
            ));
        }
        check_upstreams(&shared).await;
        shared
            .checked
            .store(true, std::sync::atomic::Ordering::Release);
        info!(
            %addr,
            tls = listen_is_tls,
            plain = ?plain_addr,
            admin = ?admin_addr,
            auth = auth_on,
            routes = %shared.router.describe(),
            "cutover listening"
        );
        Ok(Proxy {
            addr,
            plain_addr,
            admin_addr,
            shared,
            shutdown,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain-TCP address beside a TLS one (`listen.plain_address`).
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
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

async fn bind(address: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |e| StartError::Listen(address.to_string(), e);
    let l = TcpListener::bind(address).await.map_err(failed)?;
    let a = l.local_addr().map_err(failed)?;
    Ok((l, a))
}

/// Connects to each upstream once (credentials, TLS) so a wrong password
/// or certificate is reported at start, not at the first client's command.
/// The proxy serves either way: a cache may come up later.
async fn check_upstreams(shared: &Shared) {
    let depth = shared.limits.max_reply_depth;
    let up = &shared.upstreams;
    tokio::join!(
        check_upstream(&up[Side::Old], depth),
        check_upstream(&up[Side::New], depth)
    );
}

async fn check_upstream(up: &Upstream, depth: usize) {
    let mut setup = up.base_setup();
    setup.push(("PING", crate::protocol::Command::from_args(&[b"PING"])));
    match up.connect(setup, depth).await {
        Ok(_) => info!(
            side = %up.side,
            addr = %up.addr(),
            tls = up.is_tls(),
            authenticated = up.config.password.is_some(),
            "upstream ready"
        ),
        Err(e) => error!(
            side = %up.side,
            error = %e,
            "upstream check at start failed; serving anyway, commands that need it fail until it works"
        ),
    }
}

/// The sockets clients connect to.
struct Listeners {
    main: TcpListener,
    /// TLS on `main` (the acceptor's config is `Shared::listen_tls`).
    main_tls: bool,
    plain: Option<TcpListener>,
    /// Where the sessions run.
    workers: Workers,
}

async fn accept_on(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_loop(
    listeners: Listeners,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let maxclients = shared.limits.maxclients;
    let slots = Arc::new(Semaphore::new(maxclients));
    loop {
        let (accepted, tls) = tokio::select! {
            r = listeners.main.accept() => (r, listeners.main_tls),
            r = accept_on(listeners.plain.as_ref()) => (r, false),
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
        let local = sock.local_addr().ok();
        let permit = slots.clone().try_acquire_owned().ok();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        // The socket moves to its worker's runtime.
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, %peer, "accepted connection dropped");
                continue;
            }
        };
        listeners.workers.spawn(async move {
            let sock = match TcpStream::from_std(sock) {
                Ok(s) => s,
                Err(e) => return warn!(error = %e, %peer, "accepted connection dropped"),
            };
            let Some(stream) = establish(&shared, sock, peer, tls).await else {
                return;
            };
            let Some(permit) = permit else {
                return refuse(stream, peer).await;
            };
            debug!(%peer, tls, "client connected");
            let (rd, wr) = stream.split();
            Session::new(shared, rd, wr)
                .reached_at(local)
                .run(shutdown)
                .await;
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

/// The client's stream: TLS after a handshake under a deadline, or plain.
/// A failed handshake is the client's problem and only logged at debug.
async fn establish(
    shared: &Shared,
    sock: TcpStream,
    peer: SocketAddr,
    tls: bool,
) -> Option<Stream> {
    if !tls {
        return Some(Stream::Tcp(sock));
    }
    let config = shared.listen_tls.load_full()?;
    match tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(sock),
    )
    .await
    {
        Ok(Ok(s)) => Some(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "client TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "client TLS handshake timed out");
            None
        }
    }
}

async fn refuse(stream: Stream, peer: SocketAddr) {
    warn!(%peer, "max number of clients reached");
    let (_, mut wr) = stream.split();
    let _ = wr
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = wr.shutdown().await;
}
