//! Transactions through the proxy.
//!
//! A MULTI block runs on one cache: the side of its first command (or of
//! WATCH). MULTI itself is answered by the proxy and sent upstream only
//! once that side is known. Writes queued for a mirror are held and sent
//! there as their own MULTI ... EXEC once the answering side's EXEC
//! returned an array (each as its effect, given its element of that
//! array); an aborted or failed EXEC mirrors nothing. A command served by
//! the other cache is answered QUEUED and EXEC fails for the whole block
//! with CROSSROUTE (as CROSSSLOT in a Redis cluster). A flip takes effect at
//! the transaction boundary: from WATCH or MULTI to EXEC, commands are
//! routed by the table the transaction began under.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::held::{Pending, TxItem};
use super::plan::{self, display_name};
use super::refusal::Refusal;
use super::side::{Outbound, TxMark};
use super::{Session, Target};
use crate::commands::TxCmd;
use crate::mirror;
use crate::protocol::Command;
use crate::routing::{RouteStats, RouteTable, Side};

/// A client-bound reply, not a connection-state command.
const CLIENT: Target = Target::Client { state: false };

/// A command queued in the client's transaction.
fn inside() -> Outbound {
    Outbound::from(CLIENT).in_tx(TxMark::Inside)
}

/// The command that ends the client's transaction on its connection.
fn closing(target: Target) -> Outbound {
    Outbound::from(target).in_tx(TxMark::Close)
}

/// An open MULTI.
///
/// MULTI itself is answered by the proxy and sent upstream only once the
/// first queued command (or WATCH) tells which side the transaction runs on.
#[derive(Debug, Default)]
pub(super) struct Tx {
    /// The authoritative side of every command queued so far.
    pub(super) side: Option<Side>,
    /// A command was refused while queueing: EXEC aborts, as Redis does
    /// after a queueing error.
    pub(super) aborted: bool,
    /// The connection to `side` dropped: MULTI is gone there, so further
    /// commands must not be sent (they would run at once).
    pub(super) lost: bool,
    /// A command was served by the other side: EXEC fails with this error
    /// and nothing runs anywhere (Redis cluster's CROSSSLOT at EXEC).
    pub(super) crossroute: Option<Refusal>,
    /// Commands queued on `side` so far: the index of the next one in the
    /// EXEC reply.
    pub(super) queued: usize,
    /// Writes to mirror as one MULTI block once EXEC returns an array.
    pub(super) mirror: Vec<TxItem>,
    /// With a clustered cache: the hash slot of the first key queued, and
    /// whether the transaction was counted as spanning slots.
    pub(super) slot: Option<(u16, bool)>,
}

/// The connection's transaction state: the open MULTI, the side WATCH
/// went to (MULTI must follow it there), and the routing table both run
/// under.
#[derive(Debug, Default)]
pub(super) struct TxState {
    pub(super) open: Option<Tx>,
    pub(super) watch_side: Option<Side>,
    /// The table when the WATCH or MULTI began, and when: a flip takes
    /// effect for this connection at its transaction boundary, so every
    /// command up to the EXEC is routed by it. A WATCH left without MULTI
    /// for longer than [`MAX_PIN`] lets go of it.
    pinned: Option<(Arc<RouteTable>, Instant)>,
}

/// How long a WATCH with no MULTI keeps the connection on the table it
/// began under.
const MAX_PIN: Duration = Duration::from_secs(30);

impl TxState {
    /// The table commands are routed by while a transaction is under way.
    pub(super) fn table(&mut self) -> Option<Arc<RouteTable>> {
        let (table, since) = self.pinned.as_ref()?;
        if self.open.is_none() && since.elapsed() > MAX_PIN {
            self.pinned = None;
            return None;
        }
        Some(table.clone())
    }

