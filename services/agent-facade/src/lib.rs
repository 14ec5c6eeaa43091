//! Tether's agent facade: the one API an agent calls
//! (`tether.facade.v1.AgentGateway`). It is the policy enforcement point:
//! it verifies the agent's delegated token, builds the policy question from
//! what Tether knows (never from what the agent claims), and composes the
//! identity exchange, the policy decision point, the approval orchestrator
//! and the credential issuer into the flows of the design. It holds no
//! policy and no credential logic of its own; every failure is a deny.
//!
//! [`run`] is what both the binary and the tests call.

mod admin;
mod alerts;
mod audit;
mod config;
mod decision;
mod error;
mod monitoring;
mod service;

use std::future::Future;

use anyhow::Context as _;
use tether_proto::approval::v1::approval_orchestrator_client::ApprovalOrchestratorClient;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::facade::v1::agent_gateway_server::{AgentGatewayServer, SERVICE_NAME};
use tether_proto::facade::v1::session_admin_server::{
    SERVICE_NAME as ADMIN_SERVICE_NAME, SessionAdminServer,
};
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use alerts::{WebhookConfig, sign as sign_alert};
pub use config::{
    ApprovalsConfig, AuditConfig, ClockConfig, Config, NetworkConfig, PolicyConfig, ProfileConfig,
    RiskConfig, Upstreams as UpstreamsConfig, Zone,
};
pub use decision::RESERVED_CONTEXT_KEYS;
pub use error::FacadeError;
pub use monitoring::{MonitoringConfig, QuarantineKind, Risk, Rule as MonitoringRule};
pub use service::FacadeService;

/// Installs the process-wide rustls provider (aws-lc); a provider
/// installed earlier is kept.
fn install_crypto_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A started facade: the service and its background tasks (the session
/// revocation list sync, the audit log's writer, the monitoring store's
/// pruning, the alert webhook's sender).
#[derive(Debug)]
pub struct Facade {
    service: FacadeService,
    tasks: tether_runtime::tasks::Tasks,
}

impl Facade {
    /// Loads Tether's entity data, builds the clients of the four internal
    /// services (mTLS by SPIFFE identity, deadlines, trace context), and
    /// starts verifying delegated tokens (keys and revocation list from the
    /// identity exchange; calls fail UNAVAILABLE until they are loaded).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        install_crypto_provider();
        let entities = match &config.policy.entities_file {
            Some(path) => decision::EntityData::load(path)?,
            None => decision::EntityData::default(),
        };
        tracing::info!(entities = entities.count(), "entity data loaded");
        let clients = tether_runtime::client::Clients::new(&config.server.tls)
            .context("building the internal clients")?
            .with_timeouts(
                std::time::Duration::from_secs(5),
                config.upstreams.timeout(),
            );
        let u = &config.upstreams;
        let upstreams = service::Upstreams {
            identity: IdentityExchangeClient::new(
                clients.grpc(&u.identity_exchange, "identity-exchange")?,
            ),
            policy: PolicyDecisionClient::new(clients.grpc(&u.policy_decision, "policy-decision")?),
            credentials: CredentialIssuerClient::new(
                clients.grpc(&u.credential_issuer, "credential-issuer")?,
            ),
            approvals: ApprovalOrchestratorClient::new(
                clients.grpc(&u.ciba_orchestrator, "ciba-orchestrator")?,
            ),
        };
        let mut tasks = tether_runtime::tasks::Tasks::new();
        let (audit, audit_writer) = audit::Audit::start(&config.audit, tasks.signal().receiver())
            .await
            .context("starting the audit log")?;
        let (monitor, pruning) = monitoring::Monitor::start(
            &config.monitoring,
            config.risk.baseline_score,
            tasks.signal().receiver(),
        )
        .await
        .context("starting the risk monitoring")?;
        let (alerts, webhook) = alerts::Alerts::start(
            config
                .monitoring
                .webhook
                .as_ref()
                .filter(|_| config.monitoring.enabled),
            tasks.signal().receiver(),
        )
        .context("starting the quarantine alerts")?;
        let (sessions, revocation_sync) = tether_token::Sessions::start(
            &config.sessions,
            &config.server.tls,
            tasks.signal().wait(),
        )
        .await
        .context("building the identity exchange clients")?;
        tasks.adopt("revocation-sync", revocation_sync);
        let named = [
            ("audit-writer", audit_writer),
            ("monitoring-pruning", pruning),
            ("alert-webhook", webhook),
        ];
        for (name, task) in named {
            if let Some(task) = task {
                tasks.adopt(name, task);
            }
        }
        let service = FacadeService::new(
            config, sessions, upstreams, entities, audit, monitor, alerts,
        );
        Ok(Self { service, tasks })
    }

    /// What is served: the agent gateway, and the operators' session
    /// administration (see [`SERVICE_NAMES`]).
    pub fn routes(&self, max_message_bytes: usize) -> Routes {
        Routes::new(
            AgentGatewayServer::new(self.service.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
        .add_service(
            SessionAdminServer::new(self.service.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
    }

    /// Stops the revocation list sync and the audit writer (which writes
    /// what is queued and publishes a last checkpoint first).
    pub async fn stop(self) {
        self.tasks.stop(tether_runtime::tasks::STOP_DEADLINE).await;
    }
}

/// The gRPC services the facade serves: reported by health, and the rows
/// of the caller table that apply (agents' calls are token-authenticated;
/// `SessionAdmin` is for the `admin` identity only).
pub const SERVICE_NAMES: &[&str] = &[SERVICE_NAME, ADMIN_SERVICE_NAME];

/// Starts the facade and serves on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = config.server.clone();
    let facade = Facade::start(config).await?;
    let routes = facade.routes(server.max_message_bytes);
    let served =
        tether_runtime::server::serve(listener, routes, SERVICE_NAMES, &server, shutdown).await;
    facade.stop().await;
    served?;
    Ok(())
}
