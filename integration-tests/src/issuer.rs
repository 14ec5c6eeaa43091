//! A credential issuer on loopback, against a real OpenBao and PostgreSQL,
//! and a real identity exchange (with the real test IdP) whose delegated
//! tokens bind Issue and Renew to a session.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use tempfile::TempDir;
use tether_credential_issuer::{
    Config, Handles, Limits, Profile, Registry, RevocationConfig, Secret, SessionsConfig,
    StoreConfig, TestHooks, VaultAuth, VaultConfig,
};
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::identity::v1 as identity_pb;
use tether_runtime::ServerConfig;
use tether_runtime::client::InternalChannel;
use tether_token::{DelegatedClaims, KeyRing, SigningKey, VerifyPolicy};

use crate::Running;
use crate::identity::{FACADE_AUDIENCE, IdentitySandbox, IdentitySandboxBuilder, TestAgent};
use crate::idp::Idp;
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::postgres::PgCluster;

/// PostgreSQL with an `hr` schema and OpenBao's database engine pointing at
/// it (roles `hr-readonly`, `hr-writer`).
#[derive(Debug)]
pub struct CredentialDeps {
    // Field order = drop order: OpenBao stops before PostgreSQL.
    pub bao: OpenBao,
    pub pg: PgCluster,
}

impl CredentialDeps {
    /// Starts both; Vault's roles get `default_ttl_secs`.
    pub async fn start(default_ttl_secs: u64) -> anyhow::Result<Self> {
        let pg = PgCluster::start().await?;
        let bao = OpenBao::start().await?;
        bao.setup_database(&pg, default_ttl_secs).await?;
        Ok(Self { bao, pg })
    }
}

/// The profiles the tests use: `hr-read` → `database/creds/hr-readonly`,
/// `hr-write` → `database/creds/hr-writer`.
pub fn hr_profiles(max_ttl_secs: u64) -> BTreeMap<String, Profile> {
    BTreeMap::from([
        (
            "hr-read".to_owned(),
            Profile {
                vault_path: "database/creds/hr-readonly".into(),
                max_ttl_secs,
                database_sweep: None,
            },
        ),
        (
            "hr-write".to_owned(),
            Profile {
                vault_path: "database/creds/hr-writer".into(),
                max_ttl_secs,
                database_sweep: None,
            },
        ),
    ])
}

/// Fast sweeps and retries, for tests.
pub fn test_revocation() -> RevocationConfig {
    RevocationConfig {
        sweep_interval_ms: 500,
        orphan_sweep_interval_ms: 1_000,
        orphan_sweep: true,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        revoke_call_budget_ms: 5_000,
        concurrency: 16,
        clock_skew_ms: 500,
    }
}

/// How an issuer reaches `identity`: its issuer URL, JWKS and gRPC
/// endpoint, for tokens of the facade's audience, with a fast revocation
/// poll (tests wait for it).
pub fn sessions_config(identity: &IdentitySandbox) -> SessionsConfig {
    SessionsConfig {
        token_issuer: identity.issuer().to_owned(),
        audience: FACADE_AUDIENCE.into(),
        jwks_url: format!("{}/.well-known/jwks.json", identity.issuer()),
        // gRPC and HTTP share the exchange's port and scheme.
        identity_exchange: identity.issuer().to_owned(),
        revocation_poll_ms: 100,
        revocation_max_staleness_ms: 5_000,
    }
}

/// `message` with the agent's delegated token in the call's
/// `authorization: Bearer` metadata, as the facade sends it to the issuer.
/// (A token that is not valid metadata — never one the exchange mints — is
/// left out, and the issuer refuses the call as unauthenticated.)
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(mut value) = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")) {
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A delegated session, as an agent holds it after an exchange.
#[derive(Clone)]
pub struct DelegatedSession {
    /// The delegated token (a secret: never print it).
    pub token: String,
    /// Its claims, as verified with the identity exchange's keys.
    pub claims: DelegatedClaims,
}

