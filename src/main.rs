//! The `cutover` binary: parse arguments, set up logging, run a subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cutover::config::Settings;
use cutover::Proxy;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Move a live Redis workload to a new cache with no downtime"
)]
struct Cli {
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info,cutover=debug`.
    #[arg(long, global = true, env = "CUTOVER_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Copy a route's keys from old to new (standalone: RESTORE without
    /// REPLACE; see the caveat it prints). Resumable from its cursor file.
    Backfill {
        #[command(flatten)]
        caches: CacheArgs,
        /// Keys per SCAN/DUMP/RESTORE batch.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Rate limit in keys per second.
        #[arg(long)]
        max_keys_per_sec: Option<u64>,
        /// Rate limit in payload bytes per second.
        #[arg(long)]
        max_bytes_per_sec: Option<u64>,
        /// Only keys of this type (string, list, hash, set, zset, stream).
        #[arg(long = "type")]
        type_filter: Option<String>,
        /// Where the scan position is saved and resumed from. Default:
        /// <config name>.backfill.json beside the config file.
        #[arg(long)]
        cursor_file: Option<PathBuf>,
    },
    /// Compare a route's keys on old and new. Exit 0 when equal, 1 when
    /// they differ, 2 on error.
    Verify {
        #[command(flatten)]
        caches: CacheArgs,
        /// Existence, type and TTL class only (no values).
        #[arg(long)]
        quick: bool,
        /// TTLs within this many milliseconds are equal.
        #[arg(long, default_value_t = 1000)]
        ttl_tolerance_ms: i64,
        /// Copy the authoritative side's key over each difference.
        #[arg(long)]
        repair: bool,
        /// Keys shown per kind of difference.
        #[arg(long, default_value_t = 10)]
        sample: usize,
    },
    /// Run the proxy.
    Serve {
        /// Config file (TOML). Settings can be overridden with
        /// CUTOVER_SECTION__KEY environment variables.
        #[arg(long, short, env = "CUTOVER_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print its routes, without serving.
    Check {
        #[arg(long, short, env = "CUTOVER_CONFIG")]
        config: PathBuf,
    },
    /// Show each route's phase, who set it, and its counters (admin API).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON of GET /status (or GET /fleet).
        #[arg(long)]
        json: bool,
        /// The fleet instead: its members, the epoch each serves, and each
        /// route's counters summed over them (GET /fleet).
        #[arg(long)]
        fleet: bool,
    },
    /// Move ROUTE to PHASE (old-only, dual-write, read-new, new-only),
    /// persisted by the proxy. One step at a time unless --force.
    Phase {
        route: String,
        phase: String,
        /// Allow a jump that skips a phase (e.g. old-only -> read-new).
        #[arg(long)]
        force: bool,
        /// With read-new: serve only this percentage of keys (by hash
        /// slot) from new; the others stay dual-write.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        ramp: Option<u8>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which caches a tool works on: the config's, unless overridden.
#[derive(clap::Args)]
struct CacheArgs {
    /// Config file (the same one `serve` reads): upstreams and routes.
    #[arg(long, short, env = "CUTOVER_CONFIG")]
    config: PathBuf,
    /// Only this route (default: every route).
    #[arg(long)]
    route: Option<String>,
    /// Override upstreams.old.address.
    #[arg(long)]
    old: Option<String>,
    /// Override upstreams.new.address.
    #[arg(long)]
    new: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl CacheArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut s = Settings::load(&self.config)?;
        if let Some(a) = &self.old {
            s.upstreams.old.address = a.clone();
        }
        if let Some(a) = &self.new {
            s.upstreams.new.address = a.clone();
        }
        Ok(s)
    }
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API base URL. Default: [admin] address from --config, else
    /// http://127.0.0.1:6401.
    #[arg(long, env = "CUTOVER_ADMIN_URL")]
    admin: Option<String>,
    /// Bearer token. Default: [admin] token from --config.
    #[arg(long, env = "CUTOVER_ADMIN__TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Config file to take the admin address and token from.
    #[arg(long, short, env = "CUTOVER_CONFIG")]
    config: Option<PathBuf>,
}

impl AdminArgs {
    fn resolve(self) -> anyhow::Result<(String, Option<String>)> {
        let settings = self.config.as_deref().map(Settings::load).transpose()?;
        let url = self
            .admin
            .or_else(|| settings.as_ref().map(|s| s.admin.url()))
            .unwrap_or_else(|| "http://127.0.0.1:6401".into());
        let token = self.token.or_else(|| {
            settings
                .as_ref()
                .and_then(|s| s.admin.token.as_ref().map(|t| t.expose().to_string()))
        });
        Ok((url, token))
    }
}

/// Percent-encodes a route name for a URL path segment.
fn escape_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs one admin API call; a non-2xx answer is an error with its message.
fn admin_call(
    admin: AdminArgs,
    method: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<String> {
    let (url, token) = admin.resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = rt.block_on(cutover::admin::client::request(
        &url,
        method,
        path,
        token.as_deref(),
        body,
    ))?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("{method} {path}: HTTP {status}: {message}");
    }
    Ok(text)
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain, no backtrace: these are operator-facing.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Cmd::Check { config } => {
            let settings = Settings::load(&config)?;
            // The TLS files are read too: a key that does not parse fails
            // here, not at the next restart.
            cutover::tls::server_config(&settings.listen)?;
            for (side, up) in [
                ("old", &settings.upstreams.old),
                ("new", &settings.upstreams.new),
            ] {
                cutover::tls::connector(side, up)?;
            }
            println!("{}: ok", config.display());
            let l = &settings.listen;
            println!(
                "  listen {}{}{}",
                l.address,
                if l.tls() { " (TLS)" } else { "" },
                l.plain_address
                    .as_deref()
                    .map_or_else(String::new, |a| format!(", plain TCP on {a}"))
            );
            for (side, up) in [
                ("old", &settings.upstreams.old),
                ("new", &settings.upstreams.new),
            ] {
                println!(
                    "  upstream {side} {}{}{}",
                    up.address,
                    if up.tls { " (TLS)" } else { "" },
                    if up.password.is_some() {
                        " with credentials"
                    } else {
                        ""
                    }
                );
            }
            if let Some(auth) = &settings.auth {
                println!(
                    "  clients authenticate as: {}",
                    auth.users
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for r in &settings.routes {
                let patterns = r
                    .patterns
                    .as_ref()
                    .map_or_else(|| "(default)".to_string(), |p| p.join(" "));
                println!(
                    "  route {:<16} {:<10} {}",
                    r.name,
                    r.phase.to_string(),
                    patterns
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { admin, json, fleet } => {
            let path = if fleet { "/fleet" } else { "/status" };
            let text = admin_call(admin, "GET", path, None)?;
            if json {
                println!("{text}");
            } else if fleet {
                let view: cutover::admin::fleet::FleetView =
                    serde_json::from_str(&text).context("unexpected /fleet answer")?;
                print!("{}", cutover::admin::fleet::render(&view));
            } else {
                let status: cutover::admin::StatusView =
                    serde_json::from_str(&text).context("unexpected /status answer")?;
                print!("{}", cutover::admin::render_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Phase {
            route,
            phase,
            force,
            ramp,
            admin,
        } => {
            let body = serde_json::json!({ "phase": phase, "force": force, "ramp_percent": ramp })
                .to_string();
            let path = format!("/routes/{}/phase", escape_segment(&route));
            let text = admin_call(admin, "PUT", &path, Some(body))?;
            let view: cutover::admin::RouteView =
                serde_json::from_str(&text).context("unexpected answer")?;
            let ramp = view
                .status
                .ramp_percent
                .map_or_else(String::new, |p| format!(" at {p}%"));
            println!(
                "route {} is {}{ramp} (since {})",
                view.status.name, view.status.phase, view.status.since
            );
            let fleet: Option<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("fleet").cloned());
            if let Some(f) = fleet {
                let members = f["members"].as_array().map_or(0, Vec::len);
                let behind: Vec<String> = f["behind"]
                    .as_array()
                    .map(|b| {
                        b.iter()
                            .filter_map(|m| m.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                println!("fleet epoch {} ({members} members known)", f["epoch"]);
                if !behind.is_empty() {
                    eprintln!(
                        "committed, but not applied within flip_timeout_ms by: {}",
                        behind.join(", ")
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve { config } => {
            let settings = Settings::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(serve(settings, config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backfill {
            caches,
            batch,
            max_keys_per_sec,
            max_bytes_per_sec,
            type_filter,
            cursor_file,
        } => {
            let settings = caches.settings()?;
            let cursor_file = cursor_file.unwrap_or_else(|| {
                let stem = caches
                    .config
                    .file_stem()
                    .map_or_else(|| "cutover".into(), |s| s.to_string_lossy().into_owned());
                caches
                    .config
                    .with_file_name(format!("{stem}.backfill.json"))
            });
            let opts = cutover::tools::backfill::Options {
                route: caches.route.clone(),
                batch,
                max_keys_per_sec,
                max_bytes_per_sec,
                type_filter,
                cursor_file: Some(cursor_file),
                progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                stop_after_batches: None,
            };
            eprintln!("{}", cutover::tools::backfill::STANDALONE_CAVEAT);
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(async {
                let mut c = cutover::tools::Caches::new(&settings)?;
                cutover::tools::backfill::run(&mut c, &opts).await
            })?;
            if caches.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let c = &report.counts;
                println!(
                    "backfill of route(s) {}{}: {} keys scanned, {} copied ({} type by type: new refused RESTORE), {} already on new (left alone), {} expired or deleted before the read, {} failed, {:.1} MB in {:.1}s",
                    report.routes.join(", "),
                    if report.resumed { " (resumed)" } else { "" },
                    c.scanned, c.copied, c.typed, c.existed, c.gone, c.failed,
                    c.bytes as f64 / 1e6,
                    report.seconds
                );
                if let Some(e) = &report.first_error {
                    println!("first refusal: {e}");
                }
            }
            Ok(if report.counts.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Verify {
            caches,
            quick,
            ttl_tolerance_ms,
            repair,
            sample,
        } => {
            let opts = cutover::tools::verify::Options {
                route: caches.route.clone(),
                quick,
                ttl_tolerance_ms,
                repair,
                sample,
                ..Default::default()
            };
            let result = caches.settings().and_then(|settings| {
                let rt = tokio::runtime::Runtime::new()?;
                Ok(rt.block_on(async {
                    let mut c = cutover::tools::Caches::new(&settings)?;
                    cutover::tools::verify::run(&mut c, &opts).await
                })?)
            });
            let report = match result {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            if caches.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.equal {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

async fn serve(settings: Settings, config: PathBuf) -> anyhow::Result<()> {
    let proxy = Proxy::start(settings, Some(config)).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
    proxy.shutdown().await;
    info!("all client sessions drained; bye");
    Ok(())
}
