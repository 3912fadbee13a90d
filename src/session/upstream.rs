//! What comes back from a cache: connection events, reply frames matched
//! to what each command sent there expected ([`super::side::Expect`]),
//! pub/sub and push frames that answer no command, mirror replies, and a
//! failed connection turned into errors for the client and journal entries.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::side::{Expect, Link, Ready, SideEvent};
use super::{moving, pubsub, Check, MirrorWrite, Session, Target};
use crate::error::UpstreamError;
use crate::protocol::{text, Reply, ReplyKind};
use crate::routing::{RouteStats, Side};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn on_side_event(&mut self, side: Side, ev: SideEvent) {
        let sc = &mut self.sides[side];
        match ev {
            SideEvent::Connected(Ok(conn)) => sc.link = Link::Up(conn),
            SideEvent::Connected(Err(e)) => self.fail_side(side, e),
            SideEvent::Wrote(Ok(n)) if n > 0 => sc.wbuf.advance(n),
            SideEvent::Handed => {}
            SideEvent::SharedFailed(e) => self.fail_side(side, e),
            SideEvent::SharedGone => {
                let upstream = self.shared.upstream(side);
                match upstream.shared() {
                    Some(pool) => {
                        let depth = self.shared.limits.max_reply_depth;
                        let handle = pool.attach(depth, self.shared_resp3);
                        self.sides[side].reattach(handle);
                    }
                    None => {
                        let addr = upstream.addr().into();
                        self.fail_side(side, UpstreamError::Closed { side, addr });
                    }
                }
            }
            SideEvent::Read(Ok(n)) if n > 0 => self.on_upstream_bytes(side),
            SideEvent::Wrote(r) | SideEvent::Read(r) => {
                let upstream = self.shared.upstream(side);
                let err = match r {
                    Err(source) => upstream.io_error(source),
                    Ok(_) => UpstreamError::Closed {
                        side,
                        addr: upstream.addr().into(),
                    },
                };
                if let UpstreamError::Tls { .. } = err {
                    // With TLS 1.3 a cache refuses a client certificate
                    // after our side of the handshake is done: a connect
                    // failure all the same, for the backoff and status.
                    upstream.record_failure(&err);
                }
                self.fail_side(side, err);
            }
        }
    }

    pub(super) fn on_upstream_bytes(&mut self, side: Side) {
        loop {
            let sc = &mut self.sides[side];
            let reply = match sc.scanner.next(&mut sc.rbuf) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(source) => {
                    let addr = self.shared.upstream(side).addr().into();
                    return self.fail_side(side, UpstreamError::Protocol { side, addr, source });
                }
            };
            let Some(reply) = self.out_of_band(side, reply) else {
                continue;
            };
            let Some(expect) = self.sides[side].inflight.pop_front() else {
                let addr = self.shared.upstream(side).addr().into();
                warn!(%side, frame = %text(&reply.bytes), "reply with no command waiting for it; dropping the connection");
                return self.fail_side(side, UpstreamError::Closed { side, addr });
            };
            let was_movable = expect.movable.is_some();
            self.on_reply(side, expect, reply);
            if was_movable {
                // The blocking command behind it (pipelined) may have been
                // routed before a flip it now runs after.
                self.move_blocked();
            }
        }
    }

    /// Takes care of a frame that answers no command (a pub/sub message,
    /// a subscription confirmation, an out-of-band push); `None` when it
    /// was one.
    pub(super) fn out_of_band(&mut self, side: Side, reply: Reply) -> Option<Reply> {
        let sc = &mut self.sides[side];
        let awaiting_ack = matches!(
            sc.inflight.front(),
            Some(Expect {
                target: Target::SubAck(_) | Target::MoveAck,
                ..
            })
        );
        // A RESET that dropped the subscriptions is still due: messages
        // may come ahead of its reply.
        let head_subscribed = sc.inflight.front().is_some_and(|e| e.subscribed);
        let pubsub = self.subs.on(side) || awaiting_ack || head_subscribed;
        if reply.kind != ReplyKind::Push && !pubsub {
            return Some(reply);
        }
        match pubsub::frame_kind(&reply.bytes) {
            pubsub::FrameKind::Confirmation if awaiting_ack => {
                match sc.inflight.pop_front() {
                    Some(Expect {
                        target: Target::SubAck(id),
                        ..
                    }) => self.sub_ack(id, None),
                    // A moved subscription's: the client knows nothing of it.
                    Some(_) => self.move_acked(),
                    None => unreachable!("checked above"),
                }
                None
            }
            // A message can only follow the replies to everything sent
            // before the subscription; in RESP2 an array is a message only
            // when no other reply is due, or the one due is to a command
            // sent while subscribed (which cannot answer `message`).
            pubsub::FrameKind::Message
                if reply.kind == ReplyKind::Push
                    || sc.inflight.is_empty()
                    || awaiting_ack
                    || head_subscribed =>
            {
                if !self.client_gone {
                    self.message(reply);
                }
                None
            }
            _ if reply.kind == ReplyKind::Push => {
                // Out of band (invalidations, ...): never the reply to a
                // command, but never ahead of one this side sent before it
                // either: an invalidation overtaking the reply to an
                // earlier read would leave a client cache holding the value
                // it invalidates.
                if !self.client_gone {
                    match self.sides[side].ready.back_mut() {
                        Some(Ready::Done(last)) => {
                            let mut joined =
                                BytesMut::with_capacity(last.len() + reply.bytes.len());
                            joined.extend_from_slice(last);
                            joined.extend_from_slice(&reply.bytes);
                            *last = joined.freeze();
                        }
                        Some(Ready::Pending(pushes)) => pushes.push(reply.bytes),
                        None => self.out.extend_from_slice(&reply.bytes),
                    }
                }
                None
            }
            _ => Some(reply),
        }
    }

    /// A pub/sub message for the client. A RESP3 push goes out as it
    /// comes; in RESP2 a message is an array like any reply, so it takes
    /// its place after the replies the client is still waiting for (a
    /// `BLPOP` on the other cache pipelined before the `SUBSCRIBE`). One
    /// that arrives while a `RESET` is due is dropped: in RESP2 it would
    /// read as the reply to the client's next command.
    fn message(&mut self, reply: Reply) {
        if reply.kind == ReplyKind::Push || self.order.is_empty() {
            self.out.extend_from_slice(&reply.bytes);
        } else if self.resetting() {
            debug!("pub/sub message while RESET is due: dropped");
        } else {
            self.order.local(reply.bytes);
        }
    }

    /// The reply to the command `expect` describes arrived from `side`.
    pub(super) fn on_reply(&mut self, side: Side, mut expect: Expect, reply: Reply) {
        expect.observe(side);
        if expect.unblocking && moving::is_nil(&reply.bytes) {
            if let Some(m) = expect.movable.take() {
                return self.reissue(side, expect.target, *m, reply);
            }
        }
        if let Some(id) = expect.compare {
            self.compare_reply(id, side, &reply.bytes);
        }
        // A blocking command served: its registration stays with its
        // effect until the mirror applied it.
        let hold = expect.movable.take().and_then(|m| m.hold);
        match expect.target {
            Target::Client { state } => {
                if state {
                    self.confirm_state(side, !reply.is_error());
                }
                if expect.write.is_some() && reply.is_error() && killed(&reply.bytes) {
                    // Killed here; the mirror runs the same script and
                    // would stay busy (answering BUSY to every write).
                    self.shared.kill_script(side.other());
                }
                self.sides[side].ready.push_back(Ready::Done(reply.bytes));
            }
            Target::Effect(ticket) => {
                // An error reply is an answer too: the write changed
                // nothing, so the mirror gets nothing (not a failure).
                self.resolve_effect_holding(ticket, Some(&reply.bytes), hold);
                self.sides[side].ready.push_back(Ready::Done(reply.bytes));
            }
            Target::Mirror(w) => self.on_mirror_reply(side, &w, expect.compare.is_some(), &reply),
            Target::FallbackNew(read) if !reply.is_error() => {
                self.fallback_reply(*read, reply.bytes);
            }
            Target::FallbackNew(_) => {
                self.sides[side].ready.push_back(Ready::Done(reply.bytes));
            }
            Target::FallbackOld(f) => self.fallback_filled(*f, Some(reply.bytes)),
            Target::Shadow(_) => {}
            Target::Probe(id) => {
                if &reply.bytes[..] == b":0\r\n" {
                    self.compare_missing(id);
                }
            }
            Target::SubAck(id) => self.sub_refused(side, id, reply.bytes),
            Target::MoveAck => {
                self.move_acked();
                warn!(%side, reply = %text(&reply.bytes), "a subscription could not be moved to the cache its route publishes to");
            }
            Target::ClientId => {
                let id = reply.bytes.get(1..reply.bytes.len().saturating_sub(2));
                let id = std::str::from_utf8(id.unwrap_or_default());
                self.sides[side].client_id = id.ok().and_then(|s| s.parse().ok());
            }
            Target::Moved(slot) => self.moved_reply(*slot, reply.bytes, hold),
            Target::Keys(part) => self.keys_reply(*part, reply.bytes, None),
            Target::ScanPage(on) => self.scan_page(on, reply.bytes),
            Target::OtherState(gate) => {
                let diverged = reply.is_error();
                if diverged {
                    warn!(%side, reply = %text(&reply.bytes), "refused a connection state the answering cache accepted: this client's mirrored writes to it are journalled");
                }
                self.state_settled(side, gate, diverged);
            }
            Target::Quiet(what) if reply.bytes.starts_with(b"-NOTBUSY") => {
                debug!(%side, what, "no script to kill there");
            }
            Target::Quiet(what) if reply.is_error() => {
                warn!(%side, what, reply = %text(&reply.bytes), "upstream refused a command the proxy sent");
            }
            Target::Quiet(_) => {}
        }
    }

    /// An error instead of a (un)subscribe confirmation (an ACL refusal):
    /// it answers the whole command.
    fn sub_refused(&mut self, side: Side, id: u64, reply: Bytes) {
        let sc = &mut self.sides[side];
        while matches!(sc.inflight.front(), Some(Expect { target: Target::SubAck(i), .. }) if *i == id)
        {
            sc.inflight.pop_front();
        }
        self.sub_ack(id, Some(reply));
    }

    /// The mirror answered a mirrored write: counted, checked against the
    /// effect it should have had, its keys journalled when it failed and
    /// no comparison will copy them.
    pub(super) fn on_mirror_reply(
        &mut self,
        side: Side,
        w: &MirrorWrite,
        compared: bool,
        reply: &Reply,
    ) {
        match w.check.as_deref() {
            Some(Check::Effect(expected)) => self.check_effect(w, expected, &reply.bytes),
            Some(Check::Exec(elements)) => self.check_exec(w, elements, &reply.bytes),
            None => {}
        }
        if reply.is_error() {
            RouteStats::bump(&w.stats.mirror_errors);
            if reply.bytes.starts_with(b"-NOSCRIPT") {
                // An EVALSHA whose body never passed through the proxy.
                RouteStats::bump(&w.stats.script_unknown);
                warn!(%side, "EVALSHA of a script the mirror lacks and the proxy never saw; its keys are copied instead");
            }
            // A compared or checked write is copied if the authoritative
            // side did not fail alike.
            if !compared && w.check.is_none() {
                self.journal_lost(w);
            }
            debug!(%side, reply = %text(&reply.bytes), "mirror replied with an error");
        } else {
            RouteStats::bump(&w.stats.mirror_ok);
        }
    }

    /// Drops the connection to `side`: the client gets an error for each
    /// reply it was waiting for from it, mirrored writes count as failed.
    pub(super) fn fail_side(&mut self, side: Side, err: UpstreamError) {
        let reply = err.reply();
        let depth = self.shared.limits.max_reply_depth;
        let abandoned = matches!(err, UpstreamError::Abandoned { .. });
        let lost = self.sides[side].fail(&reply, depth, abandoned);
        let (lost_mirrors, failed_replies) = (lost.writes.len(), lost.failed_replies);
        // Failures while connecting are logged once per outage by the
        // upstream; a dropped connection is worth a warning when it cost
        // something.
        if (lost_mirrors > 0 || failed_replies > 0) && !lost.was_connecting && !abandoned {
            warn!(error = %err, lost_mirrors, failed_replies, "upstream connection dropped");
        } else {
            debug!(error = %err, lost_mirrors, failed_replies, "upstream connection dropped");
        }
        for w in &lost.writes {
            self.journal_lost(w);
        }
        // The mirror may hold what the authoritative side never confirmed
        // (a cache paused for failover, then the connection dropped):
        // copied from the authoritative side once it answers.
        for w in &lost.unknown {
            self.journal_lost(w);
        }
        for f in lost.fallbacks {
            self.fallback_filled(f, None);
        }
        for slot in lost.moved {
            self.moved_reply(slot, reply.clone(), None);
        }
        for (part, reserved) in lost.keys {
            self.keys_reply(part, reply.clone(), reserved);
        }
        self.compares.abandon();
        // Their replies will never come: they were not applied.
        let (gone, kept) = std::mem::take(&mut self.pending_state)
            .into_iter()
            .partition(|p| p.side == side);
        self.pending_state = kept;
        for p in gone {
            if let Some(gate) = p.gate {
                self.state_settled(side.other(), gate, false);
            }
        }
        self.tx.side_lost(side);
        for ticket in lost.effects {
            self.resolve_effect(ticket, None);
        }
        for id in lost.acks {
            self.sub_ack(id, Some(reply.clone()));
        }
        // Subscriptions held there are gone and the client cannot be told
        // in-band: close it, as a dead Redis would, so it resubscribes.
        if self.subs.lost(side) {
            warn!(%side, "upstream holding this client's subscriptions dropped; closing the client");
            self.close_after_replies();
        }
    }
}

/// Whether an error reply says the script it answers was killed.
fn killed(reply: &[u8]) -> bool {
    memchr::memmem::find(reply, b"killed by user").is_some()
}
