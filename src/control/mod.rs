//! The migration control plane's state: which phase each route is in, who
//! put it there and since when, persisted so a restart resumes it.
//!
//! Two sources decide a route's phase: the config file and flips made at
//! run time (the admin API, auto-cutover). The rule, also in the README:
//!
//! - A flip overrides the file's phase for that route, and is persisted
//!   (temp file, fsync, rename) before it takes effect.
//! - A reload or restart keeps the override as long as the file still says
//!   what it said when the flip was made. When the file's phase for that
//!   route was edited since, the edit is the newer decision: the file wins,
//!   the override is dropped, and the log says so.
//!
//! Every change goes through one lock here, then one table swap in the
//! router, so a reload and a flip never interleave.

pub mod auto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{CommandsConfig, RouteConfig};
use crate::routing::{Phase, Router};

/// Who set a route's current phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Config,
    Admin,
    Auto,
    /// The fleet's control record (a flip made through any member).
    Fleet,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Admin => "admin",
            Source::Auto => "auto",
            Source::Fleet => "fleet",
        }
    }
}

/// One route's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub phase: Phase,
    #[serde(default)]
    pub ramp_percent: Option<u8>,
}

/// What is persisted per route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteState {
    pub phase: Phase,
    pub source: Source,
    /// The config file's phase for this route when `phase` was decided.
    pub config_phase: Phase,
    /// Unix milliseconds since the route has been in `phase`.
    pub since_ms: u64,
    /// `read-new` ramp (percent of keys), when set.
    #[serde(default)]
    pub ramp_percent: Option<u8>,
    /// The config file's ramp when this was decided.
    #[serde(default)]
    pub config_ramp: Option<u8>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    routes: BTreeMap<String, RouteState>,
}

/// A route as the status endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    /// `None` for the default route.
    pub patterns: Option<Vec<String>>,
    pub phase: Phase,
    pub source: Source,
    pub config_phase: Phase,
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    pub ramp_percent: Option<u8>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

