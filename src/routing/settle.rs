//! A flip that moves reads waits for blocked commands to move first, and
//! one that moves publishes waits for subscriptions to follow.
//!
//! A `BLPOP` blocked on old when its route flips to read from new is
//! unblocked there and sent again to new (`session/moving.rs`). Until that
//! has happened, a push under the new table would be mirrored to old and
//! feed it there while a consumer blocked on new gets the same element. So
//! a table change that moves some route's reads, made while blocking
//! commands are in flight, installs that route as *settling*: sessions hold
//! its commands (in their order) until every blocking command routed under
//! an earlier table has been answered, moved, or found where it belongs;
//! then the same table is installed again without the mark. A session that
//! does not answer in [`MAX_SETTLE`] does not hold the others up longer.
//!
//! Subscriptions are registered the same way (one registration per
//! subscribed connection): a route going `new-only` publishes to new only,
//! so its publishes wait until subscribers on old have subscribed on new.
//!
//! Sessions register each movable blocking command with the table version
//! it was routed by ([`Router::block`]), under the lock a table change is
//! installed under: a command routed by a table that is no longer current
//! is routed again instead, so none slips past a flip unseen.

use std::collections::BTreeMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{RouteTable, Router};

/// The longest a settling route holds its commands.
pub const MAX_SETTLE: Duration = Duration::from_secs(1);

/// Movable blocking commands in flight, counted by the table version they
/// were routed (or last confirmed) under.
#[derive(Debug, Default)]
pub(super) struct Blocked {
    by_version: BTreeMap<u64, usize>,
    /// When the current table began settling.
    pub(super) since: Option<Instant>,
}

impl Blocked {
    pub(super) fn any(&self) -> bool {
        !self.by_version.is_empty()
    }

    /// Whether any command in flight was routed before `version`.
    fn any_before(&self, version: u64) -> bool {
        self.by_version.range(..version).next().is_some()
    }

    fn add(&mut self, version: u64) {
        *self.by_version.entry(version).or_default() += 1;
    }

    fn remove(&mut self, version: u64) {
        if let Some(n) = self.by_version.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                self.by_version.remove(&version);
            }
        }
    }
}

/// One movable blocking command in flight, registered with the router
/// until dropped (answered, moved, or its connection gone).
#[derive(Debug)]
pub struct BlockedHold {
    router: Arc<Router>,
    version: u64,
}

impl BlockedHold {
    /// The command was found still routed where it runs under the current
    /// table: it no longer holds up a flip made before now.
    pub fn confirm(&mut self) {
        let mut blocked = self.router.blocked();
        let now = self.router.table.load().version;
        if now != self.version {
            blocked.remove(self.version);
            blocked.add(now);
            self.version = now;
            self.router.settle_if_done(&mut blocked, false);
        }
    }

    /// Whether it was routed by an earlier table than the current one.
    pub fn stale(&self) -> bool {
        self.version != self.router.table.load().version
    }
}

impl Drop for BlockedHold {
    fn drop(&mut self) {
        let mut blocked = self.router.blocked();
        blocked.remove(self.version);
        self.router.settle_if_done(&mut blocked, false);
    }
}

impl Router {
    pub(super) fn blocked(&self) -> MutexGuard<'_, Blocked> {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a movable blocking command routed by table `version`;
    /// `None` if that table is no longer current (route it again).
    pub fn block(self: &Arc<Self>, version: u64) -> Option<BlockedHold> {
        let mut blocked = self.blocked();
        if self.table.load().version != version {
            return None;
        }
        blocked.add(version);
        Some(BlockedHold {
            router: self.clone(),
            version,
        })
    }

    /// A session held a settling route's command for [`MAX_SETTLE`]: the
    /// flip stops waiting for blocked commands still unmoved.
    pub fn settle_now(&self) {
        let mut blocked = self.blocked();
        self.settle_if_done(&mut blocked, true);
    }

