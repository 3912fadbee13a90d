//! The seam between a shared connection and a connection of its own
//! (`connections = "shared"`).
//!
//! A session without connection state sends its commands over the shared
//! connections ([`crate::upstream::shared`]). The first command that
//! needs a connection of its own (connection state: `SELECT`, `HELLO`,
//! `AUTH`, `CLIENT ...`, transactions, subscriptions, `MONITOR`; or one
//! that holds its connection: a blocking command, `WAIT`; or an admin
//! command) waits, with the client's commands behind it, until every reply
//! owed to the session on a shared connection has arrived; then the
//! session leaves the shared connections for good and that command opens
//! connections of its own, as in `dedicated` mode. The client sees no
//! seam: its replies keep their order and nothing is sent twice.

use tokio::io::{AsyncRead, AsyncWrite};

use super::moving::Stalled;
use super::Session;
use crate::commands::Entry;
use crate::protocol::Command;
use crate::routing::Side;

/// Commands that need the client's own connection: they set or read
/// connection state, or hold the connection.
const OWN: &[&str] = &[
    "select",
    "hello",
    "auth",
    "reset",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "monitor",
    "readonly",
    "readwrite",
    "asking",
    "wait",
    "waitaof",
];

/// Whether `cmd` needs a connection of the client's own.
pub(super) fn needs_own(entry: Option<&Entry>, cmd: &Command) -> bool {
    let Some(e) = entry else {
        // Unknown to the table: whatever it does, on its own connection.
        return !cmd.name().is_empty();
    };
    let name = e.spec.name;
    e.traits.blocking || e.traits.admin || name.starts_with("client") || OWN.contains(&name)
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Before `cmd` is dispatched: true when it may go now; false when it
    /// was held until the session has left the shared connections.
    pub(super) fn ready_for(&mut self, entry: Option<&Entry>, cmd: &Command) -> bool {
        if !self.shared_mode || (self.own_conns && !self.on_shared()) || !needs_own(entry, cmd) {
            return true;
        }
        self.own_conns = true;
        let left = Side::BOTH.map(|s| self.sides[s].leave_shared());
        if left.iter().all(|l| *l) {
            return true;
        }
        self.stalled = Some(Stalled::for_own(cmd.clone()));
        false
    }

    /// A side is still on a shared connection.
    pub(super) fn on_shared(&self) -> bool {
        self.sides.iter().any(|s| s.is_shared())
    }

    /// After replies arrived: a command held for the seam goes once the
    /// shared connections owe the session nothing.
    pub(super) fn resume_for_own(&mut self) {
        if self.stalled.as_ref().is_some_and(Stalled::is_for_own) {
            let left = Side::BOTH.map(|s| self.sides[s].leave_shared());
            if left.iter().all(|l| *l) {
                self.resume_stalled();
            }
        }
    }
}