    /// A WATCH or MULTI began under `table` (kept if one already did).
    fn pin(&mut self, table: impl FnOnce() -> Arc<RouteTable>) {
        if self.pinned.is_none() {
            self.pinned = Some((table(), Instant::now()));
        }
    }

    /// The transaction is over (EXEC, DISCARD, UNWATCH).
    fn unpin(&mut self) {
        self.pinned = None;
    }

    /// The connection to `side` dropped: a MULTI open there is gone (EXEC
    /// aborts, nothing more is sent), and so are the keys watched there.
    pub(super) fn side_lost(&mut self, side: Side) {
        if let Some(tx) = self.open.as_mut().filter(|t| t.side == Some(side)) {
            tx.lost = true;
            tx.aborted = true;
        }
        if self.watch_side == Some(side) {
            self.watch_side = None;
        }
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// A command inside MULTI. It is sent to the transaction's side (which
    /// the first command decides) and its write, if mirrored, held for the
    /// mirror's MULTI block. A command served by the other side is not sent:
    /// it is answered QUEUED and EXEC fails for the whole block, like
    /// CROSSSLOT in a Redis cluster.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_in_tx(
        &mut self,
        cmd: Command,
        authoritative: Side,
        mirror: Option<Side>,
        effect: Option<mirror::Effect>,
        stats: Arc<RouteStats>,
        arity_ok: bool,
        route_desc: String,
    ) {
        let Some(side) = self.tx_side(authoritative) else {
            return self.refuse(Refusal::TxLost {
                name: Some(display_name(&cmd)),
            });
        };
        if side != authoritative && arity_ok {
            let tx = self.tx.open.as_mut().expect("in a transaction");
            tx.crossroute.get_or_insert_with(|| Refusal::CrossRouteTx {
                name: display_name(&cmd),
                route: route_desc,
                authoritative,
                side,
            });
            return self.local(Bytes::from_static(b"+QUEUED\r\n"));
        }
        let tx = self.tx.open.as_mut().expect("in a transaction");
        let index = tx.queued;
        tx.queued += 1;
        if let Some(m) = mirror.filter(|_| side == authoritative) {
            debug_assert_ne!(m, side);
            let evalsha = crate::commands::entry(&cmd).is_some_and(|e| e.traits.evalsha);
            // As outside MULTI: EVAL with the body, when the proxy saw it.
            let eval = evalsha.then(|| self.as_eval(&cmd)).flatten();
            if eval.is_some() {
                RouteStats::bump(&stats.script_retries);
            }
            let tx = self.tx.open.as_mut().expect("in a transaction");
            tx.mirror.push(TxItem {
                index,
                cmd: eval.unwrap_or_else(|| cmd.clone()),
                effect,
                stats,
            });
        }
        self.send(side, &cmd, inside());
    }

    /// The side of the open transaction, fixed to `want` (and MULTI sent
    /// there) if no command decided it yet. `None` when its connection was
    /// lost.
    pub(super) fn tx_side(&mut self, want: Side) -> Option<Side> {
        let tx = self.tx.open.as_mut()?;
        if tx.lost {
            return None;
        }
        if let Some(side) = tx.side {
            return Some(side);
        }
        tx.side = Some(want);
        let multi = Outbound::from(Target::Quiet("MULTI")).in_tx(TxMark::Open);
        self.send(want, &Command::from_args(&[b"MULTI"]), multi);
        Some(want)
    }

    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH; `default_side`: the default
    /// route's read side, for those that name no key.
    pub(super) fn transaction(
        &mut self,
        t: TxCmd,
        cmd: &Command,
        table: &RouteTable,
        default_side: Side,
    ) {
        match t {
            TxCmd::Multi => self.multi(cmd),
            TxCmd::Exec | TxCmd::Discard => self.exec(t, cmd, default_side),
            TxCmd::Watch => self.watch(cmd, table),
            TxCmd::Unwatch => self.unwatch(cmd, default_side),
        }
    }

