//! The connection state a client has set (SELECT, HELLO, AUTH, CLIENT
//! SETNAME/SETINFO, READONLY), kept so it can be replayed on an upstream
//! connection opened later. A change is recorded only once the upstream that
//! answers the command accepted it, so a refused SELECT is never replayed.

use bytes::Bytes;

use crate::commands::StateCmd;
use crate::protocol::request::string2ll;
use crate::protocol::Command;
use crate::upstream::SetupStep;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// The argument of the last SELECT.
    db: Option<Bytes>,
    /// Protocol version chosen with HELLO (2 when never sent).
    protover: Option<Bytes>,
    /// The client's own AUTH, as an `AUTH [user] pass` command.
    auth: Option<Command>,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    readonly: bool,
    /// The `CLIENT TRACKING ON ...` commands in force, oldest first: the
    /// last one sets the mode, and in BCAST mode each adds its prefixes.
    tracking: Vec<Command>,
}

fn owned(arg: Option<&[u8]>) -> Option<Bytes> {
    arg.map(Bytes::copy_from_slice)
}

impl ConnState {
    pub fn is_resp3(&self) -> bool {
        self.protover.as_deref() == Some(b"3")
    }

    /// The database the client selected, if any.
    pub fn db(&self) -> Option<u32> {
        std::str::from_utf8(self.db.as_deref()?).ok()?.parse().ok()
    }

    /// The name set with `CLIENT SETNAME` (or `HELLO ... SETNAME`).
    pub fn name(&self) -> Option<&Bytes> {
        self.name.as_ref()
    }

    /// This state without what a shared connection does not need: the
    /// name and library attributes (cutover keeps and answers them), and
    /// the protocol (the shared connections of that protocol carry it).
    pub fn connection_part(&self) -> ConnState {
        ConnState {
            protover: None,
            name: None,
            lib_name: None,
            lib_ver: None,
            ..self.clone()
        }
    }

    pub fn is_tracking(&self) -> bool {
        !self.tracking.is_empty()
    }

