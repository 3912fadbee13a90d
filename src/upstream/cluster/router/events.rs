//! What comes back from the nodes: connections opened, replies (matched
//! to what each node was sent, in order; redirections followed), failures.
//! And what goes out: queued bytes to the nodes, answered entries to the
//! caller.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{out_of_band, redirection, Event, Expected, Router, What, BOUNCES, MAX_HOPS};
use crate::error::UpstreamError;
use crate::protocol::{Command, Reply};

/// What a `MOVED` or `ASK` inside a transaction becomes: the transaction
/// runs on one node, and Redis Cluster refuses keys of other slots in it.
const TX_CROSSSLOT: &[u8] =
    b"-CROSSSLOT Keys in request don't hash to the same slot (a transaction runs on one cluster node)\r\n";

impl Router {
    pub(super) fn on_event(&mut self, ev: Event) -> Result<(), UpstreamError> {
        match ev {
            Event::Connected(n, wr) => {
                self.nodes[n].wr = Some(wr);
                Ok(())
            }
            Event::Replies(n, replies) => {
                for r in replies {
                    self.on_reply(n, r);
                }
                Ok(())
            }
            Event::Failed(n, e) => self.node_failed(n, e),
            Event::Resume(slot) => {
                let held = self.held.remove(&slot).unwrap_or_default();
                let to = self.node_for(slot);
                for exp in held {
                    self.resend(to, exp);
                }
                Ok(())
            }
        }
    }

    /// A node connection failed: harmless when it held nothing (an idle
    /// connection the node closed), fatal for this connection otherwise.
    fn node_failed(&mut self, n: usize, e: UpstreamError) -> Result<(), UpstreamError> {
        if self.nodes[n].wr.is_none() && !self.nodes[n].dead && n != self.home {
            let addr = self.nodes[n].addr.clone();
            self.cluster.mark_down(&addr, &e, self.depth);
            self.never_connected(n, &e);
            return Ok(());
        }
        let holds_subs = self.subs.shard.values().any(|&s| s == n)
            || (n == self.home
                && !(self.subs.channels.is_empty() && self.subs.patterns.is_empty()));
        let node = &mut self.nodes[n];
        let busy = !node.inflight.is_empty() || !node.wbuf.is_empty();
        if busy || holds_subs || n == self.home || self.watch == Some(n) || self.tx == Some(Some(n))
        {
            // What it was sending has an unknown outcome: the caller's
            // connection drops, as it would with a standalone cache.
            self.cluster.refresh(self.depth);
            return Err(e);
        }
        debug!(node = %node.addr, error = %e, "idle cluster node connection closed");
        node.dead = true;
        node.wr = None;
        Ok(())
    }

    /// Node `n` could not be connected to: nothing reached it, so every
    /// command queued for it is answered with the error (it did not run),
    /// and the node stands in for its address while it is held down.
    fn never_connected(&mut self, n: usize, e: &UpstreamError) {
        let error = e.reply();
        let node = &mut self.nodes[n];
        node.dead = true;
        node.wbuf.clear();
        node.error = Some(error.clone());
        let queued = std::mem::take(&mut node.inflight);
        self.subs.shard.retain(|_, &mut s| s != n);
        for exp in queued {
            if !matches!(exp.what, What::Swallow | What::NodeId) {
                self.complete(exp.seq, exp.part, error.clone());
            }
        }
    }

    fn subscribed(&self, n: usize) -> bool {
        (n == self.home && !(self.subs.channels.is_empty() && self.subs.patterns.is_empty()))
            || self.subs.shard.values().any(|&s| s == n)
    }

    fn on_reply(&mut self, n: usize, reply: Reply) {
        let head = self.nodes[n].inflight.front().map(|e| &e.what);
        if out_of_band(&reply, head, self.subscribed(n)) {
            return self.local(reply.bytes);
        }
        let Some(mut exp) = self.nodes[n].inflight.pop_front() else {
            return;
        };
        if exp.slot.is_some() && exp.hops < MAX_HOPS {
            if let Some((ask, slot, addr)) = redirection(&reply.bytes) {
                let addr = addr.to_string();
                return self.redirect(n, exp, ask, slot, addr);
            }
        }
        let bytes = match exp.what {
            What::Queued if redirection(&reply.bytes).is_some() => Bytes::from_static(TX_CROSSSLOT),
            _ => reply.bytes,
        };
        match &mut exp.what {
            What::Swallow => {}
            What::NodeId => {
                let id = std::str::from_utf8(&bytes[1..]).ok();
                if let Some(id) = id.and_then(|t| t.trim_end().parse().ok()) {
                    self.cluster.record_id(self.vid, &self.nodes[n].addr, id);
                }
            }
            What::Frames(left, acc) => {
                acc.extend_from_slice(&bytes);
                *left = left.saturating_sub(1);
                if *left == 0 || reply.kind == crate::protocol::ReplyKind::Error {
                    let all = std::mem::take(acc).freeze();
                    self.complete(exp.seq, exp.part, all);
                } else {
                    self.nodes[n].inflight.push_front(exp);
                }
            }
            What::State(id) => {
                if reply.kind == crate::protocol::ReplyKind::Error {
                    // Not the state of this connection: not replayed.
                    let id = *id;
                    self.recorded.retain(|(i, _)| *i != id);
                }
                self.complete(exp.seq, exp.part, bytes);
            }
            What::Reply | What::Queued => self.complete(exp.seq, exp.part, bytes),
        }
    }

