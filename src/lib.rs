//! # cutover
//!
//! A transparent RESP proxy for moving a live Redis workload from one cache
//! (`old`) to another (`new`): reads go to one side, writes to both, and each
//! route flips from old to new once new is warm. See `DESIGN.md` (shared)
//! for the contract and `README.md` for operation.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the TOML settings, environment overrides, validation errors |
//! | [`protocol`] | request parsing (multibulk + inline, Redis's limits and errors) and reply framing |
//! | [`commands`] | the command table generated from Redis 7, key positions, how each command is carried |
//! | [`routing`] | routes, phases, Redis globs, the `ArcSwap`ped table and per-route counters |
//! | [`upstream`] | opening and setting up a connection to `old` or `new`, reconnect backoff |
//! | [`tls`] | rustls configurations (listener, each upstream) and handshake errors in words |
//! | [`net`] | plain-or-TLS byte streams, split into read and write halves |
//! | [`mirror`] | effect translation: what the mirror runs for blocking, random and transactional writes |
//! | [`session`] | one client: `[auth]`, route each command, order replies, mirror writes, replay state |
//! | [`server`] | accept loops (TLS and plain), `maxclients`, upstream check at start, graceful shutdown |
//! | [`reload`] | SIGHUP / file-change reload of the routing table |
//! | [`control`] | phase decisions (config file, admin flips), persisted state file |
//! | [`admin`] | the admin HTTP API: status, phase flips, metrics |
//! | [`metrics`] | latency histograms and the Prometheus text |
//! | [`repair`] | reply comparison of mirrored writes, key copies to the mirror |
//! | [`error`] | data-path error types |
//!
//! # Data path
//!
//! ```text
//! client bytes -> RequestParser (raw Bytes kept) -> lookup + classify + key positions
//!   -> route (one ArcSwap load) -> phase
//!   -> authoritative side: raw bytes appended to its write buffer; reply framed by
//!      ReplyScanner and returned to the client in order (Slot FIFO)
//!   -> mirror side (dual phases): same raw bytes; reply counted, never shown
//!      (or, for a blocking/random write or an EXEC, the effect derived from the
//!      authoritative reply; later mirrored writes wait behind it to keep order)
//! ```

pub mod admin;
pub mod auth;
pub mod backfill;
pub mod backoff;
pub mod commands;
pub mod compare;
pub mod config;
pub mod control;
pub mod error;
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

pub use server::Proxy;
