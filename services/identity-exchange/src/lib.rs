//! Tether's identity exchange: RFC 8693 token exchange that ties every agent
//! to a human. A user's IdP token plus the agent's own assertion become a
//! short-lived delegated token (`sub` = user, `act` = agent, `sid`, intent).
//!
//! One port serves the gRPC service (`tether.identity.v1.IdentityExchange`)
//! and the OAuth HTTP endpoints (`/token`, `/introspect`, `/revoke`,
//! `/.well-known/jwks.json`, `/.well-known/oauth-authorization-server`).

mod admin;
mod agents;
mod config;
mod error;
mod exchange;
mod grpc;
mod http;
mod http_refusals;
mod issuers;
mod metrics;
mod spiffe;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tether_proto::identity::v1::identity_exchange_server::{IdentityExchangeServer, SERVICE_NAME};
use tether_token::KeyRing;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use config::{
    AgentConfig, Config, HttpConfig, MayActFor, OAuthConfig, PruningConfig, SpiffeConfig,
    StoreConfig, TokenConfig, TrustedIssuer,
};
pub use error::{ExchangeError, OAuthCode};
pub use exchange::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID, TOKEN_TYPE_JWT};
/// The session store, for tools and tests that act as another replica on
/// the same database.
pub use store::{Pruned, SessionRecord, Store, UsedAssertion};

/// Opens the store and keys, and serves gRPC + HTTP on `listener` until
/// `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // reqwest (rustls) needs a process-wide crypto provider; another
    // component may have installed it already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut tasks = tether_runtime::tasks::Tasks::new();
    let store = store::Store::open(&config.store.url)
        .await
        .context("opening the session store")?
        .group_commit(&mut tasks);
    let ring = Arc::new(
        KeyRing::open_dir_with_activation(
            &config.tokens.keys_dir,
            Duration::from_secs(config.tokens.key_activation_secs),
        )
        .context("opening the signing keys")?,
    );
    let http = tether_token::idp_http_client(Duration::from_secs(config.http.timeout_secs))
        .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
    let exchanger = Arc::new(exchange::Exchanger::new(
        &config,
        ring,
        store.clone(),
        &http,
    )?);

    // Every replica prunes: the deletes are bounded and by key, so two
    // passes at once only share the work.
    let pruning = config.pruning;
    tasks.every("prune", Duration::from_secs(pruning.interval_secs), {
        let store = store.clone();
        move || {
            let store = store.clone();
            async move {
                match store
                    .prune(
                        exchange::unix_now_ms(),
                        pruning.retention_ms(),
                        pruning.batch_size,
                    )
                    .await
                {
                    Ok(p) if p != store::Pruned::default() => tracing::info!(
                        sessions = p.sessions,
                        assertions = p.assertions,
                        "pruned the session store"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning the session store failed; will retry")
                    }
                }
            }
        }
    });

    if config.tokens.rotate_after_secs > 0 {
        let ring = Arc::clone(exchanger.ring_arc());
        let rotate_ms =
            i64::try_from(config.tokens.rotate_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let keep_ms =
            i64::try_from((config.tokens.max_lifetime_secs + config.tokens.leeway_secs) * 1000)
                .unwrap_or(i64::MAX);
        let every = Duration::from_secs((config.tokens.rotate_after_secs / 4).clamp(1, 60));
        tasks.every("key-rotation", every, move || {
            if let Err(e) = ring.maintain(rotate_ms, keep_ms) {
                tracing::error!(error = %e, "signing key rotation failed; the current key keeps signing");
            }
            std::future::ready(())
        });
    }

    // Keys added to or removed from the shared directory (another
    // replica's rotation, an operator's new key in the Secret) are picked
    // up without a restart; a directory that cannot be used keeps the
    // last good keys serving.
    if config.tokens.keys_reload_secs > 0 {
        let ring = Arc::clone(exchanger.ring_arc());
        let every = Duration::from_secs(config.tokens.keys_reload_secs);
        tasks.every("key-reload", every, move || {
            if let Err(e) = ring.reload() {
                tracing::error!(error = %e, "re-reading the signing keys failed; the loaded keys keep serving");
            }
            std::future::ready(())
        });
    }

    // Health: NOT_SERVING while a trusted IdP's keys are past their allowed
    // staleness (`http.jwks_max_stale_secs`). Keys that are stale, or as
    // old as the allowance, are fetched again on every pass: a replica out
    // of the endpoints (or an idle one) gets no request that would.
    let readiness = tether_runtime::Readiness::new();
    let every = Duration::from_secs(config.http.jwks_min_refresh_secs.max(1));
    tasks.every("idp-key-health", every, {
        let exchanger = Arc::clone(&exchanger);
        let readiness = readiness.clone();
        move || {
            let exchanger = Arc::clone(&exchanger);
            let readiness = readiness.clone();
            async move {
                for entry in exchanger.issuers().iter() {
                    if entry.keys_need_fetch().await {
                        entry.refetch().await;
                    }
                    let check = format!("idp-keys {}", entry.issuer);
                    readiness.set(&check, !entry.keys_stale().await);
                }
            }
        }
    });

    let max = config.server.max_message_bytes;
    let grpc = IdentityExchangeServer::new(grpc::IdentityService::new(Arc::clone(&exchanger)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let oauth = http::router(exchanger, &config.oauth, &config.server.tls.trust_domain)?;
    let routes = Routes::from(oauth).add_service(grpc);
    let result = tether_runtime::server::serve_with_http_and_readiness(
        listener,
        routes,
        &[SERVICE_NAME],
        &config.server,
        &readiness,
        shutdown,
    )
    .await;
    tasks.stop(tether_runtime::tasks::STOP_DEADLINE).await;
    result?;
    Ok(())
}
