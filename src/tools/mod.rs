//! Offline tools run by the CLI against the caches a config names:
//! `cutover verify` (compare a route's keys on old and new) and
//! `cutover backfill` (copy a route's keys from old to new).

pub mod backfill;
pub mod typed;
pub mod verify;

use bytes::Bytes;

use crate::config::Settings;
use crate::error::UpstreamError;
pub(crate) use crate::protocol::text;
use crate::protocol::{value, Command, Value};
use crate::routing::{PerSide, RouteTable, Router, Side};
use crate::upstream::client::Client;
use crate::upstream::Upstream;

/// The two caches of a config, and a connection to each.
pub struct Caches {
    pub upstreams: PerSide<Upstream>,
    pub clients: PerSide<Client>,
    pub depth: usize,
    pub table: std::sync::Arc<RouteTable>,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("no route named {0:?} in the config")]
    NoSuchRoute(String),
    #[error("{0} answered {1}")]
    Refused(&'static str, String),
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
    #[error("cursor file {path}: {message}")]
    Cursor { path: String, message: String },
}

impl Caches {
    /// Fails when an upstream's TLS material cannot be loaded.
    pub fn new(settings: &Settings) -> Result<Caches, crate::tls::TlsError> {
        let router = Router::new(&settings.routes, &settings.commands);
        Ok(Caches {
            upstreams: PerSide::new(
                Upstream::new(Side::Old, settings.upstreams.old.clone())?,
                Upstream::new(Side::New, settings.upstreams.new.clone())?,
            ),
            clients: PerSide::from_fn(|_| Client::new()),
            depth: settings.limits.max_reply_depth,
            table: router.current(),
        })
    }

    /// The caches a serving proxy fronts, with its route table (for the
    /// in-proxy backfill): the same addresses and settings, connections
    /// and reconnect backoff of their own.
    pub fn serving(
        upstreams: &PerSide<Upstream>,
        depth: usize,
        table: std::sync::Arc<RouteTable>,
    ) -> Caches {
        Caches {
            upstreams: PerSide::from_fn(|s| upstreams[s].fresh()),
            clients: PerSide::from_fn(|_| Client::new()),
            depth,
            table,
        }
    }

    /// One pipelined call on `side`, replies decoded.
    pub async fn call(&mut self, side: Side, cmds: &[Command]) -> Result<Vec<Value>, ToolError> {
        let raw = self.clients[side]
            .call(&self.upstreams[side], self.depth, cmds)
            .await?;
        raw.iter()
            .map(|r| value::decode(r, self.depth).ok_or(ToolError::Unexpected("a command")))
            .collect()
    }

    /// The routes to work on: the one named, or all.
    pub fn routes(&self, name: Option<&str>) -> Result<Vec<usize>, ToolError> {
        match name {
            Some(n) => self
                .table
                .routes
                .iter()
                .position(|r| &*r.name == n)
                .map(|i| vec![i])
                .ok_or_else(|| ToolError::NoSuchRoute(n.to_string())),
            None => Ok((0..self.table.routes.len()).collect()),
        }
    }
}

/// Walks the keys of one route on one cache with SCAN: `MATCH` per
/// pattern (everything for the default route), keeping the keys the table
/// routes to this route (an earlier route's pattern wins).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyScan {
    pub route: usize,
    /// Index into the route's patterns (0 for the default route).
    pub pattern: usize,
    pub cursor: u64,
    pub done: bool,
}

impl KeyScan {
    pub fn new(route: usize) -> KeyScan {
        KeyScan {
            route,
            pattern: 0,
            cursor: 0,
            done: false,
        }
    }

    /// The next batch (possibly empty; `None` at the end).
    pub async fn next(
        &mut self,
        caches: &mut Caches,
        side: Side,
        count: usize,
        type_filter: Option<&str>,
    ) -> Result<Option<Vec<Bytes>>, ToolError> {
        if self.done {
            return Ok(None);
        }
        let table = caches.table.clone();
        let route = &table.routes[self.route];
        let pattern = route.patterns.get(self.pattern).map(|p| p.source());
        let mut args: Vec<Vec<u8>> = vec![b"SCAN".to_vec(), self.cursor.to_string().into_bytes()];
        if let Some(p) = &pattern {
            args.push(b"MATCH".to_vec());
            args.push(p.clone());
        }
        args.push(b"COUNT".to_vec());
        args.push(count.to_string().into_bytes());
        if let Some(t) = type_filter {
            args.push(b"TYPE".to_vec());
            args.push(t.as_bytes().to_vec());
        }
        let reply = caches.call(side, &[Command::from_args(&args)]).await?;
        let Some([cursor, keys]) = reply[0].as_array() else {
            return Err(ToolError::Refused("SCAN", format!("{:?}", reply[0])));
        };
        let cursor = cursor
            .as_bytes()
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok())
            .ok_or(ToolError::Unexpected("SCAN"))?;
        let keys: Vec<Bytes> = keys
            .as_array()
            .ok_or(ToolError::Unexpected("SCAN"))?
            .iter()
            .filter_map(|k| k.as_bytes().cloned())
            // The fleet's control record is no data to copy or compare.
            .filter(|k| !k.starts_with(crate::fleet::RESERVED_PREFIX))
            .filter(|k| table.route_of(k) == self.route)
            .collect();
        self.cursor = cursor;
        if cursor == 0 {
            self.pattern += 1;
            if self.pattern >= route.patterns.len().max(1) {
                self.done = true;
            }
        }
        Ok(Some(keys))
    }
}
