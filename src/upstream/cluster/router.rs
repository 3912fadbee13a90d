//! One caller's connection to a cluster: commands in from the pipe, sent
//! to the nodes that own their slots, replies out in the order the
//! commands came.
//!
//! Every command becomes an [`Entry`] at the back of the reply queue with
//! one part per node it was sent to; each node connection keeps, in send
//! order, what each of its replies is for ([`Expected`]). An entry leaves
//! the queue (its parts merged) once it and every entry before it are
//! answered, so a fast node never overtakes a slow one. Pub/sub messages
//! and pushes join the queue as answered entries when they arrive.
//!
//! A node that fails while it holds commands, subscriptions or the home
//! role ends the whole connection: the caller sees its cache connection
//! drop (what is in flight has an unknown outcome, which it already knows
//! how to handle) and the slot map is read again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tracing::debug;

use super::merge::{self, Merge};
use super::plan::{self, Plan};
use super::Cluster;
use crate::error::UpstreamError;
use crate::net::WriteHalf;
use crate::protocol::reply::{frame_kind, FrameKind};
use crate::protocol::{Command, Reply, ReplyKind, RequestParser};
use crate::upstream::topology::Topology;
use crate::upstream::{Conn, SetupStep};

/// Redirections followed for one command before its error is the answer.
const MAX_HOPS: u8 = 16;
/// Redirections of one command after which its slot is held a moment
/// before it is sent again (nodes still disagreeing about the owner).
const BOUNCES: u8 = 2;
/// Longest command the pipe carries (the caller bounds them already).
const MAX_BULK: usize = 1 << 32;

/// What a node connection's reply is for.
#[derive(Debug)]
struct Expected {
    seq: u64,
    part: usize,
    /// Kept to resend it on a redirection (`None`: not redirected).
    cmd: Option<Command>,
    slot: Option<u16>,
    what: What,
    hops: u8,
}

impl Expected {
    /// Part `part` of entry `seq` instead.
    fn of(mut self, seq: u64, part: usize) -> Expected {
        self.seq = seq;
        self.part = part;
        self
    }

    /// The reply to a command of the router's own (`ASKING`, `MULTI`,
    /// `CLIENT ID`), part of no entry.
    fn own(what: What) -> Expected {
        Expected {
            seq: u64::MAX,
            part: 0,
            cmd: None,
            slot: None,
            what,
            hops: 0,
        }
    }
}

#[derive(Debug)]
enum What {
    Reply,
    /// A command queued in a transaction: a redirection means its keys
    /// are not on the transaction's node, refused as `-CROSSSLOT`.
    Queued,
    /// The proxy's own (`ASKING`, a transaction's `MULTI`): dropped.
    Swallow,
    /// Subscription confirmations still to come, gathered so far.
    Frames(usize, BytesMut),
    /// The node connection's `CLIENT ID`, recorded under the router's.
    NodeId,
    /// A connection-state command (its id among those recorded): dropped
    /// from the replayed setup if the node refuses it.
    State(u64),
}

/// One command's reply, waiting for its parts.
#[derive(Debug)]
struct Entry {
    parts: Vec<Option<Bytes>>,
    left: usize,
    merge: Merge,
    /// `SCAN`: the run of slots the page walks.
    scan: Option<scan_cursor::Walk>,
}

struct Node {
    addr: String,
    host: String,
    wr: Option<WriteHalf>,
    wbuf: BytesMut,
    inflight: VecDeque<Expected>,
    reader: Option<tokio::task::JoinHandle<()>>,
    dead: bool,
    /// A node held down: what every command for it is answered with.
    error: Option<Bytes>,
}

enum Event {
    Connected(usize, WriteHalf),
    Replies(usize, Vec<Reply>),
    Failed(usize, UpstreamError),
    /// A slot held after bouncing redirections goes on.
    Resume(u16),
}

#[derive(Default)]
struct Subs {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashMap<Bytes, usize>,
}

pub(super) struct Router {
    cluster: Arc<Cluster>,
    depth: usize,
    map: Arc<Topology>,
    epoch: u64,
    /// Slot owners learnt from `MOVED` since the map was read.
    moved: HashMap<u16, usize>,
    /// The node of each primary of `map`, once connected to.
    primary_node: Vec<Option<usize>>,
    nodes: Vec<Node>,
    by_addr: HashMap<String, usize>,
    /// What every new node connection runs first: the caller's setup, then
    /// the state commands sent since (by id), in order.
    setup: Vec<SetupStep>,
    recorded: Vec<(u64, Command)>,
    next_state: u64,
    home: usize,
    entries: VecDeque<Entry>,
    base: u64,
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
    /// An open transaction, and the node it runs on once known.
    tx: Option<Option<usize>>,
    /// The node holding this connection's `WATCH`es.
    watch: Option<usize>,
    subs: Subs,
    out: BytesMut,
    /// What this connection answers `CLIENT ID` with.
    vid: u64,
    /// Slots whose commands wait, in order, after redirections bounced
    /// between nodes (a slot map still settling after a migration).
    held: HashMap<u16, Vec<Expected>>,
}

