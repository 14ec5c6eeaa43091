//! An approval orchestrator on loopback, started through the same
//! `serve` its binary's `run` calls, against the real test IdP (CIBA poll
//! and ping, its test device endpoints), a real identity exchange whose
//! delegated tokens bind every call to a session, and SQLite or a real
//! PostgreSQL ticket store.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tempfile::TempDir;
use tether_ciba_orchestrator::ciba::CibaConfig;
use tether_ciba_orchestrator::{
    Config, FatigueLimits, GrantsConfig, PingConfig, Store, StoreConfig, TicketsConfig,
};
use tether_proto::approval::v1 as pb;
use tether_proto::approval::v1::approval_orchestrator_client::ApprovalOrchestratorClient;
use tether_runtime::ServerConfig;
use tether_runtime::client::InternalChannel;

use crate::Running;
use crate::idp::Idp;
use crate::issuer::{DelegatedSession, SessionAuthority};
use crate::pki::TestPki;

/// The orchestrator's service name (its certificate's SPIFFE ID path).
pub const SERVICE: &str = "ciba-orchestrator";

/// The test IdP's poll-mode CIBA client and its secret.
pub const POLL_CLIENT: (&str, &str) = ("tether-ciba", "tether-ciba-secret");
/// The test IdP's ping-mode CIBA client and its secret.
pub const PING_CLIENT: (&str, &str) = ("tether-ciba-ping", "tether-ciba-ping-secret");

/// The action and resource most tests ask about.
pub const OFFBOARD: &str = r#"Hr::Action::"offboard""#;
pub const EMPLOYEE: &str = r#"Hr::Employee::"1042""#;

/// A test IdP that answers CIBA with `interval: 1` (polling tests take
/// seconds, not minutes), and a session authority (identity exchange,
/// alice logged in) on it: the user approvals ask is the session's user.
pub async fn authority() -> anyhow::Result<SessionAuthority> {
    let idp = Idp::start_with_config(serde_json::json!({ "cibaInterval": 1 }))
        .await
        .context("starting the test IdP")?;
    SessionAuthority::start_on(idp, |builder| builder).await
}

/// CIBA delivery as the sandbox configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Poll,
    /// Pings on a listener of their own (plain HTTP on loopback; the test
    /// IdP is told to deliver there).
    Ping,
}

/// Builds an [`ApprovalsSandbox`].
#[derive(Debug, Clone)]
pub struct ApprovalsSandboxBuilder {
    idp_issuer: String,
    sessions: tether_token::SessionsConfig,
    delivery: Delivery,
    store_url: Option<String>,
    grants: GrantsConfig,
    limits: FatigueLimits,
    tickets: TicketsConfig,
    ciba_extra: serde_json::Value,
    server: ServerConfig,
    pki: Arc<TestPki>,
}