impl std::fmt::Debug for DelegatedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedSession")
            .field("token", &"***")
            .field("claims", &self.claims)
            .finish()
    }
}

impl DelegatedSession {
    pub fn sid(&self) -> &str {
        &self.claims.sid
    }

    /// `message` carrying this session's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        bearer(message, &self.token)
    }
}

/// The agent `hr-assistant` acting for alice (group `hr`).
pub const AGENT: &str = "hr-assistant";

/// The intent every test session declares (RFC 9396 `authorization_details`):
/// everything the tests do, on employee 1042 only (the HR pack denies what a
/// session did not declare).
pub const INTENT: &str = r#"[{"type":"hr_record_access","actions":["read","offboard","update_salary"],"identifier":"employee/1042"}]"#;

/// Where delegated tokens come from in issuer tests: the real test IdP
/// (alice logged in once, Authorization Code + PKCE), a real identity
/// exchange with `hr-assistant` registered, and real token exchanges —
/// each [`SessionAuthority::session`] is a new session with its own `sid`.
/// Tokens the exchange would never mint (expired, another audience or
/// issuer) are signed with the identity exchange's own key ring, so only
/// the claim under test differs from a real token.
#[derive(Debug)]
pub struct SessionAuthority {
    // Field order = drop order: the exchange stops before the IdP.
    identity: IdentitySandbox,
    idp: Idp,
    agent: TestAgent,
    user_token: String,
}

