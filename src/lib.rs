//! # cutover
//!
//! A transparent RESP proxy for moving a live Redis workload from one cache
//! (`old`) to another (`new`): reads go to one side, writes to both, and each
//! route flips from old to new once new is warm. See `DESIGN.md` (shared)
//! for the contract and `README.md` for operation.
//!
//! # Layout
//!
//! Lower rows never import higher ones; `scripts/module-graph.py` checks
//! there is no import loop.
//!
//! | module | owns |
//! | --- | --- |
//! | [`protocol`] | request parsing (multibulk + inline, Redis's limits and errors) and reply framing |
//! | [`commands`] | the command table generated from Redis 7, key positions, [`commands::Traits`] decided once per entry |
//! | [`routing`] | `Side`, `Phase`, `PerSide`, routes, Redis globs, the `ArcSwap`ped table, per-route counters, settling flips |
//! | [`compare`] | reply normalisation and comparison (mirrored writes, shadow reads, verify) |
//! | [`shadow`] | which reads are shadowed, their outcomes, the agreement window |
//! | [`workers`] | the session threads, one single-threaded runtime each |
//! | [`config`] | the TOML settings, environment overrides, validation errors |
//! | [`backoff`] | the one retry backoff |
//! | [`tls`], [`net`] | rustls configurations and handshake errors in words; plain-or-TLS streams |
//! | [`error`] | data-path error types |
//! | [`upstream`] | opening and setting up a connection to `old` or `new`, reconnect backoff, a cluster's slot map (`topology`) |
//! | [`mirror`] | effect translation, script bodies for EVALSHA retries, the mirror backlog bound |
//! | [`repair`] | key copies to the mirror, in-flight counters, the mirror-failure journal |
//! | [`tools`] | offline `verify` and `backfill` |
//! | [`backfill`] | the in-proxy backfill (admin API), exact against live writes |
//! | [`control`] | phase decisions (config file, admin flips), persisted state file, auto-cutover |
//! | [`metrics`] | the Prometheus text |
//! | [`auth`] | `[auth]` users |
//! | [`shared`] | what every session and task shares |
//! | [`session`] | one client: plan each command, one ordered queue per cache, reply order, mirrored writes, transactions, pub/sub, state replay |
//! | [`admin`] | the admin HTTP API: status, phase flips, metrics, backfill |
//! | [`reload`] | SIGHUP / file-change reload of the routing table |
//! | [`server`] | accept loops (TLS and plain), `maxclients`, upstream check at start, graceful shutdown |
//!
//! # Data path
//!
//! ```text
//! client bytes -> RequestParser (raw Bytes kept) -> commands::entry (spec + Traits)
//!   -> session::plan: route (one ArcSwap load), phase, answering side, mirror, how
//!   -> answering side: raw bytes onto its SideConn queue (what the reply is for
//!      travels with it); reply framed by ReplyScanner, returned to the client
//!      in order (ReplyOrder)
//!   -> mirror side (dual phases): same raw bytes; reply compared (compare),
//!      a difference copied (repair), never shown; or, for a blocking/random
//!      write or an EXEC, the effect derived from the authoritative reply
//!      (MirrorQueue; later mirrored writes wait behind it to keep order)
//! ```
//!
//! README's Development section follows one mirrored write through these
//! files.

pub mod admin;
pub mod auth;
pub mod backfill;
pub mod backoff;
pub mod cluster_face;
pub mod commands;
pub mod compare;
pub mod config;
pub mod control;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod persist;
pub mod protocol;
pub mod reload;
pub mod repair;
pub mod routing;
pub mod server;
pub mod session;
pub mod shadow;
pub mod shared;
pub mod tls;
pub mod tools;
pub mod upstream;
pub mod workers;

pub use server::Proxy;
