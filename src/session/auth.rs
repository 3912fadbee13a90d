//! Client authentication at the proxy (`[auth]`). With it, the proxy
//! answers AUTH and the AUTH part of HELLO itself, with Redis's own replies
//! (NOAUTH, WRONGPASS), and never forwards a client's credentials: the
//! upstreams use their own. Without it nothing here runs and AUTH passes
//! through as before.
//!
//! Passwords are kept as SHA-256 digests (as Redis ACL keeps them) and
//! compared without an early exit. A failed AUTH leaves an authenticated
//! connection authenticated (Redis does the same); RESET logs it out.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::refusal::Refusal;
use super::Session;
use crate::auth::Users;
use crate::protocol::request::string2ll;
use crate::protocol::Command;

/// What the gate does with one client command.
enum Gate {
    /// On to routing, unchanged.
    Pass(Command),
    /// Accepted by the proxy: `+OK`.
    Ok,
    /// Refused by the proxy.
    Refuse(Refusal),
}

fn is(cmd: &Command, name: &[u8]) -> bool {
    cmd.name().eq_ignore_ascii_case(name)
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Runs every client command through `[auth]` when the session started
    /// with it; returns what is left to dispatch.
    pub(super) fn auth_gate(&mut self, cmd: Command) -> Option<Command> {
        // Inside MULTI, or subscribed in RESP2, the client is authenticated;
        // AUTH and HELLO there meet the refusals of those states.
        let subscribed = !self.subs.is_empty() && !self.resp3();
        if self.tx.open.is_some() || (subscribed && !is(&cmd, b"reset")) {
            return Some(cmd);
        }
        let Some(users) = self.shared.auth.load_full() else {
            // `[auth]` was removed by a reload.
            return Some(cmd);
        };
        let gate = if is(&cmd, b"auth") {
            self.auth(&users, &cmd)
        } else if is(&cmd, b"hello") {
            self.hello(&users, cmd)
        } else if is(&cmd, b"reset") && self.authenticated {
            // Redis logs a connection out on RESET.
            self.authenticated = false;
            Gate::Pass(cmd)
        } else if self.authenticated || is(&cmd, b"quit") {
            Gate::Pass(cmd)
        } else {
            Gate::Refuse(Refusal::NoAuth)
        };
        match gate {
            Gate::Pass(cmd) => Some(cmd),
            Gate::Ok => {
                self.local(Bytes::from_static(b"+OK\r\n"));
                None
            }
            Gate::Refuse(refusal) => {
                self.local(refusal.reply());
                None
            }
        }
    }

    fn login(&mut self, users: &Users, user: &[u8], pass: &[u8]) -> bool {
        let ok = users.check(user, pass);
        if ok {
            if !self.authenticated {
                self.authenticated = true;
                self.open_early();
            }
        } else {
            debug!(user = %String::from_utf8_lossy(user), "client AUTH refused");
        }
        ok
    }

    /// `AUTH [user] password`, answered here.
    fn auth(&mut self, users: &Users, cmd: &Command) -> Gate {
        let (user, pass) = match (cmd.len(), cmd.arg(1), cmd.arg(2)) {
            (2, Some(pass), _) => (&b"default"[..], pass),
            (3, Some(user), Some(pass)) => (user, pass),
            (1, ..) => return Gate::Refuse(Refusal::Arity { name: "auth" }),
            _ => return Gate::Refuse(Refusal::Syntax),
        };
        if self.login(users, user, pass) {
            Gate::Ok
        } else {
            Gate::Refuse(Refusal::WrongPass)
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: the AUTH part is
    /// checked here and taken out; the rest goes on (the upstreams answer
    /// HELLO with their server info).
    fn hello(&mut self, users: &Users, cmd: Command) -> Gate {
        if let Some(v) = cmd.arg(1) {
            match string2ll(v) {
                Some(2 | 3) => {}
                Some(_) => return Gate::Refuse(Refusal::NoProto),
                None => return Gate::Refuse(Refusal::ProtoVersion),
            }
        }
        let mut credentials = None;
        let mut rest: Vec<&[u8]> = cmd.args().take(2).collect();
        let mut i = 2;
        while let Some(opt) = cmd.arg(i) {
            let more = cmd.len() - i - 1;
            if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
                credentials = cmd.arg(i + 1).zip(cmd.arg(i + 2));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"setname") && more >= 1 {
                rest.extend(cmd.arg(i).into_iter().chain(cmd.arg(i + 1)));
                i += 2;
            } else {
                return Gate::Refuse(Refusal::HelloOption {
                    option: String::from_utf8_lossy(opt).into_owned(),
                });
            }
        }
        match credentials {
            Some((user, pass)) => {
                if !self.login(users, user, pass) {
                    return Gate::Refuse(Refusal::WrongPass);
                }
                Gate::Pass(Command::from_args(&rest))
            }
            None if self.authenticated => Gate::Pass(cmd),
            None => Gate::Refuse(Refusal::NoAuthHello),
        }
    }
}