impl SessionAuthority {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|builder| builder).await
    }

    /// Like [`SessionAuthority::start`], with the identity sandbox
    /// adjusted by `configure` (e.g. plaintext, for a benchmark).
    pub async fn start_with(
        configure: impl FnOnce(IdentitySandboxBuilder) -> IdentitySandboxBuilder,
    ) -> anyhow::Result<Self> {
        let idp = Idp::start().await.context("starting the test IdP")?;
        Self::start_on(idp, configure).await
    }

    /// Like [`SessionAuthority::start_with`], with users from `idp` (e.g.
    /// one configured for CIBA tests).
    pub async fn start_on(
        idp: Idp,
        configure: impl FnOnce(IdentitySandboxBuilder) -> IdentitySandboxBuilder,
    ) -> anyhow::Result<Self> {
        let agent = TestAgent::new(AGENT)?;
        let identity =
            configure(IdentitySandbox::builder(idp.issuer()).agent(&agent, &["hr:read"], &["hr"]))
                .start()
                .await
                .context("starting the identity exchange")?;
        let user_token = idp
            .login("alice", &["openid", "profile", "email", "hr:read"])
            .await
            .context("logging alice in at the test IdP")?
            .access_token;
        Ok(Self {
            identity,
            idp,
            agent,
            user_token,
        })
    }

    pub fn identity(&self) -> &IdentitySandbox {
        &self.identity
    }

    pub fn idp(&self) -> &Idp {
        &self.idp
    }

    /// alice's access token from the IdP (a secret: never print it).
    pub fn user_token(&self) -> &str {
        &self.user_token
    }

    /// A fresh RFC 7523 assertion of the agent `hr-assistant` for the
    /// identity exchange's token endpoint (single-use).
    pub fn agent_assertion(&self) -> anyhow::Result<String> {
        self.agent.assertion(&self.identity.token_endpoint())
    }

    /// The registered agent `hr-assistant` with its private key, for an
    /// agent that signs its own assertions outside the test process.
    pub fn agent(&self) -> &TestAgent {
        &self.agent
    }

    /// The IdP, to stop it (an unreachable IdP).
    pub fn idp_mut(&mut self) -> &mut Idp {
        &mut self.idp
    }

    /// The `[sessions]` configuration of an issuer trusting this exchange.
    pub fn sessions_config(&self) -> SessionsConfig {
        sessions_config(&self.identity)
    }

    /// A new session: the agent exchanges alice's token and its own
    /// assertion for a delegated token (RFC 8693) for the facade.
    pub async fn session(&self) -> anyhow::Result<DelegatedSession> {
        let response = self
            .identity
            .client()
            .exchange(identity_pb::ExchangeRequest {
                subject_token: self.user_token.clone(),
                subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
                actor_token: self.agent.assertion(&self.identity.token_endpoint())?,
                actor_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                audience: FACADE_AUDIENCE.into(),
                scope: "hr:read".into(),
                requested_token_type: String::new(),
                authorization_details: INTENT.into(),
            })
            .await
            .context("token exchange")?
            .into_inner();
        let claims = self.verify(&response.access_token).await?;
        anyhow::ensure!(
            claims.sid == response.sid,
            "the token's sid is not the session's"
        );
        Ok(DelegatedSession {
            token: response.access_token,
            claims,
        })
    }

    async fn verify(&self, token: &str) -> anyhow::Result<DelegatedClaims> {
        let ring = self.key_ring()?;
        let mut policy = VerifyPolicy::new(
            vec![self.identity.issuer().to_owned()],
            vec![FACADE_AUDIENCE.into()],
            vec![tether_token::Algorithm::ES256],
        );
        policy.typ = tether_token::TypRule::AccessToken;
        Ok(
            tether_token::verify::<DelegatedClaims, _>(token, &policy, &ring)
                .await
                .context("verifying a delegated token the exchange minted")?
                .claims,
        )
    }

    /// The identity exchange's signing keys (the same files it signs with).
    fn key_ring(&self) -> anyhow::Result<KeyRing> {
        KeyRing::open_dir(self.identity.keys_dir()).context("opening the identity exchange's keys")
    }

    /// `session`'s claims, changed by `edit`, with a fresh `jti`, signed
    /// with the identity exchange's current key.
    pub fn forge(
        &self,
        session: &DelegatedSession,
        edit: impl FnOnce(&mut DelegatedClaims),
    ) -> anyhow::Result<String> {
        let mut claims = session.claims.clone();
        claims.jti = uuid::Uuid::new_v4().to_string();
        edit(&mut claims);
        Ok(self
            .key_ring()?
            .current()?
            .sign(tether_token::TOKEN_TYPE_AT_JWT, &claims)?)
    }

    /// Like [`SessionAuthority::forge`], signed with a key the identity
    /// exchange never published.
    pub fn forge_with_unknown_key(&self, session: &DelegatedSession) -> anyhow::Result<String> {
        let mut claims = session.claims.clone();
        claims.jti = uuid::Uuid::new_v4().to_string();
        Ok(SigningKey::generate()?.sign(tether_token::TOKEN_TYPE_AT_JWT, &claims)?)
    }

    /// A session whose token expires `secs` from now: a real session, its
    /// token re-signed by the identity exchange's key with an earlier `exp`
    /// (the exchange itself mints for up to 15 minutes).
    pub async fn session_ending_in(&self, secs: i64) -> anyhow::Result<DelegatedSession> {
        let real = self.session().await?;
        let exp = tether_token::unix_now() + secs;
        let token = self.forge(&real, |c| c.exp = exp)?;
        let claims = self.verify(&token).await?;
        Ok(DelegatedSession { token, claims })
    }

    /// Revokes `sid` at the identity exchange (its real `RevokeSession`).
    pub async fn revoke(&self, sid: &str) -> anyhow::Result<()> {
        self.identity
            .client()
            .revoke_session(identity_pb::RevokeSessionRequest {
                sid: sid.into(),
                reason: "test".into(),
            })
            .await
            .context("revoking the session at the identity exchange")?;
        Ok(())
    }
}

/// Builds an [`IssuerSandbox`].
#[derive(Debug)]
pub struct IssuerSandboxBuilder {
    vault_address: String,
    sessions: SessionsConfig,
    auth: VaultAuth,
    profiles: BTreeMap<String, Profile>,
    store_url: Option<String>,
    revocation: RevocationConfig,
    limits: Limits,
    server: ServerConfig,
    vault_timeout_ms: u64,
    creation_timeout_ms: Option<u64>,
    test_hooks: TestHooks,
    pki: std::sync::Arc<crate::pki::TestPki>,
}

