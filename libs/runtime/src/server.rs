//! Serving a service on a pre-bound listener.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::authz::{Authorizer, AuthzLayer};
use crate::config::{ConfigError, ServerConfig};
use crate::health::Readiness;
use crate::message_limit::MessageLimitLayer;
use crate::metrics::RpcMetricsLayer;
use crate::propagation::ServerTraceLayer;
use crate::tls::TlsSource;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Authorization(#[from] ConfigError),
    #[error("binding the ops port `{addr}`: {source}")]
    OpsBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the ops port stopped while the server was running")]
    OpsStopped,
}

/// The health name that answers SERVING for as long as the process runs
/// its server, whatever the readiness checks say and through the drain:
/// what a liveness (and startup) probe asks. A dependency outage makes a
/// pod unready, never restarts it; restarting would not bring Vault back.
pub const LIVENESS: &str = "liveness";

/// How long the ops port may take to close once the main server has
/// stopped (a scraper's open connection must not hold the process).
const OPS_STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `routes` plus gRPC health and reflection on `listener` until
/// `shutdown` resolves, then reports NOT_SERVING, stops accepting, and
/// waits at most `drain_timeout` for in-flight requests.
///
/// `health_names` are the fully qualified service names whose health is
/// reported (the empty name, "the server as a whole", is always reported):
/// SERVING while the service's [`Readiness`] checks are ok, NOT_SERVING
/// from the moment the process is told to stop ([`crate::process`] then
/// keeps serving for `server.shutdown_delay_secs` before `shutdown`
/// resolves, so load balancers see NOT_SERVING first); they also
/// select this server's rows of the per-RPC caller table
/// ([`crate::authz::DEFAULTS`], then `server.authorization`).
///
/// Connections are mTLS with `server.tls` (certificates reloaded when their
/// files change) unless `server.tls.insecure_plaintext = true`, which is
/// logged at WARN.
///
/// With `server.ops_listen` set, a second, plaintext port serves the same
/// gRPC health and `GET /metrics` ([`crate::metrics`]) and nothing else (any
/// other path is 404); it keeps answering NOT_SERVING while the main port
/// drains, and closes once the main server has stopped. Every call on the
/// main port is measured by [`crate::metrics::RpcMetricsLayer`].
/// Message-size limits are set by the caller on each generated server
/// (`max_decoding_message_size`), from the same [`ServerConfig`]; a request
/// message over `server.max_message_bytes` is refused here first, with
/// RESOURCE_EXHAUSTED ([`crate::message_limit`]).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    health_names: &[&str],
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_inner(
        listener,
        routes,
        health_names,
        config,
        &Readiness::new(),
        shutdown,
        false,
    )
    .await
}

/// Like [`serve`], and also accepts HTTP/1.1, for services whose `routes`
/// include plain HTTP endpoints (OAuth endpoints next to gRPC).
pub async fn serve_with_http(
    listener: TcpListener,
    routes: Routes,
    health_names: &[&str],
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_inner(
        listener,
        routes,
        health_names,
        config,
        &Readiness::new(),
        shutdown,
        true,
    )
    .await
}

/// Like [`serve_with_http`], with health taken from `readiness`: SERVING
/// only while every check the service registered there is ok
/// ([`crate::health`]).
pub async fn serve_with_http_and_readiness(
    listener: TcpListener,
    routes: Routes,
    health_names: &[&str],
    config: &ServerConfig,
    readiness: &Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_inner(
        listener,
        routes,
        health_names,
        config,
        readiness,
        shutdown,
        true,
    )
    .await
}