impl ApprovalsSandboxBuilder {
    pub fn new(authority: &SessionAuthority) -> anyhow::Result<Self> {
        Ok(Self {
            idp_issuer: authority.idp().issuer().to_owned(),
            sessions: authority.sessions_config(),
            delivery: Delivery::Poll,
            store_url: None,
            grants: GrantsConfig::default(),
            limits: FatigueLimits::default(),
            tickets: TicketsConfig {
                keepalive_secs: 15,
                owner_lease_ms: 3_000,
                claim_interval_ms: 500,
                watch_poll_ms: 200,
                ping_fallback_secs: 30,
            },
            ciba_extra: serde_json::json!({}),
            server: ServerConfig::default(),
            pki: Arc::clone(authority.identity().pki()),
        })
    }

    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// `postgres://…` (default: SQLite in the sandbox's directory).
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store_url = Some(url.into());
        self
    }

    pub fn grants(mut self, ttl_secs: u64, uses: u32) -> Self {
        self.grants = GrantsConfig { ttl_secs, uses };
        self
    }

    pub fn limits(mut self, limits: FatigueLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn tickets(mut self, tickets: TicketsConfig) -> Self {
        self.tickets = tickets;
        self
    }

    /// More `[ciba]` keys (e.g. `requested_expiry_secs`).
    pub fn ciba(mut self, extra: serde_json::Value) -> Self {
        self.ciba_extra = extra;
        self
    }

    pub fn server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    /// The configuration `start` uses, with its data directory and (ping
    /// mode) the URL pings are delivered to.
    pub fn config(
        &self,
        data_dir: &std::path::Path,
        ping: Option<SocketAddr>,
    ) -> anyhow::Result<Config> {
        let mut server = self.server.clone();
        if !server.tls.insecure_plaintext {
            server.tls = self.pki.tls(SERVICE)?;
        }
        let (client_id, secret) = match self.delivery {
            Delivery::Poll => POLL_CLIENT,
            Delivery::Ping => PING_CLIENT,
        };
        let secret_file = data_dir.join("ciba-client-secret");
        std::fs::write(&secret_file, secret).context("writing the CIBA client secret")?;
        let mut ciba = serde_json::json!({
            "issuer": self.idp_issuer,
            "client_id": client_id,
            "client_auth": { "method": "client_secret_basic", "secret_file": secret_file },
            "delivery_mode": match self.delivery { Delivery::Poll => "poll", Delivery::Ping => "ping" },
        });
        if let (Some(addr), Some(ciba)) = (ping, ciba.as_object_mut()) {
            ciba.insert(
                "notification_endpoint".into(),
                format!(
                    "http://{addr}{}",
                    tether_ciba_orchestrator::GRPC_PORT_PING_PATH
                )
                .into(),
            );
        }
        if let (Some(ciba), Some(extra)) = (ciba.as_object_mut(), self.ciba_extra.as_object()) {
            ciba.extend(extra.clone());
        }
        let ciba: CibaConfig = serde_json::from_value(ciba).context("the [ciba] table")?;
        Ok(Config {
            server,
            ciba,
            ping: PingConfig { listen: ping },
            store: StoreConfig {
                url: self.store_url.clone(),
                data_dir: data_dir.to_path_buf(),
                max_connections: 8,
            },
            sessions: self.sessions.clone(),
            grants: self.grants,
            limits: self.limits,
            tickets: self.tickets,
        })
    }

    /// Starts the orchestrator on 127.0.0.1:0 (pings, in ping mode, on a
    /// second port the test IdP is pointed at).
    pub async fn start(self, idp: &Idp) -> anyhow::Result<ApprovalsSandbox> {
        let dir = tempfile::tempdir().context("creating the data directory")?;
        self.start_in(dir, idp).await
    }

    /// Starts on an existing data directory (a "restart").
    pub async fn start_in(self, dir: TempDir, idp: &Idp) -> anyhow::Result<ApprovalsSandbox> {
        let ping_listener = match self.delivery {
            Delivery::Ping => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
            Delivery::Poll => None,
        };
        let ping_addr = ping_listener
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?;
        let config = self.config(dir.path(), ping_addr)?;
        tether_runtime::ServiceConfig::validate(&config).context("sandbox configuration")?;
        if let Some(addr) = ping_addr {
            idp.set_ping_target(
                PING_CLIENT.0,
                &format!(
                    "http://{addr}{}",
                    tether_ciba_orchestrator::GRPC_PORT_PING_PATH
                ),
            )
            .await?;
        }
        let store_url = config
            .store
            .effective_url(tether_ciba_orchestrator::STORE_FILE);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let run_config = config.clone();
        let mut running = Running::spawn(|shutdown| {
            tether_ciba_orchestrator::serve(run_config, listener, ping_listener, shutdown)
        });
        // The facade is the orchestrator's only caller.
        let channel = if config.server.tls.insecure_plaintext {
            tether_runtime::client::Clients::new(&config.server.tls)?
                .grpc(&format!("http://{addr}"), SERVICE)?
        } else {
            self.pki.channel("agent-facade", addr, SERVICE)?
        };
        running.wait_serving(channel.clone()).await?;
        // A second pool on the same store, for tests to read what was
        // written (migrations already ran).
        let pool = tether_store::open(
            &store_url,
            "ciba_orchestrator",
            &tether_store::PoolSettings::default(),
        )
        .await
        .context("opening the ticket store for inspection")?;
        Ok(ApprovalsSandbox {
            dir: Some(dir),
            addr,
            ping_addr,
            channel,
            pki: Arc::clone(&self.pki),
            store: Store::new(pool.clone()),
            pool,
            running,
            builder: self,
        })
    }
}

