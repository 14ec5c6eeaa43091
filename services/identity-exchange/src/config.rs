//! Configuration of the identity exchange.

use std::path::PathBuf;

use serde::Deserialize;
use tether_runtime::{ConfigError, ServerConfig, ServiceConfig};
pub use tether_store::PruningConfig;

/// `identity-exchange.toml`. The gRPC service and the OAuth HTTP endpoints
/// share one port.
///
/// ```toml
/// issuer = "https://tether.example.com"          # `iss` of delegated tokens
///
/// [server]
/// shutdown_delay_secs = 5        # SIGTERM: NOT_SERVING, still serving this long
/// drain_timeout_secs = 20        # the whole stop, then exit anyway
///
/// [http]
/// jwks_max_stale_secs = 3600     # an IdP's keys this stale (fetch failing): NOT_SERVING
///
/// [store]
/// url = "sqlite:///var/lib/tether/identity/identity.db"   # or postgres://…
///
/// [tokens]
/// max_lifetime_secs = 900
/// keys_dir = "/var/lib/tether/identity/keys"
///
/// [[trusted_issuers]]
/// issuer = "https://login.example.com"
/// audiences = ["https://tether.example.com"]
/// algorithms = ["ES256", "RS256"]
/// clients = ["tether-console"]
///
/// [[agents]]
/// id = "hr-assistant"
/// jwks_uri = "https://agents.example.com/hr-assistant/jwks.json"
/// audiences = ["https://hr.example.com"]
/// scopes = ["hr:read", "hr:offboard"]
/// may_act_for = { groups = ["hr"] }
///
/// [oauth]                                        # `/introspect` and `/revoke`
/// service_clients = ["agent-facade", "admin"]    # mTLS callers that may see any token
/// per_client_per_minute = 60
/// burst = 20
///
/// [pruning]                # ended sessions and expired assertion ids
/// retention_secs = 604800  # kept this long after they ended (at least 3600)
/// interval_secs = 600      # how often every replica prunes
/// batch_size = 1000        # rows per DELETE
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// This service's issuer URL: the `iss` of every delegated token. The
    /// token endpoint (the `aud` of actor assertions) is `{issuer}/token`.
    pub issuer: String,
    pub store: StoreConfig,
    #[serde(default)]
    pub tokens: TokenConfig,
    /// IdPs whose user tokens are accepted.
    #[serde(default)]
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// Registered agents.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// SPIFFE JWT-SVIDs as actor tokens.
    #[serde(default)]
    pub spiffe: Option<SpiffeConfig>,
    /// Outbound HTTP (discovery, JWKS).
    #[serde(default)]
    pub http: HttpConfig,
    /// Who may call `/introspect` and `/revoke`, and how often.
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// Pruning (`[pruning]`): sessions that ended (expired or revoked) and
    /// used assertion ids whose assertion expired are deleted
    /// `retention_secs` after that (`Store::prune`); never within
    /// [`tether_store::MIN_RETENTION_MS`], so a revoked session stays in the
    /// revocation feed while any of its tokens could verify.
    #[serde(default)]
    pub pruning: PruningConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of a delegated token; at most 900 (15 minutes).
    pub max_lifetime_secs: u64,
    /// Tolerated clock skew.
    pub leeway_secs: u64,
    /// Where signing keys live (PKCS#8 PEM, one per file). One is generated
    /// when the directory is empty. Replicas share it (a Kubernetes Secret).
    pub keys_dir: PathBuf,
    /// Generate a new signing key when the current one is this old; the old
    /// one keeps verifying until every token it signed has expired. 0 turns
    /// rotation off (keys managed outside, e.g. a shared Kubernetes Secret).
    pub rotate_after_secs: u64,
    /// How often `keys_dir` is read again, so that keys added or removed
    /// by another replica or from outside (a shared Kubernetes Secret) are
    /// published and used without a restart. 0: never.
    pub keys_reload_secs: u64,
    /// A key that appears in `keys_dir` while the service runs signs only
    /// this long after this replica first saw it (and after the file was
    /// written); until then it is published only. Longer than
    /// `keys_reload_secs`, so every replica publishes a key before any
    /// replica signs with it and a verifier never meets an unknown `kid`.
    pub key_activation_secs: u64,
    /// Longest `act` chain (1 = an agent, 2 = a sub-agent of it, …).
    pub max_delegation_depth: usize,
    /// Subject-token claims copied into the delegated token's `user` claim.
    pub propagate_claims: Vec<String>,
    /// Longest accepted lifetime (`exp - iat`) of an actor assertion.
    pub max_assertion_lifetime_secs: u64,
    /// Largest accepted token or assertion, in bytes.
    pub max_token_bytes: usize,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            max_lifetime_secs: 900,
            leeway_secs: 30,
            keys_dir: PathBuf::from("keys"),
            rotate_after_secs: 24 * 3600,
            keys_reload_secs: 30,
            key_activation_secs: 120,
            max_delegation_depth: 3,
            propagate_claims: ["groups", "roles", "department", "email"]
                .map(String::from)
                .to_vec(),
            max_assertion_lifetime_secs: 300,
            max_token_bytes: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values of its tokens.
    pub audiences: Vec<String>,
    /// Accepted signing algorithms (never taken from a token).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// JWKS URL. When absent it is found by OIDC discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Accept subject tokens whose `aud` array also names audiences not
    /// listed in `audiences`. Off by default: a token minted for several
    /// services is also a token for each of them, so whoever holds one
    /// of those services' copies could present it here.
    #[serde(default)]
    pub allow_multi_audience: bool,
    /// The IdP clients whose tokens are accepted as subject tokens: the
    /// token's `azp`, `client_id`, `cid` (Okta) or `appid` (Entra ID v1),
    /// or an ID token's single `aud`. Required; `["*"]` accepts any client
    /// of this IdP, deliberately.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Accepted `typ` headers of access tokens (case-insensitive).
    /// `at+jwt` (RFC 9068, also matching `application/at+jwt`) by default;
    /// Keycloak and Entra ID issue `JWT`; `none` accepts a token with no
    /// `typ` header (Okta).
    #[serde(default = "default_access_token_types")]
    pub access_token_types: Vec<String>,
    /// The claim that holds the user's scopes: `scope` (Keycloak, Auth0,
    /// RFC 9068) or `scp` (Entra ID, Okta); a space-separated string or an
    /// array of strings. No other claim is read.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// User attributes from the token's claims: attribute name → claim
    /// path, with `.` between nested names (Keycloak's
    /// `realm_access.roles`). The `groups` attribute is what agents'
    /// `may_act_for.groups` matches. Absent: `tokens.propagate_claims`,
    /// each from the claim of the same name.
    #[serde(default)]
    pub claims: Option<std::collections::BTreeMap<String, String>>,
    /// Accept tokens that name no human user (client-credentials tokens:
    /// `sub` is a client) as subject tokens. Off by default: a delegated
    /// token names the human an agent acts for.
    #[serde(default)]
    pub allow_service_subjects: bool,
    /// Accept ID tokens (`subject_token_type` id_token) as subject tokens.
    /// Off by default: an ID token tells a client who logged in, it is not
    /// a grant to any API.
    #[serde(default)]
    pub allow_id_tokens: bool,
}

