//! The session's one timer: command deadlines at the head of each side's
//! queue, the drain deadline of a closing session, and the idle timeout;
//! and the client backpressure those deadlines must not blame on a cache.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Session, MAX_OUTPUT_BYTES};
use crate::error::UpstreamError;
use crate::routing::Side;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Arms the one timer for the earliest of: the command deadline at the
    /// head of either side, and the drain deadline. It may fire early (the
    /// head moved on); `on_timer` then re-arms. Left armed while idle, so a
    /// request/reply loop does not touch the timer wheel per command.
    pub(super) fn arm_timer(&mut self) {
        let heads = self
            .sides
            .iter()
            .filter_map(|s| s.inflight.front().and_then(|e| e.deadline));
        let next = heads
            .chain(self.drain_deadline)
            .chain(self.stalled.as_ref().map(|s| s.until))
            .chain(self.idle_deadline())
            .min();
        match (next, self.timer_at) {
            (None, _) => {}
            (Some(d), Some(at)) if at <= d => {}
            (Some(d), _) => {
                self.timer.as_mut().reset(d.into());
                self.timer_at = Some(d);
            }
        }
    }

    /// The client is not taking its replies: the proxy stops reading from
    /// it and, for replies bound to it, from its upstream connections (the
    /// caches hold them, as Redis holds a slow client's output).
    pub(super) fn backpressured(&self) -> bool {
        !self.client_gone && self.out.len() >= MAX_OUTPUT_BYTES
    }

    /// When an idle client is closed: with `limits.idle_timeout_secs` set,
    /// while nothing is in flight (a blocked command is not idle) and it is
    /// not subscribed (Redis exempts both too).
    pub(super) fn idle_deadline(&self) -> Option<Instant> {
        let secs = self.shared.limits.idle_timeout_secs;
        let idle = secs > 0 && self.reading && self.order.is_empty() && self.subs.is_empty();
        idle.then(|| self.last_heard + Duration::from_secs(secs))
    }

    pub(super) fn on_timer(&mut self) {
        self.timer_at = None;
        let now = Instant::now();
        if self.stalled.as_ref().is_some_and(|s| s.until <= now) {
            self.resume_stalled();
        }
        if self.idle_deadline().is_some_and(|d| d <= now) {
            debug!(
                idle_secs = self.shared.limits.idle_timeout_secs,
                "closing an idle client"
            );
            self.close_after_replies();
            return;
        }
        for side in Side::BOTH {
            let overdue = self.sides[side]
                .inflight
                .front()
                .and_then(|e| e.deadline)
                .is_some_and(|d| d <= now);
            if overdue && self.backpressured() {
                // Not read because the client does not read: not the
                // cache's fault. Checked again a timeout later.
                let up = self.shared.upstream(side);
                let after = up.config.command_timeout().unwrap_or_default();
                for e in self.sides[side].inflight.iter_mut() {
                    if e.deadline.is_some_and(|d| d <= now) {
                        e.deadline = Some(now + after);
                    }
                }
                continue;
            }
            if overdue {
                let up = self.shared.upstream(side);
                let after = up.config.command_timeout().unwrap_or_default();
                self.fail_side(
                    side,
                    UpstreamError::Timeout {
                        side,
                        addr: up.addr().into(),
                        after,
                    },
                );
            }
        }
    }
}
