//! A clustered upstream (`cluster = true`): the cache is a Redis Cluster
//! (self-hosted, Azure Managed Redis with the OSS policy, Azure Cache for
//! Redis Premium with shards, ElastiCache cluster mode, ...).
//!
//! Everything above this module (sessions, repair, backfill, verify)
//! keeps talking to "the cache" over one ordered connection: for a
//! cluster, [`Cluster::connect`] hands out the near end of an in-process
//! pipe whose far end is a [`router`] of that connection's own. The router
//! sends each command to the primary owning its keys' slot over node
//! connections it opens lazily (the upstream's TLS, names and credentials
//! on each, plus the connection state the caller set up), follows `MOVED`
//! and `ASK` without the caller seeing them, splits the multi-key commands
//! a standalone Redis takes with keys anywhere, asks every primary what
//! concerns the whole keyspace, and answers in the order it was asked.
//!
//! The slot map is shared by every connection of the upstream: read at the
//! first connection, again every [`REFRESH_EVERY`], after a `MOVED` and
//! when a node fails, always in the background: a router routes by the
//! map it has, patched by the `MOVED`s it saw, until a new one is in.

mod merge;
mod plan;
mod router;

pub use plan::splits;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tracing::{debug, info, warn};

use super::topology::{discover, Topology};
use super::{Conn, Dialer, SetupStep};
use crate::error::UpstreamError;

/// How often the slot map is read again with nothing prompting it.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long a node that refused a connection is held down: commands for
/// its slots are answered with its error meanwhile, instead of every
/// connection trying it again.
const DOWN_HOLD: Duration = Duration::from_millis(500);
/// Bytes the pipe between a caller and its router holds each way.
const PIPE_BYTES: usize = 256 * 1024;

/// A clustered upstream's routing counters, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct ClusterSnapshot {
    pub side: Option<crate::routing::Side>,
    pub primaries: u64,
    pub moved: u64,
    pub ask: u64,
    pub split: u64,
    pub fanout: u64,
    pub refreshes: u64,
    pub refresh_failures: u64,
}

/// One clustered upstream: its slot map and counters.
#[derive(Debug)]
pub struct Cluster {
    dialer: Arc<Dialer>,
    map: ArcSwapOption<Topology>,
    /// One more each time a new map is in.
    epoch: AtomicU64,
    refreshing: AtomicBool,
    ticking: AtomicBool,
    pub counters: Counters,
    /// Each router's node connections by the id it answers `CLIENT ID`
    /// with: `CLIENT UNBLOCK` of that id, from any connection, reaches
    /// the node connection where its command blocks.
    ids: std::sync::Mutex<std::collections::HashMap<u64, Vec<(String, i64)>>>,
    next_id: AtomicU64,
    /// Nodes that failed, until when, and the error commands get meanwhile.
    down: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, bytes::Bytes)>>,
}

/// What the routers of one clustered upstream did, for metrics and status.
#[derive(Debug, Default)]
pub struct Counters {
    /// `MOVED` replies followed (the slot had moved: map updated, resent).
    pub moved: AtomicU64,
    /// `ASK` replies followed (`ASKING`, then resent to the importing node).
    pub ask: AtomicU64,
    /// Multi-key commands split by slot and their replies merged.
    pub split: AtomicU64,
    /// Commands asked of every primary (`SCAN`, `KEYS`, `DBSIZE`, ...).
    pub fanout: AtomicU64,
    /// Slot maps read.
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

impl Cluster {
    pub fn new(dialer: Arc<Dialer>) -> Cluster {
        Cluster {
            dialer,
            map: ArcSwapOption::empty(),
            epoch: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            ticking: AtomicBool::new(false),
            counters: Counters::default(),
            ids: std::sync::Mutex::default(),
            next_id: AtomicU64::new(1),
            down: std::sync::Mutex::default(),
        }
    }