async fn serve_inner(
    listener: TcpListener,
    routes: Routes,
    health_names: &[&str],
    config: &ServerConfig,
    readiness: &Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
    http1: bool,
) -> Result<(), ServeError> {
    let tls = if config.tls.insecure_plaintext {
        tracing::warn!(
            "server.tls.insecure_plaintext = true: serving without TLS; every caller is trusted and the per-RPC caller table is not enforced"
        );
        None
    } else {
        let source = TlsSource::load(&config.tls)?;
        tracing::info!(identity = %source.identity(), "serving mTLS");
        Some(source)
    };
    let authorizer = Authorizer::new(
        health_names,
        &config.authorization,
        &config.tls.trust_domain,
        tls.is_some(),
    )?;
    let ops = match config.ops_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::OpsBind { addr, source })?,
        ),
        None => None,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    let names: Vec<String> = health_names
        .iter()
        .copied()
        .chain([""])
        .map(str::to_owned)
        .collect();
    // Health follows the checks, and goes NOT_SERVING for good as soon as
    // the process is told to stop (before the shutdown delay, while this
    // server still accepts) or this server starts draining.
    let mut process_draining = crate::health::process_draining();
    let initial = if readiness.is_serving() && !*process_draining.borrow_and_update() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in &names {
        reporter.set_service_status(name, initial).await;
    }
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let health_loop = report_health(
        reporter.clone(),
        names.clone(),
        readiness.subscribe(),
        process_draining,
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let ops = ops.map(|listener| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = serve_ops(listener, health.clone(), config, async move {
            let _ = stopped.await;
        });
        (stop, server)
    });
    let routes = routes.add_service(health).add_service(reflection);

    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = Arc::clone(&draining);
        let readiness = readiness.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested, draining");
            // Set here too, not only by the health loop: NOT_SERVING is in
            // place before the listener closes.
            readiness.drain();
            for name in &names {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            draining.notify_one();
        }
    };
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "serving");
    let incoming = crate::tls::incoming(listener, tls);
    let server = tonic::transport::Server::builder()
        .timeout(config.request_timeout())
        .accept_http1(http1)
        // Outermost: every answer is measured, refusals included.
        .layer(RpcMetricsLayer)
        // A refusal by the caller table is traced too.
        .layer(ServerTraceLayer)
        .layer(AuthzLayer::new(
            Arc::new(authorizer),
            config.request_timeout(),
        ))
        .layer(MessageLimitLayer::new(config.max_message_bytes))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    let deadline = async {
        draining.notified().await;
        tokio::time::sleep(config.drain_timeout()).await;
    };
    let main = async {
        tokio::select! {
            result = server => {
                result?;
                tracing::info!("drained, stopped");
            }
            () = deadline => {
                tracing::warn!(
                    drain_timeout_secs = config.drain_timeout_secs,
                    "drain deadline passed with requests in flight; stopping anyway"
                );
            }
            () = health_loop => {}
        }
        Ok::<(), ServeError>(())
    };
    let Some((stop_ops, ops)) = ops else {
        return main.await;
    };
    tokio::pin!(ops);
    let result = tokio::select! {
        result = main => result,
        result = &mut ops => {
            result?;
            return Err(ServeError::OpsStopped);
        }
    };
    let _ = stop_ops.send(());
    match tokio::time::timeout(OPS_STOP_DEADLINE, ops).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the ops port stopped with an error"),
        Err(_) => tracing::warn!("the ops port did not close in time; stopping anyway"),
    }
    result
}

/// The ops port: gRPC health (the same statuses as the main port) and
/// `GET /metrics`, in plaintext, HTTP/1.1 or h2c; any other path is 404
/// (a gRPC client sees UNIMPLEMENTED). Not measured: probes and scrapes are
/// not calls to the service.
fn serve_ops(
    listener: TcpListener,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "ops port serving gRPC health and /metrics in plaintext");
    let router = Routes::new(health)
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    crate::metrics::render(),
                )
            }),
        )
        .fallback(|| async { http::StatusCode::NOT_FOUND });
    tonic::transport::Server::builder()
        .timeout(config.request_timeout())
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
}

/// Keeps the health service's statuses equal to `readiness` (and
/// NOT_SERVING once the process drains); never returns, so it runs exactly
/// as long as the server it is selected with.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    names: Vec<String>,
    mut readiness: tokio::sync::watch::Receiver<crate::health::State>,
    mut process_draining: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let serving =
            readiness.borrow_and_update().serving() && !*process_draining.borrow_and_update();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in &names {
            reporter.set_service_status(name, status).await;
        }
        let closed = tokio::select! {
            changed = readiness.changed() => changed.is_err(),
            changed = process_draining.changed() => changed.is_err(),
        };
        if closed {
            // Both senders outlive the server; should one go, the last
            // status stays.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    const NAME: &str = "tether.policy.v1.PolicyDecision";

    async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> Status {
        let answer = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        Status::try_from(answer.status).unwrap()
    }

    /// Polls until both the service's name and the empty name report `want`.
    async fn until(client: &mut HealthClient<tonic::transport::Channel>, want: Status) {
        for _ in 0..400 {
            if status(client, NAME).await == want && status(client, "").await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("health never reported {want:?}");
    }

    #[tokio::test]
    async fn health_follows_the_readiness_checks_and_stops_serving_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServerConfig {
            tls: crate::TlsConfig::plaintext(),
            ..ServerConfig::default()
        };
        let readiness = Readiness::new();
        readiness.set("policy-set", false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn({
            let readiness = readiness.clone();
            async move {
                serve_with_http_and_readiness(
                    listener,
                    Routes::default(),
                    &[NAME],
                    &config,
                    &readiness,
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut client = HealthClient::new(channel);
        until(&mut client, Status::NotServing).await;
        readiness.set("policy-set", true);
        until(&mut client, Status::Serving).await;
        readiness.set("vault-login", false);
        until(&mut client, Status::NotServing).await;
        assert_eq!(
            status(&mut client, LIVENESS).await,
            Status::Serving,
            "an unready process is still alive: no restart for a Vault outage"
        );
        readiness.set("vault-login", true);
        until(&mut client, Status::Serving).await;

        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
        assert!(
            !readiness.is_serving(),
            "after shutdown the readiness stays draining"
        );
    }
}