impl Router {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        map: Arc<Topology>,
        setup: Vec<SetupStep>,
        depth: usize,
        home: (usize, String, String, Conn),
    ) -> Router {
        let epoch = cluster.epoch();
        let vid = cluster.new_id();
        let mut r = Router {
            cluster,
            depth,
            primary_node: vec![None; map.primaries.len()],
            map,
            epoch,
            moved: HashMap::new(),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            setup,
            recorded: Vec::new(),
            next_state: 0,
            home: 0,
            entries: VecDeque::new(),
            base: 0,
            events: mpsc::unbounded_channel(),
            tx: None,
            watch: None,
            subs: Subs::default(),
            out: BytesMut::new(),
            vid,
            held: HashMap::new(),
        };
        let (primary, addr, host, conn) = home;
        r.primary_node[primary] = Some(0);
        r.home = r.add_node(addr, host, Some(conn));
        r
    }

    pub(super) async fn run(mut self, far: DuplexStream) {
        let (mut crd, mut cwr) = tokio::io::split(far);
        let mut parser = RequestParser::new(MAX_BULK);
        let mut inbuf = BytesMut::with_capacity(16 * 1024);
        let failure = loop {
            let step = tokio::select! {
                biased;
                ev = self.events.1.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => Ok(()),
                },
                // Replies go out as the caller takes them, never blocking
                // the reading of its commands: a caller writing a long
                // pipeline before it reads must not wait on us.
                r = cwr.write(&self.out), if !self.out.is_empty() => match r {
                    Ok(n) if n > 0 => {
                        self.out.advance(n);
                        Ok(())
                    }
                    _ => break None,
                },
                r = crd.read_buf(&mut inbuf) => match r {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => self.on_input(&mut parser, &mut inbuf),
                },
            };
            if let Err(e) = step {
                break Some(e);
            }
            if let Err(e) = self.flush_nodes().await {
                break Some(e);
            }
        };
        self.cluster.forget_id(self.vid);
        if let Some(e) = failure {
            debug!(error = %e, "cluster connection dropped");
        }
        for n in &self.nodes {
            if let Some(r) = &n.reader {
                r.abort();
            }
        }
    }

    fn on_input(
        &mut self,
        parser: &mut RequestParser,
        inbuf: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        self.sync_map();
        loop {
            match parser.parse(inbuf) {
                Ok(Some(cmd)) => self.dispatch(cmd),
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.error(format!("unparsable command from the proxy: {e}"))),
            }
        }
    }

    fn error(&self, reason: String) -> UpstreamError {
        UpstreamError::Cluster {
            side: self.cluster.dialer.side,
            addr: self.cluster.dialer.config.address.clone(),
            reason,
        }
    }

    /// Takes a newer slot map when one was read; `MOVED`s seen before it
    /// are in it.
    fn sync_map(&mut self) {
        let epoch = self.cluster.epoch();
        if epoch == self.epoch {
            return;
        }
        if let Some(map) = self.cluster.topology() {
            self.primary_node = map
                .primaries
                .iter()
                .map(|p| {
                    let addr = p.addr(self.tls())?;
                    self.by_addr.get(&addr).copied()
                })
                .collect();
            self.map = map;
            self.moved.clear();
        }
        self.epoch = epoch;
    }

    fn tls(&self) -> bool {
        self.cluster.dialer.tls.is_some()
    }

    /// A new entry at the back of the reply queue; its sequence number.
    fn entry(&mut self, parts: usize, merge: Merge) -> u64 {
        self.entries.push_back(Entry {
            parts: vec![None; parts],
            left: parts,
            merge,
            scan: None,
        });
        self.base + self.entries.len() as u64 - 1
    }

    /// An entry answered by the router itself.
    fn local(&mut self, reply: Bytes) {
        let seq = self.entry(1, Merge::One);
        self.complete(seq, 0, reply);
    }

    fn send(&mut self, node: usize, raw: &Bytes, exp: Expected) {
        if let Some(held) = exp.slot.and_then(|s| self.held.get_mut(&s)) {
            // Behind the slot's held commands, in order.
            held.push(exp);
            return;
        }
        if let Some(error) = self.nodes[node].error.clone() {
            if !matches!(exp.what, What::Swallow | What::NodeId) {
                self.complete(exp.seq, exp.part, error);
            }
            return;
        }
        let n = &mut self.nodes[node];
        n.wbuf.extend_from_slice(raw);
        n.inflight.push_back(exp);
    }

    /// `cmd` to `node` as one whole entry; `slot`: follow redirections.
    fn send_one(&mut self, node: usize, cmd: Command, slot: Option<u16>, what: What) {
        let seq = self.entry(1, Merge::One);
        let raw = cmd.raw().clone();
        let exp = Expected {
            seq,
            part: 0,
            cmd: slot.map(|_| cmd),
            slot,
            what,
            hops: 0,
        };
        self.send(node, &raw, exp);
    }

    fn dispatch(&mut self, cmd: Command) {
        let plan = plan::plan(&cmd);
        if self.tx.is_some() && !matches!(plan, Plan::Tx(..) | Plan::State) {
            return self.in_tx(cmd, plan);
        }
        match plan {
            Plan::Slot(s) => {
                let n = self.node_for(s);
                self.send_one(n, cmd, Some(s), What::Reply);
            }
            Plan::Home => self.send_one(self.home, cmd, None, What::Reply),
            Plan::Split(parts, merge) => {
                self.cluster.counters.split.fetch_add(1, Ordering::Relaxed);
                let seq = self.entry(parts.len(), merge);
                for (part, (slot, c)) in parts.into_iter().enumerate() {
                    let n = self.node_for(slot);
                    let raw = c.raw().clone();
                    let exp = Expected {
                        seq,
                        part,
                        cmd: Some(c),
                        slot: Some(slot),
                        what: What::Reply,
                        hops: 0,
                    };
                    self.send(n, &raw, exp);
                }
            }
            Plan::All(merge) => {
                self.cluster.counters.fanout.fetch_add(1, Ordering::Relaxed);
                let nodes: Vec<usize> = self.primaries();
                self.send_each(&nodes, &cmd, merge, || What::Reply);
            }
            Plan::Scan => self.scan(cmd),
            Plan::State => {
                let id = self.next_state;
                self.next_state += 1;
                self.recorded.push((id, cmd.clone()));
                let nodes: Vec<usize> = (0..self.nodes.len())
                    .filter(|&n| !self.nodes[n].dead)
                    .collect();
                self.send_each(&nodes, &cmd, Merge::FirstError, || What::State(id));
            }
            Plan::Tx(t, slot) => self.tx_cmd(t, slot, cmd),
            Plan::ClientId => self.local(Bytes::from(format!(":{}\r\n", self.vid))),
            Plan::Unblock(vid) => match self.cluster.node_ids(vid) {
                Some(conns) if conns.is_empty() => self.local(Bytes::from_static(b":0\r\n")),
                Some(conns) => {
                    let mut parts = Vec::with_capacity(conns.len());
                    for (addr, id) in conns {
                        let host = addr.rsplit_once(':').map_or("", |(h, _)| h).to_string();
                        let n = self.node_at(addr, host);
                        let mut args: Vec<Vec<u8>> = cmd.args().map(<[u8]>::to_vec).collect();
                        args[2] = id.to_string().into_bytes();
                        parts.push((n, Command::from_args(&args)));
                    }
                    let seq = self.entry(parts.len(), Merge::Sum);
                    for (part, (n, c)) in parts.into_iter().enumerate() {
                        let exp = Expected {
                            seq,
                            part,
                            cmd: None,
                            slot: None,
                            what: What::Reply,
                            hops: 0,
                        };
                        self.send(n, c.raw(), exp);
                    }
                }
                None => self.send_one(self.home, cmd, None, What::Reply),
            },
            Plan::Sub(p, slot) => self.sub(p, slot, cmd),
        }
    }

    /// One entry, `cmd` sent to each of `nodes`.
    fn send_each(&mut self, nodes: &[usize], cmd: &Command, merge: Merge, what: impl Fn() -> What) {
        let seq = self.entry(nodes.len(), merge);
        for (part, &n) in nodes.iter().enumerate() {
            let exp = Expected {
                seq,
                part,
                cmd: None,
                slot: None,
                what: what(),
                hops: 0,
            };
            self.send(n, cmd.raw(), exp);
        }
    }

    /// Every primary's node, in the map's order.
    fn primaries(&mut self) -> Vec<usize> {
        let firsts = self.map.first_slots();
        firsts.into_iter().map(|(s, _)| self.node_for(s)).collect()
    }
}

mod events;
mod nodes;
mod pubsub;
mod scan_cursor;
mod tx;

/// Whether `reply` is the error a moved slot or a migrating key answers:
/// `(ask, slot, "host:port")`.
fn redirection(reply: &[u8]) -> Option<(bool, u16, &str)> {
    let (ask, rest) = if let Some(r) = reply.strip_prefix(b"-MOVED ") {
        (false, r)
    } else {
        (true, reply.strip_prefix(b"-ASK ")?)
    };
    let text = std::str::from_utf8(rest).ok()?.trim_end();
    let (slot, addr) = text.split_once(' ')?;
    Some((ask, slot.parse().ok()?, addr))
}

/// Whether a frame answers no command: a pub/sub message or a push.
fn out_of_band(reply: &Reply, head: Option<&What>, subscribed: bool) -> bool {
    let kind = frame_kind(&reply.bytes);
    match head {
        None => true,
        Some(What::Frames(..)) => {
            kind == FrameKind::Message
                || (reply.kind == ReplyKind::Push && kind != FrameKind::Confirmation)
        }
        Some(_) => reply.kind == ReplyKind::Push || (subscribed && kind == FrameKind::Message),
    }
}
