//! The `main` every service binary shares.
//!
//! Order matters: tracing first, then configuration (invalid → exit 64 with
//! one line, before any port is bound), then `--validate-only` or bind and
//! serve until SIGTERM/SIGINT, then stop within `server.drain_timeout_secs`:
//! health NOT_SERVING, `server.shutdown_delay_secs` still serving, drain,
//! exit (cut off at the deadline).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;

use crate::config::{self, ServerConfig, ServiceConfig};

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
    /// Ask the plaintext gRPC health service at HOST:PORT (a running
    /// service's `server.ops_listen`) and exit 0 when it answers SERVING,
    /// 1 otherwise: a container health check that needs no other binary.
    /// Reads no configuration.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["config", "validate_only"])]
    probe: Option<String>,
}

/// How long `--probe` waits for an answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

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
    if let Some(addr) = args.probe {
        return runtime.block_on(probe(&addr));
    }
    let code = runtime.block_on(async move {
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
    });
    // Past the drain deadline nothing is waited for: not a background task
    // that ignored its stop signal, nor a blocking call still running.
    runtime.shutdown_background();
    code
}

/// `--probe`: one health check over plaintext, its answer on stdout.
async fn probe(addr: &str) -> ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    match probe_status(addr).await {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(why) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

/// What the health service at `addr` says of the whole server, within
/// [`PROBE_TIMEOUT`].
async fn probe_status(
    addr: &str,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, String> {
    let asked = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("`{}` is not HOST:PORT: {e}", crate::clip(addr)))?
            .connect_timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to `{}`: {e}", crate::clip(addr)))?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|answer| answer.into_inner().status())
            .map_err(|status| format!("health check refused: {}", status.message()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, asked)
        .await
        .map_err(|_| format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))?
}

async fn serve<C, F, Fut>(config: C, run: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let signal = shutdown_signal();
    let server = config.server().clone();
    let addr = server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding `{addr}`"))?;
    let signal = async move {
        signal.await;
        crate::health::begin_process_drain();
    };
    stop_within_deadline(&server, signal, |shutdown| run(config, listener, shutdown)).await
}

/// Runs `run(shutdown)` and stops it in order once `signal` resolves:
/// health is already NOT_SERVING (the caller's `signal` sees to that);
/// requests are still served for `shutdown_delay`; then `shutdown`
/// resolves (stop accepting, drain, stop background tasks); whatever is
/// still running when `drain_timeout` has passed since the signal is cut
/// off by returning here (the caller then exits).
async fn stop_within_deadline<F, Fut>(
    server: &ServerConfig,
    signal: impl Future<Output = ()> + Send + 'static,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (signalled_tx, signalled) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        let _ = signalled_tx.send(true);
    });
    let shutdown = {
        let signalled = signalled.clone();
        let delay = server.shutdown_delay();
        async move {
            signalled_at(signalled).await;
            if !delay.is_zero() {
                tracing::info!(
                    shutdown_delay_secs = delay.as_secs(),
                    "health is NOT_SERVING; still serving until the shutdown delay passes"
                );
                tokio::time::sleep(delay).await;
            }
        }
    };
    let drain_timeout = server.drain_timeout();
    let deadline = async move {
        signalled_at(signalled).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        result = run(Box::pin(shutdown)) => result,
        () = deadline => {
            tracing::warn!(
                drain_timeout_secs = server.drain_timeout_secs,
                "drain deadline passed with work still running; exiting anyway"
            );
            Ok(())
        }
    }
}

/// Resolves once the signal has been received (never, if the task that
/// watches for it is gone without seeing one).
async fn signalled_at(mut signalled: tokio::sync::watch::Receiver<bool>) {
    if signalled.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn server(delay: u64, drain: u64) -> ServerConfig {
        ServerConfig {
            shutdown_delay_secs: delay,
            drain_timeout_secs: drain,
            ..ServerConfig::default()
        }
    }

    #[tokio::test]
    async fn probe_reports_what_health_says_and_fails_closed() {
        use tonic_health::pb::health_check_response::ServingStatus;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        assert_eq!(probe_status(&addr).await, Ok(ServingStatus::NotServing));
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        assert_eq!(probe_status(&addr).await, Ok(ServingStatus::Serving));
        server.abort();

        // Nothing listening, or not an address: an error, never SERVING.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(probe_status(&gone).await.is_err());
        assert!(probe_status("not an address\n").await.is_err());
    }

    #[tokio::test]
    async fn a_service_that_never_stops_is_cut_off_at_the_drain_deadline() {
        let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
        let asked = Arc::new(AtomicBool::new(false));
        let stopping = tokio::spawn({
            let asked = Arc::clone(&asked);
            async move {
                stop_within_deadline(
                    &server(0, 0),
                    async move {
                        let _ = signalled.await;
                    },
                    |shutdown| async move {
                        shutdown.await;
                        asked.store(true, Ordering::SeqCst);
                        // A background task that ignores its stop signal.
                        std::future::pending::<anyhow::Result<()>>().await
                    },
                )
                .await
            }
        });
        signal.send(()).unwrap();
        // A guard against hanging, not a timing goal: without the deadline
        // this never returns.
        tokio::time::timeout(std::time::Duration::from_secs(60), stopping)
            .await
            .expect("stopping returned at the drain deadline")
            .unwrap()
            .unwrap();
        assert!(
            asked.load(Ordering::SeqCst),
            "the service was told to stop first"
        );
    }
}