    /// The slot map, if one was read.
    pub fn topology(&self) -> Option<Arc<Topology>> {
        self.map.load_full()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Reads the map now (the first connection waits for it).
    async fn read_map(&self, depth: usize) -> Result<Arc<Topology>, UpstreamError> {
        let result = discover(&self.dialer, depth).await;
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(t) => {
                let t = Arc::new(t);
                let changed = self.map.load().as_deref() != Some(&*t);
                self.map.store(Some(t.clone()));
                if changed {
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    info!(side = %self.dialer.side, primaries = t.primaries.len(), "cluster slot map read");
                }
                Ok(t)
            }
            Err(e) => {
                self.counters
                    .refresh_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(UpstreamError::Cluster {
                    side: self.dialer.side,
                    addr: self.dialer.config.address.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Node `addr` failed with `err`: held down for [`DOWN_HOLD`] (logged
    /// once per outage), and the slot map read again.
    fn mark_down(self: &Arc<Self>, addr: &str, err: &UpstreamError, depth: usize) {
        let until = std::time::Instant::now() + DOWN_HOLD;
        let newly = {
            let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            down.insert(addr.to_string(), (until, err.reply()))
                .is_none()
        };
        if newly {
            warn!(node = addr, error = %err, "cluster node failed; reading the slot map again");
        } else {
            debug!(node = addr, error = %err, "cluster node still failing");
        }
        self.refresh(depth);
    }

    /// The error for commands to node `addr` while it is held down.
    fn down_reply(&self, addr: &str) -> Option<bytes::Bytes> {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match down.get(addr) {
            Some((until, reply)) if *until > std::time::Instant::now() => Some(reply.clone()),
            Some(_) => {
                // Held long enough: tried again (and logged again if it fails).
                down.remove(addr);
                None
            }
            None => None,
        }
    }

    /// A new router's `CLIENT ID`.
    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Node connection `(addr, id)` of the router with `CLIENT ID` `vid`.
    fn record_id(&self, vid: u64, addr: &str, id: i64) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.entry(vid).or_default().push((addr.to_string(), id));
    }

    fn forget_id(&self, vid: u64) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.remove(&vid);
    }

    /// The node connections of the router with `CLIENT ID` `vid`.
    fn node_ids(&self, vid: u64) -> Option<Vec<(String, i64)>> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.get(&vid).cloned()
    }

    /// Reads the map again in the background, unless a read is running.
    pub fn refresh(self: &Arc<Self>, depth: usize) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.read_map(depth).await {
                warn!(error = %e, "cluster slot map refresh failed; routing by the last one");
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Starts the periodic refresh (once; it ends with the upstream).
    fn tick(self: &Arc<Self>, depth: usize) {
        if self.ticking.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Cluster> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                debug!(side = %me.dialer.side, "periodic cluster slot map refresh");
                me.refresh(depth);
            }
        });
    }

    /// The connection a router starts with: to the first primary that
    /// takes it (one held down is tried last), with `setup` checked. A
    /// refused setup (credentials) fails at once: every node would refuse.
    async fn open_home(
        self: &Arc<Self>,
        map: &Topology,
        setup: &[SetupStep],
        depth: usize,
    ) -> Result<(usize, String, String, Conn), UpstreamError> {
        let tls = self.dialer.tls.is_some();
        let mut order: Vec<usize> = (0..map.primaries.len()).collect();
        order.sort_by_key(|&i| {
            let addr = map.primaries[i].addr(tls).unwrap_or_default();
            self.down_reply(&addr).is_some()
        });
        let mut last = UpstreamError::Cluster {
            side: self.dialer.side,
            addr: self.dialer.config.address.clone(),
            reason: "no primary owns a slot".into(),
        };
        for i in order {
            let node = &map.primaries[i];
            let addr = node.addr(tls).unwrap_or_default();
            match self
                .dialer
                .open(&addr, Some(&node.host), setup, depth)
                .await
            {
                Ok(conn) => return Ok((i, addr, node.host.clone(), conn)),
                Err(e @ UpstreamError::Handshake { .. }) => return Err(e),
                Err(e) => {
                    self.mark_down(&addr, &e, depth);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// A connection to the cluster as if it were one cache: the near end
    /// of a pipe to a router of its own, set up with `setup` on every node
    /// it reaches. The first node is connected (and `setup` checked) before
    /// this returns, so a refused credential fails here, as for a
    /// standalone cache.
    pub async fn connect(
        self: &Arc<Self>,
        setup: Vec<SetupStep>,
        depth: usize,
    ) -> Result<Conn, UpstreamError> {
        let map = match self.topology() {
            Some(t) => t,
            None => self.read_map(depth).await?,
        };
        self.tick(depth);
        let (home, addr, host, first) = self.open_home(&map, &setup, depth).await?;
        let (near, far) = tokio::io::duplex(PIPE_BYTES);
        let (rd, wr) = tokio::io::split(near);
        let router =
            router::Router::new(self.clone(), map, setup, depth, (home, addr, host, first));
        tokio::spawn(router.run(far));
        Ok(Conn {
            rd: crate::net::ReadHalf::Mem(rd),
            wr: crate::net::WriteHalf::Mem(wr),
            open: None,
        })
    }
}
