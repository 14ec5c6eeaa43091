//! The whole stack on loopback, for the agent facade's tests: the test IdP
//! (CIBA included), a real identity exchange, the policy decision point
//! with the HR pack, OpenBao with PostgreSQL behind a real credential
//! issuer, the approval orchestrator, and the facade itself — every hop
//! mTLS, every service started through its own `run`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tempfile::TempDir;
use tether_agent_facade::{
    Config, NetworkConfig, PolicyConfig, ProfileConfig, UpstreamsConfig, Zone,
};
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;
use tether_runtime::ServerConfig;
use tether_runtime::client::InternalChannel;

use crate::Running;
use crate::approvals::{ApprovalsSandbox, ApprovalsSandboxBuilder};
use crate::issuer::{CredentialDeps, IssuerSandbox, SessionAuthority, hr_profiles};
use crate::pdp::PdpSandbox;
use crate::pki::TestPki;

/// The facade's service name (its certificate's SPIFFE ID path).
pub const SERVICE: &str = "agent-facade";

/// The intent every facade test session declares.
pub const INTENT: &str = crate::issuer::INTENT;

/// Tether's entity data for the HR pack: employee 1042 in sales.
pub const HR_ENTITIES: &str =
    r#"[{"uid":{"type":"Employee","id":"1042"},"attrs":{"department":"sales"},"parents":[]}]"#;

/// The HR pack with the office-hours condition removed from the read
/// permit, so that the tests do not depend on the time of day they run at
/// (the condition itself is covered by the PDP's tests and `cases.yaml`).
pub fn hr_pack_any_hour(into: &Path) -> anyhow::Result<PathBuf> {
    let pack = into.join("hr-any-hour");
    std::fs::create_dir_all(&pack)?;
    crate::copy_dir(&crate::workspace_root().join("examples/hr"), &pack)?;
    let policies = pack.join("hr.cedar");
    let text = std::fs::read_to_string(&policies)?;
    let relaxed = text.replace(
        "  context.now.weekday >= 1 && context.now.weekday <= 5 &&\n  context.now.hour >= 9 && context.now.hour < 18\n",
        "  true\n",
    );
    anyhow::ensure!(relaxed != text, "the HR pack's read permit changed shape");
    std::fs::write(&policies, relaxed)?;
    let _ = std::fs::remove_file(pack.join("cases.yaml"));
    Ok(pack)
}

/// Builds a [`FacadeStack`].
pub struct FacadeStackBuilder {
    pack: Option<PathBuf>,
    approvals: Box<dyn FnOnce(ApprovalsSandboxBuilder) -> ApprovalsSandboxBuilder + Send>,
    configure: Box<dyn FnOnce(&mut Config) + Send>,
    default_ttl_secs: u64,
    issuer_hooks: tether_credential_issuer::TestHooks,
    issuer_limits: tether_credential_issuer::Limits,
}

impl std::fmt::Debug for FacadeStackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacadeStackBuilder")
            .field("pack", &self.pack)
            .finish_non_exhaustive()
    }
}

impl Default for FacadeStackBuilder {
    fn default() -> Self {
        Self {
            pack: None,
            approvals: Box::new(|b| b),
            configure: Box::new(|_| {}),
            default_ttl_secs: 600,
            issuer_hooks: tether_credential_issuer::TestHooks::default(),
            issuer_limits: tether_credential_issuer::Limits::default(),
        }
    }
}

impl FacadeStackBuilder {
    /// The policy pack (default: the HR pack without office hours).
    pub fn pack(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pack = Some(dir.into());
        self
    }

    /// Adjusts the approval orchestrator (limits, grants, delivery).
    pub fn approvals(
        mut self,
        f: impl FnOnce(ApprovalsSandboxBuilder) -> ApprovalsSandboxBuilder + Send + 'static,
    ) -> Self {
        self.approvals = Box::new(f);
        self
    }

    /// Adjusts the facade's configuration before it starts.
    pub fn configure(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.configure = Box::new(f);
        self
    }

    /// The credential issuer's test-only fail points (e.g. a pause between
    /// Vault's issuance and the reply).
    pub fn issuer_hooks(mut self, hooks: tether_credential_issuer::TestHooks) -> Self {
        self.issuer_hooks = hooks;
        self
    }

    /// The credential issuer's limits (e.g. live leases per session).
    pub fn issuer_limits(mut self, limits: tether_credential_issuer::Limits) -> Self {
        self.issuer_limits = limits;
        self
    }

