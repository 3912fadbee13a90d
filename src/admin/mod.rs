//! The admin HTTP API (axum): `GET /status`, `PUT /routes/{name}/phase`,
//! `GET /metrics`. Loopback by default; with `[admin] token` set, every
//! request needs `Authorization: Bearer <token>`.
//!
//! Errors are JSON `{"error": "..."}` with a status that says what kind:
//! 400 bad request body, 401 token, 404 unknown route, 409 a flip that skips
//! a phase without `force`, 500 the flip could not be persisted (and was
//! not made).

pub mod client;
pub mod fleet;
mod render;

pub use render::render_status;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Secret;
use crate::control::{FlipError, RouteStatus, Source};
use crate::routing::{Phase, RouteStats, Side};
use crate::shared::Shared;

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<Secret>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Probes answer without the token: load balancers and kubelets ask,
    // and they tell nothing but up or not.
    let probes = axum::Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .with_state(shared.clone());
    let app = axum::Router::new()
        .route("/status", get(status))
        .route("/routes/{name}/phase", put(flip))
        .route("/routes/{name}/needs-verify", delete(clear_needs_verify))
        .route(
            "/routes/{name}/backfill",
            post(start_backfill).delete(stop_backfill),
        )
        .route("/metrics", get(metrics))
        .route("/fleet", get(fleet::get_fleet))
        .layer(axum::Extension(shutdown.clone()))
        .layer(middleware::from_fn_with_state(token.map(Arc::new), auth))
        .with_state(shared)
        .merge(probes);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(error = %e, "admin listener failed");
    }
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        code,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

