//! The command table generated from Redis's own metadata, and what cutover
//! derives from it: how each command is routed and where its keys are.
//!
//! Nothing here is typed by hand per command except the short, documented
//! list in [`classify`] of commands whose routing Redis's flags do not decide
//! (connection state, transactions, scripts that may write, what a proxy
//! cannot carry yet).

mod keys;
mod spec;
mod traits;
#[allow(dead_code)]
#[rustfmt::skip]
mod table;

use std::collections::HashMap;
use std::sync::LazyLock;

pub use keys::{key_positions, KeyPositions};
pub use spec::{
    BeginSearch, CommandSpec, FindKeys, KeySpec, TIP_NONDETERMINISTIC_OUTPUT,
    TIP_NONDETERMINISTIC_OUTPUT_ORDER,
};
pub use table::Group;
pub use traits::{KeyspaceRead, Traits};

use crate::protocol::Command;

/// The Redis version the table was generated from.
pub const TABLE_REDIS_VERSION: &str = table::REDIS_VERSION;

/// A table entry with the decisions taken for it once ([`Traits`]), and
/// its subcommands'.
#[derive(Debug)]
pub struct Entry {
    pub spec: &'static CommandSpec,
    pub traits: Traits,
    subs: Vec<Entry>,
}

impl Entry {
    fn new(spec: &'static CommandSpec) -> Entry {
        Entry {
            spec,
            traits: Traits::of(spec),
            subs: spec.subcommands.iter().map(Entry::new).collect(),
        }
    }
}

static INDEX: LazyLock<HashMap<&'static [u8], Entry>> = LazyLock::new(|| {
    table::COMMANDS
        .iter()
        .map(|spec| (spec.name.as_bytes(), Entry::new(spec)))
        .collect()
});

/// Longest command name Redis knows is 20-odd bytes; anything longer is
/// unknown without lowercasing it.
const MAX_NAME: usize = 32;

/// Finds a command's spec, descending into `container|sub` subcommands.
/// `None`: not in the table (a module command, or newer than the table).
pub fn lookup(cmd: &Command) -> Option<&'static CommandSpec> {
    entry(cmd).map(|e| e.spec)
}

/// [`lookup`], with the entry's [`Traits`].
pub fn entry(cmd: &Command) -> Option<&'static Entry> {
    let index: &'static HashMap<&'static [u8], Entry> = &INDEX;
    let entry = index.get(lowercase(cmd.name(), &mut [0; MAX_NAME])?)?;
    if entry.subs.is_empty() {
        return Some(entry);
    }
    let prefix = entry.spec.name.len() + 1;
    let mut buf = [0; MAX_NAME];
    let found = cmd.arg(1).and_then(|sub| {
        let sub = lowercase(sub, &mut buf)?;
        entry
            .subs
            .iter()
            .find(|s| s.spec.name.as_bytes().get(prefix..) == Some(sub))
    });
    // An unknown subcommand is the container's: Redis itself replies with
    // the "unknown subcommand" error.
    Some(found.unwrap_or(entry))
}

fn lowercase<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_lowercase();
    }
    Some(out)
}

