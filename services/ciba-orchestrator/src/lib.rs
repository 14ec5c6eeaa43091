//! Tether's approval orchestrator: when the policy decision point answers
//! APPROVAL_REQUIRED, the session's user is asked out of band, on their own
//! device, with OpenID Connect Client-Initiated Backchannel Authentication
//! (CIBA Core 1.0), and only an answer verified end to end counts
//! (`tether.approval.v1.ApprovalOrchestrator`).
//!
//! [`run`] is what both the binary and the tests call: it opens the ticket
//! store, fetches the IdP's discovery document, loads the identity
//! exchange's keys and revocation list, resumes the PENDING tickets it
//! finds, and serves gRPC (and CIBA pings) until `shutdown` resolves.
//!
//! - [`ciba`]: the CIBA client (poll and ping, `private_key_jwt` and
//!   `client_secret_basic`, ID token verification).
//! - Tickets and grants are durable rows; every state change is one
//!   conditional write (`docs/design/005-approval-tickets.md`).
//! - Push-bombing and approval-fatigue limits are checked in the same
//!   transaction that creates a ticket, serialized per user, so they hold
//!   across replicas on PostgreSQL.

pub mod ciba;
mod config;
mod driver;
mod error;
mod ping;
mod service;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tether_proto::approval::v1::approval_orchestrator_server::{
    ApprovalOrchestratorServer, SERVICE_NAME,
};
use tether_runtime::tasks::Tasks;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use config::{
    Config, FatigueLimits, GRPC_PORT_PING_PATH, GrantsConfig, PingConfig, STORE_FILE, StoreConfig,
    TicketsConfig,
};
pub use driver::Drivers;
pub use error::ApprovalError;
pub use service::ApprovalService;
pub use store::{GrantRow, State as TicketState, Store, TicketRow};

/// How long [`Orchestrator::stop`] waits for ticket drivers and background
/// tasks before aborting them.
const STOP_DEADLINE: Duration = tether_runtime::tasks::STOP_DEADLINE;

/// Installs the process-wide rustls provider (aws-lc); a provider
/// installed earlier is kept.
fn install_crypto_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A started orchestrator: the gRPC service, the ticket drivers and the
/// background tasks.
#[derive(Debug)]
pub struct Orchestrator {
    service: ApprovalService,
    store: Store,
    drivers: Drivers,
    ping_path: Option<String>,
    /// Set when shutdown starts: open WatchApproval streams end with
    /// UNAVAILABLE at once instead of holding the drain.
    draining: Arc<tokio::sync::watch::Sender<bool>>,
    tasks: Tasks,
}

impl Orchestrator {
    /// Opens and migrates the ticket store, builds the CIBA client (the
    /// IdP's discovery document is fetched now and retried on first use if
    /// it fails), starts the session verifier, resumes the PENDING tickets
    /// and starts the claim loop.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        install_crypto_provider();
        let url = config.store.effective_url(config::STORE_FILE);
        let pool = tether_store::open(&url, "ciba_orchestrator", &config.store.pool_settings())
            .await
            .context("opening the ticket store")?;
        tether_store::migrate(&pool, &store::MIGRATOR)
            .await
            .context("migrating the ticket store")?;
        let store = Store::new(pool);
        tracing::info!(store = %tether_store::redact_url(&url), "ticket store ready");