/// The issuer's service name (its certificate's SPIFFE ID path).
pub const SERVICE: &str = "credential-issuer";

impl IssuerSandboxBuilder {
    /// An issuer for `vault_address` with the root token and the HR profiles
    /// (10 min), verifying delegated tokens of `identity`.
    pub fn new(vault_address: impl Into<String>, identity: &IdentitySandbox) -> Self {
        Self {
            vault_address: vault_address.into(),
            sessions: sessions_config(identity),
            auth: VaultAuth::Token {
                token: Some(Secret::new(ROOT_TOKEN)),
                token_file: None,
            },
            profiles: hr_profiles(600),
            store_url: None,
            revocation: test_revocation(),
            limits: Limits::default(),
            server: ServerConfig::default(),
            vault_timeout_ms: 2_000,
            creation_timeout_ms: None,
            test_hooks: TestHooks::default(),
            // One CA for the whole stack: the issuer calls the identity
            // exchange with a certificate it trusts, and vice versa.
            pki: std::sync::Arc::clone(identity.pki()),
        }
    }

    /// Replaces the `[sessions]` configuration (e.g. to point at an
    /// unreachable identity exchange).
    pub fn sessions(mut self, sessions: SessionsConfig) -> Self {
        self.sessions = sessions;
        self
    }

    pub fn auth(mut self, auth: VaultAuth) -> Self {
        self.auth = auth;
        self
    }

    pub fn profiles(mut self, profiles: BTreeMap<String, Profile>) -> Self {
        self.profiles = profiles;
        self
    }

    /// A store URL (default: SQLite in the sandbox's directory).
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store_url = Some(url.into());
        self
    }

    pub fn revocation(mut self, revocation: RevocationConfig) -> Self {
        self.revocation = revocation;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Server settings; unless they say `insecure_plaintext`, the sandbox
    /// fills `tls` with a certificate from the identity sandbox's PKI.
    pub fn server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    /// Test-only fail points (they act only where the issuer is built with
    /// its `test-hooks` feature, as the test harness builds it).
    pub fn test_hooks(mut self, hooks: TestHooks) -> Self {
        self.test_hooks = hooks;
        self
    }

    pub fn vault_timeout_ms(mut self, ms: u64) -> Self {
        self.vault_timeout_ms = ms;
        self
    }

    /// `vault.creation_timeout_ms` (default: twice the Vault timeout, so
    /// interrupted issuances settle quickly).
    pub fn creation_timeout_ms(mut self, ms: u64) -> Self {
        self.creation_timeout_ms = Some(ms);
        self
    }

    /// The configuration `start` would use, with its data directory.
    pub fn config(&self, data_dir: &std::path::Path) -> anyhow::Result<Config> {
        let mut server = self.server.clone();
        if !server.tls.insecure_plaintext {
            server.tls = self.pki.tls(SERVICE)?;
        }
        Ok(Config {
            server,
            vault: VaultConfig {
                address: self.vault_address.clone(),
                auth: self.auth.clone(),
                request_timeout_ms: self.vault_timeout_ms,
                creation_timeout_ms: self
                    .creation_timeout_ms
                    .unwrap_or(2 * self.vault_timeout_ms),
                ca_cert_file: None,
            },
            store: StoreConfig {
                url: self.store_url.clone(),
                data_dir: data_dir.to_path_buf(),
                max_connections: 8,
            },
            sessions: self.sessions.clone(),
            profiles: self.profiles.clone(),
            revocation: self.revocation.clone(),
            limits: self.limits,
            pruning: Default::default(),
            test_hooks: self.test_hooks,
        })
    }

    /// Starts the issuer through the binary's own `run` (its `run_with`,
    /// which also lends the sandbox the registry) on 127.0.0.1:0.
    pub async fn start(self) -> anyhow::Result<IssuerSandbox> {
        let dir = tempfile::tempdir().context("creating the data directory")?;
        self.start_in(dir).await
    }

    /// Starts on an existing data directory (a "restart").
    pub async fn start_in(self, dir: TempDir) -> anyhow::Result<IssuerSandbox> {
        let config = self.config(dir.path())?;
        tether_runtime::ServiceConfig::validate(&config).context("sandbox configuration")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (lend, lent) = tokio::sync::oneshot::channel();
        let service_config = config.clone();
        let mut running = Running::spawn(|shutdown| {
            tether_credential_issuer::run_with(service_config, listener, shutdown, |handles| {
                let _ = lend.send(handles);
            })
        });
        // The facade is the issuer's only caller.
        let channel = if config.server.tls.insecure_plaintext {
            tether_runtime::client::Clients::new(&config.server.tls)?
                .grpc(&format!("http://{addr}"), SERVICE)?
        } else {
            self.pki.channel("agent-facade", addr, SERVICE)?
        };
        running.wait_serving(channel.clone()).await?;
        // `run_with` lends the handles before it serves, so they are here.
        let handles = lent
            .await
            .context("the issuer served without lending its handles")?;
        Ok(IssuerSandbox {
            dir: Some(dir),
            addr,
            channel,
            pki: self.pki,
            handles,
            running,
        })
    }
}

