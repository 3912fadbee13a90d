//! The admin API's fleet side: `GET /fleet`, and `PUT /routes/{name}/phase`
//! on a member of a fleet (the flip committed for every member).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{error, view};
use crate::control::{FlipError, Source};
use crate::fleet::run::FleetFlipError;
use crate::fleet::{Fleet, MemberView, Record};
use crate::routing::Phase;
use crate::shared::Shared;

/// `GET /fleet`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FleetView {
    pub name: String,
    /// This member's id.
    pub id: String,
    /// The record's epoch, and the one this member serves.
    pub epoch: u64,
    pub applied: u64,
    pub record: Option<Record>,
    pub members: Vec<MemberView>,
    /// Per route, each counter summed over the live members.
    pub routes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per cache, why the record could not be read there (last read).
    pub errors: BTreeMap<String, Option<String>>,
    /// The member holding the auto-cutover lease (last read).
    #[serde(default)]
    pub lease: Option<String>,
    /// Per route, the live members' shadow-read windows pooled (what
    /// auto-cutover judges with a fleet).
    #[serde(default)]
    pub shadow: BTreeMap<String, crate::shadow::Agreement>,
}

pub fn fleet_view(fleet: &Fleet) -> FleetView {
    let seen = fleet.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let members = fleet.members();
    let mut routes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for m in members.iter().filter(|m| m.live) {
        for (route, counts) in &m.member.counts {
            let sums = routes.entry(route.clone()).or_default();
            for (name, v) in counts {
                *sums.entry(name.clone()).or_default() += v;
            }
            let j = m.member.journal_keys.get(route).copied().unwrap_or(0);
            *sums.entry("journal_keys".into()).or_default() += j;
        }
    }
    let errors = crate::routing::Side::BOTH
        .iter()
        .map(|&s| (s.name().to_string(), seen.errors[s].clone()))
        .collect();
    let shadow = routes
        .keys()
        .map(|r| (r.clone(), crate::fleet::auto::summed(&members, r).shadow))
        .collect();
    FleetView {
        name: fleet.config.name.clone(),
        id: fleet.id.clone(),
        epoch: seen.record.as_ref().map_or(0, |r| r.epoch),
        applied: fleet.applied(),
        record: seen.record,
        members,
        routes,
        errors,
        lease: seen.lease.map(|(id, _)| id),
        shadow,
    }
}

pub(super) async fn get_fleet(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.fleet {
        Some(fleet) => Json(fleet_view(fleet)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this instance has no [fleet] section",
        ),
    }
}

/// A flip on a member of a fleet: committed for the fleet, answered as the
/// route (as without a fleet) plus `fleet`: the epoch, the members and
/// those that did not apply it within `flip_timeout_ms` (then 202: the
/// flip is committed and they will take it when they can read the record).
pub(super) async fn flip(
    shared: &Arc<Shared>,
    fleet: &Fleet,
    name: &str,
    phase: Phase,
    ramp: Option<u8>,
    force: bool,
) -> Response {
    let outcome = crate::fleet::run::flip(
        &shared.fleet_parts(),
        fleet,
        name,
        phase,
        ramp,
        force,
        Source::Admin,
    )
    .await;
    match outcome {
        Ok(o) => {
            let stats = shared
                .router
                .current()
                .routes
                .iter()
                .find(|r| *r.name == *name)
                .map(|r| r.stats.clone());
            let mut body = serde_json::to_value(view(o.route, stats.as_deref()))
                .expect("a route view serializes");
            body["fleet"] = serde_json::json!({
                "epoch": o.epoch,
                "members": o.members,
                "behind": o.behind,
            });
            let code = match o.behind.is_empty() {
                true => StatusCode::OK,
                false => StatusCode::ACCEPTED,
            };
            (code, Json(body)).into_response()
        }
        Err(FleetFlipError::Flip(e @ FlipError::NoSuchRoute(_))) => error(StatusCode::NOT_FOUND, e),
        Err(FleetFlipError::Flip(e @ FlipError::Skips { .. })) => error(StatusCode::CONFLICT, e),
        Err(e @ FleetFlipError::Lost { .. }) => error(StatusCode::CONFLICT, e),
        Err(e @ FleetFlipError::Aborted { .. }) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `cutover status --fleet`.
pub fn render(v: &FleetView) -> String {
    let mut out = format!(
        "fleet {} at epoch {} (this member {} serves {})\n",
        v.name, v.epoch, v.id, v.applied
    );
    for (side, e) in &v.errors {
        if let Some(e) = e {
            out.push_str(&format!("record unreadable on {side}: {e}\n"));
        }
    }
    out.push_str(&format!(
        "{:<40} {:<22} {:<22} {:>7}  state\n",
        "member", "listen", "admin", "epoch"
    ));
    for m in &v.members {
        let state = match (m.live, m.behind) {
            (false, _) => "absent",
            (true, true) => "behind",
            (true, false) => "ok",
        };
        out.push_str(&format!(
            "{:<40} {:<22} {:<22} {:>7}  {state}\n",
            m.member.id,
            m.member.listen,
            m.member.admin.as_deref().unwrap_or("-"),
            m.member.applied
        ));
    }
    for (route, c) in &v.routes {
        let g = |k: &str| c.get(k).copied().unwrap_or(0);
        out.push_str(&format!(
            "route {route}: {} writes, {} mirrored, {} mirror failures, {} mismatches, {} journalled keys (live members summed)\n",
            g("writes"),
            g("mirrored"),
            g("mirror_failed"),
            g("mismatches"),
            g("journal_keys")
        ));
        if let Some(a) = v.shadow.get(route).filter(|a| a.samples > 0) {
            out.push_str(&format!(
                "route {route}: shadow agreement {:.2}% over the members' last {} shadow reads\n",
                a.ratio.unwrap_or(0.0) * 100.0,
                a.samples
            ));
        }
    }
    if let Some(holder) = &v.lease {
        out.push_str(&format!("auto-cutover lease: {holder}\n"));
    }
    out
}
