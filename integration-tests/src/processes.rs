//! The whole stack as separate processes, the way it runs in production:
//! the test IdP (CIBA in ping mode), PostgreSQL with the example HR
//! database, OpenBao's database engine in front of it, and the five Tether
//! services, each its own process started from a TOML file (its real
//! `main`, through the `tether-services` dispatcher), every hop mTLS, every
//! port a free loopback port. What the demo runs, and the trace test: each
//! process exports its own spans as its own `service.name`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tempfile::TempDir;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;
use tether_runtime::client::InternalChannel;

use crate::approvals::PING_CLIENT;
use crate::eventually;
use crate::facade::{HR_ENTITIES, hr_pack_any_hour};
use crate::identity::{FACADE_AUDIENCE, TestAgent};
use crate::idp::{API_RESOURCE, Idp};
use crate::issuer::{AGENT, CredentialDeps};
use crate::openbao::ROOT_TOKEN;
use crate::pki::TestPki;
use crate::postgres::free_port;

/// The services' binary names, in start order.
pub const IDENTITY: &str = "tether-identity-exchange";
pub const PDP: &str = "tether-policy-decision";
pub const ISSUER: &str = "tether-credential-issuer";
pub const APPROVALS: &str = "tether-ciba-orchestrator";
pub const FACADE: &str = "tether-agent-facade";

/// How long a service may take to answer health after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A service process, stopped on drop (SIGTERM first, so it drains and
/// flushes its spans).
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Builds a [`ProcessStack`].
#[derive(Debug)]
pub struct ProcessStackBuilder {
    services_bin: PathBuf,
    otlp_endpoint: Option<String>,
    pack: Option<PathBuf>,
    grant_uses: u32,
    monitoring: Option<Value>,
}

impl ProcessStackBuilder {
    /// The facade's `[monitoring]` table (default: none, monitoring off).
    pub fn monitoring(mut self, table: Value) -> Self {
        self.monitoring = Some(table);
        self
    }

    /// Every service process exports its spans to `endpoint` (OTLP/gRPC).
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// The policy pack (default: the HR example pack, any hour).
    pub fn pack(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pack = Some(dir.into());
        self
    }

    /// How many credentials one approval grants (default 1).
    pub fn grant_uses(mut self, uses: u32) -> Self {
        self.grant_uses = uses;
        self
    }

    pub async fn start(self) -> anyhow::Result<ProcessStack> {
        let (deps, idp) = tokio::join!(
            CredentialDeps::start(600),
            Idp::start_with_config(json!({ "cibaInterval": 1 }))
        );
        let deps = deps.context("starting PostgreSQL and OpenBao")?;
        let idp = idp.context("starting the test IdP")?;
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir().context("creating the stack's directory")?;
        let bin_dir = tempfile::tempdir()?;
        let mut stack = ProcessStack {
            procs: Vec::new(),
            services_bin: self.services_bin,
            otlp_endpoint: self.otlp_endpoint,
            addrs: Addrs::default(),
            agent: TestAgent::new(AGENT)?,
            identity_url: String::new(),
            pki,
            idp,
            deps,
            bin_dir,
            dir,
        };
        let pack = match self.pack {
            Some(pack) => pack,
            None => hr_pack_any_hour(stack.dir.path())?,
        };
        stack
            .start_services(&pack, self.grant_uses, self.monitoring)
            .await?;
        Ok(stack)
    }
}

/// Where each service listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub identity: SocketAddr,
    pub pdp: SocketAddr,
    pub issuer: SocketAddr,
    pub approvals: SocketAddr,
    pub ping: SocketAddr,
    pub facade: SocketAddr,
}

impl Default for Addrs {
    fn default() -> Self {
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            identity: unset,
            pdp: unset,
            issuer: unset,
            approvals: unset,
            ping: unset,
            facade: unset,
        }
    }
}

/// The running stack. Field order is drop order: the services stop first,
/// then the IdP, OpenBao and PostgreSQL, then the directory goes.
#[derive(Debug)]
pub struct ProcessStack {
    procs: Vec<Proc>,
    services_bin: PathBuf,
    otlp_endpoint: Option<String>,
    addrs: Addrs,
    agent: TestAgent,
    identity_url: String,
    pki: Arc<TestPki>,
    pub idp: Idp,
    pub deps: CredentialDeps,
    bin_dir: TempDir,
    dir: TempDir,
}