/// A running orchestrator. Stops when dropped.
#[derive(Debug)]
pub struct ApprovalsSandbox {
    dir: Option<TempDir>,
    addr: SocketAddr,
    ping_addr: Option<SocketAddr>,
    channel: InternalChannel,
    pki: Arc<TestPki>,
    store: Store,
    pool: sqlx::AnyPool,
    running: Running,
    builder: ApprovalsSandboxBuilder,
}

impl ApprovalsSandbox {
    pub fn builder(authority: &SessionAuthority) -> anyhow::Result<ApprovalsSandboxBuilder> {
        ApprovalsSandboxBuilder::new(authority)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the IdP's pings are received (ping mode).
    pub fn ping_url(&self) -> Option<String> {
        self.ping_addr.map(|a| {
            format!(
                "http://{a}{}",
                tether_ciba_orchestrator::GRPC_PORT_PING_PATH
            )
        })
    }

    /// A client as the agent facade (the orchestrator's only caller).
    pub fn client(&self) -> ApprovalOrchestratorClient<InternalChannel> {
        ApprovalOrchestratorClient::new(self.channel.clone())
    }

    /// A client presenting `identity`'s certificate.
    pub fn client_as(
        &self,
        identity: &str,
    ) -> anyhow::Result<ApprovalOrchestratorClient<InternalChannel>> {
        Ok(ApprovalOrchestratorClient::new(
            self.pki.channel(identity, self.addr, SERVICE)?,
        ))
    }

    /// The tickets and grants as the orchestrator wrote them.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The same store, for raw counts.
    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }

    /// `(tickets, grants)` rows in the store.
    pub async fn counts(&self) -> anyhow::Result<(i64, i64)> {
        let tickets: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM approval_tickets")
            .fetch_one(&self.pool)
            .await?;
        let grants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM approval_grants")
            .fetch_one(&self.pool)
            .await?;
        Ok((tickets, grants))
    }

    /// Stops the orchestrator (its PENDING tickets stay PENDING) and
    /// returns what restarts it on the same store.
    pub async fn shutdown(mut self) -> anyhow::Result<(TempDir, ApprovalsSandboxBuilder)> {
        self.running.stop().await?;
        self.pool.close().await;
        let dir = self.dir.take().context("data directory already taken")?;
        Ok((dir, self.builder.clone()))
    }
}

/// A `RequestApproval` for `session` (its user, agent and intent), for
/// `action` on `resource`, ending with the session's token.
pub fn approval_request(
    session: &DelegatedSession,
    action: &str,
    resource: &str,
) -> pb::RequestApprovalRequest {
    let claims = &session.claims;
    pb::RequestApprovalRequest {
        session_id: claims.sid.clone(),
        user_subject: claims.sub.clone(),
        agent_id: claims.act.sub.clone(),
        action: action.into(),
        resource: resource.into(),
        intent: crate::issuer::INTENT.into(),
        binding_message: "Offboard employee 1042?".into(),
        delivery_mode: pb::DeliveryMode::Unspecified.into(),
        requested_expiry: None,
        session_expires_at: Some(prost_types::Timestamp {
            seconds: claims.exp,
            nanos: 0,
        }),
        policy_ids: vec!["offboard-needs-approval".into()],
        policy_version: "sha256:test".into(),
    }
}

impl ApprovalsSandbox {
    /// Stops serving (an unreachable approval service) while the stack that
    /// owns the sandbox keeps running; the store stays readable
    /// ([`ApprovalsSandbox::counts`]).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}