    /// Records the effect of `cmd`, which an upstream accepted. Returns false
    /// (changing nothing) when it is not a form the proxy can replay.
    pub fn apply(&mut self, kind: StateCmd, cmd: &Command) -> bool {
        match kind {
            StateCmd::Select => match cmd.arg(1) {
                Some(db) if cmd.len() == 2 && string2ll(db).is_some() => self.db = owned(Some(db)),
                _ => return false,
            },
            StateCmd::Hello => return self.apply_hello(cmd),
            StateCmd::Auth => {
                if !(2..=3).contains(&cmd.len()) {
                    return false;
                }
                self.auth = Some(cmd.clone());
            }
            StateCmd::SetName => match cmd.arg(2) {
                Some(name) if cmd.len() == 3 => {
                    self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name))
                }
                _ => return false,
            },
            StateCmd::SetInfo => {
                let (Some(attr), Some(value)) = (cmd.arg(2), cmd.arg(3)) else {
                    return false;
                };
                if attr.eq_ignore_ascii_case(b"lib-name") {
                    self.lib_name = owned(Some(value));
                } else if attr.eq_ignore_ascii_case(b"lib-ver") {
                    self.lib_ver = owned(Some(value));
                } else {
                    return false;
                }
            }
            StateCmd::Tracking => return self.apply_tracking(cmd),
            StateCmd::ReadOnly => self.readonly = true,
            StateCmd::ReadWrite => self.readonly = false,
            // RESET logs out (back to the default user, authenticated
            // only if it has no password) and forgets everything else.
            StateCmd::Reset => *self = ConnState::default(),
        }
        true
    }

    /// `CLIENT TRACKING ON|OFF [options]`, as Redis's `enableTracking`:
    /// OFF forgets everything; ON replaces the mode, and BCAST prefixes
    /// accumulate until OFF.
    fn apply_tracking(&mut self, cmd: &Command) -> bool {
        match cmd.arg(2) {
            Some(a) if a.eq_ignore_ascii_case(b"off") => self.tracking.clear(),
            Some(a) if a.eq_ignore_ascii_case(b"on") => {
                let bcast = cmd.args().skip(3).any(|a| a.eq_ignore_ascii_case(b"bcast"));
                if !bcast {
                    self.tracking.clear();
                }
                self.tracking.push(cmd.clone());
            }
            _ => return false,
        }
        true
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn apply_hello(&mut self, cmd: &Command) -> bool {
        let mut next = ConnState { ..self.clone() };
        if let Some(v) = cmd.arg(1) {
            if !matches!(v, b"2" | b"3") {
                return false;
            }
            next.protover = owned(Some(v));
        }
        let mut i = 2;
        while i < cmd.len() {
            let opt = cmd.arg(i).unwrap_or_default();
            if opt.eq_ignore_ascii_case(b"auth") && i + 2 < cmd.len() {
                next.auth = Some(Command::from_args(&[
                    b"AUTH",
                    cmd.arg(i + 1).unwrap_or_default(),
                    cmd.arg(i + 2).unwrap_or_default(),
                ]));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"setname") && i + 1 < cmd.len() {
                next.name = owned(cmd.arg(i + 1));
                i += 2;
            } else {
                return false;
            }
        }
        *self = next;
        true
    }

    /// The commands that give a fresh upstream connection this state, in
    /// an order Redis accepts (authenticate first). An upstream with its own
    /// credentials (`own_credentials`) never gets the client's.
    pub fn replay(&self, default_db: u32, own_credentials: bool) -> Vec<SetupStep> {
        let mut steps = Vec::new();
        if let Some(auth) = self.auth.as_ref().filter(|_| !own_credentials) {
            steps.push(("AUTH (client credentials)", auth.clone()));
        }
        if let Some(v) = &self.protover {
            steps.push(("HELLO", Command::from_args(&[&b"HELLO"[..], v])));
        }
        match &self.db {
            Some(db) => steps.push(("SELECT", Command::from_args(&[&b"SELECT"[..], db]))),
            None if default_db != 0 => steps.push((
                "SELECT (upstream db)",
                Command::from_args(&[b"SELECT", default_db.to_string().as_bytes()]),
            )),
            None => {}
        }
        if let Some(name) = &self.name {
            steps.push((
                "CLIENT SETNAME",
                Command::from_args(&[&b"CLIENT"[..], b"SETNAME", name]),
            ));
        }
        if let Some(v) = &self.lib_name {
            steps.push((
                crate::upstream::SETINFO_STEP,
                Command::from_args(&[&b"CLIENT"[..], b"SETINFO", b"LIB-NAME", v]),
            ));
        }
        if let Some(v) = &self.lib_ver {
            steps.push((
                crate::upstream::SETINFO_STEP,
                Command::from_args(&[&b"CLIENT"[..], b"SETINFO", b"LIB-VER", v]),
            ));
        }
        if self.readonly {
            steps.push(("READONLY", Command::from_args(&[b"READONLY"])));
        }
        for cmd in &self.tracking {
            steps.push(("CLIENT TRACKING", cmd.clone()));
        }
        steps
    }
}

