//! What every session and background task shares: the live routing table,
//! the control plane, the upstreams, the repairer and the proxy-wide
//! bounds. Built once by the server; everything in it is either immutable,
//! atomic, or swapped whole.
//!
//! The parts that background tasks run on (router, control, upstreams,
//! repairer) are `Arc`s of their own, so those tasks are given just the
//! parts they need and no module below this one depends on it.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::auth::Users;
use crate::backfill::Backfills;
use crate::config::Limits;
use crate::control::Control;
use crate::error::UpstreamError;
use crate::mirror::{Backlog, ScriptCache};
use crate::protocol::{text, Command, ReplyScanner};
use crate::repair::Repairer;
use crate::routing::{PerSide, Router, Side};
use crate::upstream::Upstream;

/// The two caches, as every session and task reaches them.
pub type Upstreams = PerSide<Upstream>;

#[derive(Debug)]
pub struct Shared {
    pub router: Arc<Router>,
    /// Phase decisions (config, admin flips), persisted.
    pub control: Arc<Control>,
    pub upstreams: Arc<Upstreams>,
    pub limits: Limits,
    /// Script bodies by SHA1, for EVALSHA retries on the mirror.
    pub scripts: ScriptCache,
    /// Copies keys whose mirrored write replies differed.
    pub repairer: Arc<Repairer>,
    /// Shadow reads in flight, over all sessions.
    pub shadow_inflight: Arc<AtomicUsize>,
    /// In-proxy backfills, by route.
    pub backfills: Backfills,
    /// The client listener's TLS configuration; swapped when a config
    /// reload reads new certificate files.
    pub listen_tls: arc_swap::ArcSwapOption<rustls::ServerConfig>,
    /// `[auth]`: the users clients must authenticate as; swapped on reload.
    pub auth: arc_swap::ArcSwapOption<Users>,
    /// Bytes of mirrored writes not yet answered, over all sessions.
    pub backlog: Arc<Backlog>,
    /// `[listen] cluster = true`: the cluster clients see.
    pub cluster_face: Option<crate::cluster_face::ClusterFace>,
    /// The upstream checks at start are done (`GET /ready`).
    pub checked: std::sync::atomic::AtomicBool,
    /// `[fleet]`: this instance as a member of its fleet.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Shared {
    pub fn upstream(&self, side: Side) -> &Upstream {
        &self.upstreams[side]
    }

    /// The caches some route reads from or answers writes with (a mirror
    /// is not one: clients do not wait for it).
    pub fn serving_sides(&self) -> Vec<Side> {
        let table = self.router.current();
        Side::BOTH
            .into_iter()
            .filter(|&side| {
                table.routes.iter().any(|r| {
                    r.phase.authoritative() == side || r.keyless_phase().authoritative() == side
                })
            })
            .collect()
    }

    /// The parts the fleet works on.
    pub fn fleet_parts(&self) -> crate::fleet::Parts {
        crate::fleet::Parts {
            control: self.control.clone(),
            router: self.router.clone(),
            repairer: self.repairer.clone(),
        }
    }

    /// Either cache is a Redis Cluster.
    pub fn any_cluster(&self) -> bool {
        self.upstreams.iter().any(|u| u.cluster().is_some())
    }

    /// Kills the script running on `side` (a mirrored one whose
    /// authoritative run was killed), over a connection of its own: the
    /// session's is the one busy running it. Redis takes the kill once the
    /// script has run past its busy threshold, so this waits up to
    /// [`ASIDE_WAIT`] for the answer.
    pub fn kill_script(&self, side: Side) {
        let cmds = vec![
            Command::from_args(&[&b"SCRIPT"[..], b"KILL"]),
            Command::from_args(&[&b"FUNCTION"[..], b"KILL"]),
        ];
        self.aside(
            side,
            cmds,
            "killed a mirrored script whose authoritative run was killed",
            |_| true,
        );
    }

    /// Unblocks connection `id` on `side` (blocked in a command a flip
    /// moves to the other cache), as if its command timed out. It may not
    /// have blocked yet (its command still on the wire): tried again a few
    /// times while the cache answers that it unblocked nothing.
    pub fn unblock(&self, side: Side, id: i64) {
        let id = id.to_string();
        let cmd = Command::from_args(&[&b"CLIENT"[..], b"UNBLOCK", id.as_bytes(), b"TIMEOUT"]);
        self.aside(side, vec![cmd], "unblocked a command to move it", |r| {
            r != b":0\r\n"
        });
    }

    /// Sends `cmds` to `side` over a connection of its own, in the
    /// background, until `done` says the (last) reply is what was wanted
    /// (at most [`ASIDE_TRIES`] times, [`ASIDE_GAP`] apart); logs the outcome.
    fn aside(&self, side: Side, cmds: Vec<Command>, what: &'static str, done: fn(&[u8]) -> bool) {
        let upstreams = self.upstreams.clone();
        let depth = self.limits.max_reply_depth;
        tokio::spawn(async move {
            let upstream = &upstreams[side];
            let exchange = async {
                let mut conn = upstream.connect(upstream.base_setup(), depth).await?;
                let mut out = Vec::new();
                for c in &cmds {
                    out.extend_from_slice(c.raw());
                }
                let (mut scanner, mut buf) = (ReplyScanner::new(depth), BytesMut::new());
                let mut replies = Vec::new();
                for _ in 0..ASIDE_TRIES {
                    conn.wr
                        .write_all(&out)
                        .await
                        .map_err(|e| upstream.io_error(e))?;
                    replies.clear();
                    while replies.len() < cmds.len() {
                        match scanner.next(&mut buf) {
                            Ok(Some(r)) => replies.push(r.bytes),
                            Ok(None) => {
                                let n = conn.rd.read_buf(&mut buf).await;
                                if n.map_err(|e| upstream.io_error(e))? == 0 {
                                    return Ok(replies);
                                }
                            }
                            Err(_) => return Ok(replies),
                        }
                    }
                    if replies.last().is_some_and(|r| done(r)) {
                        break;
                    }
                    tokio::time::sleep(ASIDE_GAP).await;
                }
                Ok::<_, UpstreamError>(replies)
            };
            match tokio::time::timeout(ASIDE_WAIT, exchange).await {
                Ok(Ok(replies)) => {
                    let replies: Vec<String> = replies.iter().map(|r| text(r)).collect();
                    info!(%side, ?replies, "{what}");
                }
                Ok(Err(e)) => warn!(%side, error = %e, "could not reach the cache: {what}"),
                Err(_) => warn!(%side, "no answer within {ASIDE_WAIT:?}: {what}"),
            }
        });
    }
}

/// How long a command sent aside waits for the cache's answer.
pub const ASIDE_WAIT: Duration = Duration::from_secs(30);
/// How often it is tried while the answer is not the one wanted.
const ASIDE_TRIES: usize = 10;
const ASIDE_GAP: Duration = Duration::from_millis(50);
