//! Settings: the TOML file (see `config/cutover.toml`), overridden by
//! `CUTOVER_SECTION__KEY` environment variables, validated into typed errors
//! that name the file and the field. Unknown keys are errors, never ignored.
//!
//! Loading is: parse the file with `toml` (for line-accurate errors), merge it
//! with the environment through the `config` crate, then [`Settings::validate`].
//! Nothing here touches the running proxy; the caller swaps what it built.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::routing::{AutoCutover, CommandsConfig, RouteConfig, UnknownPolicy};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: Listen,
    pub upstreams: Upstreams,
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub commands: CommandsConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    /// Clients must authenticate to the proxy (AUTH / HELLO AUTH) when set.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Several instances sharing one control record (`[fleet]`).
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

/// `[fleet]`: instances with the same name and upstreams form one fleet.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    pub name: String,
    /// How often each member writes its heartbeat and reads the record.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a flip waits for every live member.
    #[serde(default = "default_flip_timeout_ms")]
    pub flip_timeout_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    1000
}

fn default_flip_timeout_ms() -> u64 {
    5000
}

/// Users clients authenticate to the proxy as. Their AUTH is answered by
/// the proxy and never forwarded: upstreams use their own credentials.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub users: Vec<AuthUser>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    /// The user name clients send (`AUTH name password`); `AUTH password`
    /// alone authenticates as `default`.
    pub name: String,
    /// Hex SHA-256 of the password, as Redis ACL stores it
    /// (`echo -n "$PASSWORD" | sha256sum`).
    pub sha256: String,
}

/// The mirror-failure journal (keys whose mirrored write was lost, copied
/// once the mirror is back).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Keys kept at most; past it the route is marked "needs verify".
    #[serde(default = "default_journal_max_keys")]
    pub max_keys: usize,
    /// Where it is persisted; relative to the config file's directory.
    /// Default: `<config name>.journal.json` beside the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_keys: default_journal_max_keys(),
            file: None,
        }
    }
}

fn default_journal_max_keys() -> usize {
    100_000
}

impl JournalConfig {
    /// The journal file for a proxy started from `config_path`.
    pub fn path(&self, config_path: &Path) -> PathBuf {
        beside(config_path, self.file.as_deref(), "journal.json")
    }
}

/// `file` relative to the config file's directory, or
/// `<config name>.<suffix>` there.
fn beside(config_path: &Path, file: Option<&Path>, suffix: &str) -> PathBuf {
    let dir = config_path.parent().unwrap_or(Path::new("."));
    match file {
        Some(p) => dir.join(p),
        None => {
            let stem = config_path
                .file_stem()
                .map_or_else(|| "cutover".into(), |s| s.to_string_lossy().into_owned());
            dir.join(format!("{stem}.{suffix}"))
        }
    }
}

/// The admin listener (status, phase flips, metrics) and where flips are
/// persisted.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `host:port`; loopback by default. Any other address needs a token.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Bearer token every request must carry (`Authorization: Bearer ...`).
    /// Set it from the environment with `CUTOVER_ADMIN__TOKEN`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Where phase flips made through the admin API are persisted; relative
    /// to the config file's directory. Default: `<config name>.state.json`
    /// beside the config file.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: default_admin_address(),
            token: None,
            state_file: None,
        }
    }
}

impl AdminConfig {
    /// The state file for a proxy started from `config_path`.
    pub fn state_path(&self, config_path: &Path) -> PathBuf {
        beside(config_path, self.state_file.as_deref(), "state.json")
    }

    /// `http://address` for the CLI.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

fn default_true() -> bool {
    true
}

fn default_admin_address() -> String {
    "127.0.0.1:6401".into()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `host:port` the proxy accepts clients on.
    pub address: String,
    /// Serve TLS on `address` with this certificate chain (PEM), and the
    /// key below. Both files are read again on every config reload.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate issued by a CA in
    /// this PEM file.
    #[serde(default)]
    pub tls_client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_min_version: Option<TlsVersion>,
    /// With TLS on `address`: plain TCP on this second `host:port` too.
    #[serde(default)]
    pub plain_address: Option<String>,
    /// Answer the Redis Cluster API as a one-node cluster owning every
    /// slot, so cluster clients work unchanged (`cluster_face.rs`).
    #[serde(default)]
    pub cluster: bool,
    /// The `host:port` written into those replies (default: `address`, or
    /// the address each client connected to when `address` is a wildcard).
    #[serde(default)]
    pub announce: Option<String>,
    /// Threads client sessions run on, each with a single-threaded runtime
    /// (`workers.rs`); default: one per core.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl Listen {
    /// Session threads to start.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(crate::workers::default_count)
    }

    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }
}

