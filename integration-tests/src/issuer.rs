//! A credential issuer on loopback, against a real OpenBao and PostgreSQL.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use tempfile::TempDir;
use tether_credential_issuer::{
    Config, Issuer, Limits, Profile, Registry, RevocationConfig, Secret, StoreConfig, TestHooks,
    VaultAuth, VaultConfig,
};
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_runtime::ServerConfig;
use tonic::transport::Channel;

use crate::Running;
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
            },
        ),
        (
            "hr-write".to_owned(),
            Profile {
                vault_path: "database/creds/hr-writer".into(),
                max_ttl_secs,
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

/// Builds an [`IssuerSandbox`].
#[derive(Debug)]
pub struct IssuerSandboxBuilder {
    vault_address: String,
    auth: VaultAuth,
    profiles: BTreeMap<String, Profile>,
    store_url: Option<String>,
    revocation: RevocationConfig,
    limits: Limits,
    server: ServerConfig,
    vault_timeout_ms: u64,
}

impl IssuerSandboxBuilder {
    /// An issuer for `vault_address` with the root token and the HR profiles
    /// (10 min).
    pub fn new(vault_address: impl Into<String>) -> Self {
        Self {
            vault_address: vault_address.into(),
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
        }
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

    pub fn server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    pub fn vault_timeout_ms(mut self, ms: u64) -> Self {
        self.vault_timeout_ms = ms;
        self
    }

    /// The configuration `start` would use, with its data directory.
    pub fn config(&self, data_dir: &std::path::Path) -> Config {
        Config {
            server: self.server.clone(),
            vault: VaultConfig {
                address: self.vault_address.clone(),
                auth: self.auth.clone(),
                request_timeout_ms: self.vault_timeout_ms,
                ca_cert_file: None,
            },
            store: StoreConfig {
                url: self.store_url.clone(),
                data_dir: data_dir.to_path_buf(),
                max_connections: 8,
            },
            profiles: self.profiles.clone(),
            revocation: self.revocation.clone(),
            limits: self.limits,
            test_hooks: TestHooks::default(),
        }
    }

    /// Starts the issuer (the same steps as `tether_credential_issuer::run`)
    /// on 127.0.0.1:0.
    pub async fn start(self) -> anyhow::Result<IssuerSandbox> {
        let dir = tempfile::tempdir().context("creating the data directory")?;
        self.start_in(dir).await
    }

    /// Starts on an existing data directory (a "restart").
    pub async fn start_in(self, dir: TempDir) -> anyhow::Result<IssuerSandbox> {
        let config = self.config(dir.path());
        let issuer = Issuer::start(&config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let max = config.server.max_message_bytes;
        let routes = issuer.routes(max);
        let server = config.server.clone();
        let running = Running::spawn(|shutdown| async move {
            tether_runtime::server::serve_with_http(
                listener,
                routes,
                &[tether_proto::credentials::v1::credential_issuer_server::SERVICE_NAME],
                &server,
                shutdown,
            )
            .await
            .map_err(anyhow::Error::from)
        });
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("connecting to the issuer")?;
        Ok(IssuerSandbox {
            dir: Some(dir),
            addr,
            channel,
            issuer: Some(issuer),
            running,
        })
    }
}

/// A running issuer. Stops when dropped.
#[derive(Debug)]
pub struct IssuerSandbox {
    dir: Option<TempDir>,
    addr: SocketAddr,
    channel: Channel,
    issuer: Option<Issuer>,
    running: Running,
}

impl IssuerSandbox {
    pub fn builder(vault_address: impl Into<String>) -> IssuerSandboxBuilder {
        IssuerSandboxBuilder::new(vault_address)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn client(&self) -> CredentialIssuerClient<Channel> {
        CredentialIssuerClient::new(self.channel.clone())
    }

    /// The lease registry the issuer writes.
    pub fn registry(&self) -> Option<&Registry> {
        self.issuer.as_ref().map(Issuer::registry)
    }

    pub fn metrics(&self) -> Option<&std::sync::Arc<tether_credential_issuer::Metrics>> {
        self.issuer.as_ref().map(Issuer::metrics)
    }

    /// (logins, token renewals) of the issuer's Vault client.
    pub fn vault_stats(&self) -> (u64, u64) {
        self.issuer
            .as_ref()
            .map_or((0, 0), |i| (i.vault().logins(), i.vault().renewals()))
    }

    /// Stops serving and the background tasks; returns the data directory
    /// so a new issuer can start on the same registry.
    pub async fn shutdown(mut self) -> anyhow::Result<TempDir> {
        self.running.stop().await?;
        if let Some(issuer) = self.issuer.take() {
            issuer.stop().await;
        }
        self.dir.take().context("data directory already taken")
    }
}