impl ProcessStack {
    /// `services_bin` is the `tether-services` dispatcher binary.
    pub fn builder(services_bin: impl Into<PathBuf>) -> ProcessStackBuilder {
        ProcessStackBuilder {
            services_bin: services_bin.into(),
            otlp_endpoint: None,
            pack: None,
            grant_uses: 1,
            monitoring: None,
        }
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    /// The registered agent (`hr-assistant`) and its private key.
    pub fn agent(&self) -> &TestAgent {
        &self.agent
    }

    /// The identity exchange's issuer identifier (the agent assertion's
    /// audience is `{identity_url}/token`).
    pub fn identity_url(&self) -> &str {
        &self.identity_url
    }

    /// The audience of the delegated tokens the facade accepts.
    pub fn facade_audience(&self) -> &'static str {
        FACADE_AUDIENCE
    }

    /// The stack's working directory (configurations, logs, audit log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The facade's audit log (SQLite) and its checkpoint-signing key.
    pub fn audit_files(&self) -> (PathBuf, PathBuf) {
        let audit = self.dir.path().join("audit");
        (audit.join("audit.db"), audit.join("audit-key.pem"))
    }

    /// An agent's channel to the facade: TLS that trusts the CA, no client
    /// certificate.
    pub fn facade_channel(&self) -> anyhow::Result<InternalChannel> {
        self.pki.anonymous_channel(self.addrs.facade)
    }

    pub fn facade_client(&self) -> anyhow::Result<AgentGatewayClient<InternalChannel>> {
        Ok(AgentGatewayClient::new(self.facade_channel()?))
    }