/// What a state command becomes on an upstream that is not the one
/// answering it: unchanged, except that an upstream with its own credentials
/// gets no client credentials (AUTH is skipped, HELLO loses its AUTH part).
pub(super) fn for_other_side(
    kind: StateCmd,
    cmd: &Command,
    own_credentials: bool,
) -> Option<Command> {
    match kind {
        _ if !own_credentials => Some(cmd.clone()),
        StateCmd::Auth => None,
        StateCmd::Hello => {
            let mut args: Vec<&[u8]> = Vec::with_capacity(cmd.len());
            let mut i = 0;
            while let Some(a) = cmd.arg(i) {
                if i >= 2 && a.eq_ignore_ascii_case(b"auth") {
                    i += 3;
                    continue;
                }
                args.push(a);
                i += 1;
            }
            Some(Command::from_args(&args))
        }
        _ => Some(cmd.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(args: &[&str]) -> Command {
        Command::from_args(args)
    }

    fn names(s: &ConnState) -> Vec<Vec<String>> {
        s.replay(0, false)
            .into_iter()
            .map(|(_, cmd)| {
                cmd.args()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn replays_what_the_client_set() {
        let mut s = ConnState::default();
        assert!(s.apply(StateCmd::Select, &c(&["SELECT", "3"])));
        assert!(s.apply(StateCmd::Hello, &c(&["HELLO", "3", "SETNAME", "app"])));
        assert!(s.apply(StateCmd::ReadOnly, &c(&["READONLY"])));
        assert!(s.is_resp3());
        assert_eq!(
            names(&s),
            vec![
                vec!["HELLO", "3"],
                vec!["SELECT", "3"],
                vec!["CLIENT", "SETNAME", "app"],
                vec!["READONLY"]
            ]
        );
    }

    #[test]
    fn malformed_state_commands_change_nothing() {
        let mut s = ConnState::default();
        assert!(!s.apply(StateCmd::Select, &c(&["SELECT", "x"])));
        assert!(!s.apply(StateCmd::Hello, &c(&["HELLO", "4"])));
        assert!(!s.apply(StateCmd::Hello, &c(&["HELLO", "3", "BOGUS"])));
        assert_eq!(s, ConnState::default());
    }

    #[test]
    fn client_credentials_never_reach_an_upstream_with_its_own() {
        let mut s = ConnState::default();
        s.apply(StateCmd::Auth, &c(&["AUTH", "pw"]));
        assert_eq!(s.replay(0, true).len(), 0);
        assert_eq!(s.replay(0, false).len(), 1);
        assert_eq!(
            for_other_side(StateCmd::Auth, &c(&["AUTH", "pw"]), true),
            None
        );
        let hello = for_other_side(
            StateCmd::Hello,
            &c(&["HELLO", "3", "AUTH", "u", "pw", "SETNAME", "n"]),
            true,
        );
        assert_eq!(hello, Some(c(&["HELLO", "3", "SETNAME", "n"])));
        let select = c(&["SELECT", "1"]);
        assert_eq!(
            for_other_side(StateCmd::Select, &select, true),
            Some(select)
        );
    }

    #[test]
    fn tracking_replays_the_mode_in_force() {
        let mut s = ConnState::default();
        assert!(s.apply(StateCmd::Tracking, &c(&["CLIENT", "TRACKING", "on"])));
        assert!(s.apply(
            StateCmd::Tracking,
            &c(&["CLIENT", "TRACKING", "ON", "OPTIN"])
        ));
        assert_eq!(names(&s), vec![vec!["CLIENT", "TRACKING", "ON", "OPTIN"]]);
        assert!(s.apply(StateCmd::Tracking, &c(&["CLIENT", "TRACKING", "off"])));
        assert!(!s.is_tracking());
        let bcast = |p: &str| c(&["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", p]);
        assert!(s.apply(StateCmd::Tracking, &bcast("a:")));
        assert!(s.apply(StateCmd::Tracking, &bcast("b:")));
        assert_eq!(names(&s).len(), 2);
        assert!(!s.apply(StateCmd::Tracking, &c(&["CLIENT", "TRACKING", "maybe"])));
        assert!(s.apply(StateCmd::Reset, &c(&["RESET"])));
        assert!(!s.is_tracking());
    }

    #[test]
    fn reset_logs_out_and_default_db_is_selected() {
        let mut s = ConnState::default();
        s.apply(StateCmd::Auth, &c(&["AUTH", "pw"]));
        s.apply(StateCmd::Select, &c(&["SELECT", "2"]));
        s.apply(StateCmd::Reset, &c(&["RESET"]));
        assert!(names(&s).is_empty(), "Redis logs a connection out on RESET");
        let fresh = ConnState::default();
        let steps = fresh.replay(4, false);
        assert_eq!(steps[0].1.arg(1), Some(&b"4"[..]));
    }
}