/// A running issuer. Stops when dropped.
#[derive(Debug)]
pub struct IssuerSandbox {
    dir: Option<TempDir>,
    addr: SocketAddr,
    channel: InternalChannel,
    pki: std::sync::Arc<crate::pki::TestPki>,
    handles: Handles,
    running: Running,
}

impl IssuerSandbox {
    pub fn builder(
        vault_address: impl Into<String>,
        identity: &IdentitySandbox,
    ) -> IssuerSandboxBuilder {
        IssuerSandboxBuilder::new(vault_address, identity)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client as the agent facade (the issuer's only caller).
    pub fn client(&self) -> CredentialIssuerClient<InternalChannel> {
        CredentialIssuerClient::new(self.channel.clone())
    }

    /// A client presenting `identity`'s certificate.
    pub fn client_as(
        &self,
        identity: &str,
    ) -> anyhow::Result<CredentialIssuerClient<InternalChannel>> {
        Ok(CredentialIssuerClient::new(
            self.pki.channel(identity, self.addr, SERVICE)?,
        ))
    }

    /// The lease registry the issuer writes; still readable after the
    /// issuer stopped. (Always `Some`: the `Option` stays for the callers.)
    pub fn registry(&self) -> Option<&Registry> {
        Some(&self.handles.registry)
    }

    /// The issuer's counters. (Always `Some`, as for `registry`.)
    pub fn metrics(&self) -> Option<&std::sync::Arc<tether_credential_issuer::Metrics>> {
        Some(&self.handles.metrics)
    }

    /// (logins, token renewals) of the issuer's Vault client.
    pub fn vault_stats(&self) -> (u64, u64) {
        (self.handles.vault.logins(), self.handles.vault.renewals())
    }

    /// Stops the issuer as its binary stops (`run` returns: serving and the
    /// background tasks end); returns the data directory so a new issuer
    /// can start on the same registry.
    pub async fn shutdown(mut self) -> anyhow::Result<TempDir> {
        self.running.stop().await?;
        self.dir.take().context("data directory already taken")
    }
}

impl IssuerSandbox {
    /// Stops the issuer (an unreachable credential issuer: `run` returns,
    /// serving and background revocation end) while the stack that owns
    /// the sandbox keeps running; the registry stays readable.
    pub async fn stop_serving(&mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

impl SessionAuthority {
    /// The identity exchange, to stop it (an unreachable identity exchange).
    pub fn identity_mut(&mut self) -> &mut IdentitySandbox {
        &mut self.identity
    }
}
