//! The identity exchange on loopback, wired to a test IdP and a registry of
//! agents whose keys the test holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;
use tempfile::TempDir;
use tether_identity_exchange::{
    AgentConfig, Config, MayActFor, OAuthConfig, StoreConfig, TokenConfig, TrustedIssuer,
};
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_runtime::ServerConfig;
use tether_runtime::client::InternalChannel;
use tether_token::SigningKey;

use crate::Running;
use crate::pki::TestPki;

/// The identity exchange's service name (its certificate's SPIFFE ID path).
pub const SERVICE: &str = "identity-exchange";

/// The audience agents ask delegated tokens for (the agent facade's).
pub const FACADE_AUDIENCE: &str = "https://tether.local/facade";

/// RFC 7523 `client_assertion_type`.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A registered test agent and its private key.
#[derive(Debug)]
pub struct TestAgent {
    pub id: String,
    pub key: SigningKey,
}

impl TestAgent {
    pub fn new(id: &str) -> anyhow::Result<Self> {
        Ok(Self {
            id: id.into(),
            key: SigningKey::generate()?,
        })
    }

    /// A fresh RFC 7523 client assertion for `token_endpoint`.
    pub fn assertion(&self, token_endpoint: &str) -> anyhow::Result<String> {
        self.assertion_valid_for(token_endpoint, 60)
    }

    /// RFC 7523 client authentication form fields (`private_key_jwt`) with
    /// a fresh assertion for `audience` (e.g. `{issuer}/introspect`).
    pub fn client_auth(&self, audience: &str) -> anyhow::Result<[(&'static str, String); 2]> {
        Ok([
            ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
            ("client_assertion", self.assertion(audience)?),
        ])
    }

    /// An assertion that expires `lifetime_secs` from now.
    pub fn assertion_valid_for(
        &self,
        token_endpoint: &str,
        lifetime_secs: i64,
    ) -> anyhow::Result<String> {
        let now = tether_token::unix_now();
        Ok(self.key.sign_raw(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.key.kid()}),
            &json!({
                "iss": self.id, "sub": self.id, "aud": token_endpoint,
                "iat": now, "exp": now + lifetime_secs, "jti": uuid::Uuid::new_v4().to_string(),
            }),
        )?)
    }
}

