//! Configuration of the agent facade (`agent-facade.toml`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tether_runtime::{ConfigError, ServerConfig, ServiceConfig};
use tether_token::SessionsConfig;

/// `agent-facade.toml`:
///
/// ```toml
/// [server]
/// listen = "0.0.0.0:7000"
///
/// [upstreams]                                # gRPC over mTLS, by SPIFFE identity
/// identity_exchange = "https://identity-exchange:7001"
/// policy_decision = "https://policy-decision:7002"
/// credential_issuer = "https://credential-issuer:7003"
/// ciba_orchestrator = "https://ciba-orchestrator:7004"
/// timeout_ms = 5000                          # per downstream call, never past the agent's deadline
///
/// [sessions]                                 # verifying the agents' delegated tokens
/// token_issuer = "https://tether.example.com"
/// audience = "https://tether.example.com/facade"
/// jwks_url = "https://identity-exchange:7001/.well-known/jwks.json"
/// identity_exchange = "https://identity-exchange:7001"
///
/// [policy]
/// entities_file = "/etc/tether/entities.json" # resource attributes (Cedar JSON entities)
///
/// [network]
/// zones = [{ name = "corp", cidrs = ["10.0.0.0/8"], trusted = true }]
///
/// [profiles.hr-read]
/// actions = ['Action::"read"']
/// resource_types = ["Employee"]
///
/// [audit]                                    # the transparency log of every decision
/// url = "postgres://tether@db/tether"        # default: SQLite <data_dir>/audit.db (one replica)
/// data_dir = "/var/lib/tether/facade"
/// key_file = "/etc/tether/audit-key.pem"     # default <data_dir>/audit-key.pem, generated when missing
/// origin = "audit.tether.example"            # the log's name in its checkpoints
/// checkpoint_interval_secs = 60
///
/// [monitoring]                               # risk from behaviour, quarantine, alerts
/// enabled = true                             # off: context.risk is [risk] baseline_score, level from it, no signals
/// url = "postgres://tether@db/tether"        # default: SQLite <data_dir>/monitoring.db (one replica)
/// data_dir = "/var/lib/tether/facade"
/// session_window_secs = 300                  # signals of one session are counted over this window
/// agent_window_secs = 900                    # ...and of one agent (all its sessions) over this one
/// medium_at = 40                             # score >= 40: level "medium"
/// high_at = 70                               # score >= 70: level "high"
/// weights = { denials = 10, out_of_intent = 25, approvals_denied = 30 }   # the rest keep their defaults
/// [[monitoring.rules]]                       # replaces the default rules when any is given
/// name = "denial-burst"
/// signal = "denials"
/// count = 5
/// window_secs = 60
/// quarantine = "session"                     # or "agent" (with duration_secs)
/// [monitoring.webhook]                       # optional: one signed POST per quarantine
/// url = "https://alerts.example.com/tether"
/// secret_file = "/etc/tether/webhook-secret" # HMAC-SHA256 key; never logged
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub upstreams: Upstreams,
    /// How delegated tokens are verified (the identity exchange's keys and
    /// session revocation list).
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub risk: RiskConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Credential profiles the facade will ask the issuer for, and the
    /// actions and resource types each may serve.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Risk from behaviour, quarantine and alerts (see `monitoring.rs`).
    #[serde(default)]
    pub monitoring: crate::monitoring::MonitoringConfig,
}

/// The four internal services.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub identity_exchange: String,
    pub policy_decision: String,
    pub credential_issuer: String,
    pub ciba_orchestrator: String,
    /// Deadline of each downstream call (shortened to the agent's own).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl Upstreams {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// How a decision request is built (`[policy]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Cedar entity type of the principal (the agent).
    pub agent_type: String,
    /// Cedar entity type of the delegating user (`delegator`).
    pub user_type: String,
    /// Cedar entity type of the user's groups (from the `groups` claim).
    pub group_type: String,
    /// Delegated-token user claims copied as string attributes of the
    /// user entity.
    pub user_attributes: Vec<String>,
    /// Tether's entity data: a Cedar JSON entities file with the resources'
    /// attributes. An agent never supplies them.
    pub entities_file: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            agent_type: "Agent".into(),
            user_type: "User".into(),
            group_type: "Group".into(),
            user_attributes: vec!["department".into()],
            entities_file: None,
        }
    }
}

