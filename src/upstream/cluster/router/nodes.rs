//! The router's node connections: which node serves a slot, opening a
//! connection to it on first use (its `CLIENT ID` asked first), a stand-in
//! for a node held down, and the task reading each one's replies. And
//! `SCAN`, which walks the nodes one after another.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::debug;

use super::{scan_cursor, Event, Expected, Merge, Node, Router, What};
use crate::error::UpstreamError;
use crate::net::ReadHalf;
use crate::protocol::{Command, ReplyScanner};
use crate::upstream::Conn;

impl Router {
    /// The node to send `slot`'s commands to, connecting to it if needed.
    pub(super) fn node_for(&mut self, slot: u16) -> usize {
        if let Some(&n) = self.moved.get(&slot).filter(|&&n| !self.nodes[n].dead) {
            return n;
        }
        let Some(p) = self.map.owner_index(slot) else {
            // Unassigned: the home node answers (CLUSTERDOWN).
            return self.home;
        };
        if let Some(n) = self.primary_node[p].filter(|&n| !self.nodes[n].dead) {
            return n;
        }
        let node = &self.map.primaries[p];
        let (addr, host) = (node.addr(self.tls()).unwrap_or_default(), node.host.clone());
        let n = self.node_at(addr, host);
        self.primary_node[p] = Some(n);
        n
    }

    /// The node at `addr`, connecting to it if there is none.
    pub(super) fn node_at(&mut self, addr: String, host: String) -> usize {
        let known = self.by_addr.get(&addr).copied();
        if let Some(n) = known.filter(|&n| !self.nodes[n].dead) {
            return n;
        }
        match self.cluster.down_reply(&addr) {
            // Held down: a stand-in that answers with its error.
            Some(_) if known.is_some_and(|n| self.nodes[n].error.is_some()) => {
                known.expect("checked")
            }
            Some(error) => {
                self.by_addr.insert(addr.clone(), self.nodes.len());
                self.nodes.push(Node {
                    addr,
                    host,
                    wr: None,
                    wbuf: BytesMut::new(),
                    inflight: VecDeque::new(),
                    reader: None,
                    dead: true,
                    error: Some(error),
                });
                self.nodes.len() - 1
            }
            None => self.add_node(addr, host, None),
        }
    }

    pub(super) fn add_node(&mut self, addr: String, host: String, conn: Option<Conn>) -> usize {
        let idx = self.nodes.len();
        let events = self.events.0.clone();
        let depth = self.depth;
        let dialer = self.cluster.dialer.clone();
        let (wr, reader) = match conn {
            Some(Conn { rd, wr, .. }) => {
                let reader = tokio::spawn(read_loop(idx, rd, events, depth, dialer, addr.clone()));
                (Some(wr), reader)
            }
            None => {
                let mut setup = self.setup.clone();
                for (_, cmd) in &self.recorded {
                    setup.push(("a connection-state command", cmd.clone()));
                }
                let (addr, host) = (addr.clone(), host.clone());
                let reader = tokio::spawn(async move {
                    let after = dialer.config.connect_timeout();
                    let open = dialer.open(&addr, Some(&host), &setup, depth);
                    let conn = match tokio::time::timeout(after, open).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            let _ = events.send(Event::Failed(idx, e));
                            return;
                        }
                        Err(_) => {
                            let side = dialer.side;
                            let e = UpstreamError::ConnectTimeout { side, addr, after };
                            let _ = events.send(Event::Failed(idx, e));
                            return;
                        }
                    };
                    if events.send(Event::Connected(idx, conn.wr)).is_ok() {
                        read_loop(idx, conn.rd, events, depth, dialer, addr).await;
                    }
                });
                (None, reader)
            }
        };
        debug!(node = %addr, "cluster node connection opened");
        self.by_addr.insert(addr.clone(), idx);
        // Its id first, so a blocked command on it can be unblocked.
        let id = Command::from_args(&[&b"CLIENT"[..], b"ID"]);
        let mut inflight = VecDeque::new();
        inflight.push_back(Expected::own(What::NodeId));
        self.nodes.push(Node {
            addr,
            host,
            wr,
            wbuf: BytesMut::from(&id.raw()[..]),
            inflight,
            reader: Some(reader),
            dead: false,
            error: None,
        });
        idx
    }

    /// `SCAN cursor ...`, walking the slots in order, one run of slots
    /// owned by one node at a time: that node is scanned whole and the keys
    /// of the run's slots kept. The cursor holds the run's first slot, a
    /// tag of the node scanning it and that node's own cursor; when the map
    /// says another node owns the run now, the run starts again there. So a
    /// key present for the whole iteration is returned although slots move
    /// meanwhile: those behind the walk were walked when they were there,
    /// those ahead of it are walked where they are (duplicates possible, as
    /// with any SCAN). A node owning several runs is scanned once per run.
    pub(super) fn scan(&mut self, cmd: Command) {
        let cursor = cmd
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok());
        let Some(cursor) = cursor else {
            // The node says what is wrong with it.
            return self.send_one(self.home, cmd, None, What::Reply);
        };
        let (from, tag, own) = scan_cursor::decode(cursor);
        let Some(lo) = (from..=scan_cursor::LAST).find(|&s| self.map.owner_index(s).is_some())
        else {
            return self.local(Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"));
        };
        // The run: the slots from `lo` the same node serves (by the map
        // and the MOVEDs seen since).
        let n = self.node_for(lo);
        let hi = (lo..=scan_cursor::LAST)
            .take_while(|&s| self.map.owner_index(s).is_some() && self.node_for(s) == n)
            .last()
            .unwrap_or(lo);
        let next = (hi + 1..=scan_cursor::LAST).find(|&s| self.map.owner_index(s).is_some());
        let node_tag = scan_cursor::tag(&self.nodes[n].addr);
        let resumed = lo == from && (own, tag) != (0, 0) && tag == node_tag;
        let own = if resumed { own } else { 0 };
        let mut args: Vec<&[u8]> = cmd.args().collect();
        let own = own.to_string();
        args[1] = own.as_bytes();
        let part = Command::from_args(&args);
        let seq = self.entry(1, Merge::One);
        let walk = scan_cursor::Walk {
            lo,
            hi,
            tag: node_tag,
            next,
        };
        self.entries.back_mut().expect("just pushed").scan = Some(walk);
        let raw = part.raw().clone();
        self.send(n, &raw, Expected::own(What::Reply).of(seq, 0));
    }
}

/// Reads one node connection's replies and hands them to the router.
async fn read_loop(
    idx: usize,
    mut rd: ReadHalf,
    events: mpsc::UnboundedSender<Event>,
    depth: usize,
    dialer: Arc<crate::upstream::Dialer>,
    addr: String,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = ReplyScanner::new(depth);
    loop {
        let err = match rd.read_buf(&mut buf).await {
            Ok(0) => UpstreamError::Closed {
                side: dialer.side,
                addr,
            },
            Err(e) => dialer.io_error(&addr, e),
            Ok(_) => {
                let mut batch = Vec::new();
                let failed = loop {
                    match scanner.next(&mut buf) {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) => break None,
                        Err(source) => break Some(source),
                    }
                };
                if !batch.is_empty() && events.send(Event::Replies(idx, batch)).is_err() {
                    return;
                }
                match failed {
                    None => continue,
                    Some(source) => UpstreamError::Protocol {
                        side: dialer.side,
                        addr,
                        source,
                    },
                }
            }
        };
        let _ = events.send(Event::Failed(idx, err));
        return;
    }
}
