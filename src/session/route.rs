//! Per-command routing decisions: which side answers, which side mirrors,
//! and which commands the proxy answers itself.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{state, Session, Target, Tx};
use crate::commands::{self, Kind, StateCmd, TxCmd};
use crate::config::UnknownPolicy;
use crate::protocol::Command;
use crate::routing::{RouteStats, RouteTable, Side};

/// The route a command's keys fall in, or why they cannot be carried.
enum Resolved {
    Route(usize),
    CrossRoute(String),
}

/// Finds the route of the keys at `positions` (the default route when there
/// are none). Keys in routes of different phases cannot be served by one side.
fn resolve(table: &RouteTable, cmd: &Command, positions: &[usize]) -> Resolved {
    let mut keys = positions.iter().filter_map(|&i| cmd.arg(i));
    let Some(first) = keys.next() else {
        return Resolved::Route(table.default_route());
    };
    let route = table.route_of(first);
    let phase = table.routes[route].phase;
    for key in keys {
        let other = table.route_of(key);
        if table.routes[other].phase != phase {
            let (a, b) = (&table.routes[route], &table.routes[other]);
            return Resolved::CrossRoute(format!(
                "-CROSSROUTE keys in request don't hash to routes in the same phase ('{}' is {}, '{}' is {})\r\n",
                a.name, a.phase, b.name, b.phase
            ));
        }
    }
    Resolved::Route(route)
}

fn err(msg: String) -> Bytes {
    Bytes::from(format!("-ERR {}\r\n", msg.replace(['\r', '\n'], " ")))
}