async fn auth(State(token): State<Option<Arc<Secret>>>, req: Request, next: Next) -> Response {
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !same(given, token.expose().as_bytes()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Compares without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One route in `GET /status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteView {
    #[serde(flatten)]
    pub status: RouteStatusView,
    pub counts: BTreeMap<String, u64>,
    /// Keys in the mirror-failure journal, waiting for a copy.
    pub journal_keys: u64,
    /// Shadow-read agreement over the last 1000 compared reads.
    pub shadow: crate::shadow::Agreement,
    /// With auto-cutover on: what it is waiting for, or what it did last.
    pub auto_cutover: Option<String>,
    /// The journal overflowed: run a verify pass, then clear the mark
    /// (`DELETE /routes/{name}/needs-verify`).
    pub needs_verify: bool,
    /// The in-proxy backfill running, or the last one.
    #[serde(default)]
    pub backfill: Option<crate::backfill::JobView>,
    /// Commands whose keys span hash slots as a Redis Cluster refuses,
    /// by name, with the latest samples (while a cache is clustered).
    #[serde(default)]
    pub cross_slot: crate::routing::CrossSlotSeen,
}

/// [`RouteStatus`] as JSON (also what the CLI reads back).
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteStatusView {
    pub name: String,
    pub patterns: Option<Vec<String>>,
    pub phase: Phase,
    pub source: Source,
    pub config_phase: Phase,
    pub since: String,
    /// `read-new` ramp: the percentage of keys served from new.
    pub ramp_percent: Option<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub table_version: u64,
    /// Config reloads since start: applied, and rejected (the running
    /// table stayed).
    #[serde(default)]
    pub config_reloads: crate::control::Reloads,
    pub state_file: Option<String>,
    pub journal_file: Option<String>,
    pub routes: Vec<RouteView>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamView>,
    /// With `[fleet]`: the epoch served and whether it is the fleet's.
    #[serde(default)]
    pub fleet: Option<FleetStatus>,
}

/// This member in `GET /status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FleetStatus {
    pub name: String,
    pub id: String,
    /// The record's epoch (last read), and the one this member serves.
    pub epoch: u64,
    pub applied: u64,
    /// Why this member may not serve the fleet's phases (see
    /// [`crate::fleet::Fleet::out_of_date`]); `None` when it does.
    pub out_of_date: Option<String>,
}

fn fleet_status(shared: &Shared) -> Option<FleetStatus> {
    let fleet = shared.fleet.as_ref()?;
    let figures = fleet.figures();
    Some(FleetStatus {
        name: fleet.config.name.clone(),
        id: fleet.id.clone(),
        epoch: figures.epoch,
        applied: figures.applied,
        out_of_date: fleet.out_of_date(),
    })
}

/// One cache in `GET /status`: how it is reached, and why connecting to it
/// fails while it does (never its credentials).
#[derive(Debug, Serialize, Deserialize)]
pub struct UpstreamView {
    pub side: Side,
    pub address: String,
    pub tls: bool,
    /// The proxy authenticates with credentials of its own.
    pub credentials: bool,
    /// The last connect error, while connecting fails.
    pub error: Option<String>,
    /// With `connections = "shared"`: shared connections open now, and
    /// client sessions on them.
    #[serde(default)]
    pub shared: Option<SharedView>,
    /// Connections of their own open now: sessions' in `dedicated` mode or
    /// with connection state, and the proxy's tools (repair, verify).
    #[serde(default)]
    pub dedicated: u64,
}

/// The shared connections to one cache in `GET /status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SharedView {
    pub connections: u64,
    pub sessions: u64,
}

fn upstream_views(shared: &Shared) -> Vec<UpstreamView> {
    shared
        .upstreams
        .iter()
        .map(|u| UpstreamView {
            side: u.side,
            address: u.addr().to_string(),
            tls: u.is_tls(),
            credentials: u.config.password.is_some(),
            error: u.last_error(),
            shared: u.shared().map(|p| SharedView {
                connections: p.open.load(Ordering::Relaxed),
                sessions: p.attached.load(Ordering::Relaxed),
            }),
            dedicated: u.dedicated.load(Ordering::Relaxed),
        })
        .collect()
}

fn view(status: RouteStatus, stats: Option<&RouteStats>) -> RouteView {
    let counts = stats
        .map(|s| {
            s.snapshot()
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect()
        })
        .unwrap_or_default();
    let journal_keys = stats.map_or(0, |s| s.journal_keys.load(Ordering::Relaxed));
    let needs_verify = stats.is_some_and(|s| s.needs_verify.load(Ordering::Relaxed));
    let shadow = stats.map_or(
        crate::shadow::Agreement {
            samples: 0,
            ratio: None,
        },
        |s| s.shadow.agreement(),
    );
    let auto_cutover = stats.and_then(|s| s.auto_status.lock().ok()?.clone());
    let cross_slot = stats
        .and_then(|s| s.cross_slot_seen.lock().ok().map(|c| c.clone()))
        .unwrap_or_default();
    RouteView {
        cross_slot,
        backfill: None,
        auto_cutover,
        shadow,
        journal_keys,
        needs_verify,
        status: RouteStatusView {
            name: status.name,
            patterns: status.patterns,
            phase: status.phase,
            source: status.source,
            config_phase: status.config_phase,
            since: humantime::format_rfc3339_seconds(status.since).to_string(),
            ramp_percent: status.ramp_percent,
        },
        counts,
    }
}

/// Each route's status with its counters.
fn routes(shared: &Shared) -> Vec<(RouteStatus, Arc<RouteStats>)> {
    let table = shared.router.current();
    shared
        .control
        .status()
        .into_iter()
        .filter_map(|s| {
            let stats = table
                .routes
                .iter()
                .find(|r| *r.name == s.name)?
                .stats
                .clone();
            Some((s, stats))
        })
        .collect()
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusView> {
    let table_version = shared.router.load().version;
    Json(StatusView {
        table_version,
        config_reloads: shared.control.reloads(),
        state_file: shared.control.state_path().map(|p| p.display().to_string()),
        journal_file: shared
            .repairer
            .journal
            .path()
            .map(|p| p.display().to_string()),
        routes: routes(&shared)
            .into_iter()
            .map(|(s, stats)| {
                let job = shared.backfills.get(&s.name).map(|j| j.view());
                RouteView {
                    backfill: job,
                    ..view(s, Some(&stats))
                }
            })
            .collect(),
        upstreams: upstream_views(&shared),
        fleet: fleet_status(&shared),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlipRequest {
    phase: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    ramp_percent: Option<u8>,
}

async fn flip(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let req: FlipRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"phase\": \"...\", \"force\": false, \"ramp_percent\": null}}: {e}"),
            )
        }
    };
    let Some(phase) = Phase::parse(&req.phase) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown phase {:?}; one of old-only, dual-write, read-new, new-only",
                req.phase
            ),
        );
    };
    if req.ramp_percent.is_some_and(|p| p > 100) {
        return error(StatusCode::BAD_REQUEST, "ramp_percent must be 0 to 100");
    }
    if let Some(fleet) = &shared.fleet {
        return fleet::flip(&shared, fleet, &name, phase, req.ramp_percent, req.force).await;
    }
    match shared.control.flip(
        &shared.router,
        &name,
        phase,
        req.ramp_percent,
        req.force,
        Source::Admin,
    ) {
        Ok(status) => {
            info!(route = %name, %phase, "admin API flip");
            let stats = shared
                .router
                .current()
                .routes
                .iter()
                .find(|r| *r.name == name)
                .map(|r| r.stats.clone());
            Json(view(status, stats.as_deref())).into_response()
        }
        Err(e @ FlipError::NoSuchRoute(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ FlipError::Skips { .. }) => error(StatusCode::CONFLICT, e),
        Err(e @ FlipError::Persist { .. }) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Clears a route's "needs verify" mark once the operator verified it.
async fn clear_needs_verify(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
    let Some((status, stats)) = routes(&shared).into_iter().find(|(s, _)| s.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no route named {name:?}"));
    };
    if shared.repairer.journal.clear_needs_verify(&stats) {
        info!(route = %name, "needs-verify mark cleared through the admin API");
    }
    Json(view(status, Some(&stats))).into_response()
}

/// `POST /routes/{name}/backfill`'s optional body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    batch: Option<usize>,
    max_keys_per_sec: Option<u64>,
    max_bytes_per_sec: Option<u64>,
    #[serde(rename = "type")]
    type_filter: Option<String>,
}

/// Starts an exact backfill of the route inside this proxy (202 with its
/// progress; then in `GET /status`).
async fn start_backfill(
    State(shared): State<Arc<Shared>>,
    axum::Extension(shutdown): axum::Extension<watch::Receiver<bool>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let req: BackfillRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BackfillRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(
                StatusCode::BAD_REQUEST,
                format!("body must be empty or {{\"batch\": 500, \"max_keys_per_sec\": null, \"max_bytes_per_sec\": null, \"type\": null}}: {e}"),
            ),
        }
    };
    if req.batch == Some(0) {
        return error(StatusCode::BAD_REQUEST, "batch must be at least 1");
    }
    let defaults = crate::tools::backfill::Options::default();
    let opts = crate::tools::backfill::Options {
        batch: req.batch.unwrap_or(defaults.batch),
        max_keys_per_sec: req.max_keys_per_sec,
        max_bytes_per_sec: req.max_bytes_per_sec,
        type_filter: req.type_filter,
        ..defaults
    };
    use crate::backfill::StartError;
    match shared.backfills.start(&name, opts, shutdown) {
        Ok(job) => (StatusCode::ACCEPTED, Json(job.view())).into_response(),
        Err(e @ StartError::NoSuchRoute(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

/// Stops the route's running backfill after its current batch.
async fn stop_backfill(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.backfills.cancel(&name) {
        Some(job) => {
            info!(route = %name, "backfill stopped through the admin API");
            Json(job.view()).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no backfill of route {name:?} is running"),
        ),
    }
}

/// `GET /live`: the process serves its admin listener.
async fn live() -> Response {
    Json(serde_json::json!({ "live": true })).into_response()
}

/// `GET /ready`: 200 once the start checks are done and every cache some
/// route is answered by connects (a fresh connection and `PING` to each,
/// so a proxy the load balancer stopped sending to still notices a cache
/// coming back); 503 with the reason otherwise.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let not_ready = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": why })),
        )
            .into_response()
    };
    if !shared.checked.load(Ordering::Acquire) {
        return not_ready("upstream checks at start still running".into());
    }
    for side in shared.serving_sides() {
        let up = shared.upstream(side);
        let mut setup = up.base_setup();
        setup.push(("PING", crate::protocol::Command::from_args(&[b"PING"])));
        if let Err(e) = up.connect(setup, shared.limits.max_reply_depth).await {
            return not_ready(format!("upstream {side} unreachable: {e}"));
        }
    }
    if let Some(why) = shared.fleet.as_ref().and_then(|f| f.out_of_date()) {
        return not_ready(why);
    }
    Json(serde_json::json!({ "ready": true })).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let clusters = Side::BOTH
        .into_iter()
        .filter_map(|side| shared.upstream(side).cluster_snapshot())
        .collect();
    let fleet = shared.fleet.as_ref().map(|f| f.figures());
    let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let pools = Side::BOTH
        .into_iter()
        .map(|side| {
            let up = shared.upstream(side);
            let pool = up.shared().map(|p| (get(&p.open), get(&p.attached)));
            (side, get(&up.dedicated), pool)
        })
        .collect();
    let body = crate::metrics::render(routes(&shared), clusters, fleet, pools);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abd", b"abc"));
        assert!(!super::same(b"ab", b"abc"));
    }
}
