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
        /// Print the raw JSON of GET /status.
        #[arg(long)]
        json: bool,
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
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, no backtrace: these are operator-facing.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
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
            println!("{}: ok", config.display());
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
            Ok(())
        }
        Cmd::Status { admin, json } => {
            let text = admin_call(admin, "GET", "/status", None)?;
            if json {
                println!("{text}");
            } else {
                let status: cutover::admin::StatusView =
                    serde_json::from_str(&text).context("unexpected /status answer")?;
                print!("{}", cutover::admin::render_status(&status));
            }
            Ok(())
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
            Ok(())
        }
        Cmd::Serve { config } => {
            let settings = Settings::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(serve(settings, config))
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