    /// When the current table settles and nothing routed before it is
    /// still blocked (or `force`), installs it again without the mark.
    fn settle_if_done(&self, blocked: &mut Blocked, force: bool) {
        let table = self.table.load();
        if !table.settling() {
            return;
        }
        let late = blocked.since.is_some_and(|t| t.elapsed() >= MAX_SETTLE);
        let waiting = blocked.any_before(table.version);
        if !(force || late) && waiting {
            return;
        }
        if waiting {
            warn!(
                version = table.version,
                "a flip stopped waiting for blocked commands and subscriptions to move (1 s): one may still be served by the cache its route left"
            );
        }
        let mut settled = RouteTable::clone(&table);
        for r in &mut settled.routes {
            r.settling = false;
        }
        blocked.since = None;
        self.install(settled);
    }

    /// Which routes of `next` settle, installed over `prev` with blocking
    /// commands (or subscriptions) in flight: those whose keys may now be
    /// read from another cache or published to other caches (and those
    /// still settling).
    pub(super) fn mark_settling(prev: &RouteTable, next: &mut RouteTable, blocked: &Blocked) {
        if !blocked.any() {
            return;
        }
        let same_layout = prev.routes.len() == next.routes.len()
            && prev
                .routes
                .iter()
                .zip(&next.routes)
                .all(|(p, n)| p.name == n.name && p.patterns == n.patterns);
        for r in &mut next.routes {
            if !same_layout {
                // Keys may have changed route: any may read elsewhere now.
                r.settling = true;
                continue;
            }
            r.settling = match prev.routes.iter().find(|p| p.name == r.name) {
                Some(p) => {
                    p.settling
                        || p.phase.authoritative() != r.phase.authoritative()
                        || p.phase.mirror() != r.phase.mirror()
                        || p.ramp_percent != r.ramp_percent
                }
                None => true,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::tests::cfg;
    use crate::routing::{CommandsConfig, Phase, RouteConfig};

    fn routes(s: Phase, default: Phase) -> Vec<RouteConfig> {
        vec![cfg("s", Some(&["s:*"]), s), cfg("default", None, default)]
    }

    fn settling(r: &Router) -> Vec<bool> {
        r.load().routes.iter().map(|r| r.settling).collect()
    }

    #[test]
    fn a_flip_with_nothing_blocked_does_not_settle() {
        let c = CommandsConfig::default();
        let r = Router::new(&routes(Phase::DualWrite, Phase::OldOnly), &c);
        r.replace(&routes(Phase::ReadNew, Phase::OldOnly), &c);
        assert_eq!(settling(&r), [false, false]);
    }

    #[test]
    fn a_flip_settles_the_moved_route_until_older_blocked_commands_go() {
        let c = CommandsConfig::default();
        let r = Arc::new(Router::new(&routes(Phase::DualWrite, Phase::OldOnly), &c));
        let v0 = r.load().version;
        let hold = r.block(v0).expect("current table");
        // A reload that changes no route's caches settles nothing.
        r.replace(&routes(Phase::DualWrite, Phase::OldOnly), &c);
        assert_eq!(settling(&r), [false, false]);
        assert!(hold.stale());
        let v1 = r.replace(&routes(Phase::ReadNew, Phase::OldOnly), &c);
        assert_eq!(
            settling(&r),
            [true, false],
            "only the route whose reads moved"
        );
        // Routed by a replaced table: refused, routed again by the caller.
        assert!(r.block(v0).is_none());
        // Blocked under the settling table: does not hold it up.
        let newer = r.block(v1).expect("current table");
        drop(hold);
        assert_eq!(settling(&r), [false, false]);
        assert_eq!(r.load().version, v1 + 1, "installed again, unmarked");
        drop(newer);
    }

    #[test]
    fn a_confirmed_command_releases_the_flip_and_a_forced_settle_ends_it() {
        let c = CommandsConfig::default();
        let r = Arc::new(Router::new(&routes(Phase::ReadNew, Phase::OldOnly), &c));
        let mut stays = r.block(r.load().version).unwrap();
        let moving = r.block(r.load().version).unwrap();
        r.replace(&routes(Phase::DualWrite, Phase::OldOnly), &c);
        assert_eq!(settling(&r), [true, false]);
        stays.confirm();
        assert_eq!(settling(&r), [true, false], "one still unmoved");
        r.settle_now();
        assert_eq!(settling(&r), [false, false]);
        drop((stays, moving));
    }
}