/// Where a caller's address comes from and what it means (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Named address ranges; the first that contains the caller's address
    /// gives `context.network.zone` and `trusted`. Anything else is zone
    /// `external`, not trusted.
    pub zones: Vec<Zone>,
    /// Proxies (load balancers) whose client-address header is believed.
    /// The header is read only from a connection whose peer is one of
    /// them; otherwise the peer address is the caller's address.
    pub trusted_proxies: Vec<IpNet>,
    /// The header a trusted proxy sets (its last entry that is not itself a
    /// trusted proxy is the caller), e.g. `x-forwarded-for`.
    pub client_address_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    #[serde(default)]
    pub trusted: bool,
}

impl NetworkConfig {
    /// The zone of `ip`: (name, trusted).
    pub fn classify(&self, ip: IpAddr) -> (&str, bool) {
        self.zones
            .iter()
            .find(|z| z.cidrs.iter().any(|net| net.contains(&ip)))
            .map_or(("external", false), |z| (z.name.as_str(), z.trusted))
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// `context.now` (`[clock]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// Offset of the organisation's local time from UTC, for `hour` and
    /// `weekday`.
    pub utc_offset_minutes: i32,
}

/// `context.risk` (`[risk]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Added to every request's score (0 none … 100). With `[monitoring]`
    /// off it is the whole score; with it on, the behavioural score is
    /// added to it (capped at 100).
    pub baseline_score: i64,
}

/// `[approvals]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// What APPROVAL_REQUIRED tells a caller that does not watch: come back
    /// after this long.
    pub retry_after_secs: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            retry_after_secs: 2,
        }
    }
}

/// One credential profile (`[profiles.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Actions it serves, in Cedar uid form (`Action::"read"`).
    pub actions: Vec<String>,
    /// Resource entity types it serves (`Employee`).
    pub resource_types: Vec<String>,
}

/// The audit log (`[audit]`): every decision, issuance, approval, denial,
/// failure, revocation and session end, as leaves of a transparency log
/// (`tether-audit`). Checkpoints signed with `key_file` are published in the
/// store every `checkpoint_interval_secs` (and when the facade stops);
/// `tether audit verify` checks them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Record anything at all. `false` is for benchmarks and experiments
    /// only and is logged at WARN on every start.
    pub enabled: bool,
    /// `sqlite://…` or `postgres://…` (schema `audit`; one log shared by
    /// every replica, in one total order). Unset: SQLite at
    /// `<data_dir>/audit.db` (one replica only).
    pub url: Option<String>,
    /// Directory of the default SQLite file and key file.
    pub data_dir: PathBuf,
    /// The log's own Ed25519 checkpoint key (PKCS#8 PEM, never a
    /// token-signing key). Unset: `<data_dir>/audit-key.pem`. Generated on
    /// first start when missing; replicas sharing a store must share the
    /// key (generate it once, then distribute it). Its verifier key, what
    /// auditors keep, is written next to it with the extension `.vkey`.
    pub key_file: Option<PathBuf>,
    /// The log's name in checkpoints and in its verifier key.
    pub origin: String,
    /// How often a signed checkpoint of the log is published in the store.
    pub checkpoint_interval_secs: u64,
    /// Records waiting to be written behind the answer (decisions that
    /// neither issue nor involve an approval). When it is full, requests
    /// are denied.
    pub queue_capacity: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            data_dir: PathBuf::from("data"),
            key_file: None,
            origin: "audit.tether.local".into(),
            checkpoint_interval_secs: 60,
            queue_capacity: 4096,
        }
    }
}

