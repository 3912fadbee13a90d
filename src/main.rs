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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        Cmd::Serve { config } => {
            let settings = Settings::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(serve(settings, config))
        }
    }
}

async fn serve(settings: Settings, config: PathBuf) -> anyhow::Result<()> {
    let proxy = Proxy::start(settings.clone(), Some(config))
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen.address))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
    proxy.shutdown().await;
    info!("all client sessions drained; bye");
    Ok(())
}