        let ciba = ciba::CibaClient::new(&config.ciba).context("building the CIBA client")?;
        if let Err(e) = ciba.discover().await {
            tracing::warn!(error = %e, issuer = %config.ciba.issuer, "the IdP's discovery document is not reachable at start-up; approvals fail UNAVAILABLE until it is");
        }
        let mut tasks = Tasks::new();
        let (draining, drained) = tokio::sync::watch::channel(false);
        let (sessions, revocation_sync) = tether_token::Sessions::start(
            &config.sessions,
            &config.server.tls,
            tasks.signal().wait(),
        )
        .await
        .context("building the identity exchange clients")?;
        let drivers = Drivers::new(
            store.clone(),
            ciba,
            config.grants,
            config.tickets,
            tasks.signal().receiver(),
        );
        // With SQLite only one replica runs: every PENDING ticket is ours.
        let single_replica = matches!(
            tether_store::Backend::of(&url),
            Some(tether_store::Backend::Sqlite)
        );
        if let Err(e) = drivers.claim(single_replica).await {
            tracing::warn!(error = %e, "could not resume pending tickets at start-up; the claim loop retries");
        }
        tasks.adopt("revocation-sync", revocation_sync);
        tasks.spawn("ticket-claims", drivers.clone().run_claims());
        let service = ApprovalService::new(
            sessions,
            store.clone(),
            drivers.clone(),
            config.limits,
            config.tickets.keepalive(),
            // With SQLite every change is made by this replica and announced
            // to its watchers at once: re-reading on a timer as well would
            // only cost a store read per watcher per `watch_poll`.
            if single_replica {
                config.tickets.keepalive()
            } else {
                config.tickets.watch_poll()
            },
            drained,
        );
        let ping_path = match config.ciba.mode()? {
            ciba::DeliveryMode::Ping => Some(config.ping_path()?),
            ciba::DeliveryMode::Poll => None,
        };
        Ok(Self {
            service,
            store,
            drivers,
            ping_path,
            draining: Arc::new(draining),
            tasks,
        })
    }

    pub fn service(&self) -> ApprovalService {
        self.service.clone()
    }

    /// The ticket store (tests read it directly).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The ticket drivers of this replica.
    pub fn drivers(&self) -> &Drivers {
        &self.drivers
    }

    /// The CIBA ping endpoint, in ping mode.
    pub fn ping_router(&self) -> Option<axum::Router> {
        self.ping_path
            .as_deref()
            .map(|path| ping::router(path, self.store.clone(), self.drivers.clone()))
    }

    /// What is served on the gRPC port: the service, and the ping endpoint
    /// when pings share the port.
    pub fn routes(&self, max_message_bytes: usize, pings_here: bool) -> Routes {
        let grpc = ApprovalOrchestratorServer::new(self.service())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        match self.ping_router().filter(|_| pings_here) {
            Some(http) => Routes::from(http).add_service(grpc),
            None => Routes::new(grpc),
        }
    }

    /// Ends open WatchApproval streams (UNAVAILABLE: "watch again"); call
    /// when shutdown starts, so they do not hold the drain.
    pub fn start_draining(&self) {
        let _ = self.draining.send(true);
    }

    /// Stops the drivers and background tasks; a PENDING ticket stays
    /// PENDING and is resumed by the next start (or another replica).
    pub async fn stop(self) {
        // The drivers watch the tasks' signal: raise it, let them finish,
        // then the tasks.
        self.tasks.request_stop();
        self.drivers.join(STOP_DEADLINE).await;
        self.tasks.stop(STOP_DEADLINE).await;
    }
}

/// Starts the orchestrator and serves gRPC on `listener` (and pings on
/// `ping.listen`, bound here, or on the same port) until `shutdown`
/// resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ping_listener = match config.ping.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the ping listener `{addr}`"))?,
        ),
        None => None,
    };
    serve(config, listener, ping_listener, shutdown).await
}

/// [`run`] with the ping listener already bound (`None`: pings share the
/// gRPC port), so tests can start it on port 0.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    ping_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let orchestrator = Orchestrator::start(&config).await?;
    let mut listeners = Tasks::new();
    let pings_here = ping_listener.is_none();
    if let (Some(ping_listener), Some(router)) = (ping_listener, orchestrator.ping_router()) {
        tracing::info!(addr = ?ping_listener.local_addr().ok(), "serving CIBA pings (plain HTTP: terminate TLS in front)");
        let stop = listeners.signal().wait();
        listeners.spawn("ping-listener", async move {
            let served = axum::serve(ping_listener, router)
                .with_graceful_shutdown(stop)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the ping listener stopped with an error");
            }
        });
    }
    let routes = orchestrator.routes(config.server.max_message_bytes, pings_here);
    let draining = Arc::clone(&orchestrator.draining);
    let shutdown = async move {
        shutdown.await;
        let _ = draining.send(true);
    };
    let served = tether_runtime::server::serve_with_http(
        listener,
        routes,
        &[SERVICE_NAME],
        &config.server,
        shutdown,
    )
    .await;
    listeners.stop(STOP_DEADLINE).await;
    orchestrator.stop().await;
    served?;
    Ok(())
}