/// The oldest TLS version accepted.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub old: UpstreamConfig,
    pub new: UpstreamConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of the cache.
    pub address: String,
    /// ACL user for AUTH on every connection (Redis 6+); needs `password`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Database selected on every new connection before the client's own SELECT.
    #[serde(default)]
    pub db: u32,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for a reply before the connection is declared failed;
    /// blocking commands are exempt. 0 disables.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Connect with TLS (managed caches: Azure ports 6380 and 10000,
    /// ElastiCache with in-transit encryption).
    #[serde(default)]
    pub tls: bool,
    /// CA bundle (PEM) the cache's certificate must chain to; the system
    /// roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and checked against the certificate; the host of
    /// `address` when absent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Mutual TLS: the certificate chain (PEM) and key presented to the cache.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_min_version: Option<TlsVersion>,
    /// Accept any certificate. For tests only: logged as a warning at
    /// every start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The cache is a Redis Cluster (OSS cluster API): `address` (and
    /// `seeds`) are where its topology is discovered; commands are routed
    /// by slot to the primary that owns it, `MOVED`/`ASK` followed.
    #[serde(default)]
    pub cluster: bool,
    /// Further nodes to discover a cluster's topology from when `address`
    /// does not answer.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// How client sessions reach the cache: a connection of their own
    /// (`dedicated`), or a few pipelined connections shared by the
    /// sessions without connection state (`shared`).
    #[serde(default)]
    pub connections: Connections,
    /// Shared connections to the cache (with `connections = "shared"`).
    #[serde(default = "default_shared_per_node")]
    pub shared_per_node: usize,
}

/// `upstreams.<side>.connections`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Connections {
    #[default]
    Dedicated,
    Shared,
}

fn default_shared_per_node() -> usize {
    2
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

fn default_command_timeout_ms() -> u64 {
    5000
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn command_timeout(&self) -> Option<Duration> {
        (self.command_timeout_ms > 0).then(|| Duration::from_millis(self.command_timeout_ms))
    }
}

/// A credential: deserialised from config or environment, never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest bulk argument accepted from a client (Redis's `proto-max-bulk-len`).
    #[serde(default = "default_max_bulk_len")]
    pub max_bulk_len: usize,
    /// Client connections accepted at once (Redis's `maxclients`).
    #[serde(default = "default_maxclients")]
    pub maxclients: usize,
    /// Deepest reply nesting accepted from an upstream.
    #[serde(default = "default_max_reply_depth")]
    pub max_reply_depth: usize,
    /// Shadow reads in flight at once, over all clients; beyond it reads
    /// are not shadowed.
    #[serde(default = "default_max_shadow_reads")]
    pub max_shadow_reads: usize,
    /// Bytes of mirrored writes sent or queued but not yet answered, over
    /// all clients. Past it, mirrored writes are not sent: their keys go
    /// to the repair journal. Bounds the memory a slow mirror can cost.
    #[serde(default = "default_mirror_backlog_bytes")]
    pub mirror_backlog_bytes: usize,
    /// Close a client idle this many seconds (Redis's `timeout`): nothing
    /// in flight, not subscribed. 0 (the default, as in Redis): never.
    #[serde(default)]
    pub idle_timeout_secs: u64,
}

fn default_mirror_backlog_bytes() -> usize {
    64 << 20
}

fn default_max_shadow_reads() -> usize {
    256
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: default_max_bulk_len(),
            maxclients: default_maxclients(),
            max_reply_depth: default_max_reply_depth(),
            max_shadow_reads: default_max_shadow_reads(),
            mirror_backlog_bytes: default_mirror_backlog_bytes(),
            idle_timeout_secs: 0,
        }
    }
}

fn default_max_bulk_len() -> usize {
    crate::protocol::request::DEFAULT_MAX_BULK_LEN
}

fn default_maxclients() -> usize {
    10_000
}

fn default_max_reply_depth() -> usize {
    crate::protocol::reply::DEFAULT_MAX_DEPTH
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("invalid configuration from environment (CUTOVER_*) over {file}: {message}")]
    Env { file: PathBuf, message: String },
    #[error("invalid config file {file}: {field}: {message}")]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
}

/// Environment variables that configure the CLI, not the settings tree.
const CLI_ENV: &[&str] = &["CUTOVER_CONFIG", "CUTOVER_LOG"];

impl Settings {
    /// Loads `path`, applies `CUTOVER_*` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Settings::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let file = path.to_path_buf();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        // Parsed once on its own so a mistake in the file is reported with
        // its line and column, before the environment is merged in.
        toml::from_str::<Settings>(&text).map_err(|e| ConfigError::Parse {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let overrides: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("CUTOVER_") && k.contains("__") && !CLI_ENV.contains(&k.as_str())
            })
            .collect();
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("CUTOVER")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Env {
                file: file.clone(),
                message: e.to_string(),
            })?;
        let mut settings = settings;
        settings.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        settings
            .validate()
            .map_err(|(field, message)| ConfigError::Invalid {
                file,
                field,
                message,
            })?;
        Ok(settings)
    }

    /// Makes the TLS file paths that are relative absolute from `dir`, the
    /// config file's directory (as the journal and state files are).
    fn resolve_paths(&mut self, dir: &Path) {
        let l = &mut self.listen;
        let up = [&mut self.upstreams.old, &mut self.upstreams.new];
        let files = [
            &mut l.tls_cert_file,
            &mut l.tls_key_file,
            &mut l.tls_client_ca_file,
        ]
        .into_iter()
        .chain(up.into_iter().flat_map(|u| {
            [
                &mut u.ca_file,
                &mut u.client_cert_file,
                &mut u.client_key_file,
            ]
        }));
        for f in files.flatten() {
            if f.is_relative() {
                *f = dir.join(&*f);
            }
        }
    }
}

mod validate;

#[cfg(test)]
mod tests;
