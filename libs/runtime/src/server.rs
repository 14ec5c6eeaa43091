//! Serving a service on a pre-bound listener.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::authz::{Authorizer, AuthzLayer};
use crate::config::{ConfigError, ServerConfig};
use crate::message_limit::MessageLimitLayer;
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
}

/// Serves `routes` plus gRPC health and reflection on `listener` until
/// `shutdown` resolves, then stops accepting, reports NOT_SERVING, and waits
/// at most `drain_timeout` for in-flight requests.
///
/// `health_names` are the fully qualified service names reported SERVING
/// (the empty name, "the server as a whole", is always reported); they also
/// select this server's rows of the per-RPC caller table
/// ([`crate::authz::DEFAULTS`], then `server.authorization`).
///
/// Connections are mTLS with `server.tls` (certificates reloaded when their
/// files change) unless `server.tls.insecure_plaintext = true`, which is
/// logged at WARN.
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
    serve_inner(listener, routes, health_names, config, shutdown, false).await
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
    serve_inner(listener, routes, health_names, config, shutdown, true).await
}

async fn serve_inner(
    listener: TcpListener,
    routes: Routes,
    health_names: &[&str],
    config: &ServerConfig,
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
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in health_names.iter().copied().chain([""]) {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let routes = routes.add_service(health).add_service(reflection);

    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = Arc::clone(&draining);
        let names: Vec<String> = health_names.iter().map(|s| (*s).to_owned()).collect();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested, draining");
            for name in names.iter().map(String::as_str).chain([""]) {
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
        // Outermost: a refusal by the caller table is traced too.
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
    }
    Ok(())
}
