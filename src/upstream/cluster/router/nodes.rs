//! The router's node connections: which node serves a slot, opening a
//! connection to it on first use (its `CLIENT ID` asked first), a stand-in
//! for a node held down, and the task reading each one's replies. And
//! `SCAN`, which walks the nodes one after another.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::debug;

use super::{Event, Expected, Merge, Node, Router, What, SCAN_NODE_BITS};
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
            Some(Conn { rd, wr }) => {
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

    /// `SCAN cursor ...`: the cursor's low bits name the node (by its first
    /// slot), the rest is that node's own cursor.
    pub(super) fn scan(&mut self, cmd: Command) {
        let cursor = cmd
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok());
        let Some(cursor) = cursor else {
            // The node says what is wrong with it.
            return self.send_one(self.home, cmd, None, What::Reply);
        };
        let firsts = self.map.first_slots();
        let key = (cursor & ((1 << SCAN_NODE_BITS) - 1)) as u16;
        let own = cursor >> SCAN_NODE_BITS;
        let (slot, own) = match firsts.iter().position(|&(s, _)| s == key) {
            Some(_) => (key, own),
            // A first slot no more (the map changed): that node's next
            // position is lost, start it again.
            None => (key, 0),
        };
        let slot = if cursor == 0 {
            firsts.first().map_or(0, |f| f.0)
        } else {
            slot
        };
        let next = firsts.iter().map(|f| f.0).find(|&s| s > slot);
        let mut args: Vec<&[u8]> = cmd.args().collect();
        let own = own.to_string();
        args[1] = own.as_bytes();
        let part = Command::from_args(&args);
        let n = self.node_for(slot);
        let seq = self.entry(1, Merge::One);
        self.entries.back_mut().expect("just pushed").scan = Some((slot, next));
        let raw = part.raw().clone();
        let exp = Expected {
            seq,
            part: 0,
            cmd: Some(part),
            slot: Some(slot),
            what: What::Reply,
            hops: 0,
        };
        self.send(n, &raw, exp);
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