fn default_access_token_types() -> Vec<String> {
    vec!["at+jwt".into()]
}

fn default_scope_claim() -> String {
    "scope".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Agent id: `iss` and `sub` of its assertions, `act.sub` in tokens.
    pub id: String,
    /// Its public keys, inline (a JWKS object)…
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// …or at a URL.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Its SPIFFE id, when it may prove itself with a JWT-SVID.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Audiences it may ever get.
    pub audiences: Vec<String>,
    /// Scopes it may ever get.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Which users it may act for. Empty means nobody.
    #[serde(default)]
    pub may_act_for: MayActFor,
    /// Accepted assertion algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The agents this one may delegate to: a delegated token acted by
    /// this agent may be re-exchanged by these agents only (sub-agent
    /// delegation). Empty means none.
    #[serde(default)]
    pub may_delegate_to: Vec<String>,
}

impl TrustedIssuer {
    /// The per-IdP token shape: clients, `typ`s, scope claim, claim paths.
    fn validate_token_shape(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| {
            Err(ConfigError::Invalid(format!(
                "trusted issuer `{}`: {m}",
                self.issuer
            )))
        };
        if self.clients.is_empty() || self.clients.iter().any(|c| c.trim().is_empty()) {
            return invalid(
                "`clients` must list the IdP clients whose tokens are accepted (`[\"*\"]` for any)",
            );
        }
        if self.access_token_types.is_empty()
            || self.access_token_types.iter().any(|t| t.trim().is_empty())
        {
            return invalid("`access_token_types` must list at least one non-empty `typ`");
        }
        if self.scope_claim != "scope" && self.scope_claim != "scp" {
            return invalid("`scope_claim` must be `scope` or `scp`");
        }
        for (attribute, path) in self.claims.iter().flatten() {
            if attribute.is_empty()
                || attribute == "idp"
                || path.is_empty()
                || path.split('.').any(str::is_empty)
            {
                return invalid(&format!(
                    "claims: `{attribute} = \"{path}\"` is not an attribute name (not `idp`) and a claim path"
                ));
            }
        }
        Ok(())
    }
}

