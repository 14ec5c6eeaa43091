//! Tether's credential issuer: just-in-time, session-bound credentials minted
//! from Vault/OpenBao dynamic secrets, served over gRPC
//! (`tether.credentials.v1.CredentialIssuer`).
//!
//! [`run`] is what the binary calls, and the tests through [`run_with`],
//! which also lends them the registry (see [`Handles`]): it opens the lease
//! registry, logs in to Vault, runs the reconciler once, starts the sweeper,
//! the Vault token upkeep and the session revocation list sync, and serves
//! on the given listener until `shutdown` resolves. See
//! `docs/design/002-lease-registry.md` for the guarantees.
//!
//! Issue and Renew act only for the session proven by the agent's delegated
//! token (`authorization: Bearer …` metadata), verified locally against the
//! identity exchange's keys and revocation list (`tether_token::Sessions`).

mod config;
mod dbsweep;
mod error;
mod lifecycle;
mod metrics;
mod registry;
mod revoker;
mod service;
mod vault;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tether_runtime::tasks::Tasks;
use tokio::net::TcpListener;
use tonic::service::Routes;

use tether_proto::credentials::v1::credential_issuer_server::{
    CredentialIssuerServer, SERVICE_NAME,
};

pub use config::{
    Config, DatabaseSweepConfig, Limits, Profile, PruningConfig, RevocationConfig, Secret,
    SessionsConfig, StoreConfig, TestHooks, VaultAuth, VaultConfig,
};
pub use error::IssuerError;
pub use registry::{LeaseRow, Pruned, Registry, Status as LeaseStatus};
pub use revoker::Metrics;
pub use service::CredentialIssuerService;
pub use vault::{Vault, VaultError};

/// Slack added to the Vault request timeout to get the issuing window: the
/// longest an Issue may take between writing its row and claiming its lease.
const ISSUING_SLACK: Duration = Duration::from_secs(1);

/// Installs the process-wide rustls provider (aws-lc) that reqwest and
/// sqlx's TLS need; a provider installed earlier is kept.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A started issuer: the gRPC service plus its background tasks.
#[derive(Debug)]
pub struct Issuer {
    service: CredentialIssuerService,
    registry: Registry,
    metrics: Arc<Metrics>,
    vault: Arc<Vault>,
    readiness: tether_runtime::Readiness,
    tasks: Tasks,
}

impl Issuer {
    /// Opens and migrates the registry, logs in to Vault (a failed login is
    /// retried in the background; requests fail UNAVAILABLE meanwhile), runs
    /// the reconciler once and starts the sweeper and token upkeep; fetches
    /// the identity exchange's keys and revocation list (also retried:
    /// Issue and Renew fail UNAVAILABLE until they are loaded) and starts
    /// keeping the list current.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        install_crypto_provider();
        let url = config.store.effective_url(config::STORE_FILE);
        let registry = Registry::open(&url, &config.store.pool_settings()).await?;
        tracing::info!(store = %tether_store::redact_url(&url), "lease registry ready");

