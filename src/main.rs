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
            Ok(c) => {
                for d in c.deprecations() {
                    eprintln!("warning: {d}");
                }
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
            for d in cfg.deprecations() {
                tracing::warn!("{d}");
            }
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
    use std::sync::Arc;
    use std::time::Duration;
    let sfu = Sfu::new(cfg.sfu.clone());
    tracing::info!(
        bind = %cfg.sfu.bind_address,
        ports = ?cfg.sfu.port_range(),
        "sluice media core ready"
    );
    let listener = match tokio::net::TcpListener::bind(cfg.http.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %cfg.http.listen, error = %e, "cannot bind http.listen");
            return ExitCode::FAILURE;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return ExitCode::FAILURE;
        }
    };
    let focus = if cfg.matrix.enabled() {
        match sluice::matrix::Focus::start(&cfg.matrix, sfu.clone()).await {
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
        None
    };
    let load = sluice::metrics::LoadEstimator::new(sfu.stats(), cfg.http.capacity_packets_per_sec);
    tokio::spawn(load.clone().run(Duration::from_secs(5)));
    let metrics = Arc::new(sluice::metrics::Metrics::new(sfu.clone(), load));
    if let Some(f) = &focus {
        metrics.register(Box::new(f.metrics_collector()));
    }
    let mut front_doors = Vec::new();
    if cfg.livekit.enabled() {
        let secret = cfg.livekit.resolve_secret();
        match sluice::livekit::AuthService::new(&cfg.livekit).and_then(|auth| {
            secret
                .map(|secret| (auth, secret))
                .map_err(|e| e.to_string())
        }) {
            Ok((auth, secret)) => {
                let signal = sluice::livekit::Signal::new(sfu.clone(), &cfg.livekit, &secret);
                match sluice::livekit::delayed_leave::DelayedLeaves::new(
                    signal.clone(),
                    cfg.livekit.homeserver_urls.clone(),
                    Duration::from_secs(cfg.livekit.openid_timeout_secs),
                ) {
                    Ok(d) => auth.delegate_to(d),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the delayed-leave HTTP client");
                        return ExitCode::FAILURE;
                    }
                }
                metrics.register(Box::new(sluice::livekit::metrics::LiveKitCollector::new(
                    auth.clone(),
                    signal.clone(),
                )));
                front_doors.push(auth.routes());
                front_doors.push(signal.routes());
                tracing::info!(
                    auth_path = %cfg.livekit.auth_path,
                    public_url = %cfg.livekit.public_url,
                    "LiveKit front door on (authorization service and /rtc/v1 signaling)"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the LiveKit front door");
                return ExitCode::FAILURE;
            }
        }
    }
    let ops = sluice::ops::Ops::new(
        sfu.clone(),
        Duration::from_secs(cfg.http.drain_deadline_secs),
    );
    tokio::spawn(sluice::ops::evict_idle_loop(
        sfu.clone(),
        Duration::from_secs(cfg.http.idle_timeout_secs),
        Duration::from_secs(5),
    ));
    let state = sluice::http::AppState {
        sfu: sfu.clone(),
        metrics,
        ops: ops.clone(),
        sync_up: focus.as_ref().map(|f| f.sync_up.clone()),
        admin_token: (!cfg.http.admin_token.0.is_empty()).then(|| cfg.http.admin_token.0.clone()),
        transport: cfg.matrix.enabled().then(|| {
            serde_json::json!({"type": "sluice", "user_id": cfg.matrix.user_id, "device_id": cfg.matrix.device_id})
        }),
        web: sluice::http::WebClient::from_config(&cfg),
        front_doors,
    };
    tracing::info!(listen = %cfg.http.listen, "http server listening");
    tokio::spawn(async move {
        if let Err(e) = sluice::http::serve(listener, state).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });

    // First SIGTERM/SIGINT (or POST /admin/drain): drain. A second signal: hang up now.
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        o = ops.wait_drained() => Some(o),
    };
    let outcome = match outcome {
        Some(o) => o,
        None => {
            ops.start_drain();
            tracing::info!("signal received: draining (send it again to stop at once)");
            tokio::select! {
                o = ops.wait_drained() => o,
                _ = tokio::signal::ctrl_c() => { tracing::info!("second signal: stopping now"); sluice::ops::DrainOutcome::DeadlineReached }
                _ = term.recv() => { tracing::info!("second signal: stopping now"); sluice::ops::DrainOutcome::DeadlineReached }
            }
        }
    };
    tracing::info!(?outcome, "shutting down");
    sfu.shutdown(HangupReason::Draining).await;
    if let Some(f) = focus {
        // Give the hangups a moment to go out before the client stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.stop().await;
    }
    ExitCode::SUCCESS
}