fn display_name(cmd: &Command) -> String {
    String::from_utf8_lossy(&cmd.name()[..cmd.name().len().min(128)]).to_lowercase()
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn dispatch(&mut self, cmd: Command) {
        let table = self.shared.router.load();
        let (spec, kind) = match commands::lookup(&cmd) {
            Some(spec) => (Some(spec), commands::classify(spec, &cmd)),
            None => match table.unknown {
                UnknownPolicy::Refuse => {
                    return self.local(err(format!(
                        "unknown command '{}' (not in cutover's command table from Redis {}; set [commands] unknown = \"write\" or \"read\" to forward it)",
                        display_name(&cmd),
                        commands::TABLE_REDIS_VERSION
                    )))
                }
                UnknownPolicy::Write => (None, Kind::Write),
                UnknownPolicy::Read => (None, Kind::Read),
            },
        };
        let default_side = table.routes[table.default_route()].phase.authoritative();
        match kind {
            Kind::Unsupported(reason) => {
                let name = spec.map_or_else(|| display_name(&cmd), |s| s.name.replace('|', " "));
                self.local(err(format!("cutover does not support '{name}': {reason}")))
            }
            Kind::Quit => {
                self.local(Bytes::from_static(b"+OK\r\n"));
                self.close_after_replies();
            }
            Kind::State(state) => self.send_state(state, &cmd, default_side),
            Kind::Transaction(t) => self.transaction(t, &cmd, &table, default_side),
            Kind::Read | Kind::Write => {
                let positions = spec
                    .map(|s| commands::key_positions(s, &cmd))
                    .unwrap_or_default();
                let route = match resolve(&table, &cmd, &positions) {
                    Resolved::Route(r) => &table.routes[r],
                    Resolved::CrossRoute(reply) => return self.refuse_in_tx(Bytes::from(reply)),
                };
                let blocking = spec.is_some_and(commands::is_blocking);
                let write = kind == Kind::Write;
                let authoritative = route.phase.authoritative();
                // Mirroring a command Redis will reject for its arity only
                // doubles the error.
                let mirror = route
                    .phase
                    .mirror()
                    .filter(|_| write && spec.is_none_or(|s| commands::arity_ok(s, cmd.len())));
                if let Some(tx) = &self.tx {
                    if authoritative != tx.side || mirror.is_some() {
                        return self.refuse_in_tx(err(format!(
                            "cutover: '{}' on route '{}' ({}) cannot be queued in this MULTI: transactions are carried only when all their keys are in single-side routes of the same side",
                            display_name(&cmd),
                            route.name,
                            route.phase
                        )));
                    }
                } else if blocking && mirror.is_some() {
                    return self.local(err(format!(
                        "cutover: blocking write '{}' on route '{}' in {} is not supported yet (its effect cannot be mirrored safely)",
                        display_name(&cmd),
                        route.name,
                        route.phase
                    )));
                }
                RouteStats::bump(if write {
                    &route.stats.writes
                } else {
                    &route.stats.reads
                });
                let stats = route.stats.clone();
                drop(table);
                self.send(
                    authoritative,
                    &cmd,
                    Target::Client { state: false },
                    blocking,
                );
                if let Some(m) = mirror {
                    RouteStats::bump(&stats.mirrored);
                    self.send(m, &cmd, Target::Mirror(stats), false);
                }
            }
        }
    }

    /// A command refused by the proxy: inside MULTI it also aborts the
    /// transaction, as a queueing error does in Redis.
    fn refuse_in_tx(&mut self, reply: Bytes) {
        if let Some(tx) = &mut self.tx {
            tx.aborted = true;
        }
        self.local(reply)
    }

    /// Connection-state commands go to every connection the client has open,
    /// the reply from the default route's read side; connections opened later
    /// get the state replayed.
    fn send_state(&mut self, kind: StateCmd, cmd: &Command, reply_side: Side) {
        if self.tx.is_some() {
            return self.refuse_in_tx(err(format!(
                "cutover: '{}' inside MULTI is not supported (connection state must be known when it is sent)",
                display_name(cmd)
            )));
        }
        if kind == StateCmd::Reset {
            self.tx = None;
            self.watch_side = None;
        }
        // Sent before it is recorded as pending, so a connection this opens
        // is not set up with the very command it is about to carry.
        self.send(reply_side, cmd, Target::Client { state: true }, false);
        self.pending_state
            .push_back((reply_side, kind, cmd.clone()));
        let other = match reply_side {
            Side::Old => Side::New,
            Side::New => Side::Old,
        };
        let own_credentials = self.shared.upstreams[other.index()]
            .config
            .password
            .is_some();
        if !self.sides[other.index()].is_idle() {
            if let Some(cmd) = state::for_other_side(kind, cmd, own_credentials) {
                self.send(other, &cmd, Target::Quiet("connection state"), false);
            }
        }
    }

    fn transaction(&mut self, t: TxCmd, cmd: &Command, table: &RouteTable, default_side: Side) {
        let client = || Target::Client { state: false };
        match t {
            TxCmd::Multi => {
                let side = match &self.tx {
                    Some(tx) => tx.side,
                    None => {
                        let side = self.watch_side.unwrap_or(default_side);
                        self.tx = Some(Tx {
                            side,
                            aborted: false,
                        });
                        side
                    }
                };
                self.send(side, cmd, client(), false);
            }
            TxCmd::Exec | TxCmd::Discard => {
                self.watch_side = None;
                match self.tx.take() {
                    None => self.send(default_side, cmd, client(), false),
                    Some(Tx {
                        side,
                        aborted: true,
                    }) if t == TxCmd::Exec => {
                        self.send(
                            side,
                            &Command::from_args(&[b"DISCARD"]),
                            Target::Quiet("DISCARD of an aborted MULTI"),
                            false,
                        );
                        self.local(Bytes::from_static(
                            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                        ));
                    }
                    Some(Tx { side, .. }) => self.send(side, cmd, client(), false),
                }
            }
            TxCmd::Watch => {
                if let Some(tx) = &self.tx {
                    // Redis answers "WATCH inside MULTI is not allowed".
                    return self.send(tx.side, cmd, client(), false);
                }
                let positions: Vec<usize> = (1..cmd.len()).collect();
                let side = match resolve(table, cmd, &positions) {
                    Resolved::Route(r) => table.routes[r].phase.authoritative(),
                    Resolved::CrossRoute(reply) => return self.local(Bytes::from(reply)),
                };
                if self.watch_side.is_some_and(|w| w != side) {
                    return self.local(err(
                        "cutover: WATCH of keys served by a different cache than the keys already watched".into(),
                    ));
                }
                self.watch_side = Some(side);
                self.send(side, cmd, client(), false);
            }
            TxCmd::Unwatch => {
                let side = self
                    .tx
                    .as_ref()
                    .map(|t| t.side)
                    .or(self.watch_side.take())
                    .unwrap_or(default_side);
                self.send(side, cmd, client(), false);
            }
        }
    }
}