        // Health is NOT_SERVING while the issuer cannot log in to Vault.
        let readiness = tether_runtime::Readiness::new();
        let vault = Arc::new(Vault::new(config.vault.clone(), readiness.clone())?);
        if let Err(e) = vault.login().await {
            tracing::warn!(error = %e, "vault login failed at start-up; retrying in the background");
        }
        let issuing_window = config.vault.request_timeout() * 2 + ISSUING_SLACK;
        let metrics = Arc::new(Metrics::default());
        crate::metrics::register(&metrics);
        let paths: BTreeSet<String> = config
            .profiles
            .values()
            .map(|p| p.vault_path.clone())
            .collect();
        let db_sweeps = config
            .profiles
            .iter()
            .filter_map(|(name, p)| {
                let sweep = p.database_sweep.clone()?;
                Some(dbsweep::DatabaseSweep::new(
                    name.clone(),
                    p.vault_path.clone(),
                    sweep,
                ))
            })
            .collect();
        let revoker = Arc::new(revoker::Revoker::new(
            registry.clone(),
            Arc::clone(&vault),
            config.revocation.clone(),
            issuing_window,
            config.vault.creation_timeout(),
            paths,
            db_sweeps,
            Arc::clone(&metrics),
        ));
        let mut tasks = Tasks::new();
        let (sessions, revocation_sync) = tether_token::Sessions::start(
            &config.sessions,
            &config.server.tls,
            tasks.signal().wait(),
        )
        .await
        .context("building the identity exchange clients")?;
        tasks.adopt("revocation-sync", revocation_sync);
        tasks.spawn(
            "revoker",
            Arc::clone(&revoker).run(tasks.signal().receiver()),
        );
        tasks.spawn(
            "vault-token",
            Arc::clone(&vault).maintain_token(tasks.signal().receiver()),
        );
        tasks.every("prune", config.pruning.interval(), {
            let (registry, pruning) = (registry.clone(), config.pruning);
            move || prune(registry.clone(), pruning)
        });
        tasks.every("registry-metrics", crate::metrics::REFRESH, {
            let registry = registry.clone();
            move || crate::metrics::refresh(registry.clone())
        });
        let service = CredentialIssuerService::new(
            sessions,
            config.profiles.clone(),
            config.limits,
            registry.clone(),
            Arc::clone(&vault),
            revoker,
            issuing_window,
            config.vault.request_timeout(),
            Duration::from_millis(config.revocation.revoke_call_budget_ms),
            config.test_hooks,
        );
        Ok(Self {
            service,
            registry,
            metrics,
            vault,
            readiness,
            tasks,
        })
    }

    pub fn service(&self) -> CredentialIssuerService {
        self.service.clone()
    }

    /// The lease registry (tests read it directly).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the issuer serves on its port: the gRPC service, and
    /// `GET /metrics` (Prometheus text format), the same as the ops port's
    /// (`server.ops_listen`, where Prometheus should scrape: no client
    /// certificate needed there).
    pub fn routes(&self, max_message_bytes: usize) -> Routes {
        let http = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        tether_runtime::metrics::CONTENT_TYPE,
                    )],
                    tether_runtime::metrics::render(),
                )
            }),
        );
        Routes::from(http).add_service(
            CredentialIssuerServer::new(self.service())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
    }

    /// The Vault client (its login and token-renewal counters).
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// What gRPC health reports: SERVING while the last Vault login
    /// succeeded.
    pub fn readiness(&self) -> &tether_runtime::Readiness {
        &self.readiness
    }

    /// Stops the background tasks: signals them, and waits for them at
    /// most [`tether_runtime::tasks::STOP_DEADLINE`] before aborting the
    /// late ones. (Dropping an issuer aborts them at once.)
    pub async fn stop(self) {
        self.tasks.stop(tether_runtime::tasks::STOP_DEADLINE).await;
    }
}

/// One pruning pass (every `pruning.interval_secs`). Every replica
/// prunes: the deletes are bounded and by key, so two passes at once only
/// share the work.
async fn prune(registry: Registry, pruning: PruningConfig) {
    match registry
        .prune(
            revoker::now_ms(),
            pruning.retention_ms(),
            pruning.batch_size,
        )
        .await
    {
        Ok(p) if p != Pruned::default() => tracing::info!(
            leases = p.leases,
            sessions = p.sessions,
            "pruned the lease registry"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning the lease registry failed; will retry"),
    }
}

/// Starts the issuer and serves gRPC on `listener` until `shutdown`
/// resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, |_| {}).await
}

/// What a started issuer lends whoever embeds it: the lease registry, the
/// counters and the Vault client. The test sandbox reads them to assert on
/// what the issuer wrote; they stay usable after [`run`] returns (the
/// registry's pool is not closed), so a test can look at the registry of
/// an issuer it stopped.
#[derive(Debug, Clone)]
pub struct Handles {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub vault: Arc<Vault>,
}

/// [`run`], handing `started` the issuer's [`Handles`] once it has started,
/// before it serves. The binary calls [`run`]; the test sandbox calls this,
/// so both go through the same start-up, serving and stop.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: impl FnOnce(Handles),
) -> anyhow::Result<()> {
    let issuer = Issuer::start(&config).await?;
    started(Handles {
        registry: issuer.registry.clone(),
        metrics: Arc::clone(&issuer.metrics),
        vault: Arc::clone(&issuer.vault),
    });
    let routes = issuer.routes(config.server.max_message_bytes);
    let served = tether_runtime::server::serve_with_http_and_readiness(
        listener,
        routes,
        &[SERVICE_NAME],
        &config.server,
        issuer.readiness(),
        shutdown,
    )
    .await;
    issuer.stop().await;
    served?;
    Ok(())
}
