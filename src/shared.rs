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

use crate::auth::Users;
use crate::backfill::Backfills;
use crate::config::Limits;
use crate::control::Control;
use crate::mirror::{Backlog, ScriptCache};
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
}