    pub(super) fn multi(&mut self, cmd: &Command) {
        if self.tx.open.is_some() {
            return self.refuse(Refusal::NestedMulti);
        }
        let router = &self.shared.router;
        self.tx.pin(|| router.current());
        // After WATCH the side is known: MULTI goes there now.
        match self.tx.watch_side {
            Some(side) => {
                self.tx.open = Some(Tx {
                    side: Some(side),
                    ..Tx::default()
                });
                self.send(side, cmd, Outbound::from(CLIENT).in_tx(TxMark::Open));
            }
            None => {
                self.tx.open = Some(Tx::default());
                self.local(Bytes::from_static(b"+OK\r\n"));
            }
        }
    }

    /// EXEC or DISCARD: runs (or drops) the block on its side; EXEC's
    /// reply releases the block held for the mirror.
    pub(super) fn exec(&mut self, t: TxCmd, cmd: &Command, default_side: Side) {
        self.tx.watch_side = None;
        self.tx.unpin();
        let Some(tx) = self.tx.open.take() else {
            self.send(default_side, cmd, CLIENT);
            return;
        };
        let discard = |s: &mut Self| {
            if let (Some(side), false) = (tx.side, tx.lost) {
                let quiet = Target::Quiet("DISCARD of a transaction that cannot run");
                s.send(side, &Command::from_args(&[b"DISCARD"]), closing(quiet));
            }
        };
        if t == TxCmd::Discard {
            return match tx.side.filter(|_| !tx.lost) {
                Some(side) => {
                    self.send(side, cmd, closing(CLIENT));
                }
                None => self.local(Bytes::from_static(b"+OK\r\n")),
            };
        }
        if tx.aborted {
            discard(self);
            return self.refuse(Refusal::ExecAbort);
        }
        if let Some(refusal) = tx.crossroute.clone() {
            discard(self);
            return self.refuse(refusal);
        }
        let Some(side) = tx.side else {
            // Nothing queued and nothing watched: nothing to run.
            return self.local(Bytes::from_static(b"*0\r\n"));
        };
        if tx.mirror.is_empty() {
            self.send(side, cmd, closing(CLIENT));
            return;
        }
        let keys = tx
            .mirror
            .iter()
            .flat_map(|item| super::written_keys(&item.cmd))
            .collect();
        let ticket = self.defer_mirror(side.other(), Pending::Tx(tx.mirror), Some(keys));
        self.send(side, cmd, closing(Target::Effect(ticket)));
    }

    /// WATCH goes to the side its keys are read from; MULTI follows it.
    pub(super) fn watch(&mut self, cmd: &Command, table: &RouteTable) {
        if self.tx.open.is_some() {
            return self.refuse(Refusal::WatchInMulti);
        }
        let positions: Vec<usize> = (1..cmd.len()).collect();
        let side = match plan::resolve(table, cmd, &positions) {
            Ok((_, phase)) => phase.authoritative(),
            // Not queued (WATCH inside MULTI was refused above).
            Err(refusal) => return self.local(refusal.reply()),
        };
        if self.tx.watch_side.is_some_and(|w| w != side) {
            return self.refuse(Refusal::WatchOtherCache);
        }
        self.tx.watch_side = Some(side);
        let router = &self.shared.router;
        self.tx.pin(|| router.current());
        self.send(side, cmd, CLIENT);
    }

    pub(super) fn unwatch(&mut self, cmd: &Command, default_side: Side) {
        if self.tx.open.is_some() {
            // Queued like any command.
            return match self.tx_side(default_side) {
                Some(side) => {
                    self.tx.open.as_mut().expect("in a transaction").queued += 1;
                    self.send(side, cmd, inside());
                }
                None => self.refuse(Refusal::TxLost { name: None }),
            };
        }
        let side = self.tx.watch_side.take().unwrap_or(default_side);
        self.tx.unpin();
        self.send(side, cmd, CLIENT);
    }
}
