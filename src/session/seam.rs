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
//!
//! What Redis would only keep and echo back (`CLIENT SETNAME`, `GETNAME`,
//! `SETINFO`) does not make a session leave: cutover keeps it and answers
//! as Redis 7.2 does ([`Session::answer_locally`]); it is replayed on the
//! session's own connections if it opens them later. Nor does `HELLO` with
//! a protocol version and at most a name ([`Session::shared_hello`]): the
//! session moves to the shared connections opened with that protocol.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::moving::Stalled;
use super::Session;
use crate::commands::{Entry, StateCmd};
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

    /// On the shared connections, the client-local state commands are
    /// answered here (true when `cmd` was).
    pub(super) fn answer_locally(&mut self, entry: Option<&Entry>, cmd: &Command) -> bool {
        if !self.shared_mode || self.own_conns {
            return false;
        }
        let reply = match (entry.map(|e| e.spec.name), cmd.len()) {
            (Some("client|getname"), 2) => match self.state.name() {
                Some(name) => bulk(name),
                None if self.resp3() => Bytes::from_static(b"_\r\n"),
                None => Bytes::from_static(b"$-1\r\n"),
            },
            (Some("client|setname"), 3) => self.keep(StateCmd::SetName, cmd, "Client names"),
            (_, 4) if is_setinfo(cmd) => match cmd.arg(2).unwrap_or_default() {
                a if a.eq_ignore_ascii_case(b"lib-name") || a.eq_ignore_ascii_case(b"lib-ver") => {
                    let what = String::from_utf8_lossy(a).into_owned();
                    self.keep(StateCmd::SetInfo, cmd, &what)
                }
                a => error(&format!(
                    "Unrecognized option '{}'",
                    String::from_utf8_lossy(a)
                )),
            },
            _ => return false,
        };
        self.local(reply);
        true
    }

    /// `HELLO [protover [SETNAME name]]` on the shared connections: once
    /// nothing is owed to the session on shared connections of the other
    /// protocol, it moves to those of this one (opened with `HELLO 3` for
    /// RESP3), keeps the name itself, and sends `HELLO [protover]` there,
    /// so the reply (the server's map) comes from the cache. With `AUTH`
    /// (or a version Redis refuses), `HELLO` needs a connection of the
    /// client's own.
    pub(super) fn shared_hello(&mut self, entry: Option<&Entry>, cmd: &Command) -> Hello {
        if !self.shared_mode || self.own_conns || entry.map(|e| e.spec.name) != Some("hello") {
            return Hello::Other;
        }
        let resp3 = match cmd.arg(1) {
            None => self.shared_resp3,
            Some(b"2") => false,
            Some(b"3") => true,
            Some(_) => return Hello::Other,
        };
        let mut name = None;
        let mut i = 2;
        while i < cmd.len() {
            match (cmd.arg(i), cmd.arg(i + 1)) {
                (Some(opt), Some(n)) if opt.eq_ignore_ascii_case(b"setname") => name = Some(n),
                _ => return Hello::Other,
            }
            i += 2;
        }
        if name.is_some_and(|n| !valid_attr(n)) {
            self.local(error(
                "Client names cannot contain spaces, newlines or special characters.",
            ));
            return Hello::Done;
        }
        if resp3 && !self.shared_resp3 && !self.resp3_shared() {
            return Hello::Other;
        }
        if resp3 != self.shared_resp3 {
            let left = Side::BOTH.map(|s| self.sides[s].leave_shared());
            if !left.iter().all(|l| *l) {
                self.stalled = Some(Stalled::for_own(cmd.clone()));
                return Hello::Done;
            }
            self.shared_resp3 = resp3;
        }
        if let Some(n) = name {
            let setname = Command::from_args(&[&b"CLIENT"[..], b"SETNAME", n]);
            self.state.apply(StateCmd::SetName, &setname);
        }
        let args: Vec<&[u8]> = cmd.args().take(2).collect();
        Hello::Send(Command::from_args(&args))
    }

    /// Whether every cache with shared connections is known to take
    /// `HELLO 3`. Until that is known, RESP3 sessions have connections of
    /// their own (and refusals exactly as Redis gives them), while each
    /// cache's RESP3 shared connections are opened to find out.
    fn resp3_shared(&self) -> bool {
        let mut all = true;
        for up in self.shared.upstreams.iter() {
            let Some(pool) = up.shared() else { continue };
            match pool.takes_resp3() {
                Some(takes) => all &= takes,
                None => {
                    pool.try_resp3(self.shared.limits.max_reply_depth);
                    all = false;
                }
            }
        }
        all
    }

    /// Keeps the name or library attribute `cmd` sets (its last argument),
    /// refused as Redis refuses it.
    fn keep(&mut self, kind: StateCmd, cmd: &Command, what: &str) -> Bytes {
        let value = cmd.arg(cmd.len() - 1).unwrap_or_default();
        if !valid_attr(value) {
            return error(&format!(
                "{what} cannot contain spaces, newlines or special characters."
            ));
        }
        self.state.apply(kind, cmd);
        Bytes::from_static(b"+OK\r\n")
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

/// What [`Session::shared_hello`] did with a command.
pub(super) enum Hello {
    /// Not a `HELLO` it takes.
    Other,
    /// Answered or held.
    Done,
    /// This goes on, as the client's `HELLO`.
    Send(Command),
}

/// A name or library attribute Redis accepts: printable, no spaces.
fn valid_attr(value: &[u8]) -> bool {
    value.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// `CLIENT SETINFO` (not in tables from Redis before 7.2).
fn is_setinfo(cmd: &Command) -> bool {
    cmd.name().eq_ignore_ascii_case(b"client")
        && cmd
            .arg(1)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"setinfo"))
}

fn bulk(b: &[u8]) -> Bytes {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out.into()
}

fn error(msg: &str) -> Bytes {
    Bytes::from(format!("-ERR {msg}\r\n"))
}
