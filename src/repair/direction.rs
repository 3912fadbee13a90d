//! Which side a queued copy reads from when it runs: the route may have
//! flipped since it was queued.

use tracing::debug;

use super::{Copier, RepairJob};
use crate::routing::{RouteStats, Side};

/// The side a queued copy reads from now; `None` (dropped) when the key's
/// route has since moved to one cache and the recorded source no longer
/// gets its writes (read-new to new-only, or a rollback to old-only): it
/// is older than its target.
///
/// A copy that follows its route reads from the side that answers for it
/// when the copy runs: one queued in `read-new` (from new) that runs after
/// a flip back to `dual-write` copies from old, which answers now and
/// which new lags (a consumer's mirrored pop not yet applied there:
/// copying new over old brought popped elements back), and the other way
/// round. Fills (read fallback, backfill) keep their direction.
pub(super) fn source(copier: &Copier, job: &RepairJob) -> Option<Side> {
    let table = copier.router.load();
    let phase = table.routes[table.route_of(&job.key)].phase_for(&job.key);
    if phase.authoritative() != job.from && phase.mirror() != Some(job.from) {
        let repairer = &copier.repairer;
        debug!(from = %job.from, "repair copy dropped: its route no longer writes the side it copies from");
        RouteStats::bump(&job.stats.repair_skipped);
        repairer.finish(job);
        repairer.journal.copied(job.db, &job.key, repairer.start());
        return None;
    }
    match phase.mirror() {
        Some(_) if job.follows => Some(phase.authoritative()),
        _ => Some(job.from),
    }
}
