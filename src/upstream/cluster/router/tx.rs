//! Transactions in a cluster: a `MULTI` runs on one node, the one owning
//! the slot of its first keyed command (or of the keys `WATCH`ed before
//! it). Until that command comes, `MULTI` is answered by the router; the
//! node gets its own `MULTI` just before it. Keys of other slots inside
//! are refused (`-CROSSSLOT`) and the `EXEC` aborts, as Redis Cluster
//! does.

use bytes::Bytes;

use super::super::plan::Plan;
use super::{Expected, Router, What};
use crate::commands::TxCmd;
use crate::protocol::Command;

impl Router {
    pub(super) fn tx_cmd(&mut self, t: TxCmd, slot: Option<u16>, cmd: Command) {
        match t {
            TxCmd::Multi => match self.tx {
                Some(Some(n)) => self.send_one(n, cmd, None, What::Reply),
                Some(None) => self.local(Bytes::from_static(
                    b"-ERR MULTI calls can not be nested\r\n",
                )),
                None => {
                    self.tx = Some(self.watch);
                    match self.watch {
                        Some(n) => self.send_one(n, cmd, None, What::Reply),
                        None => self.local(Bytes::from_static(b"+OK\r\n")),
                    }
                }
            },
            TxCmd::Exec | TxCmd::Discard => match self.tx.take() {
                Some(Some(n)) => {
                    self.watch = None;
                    self.send_one(n, cmd, None, What::Reply);
                }
                Some(None) => {
                    self.local(Bytes::from_static(match t {
                        TxCmd::Exec => b"*0\r\n",
                        _ => b"+OK\r\n",
                    }));
                }
                None => {
                    let n = self.watch.take().unwrap_or(self.home);
                    self.send_one(n, cmd, None, What::Reply);
                }
            },
            TxCmd::Watch => {
                let n = slot.map_or(self.home, |s| self.node_for(s));
                match self.watch {
                    Some(w) if w != n => self.local(Bytes::from_static(
                        b"-CROSSSLOT Keys in request don't hash to the same slot (WATCHed keys must be on one cluster node)\r\n",
                    )),
                    _ => {
                        self.watch = Some(n);
                        self.send_one(n, cmd, None, What::Reply);
                    }
                }
            }
            TxCmd::Unwatch => {
                let n = self.watch.take().unwrap_or(self.home);
                self.send_one(n, cmd, None, What::Reply);
            }
        }
    }

    /// A command inside `MULTI`: queued on the transaction's node, which
    /// the first keyed command picks (its `MULTI` sent there first).
    pub(super) fn in_tx(&mut self, cmd: Command, plan: Plan) {
        let node = match self.tx {
            Some(Some(n)) => n,
            _ => {
                let n = match plan {
                    Plan::Slot(s) => self.node_for(s),
                    Plan::Split(parts, _) => self.node_for(parts[0].0),
                    _ => self.home,
                };
                let multi = Command::from_args(&[b"MULTI"]);
                let raw = multi.raw().clone();
                let exp = Expected::own(What::Swallow);
                self.send(n, &raw, exp);
                self.tx = Some(Some(n));
                n
            }
        };
        self.send_one(node, cmd, None, What::Queued);
    }
}