    /// `MOVED`: the slot is elsewhere for good; the command goes there,
    /// and so do the commands of that slot queued behind it on the old
    /// node (whose replies are dropped), so they stay in order. `ASK`: the
    /// key is being imported there; this command alone goes, after
    /// `ASKING`.
    fn redirect(&mut self, from: usize, mut exp: Expected, ask: bool, slot: u16, addr: String) {
        let host = match addr.rsplit_once(':') {
            Some(("", _)) | None => self.nodes[from].host.clone(),
            Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
        };
        let addr = match addr.split_once(':') {
            Some(("", port)) => format!("{host}:{port}"),
            _ => addr,
        };
        let to = self.node_at(addr, host);
        exp.hops += 1;
        let counters = &self.cluster.counters;
        if ask {
            counters.ask.fetch_add(1, Ordering::Relaxed);
            let asking = Command::from_args(&[b"ASKING"]);
            let swallow = Expected::own(What::Swallow);
            self.send(to, asking.raw(), swallow);
            self.resend(to, exp);
            return;
        }
        counters.moved.fetch_add(1, Ordering::Relaxed);
        self.moved.insert(slot, to);
        self.cluster.refresh(self.depth);
        if exp.hops > BOUNCES && !self.held.contains_key(&slot) {
            // Bouncing: the nodes do not agree yet. The slot's commands
            // wait a moment (in order), then go where the map says.
            let pause = std::time::Duration::from_millis(20 * u64::from(exp.hops));
            let events = self.events.0.clone();
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let _ = events.send(Event::Resume(slot));
            });
            self.held.insert(slot, Vec::new());
        }
        self.resend(to, exp);
        let behind: Vec<Expected> = self.nodes[from]
            .inflight
            .iter_mut()
            .filter(|e| e.slot == Some(slot) && !matches!(e.what, What::Swallow))
            .map(|e| Expected {
                seq: e.seq,
                part: e.part,
                cmd: e.cmd.clone(),
                slot: e.slot,
                what: std::mem::replace(&mut e.what, What::Swallow),
                hops: e.hops + 1,
            })
            .collect();
        for e in behind {
            self.resend(to, e);
        }
    }

    fn resend(&mut self, to: usize, exp: Expected) {
        let raw = exp
            .cmd
            .as_ref()
            .map(|c| c.raw().clone())
            .unwrap_or_default();
        self.send(to, &raw, exp);
    }

    /// Part `part` of entry `seq` is answered; answered entries at the
    /// head of the queue go out.
    pub(super) fn complete(&mut self, seq: u64, part: usize, reply: Bytes) {
        let Some(i) = seq.checked_sub(self.base).map(|i| i as usize) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(i) else {
            return;
        };
        if entry.parts[part].replace(reply).is_none() {
            entry.left -= 1;
        }
        while self.entries.front().is_some_and(|e| e.left == 0) {
            let e = self.entries.pop_front().expect("checked");
            self.base += 1;
            let parts: Vec<Bytes> = e.parts.into_iter().map(Option::unwrap_or_default).collect();
            let reply = match e.scan {
                Some(walk) => super::scan_cursor::reply(&parts[0], walk, self.depth),
                None => super::merge::merge(&e.merge, parts),
            };
            self.out.extend_from_slice(&reply);
        }
    }

    /// Writes what is queued for each node (a node still connecting keeps
    /// its bytes until it is up).
    pub(super) async fn flush_nodes(&mut self) -> Result<(), UpstreamError> {
        for node in self.nodes.iter_mut().filter(|n| !n.wbuf.is_empty()) {
            let Some(wr) = node.wr.as_mut() else { continue };
            if let Err(e) = wr.write_all(&node.wbuf).await {
                return Err(self.cluster.dialer.io_error(&node.addr, e));
            }
            node.wbuf.clear();
        }
        Ok(())
    }
}
