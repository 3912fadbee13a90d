//! The window of a fleet flip: from the moment a member acknowledges a
//! prepared flip until every live member serves it, members can hold
//! different phases for a route. Writes through two members in that window
//! can reach old and new in different orders (one member answers from old
//! and mirrors to new, another the other way round; or one mirrors and
//! another does not yet). Each member keeps the keys written to such a
//! route meanwhile ([`crate::routing::RouteStats::note_window_write`]) and,
//! once the window closes on a committed flip, journals them for a copy
//! from the side that answers after it, so old and new converge whatever
//! the order was. An aborted flip's keys are dropped: nothing changed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::info;

use super::Parts as Shared;
use super::{Fleet, Record, Seen};
use crate::routing::Phase;

/// An open window: the prepared epoch and the routes whose phase it
/// changes (with the phase after).
#[derive(Clone, Debug)]
pub struct Window {
    pub epoch: u64,
    pub routes: Vec<(String, Phase)>,
}

/// Opens the window of `prepared` on the routes it changes to a phase
/// with a mirror (a flip to `old-only`/`new-only` leaves nothing to copy).
/// A window still open from an earlier flip widens: its keys stay, and it
/// closes with the later flip.
pub fn open(shared: &Shared, fleet: &Fleet, prepared: &Record) {
    let current = shared.control.decisions();
    let table = shared.router.current();
    let mut slot = fleet.window.lock().unwrap_or_else(|e| e.into_inner());
    let mut routes = slot.take().map(|w| w.routes).unwrap_or_default();
    for (name, d) in &prepared.routes {
        if current.get(name).is_none_or(|c| c == d) || d.phase.mirror().is_none() {
            continue;
        }
        if let Some(r) = table.routes.iter().find(|r| *r.name == **name) {
            r.stats.window_open.store(true, Ordering::Release);
            if !routes.iter().any(|(n, _)| n == name) {
                routes.push((name.clone(), d.phase));
            }
        }
    }
    if !routes.is_empty() {
        *slot = Some(Window {
            epoch: prepared.epoch,
            routes,
        });
    }
}

/// Closes the open window once its flip was aborted, or committed and
/// served by every live member.
pub fn close_if_done(shared: &Shared, fleet: &Fleet, seen: &Seen) {
    if seen.at.is_none() {
        // Read from neither cache: nothing known of the flip.
        return;
    }
    let mut slot = fleet.window.lock().unwrap_or_else(|e| e.into_inner());
    let Some(w) = slot.as_ref() else { return };
    let committed = seen.record.as_ref().is_some_and(|r| r.epoch >= w.epoch);
    let prepared = seen.prepare.as_ref().is_some_and(|p| p.epoch == w.epoch);
    let served = seen
        .members
        .iter()
        .filter(|m| fleet.is_live(m))
        .all(|m| m.applied >= w.epoch);
    if (committed && served && fleet.applied() >= w.epoch) || (!committed && !prepared) {
        let w = slot.take().expect("checked");
        drop(slot);
        close(shared, &w, committed);
    }
}

/// Ends the window: the keys written during it are journalled for a copy
/// from the side each route answers with now (also after an aborted flip:
/// an earlier flip the window widened from may have changed the route,
/// and a copy of an unchanged key changes nothing).
fn close(shared: &Shared, w: &Window, _committed: bool) {
    let table = shared.router.current();
    let decisions = shared.control.decisions();
    for (name, _) in &w.routes {
        let Some(r) = table.routes.iter().find(|r| *r.name == **name) else {
            continue;
        };
        r.stats.window_open.store(false, Ordering::Release);
        let keys = std::mem::take(
            &mut *r
                .stats
                .window_keys
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let Some(phase) = decisions.get(name).map(|d| d.phase) else {
            continue;
        };
        if keys.is_empty() || phase.mirror().is_none() {
            continue;
        }
        let mut by_db: HashMap<Option<u32>, Vec<Bytes>> = HashMap::new();
        for (db, key) in keys {
            by_db.entry(db).or_default().push(key);
        }
        let n: usize = by_db.values().map(Vec::len).sum();
        for (db, keys) in by_db {
            shared
                .repairer
                .lost(&r.stats, phase.authoritative(), db, &keys);
        }
        info!(route = %name, epoch = w.epoch, keys = n, "fleet flip window closed: keys written during it are copied from the side that answers now");
    }
}
