//! Tether's policy decision point: Cedar policies evaluated at the moment of
//! use, served over gRPC (`tether.policy.v1.PolicyDecision`) and, on the
//! same listener with the same mTLS and caller table, over the OpenID
//! AuthZEN Authorization API 1.0 ([`authzen`]).
//!
//! [`run`] is what both the binary and the tests call: it loads the policy
//! pack, starts watching it for changes, and serves on the given listener
//! until `shutdown` resolves. gRPC health is NOT_SERVING while no policy
//! set is loaded (a watched directory that starts empty or broken).

pub mod authzen;
mod config;
mod error;
mod metrics;
mod service;
mod store;
mod watcher;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;

use tether_proto::policy::v1::policy_decision_server::{PolicyDecisionServer, SERVICE_NAME};

pub use config::{Config, PolicyConfig, RequestLimits};
pub use error::PdpError;
pub use service::PolicyDecisionService;
pub use store::{LoadOutcome, PolicyStore};

/// Loads the pack in `config.policy.dir`, watches it, and serves gRPC and
/// AuthZEN on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Arc::new(PolicyStore::new(config.policy.dir.clone()));
    if let LoadOutcome::Rejected(err) = store.reload() {
        // With the directory watched, a pack written later is loaded; until
        // then health is NOT_SERVING and every decision is UNAVAILABLE.
        // Unwatched, nothing could ever load: refuse to start.
        if !config.policy.watch {
            return Err(anyhow::anyhow!(err)).context("loading the initial policy pack");
        }
        tracing::warn!(
            error = %err,
            dir = %config.policy.dir.display(),
            "no valid policy pack yet; health is NOT_SERVING and decisions fail UNAVAILABLE until one loads"
        );
    }
    let mut tasks = tether_runtime::tasks::Tasks::new();
    // Held for as long as the server runs: dropping it stops the watch.
    let _watcher = if config.policy.watch {
        Some(watcher::watch(
            Arc::clone(&store),
            config.policy.reload_debounce(),
            &mut tasks,
        )?)
    } else {
        None
    };
    let service = PolicyDecisionService::new(Arc::clone(&store), config.limits);
    let max = config.server.max_message_bytes;
    let http = authzen::router(service.clone(), max, !config.server.tls.insecure_plaintext);
    let routes = Routes::from(http).add_service(
        PolicyDecisionServer::new(service)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    let served = tether_runtime::server::serve_with_http_and_readiness(
        listener,
        routes,
        &[SERVICE_NAME],
        &config.server,
        store.readiness(),
        shutdown,
    )
    .await;
    tasks.stop(tether_runtime::tasks::STOP_DEADLINE).await;
    served?;
    Ok(())
}

use anyhow::Context as _;
