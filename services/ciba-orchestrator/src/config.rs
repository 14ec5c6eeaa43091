//! Configuration of the approval orchestrator (`ciba-orchestrator.toml`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tether_runtime::{ConfigError, ServerConfig, ServiceConfig};
use tether_token::SessionsConfig;

use crate::ciba::{CibaConfig, DeliveryMode};

/// `ciba-orchestrator.toml`:
///
/// ```toml
/// [server]
/// listen = "0.0.0.0:7004"
///
/// [ciba]                                   # the IdP and this client's registration
/// issuer = "https://login.example.com"
/// client_id = "tether-approvals"
/// delivery_mode = "ping"                   # or "poll"; "push" is refused
/// notification_endpoint = "https://tether.example.com/ciba/notify"
/// [ciba.client_auth]
/// method = "private_key_jwt"
/// key_file = "/etc/tether/ciba-client.pem"
///
/// [ping]
/// listen = "0.0.0.0:7014"                  # pings on their own listener (behind TLS termination)
///
/// [store]
/// url = "postgres://tether@db/tether"      # default: SQLite under data_dir
///
/// [sessions]                               # every call acting for a session carries the agent's token
/// token_issuer = "https://tether.example.com"
/// audience = "https://tether.example.com/facade"
/// jwks_url = "https://identity-exchange:7001/.well-known/jwks.json"
/// identity_exchange = "https://identity-exchange:7001"
///
/// [grants]
/// ttl_secs = 300
/// uses = 1
///
/// [limits]                                 # against push-bombing and approval fatigue
/// prompts_per_user = 3
/// prompt_window_secs = 300
/// cool_down_secs = 300
/// escalation_after = 3
/// escalation_window_secs = 900
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// The CIBA client: the IdP, this client's id and authentication.
    pub ciba: CibaConfig,
    /// Where the IdP's pings are received (ping mode).
    #[serde(default)]
    pub ping: PingConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// How calls prove the session they act for: the agent's delegated
    /// token, verified against the identity exchange.
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub grants: GrantsConfig,
    #[serde(default)]
    pub limits: FatigueLimits,
    #[serde(default)]
    pub tickets: TicketsConfig,
}

/// The ping listener (`[ping]`). The URL the IdP calls is
/// `ciba.notification_endpoint` (its path is what is served); it is
/// registered with the IdP and never taken from a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PingConfig {
    /// Serve pings on their own plain-HTTP listener (put TLS termination in
    /// front of it: pings carry bearer tokens). Unset: pings are served on
    /// the gRPC port, over the same TLS, without a client certificate.
    pub listen: Option<SocketAddr>,
}

/// The ticket store (`[store]`): SQLite at
/// `<data_dir>/ciba-orchestrator.db` (one replica) unless `url` names a
/// PostgreSQL database (schema `ciba_orchestrator`).
pub use tether_store::StoreConfig;

/// The default SQLite file of the ticket store.
pub const STORE_FILE: &str = "ciba-orchestrator.db";

/// What an approval buys (`[grants]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsConfig {
    /// How long a grant lasts after the approval (never past the session).
    pub ttl_secs: u64,
    /// How many times the approved action may be done on it (at least 1).
    pub uses: u32,
}

impl Default for GrantsConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            uses: 1,
        }
    }
}

impl GrantsConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

/// Limits against push-bombing and approval fatigue (`[limits]`). Over any
/// of them a request is refused with RESOURCE_EXHAUSTED and the IdP is not
/// contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FatigueLimits {
    /// At most this many prompts to one user …
    pub prompts_per_user: u32,
    /// … in this many seconds (any agent, any session).
    pub prompt_window_secs: u64,
    /// After the user denies, the same (agent, action) does not prompt the
    /// user again for this long.
    pub cool_down_secs: u64,
    /// After this many denied or unanswered prompts from one agent …
    pub escalation_after: u32,
    /// … within this many seconds, that agent does not prompt the user
    /// until the window has passed.
    pub escalation_window_secs: u64,
}

impl Default for FatigueLimits {
    fn default() -> Self {
        Self {
            prompts_per_user: 3,
            prompt_window_secs: 300,
            cool_down_secs: 300,
            escalation_after: 3,
            escalation_window_secs: 900,
        }
    }
}

