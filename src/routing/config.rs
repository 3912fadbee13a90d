//! The routes and command policy as configured (`[[routes]]`, `[commands]`):
//! deserialized here, validated by `config`, built into a [`RouteTable`]
//! by the [`Router`]. Owned by routing so that routing needs nothing from
//! `config` (which needs [`Phase`] from here).
//!
//! [`RouteTable`]: super::RouteTable
//! [`Router`]: super::Router

use serde::Deserialize;

use super::Phase;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Redis glob patterns; absent on the one catch-all route, which is last.
    #[serde(default)]
    pub patterns: Option<Vec<String>>,
    pub phase: Phase,
    /// In `read-new`: the share of keys (by hash slot, 0-100) served as
    /// `read-new`; the others stay `dual-write`. Absent: all of them.
    #[serde(default)]
    pub ramp_percent: Option<u8>,
    /// In a dual phase: the fraction (0.0-1.0) of reads also sent to the
    /// other cache and compared (see `src/shadow.rs` for which reads).
    #[serde(default)]
    pub shadow_reads: f64,
    /// Copy a key whose shadow read found it missing or different on the
    /// other cache (from the authoritative side, as repair does).
    #[serde(default)]
    pub shadow_repair: bool,
    /// In `read-new`: a plain read new answers with nothing is answered
    /// from old instead, and new is filled from old.
    #[serde(default)]
    pub read_fallback: bool,
    /// Automatic `dual-write -> read-new` (and back), off when absent.
    #[serde(default)]
    pub auto_cutover: Option<AutoCutover>,
}

/// When a route flips itself: to `read-new` once shadow reads agree and it
/// has been in `dual-write` long enough; back to `dual-write` when new
/// fails too many commands.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoCutover {
    /// Shadow agreement (0.0-1.0, over the last 1000 shadow reads) needed.
    pub min_agreement: f64,
    /// Shadow reads in the window needed before the agreement counts.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// Seconds in `dual-write` first (e.g. the TTL of the data, so every
    /// live key was written through the proxy since).
    pub min_dual_write_secs: u64,
    /// In `read-new`: the share of client commands failed by new (connect
    /// errors, timeouts, dropped connections) over `error_window_secs`
    /// that flips the route back to `dual-write`.
    #[serde(default = "default_max_new_error_rate")]
    pub max_new_error_rate: f64,
    #[serde(default = "default_error_window_secs")]
    pub error_window_secs: u64,
    /// Commands in the window below which the error rate is not judged.
    #[serde(default = "default_min_commands")]
    pub min_commands: u64,
}

fn default_min_samples() -> u64 {
    1000
}

fn default_max_new_error_rate() -> f64 {
    0.01
}

fn default_error_window_secs() -> u64 {
    10
}

fn default_min_commands() -> u64 {
    20
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    #[serde(default)]
    pub unknown: UnknownPolicy,
    /// Admin commands (refused by default) to forward, by name: `"CONFIG"`
    /// for every subcommand or `"CONFIG GET"` for one.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Commands to refuse although cutover could carry them, e.g.
    /// `"FLUSHALL"`.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl CommandsConfig {
    /// `allow`/`deny` entries as table names: lowercase, `container|sub`.
    pub fn normalized(list: &[String]) -> Vec<String> {
        list.iter()
            .map(|e| {
                e.split_whitespace()
                    .collect::<Vec<_>>()
                    .join("|")
                    .to_ascii_lowercase()
            })
            .collect()
    }
}

/// What to do with a command that is not in the generated table.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownPolicy {
    /// Reply with an error naming `[commands] unknown`.
    #[default]
    Refuse,
    /// Treat as a keyless write on the default route (mirrored in dual phases).
    Write,
    /// Treat as a keyless read on the default route.
    Read,
}