    /// What every service logged so far, each under its name.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}\n{}\n", p.name, p.log()))
            .collect()
    }

    /// Stops every service (SIGTERM: each drains and flushes its spans),
    /// the last started first; the dependencies keep running.
    pub fn stop_services(&mut self) {
        for proc in self.procs.iter_mut().rev() {
            proc.terminate();
        }
    }

    /// Stops every service, then the dependencies.
    pub fn shutdown(mut self) {
        self.stop_services();
    }

    async fn start_services(
        &mut self,
        pack: &Path,
        grant_uses: u32,
        monitoring: Option<Value>,
    ) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let addr = || -> anyhow::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        };
        self.addrs = Addrs {
            identity: addr()?,
            pdp: addr()?,
            issuer: addr()?,
            approvals: addr()?,
            ping: addr()?,
            facade: addr()?,
        };
        let addrs = self.addrs;
        self.identity_url = format!("https://{}", addrs.identity);
        let identity_url = self.identity_url.clone();

        // Identity exchange: alice's IdP trusted, `hr-assistant` registered.
        self.spawn(
            IDENTITY,
            json!({
                "server": self.server(addrs.identity, "identity-exchange")?,
                "issuer": identity_url,
                "store": { "url": tether_store::sqlite_url(&dir.join("identity.db")) },
                "tokens": { "keys_dir": dir.join("identity-keys") },
                "trusted_issuers": [{
                    "issuer": self.idp.issuer(),
                    "audiences": [API_RESOURCE],
                    "algorithms": ["ES256"],
                    "clients": ["tether-cli"],
                }],
                "agents": [{
                    "id": AGENT,
                    "jwks": serde_json::to_value(self.agent.key.jwks())?,
                    "audiences": [FACADE_AUDIENCE],
                    "scopes": ["hr:read"],
                    "may_act_for": { "groups": ["hr"] },
                    "algorithms": ["ES256"],
                }],
                "http": { "timeout_secs": 2, "jwks_min_refresh_secs": 1 },
            }),
        )?;
        self.wait_serving(addrs.identity, "identity-exchange")
            .await?;
        let sessions = json!({
            "token_issuer": identity_url,
            "audience": FACADE_AUDIENCE,
            "jwks_url": format!("{identity_url}/.well-known/jwks.json"),
            "identity_exchange": identity_url,
            "revocation_poll_ms": 200,
            "revocation_max_staleness_ms": 5000,
        });

        self.spawn(
            PDP,
            json!({
                "server": self.server(addrs.pdp, "policy-decision")?,
                "policy": { "dir": pack, "watch": false },
            }),
        )?;
        self.wait_serving(addrs.pdp, "policy-decision").await?;

        // Credential issuer: OpenBao's database engine in front of
        // PostgreSQL.
        std::fs::create_dir_all(dir.join("issuer"))?;
        self.spawn(
            ISSUER,
            json!({
                "server": self.server(addrs.issuer, "credential-issuer")?,
                "vault": { "address": self.deps.bao.addr(), "auth": { "method": "token", "token": ROOT_TOKEN } },
                "store": { "data_dir": dir.join("issuer") },
                "sessions": sessions,
                "profiles": {
                    "hr-read": { "vault_path": "database/creds/hr-readonly", "max_ttl_secs": 600 },
                    "hr-write": { "vault_path": "database/creds/hr-writer", "max_ttl_secs": 600 },
                },
            }),
        )?;
        self.wait_serving(addrs.issuer, "credential-issuer").await?;

        // Approval orchestrator: CIBA ping mode, pings on a listener of
        // their own that the test IdP delivers to.
        std::fs::create_dir_all(dir.join("approvals"))?;
        let secret_file = dir.join("ciba-client-secret");
        std::fs::write(&secret_file, PING_CLIENT.1)?;
        let ping_url = format!(
            "http://{}{}",
            addrs.ping,
            tether_ciba_orchestrator::GRPC_PORT_PING_PATH
        );
        self.idp.set_ping_target(PING_CLIENT.0, &ping_url).await?;
        self.spawn(
            APPROVALS,
            json!({
                "server": self.server(addrs.approvals, "ciba-orchestrator")?,
                "ciba": {
                    "issuer": self.idp.issuer(),
                    "client_id": PING_CLIENT.0,
                    "client_auth": { "method": "client_secret_basic", "secret_file": secret_file },
                    "delivery_mode": "ping",
                    "notification_endpoint": ping_url,
                },
                "ping": { "listen": addrs.ping.to_string() },
                "store": { "data_dir": dir.join("approvals") },
                "sessions": sessions,
                "grants": { "uses": grant_uses },
                "tickets": { "claim_interval_ms": 300, "owner_lease_ms": 3000, "watch_poll_ms": 100 },
            }),
        )?;
        self.wait_serving(addrs.approvals, "ciba-orchestrator")
            .await?;

        // The facade.
        let entities = dir.join("entities.json");
        std::fs::write(&entities, HR_ENTITIES)?;
        std::fs::create_dir_all(dir.join("audit"))?;
        let mut facade = json!({
            "server": self.server(addrs.facade, "agent-facade")?,
            "upstreams": {
                "identity_exchange": identity_url,
                "policy_decision": format!("https://{}", addrs.pdp),
                "credential_issuer": format!("https://{}", addrs.issuer),
                "ciba_orchestrator": format!("https://{}", addrs.approvals),
                "timeout_ms": 5000,
            },
            "sessions": sessions,
            "policy": { "entities_file": entities },
            "network": { "zones": [{ "name": "corp", "cidrs": ["127.0.0.0/8"], "trusted": true }] },
            "audit": { "data_dir": dir.join("audit"), "checkpoint_interval_secs": 1 },
            "profiles": {
                "hr-read": { "actions": ["Action::\"read\""], "resource_types": ["Employee"] },
                "hr-write": {
                    "actions": ["Action::\"offboard\"", "Action::\"update_salary\""],
                    "resource_types": ["Employee"],
                },
            },
        });
        if let Some(table) = monitoring {
            facade["monitoring"] = table;
        }
        self.spawn(FACADE, facade)?;
        // Health is open to callers without a certificate, like agents.
        let channel = self.facade_channel()?;
        self.wait_health(channel).await
    }

    fn server(&self, listen: SocketAddr, identity: &str) -> anyhow::Result<Value> {
        Ok(json!({
            "listen": listen.to_string(),
            "shutdown_delay_secs": 0,
            "drain_timeout_secs": 2,
            "tls": serde_json::to_value(self.pki.tls(identity)?)?,
        }))
    }

    /// Starts `name` with `config`, through a link of that name to the
    /// `tether-services` dispatcher.
    fn spawn(&mut self, name: &'static str, config: Value) -> anyhow::Result<()> {
        let link = self.bin_dir.path().join(name);
        std::os::unix::fs::symlink(&self.services_bin, &link)
            .with_context(|| format!("linking {name}"))?;
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&strip_nulls(config))?)?;
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(&link);
        // Relative default paths (data directories) land in the stack's
        // directory.
        // `TETHER_*` variables are configuration to a service: only the
        // file above configures it, whatever this process's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TETHER_") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(&path)
            .env("TETHER_LOG", "info")
            .env("TETHER_LOG_FORMAT", "json")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_SERVICE_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        match &self.otlp_endpoint {
            Some(endpoint) => {
                command
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                    .env("OTEL_BSP_SCHEDULE_DELAY", "100");
            }
            None => {
                command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", self.services_bin.display()))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// Waits until the last started service answers gRPC health, called
    /// with the facade's certificate (as the facade calls it).
    async fn wait_serving(&mut self, addr: SocketAddr, service: &str) -> anyhow::Result<()> {
        let channel = self.pki.channel("agent-facade", addr, service)?;
        self.wait_health(channel).await
    }

    async fn wait_health(&mut self, channel: InternalChannel) -> anyhow::Result<()> {
        let Some(proc) = self.procs.last_mut() else {
            bail!("no service started");
        };
        let health = tonic_health::pb::health_client::HealthClient::new(channel);
        let result = eventually(START_TIMEOUT, || {
            let mut health = health.clone();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Err(format!("exited: {status}"));
                }
                health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        result.map_err(|e| anyhow::anyhow!("{} did not start ({e}):\n{}", proc.name, proc.log()))
    }
}

/// `config` without `null`s (TOML has none).
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