/// How tickets are driven (`[tickets]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketsConfig {
    /// How often a WatchApproval stream re-sends the current state while
    /// the ticket is pending (at most 30 s, as the contract promises).
    pub keepalive_secs: u64,
    /// How long a replica owns the tickets it drives without renewing; a
    /// ticket whose owner stopped is taken over after this.
    pub owner_lease_ms: u64,
    /// How often ownership is renewed, orphaned tickets are looked for,
    /// and pings received by other replicas are picked up.
    pub claim_interval_ms: u64,
    /// How often a WatchApproval stream re-reads its ticket from the store
    /// (changes made on this replica arrive at once; this bounds how late
    /// a change made by another replica is seen). PostgreSQL only: with
    /// SQLite there is no other replica, and a stream re-reads only at the
    /// keepalive.
    pub watch_poll_ms: u64,
    /// Ping mode: ask the token endpoint this long after the last fetch
    /// even without a ping, in case one was lost (never more often than
    /// the ticket's interval).
    pub ping_fallback_secs: u64,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            keepalive_secs: 15,
            owner_lease_ms: 30_000,
            claim_interval_ms: 5_000,
            watch_poll_ms: 1_000,
            ping_fallback_secs: 30,
        }
    }
}

impl TicketsConfig {
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }

    pub fn claim_interval(&self) -> Duration {
        Duration::from_millis(self.claim_interval_ms)
    }

    pub fn owner_lease(&self) -> Duration {
        Duration::from_millis(self.owner_lease_ms)
    }

    pub fn watch_poll(&self) -> Duration {
        Duration::from_millis(self.watch_poll_ms)
    }

    pub fn ping_fallback(&self) -> Duration {
        Duration::from_secs(self.ping_fallback_secs)
    }
}

