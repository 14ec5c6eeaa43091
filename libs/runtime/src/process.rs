//! The `main` every service binary shares.
//!
//! Order matters: tracing first, then configuration (invalid → exit 64 with
//! one line, before any port is bound), then `--validate-only` or bind and
//! serve until SIGTERM/SIGINT.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;

use crate::config::{self, ServiceConfig};

/// `EX_CONFIG` from sysexits(3): the configuration is invalid.
pub const EXIT_CONFIG: u8 = 64;

/// Command line shared by every service.
#[derive(Debug, Parser)]
struct Args {
    /// TOML configuration file; `TETHER_*` variables override its keys.
    #[arg(long, short, env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration and exit (0 when valid, 64 when not).
    #[arg(long)]
    validate_only: bool,
}

/// Runs a service: parses arguments, loads configuration, binds
/// `server.listen` and calls `run(config, listener, shutdown)`.
pub fn main<C, F, Fut>(service: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match crate::telemetry::init(service) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("error: invalid configuration: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let config: C = match config::load(args.config.as_deref(), std::env::vars()) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("error: invalid configuration: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if args.validate_only {
            println!("configuration is valid");
            return ExitCode::SUCCESS;
        }
        match serve(config, run).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{service} stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

async fn serve<C, F, Fut>(config: C, run: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = shutdown_signal();
    let addr = config.server().listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding `{addr}`"))?;
    run(config, listener, Box::pin(shutdown)).await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the server is still starting
/// is not lost (nor does it kill the process with the default action).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "received"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "received"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
