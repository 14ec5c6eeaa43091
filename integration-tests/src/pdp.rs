//! A policy decision point on loopback, serving a copy of a policy pack.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;
use tempfile::TempDir;
use tether_policy_decision::{Config, PolicyConfig, RequestLimits};
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_proto::policy::v1::{CheckRequest, EntityUid};
use tether_runtime::ServerConfig;
use tether_runtime::client::InternalChannel;

use crate::Running;
use crate::pki::TestPki;

/// The PDP's service name (its certificate's SPIFFE ID path).
pub const SERVICE: &str = "policy-decision";

/// Builds a [`PdpSandbox`].
#[derive(Debug)]
pub struct PdpSandboxBuilder {
    pack: PathBuf,
    limits: RequestLimits,
    server: ServerConfig,
    watch: bool,
    pki: Option<Arc<TestPki>>,
}

impl Default for PdpSandboxBuilder {
    fn default() -> Self {
        Self {
            pack: crate::workspace_root().join("examples/hr"),
            limits: RequestLimits::default(),
            server: ServerConfig::default(),
            watch: true,
            pki: None,
        }
    }
}

impl PdpSandboxBuilder {
    /// The pack to copy into the sandbox (default: `examples/hr`).
    pub fn pack(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pack = dir.into();
        self
    }

    pub fn limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Server settings; unless they say `insecure_plaintext`, the sandbox
    /// replaces `tls` with a certificate from its PKI.
    pub fn server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    /// Use this PKI (default: a fresh one).
    pub fn pki(mut self, pki: Arc<TestPki>) -> Self {
        self.pki = Some(pki);
        self
    }

    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Copies the pack into a fresh directory and starts the PDP's `run` on
    /// 127.0.0.1:0.
    pub async fn start(self) -> anyhow::Result<PdpSandbox> {
        let dir = tempfile::tempdir().context("creating the pack directory")?;
        crate::copy_dir(&self.pack, dir.path()).context("copying the pack")?;
        let pki = match self.pki {
            Some(pki) => pki,
            None => TestPki::new()?,
        };
        let mut server = self.server;
        if !server.tls.insecure_plaintext {
            server.tls = pki.tls(SERVICE)?;
        }
        let plaintext = server.tls.insecure_plaintext;
        let config = Config {
            server,
            policy: PolicyConfig {
                dir: dir.path().to_path_buf(),
                watch: self.watch,
                reload_debounce_ms: 100,
            },
            limits: self.limits,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut running =
            Running::spawn(|shutdown| tether_policy_decision::run(config, listener, shutdown));
        let channel = if plaintext {
            tether_runtime::client::Clients::new(&tether_runtime::TlsConfig::plaintext())?
                .grpc(&format!("http://{addr}"), SERVICE)?
        } else {
            pki.channel("agent-facade", addr, SERVICE)?
        };
        running.wait_serving(channel.clone()).await?;
        Ok(PdpSandbox {
            dir,
            addr,
            channel,
            pki,
            running,
        })
    }
}

/// A running PDP. Stops when dropped.
#[derive(Debug)]
pub struct PdpSandbox {
    dir: TempDir,
    addr: SocketAddr,
    channel: InternalChannel,
    pki: Arc<TestPki>,
    running: Running,
}

impl PdpSandbox {
    pub fn builder() -> PdpSandboxBuilder {
        PdpSandboxBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A channel as the agent facade (the PDP's normal caller).
    pub fn channel(&self) -> InternalChannel {
        self.channel.clone()
    }

    pub fn client(&self) -> PolicyDecisionClient<InternalChannel> {
        PolicyDecisionClient::new(self.channel.clone())
    }

    /// A client presenting `identity`'s certificate.
    pub fn client_as(
        &self,
        identity: &str,
    ) -> anyhow::Result<PolicyDecisionClient<InternalChannel>> {
        Ok(PolicyDecisionClient::new(
            self.pki.channel(identity, self.addr, SERVICE)?,
        ))
    }

    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    /// The live pack directory: writing here triggers a hot reload.
    pub fn pack_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

/// A Cedar entity uid for a request.
pub fn uid(t: &str, id: &str) -> Option<EntityUid> {
    Some(EntityUid {
        r#type: t.into(),
        id: id.into(),
    })
}

/// The `examples/hr` entities: agent `hr-assistant` acting for `alice`
/// (member of `delegator_group`), employee 1042.
pub fn hr_entities(delegator_group: &str) -> String {
    json!([
        {"uid": {"type": "Agent", "id": "hr-assistant"}, "attrs": {"delegator": {"__entity": {"type": "User", "id": "alice"}}}, "parents": []},
        {"uid": {"type": "User", "id": "alice"}, "attrs": {"department": "people"}, "parents": [{"type": "Group", "id": delegator_group}]},
        {"uid": {"type": "Employee", "id": "1042"}, "attrs": {"department": "sales"}, "parents": []}
    ])
    .to_string()
}

/// A context at `hour`, with an approval when `approval` is set.
pub fn hr_context(hour: i64, approval: Option<bool>) -> serde_json::Value {
    let mut ctx = json!({
        "now": {"hour": hour, "weekday": 2, "unix": 1_795_000_000},
        "network": {"ip": "10.1.2.3", "trusted": true, "zone": "corp"},
        "session": {"id": "s-1", "age_seconds": 30, "intent": "review", "in_intent": true},
        "risk": {"score": 5, "level": "low", "signals": {"denials": 0, "denial_rate_pct": 0, "out_of_intent": 0, "other_users_resources": 0, "approvals_requested": 0, "approvals_denied": 0, "approvals_ignored": 0, "credential_requests_per_min": 0, "distinct_resources_per_min": 0, "token_failures": 0}}
    });
    if let Some(granted) = approval {
        ctx["approval"] = json!({"granted": granted, "ticket": "t-1", "approver": "alice"});
    }
    ctx
}

/// `hr-assistant` doing `action` on employee 1042 in context `ctx`.
pub fn hr_request(action: &str, ctx: &serde_json::Value) -> CheckRequest {
    CheckRequest {
        principal: uid("Agent", "hr-assistant"),
        action: uid("Action", action),
        resource: uid("Employee", "1042"),
        context_json: ctx.to_string(),
        entities_json: hr_entities("hr"),
        request_id: "req-1".into(),
    }
}

impl PdpSandbox {
    /// Stops serving (an unreachable PDP) while the stack that owns the
    /// sandbox keeps running.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}