/// An agent registration for the facade audience, with no keys yet.
fn agent_config(id: &str, scopes: &[&str], groups: &[&str]) -> AgentConfig {
    AgentConfig {
        id: id.into(),
        jwks: None,
        jwks_uri: None,
        spiffe_id: None,
        audiences: vec![FACADE_AUDIENCE.into()],
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        may_act_for: MayActFor {
            issuer: None,
            subjects: Vec::new(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
        },
        algorithms: vec!["ES256".into()],
        may_delegate_to: Vec::new(),
    }
}

/// The test IdP as a trusted issuer: its access tokens (for the API) and,
/// for the tests that use them, its ID tokens (for `tether-cli`).
fn test_idp(issuer: &str) -> TrustedIssuer {
    TrustedIssuer {
        issuer: issuer.into(),
        audiences: vec![crate::idp::API_RESOURCE.into(), "tether-cli".into()],
        algorithms: vec!["ES256".into()],
        jwks_uri: None,
        allow_multi_audience: false,
        clients: vec!["tether-cli".into()],
        access_token_types: vec!["at+jwt".into()],
        scope_claim: "scope".into(),
        claims: None,
        allow_service_subjects: false,
        allow_id_tokens: true,
    }
}

/// Builds an [`IdentitySandbox`].
#[derive(Debug)]
pub struct IdentitySandboxBuilder {
    idp: TrustedIssuer,
    agents: Vec<AgentConfig>,
    store_url: Option<String>,
    max_depth: usize,
    rotate_after_secs: u64,
    spiffe: Option<(String, serde_json::Value)>,
    oauth: OAuthConfig,
    pki: Option<Arc<TestPki>>,
    plaintext: bool,
    /// `(issuer, keys_dir)` of the replica this one joins.
    replica_of: Option<(String, PathBuf)>,
    /// `(server.replicas, tokens.keys_reload_secs, tokens.key_activation_secs)`.
    replicas: Option<(u32, u64, u64)>,
    /// `http.jwks_max_stale_secs` (default: the service's).
    jwks_max_stale_secs: Option<u64>,
}

impl IdentitySandboxBuilder {
    /// How long the IdP's keys may be used while they cannot be fetched
    /// (`http.jwks_max_stale_secs`).
    pub fn jwks_max_stale_secs(mut self, secs: u64) -> Self {
        self.jwks_max_stale_secs = Some(secs);
        self
    }

    /// Serve without TLS (`insecure_plaintext = true`), for benchmarks
    /// that measure what mTLS costs.
    pub fn plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// Use this PKI (default: a fresh one).
    pub fn pki(mut self, pki: Arc<TestPki>) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Rate limit of `/introspect` and `/revoke` per client (default 60 a
    /// minute, bursts of 20).
    pub fn oauth_rate_limit(mut self, per_minute: u32, burst: u32) -> Self {
        self.oauth.per_client_per_minute = per_minute;
        self.oauth.burst = burst;
        self
    }

    /// Rotate signing keys this often (default: daily).
    pub fn rotate_after_secs(mut self, secs: u64) -> Self {
        self.rotate_after_secs = secs;
        self
    }

    /// Changes how the one trusted IdP is configured (by default: the test
    /// IdP, its `tether-cli` client, `at+jwt` access tokens and ID tokens).
    pub fn idp(mut self, edit: impl FnOnce(&mut TrustedIssuer)) -> Self {
        edit(&mut self.idp);
        self
    }

    /// Lets the registered agent `from` delegate to agent `to`.
    pub fn may_delegate(mut self, from: &str, to: &str) -> Self {
        if let Some(agent) = self.agents.iter_mut().find(|a| a.id == from) {
            agent.may_delegate_to.push(to.into());
        }
        self
    }

    /// Registers `agent`, allowed `scopes`, acting for members of `groups`.
    pub fn agent(mut self, agent: &TestAgent, scopes: &[&str], groups: &[&str]) -> Self {
        let mut config = agent_config(&agent.id, scopes, groups);
        config.jwks = Some(serde_json::to_value(agent.key.jwks()).unwrap_or_default());
        self.agents.push(config);
        self
    }

    /// Registers an agent that proves itself with a SPIFFE JWT-SVID only.
    pub fn spiffe_agent(
        mut self,
        id: &str,
        spiffe_id: &str,
        scopes: &[&str],
        groups: &[&str],
    ) -> Self {
        let mut config = agent_config(id, scopes, groups);
        config.spiffe_id = Some(spiffe_id.into());
        self.agents.push(config);
        self
    }

    /// Trusts JWT-SVIDs of `trust_domain` signed by `bundle`'s key.
    pub fn spiffe_bundle(mut self, trust_domain: &str, bundle: &SigningKey) -> Self {
        self.spiffe = Some((
            trust_domain.into(),
            serde_json::to_value(bundle.jwks()).unwrap_or_default(),
        ));
        self
    }

    /// Run as one of `count` replicas: `server.replicas = count`, no
    /// rotation of its own, the keys directory re-read every
    /// `reload_secs` and a new key signing `activation_secs` after it was
    /// first seen.
    pub fn replicas(mut self, count: u32, reload_secs: u64, activation_secs: u64) -> Self {
        self.replicas = Some((count, reload_secs, activation_secs));
        self.rotate_after_secs = 0;
        self
    }

    /// Another replica of `first`: its issuer URL, store, keys directory
    /// and PKI (what a second pod of the same Deployment gets).
    pub fn replica_of(mut self, first: &IdentitySandbox) -> Self {
        self.replica_of = Some((first.issuer.clone(), first.keys_dir.clone()));
        self.store_url = Some(first.config.store.url.clone());
        self.pki = Some(Arc::clone(&first.pki));
        self
    }

    /// Use this store URL (default: SQLite in the sandbox's directory).
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store_url = Some(url.into());
        self
    }

    pub fn max_delegation_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    pub async fn start(self) -> anyhow::Result<IdentitySandbox> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let issuer = match &self.replica_of {
            Some((issuer, _)) => issuer.clone(),
            None if self.plaintext => format!("http://{addr}"),
            None => format!("https://{addr}"),
        };
        let pki = match self.pki {
            Some(pki) => pki,
            None => TestPki::new()?,
        };
        let spiffe = match self.spiffe {
            Some((trust_domain, bundle)) => {
                let bundle_path = dir.path().join("spiffe-bundle.json");
                std::fs::write(&bundle_path, bundle.to_string())?;
                Some(tether_identity_exchange::SpiffeConfig {
                    trust_domain,
                    bundle_path,
                })
            }
            None => None,
        };
        let config = Config {
            server: ServerConfig {
                tls: if self.plaintext {
                    tether_runtime::TlsConfig::plaintext()
                } else {
                    pki.tls(SERVICE)?
                },
                replicas: self.replicas.map_or(1, |(count, _, _)| count),
                ..ServerConfig::default()
            },
            issuer: issuer.clone(),
            store: StoreConfig {
                url: self
                    .store_url
                    .unwrap_or_else(|| tether_store::sqlite_url(&dir.path().join("identity.db"))),
            },
            tokens: {
                let mut tokens = TokenConfig {
                    keys_dir: match &self.replica_of {
                        Some((_, keys_dir)) => keys_dir.clone(),
                        None => dir.path().join("keys"),
                    },
                    max_delegation_depth: self.max_depth,
                    rotate_after_secs: self.rotate_after_secs,
                    ..TokenConfig::default()
                };
                if let Some((_, reload, activation)) = self.replicas {
                    tokens.keys_reload_secs = reload;
                    tokens.key_activation_secs = activation;
                }
                tokens
            },
            trusted_issuers: vec![self.idp],
            agents: self.agents,
            spiffe,
            http: tether_identity_exchange::HttpConfig {
                timeout_secs: 2,
                jwks_min_refresh_secs: 1,
                jwks_max_stale_secs: self
                    .jwks_max_stale_secs
                    .unwrap_or(tether_identity_exchange::HttpConfig::default().jwks_max_stale_secs),
            },
            oauth: self.oauth,
            pruning: Default::default(),
        };
        tether_runtime::ServiceConfig::validate(&config).context("sandbox configuration")?;
        IdentitySandbox::launch(config, listener, dir, pki).await
    }
}

