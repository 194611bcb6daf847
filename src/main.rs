//! The `sluice` command: `serve` and `check-config`.

use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::sfu::{HangupReason, Sfu};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A selective forwarding unit for Matrix calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SFU.
    Serve {
        /// Path to the TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 when valid).
    CheckConfig {
        /// Path to the TOML configuration file.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            sluice::logging::init(&cfg.log);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: Config) -> ExitCode {
    let (sfu, mut events) = Sfu::new(cfg.sfu.clone());
    tracing::info!(
        bind = %cfg.sfu.bind_address,
        ports = ?cfg.sfu.port_range(),
        "sluice media core ready"
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return ExitCode::FAILURE;
        }
    };
    let focus = if cfg.matrix.enabled() {
        match sluice::matrix::Focus::start(&cfg.matrix, sfu.clone(), events).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(error = %e, "cannot start Matrix signaling");
                return ExitCode::FAILURE;
            }
        }
    } else {
        tracing::warn!(
            "no [matrix] homeserver_url configured: no signaling, the media core runs alone"
        );
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                tracing::debug!(conference = %ev.conference, participant = %ev.participant, event = ?ev.kind, "sfu event");
            }
        });
        None
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
    sfu.shutdown(HangupReason::Draining).await;
    if let Some(f) = focus {
        // Give the hangups a moment to go out before the client stops.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        f.stop().await;
    }
    ExitCode::SUCCESS
}
