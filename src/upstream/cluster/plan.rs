//! Where a command goes in a cluster, decided from the command table:
//! the slot of its keys, a split by slot, every primary, or every node
//! connection (connection state).
//!
//! A command whose keys span slots and that cannot be split goes to the
//! first key's slot, whose node answers `-CROSSSLOT` as Redis Cluster does
//! (a mirrored one is then copied by the repair path instead).

use std::collections::HashMap;

use super::merge::Merge;
use crate::commands::{self, Kind, PubSubCmd, StateCmd, TxCmd};
use crate::protocol::Command;
use crate::routing::slot::key_slot;

/// Where one command goes.
#[derive(Debug)]
pub(super) enum Plan {
    /// The primary owning this slot.
    Slot(u16),
    /// Keyless and node-local (`PING`, `CLIENT ID`, `EVAL` with no keys):
    /// the router's home node.
    Home,
    /// Split by slot: each part to its slot's primary, replies merged.
    Split(Vec<(u16, Command)>, Merge),
    /// The same command to every primary, replies merged.
    All(Merge),
    /// `SCAN`: one primary at a time, the cursor naming which.
    Scan,
    /// Connection state: every node connection now, and every one opened
    /// later.
    State,
    Tx(TxCmd, Option<u16>),
    /// `(P|S)(UN)SUBSCRIBE`: `shard` names the slot of a sharded one's
    /// channels.
    Sub(PubSubCmd, Option<u16>),
    /// `CLIENT ID`: the router's own id, which names all its node
    /// connections.
    ClientId,
    /// `CLIENT UNBLOCK id ...`: to the node connections of the router with
    /// that id, if it is one.
    Unblock(u64),
}

/// Whether a cluster connection splits command `name` by slot when its
/// keys span slots (so a standalone application's use of it is served).
pub fn splits(name: &str) -> bool {
    matches!(
        name,
        "mget" | "mset" | "del" | "unlink" | "exists" | "touch"
    )
}

/// Decides where `cmd` goes.
pub(super) fn plan(cmd: &Command) -> Plan {
    let Some(entry) = commands::entry(cmd) else {
        return Plan::Home;
    };
    let spec = entry.spec;
    let keys = commands::key_positions(spec, cmd);
    let first = keys.first().and_then(|&i| cmd.arg(i)).map(key_slot);
    match commands::classify(spec, cmd) {
        Kind::State(StateCmd::ReadOnly | StateCmd::ReadWrite) => return Plan::Home,
        Kind::State(_) => return Plan::State,
        Kind::Transaction(t) => return Plan::Tx(t, first),
        Kind::PubSub(p) => {
            let shard = matches!(p, PubSubCmd::SSubscribe | PubSubCmd::SUnsubscribe);
            let slot = cmd.arg(1).filter(|_| shard).map(key_slot);
            return Plan::Sub(p, slot);
        }
        _ => {}
    }
    match spec.name {
        "mget" => return split(cmd, 1, Merge::MGet(Vec::new())),
        "mset" => return split(cmd, 2, Merge::AllOk),
        "del" | "unlink" | "exists" | "touch" => return split(cmd, 1, Merge::Sum),
        "keys" => return Plan::All(Merge::Concat),
        "dbsize" => return Plan::All(Merge::Sum),
        "randomkey" => return Plan::All(Merge::FirstNonNil),
        "flushall" | "flushdb" => return Plan::All(Merge::AllOk),
        "scan" => return Plan::Scan,
        "info" => return Plan::All(Merge::Info),
        "client|id" => return Plan::ClientId,
        "cluster|countkeysinslot" | "cluster|getkeysinslot" => {
            let slot = cmd
                .arg(2)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u16>().ok());
            if let Some(slot) = slot.filter(|&s| usize::from(s) < crate::routing::slot::SLOTS) {
                return Plan::Slot(slot);
            }
        }
        "client|unblock" => {
            let id = cmd
                .arg(2)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok());
            if let Some(id) = id {
                return Plan::Unblock(id);
            }
        }
        _ => {}
    }
    if entry.traits.loads_code || entry.traits.kills_script {
        return Plan::All(Merge::FirstError);
    }
    match first {
        Some(slot) => Plan::Slot(slot),
        None => Plan::Home,
    }
}

/// A command of `name key [args per key - 1]...` split into one command
/// per slot, keys kept in their order within each; one part when every
/// key shares a slot.
fn split(cmd: &Command, per_key: usize, merge: Merge) -> Plan {
    let n = cmd.len().saturating_sub(1) / per_key;
    if n == 0 || (cmd.len() - 1) % per_key != 0 {
        // Wrong arity: the node says so.
        return cmd.arg(1).map_or(Plan::Home, |k| Plan::Slot(key_slot(k)));
    }
    let slot_of = |k: usize| key_slot(cmd.arg(1 + k * per_key).unwrap_or_default());
    let first = slot_of(0);
    if (1..n).all(|k| slot_of(k) == first) {
        return Plan::Slot(first);
    }
    let mut order: Vec<u16> = Vec::new();
    let mut groups: HashMap<u16, Vec<usize>> = HashMap::new();
    let mut place = Vec::with_capacity(n);
    for k in 0..n {
        let slot = slot_of(k);
        let group = groups.entry(slot).or_insert_with(|| {
            order.push(slot);
            Vec::new()
        });
        group.push(k);
        place.push((
            order.iter().position(|&s| s == slot).unwrap_or(0),
            group.len() - 1,
        ));
    }
    let name = cmd.name();
    let parts = order
        .iter()
        .map(|slot| {
            let mut args: Vec<&[u8]> = vec![name];
            for &k in &groups[slot] {
                for a in 0..per_key {
                    args.push(cmd.arg(1 + k * per_key + a).unwrap_or_default());
                }
            }
            (*slot, Command::from_args(&args))
        })
        .collect();
    let merge = match merge {
        Merge::MGet(_) => Merge::MGet(place),
        m => m,
    };
    Plan::Split(parts, merge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        Command::from_args(args)
    }

    #[test]
    fn keys_in_one_slot_go_whole() {
        assert!(matches!(plan(&cmd(&["GET", "foo"])), Plan::Slot(12182)));
        assert!(matches!(
            plan(&cmd(&["MGET", "{a}1", "{a}2"])),
            Plan::Slot(_)
        ));
        assert!(matches!(plan(&cmd(&["PING"])), Plan::Home));
    }

    #[test]
    fn mget_splits_and_remembers_each_keys_place() {
        let Plan::Split(parts, Merge::MGet(place)) = plan(&cmd(&["MGET", "foo", "bar", "foo"]))
        else {
            panic!("not split");
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, 12182);
        assert_eq!(parts[0].1.raw(), cmd(&["MGET", "foo", "foo"]).raw());
        assert_eq!(place, vec![(0, 0), (1, 0), (0, 1)]);
    }

    #[test]
    fn mset_splits_pairs() {
        let Plan::Split(parts, Merge::AllOk) = plan(&cmd(&["MSET", "foo", "1", "bar", "2"])) else {
            panic!("not split");
        };
        assert_eq!(parts[1].1.raw(), cmd(&["MSET", "bar", "2"]).raw());
        // An odd argument count is the node's to refuse.
        assert!(matches!(
            plan(&cmd(&["MSET", "foo", "1", "bar"])),
            Plan::Slot(_)
        ));
    }
}