/// The path pings are served on when they share the gRPC port (listed in
/// `tether_runtime::authz::SELF_AUTHENTICATING_PATHS`: the bearer
/// notification token authenticates the IdP, not a client certificate).
pub const GRPC_PORT_PING_PATH: &str = "/ciba/notify";

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.server.validate()?;
        self.ciba.validate().map_err(|e| prefix("ciba", e))?;
        self.sessions.validate()?;
        match (self.ciba.mode()?, self.ping.listen) {
            (DeliveryMode::Poll, Some(_)) => {
                return invalid(
                    "ping.listen is only used with ciba.delivery_mode = \"ping\"".into(),
                );
            }
            (DeliveryMode::Ping, None) if self.server.tls.insecure_plaintext => {
                return invalid(
                    "ciba.delivery_mode = \"ping\" with server.tls.insecure_plaintext needs ping.listen: pings carry bearer tokens and are not served on a plaintext gRPC port".into(),
                );
            }
            (DeliveryMode::Ping, None) if self.ping_path()? != GRPC_PORT_PING_PATH => {
                return invalid(format!(
                    "ciba.notification_endpoint must end in the path `{GRPC_PORT_PING_PATH}` when pings share the gRPC port (or set ping.listen)"
                ));
            }
            _ => {}
        }
        self.store.validate().map_err(ConfigError::Invalid)?;
        self.server
            .require_shared_store(&self.store.effective_url(STORE_FILE))?;
        if self.grants.uses == 0 || self.grants.uses > 100 {
            return invalid(format!(
                "grants.uses must be between 1 and 100, got {}",
                self.grants.uses
            ));
        }
        if self.grants.ttl_secs == 0 || self.grants.ttl_secs > 86_400 {
            return invalid(format!(
                "grants.ttl_secs must be between 1 and 86400, got {}",
                self.grants.ttl_secs
            ));
        }
        let l = &self.limits;
        if l.prompts_per_user == 0 || l.escalation_after == 0 {
            return invalid(
                "limits.prompts_per_user and limits.escalation_after must be at least 1".into(),
            );
        }
        for (name, secs) in [
            ("prompt_window_secs", l.prompt_window_secs),
            ("cool_down_secs", l.cool_down_secs),
            ("escalation_window_secs", l.escalation_window_secs),
        ] {
            if secs > 7 * 86_400 {
                return invalid(format!(
                    "limits.{name} must be at most 604800 (a week), got {secs}"
                ));
            }
        }
        let t = &self.tickets;
        if !(1..=30).contains(&t.keepalive_secs) {
            return invalid(format!(
                "tickets.keepalive_secs must be between 1 and 30, got {}",
                t.keepalive_secs
            ));
        }
        if !(1..=3_600).contains(&t.ping_fallback_secs) {
            return invalid(format!(
                "tickets.ping_fallback_secs must be between 1 and 3600, got {}",
                t.ping_fallback_secs
            ));
        }
        if !(50..=30_000).contains(&t.watch_poll_ms) {
            return invalid(format!(
                "tickets.watch_poll_ms must be between 50 and 30000, got {}",
                t.watch_poll_ms
            ));
        }
        if t.claim_interval_ms < 100 || t.owner_lease_ms < t.claim_interval_ms.saturating_mul(3) {
            return invalid(format!(
                "tickets.claim_interval_ms ({}) must be at least 100 and tickets.owner_lease_ms ({}) at least three times it",
                t.claim_interval_ms, t.owner_lease_ms
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The path of `ciba.notification_endpoint`: what the ping listener
    /// serves.
    pub fn ping_path(&self) -> Result<String, ConfigError> {
        let endpoint = self
            .ciba
            .notification_endpoint
            .as_deref()
            .unwrap_or_default();
        url::Url::parse(endpoint)
            .map(|u| u.path().to_owned())
            .map_err(|e| ConfigError::Invalid(format!("ciba.notification_endpoint: {e}")))
    }
}

fn prefix(table: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid(m) => ConfigError::Invalid(format!("{table}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra_top: &str, extra_ciba: &str) -> Result<Config, String> {
        let text = format!(
            r#"
{extra_top}
[server.tls]
insecure_plaintext = true

[ciba]
issuer = "https://login.example.com"
client_id = "tether"
{extra_ciba}
[ciba.client_auth]
method = "client_secret_basic"
secret_file = "/run/secrets/ciba"

[sessions]
token_issuer = "https://tether.example.com"
audience = "https://tether.example.com/facade"
jwks_url = "https://identity:7001/.well-known/jwks.json"
identity_exchange = "https://identity:7001"
"#
        );
        let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_are_the_documented_limits() {
        let config = parse("", "").unwrap();
        assert_eq!(config.limits, FatigueLimits::default());
        assert_eq!(config.limits.prompts_per_user, 3);
        assert_eq!(config.limits.prompt_window_secs, 300);
        assert_eq!(config.limits.cool_down_secs, 300);
        assert_eq!(config.limits.escalation_after, 3);
        assert_eq!(config.limits.escalation_window_secs, 900);
        assert_eq!(config.grants.uses, 1);
        assert!(
            config
                .store
                .effective_url(STORE_FILE)
                .ends_with("ciba-orchestrator.db?mode=rwc")
        );
    }

    #[test]
    fn replicas_need_a_shared_store() {
        let e = parse("[server]\nreplicas = 2", "").unwrap_err();
        assert!(
            e.contains("server.replicas = 2") && e.contains("SQLite"),
            "{e}"
        );
        assert!(
            parse(
                "[store]\nurl = \"postgres://tether@db/tether\"\n[server]\nreplicas = 2",
                ""
            )
            .is_ok()
        );
    }

    #[test]
    fn push_mode_is_refused_at_configuration_time() {
        let e = parse("", "delivery_mode = \"push\"").unwrap_err();
        assert!(e.contains("`push` is not supported"), "{e}");
    }

    #[test]
    fn ping_listener_rules() {
        let e = parse(
            "",
            "delivery_mode = \"ping\"\nnotification_endpoint = \"http://127.0.0.1:9/ciba/notify\"",
        )
        .unwrap_err();
        assert!(e.contains("needs ping.listen"), "{e}");
        assert!(
            parse(
                "[ping]\nlisten = \"127.0.0.1:0\"",
                "delivery_mode = \"ping\"\nnotification_endpoint = \"http://127.0.0.1:9/ciba/notify\""
            )
            .is_ok()
        );
        let e = parse("[ping]\nlisten = \"127.0.0.1:0\"", "").unwrap_err();
        assert!(e.contains("only used with"), "{e}");
    }

    #[test]
    fn bad_limits_are_refused() {
        for (top, what) in [
            ("[grants]\nuses = 0", "grants.uses"),
            ("[grants]\nttl_secs = 0", "grants.ttl_secs"),
            ("[limits]\nprompts_per_user = 0", "prompts_per_user"),
            ("[tickets]\nkeepalive_secs = 60", "keepalive_secs"),
            ("[tickets]\nowner_lease_ms = 1000", "owner_lease_ms"),
            ("[store]\nurl = \"mysql://u:pw@h/d\"", "store.url"),
            ("colour = 1", "unknown field"),
        ] {
            let e = parse(top, "").unwrap_err();
            assert!(e.contains(what), "{top}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }
}