#[derive(Debug, thiserror::Error)]
pub enum FlipError {
    #[error("no route named {0:?}")]
    NoSuchRoute(String),
    #[error("{from} -> {to} skips {skipped}; flip one step at a time, or force it (\"force\": true; cutover phase --force)")]
    Skips {
        from: Phase,
        to: Phase,
        skipped: Phase,
    },
    #[error("cannot persist the flip to {path}: {source}; the phase was not changed")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {message}; fix or remove it (phases then come from the config file)")]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug)]
struct Inner {
    config: Vec<RouteConfig>,
    commands: CommandsConfig,
    routes: BTreeMap<String, RouteState>,
}

#[derive(Debug)]
pub struct Control {
    state_path: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Config reloads since start: installed, and rejected (an invalid
    /// file; the running table stayed). Shown in `/status`.
    reloads: [AtomicU64; 2],
    /// `[fleet]`: the fleet record decides phases; loading the file does
    /// not change those already decided.
    fleet: AtomicBool,
}

/// Config reloads since start, as `GET /status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloads {
    pub applied: u64,
    pub rejected: u64,
}

pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

impl Control {
    /// Loads the persisted state (if any) and reconciles it with the config.
    /// Returns the control and the routes the table starts with.
    /// Loads the state file over `config`. With `fleet`, the phases saved
    /// (the fleet record last applied) stay whatever the file says, until
    /// the record is read; reloads keep the phases too.
    pub fn start(
        config: &[RouteConfig],
        commands: &CommandsConfig,
        state_path: Option<PathBuf>,
        fleet: bool,
    ) -> Result<(Control, Vec<RouteConfig>), StateError> {
        let saved = match &state_path {
            Some(path) => load(path)?,
            None => StateFile::default(),
        };
        let routes = reconcile(config, &saved.routes, fleet);
        let control = Control {
            state_path,
            inner: Mutex::new(Inner {
                config: config.to_vec(),
                commands: commands.clone(),
                routes,
            }),
            reloads: Default::default(),
            fleet: AtomicBool::new(fleet),
        };
        let inner = control.lock();
        if let Err(e) = control.persist(&inner.routes) {
            warn!(error = %e, "cannot write the state file; admin flips will fail until it can be written");
        }
        let effective = effective(&inner.config, &inner.routes);
        drop(inner);
        Ok((control, effective))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state_path(&self) -> Option<&Path> {
        self.state_path.as_deref()
    }

    /// A new config file was loaded: reconcile and swap the table.
    pub fn reload(
        &self,
        router: &Router,
        config: &[RouteConfig],
        commands: &CommandsConfig,
    ) -> u64 {
        let mut inner = self.lock();
        let routes = reconcile(config, &inner.routes, self.fleet.load(Ordering::Relaxed));
        if let Err(e) = self.persist(&routes) {
            warn!(error = %e, "cannot write the state file");
        }
        inner.config = config.to_vec();
        inner.commands = commands.clone();
        inner.routes = routes;
        self.reloads[0].fetch_add(1, Ordering::Relaxed);
        router.replace(&effective(&inner.config, &inner.routes), &inner.commands)
    }

    /// A reload was rejected (the file did not load); nothing changed.
    pub fn reload_rejected(&self) {
        self.reloads[1].fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self) -> Reloads {
        Reloads {
            applied: self.reloads[0].load(Ordering::Relaxed),
            rejected: self.reloads[1].load(Ordering::Relaxed),
        }
    }

    /// Moves `route` to `phase` (with a ramp, for `read-new`), persisted
    /// first. Without `force`, only to a neighbouring phase.
    pub fn flip(
        &self,
        router: &Router,
        route: &str,
        phase: Phase,
        ramp_percent: Option<u8>,
        force: bool,
        source: Source,
    ) -> Result<RouteStatus, FlipError> {
        let ramp_percent = ramp_percent.filter(|_| phase == Phase::ReadNew);
        let mut inner = self.lock();
        let current = inner
            .routes
            .get(route)
            .cloned()
            .ok_or_else(|| FlipError::NoSuchRoute(route.to_string()))?;
        if current.phase != phase || current.ramp_percent != ramp_percent {
            if current.phase.distance(phase) > 1 && !force {
                let between = Phase::ALL[current.phase.index().min(phase.index()) + 1];
                return Err(FlipError::Skips {
                    from: current.phase,
                    to: phase,
                    skipped: between,
                });
            }
            let mut routes = inner.routes.clone();
            routes.insert(
                route.to_string(),
                RouteState {
                    phase,
                    source,
                    config_phase: current.config_phase,
                    since_ms: if current.phase == phase {
                        current.since_ms
                    } else {
                        now_ms()
                    },
                    ramp_percent,
                    config_ramp: current.config_ramp,
                },
            );
            if let Some(path) = &self.state_path {
                write_atomically(path, &routes).map_err(|source| FlipError::Persist {
                    path: path.clone(),
                    source,
                })?;
            }
            inner.routes = routes;
            let version = router.replace(&effective(&inner.config, &inner.routes), &inner.commands);
            info!(route, from = %current.phase, to = %phase, ?ramp_percent, ?source, force, version, "phase flipped");
        }
        let status = status_of(&inner, route).expect("route exists");
        Ok(status)
    }

    /// Every route's phase and ramp now.
    pub fn decisions(&self) -> BTreeMap<String, Decision> {
        let inner = self.lock();
        inner
            .routes
            .iter()
            .map(|(name, st)| {
                let d = Decision {
                    phase: st.phase,
                    ramp_percent: st.ramp_percent,
                };
                (name.clone(), d)
            })
            .collect()
    }

    /// Checks a flip of `route` to `phase` as [`Control::flip`] would,
    /// without making it.
    pub fn check_flip(&self, route: &str, phase: Phase, force: bool) -> Result<(), FlipError> {
        let inner = self.lock();
        let current = inner
            .routes
            .get(route)
            .ok_or_else(|| FlipError::NoSuchRoute(route.to_string()))?;
        if current.phase.distance(phase) > 1 && !force {
            let between = Phase::ALL[current.phase.index().min(phase.index()) + 1];
            return Err(FlipError::Skips {
                from: current.phase,
                to: phase,
                skipped: between,
            });
        }
        Ok(())
    }

    /// Takes the fleet record's phases (routes it does not name, or this
    /// instance does not have, stay as they are), persisted first, in one
    /// table swap.
    pub fn adopt(
        &self,
        router: &Router,
        decisions: &BTreeMap<String, Decision>,
    ) -> Result<(), FlipError> {
        let mut inner = self.lock();
        let mut routes = inner.routes.clone();
        let mut changed = false;
        for (name, d) in decisions {
            let Some(current) = routes.get_mut(name) else {
                continue;
            };
            let ramp = d.ramp_percent.filter(|_| d.phase == Phase::ReadNew);
            if current.phase == d.phase && current.ramp_percent == ramp {
                continue;
            }
            if current.phase != d.phase {
                current.since_ms = now_ms();
            }
            current.phase = d.phase;
            current.ramp_percent = ramp;
            current.source = Source::Fleet;
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        if let Some(path) = &self.state_path {
            write_atomically(path, &routes).map_err(|source| FlipError::Persist {
                path: path.clone(),
                source,
            })?;
        }
        inner.routes = routes;
        let version = router.replace(&effective(&inner.config, &inner.routes), &inner.commands);
        info!(version, "fleet phases applied");
        Ok(())
    }

    /// Every route, in table order.
    pub fn status(&self) -> Vec<RouteStatus> {
        let inner = self.lock();
        inner
            .config
            .iter()
            .filter_map(|r| status_of(&inner, &r.name))
            .collect()
    }

    fn persist(&self, routes: &BTreeMap<String, RouteState>) -> std::io::Result<()> {
        match &self.state_path {
            Some(path) => write_atomically(path, routes),
            None => Ok(()),
        }
    }
}

fn status_of(inner: &Inner, name: &str) -> Option<RouteStatus> {
    let cfg = inner.config.iter().find(|r| r.name == name)?;
    let st = inner.routes.get(name)?;
    Some(RouteStatus {
        name: cfg.name.clone(),
        patterns: cfg.patterns.clone(),
        phase: st.phase,
        source: st.source,
        config_phase: st.config_phase,
        since: UNIX_EPOCH + Duration::from_millis(st.since_ms),
        ramp_percent: st.ramp_percent,
    })
}

/// The state of each configured route, given what was decided before.
/// The routes' states after loading `config` over `before`. With `fleet`,
/// a route that had a state keeps its phase (the fleet record decides).
fn reconcile(
    config: &[RouteConfig],
    before: &BTreeMap<String, RouteState>,
    fleet: bool,
) -> BTreeMap<String, RouteState> {
    let now = now_ms();
    config
        .iter()
        .map(|r| {
            let from_file = |prev: Option<&RouteState>| RouteState {
                phase: r.phase,
                source: Source::Config,
                config_phase: r.phase,
                since_ms: prev.filter(|p| p.phase == r.phase).map_or(now, |p| p.since_ms),
                ramp_percent: r.ramp_percent.filter(|_| r.phase == Phase::ReadNew),
                config_ramp: r.ramp_percent,
            };
            let state = match before.get(&r.name) {
                Some(prev) if fleet => {
                    if prev.config_phase != r.phase || prev.config_ramp != r.ramp_percent {
                        warn!(
                            route = %r.name,
                            phase = %prev.phase,
                            file_now = %r.phase,
                            "with [fleet] the fleet record decides phases: the config file's new phase for this route is not applied; flip with cutover phase"
                        );
                    }
                    RouteState {
                        config_phase: r.phase,
                        config_ramp: r.ramp_percent,
                        ..prev.clone()
                    }
                }
                Some(prev)
                    if prev.source != Source::Config
                        && prev.config_phase == r.phase
                        && prev.config_ramp == r.ramp_percent =>
                {
                    prev.clone()
                }
                Some(prev) if prev.source != Source::Config => {
                    warn!(
                        route = %r.name,
                        flipped_to = %prev.phase,
                        file_was = %prev.config_phase,
                        file_now = %r.phase,
                        "the config file's phase for this route changed since it was flipped at run time; the file wins"
                    );
                    from_file(Some(prev))
                }
                prev => from_file(prev),
            };
            (r.name.clone(), state)
        })
        .collect()
}

fn effective(config: &[RouteConfig], routes: &BTreeMap<String, RouteState>) -> Vec<RouteConfig> {
    config
        .iter()
        .map(|r| match routes.get(&r.name) {
            Some(s) => RouteConfig {
                phase: s.phase,
                ramp_percent: s.ramp_percent,
                ..r.clone()
            },
            None => r.clone(),
        })
        .collect()
}

fn load(path: &Path) -> Result<StateFile, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(e) => {
            return Err(StateError {
                path: path.into(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| StateError {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Persists the route states (see [`crate::persist::write_atomically`]).
fn write_atomically(path: &Path, routes: &BTreeMap<String, RouteState>) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(&StateFile {
        routes: routes.clone(),
    })
    .map_err(std::io::Error::other)?;
    body.push(b'\n');
    crate::persist::write_atomically(path, &body)
}

#[cfg(test)]
mod tests;