/// `may_act`-style constraint: the user comes from `issuer` (required when
/// more than one IdP is trusted: `alice` at one IdP is not `alice` at
/// another), and their `sub` is listed (or `*`), or they are in one of the
/// groups.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MayActFor {
    pub issuer: Option<String>,
    pub subjects: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiffeConfig {
    pub trust_domain: String,
    /// The trust bundle's JWT authorities as a JWKS file (what the SPIRE
    /// agent or `spiffe-helper` writes; `"use": "x509-svid"` keys are
    /// ignored). Read again on the first SVID after
    /// `http.jwks_min_refresh_secs` and replaced when its content changed,
    /// so a SPIRE key rotation needs no restart; a new file that cannot be
    /// used is logged and the last good keys keep serving.
    pub bundle_path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub timeout_secs: u64,
    /// Smallest interval between JWKS refreshes caused by unknown `kid`s,
    /// and between two looks at the SPIFFE bundle file.
    pub jwks_min_refresh_secs: u64,
    /// Allowed staleness of a trusted IdP's keys: while its JWKS endpoint
    /// (or discovery) fails, the keys last fetched keep verifying for this
    /// long after that fetch, then tokens from that IdP are refused and
    /// gRPC health reports NOT_SERVING until a fetch succeeds again. An IdP
    /// whose keys were never fetched is not stale until a first fetch fails.
    pub jwks_max_stale_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 5,
            jwks_min_refresh_secs: 10,
            jwks_max_stale_secs: 3600,
        }
    }
}

/// Client authentication and rate limits of the RFC 7662 `/introspect` and
/// RFC 7009 `/revoke` endpoints (`[oauth]`). Registered agents authenticate
/// with `private_key_jwt` and reach only their own tokens; the services
/// listed here authenticate with their mTLS certificate and reach any token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// Tether service names (`agent-facade`, expanded to
    /// `spiffe://<server.tls.trust_domain>/tether/agent-facade`) or full
    /// `spiffe://` URIs.
    pub service_clients: Vec<String>,
    /// Sustained requests per minute per authenticated client; requests
    /// that fail authentication share one budget per source address.
    pub per_client_per_minute: u32,
    /// Requests a client may make at once before the sustained rate applies.
    pub burst: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            service_clients: vec!["agent-facade".into(), "admin".into()],
            per_client_per_minute: 60,
            burst: 20,
        }
    }
}

