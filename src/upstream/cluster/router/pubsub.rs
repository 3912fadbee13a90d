//! Subscriptions in a cluster. `PUBLISH` reaches every node's
//! subscribers, so channel and pattern subscriptions live on the home
//! node; a sharded channel's (`SSUBSCRIBE`) on the node owning its slot.
//! Each (un)subscribe is answered with one confirmation per channel, as a
//! standalone Redis does: the router counts them, knowing what this
//! connection is subscribed to.

use bytes::{Bytes, BytesMut};

use super::{Expected, Router, What};
use crate::commands::PubSubCmd;
use crate::protocol::Command;

impl Router {
    pub(super) fn sub(&mut self, p: PubSubCmd, slot: Option<u16>, cmd: Command) {
        let args: Vec<Bytes> = (1..cmd.len()).filter_map(|i| cmd.arg_bytes(i)).collect();
        let home = self.home;
        let frames = match p {
            PubSubCmd::Subscribe => {
                self.subs.channels.extend(args.iter().cloned());
                args.len()
            }
            PubSubCmd::PSubscribe => {
                self.subs.patterns.extend(args.iter().cloned());
                args.len()
            }
            PubSubCmd::Unsubscribe => unsubscribe(&mut self.subs.channels, &args),
            PubSubCmd::PUnsubscribe => unsubscribe(&mut self.subs.patterns, &args),
            PubSubCmd::SSubscribe | PubSubCmd::SUnsubscribe if !args.is_empty() => {
                let n = slot.map_or(home, |s| self.node_for(s));
                for a in &args {
                    match p {
                        PubSubCmd::SSubscribe => self.subs.shard.insert(a.clone(), n),
                        _ => self.subs.shard.remove(a),
                    };
                }
                return self.frames_to(&[(n, args.len())], &cmd, slot);
            }
            _ => return self.sunsubscribe_all(cmd),
        };
        self.frames_to(&[(home, frames.max(1))], &cmd, None);
    }

    /// `SUNSUBSCRIBE` with no channel: every node holding some of this
    /// connection's sharded subscriptions, each confirming its own.
    fn sunsubscribe_all(&mut self, cmd: Command) {
        let mut per_node: Vec<(usize, usize)> = Vec::new();
        for &n in self.subs.shard.values() {
            match per_node.iter_mut().find(|(m, _)| *m == n) {
                Some((_, c)) => *c += 1,
                None => per_node.push((n, 1)),
            }
        }
        self.subs.shard.clear();
        if per_node.is_empty() {
            per_node.push((self.home, 1));
        }
        self.frames_to(&per_node, &cmd, None);
    }

    /// `cmd` to each node, expecting that many confirmations from it.
    fn frames_to(&mut self, nodes: &[(usize, usize)], cmd: &Command, slot: Option<u16>) {
        let seq = self.entry(nodes.len(), super::Merge::Frames);
        for (part, &(n, frames)) in nodes.iter().enumerate() {
            let exp = Expected {
                seq,
                part,
                cmd: slot.map(|_| cmd.clone()),
                slot,
                what: What::Frames(frames, BytesMut::new()),
                hops: 0,
            };
            self.send(n, cmd.raw(), exp);
        }
    }
}

/// Confirmations an `UNSUBSCRIBE` gets: one per channel named, or one per
/// channel subscribed (at least one) when none is.
fn unsubscribe(set: &mut std::collections::HashSet<Bytes>, args: &[Bytes]) -> usize {
    if args.is_empty() {
        let n = set.len();
        set.clear();
        return n;
    }
    for a in args {
        set.remove(a);
    }
    args.len()
}