impl AuditConfig {
    /// The store URL actually used.
    pub fn effective_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| tether_store::sqlite_url(&self.data_dir.join("audit.db")))
    }

    /// The key file actually used.
    pub fn effective_key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-key.pem"))
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_secs)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(url) = &self.url
            && tether_store::Backend::of(url).is_none()
        {
            return invalid(format!(
                "audit.url `{}` must be sqlite:… or postgres://…",
                tether_store::redact_url(url)
            ));
        }
        if !tether_audit::is_valid_origin(&self.origin) {
            return invalid(format!(
                "audit.origin `{}` must be non-empty, printable, without spaces or `+`",
                tether_runtime::clip(&self.origin)
            ));
        }
        if !(1..=3600).contains(&self.checkpoint_interval_secs) {
            return invalid(format!(
                "audit.checkpoint_interval_secs must be between 1 and 3600, got {}",
                self.checkpoint_interval_secs
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return invalid(format!(
                "audit.queue_capacity must be between 1 and 1000000, got {}",
                self.queue_capacity
            ));
        }
        Ok(())
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.server.validate()?;
        self.sessions.validate()?;
        for (key, value) in [
            ("identity_exchange", &self.upstreams.identity_exchange),
            ("policy_decision", &self.upstreams.policy_decision),
            ("credential_issuer", &self.upstreams.credential_issuer),
            ("ciba_orchestrator", &self.upstreams.ciba_orchestrator),
        ] {
            if !(value.starts_with("https://") || value.starts_with("http://"))
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return invalid(format!(
                    "upstreams.{key} `{value}` must be an http:// or https:// URL"
                ));
            }
        }
        if !(100..=60_000).contains(&self.upstreams.timeout_ms) {
            return invalid(format!(
                "upstreams.timeout_ms must be between 100 and 60000, got {}",
                self.upstreams.timeout_ms
            ));
        }
        let p = &self.policy;
        for (key, value) in [
            ("agent_type", &p.agent_type),
            ("user_type", &p.user_type),
            ("group_type", &p.group_type),
        ] {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '"') {
                return invalid(format!("policy.{key} `{value}` is not a Cedar type name"));
            }
        }
        if self.clock.utc_offset_minutes.abs() > 14 * 60 {
            return invalid(format!(
                "clock.utc_offset_minutes must be within ±840, got {}",
                self.clock.utc_offset_minutes
            ));
        }
        if !(0..=100).contains(&self.risk.baseline_score) {
            return invalid(format!(
                "risk.baseline_score must be between 0 and 100, got {}",
                self.risk.baseline_score
            ));
        }
        if !(1..=60).contains(&self.approvals.retry_after_secs) {
            return invalid(format!(
                "approvals.retry_after_secs must be between 1 and 60, got {}",
                self.approvals.retry_after_secs
            ));
        }
        if let Some(header) = &self.network.client_address_header {
            if self.network.trusted_proxies.is_empty() {
                return invalid(
                    "network.client_address_header needs network.trusted_proxies: the header is believed only from them".into(),
                );
            }
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return invalid(format!(
                    "network.client_address_header `{header}` is not a header name"
                ));
            }
        }
        self.audit.validate()?;
        self.monitoring.validate()?;
        if self.monitoring.enabled {
            // Signals and quarantines are shared state: replicas must
            // count in one store, or each would see a fraction.
            self.server
                .require_shared_store(&self.monitoring.effective_url())?;
        }
        if self.audit.enabled {
            // The audit log's one total order lives in its store (one head
            // row): replicas must share it.
            self.server
                .require_shared_store(&self.audit.effective_url())?;
        }
        for (name, profile) in &self.profiles {
            if name.is_empty() || name.len() > 128 {
                return invalid(format!("profiles: `{name}` is not a profile name"));
            }
            if profile.actions.is_empty() || profile.resource_types.is_empty() {
                return invalid(format!(
                    "profiles.{name} needs at least one action and one resource type"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!(
            r#"
[server.tls]
insecure_plaintext = true
[upstreams]
identity_exchange = "http://127.0.0.1:7001"
policy_decision = "http://127.0.0.1:7002"
credential_issuer = "http://127.0.0.1:7003"
ciba_orchestrator = "http://127.0.0.1:7004"
[sessions]
token_issuer = "https://tether.example.com"
audience = "https://tether.example.com/facade"
jwks_url = "http://127.0.0.1:7001/.well-known/jwks.json"
identity_exchange = "http://127.0.0.1:7001"
{extra}
"#
        );
        let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        tether_runtime::ServiceConfig::validate(&config).map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn zones_classify_addresses() {
        let config = parse(
            "[network]\nzones = [{ name = \"corp\", cidrs = [\"10.0.0.0/8\"], trusted = true }]",
        )
        .unwrap();
        assert_eq!(
            config.network.classify("10.1.2.3".parse().unwrap()),
            ("corp", true)
        );
        assert_eq!(
            config.network.classify("192.0.2.1".parse().unwrap()),
            ("external", false)
        );
    }

    #[test]
    fn audit_defaults_live_under_data_dir() {
        let config = parse("[audit]\ndata_dir = \"/var/lib/tether\"").unwrap();
        assert!(config.audit.enabled);
        assert_eq!(
            config.audit.effective_url(),
            "sqlite:///var/lib/tether/audit.db?mode=rwc"
        );
        assert_eq!(
            config.audit.effective_key_file(),
            PathBuf::from("/var/lib/tether/audit-key.pem")
        );
        assert_eq!(config.audit.checkpoint_interval(), Duration::from_secs(60));
    }

    #[test]
    fn replicas_need_a_shared_audit_store() {
        let e = parse("[server]\nreplicas = 2").unwrap_err();
        assert!(
            e.contains("server.replicas = 2") && e.contains("SQLite"),
            "{e}"
        );
        assert!(
            parse("[server]\nreplicas = 2\n[audit]\nurl = \"postgres://tether@db/tether\"").is_ok()
        );
        assert!(parse("[server]\nreplicas = 2\n[audit]\nenabled = false").is_ok());
        // The monitoring's counters and quarantines are shared the same way.
        let e =
            parse("[server]\nreplicas = 2\n[audit]\nenabled = false\n[monitoring]\nenabled = true")
                .unwrap_err();
        assert!(e.contains("SQLite"), "{e}");
        assert!(
            parse("[server]\nreplicas = 2\n[audit]\nenabled = false\n[monitoring]\nenabled = true\nurl = \"postgres://tether@db/tether\"").is_ok()
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for (extra, what) in [
            (
                "[network]\nclient_address_header = \"x-forwarded-for\"",
                "trusted_proxies",
            ),
            ("[risk]\nbaseline_score = 101", "baseline_score"),
            ("[clock]\nutc_offset_minutes = 900", "utc_offset_minutes"),
            (
                "[profiles.p]\nactions = []\nresource_types = [\"E\"]",
                "profiles.p",
            ),
            (
                "[network]\nzones = [{ name = \"x\", cidrs = [\"10.0.0.0/33\"] }]",
                "invalid",
            ),
            ("[audit]\nurl = \"mysql://u:pw@h/d\"", "audit.url"),
            ("[audit]\norigin = \"a b\"", "audit.origin"),
            (
                "[audit]\ncheckpoint_interval_secs = 0",
                "checkpoint_interval_secs",
            ),
            ("[audit]\nqueue_capacity = 0", "queue_capacity"),
            ("[monitoring]\nhigh_at = 0", "high_at"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(what), "{extra}: {e}");
        }
    }
}
