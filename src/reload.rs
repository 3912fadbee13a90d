//! Hot reload of the routing table: on SIGHUP and whenever the config file
//! changes, load and validate the file, then swap the table in one store.
//! An invalid file is logged and the running table stays. Changes that need
//! a restart (upstream addresses, listener, limits) are applied only to
//! routes and the unknown-command policy, and said so in the log. The
//! listener's certificate files are read again and `[auth]` users replaced
//! (turning TLS or `[auth]` on or off needs a restart).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::shared::Shared;

/// Editors write a file in several steps; wait for them to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why a reload was requested, for the log.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Signal,
    FileChange,
}

/// Sets up the SIGHUP handler and the file watcher, and returns the task
/// that reloads on either. Fails only if neither can be installed.
pub fn watch(
    path: PathBuf,
    running: Settings,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<impl Future<Output = ()>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let hup_tx = tx.clone();
    let watcher = file_watcher(&path, tx);
    Ok(async move {
        // Kept alive for as long as this task runs.
        let _watcher = watcher;
        let forward = async {
            while hup.recv().await.is_some() {
                if hup_tx.send(Trigger::Signal).is_err() {
                    break;
                }
            }
        };
        tokio::pin!(forward);
        loop {
            let trigger = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => break },
                () = &mut forward => break,
                _ = shutdown.changed() => break,
            };
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reload_once(&path, &running, &shared, trigger);
        }
    })
}

fn file_watcher(
    path: &std::path::Path,
    tx: mpsc::UnboundedSender<Trigger>,
) -> Option<notify::RecommendedWatcher> {
    let name = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The directory is watched, not the file: editors and config management
    // replace the file by renaming a new one over it.
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let ours = ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()));
            if ours && (ev.kind.is_modify() || ev.kind.is_create()) {
                let _ = tx.send(Trigger::FileChange);
            }
        }
    })
    .map_err(|e| warn!(error = %e, "cannot watch the config file; reload with SIGHUP"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP"))
        .ok()?;
    Some(watcher)
}

/// Reads the listener's certificate files again (a renewed certificate
/// under the same names, or new names), for connections accepted from now
/// on. A file that fails to load keeps the running certificate.
fn reload_tls(next: &Settings, shared: &Shared, trigger: Trigger) {
    if shared.listen_tls.load().is_none() || !next.listen.tls() {
        return;
    }
    match crate::tls::server_config(&next.listen) {
        Ok(Some(config)) => {
            shared.listen_tls.store(Some(config));
            info!(?trigger, "listener certificate reloaded");
        }
        Ok(None) => {}
        Err(e) => {
            error!(?trigger, error = %e, "listener certificate reload failed; the running certificate stays")
        }
    }
}

fn reload_once(path: &std::path::Path, running: &Settings, shared: &Shared, trigger: Trigger) {
    let next = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => {
            error!(?trigger, error = %e, "config reload rejected; the running routing table stays");
            shared.control.reload_rejected();
            return;
        }
    };
    let (l, r) = (&next.listen, &running.listen);
    if next.upstreams != running.upstreams
        || l.address != r.address
        || l.plain_address != r.plain_address
        || l.tls() != r.tls()
        || next.admin != running.admin
        || next.auth.is_some() != running.auth.is_some()
    {
        warn!(?trigger, "config reload: listener, upstream, admin settings or turning [auth] on or off changed; they take effect only after a restart");
    }
    reload_tls(&next, shared, trigger);
    if running.auth.is_some() {
        if let Some(auth) = &next.auth {
            shared
                .auth
                .store(Some(Arc::new(crate::auth::Users::new(auth))));
        }
    }
    let before = shared.router.describe();
    let version = shared
        .control
        .reload(&shared.router, &next.routes, &next.commands);
    let after = shared.router.describe();
    if before == after {
        info!(?trigger, version, routes = %after, "config reloaded, routes unchanged");
    } else {
        info!(?trigger, version, before = %before, routes = %after, "config reloaded, routing table swapped");
    }
}