/// How the proxy carries a command. Everything that is not a plain read or
/// write is named here, with the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sent to the read side of its route.
    Read,
    /// Sent to the authoritative side, mirrored in dual phases.
    Write,
    /// Changes connection state: sent to every upstream connection of the
    /// client and replayed on connections opened later.
    State(StateCmd),
    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
    Transaction(TxCmd),
    /// `(P|S)SUBSCRIBE`, `(P|S)UNSUBSCRIBE`: routed by channel to the
    /// read side, confirmed by the proxy.
    PubSub(PubSubCmd),
    /// Answered by the proxy: `QUIT`.
    Quit,
    /// Not carried by this version; the reason is sent to the client.
    Unsupported(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateCmd {
    Select,
    Hello,
    Auth,
    SetName,
    SetInfo,
    ReadOnly,
    ReadWrite,
    /// `CLIENT TRACKING` (without `REDIRECT`): set on every connection of
    /// the client, so whichever cache serves a read tracks it.
    Tracking,
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSubCmd {
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxCmd {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

/// Decides how a known command is carried.
///
/// Decisions not taken from flags, and why:
/// - `EVAL`, `EVALSHA`, `FCALL`: Redis 7.0 does not expose `may_replicate`,
///   and a script may write, so they are writes (mirrored verbatim);
///   `EVAL_RO`/`EVALSHA_RO`/`FCALL_RO` are flagged read-only and are reads.
/// - `SCRIPT LOAD` / `SCRIPT FLUSH`: keyless writes so both sides share the
///   script cache; with `FUNCTION LOAD|DELETE|FLUSH|RESTORE` they go to
///   every cache a route uses ([`loads_code`]).
/// - `PUBLISH` / `SPUBLISH`: writes routed by channel, so a subscriber on
///   either side of a dual phase receives each message once.
/// - Admin commands (`CONFIG SET`, `DEBUG`, `SHUTDOWN`, ...): reads, i.e.
///   sent to the default route's read side only, never mirrored.
/// - `CLIENT TRACKING`: connection state, set on both connections (pushes
///   pass through); `REDIRECT` is refused. `CLIENT CACHING` is a read whose
///   effect the session moves to the cache serving the next command.
/// - Replication (`SYNC`, `PSYNC`, `REPLCONF`), `MONITOR`, `CLIENT REPLY
///   OFF|SKIP`: not carried.
pub fn classify(spec: &CommandSpec, cmd: &Command) -> Kind {
    use table::*;
    match spec.name {
        "select" => Kind::State(StateCmd::Select),
        "hello" => Kind::State(StateCmd::Hello),
        "auth" => Kind::State(StateCmd::Auth),
        "client|setname" => Kind::State(StateCmd::SetName),
        "client|setinfo" => Kind::State(StateCmd::SetInfo),
        // Tables from Redis < 7.2 lack SETINFO; client libraries send it anyway.
        "client"
            if cmd
                .arg(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"setinfo")) =>
        {
            Kind::State(StateCmd::SetInfo)
        }
        "readonly" => Kind::State(StateCmd::ReadOnly),
        "readwrite" => Kind::State(StateCmd::ReadWrite),
        "reset" => Kind::State(StateCmd::Reset),
        "multi" => Kind::Transaction(TxCmd::Multi),
        "exec" => Kind::Transaction(TxCmd::Exec),
        "discard" => Kind::Transaction(TxCmd::Discard),
        "watch" => Kind::Transaction(TxCmd::Watch),
        "unwatch" => Kind::Transaction(TxCmd::Unwatch),
        "quit" => Kind::Quit,
        "eval" | "evalsha" | "fcall" | "script|load" | "script|flush" | "publish" | "spublish" => {
            Kind::Write
        }
        "sync" | "psync" | "replconf" => {
            Kind::Unsupported("replication cannot run through a proxy")
        }
        "monitor" => {
            Kind::Unsupported("MONITOR is not supported by cutover; run it on the cache directly")
        }
        "client|tracking" if tracking_redirects(cmd) => Kind::Unsupported(
            "REDIRECT cannot work through a proxy (a client ID names one connection to one cache); use RESP3 tracking (HELLO 3), whose invalidation pushes cutover passes through",
        ),
        "client|tracking" => Kind::State(StateCmd::Tracking),
        "client|reply" => match cmd.arg(2) {
            Some(a) if a.eq_ignore_ascii_case(b"on") => Kind::Read,
            _ => Kind::Unsupported("CLIENT REPLY OFF|SKIP is not supported through cutover"),
        },
        "subscribe" => Kind::PubSub(PubSubCmd::Subscribe),
        "psubscribe" => Kind::PubSub(PubSubCmd::PSubscribe),
        "ssubscribe" => Kind::PubSub(PubSubCmd::SSubscribe),
        "unsubscribe" => Kind::PubSub(PubSubCmd::Unsubscribe),
        "punsubscribe" => Kind::PubSub(PubSubCmd::PUnsubscribe),
        "sunsubscribe" => Kind::PubSub(PubSubCmd::SUnsubscribe),
        _ if spec.flags & F_WRITE != 0 => Kind::Write,
        _ => Kind::Read,
    }
}

/// Whether `CLIENT TRACKING ...` has a `REDIRECT` option (a `PREFIX`
/// argument spelled "redirect" is not one).
fn tracking_redirects(cmd: &Command) -> bool {
    let mut i = 3;
    while let Some(opt) = cmd.arg(i) {
        if opt.eq_ignore_ascii_case(b"redirect") {
            return true;
        }
        i += if opt.eq_ignore_ascii_case(b"prefix") {
            2
        } else {
            1
        };
    }
    false
}

/// Whether `name` (lowercase, `container|sub`) is in the table.
pub fn is_known_name(name: &str) -> bool {
    let (container, _) = name.split_once('|').unwrap_or((name, ""));
    INDEX
        .get(container.as_bytes())
        .is_some_and(|e| container == name || e.spec.subcommands.iter().any(|s| s.name == name))
}

/// Commands no configuration makes the proxy carry.
pub fn never_carried(name: &str) -> bool {
    matches!(name, "monitor" | "sync" | "psync" | "replconf")
}

/// Whether an `allow`/`deny` entry (normalized) names this command: the
/// command itself or its container.
pub fn listed(spec: &CommandSpec, list: &[String]) -> bool {
    let container = spec.name.split('|').next().unwrap_or(spec.name);
    list.iter().any(|e| e == spec.name || e == container)
}

/// Admin commands, refused unless `[commands] allow` names them: they
/// reconfigure, persist, replicate or stop a cache, or inspect one
/// connection's server. `MIGRATE` moves data out of the cache.
pub fn is_admin(spec: &CommandSpec) -> bool {
    spec.flags & table::F_ADMIN != 0 || spec.name == "migrate"
}

/// Allowed admin commands that only look: sent to the default route's read
/// side. Every other allowed admin command changes the cache and goes to
/// both sides in dual phases, like a write.
pub fn admin_reads(spec: &CommandSpec) -> bool {
    matches!(
        spec.name,
        "config|get"
            | "acl|getuser"
            | "acl|list"
            | "acl|log"
            | "acl|users"
            | "acl|dryrun"
            | "client|list"
            | "module|list"
            | "slowlog|get"
            | "slowlog|len"
    ) || spec.name.starts_with("latency|") && spec.name != "latency|reset"
}

/// Commands that change the scripts or functions a cache can run: sent to
/// every cache any route uses, whatever the default route's phase.
pub fn loads_code(spec: &CommandSpec) -> bool {
    matches!(
        spec.name,
        "script|load"
            | "script|flush"
            | "function|load"
            | "function|delete"
            | "function|flush"
            | "function|restore"
    )
}

/// True when the command may block its connection (exempt from the command
/// timeout, and not mirrored as-is).
pub fn is_blocking(spec: &CommandSpec) -> bool {
    spec.flags & table::F_BLOCKING != 0 || spec.name == "wait" || spec.name == "waitaof"
}

/// Redis's check that `argc` satisfies the arity.
/// Whether a write changes its one key in place (a field, a member, an
/// element), so that a mirror missing the key ends up with only part of it
/// while both replies may agree (`HSET` of a new field answers 1 either way).
/// Mirrored compared writes of these probe the mirror for the key first.
pub fn updates_in_place(spec: &CommandSpec) -> bool {
    use table::Group;
    matches!(
        spec.group,
        Group::Bitmap
            | Group::Geo
            | Group::Hash
            | Group::Hyperloglog
            | Group::List
            | Group::Set
            | Group::SortedSet
            | Group::Stream
    ) && matches!(spec.key_specs, [ks] if ks.flags & table::KS_RW != 0)
}

pub fn arity_ok(spec: &CommandSpec, argc: usize) -> bool {
    let a = spec.arity as i64;
    (a >= 0 && argc as i64 == a) || (a < 0 && argc as i64 >= -a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        Command::from_args(args)
    }

    fn kind(args: &[&str]) -> Kind {
        let c = cmd(args);
        classify(lookup(&c).expect("known"), &c)
    }

    #[test]
    fn lookup_is_case_insensitive_and_finds_subcommands() {
        assert_eq!(lookup(&cmd(&["GeT", "k"])).unwrap().name, "get");
        assert_eq!(
            lookup(&cmd(&["client", "SETNAME", "x"])).unwrap().name,
            "client|setname"
        );
        assert_eq!(lookup(&cmd(&["client", "nosuch"])).unwrap().name, "client");
        assert!(lookup(&cmd(&["json.set", "k"])).is_none());
        assert!(lookup(&cmd(&[&"x".repeat(100)])).is_none());
    }

    #[test]
    fn classification() {
        assert_eq!(kind(&["get", "k"]), Kind::Read);
        assert_eq!(kind(&["set", "k", "v"]), Kind::Write);
        assert_eq!(kind(&["ping"]), Kind::Read);
        assert_eq!(kind(&["flushall"]), Kind::Write);
        assert_eq!(kind(&["eval", "return 1", "0"]), Kind::Write);
        assert_eq!(kind(&["eval_ro", "return 1", "0"]), Kind::Read);
        assert_eq!(kind(&["select", "1"]), Kind::State(StateCmd::Select));
        assert_eq!(
            kind(&["client", "setname", "x"]),
            Kind::State(StateCmd::SetName)
        );
        assert_eq!(kind(&["MULTI"]), Kind::Transaction(TxCmd::Multi));
        assert_eq!(
            kind(&["subscribe", "c"]),
            Kind::PubSub(PubSubCmd::Subscribe)
        );
        assert!(matches!(
            kind(&["client", "reply", "off"]),
            Kind::Unsupported(_)
        ));
        assert_eq!(kind(&["client", "reply", "on"]), Kind::Read);
        assert!(is_blocking(lookup(&cmd(&["blpop", "k", "0"])).unwrap()));
    }

    #[test]
    fn arity() {
        let get = lookup(&cmd(&["get"])).unwrap();
        assert!(arity_ok(get, 2) && !arity_ok(get, 1) && !arity_ok(get, 3));
        let mset = lookup(&cmd(&["mset"])).unwrap();
        assert!(arity_ok(mset, 3) && arity_ok(mset, 5) && !arity_ok(mset, 2));
    }
}
