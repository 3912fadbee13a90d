//! What each command sent upstream is for ([`Target`]), and what the
//! proxy's own bookkeeping carries with it: a mirrored write and how its
//! reply is checked, a connection-state command awaiting its answer, a
//! shadow read's slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{fallback, moving, side};
use crate::commands::{self, StateCmd};
use crate::protocol::{Command, Value};
use crate::repair::{Entered, Keys};
use crate::routing::{BlockedHold, RouteStats, Side};

/// One shadow read in flight, released when its reply came or was lost.
#[derive(Debug)]
pub(super) struct ShadowSlot(pub(super) Arc<AtomicUsize>);

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where the reply to a command sent upstream goes.
#[derive(Debug)]
pub(super) enum Target {
    /// To the client, in order. `state`: a connection-state command, which
    /// becomes part of the confirmed state if this reply is not an error.
    Client { state: bool },
    /// To the client, in order; then the held mirrored write waiting for
    /// this reply (ticket) is derived from it and released.
    Effect(u64),
    /// One confirmation frame of a (un)subscribe the proxy answers itself
    /// once every frame of it arrived (the wait with this id).
    SubAck(u64),
    /// A mirrored write: counted on its route, never shown to the client.
    Mirror(MirrorWrite),
    /// `EXISTS key` sent to the mirror ahead of compared write `id`, which
    /// changes its key in place: 0 means the mirror lacked the key.
    Probe(u64),
    /// To the client, in order, unless it is empty: then the read is asked
    /// of old (read fallback).
    FallbackNew(Box<fallback::FallbackRead>),
    /// A fallback read on old: its reply takes new's place.
    FallbackOld(Box<fallback::FallbackOld>),
    /// A shadow read on the other cache: compared, never shown.
    Shadow(#[allow(dead_code)] ShadowSlot), // held for its Drop
    /// Proxy-internal (state propagated to the other side, a DISCARD in
    /// place of an aborted EXEC): dropped, errors logged.
    Quiet(&'static str),
    /// One cache's `KEYS` answer when routes read from both (old's takes
    /// the client's place).
    Keys(Box<super::keyspace::KeysPart>),
    /// A `SCAN` page from this side when routes read from both: rewritten
    /// (its keys read from here, the cursor naming the cache).
    ScanPage(Side),
    /// One confirmation frame of a subscription the proxy moves to the
    /// cache its route publishes to (or of leaving the old one): dropped.
    MoveAck,
    /// `CLIENT ID`, asked ahead of a movable blocking command: recorded.
    ClientId,
    /// A connection-state command the answering cache accepted, carried to
    /// this one: refused here, the connection is not in the client's state.
    /// What was sent after it waits behind the gate until this reply.
    OtherState(side::Gate),
    /// A blocking command moved here at a flip: its reply fills the
    /// client's slot on the side it was first sent to.
    Moved(Box<moving::MovedSlot>),
}

/// A connection-state command sent and not yet answered. The other cache's
/// connection gets it only once the answering side accepted it: until then
/// a gate holds back everything sent there.
#[derive(Debug)]
pub(super) struct PendingState {
    /// The side whose reply the client gets.
    pub(super) side: Side,
    pub(super) kind: StateCmd,
    pub(super) cmd: Command,
    pub(super) gate: Option<side::Gate>,
}

/// A write sent to the mirror side.
#[derive(Debug)]
pub(super) struct MirrorWrite {
    pub(super) stats: Arc<RouteStats>,
    /// The side that answered the client: copies come from there.
    pub(super) from: Side,
    pub(super) db: Option<u32>,
    /// Its keys, counted in flight until it is answered or lost (a copy of
    /// one of them waits).
    pub(super) keys: Entered,
    /// What the mirror's reply must be to show it held what the
    /// authoritative side did; another one queues a copy.
    pub(super) check: Option<Box<Check>>,
    /// The effect of a blocking command served just as a flip came: the
    /// flip's route settles until it has landed on the mirror, or a
    /// consumer blocking there under the new table could take what it
    /// removes (`routing/settle.rs`).
    #[expect(dead_code, reason = "kept for its Drop, which releases the flip")]
    pub(super) hold: Option<Box<BlockedHold>>,
}

/// What a mirrored write's reply is checked against.
#[derive(Debug)]
pub(super) enum Check {
    /// A write mirrored as its effect: the reply it gives when the mirror
    /// held what the authoritative side did.
    Effect(Value),
    /// The EXEC of a mirrored transaction: one check per command in it, in
    /// order (each element of the mirror's EXEC array against it).
    Exec(Vec<Element>),
}

/// One command of a mirrored transaction: the reply it must get (`None`:
/// not checked, an effect of several commands) and the keys it writes.
#[derive(Debug)]
pub(super) struct Element {
    pub(super) expected: Option<Value>,
    pub(super) keys: Keys,
}

/// The keys `cmd` writes, by the command table (for commands the proxy
/// builds: effects, transaction bodies).
pub(super) fn written_keys(cmd: &Command) -> Keys {
    match commands::lookup(cmd) {
        Some(spec) => keys_at(cmd, &commands::key_positions(spec, cmd)),
        None => Keys::new(),
    }
}

pub(super) fn keys_at(cmd: &Command, positions: &[usize]) -> Keys {
    positions.iter().filter_map(|&i| cmd.arg_bytes(i)).collect()
}