/// A running identity exchange. Stops when dropped.
#[derive(Debug)]
pub struct IdentitySandbox {
    addr: SocketAddr,
    issuer: String,
    channel: InternalChannel,
    keys_dir: PathBuf,
    config: Config,
    dir: TempDir,
    pki: Arc<TestPki>,
    http: reqwest::Client,
    running: Running,
}

impl IdentitySandbox {
    async fn launch(
        config: Config,
        listener: tokio::net::TcpListener,
        dir: TempDir,
        pki: Arc<TestPki>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let keys_dir = config.tokens.keys_dir.clone();
        let service_config = config.clone();
        let mut running = Running::spawn(|shutdown| {
            tether_identity_exchange::run(service_config, listener, shutdown)
        });
        // The facade is the identity exchange's normal gRPC caller.
        let (channel, http) = if config.server.tls.insecure_plaintext {
            let plain = tether_runtime::client::Clients::new(&config.server.tls)?;
            (plain.grpc(&config.issuer, SERVICE)?, reqwest::Client::new())
        } else {
            (
                pki.channel("agent-facade", addr, SERVICE)?,
                pki.https_client()?,
            )
        };
        running.wait_serving(channel.clone()).await?;
        Ok(Self {
            addr,
            issuer: config.issuer.clone(),
            channel,
            keys_dir,
            config,
            dir,
            pki,
            http,
            running,
        })
    }

    /// Stops the service and starts it again on the same address, store and
    /// keys (what a process restart does).
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        self.running.stop().await?;
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let config = self.config.clone();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir()?);
        Self::launch(config, listener, dir, Arc::clone(&self.pki)).await
    }

    pub fn builder(idp_issuer: &str) -> IdentitySandboxBuilder {
        IdentitySandboxBuilder {
            idp: test_idp(idp_issuer),
            agents: Vec::new(),
            store_url: None,
            max_depth: 3,
            rotate_after_secs: 24 * 3600,
            spiffe: None,
            oauth: OAuthConfig::default(),
            pki: None,
            plaintext: false,
            replica_of: None,
            replicas: None,
            jwks_max_stale_secs: None,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client as the agent facade (the normal caller of `Exchange`).
    pub fn client(&self) -> IdentityExchangeClient<InternalChannel> {
        IdentityExchangeClient::new(self.channel.clone())
    }

    /// A client presenting `identity`'s certificate.
    pub fn client_as(
        &self,
        identity: &str,
    ) -> anyhow::Result<IdentityExchangeClient<InternalChannel>> {
        Ok(IdentityExchangeClient::new(
            self.pki.channel(identity, self.addr, SERVICE)?,
        ))
    }

    /// An HTTPS client trusting the sandbox's CA, without a client
    /// certificate: what an agent uses for `/token`, `/introspect`, ...
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    /// The SPIFFE trust bundle file the service reads, when one is
    /// configured ([`IdentitySandboxBuilder::spiffe_bundle`]); rewrite it
    /// to rotate the bundle.
    pub fn spiffe_bundle_path(&self) -> Option<&std::path::Path> {
        self.config.spiffe.as_ref().map(|s| s.bundle_path.as_path())
    }

    pub fn keys_dir(&self) -> &PathBuf {
        &self.keys_dir
    }

    /// The SQLite store file (when the default store is used).
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("identity.db")
    }

    /// How many sessions its SQLite store holds (each minted token of a new
    /// session opened one): what "nothing was minted" is checked against.
    pub async fn session_count(&self) -> anyhow::Result<i64> {
        let pool = tether_store::open(
            &tether_store::sqlite_url(&self.store_path()),
            "identity_exchange",
            &tether_store::PoolSettings::default(),
        )
        .await?;
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions")
            .fetch_one(&pool)
            .await?;
        Ok(count)
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

impl IdentitySandbox {
    /// Stops serving (an unreachable identity exchange) while the stack that
    /// owns the sandbox keeps running; the store stays readable.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}
