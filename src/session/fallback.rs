//! Read fallback (a `read-new` route with `read_fallback = true`): a plain
//! single-key read that new answers with nothing is answered from old
//! instead, and the key is copied from old to new (value and remaining
//! TTL, through the repair path: never over a newer write).
//!
//! Which reads fall back (a decision, taken per table entry in
//! `commands::Traits`): `GET`, `HGET`, `HMGET` (all fields
//! nil), `HGETALL`, `HKEYS`, `HVALS`, `LRANGE`, `LINDEX`, `SMEMBERS`,
//! `ZRANGE`, `ZSCORE`: reads whose "nothing" reply (nil, empty) is what a
//! key missing from a cold cache looks like. Counts (`EXISTS`, `*LEN`,
//! `*CARD`) and membership tests are not: they are usually asked to decide
//! a write, and answering them from old would not warm new any faster.
//!
//! No fallback when a mirrored write to the key is still on its way to old
//! (another client just deleted it: old would answer what it is about to
//! lose), when this client has mirrored writes held for old (old would not
//! have them yet), or for clients using `CLIENT TRACKING`.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::side::Ready;
use super::{Session, Target};
use crate::protocol::{value, Command};
use crate::repair::RepairJob;
use crate::routing::{RouteStats, Side};
use std::sync::Arc;

/// A read sent to new that may fall back to old.
#[derive(Debug)]
pub(super) struct FallbackRead {
    pub(super) cmd: Command,
    pub(super) key: Bytes,
    pub(super) db: Option<u32>,
    pub(super) stats: Arc<RouteStats>,
}

/// The same read sent to old: its reply fills the placeholder at `pos` in
/// new's reply order.
#[derive(Debug)]
pub(super) struct FallbackOld {
    pos: u64,
    /// New's reply, given if old cannot answer.
    new_reply: Bytes,
    read: FallbackRead,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// New answered `reply` to a read that may fall back: pass it on, or
    /// ask old and keep its place.
    pub(super) fn fallback_reply(&mut self, read: FallbackRead, reply: Bytes) {
        let depth = self.shared.limits.max_reply_depth;
        let missed = value::decode(&reply, depth).is_some_and(|v| crate::compare::empty(&v));
        let old = Side::Old;
        let can = missed
            && self.held.is_empty()
            && !self.shared.repairer.inflight.busy(&read.key)
            // The caches may differ on it until a pending copy lands (old
            // may still hold what a lost DEL removed from new).
            && !self.shared.repairer.pending_for(read.db, &read.key)
            // (It would be queued in the client's MULTI open there.)
            && !self.sides[old].in_client_tx()
            && (!self.sides[old].is_idle() || self.shared.upstream(old).may_try());
        let sc = &mut self.sides[Side::New];
        if !can {
            sc.ready.push_back(Ready::Done(reply));
            return;
        }
        let pos = sc.ready_base + sc.ready.len() as u64;
        sc.ready.push_back(Ready::Pending(Vec::new()));
        let cmd = read.cmd.clone();
        let target = Target::FallbackOld(Box::new(FallbackOld {
            pos,
            new_reply: reply,
            read,
        }));
        self.send(old, &cmd, target);
    }

    /// Old answered a fallback read (`None`: it failed): fill new's place
    /// with it, and new with the key.
    pub(super) fn fallback_filled(&mut self, f: FallbackOld, reply: Option<Bytes>) {
        let depth = self.shared.limits.max_reply_depth;
        let useful = reply.as_ref().is_some_and(|r| {
            value::decode(r, depth)
                .is_some_and(|v| !crate::compare::empty(&v) && !matches!(v, value::Value::Error(_)))
        });
        let answer = match reply {
            Some(r) if useful => {
                RouteStats::bump(&f.read.stats.fallbacks);
                self.shared.repairer.submit(RepairJob {
                    from: Side::Old,
                    db: f.read.db,
                    key: f.read.key.clone(),
                    stats: f.read.stats.clone(),
                    follows: false,
                });
                r
            }
            _ => f.new_reply,
        };
        self.sides[Side::New].fill(f.pos, answer);
    }
}