    pub async fn start(self) -> anyhow::Result<FacadeStack> {
        let dir = tempfile::tempdir().context("creating the stack directory")?;
        let (deps, authority) = tokio::join!(
            CredentialDeps::start(self.default_ttl_secs),
            crate::approvals::authority()
        );
        let deps = deps.context("starting OpenBao and PostgreSQL")?;
        let authority = authority.context("starting the IdP and the identity exchange")?;
        let pki = Arc::clone(authority.identity().pki());
        let pack = match self.pack {
            Some(pack) => pack,
            None => hr_pack_any_hour(dir.path())?,
        };
        let pdp = PdpSandbox::builder()
            .pack(pack)
            .pki(Arc::clone(&pki))
            .start()
            .await
            .context("starting the policy decision point")?;
        let issuer = IssuerSandbox::builder(deps.bao.addr(), authority.identity())
            .sessions(authority.sessions_config())
            .profiles(hr_profiles(600))
            .test_hooks(self.issuer_hooks)
            .limits(self.issuer_limits)
            .start()
            .await
            .context("starting the credential issuer")?;
        let approvals = (self.approvals)(ApprovalsSandbox::builder(&authority)?)
            .start(authority.idp())
            .await
            .context("starting the approval orchestrator")?;

        let entities = dir.path().join("entities.json");
        std::fs::write(&entities, HR_ENTITIES)?;
        let mut config = Config {
            server: ServerConfig {
                tls: pki.tls(SERVICE)?,
                ..ServerConfig::default()
            },
            upstreams: UpstreamsConfig {
                identity_exchange: authority.identity().issuer().to_owned(),
                policy_decision: format!("https://{}", pdp.addr()),
                credential_issuer: format!("https://{}", issuer.addr()),
                ciba_orchestrator: format!("https://{}", approvals.addr()),
                timeout_ms: 5_000,
            },
            sessions: authority.sessions_config(),
            policy: PolicyConfig {
                entities_file: Some(entities),
                ..PolicyConfig::default()
            },
            network: NetworkConfig {
                zones: vec![Zone {
                    name: "corp".into(),
                    cidrs: vec!["127.0.0.0/8".parse()?],
                    trusted: true,
                }],
                ..NetworkConfig::default()
            },
            clock: tether_agent_facade::ClockConfig::default(),
            risk: tether_agent_facade::RiskConfig::default(),
            approvals: tether_agent_facade::ApprovalsConfig::default(),
            // The audit log in the stack's directory (SQLite, key generated
            // on start); checkpoints every second so tests need not wait.
            audit: tether_agent_facade::AuditConfig {
                data_dir: dir.path().join("audit"),
                checkpoint_interval_secs: 1,
                ..tether_agent_facade::AuditConfig::default()
            },
            // Off unless a test turns it on (`configure`).
            monitoring: tether_agent_facade::MonitoringConfig::default(),
            profiles: BTreeMap::from([
                (
                    "hr-read".to_owned(),
                    ProfileConfig {
                        actions: vec![r#"Action::"read""#.into()],
                        resource_types: vec!["Employee".into()],
                    },
                ),
                (
                    "hr-write".to_owned(),
                    ProfileConfig {
                        actions: vec![
                            r#"Action::"offboard""#.into(),
                            r#"Action::"update_salary""#.into(),
                        ],
                        resource_types: vec!["Employee".into()],
                    },
                ),
            ]),
        };
        (self.configure)(&mut config);
        tether_runtime::ServiceConfig::validate(&config).context("facade configuration")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let run_config = config.clone();
        let mut running =
            Running::spawn(|shutdown| tether_agent_facade::run(run_config, listener, shutdown));
        // Health is open to callers without a certificate, like agents.
        let channel = pki.anonymous_channel(addr)?;
        running.wait_serving(channel.clone()).await?;
        Ok(FacadeStack {
            running,
            addr,
            channel,
            config,
            approvals,
            issuer,
            pdp,
            authority,
            deps,
            pki,
            _dir: dir,
        })
    }
}

/// The running stack. Field order is drop order: the facade stops first.
#[derive(Debug)]
pub struct FacadeStack {
    running: Running,
    addr: SocketAddr,
    channel: InternalChannel,
    config: Config,
    pub approvals: ApprovalsSandbox,
    pub issuer: IssuerSandbox,
    pub pdp: PdpSandbox,
    pub authority: SessionAuthority,
    pub deps: CredentialDeps,
    pki: Arc<TestPki>,
    _dir: TempDir,
}

impl FacadeStack {
    pub fn builder() -> FacadeStackBuilder {
        FacadeStackBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The facade's configuration as started.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    /// An agent's client: TLS that trusts the CA, no client certificate.
    pub fn client(&self) -> AgentGatewayClient<InternalChannel> {
        AgentGatewayClient::new(self.channel.clone())
    }

    /// StartSession for alice and `hr-assistant`, declaring [`INTENT`].
    pub fn start_request(&self) -> anyhow::Result<pb::StartSessionRequest> {
        Ok(pb::StartSessionRequest {
            user_token: self.authority.user_token().to_owned(),
            user_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            agent_assertion: self.authority.agent_assertion()?,
            agent_assertion_type: String::new(),
            intent: INTENT.into(),
            scope: "hr:read".into(),
        })
    }

    /// A new session through the facade.
    pub async fn session(&self) -> anyhow::Result<pb::StartSessionResponse> {
        Ok(self
            .client()
            .start_session(self.start_request()?)
            .await
            .context("StartSession")?
            .into_inner())
    }

    /// Another facade on this stack, started as the stack starts its own
    /// (`run` on a loopback listener, serving before this returns), from
    /// `config`: usually this stack's with one setting changed.
    pub async fn start_facade(&self, config: Config) -> anyhow::Result<(Running, SocketAddr)> {
        tether_runtime::ServiceConfig::validate(&config).context("facade configuration")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut running =
            Running::spawn(|shutdown| tether_agent_facade::run(config, listener, shutdown));
        running
            .wait_serving(self.pki.anonymous_channel(addr)?)
            .await?;
        Ok((running, addr))
    }

    /// Follows `ticket_id` with WatchApproval until it is terminal (each
    /// snapshot within a minute); the last snapshot.
    pub async fn watch_to_end(
        &self,
        token: &str,
        ticket_id: &str,
    ) -> anyhow::Result<pb::ApprovalTicket> {
        let mut watch = self
            .client()
            .watch_approval(bearer(
                pb::WatchApprovalRequest {
                    ticket_id: ticket_id.into(),
                },
                token,
            ))
            .await?
            .into_inner();
        let mut last = None;
        while let Some(message) =
            tokio::time::timeout(std::time::Duration::from_secs(60), watch.message())
                .await
                .context("no snapshot within the keepalive")??
        {
            last = message.ticket;
        }
        last.context("WatchApproval ended without a snapshot")
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

/// AcquireCredential `hr-read` for reading employee 1042.
pub fn read_request() -> pb::AcquireCredentialRequest {
    pb::AcquireCredentialRequest {
        action: uid("Action", "read"),
        resource: uid("Employee", "1042"),
        profile: "hr-read".into(),
        ..Default::default()
    }
}

/// AcquireCredential `hr-write` for offboarding employee 1042 (a step-up).
pub fn offboard_request() -> pb::AcquireCredentialRequest {
    pb::AcquireCredentialRequest {
        action: uid("Action", "offboard"),
        resource: uid("Employee", "1042"),
        profile: "hr-write".into(),
        ..Default::default()
    }
}

/// `message` with `token` as `authorization: Bearer` metadata, as an agent
/// sends it.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    crate::issuer::bearer(message, token)
}

/// An entity uid of the HR pack.
pub fn uid(r#type: &str, id: &str) -> Option<pb::EntityUid> {
    Some(pb::EntityUid {
        r#type: r#type.into(),
        id: id.into(),
    })
}

/// What the stack has minted, issued and asked so far: taken before and
/// after a refused call, the two must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Sessions the identity exchange minted.
    pub sessions: i64,
    /// Lease rows in the issuer's registry.
    pub leases: i64,
    /// PostgreSQL roles Vault created (`v-…`).
    pub roles: Vec<String>,
    /// Vault's leases under the HR roles (`None` when OpenBao is stopped).
    pub vault_leases: Option<Vec<String>>,
    /// Approval tickets and grants the orchestrator wrote.
    pub tickets: i64,
    pub grants: i64,
    /// CIBA requests the user's device received (`None` when the IdP is
    /// stopped).
    pub prompts: Option<usize>,
}

impl FacadeStack {
    /// The stack's [`Footprint`] now. Reads the services' stores directly,
    /// so it works with any of them stopped.
    pub async fn footprint(&self) -> anyhow::Result<Footprint> {
        let identity = tether_store::open(
            &tether_store::sqlite_url(&self.authority.identity().store_path()),
            "identity_exchange",
            &tether_store::PoolSettings::default(),
        )
        .await
        .context("opening the identity exchange's store")?;
        let (sessions,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions")
            .fetch_one(&identity)
            .await?;
        identity.close().await;
        let registry = self
            .issuer
            .registry()
            .context("the issuer's registry is gone")?;
        let (leases,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM credential_leases")
            .fetch_one(registry.pool())
            .await?;
        let vault_leases = match (
            self.deps.bao.leases("database/creds/hr-readonly").await,
            self.deps.bao.leases("database/creds/hr-writer").await,
        ) {
            (Ok(mut read), Ok(write)) => {
                read.extend(write);
                Some(read)
            }
            _ => None,
        };
        let (tickets, grants) = self.approvals.counts().await?;
        let prompts = self
            .authority
            .idp()
            .ciba_requests(&[("all", "1")])
            .await
            .ok()
            .map(|list| list.len());
        Ok(Footprint {
            sessions,
            leases,
            roles: self.deps.pg.roles_like("v-").await?,
            vault_leases,
            tickets,
            grants,
            prompts,
        })
    }
}
