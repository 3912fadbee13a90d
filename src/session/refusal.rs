//! Every refusal the session answers itself, in one place. `Display` is the
//! exact wire text (without its `\r\n`); [`Refusal::reply`] the frame.
//! The texts Redis itself uses are Redis's, byte for byte; cutover's own
//! name cutover and say what to change.

use std::fmt;

use bytes::Bytes;

use crate::routing::{Phase, Side};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `[commands] deny` names it (`name`: the table's, `container sub`).
    Denied { name: String },
    /// An admin command `[commands] allow` does not name.
    AdminNotAllowed { name: String },
    /// Not in the table, with `[commands] unknown = "refuse"`.
    Unknown { name: String },
    /// Anything but (un)subscribe, PING, QUIT and RESET while subscribed in
    /// RESP2 (Redis's own refusal).
    Subscribed { name: String },
    /// A command cutover does not carry, with the reason.
    Unsupported { name: String, reason: &'static str },
    /// Keys served in different phases (`detail` says which).
    CrossRoute { detail: String },
    /// A key under `cutover:fleet:`, reserved for the fleet's control
    /// record.
    Reserved { key: String },
    /// A blocking write in a dual phase whose effect has no translation.
    BlockingWrite {
        name: String,
        route: String,
        phase: Phase,
    },
    /// A connection-state command inside MULTI.
    StateInMulti { name: String },
    /// `(P|S)(UN)SUBSCRIBE` inside MULTI.
    PubSubInMulti { name: &'static str },
    /// Redis's arity error (`(P|S)SUBSCRIBE` without a channel, `AUTH`
    /// without a password).
    Arity { name: &'static str },
    /// Redis's: AUTH with too many arguments.
    Syntax,
    /// Redis's, with `[auth]`: a command before authenticating.
    NoAuth,
    /// Redis's, with `[auth]`: HELLO without AUTH before authenticating.
    NoAuthHello,
    /// Redis's, with `[auth]`: a wrong user or password.
    WrongPass,
    /// Redis's: HELLO with a protocol version other than 2 or 3.
    NoProto,
    /// Redis's: HELLO with a protocol version that is not a number.
    ProtoVersion,
    /// Redis's: HELLO with an option it does not know.
    HelloOption { option: String },
    /// The connection to the transaction's cache dropped while queueing.
    TxLost { name: Option<String> },
    /// A command of an open MULTI served by the other cache than the
    /// commands before it: answered at EXEC for the whole block.
    CrossRouteTx {
        name: String,
        route: String,
        authoritative: Side,
        side: Side,
    },
    /// Redis's: MULTI inside MULTI.
    NestedMulti,
    /// Redis's: WATCH inside MULTI.
    WatchInMulti,
    /// Redis's: EXEC after a queueing error.
    ExecAbort,
    /// WATCH of keys on the other cache than keys already watched.
    WatchOtherCache,
    /// The client sent bytes that are not a command (the connection is
    /// closed after it).
    Protocol { error: String },
}

impl Refusal {
    /// The frame sent to the client. Names that come from the client are
    /// part of the text: line breaks in them become spaces, so the frame
    /// stays one line.
    pub(super) fn reply(&self) -> Bytes {
        let text = self.to_string().replace(['\r', '\n'], " ");
        let mut out = Vec::with_capacity(text.len() + 2);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        Bytes::from(out)
    }

    /// Whether, inside MULTI, it also aborts the transaction (EXEC then
    /// answers EXECABORT, as after a queueing error in Redis).
    pub(super) fn aborts_tx(&self) -> bool {
        matches!(
            self,
            Refusal::Denied { .. }
                | Refusal::AdminNotAllowed { .. }
                | Refusal::Unknown { .. }
                | Refusal::Unsupported { .. }
                | Refusal::CrossRoute { .. }
                | Refusal::Reserved { .. }
                | Refusal::StateInMulti { .. }
                | Refusal::PubSubInMulti { .. }
                | Refusal::TxLost { .. }
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied { name } => {
                write!(f, "-ERR cutover: '{name}' is refused by [commands] deny")
            }
            Refusal::AdminNotAllowed { name } => {
                let upper = name.to_uppercase();
                let container = upper.split(' ').next().unwrap_or_default();
                write!(
                    f,
                    "-ERR cutover refuses '{name}' by default (an admin command would reach one cache only, or change both behind the operator's back); add \"{upper}\" or \"{container}\" to [commands] allow to forward it"
                )
            }
            Refusal::Unknown { name } => write!(
                f,
                "-ERR unknown command '{name}' (not in cutover's command table from Redis {}; set [commands] unknown = \"write\" or \"read\" to forward it)",
                crate::commands::TABLE_REDIS_VERSION
            ),
            Refusal::Subscribed { name } => write!(
                f,
                "-ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ),
            Refusal::Unsupported { name, reason } => {
                write!(f, "-ERR cutover does not support '{name}': {reason}")
            }
            Refusal::Reserved { key } => write!(
                f,
                "-ERR cutover: key '{key}' is reserved for cutover's fleet record (keys under cutover:fleet: cannot be read or written through cutover)"
            ),
            Refusal::CrossRoute { detail } => write!(
                f,
                "-CROSSROUTE keys in request don't hash to routes in the same phase ({detail})"
            ),
            Refusal::BlockingWrite { name, route, phase } => write!(
                f,
                "-ERR cutover: blocking write '{name}' on route '{route}' in {phase} is not supported (its effect cannot be mirrored)"
            ),
            Refusal::StateInMulti { name } => write!(
                f,
                "-ERR cutover: '{name}' inside MULTI is not supported (connection state must be known when it is sent)"
            ),
            Refusal::PubSubInMulti { name } => {
                write!(f, "-ERR cutover: '{name}' inside MULTI is not supported")
            }
            Refusal::Arity { name } => {
                write!(f, "-ERR wrong number of arguments for '{name}' command")
            }
            Refusal::Syntax => f.write_str("-ERR syntax error"),
            Refusal::NoAuth => f.write_str("-NOAUTH Authentication required."),
            Refusal::NoAuthHello => f.write_str("-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"),
            Refusal::WrongPass => {
                f.write_str("-WRONGPASS invalid username-password pair or user is disabled.")
            }
            Refusal::NoProto => f.write_str("-NOPROTO unsupported protocol version"),
            Refusal::ProtoVersion => {
                f.write_str("-ERR Protocol version is not an integer or out of range")
            }
            Refusal::HelloOption { option } => {
                write!(f, "-ERR Syntax error in HELLO option '{option}'")
            }
            Refusal::TxLost { name: Some(name) } => write!(
                f,
                "-ERR cutover: the connection to the cache serving this MULTI was lost; '{name}' not queued"
            ),
            Refusal::TxLost { name: None } => write!(
                f,
                "-ERR cutover: the connection to the cache serving this MULTI was lost"
            ),
            Refusal::CrossRouteTx {
                name,
                route,
                authoritative,
                side,
            } => write!(
                f,
                "-CROSSROUTE Transaction discarded: '{name}' on {route} is served by the {authoritative} cache, earlier commands by the {side} cache"
            ),
            Refusal::NestedMulti => f.write_str("-ERR MULTI calls can not be nested"),
            Refusal::WatchInMulti => f.write_str("-ERR WATCH inside MULTI is not allowed"),
            Refusal::ExecAbort => {
                f.write_str("-EXECABORT Transaction discarded because of previous errors.")
            }
            Refusal::WatchOtherCache => f.write_str(
                "-ERR cutover: WATCH of keys served by a different cache than the keys already watched",
            ),
            Refusal::Protocol { error } => write!(f, "-ERR {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: Refusal) -> String {
        String::from_utf8(r.reply().to_vec()).unwrap()
    }

    #[test]
    fn redis_own_texts_are_byte_for_byte() {
        assert_eq!(
            wire(Refusal::NestedMulti),
            "-ERR MULTI calls can not be nested\r\n"
        );
        assert_eq!(
            wire(Refusal::WatchInMulti),
            "-ERR WATCH inside MULTI is not allowed\r\n"
        );
        assert_eq!(
            wire(Refusal::ExecAbort),
            "-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(
            wire(Refusal::Arity { name: "subscribe" }),
            "-ERR wrong number of arguments for 'subscribe' command\r\n"
        );
        assert_eq!(
            wire(Refusal::Subscribed { name: "get".into() }),
            "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
        );
    }

    #[test]
    fn auth_texts_are_redis_own() {
        assert_eq!(
            wire(Refusal::NoAuth),
            "-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(
            wire(Refusal::WrongPass),
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
        assert_eq!(
            wire(Refusal::HelloOption {
                option: "bogus\r\n".into()
            }),
            "-ERR Syntax error in HELLO option 'bogus  '\r\n"
        );
        assert_eq!(
            wire(Refusal::NoProto),
            "-NOPROTO unsupported protocol version\r\n"
        );
    }

    #[test]
    fn cutover_texts_name_what_to_change() {
        assert_eq!(
            wire(Refusal::AdminNotAllowed {
                name: "config set".into()
            }),
            "-ERR cutover refuses 'config set' by default (an admin command would reach one cache only, or change both behind the operator's back); add \"CONFIG SET\" or \"CONFIG\" to [commands] allow to forward it\r\n"
        );
        assert_eq!(
            wire(Refusal::Denied {
                name: "flushall".into()
            }),
            "-ERR cutover: 'flushall' is refused by [commands] deny\r\n"
        );
        assert!(wire(Refusal::Unknown { name: "foo".into() })
            .starts_with("-ERR unknown command 'foo' (not in cutover's command table from Redis "));
        assert_eq!(
            wire(Refusal::CrossRouteTx {
                name: "set".into(),
                route: "route 'a' (read-new)".into(),
                authoritative: Side::New,
                side: Side::Old
            }),
            "-CROSSROUTE Transaction discarded: 'set' on route 'a' (read-new) is served by the new cache, earlier commands by the old cache\r\n"
        );
        assert_eq!(
            wire(Refusal::BlockingWrite {
                name: "blmove".into(),
                route: "q".into(),
                phase: Phase::DualWrite
            }),
            "-ERR cutover: blocking write 'blmove' on route 'q' in dual-write is not supported (its effect cannot be mirrored)\r\n"
        );
    }

    #[test]
    fn a_client_name_cannot_break_the_frame() {
        let r = wire(Refusal::Unknown {
            name: "x\r\n+OK".into(),
        });
        assert_eq!(r.matches("\r\n").count(), 1);
        assert!(r.ends_with("\r\n"));
    }

    #[test]
    fn which_refusals_abort_a_transaction() {
        assert!(Refusal::Denied { name: "x".into() }.aborts_tx());
        assert!(Refusal::CrossRoute {
            detail: String::new()
        }
        .aborts_tx());
        // Redis aborts a transaction on an unknown command too.
        assert!(Refusal::Unknown { name: "x".into() }.aborts_tx());
        assert!(!Refusal::NestedMulti.aborts_tx());
    }
}