impl OAuthConfig {
    /// The SPIFFE IDs of `service_clients`, short names expanded in
    /// `trust_domain`.
    pub fn service_identities(&self, trust_domain: &str) -> Vec<String> {
        self.service_clients
            .iter()
            .map(|name| tether_runtime::tls::resolve_identity(trust_domain, name))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.per_client_per_minute == 0 {
            return invalid("oauth.per_client_per_minute must be at least 1".into());
        }
        if self.burst == 0 {
            return invalid("oauth.burst must be at least 1".into());
        }
        for name in &self.service_clients {
            let valid = match name.strip_prefix("spiffe://") {
                Some(rest) => rest.split_once('/').is_some_and(|(domain, path)| {
                    tether_runtime::tls::valid_trust_domain(domain)
                        && !path.is_empty()
                        && path.split('/').all(|segment| !segment.is_empty())
                }),
                None => {
                    !name.is_empty()
                        && name.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                        })
                }
            };
            if !valid {
                return invalid(format!(
                    "oauth.service_clients: `{name}` is neither a Tether service name (lowercase letters, digits, `-`, `_`) nor a `spiffe://<trust-domain>/<path>` URI"
                ));
            }
        }
        Ok(())
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["ES256".into()]
}

pub(crate) fn parse_algorithms(names: &[String]) -> Result<Vec<tether_token::Algorithm>, String> {
    use tether_token::Algorithm as A;
    names
        .iter()
        .map(|n| match n.as_str() {
            "ES256" => Ok(A::ES256),
            "ES384" => Ok(A::ES384),
            "EdDSA" => Ok(A::EdDSA),
            "RS256" => Ok(A::RS256),
            "RS384" => Ok(A::RS384),
            "RS512" => Ok(A::RS512),
            "PS256" => Ok(A::PS256),
            "PS384" => Ok(A::PS384),
            "PS512" => Ok(A::PS512),
            other => Err(format!(
                "algorithm `{other}` is not accepted (asymmetric algorithms only: ES256, ES384, EdDSA, RS256…)"
            )),
        })
        .collect()
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(self.issuer.starts_with("https://") || self.issuer.starts_with("http://")) {
            return invalid(format!("issuer `{}` must be an http(s) URL", self.issuer));
        }
        let t = &self.tokens;
        if t.max_lifetime_secs == 0 || t.max_lifetime_secs > 900 {
            return invalid("tokens.max_lifetime_secs must be between 1 and 900".into());
        }
        if self.http.jwks_max_stale_secs == 0 {
            return invalid("http.jwks_max_stale_secs must be at least 1".into());
        }
        if t.max_delegation_depth == 0 || t.max_delegation_depth > 10 {
            return invalid("tokens.max_delegation_depth must be between 1 and 10".into());
        }
        if tether_store::Backend::of(&self.store.url).is_none() {
            return invalid(format!(
                "store.url must start with `sqlite:` or `postgres://`, got `{}`",
                tether_store::redact_url(&self.store.url)
            ));
        }
        self.server.require_shared_store(&self.store.url)?;
        if let Some(problem) = self
            .pruning
            .problem("a revoked session stays listed while its tokens could verify")
        {
            return Err(ConfigError::Invalid(problem));
        }
        // Replicas share one key directory. Each rotating on its own clock
        // would write keys the others do not sign with or publish until
        // they re-read the directory: rotation is done outside (a new key
        // file in the shared Secret) and every replica picks it up.
        if self.server.replicas > 1
            && (t.keys_reload_secs == 0 || t.key_activation_secs <= t.keys_reload_secs)
        {
            return invalid(format!(
                "with server.replicas = {} every replica must re-read the shared keys: tokens.keys_reload_secs must be at least 1 and tokens.key_activation_secs longer than it",
                self.server.replicas
            ));
        }
        if self.server.replicas > 1 && t.rotate_after_secs != 0 {
            return invalid(format!(
                "tokens.rotate_after_secs must be 0 with server.replicas = {}: replicas share `tokens.keys_dir` and a new key is added to it from outside (see the README)",
                self.server.replicas
            ));
        }
        for issuer in &self.trusted_issuers {
            if issuer.audiences.is_empty() {
                return invalid(format!(
                    "trusted issuer `{}` needs at least one audience",
                    issuer.issuer
                ));
            }
            parse_algorithms(&issuer.algorithms).map_err(|e| {
                ConfigError::Invalid(format!("trusted issuer `{}`: {e}", issuer.issuer))
            })?;
            issuer.validate_token_shape()?;
        }
        let mut seen = std::collections::HashSet::new();
        for agent in &self.agents {
            if !seen.insert(agent.id.as_str()) {
                return invalid(format!("agent `{}` is registered twice", agent.id));
            }
            if agent.jwks.is_none() && agent.jwks_uri.is_none() && agent.spiffe_id.is_none() {
                return invalid(format!(
                    "agent `{}` needs `jwks`, `jwks_uri` or `spiffe_id`",
                    agent.id
                ));
            }
            if let Some(jwks) = &agent.jwks {
                let set: tether_token::JwkSet =
                    serde_json::from_value(jwks.clone()).map_err(|e| {
                        ConfigError::Invalid(format!("agent `{}`: jwks: {e}", agent.id))
                    })?;
                if tether_token::StaticKeys::new(&set).is_empty() {
                    return invalid(format!(
                        "agent `{}`: jwks has no usable public signing key",
                        agent.id
                    ));
                }
            }
            match &agent.may_act_for.issuer {
                None if self.trusted_issuers.len() > 1 => {
                    return invalid(format!(
                        "agent `{}`: `may_act_for.issuer` is required when more than one issuer is trusted",
                        agent.id
                    ));
                }
                Some(iss) if !self.trusted_issuers.iter().any(|t| &t.issuer == iss) => {
                    return invalid(format!(
                        "agent `{}`: `may_act_for.issuer` `{iss}` is not a trusted issuer",
                        agent.id
                    ));
                }
                _ => {}
            }
            if agent.audiences.is_empty() {
                return invalid(format!("agent `{}` needs at least one audience", agent.id));
            }
            parse_algorithms(&agent.algorithms)
                .map_err(|e| ConfigError::Invalid(format!("agent `{}`: {e}", agent.id)))?;
        }
        for agent in &self.agents {
            if let Some(unknown) = agent
                .may_delegate_to
                .iter()
                .find(|to| !self.agents.iter().any(|a| &a.id == *to))
            {
                return invalid(format!(
                    "agent `{}`: `may_delegate_to` names `{unknown}`, which is not a registered agent",
                    agent.id
                ));
            }
        }
        self.oauth.validate()?;
        if let Some(spiffe) = &self.spiffe {
            // The bundle as start-up will read it: JWT signing keys, or exit 64.
            crate::spiffe::check_bundle(&spiffe.bundle_path).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(clients: &[&str]) -> OAuthConfig {
        OAuthConfig {
            service_clients: clients.iter().map(|c| (*c).to_owned()).collect(),
            ..OAuthConfig::default()
        }
    }

    #[test]
    fn service_clients_expand_short_names_in_the_trust_domain() {
        let config = oauth(&["agent-facade", "spiffe://other.example/ns/prod/sa/admin"]);
        assert_eq!(
            config.service_identities("tether.local"),
            [
                "spiffe://tether.local/tether/agent-facade",
                "spiffe://other.example/ns/prod/sa/admin"
            ]
        );
        assert_eq!(
            OAuthConfig::default().service_identities("corp.example"),
            [
                "spiffe://corp.example/tether/agent-facade",
                "spiffe://corp.example/tether/admin"
            ]
        );
    }

    #[test]
    fn oauth_limits_and_names_are_validated() {
        assert!(OAuthConfig::default().validate().is_ok());
        assert!(
            oauth(&[]).validate().is_ok(),
            "no service clients is allowed"
        );
        for bad in [
            "",
            "Agent-Facade",
            "agent facade",
            "spiffe://",
            "spiffe://tether.local",
            "spiffe://tether.local/",
            "spiffe://Tether.local/tether/x",
            "spiffe://tether.local/tether//x",
            "https://tether.local/tether/x",
        ] {
            let err = oauth(&[bad]).validate().unwrap_err();
            assert!(
                err.to_string().contains("oauth.service_clients"),
                "{bad}: {err}"
            );
        }
        let zero_rate = OAuthConfig {
            per_client_per_minute: 0,
            ..OAuthConfig::default()
        };
        assert!(
            zero_rate
                .validate()
                .unwrap_err()
                .to_string()
                .contains("per_client_per_minute")
        );
        let zero_burst = OAuthConfig {
            burst: 0,
            ..OAuthConfig::default()
        };
        assert!(
            zero_burst
                .validate()
                .unwrap_err()
                .to_string()
                .contains("oauth.burst")
        );
    }

    fn replicated(url: &str, edit: impl FnOnce(&mut Config)) -> Result<(), ConfigError> {
        let mut config = Config {
            server: ServerConfig {
                tls: tether_runtime::TlsConfig::plaintext(),
                replicas: 2,
                ..ServerConfig::default()
            },
            issuer: "https://tether.example".into(),
            store: StoreConfig { url: url.into() },
            tokens: TokenConfig {
                rotate_after_secs: 0,
                ..TokenConfig::default()
            },
            trusted_issuers: Vec::new(),
            agents: Vec::new(),
            spiffe: None,
            http: HttpConfig::default(),
            oauth: OAuthConfig::default(),
            pruning: PruningConfig::default(),
        };
        edit(&mut config);
        config.validate()
    }

    #[test]
    fn a_retention_shorter_than_an_hour_or_an_empty_batch_is_refused() {
        let pg = "postgres://tether@db/tether";
        let err = replicated(pg, |c| c.pruning.retention_secs = 3599).unwrap_err();
        assert!(err.to_string().contains("pruning.retention_secs"), "{err}");
        assert!(replicated(pg, |c| c.pruning.retention_secs = 3600).is_ok());
        let err = replicated(pg, |c| c.pruning.batch_size = 0).unwrap_err();
        assert!(err.to_string().contains("pruning.batch_size"), "{err}");
        let err = replicated(pg, |c| c.pruning.interval_secs = 0).unwrap_err();
        assert!(err.to_string().contains("pruning.interval_secs"), "{err}");
    }

    #[test]
    fn replicas_need_a_shared_store_and_shared_keys() {
        let pg = "postgres://tether@db/tether";
        assert!(replicated(pg, |_| {}).is_ok());
        let err = replicated("sqlite:///data/id.db", |_| {}).unwrap_err();
        assert!(err.to_string().contains("server.replicas = 2"), "{err}");
        assert!(replicated("sqlite:///data/id.db", |c| c.server.replicas = 1).is_ok());
        let err = replicated(pg, |c| c.tokens.rotate_after_secs = 3600).unwrap_err();
        assert!(
            err.to_string()
                .contains("tokens.rotate_after_secs must be 0"),
            "{err}"
        );
        let err = replicated(pg, |c| c.tokens.keys_reload_secs = 0).unwrap_err();
        assert!(err.to_string().contains("keys_reload_secs"), "{err}");
        let err = replicated(pg, |c| c.tokens.key_activation_secs = 30).unwrap_err();
        assert!(err.to_string().contains("key_activation_secs"), "{err}");
    }
}
