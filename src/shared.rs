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
}

impl Shared {
    pub fn upstream(&self, side: Side) -> &Upstream {
        &self.upstreams[side]
    }

    /// Kills the script running on `side` (a mirrored one whose
    /// authoritative run was killed), over a connection of its own: the
    /// session's is the one busy running it. Redis takes the kill once the
    /// script has run past its busy threshold, so this waits up to
    /// [`KILL_WAIT`] for the answer.
    pub fn kill_script(&self, side: Side) {
        let upstreams = self.upstreams.clone();
        let depth = self.limits.max_reply_depth;
        tokio::spawn(async move {
            let upstream = &upstreams[side];
            let kill = async {
                let mut conn = upstream.connect(upstream.base_setup(), depth).await?;
                let mut out = Vec::new();
                out.extend_from_slice(Command::from_args(&[&b"SCRIPT"[..], b"KILL"]).raw());
                out.extend_from_slice(Command::from_args(&[&b"FUNCTION"[..], b"KILL"]).raw());
                conn.wr
                    .write_all(&out)
                    .await
                    .map_err(|e| upstream.io_error(e))?;
                let (mut scanner, mut buf) = (ReplyScanner::new(depth), BytesMut::new());
                let mut replies = Vec::new();
                while replies.len() < 2 {
                    match scanner.next(&mut buf) {
                        Ok(Some(r)) => replies.push(text(&r.bytes)),
                        Ok(None) => {
                            let n = conn.rd.read_buf(&mut buf).await;
                            if n.map_err(|e| upstream.io_error(e))? == 0 {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
                Ok::<_, UpstreamError>(replies)
            };
            match tokio::time::timeout(KILL_WAIT, kill).await {
                Ok(Ok(replies)) => {
                    info!(%side, ?replies, "killed a mirrored script whose authoritative run was killed")
                }
                Ok(Err(e)) => warn!(%side, error = %e, "could not kill a mirrored script"),
                Err(_) => warn!(%side, "no answer to SCRIPT KILL within {KILL_WAIT:?}"),
            }
        });
    }
}

/// How long [`Shared::kill_script`] waits for the cache's answer.
pub const KILL_WAIT: Duration = Duration::from_secs(30);
