//! Auto-cutover for a fleet: exactly one member decides, on the fleet's
//! figures, and its flips are fleet flips.
//!
//! The member holding the lease (a field of the record's hash, taken and
//! renewed every heartbeat by a script on the caches' clocks: see
//! [`super::Fleet::renew_lease`]) judges each route with a policy by the
//! figures summed over the live members' heartbeats: the shadow-read
//! windows pooled (samples added, agreement weighted by samples), and the
//! commands and failures of new added. Its flips go through
//! [`super::run::flip`]: prepared, acknowledged by every live member,
//! committed, applied everywhere. The other members judge too (so one
//! taking the lease over has the error window of the seconds before) but
//! only show who decides.

use std::sync::Arc;

use tokio::sync::watch;

use super::Parts as Shared;
use super::{Fleet, MemberView};
use crate::control::auto::{next_check, policed, Figures, Judge};
use crate::control::Source;
use crate::shadow::Agreement;

/// Evaluates the routes with a policy while this member holds the lease,
/// until shutdown.
pub async fn run(shared: Shared, fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let (mut judge, mut tick) = (Judge::default(), None);
    while next_check(&mut tick, &mut shutdown).await {
        let members = fleet.members();
        for r in policed(&shared.control, &shared.router) {
            let (name, stats) = (&r.status.name, &*r.stats);
            // Every member judges, so one taking the lease over decides on
            // the error window it kept; only the holder flips.
            let mv = judge.judge(&r.status, &r.policy, stats, summed(&members, name));
            if !fleet.holds_lease() {
                let holder = fleet
                    .lease_holder()
                    .unwrap_or_else(|| "none yet".to_string());
                let now = format!("decided by the fleet member holding the lease ({holder})");
                judge.show(name, stats, now);
                continue;
            }
            if let Some(mv) = mv {
                let done =
                    super::run::flip(&shared, &fleet, name, mv.to, None, false, Source::Auto);
                let done = done.await.map(|_| ()).map_err(|e| e.to_string());
                judge.moved(name, stats, &mv, done);
            }
        }
    }
}

/// A route's figures summed over the live members' last heartbeats.
pub fn summed(members: &[MemberView], route: &str) -> Figures {
    let (mut samples, mut agreeing, mut failed, mut commands) = (0usize, 0f64, 0u64, 0u64);
    for m in members.iter().filter(|m| m.live) {
        if let Some(a) = m.member.shadow.get(route) {
            samples += a.samples;
            agreeing += a.ratio.unwrap_or(0.0) * a.samples as f64;
        }
        if let Some(c) = m.member.counts.get(route) {
            let get = |k: &str| c.get(k).copied().unwrap_or(0);
            failed += get("upstream_failed");
            commands += get("reads") + get("writes");
        }
    }
    Figures {
        shadow: Agreement {
            samples,
            ratio: (samples > 0).then(|| agreeing / samples as f64),
        },
        failed,
        commands,
    }
}
