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
}

impl Listen {
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

    /// Checks what serde cannot: the route list's shape and the addresses.
    /// Errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_address("listen.address", &self.listen.address)?;
        self.validate_tls()?;
        if let Some(auth) = &self.auth {
            validate_auth(auth)?;
        }
        check_address("upstreams.old.address", &self.upstreams.old.address)?;
        check_address("upstreams.new.address", &self.upstreams.new.address)?;
        for (side, up) in [("old", &self.upstreams.old), ("new", &self.upstreams.new)] {
            if up.username.is_some() && up.password.is_none() {
                return Err((
                    format!("upstreams.{side}.username"),
                    "a username needs a password".into(),
                ));
            }
            if up.connect_timeout_ms == 0 {
                return Err((
                    format!("upstreams.{side}.connect_timeout_ms"),
                    "must be greater than 0".into(),
                ));
            }
        }
        for (key, list) in [
            ("allow", &self.commands.allow),
            ("deny", &self.commands.deny),
        ] {
            for (i, name) in CommandsConfig::normalized(list).iter().enumerate() {
                if !crate::commands::is_known_name(name) {
                    return Err((
                        format!("commands.{key}[{i}]"),
                        format!("'{}' is not a command cutover knows", list[i]),
                    ));
                }
                if key == "allow" && crate::commands::never_carried(name) {
                    return Err((
                        format!("commands.{key}[{i}]"),
                        format!(
                            "'{}' cannot run through a proxy and cannot be allowed",
                            list[i]
                        ),
                    ));
                }
            }
        }
        if self.routes.is_empty() {
            return Err((
                "routes".into(),
                "at least one route is required: the default route, without `patterns`".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let last = self.routes.len() - 1;
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if r.name.is_empty() {
                return Err((format!("{field}.name"), "must not be empty".into()));
            }
            if let Some(a) = &r.auto_cutover {
                let fraction = |name: &str, v: f64| {
                    if (0.0..=1.0).contains(&v) {
                        Ok(())
                    } else {
                        Err((
                            format!("{field}.auto_cutover.{name}"),
                            "must be a fraction from 0.0 to 1.0".to_string(),
                        ))
                    }
                };
                fraction("min_agreement", a.min_agreement)?;
                fraction("max_new_error_rate", a.max_new_error_rate)?;
                if r.shadow_reads == 0.0 {
                    return Err((
                        format!("{field}.auto_cutover"),
                        "needs shadow_reads > 0 on the route: shadow agreement is what it decides on".into(),
                    ));
                }
                if a.error_window_secs == 0 {
                    return Err((
                        format!("{field}.auto_cutover.error_window_secs"),
                        "must be at least 1".into(),
                    ));
                }
            }
            if !(0.0..=1.0).contains(&r.shadow_reads) {
                return Err((
                    format!("{field}.shadow_reads"),
                    "must be a fraction from 0.0 to 1.0".into(),
                ));
            }
            if r.ramp_percent.is_some_and(|p| p > 100) {
                return Err((format!("{field}.ramp_percent"), "must be 0 to 100".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err((
                    format!("{field}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            match &r.patterns {
                None if i != last => {
                    return Err((
                        format!("{field}.patterns"),
                        format!(
                            "route {:?} has no patterns, so it is the default route, and the default route must be the last one",
                            r.name
                        ),
                    ))
                }
                Some(_) if i == last => {
                    return Err((
                        format!("{field}.patterns"),
                        format!("the last route ({:?}) must be the default route, without `patterns`", r.name),
                    ))
                }
                Some(p) if p.is_empty() => {
                    return Err((format!("{field}.patterns"), "must not be empty; omit it only on the default route".into()))
                }
                Some(p) if p.iter().any(String::is_empty) => {
                    return Err((format!("{field}.patterns"), "a pattern must not be empty".into()))
                }
                _ => {}
            }
        }
        if self.limits.maxclients == 0 {
            return Err(("limits.maxclients".into(), "must be greater than 0".into()));
        }
        if self.admin.enabled {
            check_address("admin.address", &self.admin.address)?;
            let host = self.admin.address.rsplit_once(':').map_or("", |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback && self.admin.token.is_none() {
                return Err((
                    "admin.token".into(),
                    format!(
                        "the admin listener on {} is reachable from other hosts; set a token (CUTOVER_ADMIN__TOKEN) or listen on loopback",
                        self.admin.address
                    ),
                ));
            }
            if self
                .admin
                .token
                .as_ref()
                .is_some_and(|t| t.expose().is_empty())
            {
                return Err(("admin.token".into(), "must not be empty".into()));
            }
        }
        Ok(())
    }
}

impl Settings {
    fn validate_tls(&self) -> Result<(), (String, String)> {
        let l = &self.listen;
        let err = |field: &str, message: &str| Err((field.to_string(), message.to_string()));
        match (&l.tls_cert_file, &l.tls_key_file) {
            (Some(_), None) => return err("listen.tls_key_file", "tls_cert_file needs its key"),
            (None, Some(_)) => {
                return err("listen.tls_cert_file", "tls_key_file needs its certificate")
            }
            _ => {}
        }
        if !l.tls() {
            for (field, set) in [
                ("plain_address", l.plain_address.is_some()),
                ("tls_client_ca_file", l.tls_client_ca_file.is_some()),
                ("tls_min_version", l.tls_min_version.is_some()),
            ] {
                if set {
                    return err(
                        &format!("listen.{field}"),
                        "needs TLS on the listener: set tls_cert_file and tls_key_file",
                    );
                }
            }
        }
        if let Some(a) = &l.plain_address {
            check_address("listen.plain_address", a)?;
        }
        for (side, up) in [("old", &self.upstreams.old), ("new", &self.upstreams.new)] {
            let field = |name: &str| format!("upstreams.{side}.{name}");
            if !up.tls {
                for (name, set) in [
                    ("ca_file", up.ca_file.is_some()),
                    ("server_name", up.server_name.is_some()),
                    ("client_cert_file", up.client_cert_file.is_some()),
                    ("client_key_file", up.client_key_file.is_some()),
                    ("tls_min_version", up.tls_min_version.is_some()),
                    ("insecure_skip_verify", up.insecure_skip_verify),
                ] {
                    if set {
                        return err(&field(name), "needs tls = true on this upstream");
                    }
                }
            }
            match (&up.client_cert_file, &up.client_key_file) {
                (Some(_), None) => {
                    return err(&field("client_key_file"), "client_cert_file needs its key")
                }
                (None, Some(_)) => {
                    return err(
                        &field("client_cert_file"),
                        "client_key_file needs its certificate",
                    )
                }
                _ => {}
            }
            if up
                .server_name
                .as_deref()
                .is_some_and(|n| rustls::pki_types::ServerName::try_from(n.to_string()).is_err())
            {
                return err(&field("server_name"), "not a valid DNS name or IP address");
            }
        }
        Ok(())
    }
}

fn validate_auth(auth: &AuthConfig) -> Result<(), (String, String)> {
    if auth.users.is_empty() {
        return Err((
            "auth.users".into(),
            "at least one user is needed (or remove [auth])".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, u) in auth.users.iter().enumerate() {
        if u.name.is_empty() || u.name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err((
                format!("auth.users[{i}].name"),
                "must be a non-empty name without spaces".into(),
            ));
        }
        if !names.insert(u.name.as_str()) {
            return Err((
                format!("auth.users[{i}].name"),
                format!("duplicate user {:?}", u.name),
            ));
        }
        if u.sha256.len() != 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                format!("auth.users[{i}].sha256"),
                "must be the 64 hex digits of the password's SHA-256 (echo -n \"$PASSWORD\" | sha256sum)".into(),
            ));
        }
    }
    Ok(())
}

fn check_address(field: &str, addr: &str) -> Result<(), (String, String)> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err((field.into(), format!("{addr:?} is not a host:port address"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Phase;

    const GOOD: &str = r#"
[listen]
address = "127.0.0.1:6400"

[upstreams.old]
address = "127.0.0.1:6379"

[upstreams.new]
address = "127.0.0.1:6380"

[[routes]]
name = "sessions"
patterns = ["session:*", "sess:*"]
phase = "dual-write"

[[routes]]
name = "default"
phase = "old-only"
"#;

    #[test]
    fn the_commented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cutover.toml");
        let s = Settings::load_with_env(&path, std::iter::empty()).unwrap();
        assert_eq!(s.journal, JournalConfig::default());
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load_with_env(
            &path,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_contract_shape_loads() {
        let s = load(GOOD, &[]).unwrap();
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.routes[0].phase, Phase::DualWrite);
        assert_eq!(s.upstreams.old.command_timeout_ms, 5000);
        assert_eq!(s.commands.unknown, UnknownPolicy::Refuse);
    }

    #[test]
    fn typo_names_file_line_and_field() {
        let err = load(
            &GOOD.replace("[upstreams.new]\naddress", "[upstreams.new]\nadress"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cutover.toml"), "{err}");
        assert!(err.contains("adress"), "{err}");
        assert!(err.contains("line 9"), "{err}");
    }

    #[test]
    fn bad_phase_is_named() {
        let err = load(&GOOD.replace("\"dual-write\"", "\"dual_write\""), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dual_write") && err.contains("dual-write"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_with_prefix() {
        let s = load(
            GOOD,
            &[
                ("CUTOVER_UPSTREAMS__NEW__PASSWORD", "s3cret"),
                ("CUTOVER_LISTEN__ADDRESS", "0.0.0.0:7000"),
                ("CUTOVER_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.upstreams.new.password.as_ref().map(Secret::expose),
            Some("s3cret")
        );
        assert_eq!(s.listen.address, "0.0.0.0:7000");
        assert!(!format!("{s:?}").contains("s3cret"));
        let err = load(GOOD, &[("CUTOVER_UPSTREAMS__NEW__PASWORD", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("paswor"), "{err}");
    }

    #[test]
    fn route_shape_rules() {
        let no_default = GOOD.replace(
            "name = \"default\"\nphase",
            "name = \"default\"\npatterns = [\"x\"]\nphase",
        );
        assert!(load(&no_default, &[])
            .unwrap_err()
            .to_string()
            .contains("routes[1].patterns"));
        let default_first = GOOD.replace("patterns = [\"session:*\", \"sess:*\"]\n", "");
        let err = load(&default_first, &[]).unwrap_err().to_string();
        assert!(err.contains("routes[0].patterns"), "{err}");
        let empty = GOOD.replace("[\"session:*\", \"sess:*\"]", "[]");
        assert!(load(&empty, &[])
            .unwrap_err()
            .to_string()
            .contains("must not be empty"));
        let dup = GOOD.replace("\"sessions\"", "\"default\"");
        assert!(load(&dup, &[])
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let bad_addr = GOOD.replace("127.0.0.1:6380", "localhost");
        assert!(load(&bad_addr, &[])
            .unwrap_err()
            .to_string()
            .contains("upstreams.new.address"));
    }

    #[test]
    fn tls_and_auth_rules_name_the_field() {
        let new_tls = |lines: &str| {
            GOOD.replace(
                "address = \"127.0.0.1:6380\"\n",
                &format!("address = \"127.0.0.1:6380\"\n{lines}\n"),
            )
        };
        let listen = |lines: &str| {
            GOOD.replace(
                "address = \"127.0.0.1:6400\"\n",
                &format!("address = \"127.0.0.1:6400\"\n{lines}\n"),
            )
        };
        let auth = |sha: &str| {
            format!("{GOOD}\n[auth]\nusers = [{{ name = \"app\", sha256 = \"{sha}\" }}]\n")
        };
        let hash = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";
        let cases = [
            (new_tls("ca_file = \"ca.pem\""), "upstreams.new.ca_file", "tls = true"),
            (new_tls("insecure_skip_verify = true"), "upstreams.new.insecure_skip_verify", "tls = true"),
            (new_tls("tls = true\nclient_cert_file = \"c.pem\""), "upstreams.new.client_key_file", "needs its key"),
            (new_tls("tls = true\nserver_name = \"not a name\""), "upstreams.new.server_name", "not a valid"),
            (new_tls("tls = true\ntls_min_version = \"1.1\""), "tls_min_version", "1.1"),
            (listen("tls_cert_file = \"c.pem\""), "listen.tls_key_file", "needs its key"),
            (listen("plain_address = \"127.0.0.1:6402\""), "listen.plain_address", "needs TLS"),
            (auth("abc"), "auth.users[0].sha256", "64 hex digits"),
            (format!("{GOOD}\n[auth]\nusers = []\n"), "auth.users", "at least one user"),
            (format!("{}\n[auth]\nusers = [{{ name = \"app\", sha256 = \"{hash}\" }}, {{ name = \"app\", sha256 = \"{hash}\" }}]\n", GOOD), "auth.users[1].name", "duplicate"),
            (format!("{GOOD}\n[auth]\nusers = [{{ name = \"app\", password = \"x\" }}]\n"), "password", "unknown field"),
        ];
        for (text, field, message) in cases {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains(message),
                "{field}: {err}"
            );
        }
        let ok = load(&auth(hash), &[]).unwrap();
        assert_eq!(ok.auth.unwrap().users[0].name, "app");
    }

    #[test]
    fn relative_tls_files_are_beside_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        let text = GOOD.replace(
            "address = \"127.0.0.1:6380\"\n",
            "address = \"127.0.0.1:6380\"\ntls = true\nca_file = \"tls/ca.pem\"\nclient_cert_file = \"/abs/c.pem\"\nclient_key_file = \"c.key\"\n",
        );
        std::fs::write(&path, text).unwrap();
        let s = Settings::load_with_env(&path, std::iter::empty()).unwrap();
        let new = &s.upstreams.new;
        assert_eq!(
            new.ca_file.as_deref(),
            Some(dir.path().join("tls/ca.pem").as_path())
        );
        assert_eq!(
            new.client_cert_file.as_deref(),
            Some(Path::new("/abs/c.pem"))
        );
        assert_eq!(
            new.client_key_file.as_deref(),
            Some(dir.path().join("c.key").as_path())
        );
    }
}
