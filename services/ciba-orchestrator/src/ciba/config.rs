//! Configuration of the CIBA client.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use serde::Deserialize;
use tether_runtime::ConfigError;
use tether_token::Algorithm;

/// Longest `requested_expiry` the configuration may allow (a day).
const MAX_EXPIRY_SECS: u64 = 24 * 3600;

/// The CIBA client's settings (the `[ciba]` table of the orchestrator's
/// configuration).
///
/// ```toml
/// issuer = "https://login.example.com"     # endpoints from its discovery document
/// client_id = "tether-approvals"
/// delivery_mode = "poll"                   # or "ping"; "push" is refused
/// scope = "openid"                         # must contain `openid`
/// requested_expiry_secs = 300              # default time the user has to answer
/// max_requested_expiry_secs = 600          # cap for a caller's requested expiry
///
/// [client_auth]
/// method = "private_key_jwt"               # RFC 7523, ES256
/// key_file = "/etc/tether/ciba-client.pem" # PKCS#8 or SEC1 PEM, or a private JWK
/// # or: method = "client_secret_basic", secret_file = "/run/secrets/ciba-client-secret"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CibaConfig {
    /// The IdP's issuer identifier: `iss` of its ID tokens, `aud` of this
    /// client's assertions, and where its discovery document is.
    pub issuer: String,
    /// This client's id at the IdP.
    pub client_id: String,
    /// How this client authenticates to the IdP.
    pub client_auth: ClientAuthConfig,
    /// How the IdP tells the client that the user answered.
    #[serde(default)]
    pub delivery_mode: DeliveryModeSetting,
    /// Where the IdP sends pings (ping mode only; required then). The IdP
    /// knows it from the client's registration; here it configures the
    /// listener. Never taken from a request.
    #[serde(default)]
    pub notification_endpoint: Option<String>,
    /// Scope of the authentication request; must contain `openid`.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Time the user has to answer when the caller does not say.
    #[serde(default = "default_requested_expiry")]
    pub requested_expiry_secs: u64,
    /// Longest time a caller may give the user; also caps the IdP's
    /// `expires_in` for the client's own deadline.
    #[serde(default = "default_max_requested_expiry")]
    pub max_requested_expiry_secs: u64,
    /// Accepted ID-token signing algorithms (never taken from a token).
    #[serde(default = "default_algorithms")]
    pub id_token_algorithms: Vec<String>,
    /// Tolerated clock skew on ID-token `exp`, `iat` and `nbf`.
    #[serde(default = "default_leeway")]
    pub id_token_leeway_secs: u64,
    /// Longest `binding_message` the IdP accepts, in characters; longer
    /// sentences are shortened so that the confirmation code always fits.
    #[serde(default = "default_binding_max")]
    pub binding_message_max_chars: usize,
    /// Outbound HTTP to the IdP.
    #[serde(default)]
    pub http: HttpSettings,
}

/// How the client authenticates to the IdP's backchannel and token
/// endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientAuthConfig {
    /// RFC 7523 client assertions signed with an ES256 (P-256) key: a fresh
    /// `jti` per request, `exp` 60 s after `iat`, `aud` = the IdP's issuer.
    PrivateKeyJwt {
        /// PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`)
        /// PEM, or a private JWK (`kty` `EC`, `crv` `P-256`, `d`).
        key_file: PathBuf,
        /// `kid` of the assertions. Default: the JWK's `kid`, else the
        /// key's RFC 7638 thumbprint.
        #[serde(default)]
        key_id: Option<String>,
    },
    /// HTTP Basic with the client secret, read from a file (surrounding
    /// whitespace is ignored).
    ClientSecretBasic {
        /// File holding the secret.
        secret_file: PathBuf,
    },
}

/// The configured delivery mode, as written. `push` exists only to be
/// refused with a clear message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryModeSetting {
    #[default]
    Poll,
    Ping,
    Push,
}

/// A delivery mode this client supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The client polls the token endpoint at the IdP's interval.
    Poll,
    /// The IdP calls the notification endpoint with the request's bearer
    /// notification token; the client then fetches the result from the
    /// token endpoint.
    Ping,
}

impl DeliveryMode {
    /// The CIBA name (`poll`, `ping`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Ping => "ping",
        }
    }
}

/// Outbound HTTP settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Timeout of each request to the IdP (connect and whole exchange).
    pub timeout_secs: u64,
    /// Smallest interval between JWKS refreshes caused by unknown `kid`s.
    pub jwks_min_refresh_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 5,
            jwks_min_refresh_secs: 10,
        }
    }
}

fn default_scope() -> String {
    "openid".into()
}

fn default_requested_expiry() -> u64 {
    300
}

fn default_max_requested_expiry() -> u64 {
    600
}

fn default_algorithms() -> Vec<String> {
    vec!["ES256".into()]
}

fn default_leeway() -> u64 {
    30
}

fn default_binding_max() -> usize {
    100
}

fn invalid<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message))
}

impl CibaConfig {
    /// Checks everything that can be checked without reading files or
    /// contacting the IdP.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_http_url("issuer", &self.issuer)?;
        if self.client_id.is_empty()
            || self.client_id.len() > 256
            || self.client_id.chars().any(char::is_control)
        {
            return invalid("client_id must be 1 to 256 bytes without control characters".into());
        }
        match &self.client_auth {
            ClientAuthConfig::PrivateKeyJwt { key_id, .. } => {
                if key_id
                    .as_deref()
                    .is_some_and(|k| k.is_empty() || k.chars().any(char::is_control))
                {
                    return invalid(
                        "client_auth.key_id must not be empty or contain control characters".into(),
                    );
                }
            }
            ClientAuthConfig::ClientSecretBasic { .. } => {}
        }
        let mode = self.mode()?;
        match (mode, &self.notification_endpoint) {
            (DeliveryMode::Ping, None) => {
                return invalid(
                    "delivery_mode `ping` needs `notification_endpoint`: the URL the IdP pings (as registered for this client)".into(),
                );
            }
            (DeliveryMode::Ping, Some(url)) => check_notification_endpoint(url)?,
            (DeliveryMode::Poll, Some(_)) => {
                return invalid(
                    "notification_endpoint is only used with delivery_mode `ping`".into(),
                );
            }
            (DeliveryMode::Poll, None) => {}
        }
        check_scope(&self.scope)?;
        if self.requested_expiry_secs == 0 || self.max_requested_expiry_secs == 0 {
            return invalid(
                "requested_expiry_secs and max_requested_expiry_secs must be at least 1".into(),
            );
        }
        if self.max_requested_expiry_secs > MAX_EXPIRY_SECS {
            return invalid(format!(
                "max_requested_expiry_secs must be at most {MAX_EXPIRY_SECS} (a day), got {}",
                self.max_requested_expiry_secs
            ));
        }
        if self.requested_expiry_secs > self.max_requested_expiry_secs {
            return invalid(format!(
                "requested_expiry_secs ({}) is over max_requested_expiry_secs ({})",
                self.requested_expiry_secs, self.max_requested_expiry_secs
            ));
        }
        self.algorithms()?;
        if self.id_token_leeway_secs > 300 {
            return invalid("id_token_leeway_secs must be at most 300".into());
        }
        if !(32..=1024).contains(&self.binding_message_max_chars) {
            return invalid(format!(
                "binding_message_max_chars must be between 32 and 1024, got {}",
                self.binding_message_max_chars
            ));
        }
        if !(1..=60).contains(&self.http.timeout_secs) {
            return invalid("http.timeout_secs must be between 1 and 60".into());
        }
        Ok(())
    }

    /// The delivery mode, or why it is refused.
    pub fn mode(&self) -> Result<DeliveryMode, ConfigError> {
        match self.delivery_mode {
            DeliveryModeSetting::Poll => Ok(DeliveryMode::Poll),
            DeliveryModeSetting::Ping => Ok(DeliveryMode::Ping),
            DeliveryModeSetting::Push => invalid(
                "delivery_mode `push` is not supported: FAPI-CIBA forbids push mode (the ID token must be fetched from the token endpoint, never delivered to the client); use `poll` or `ping`".into(),
            ),
        }
    }

    /// The accepted ID-token algorithms (asymmetric only).
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        if self.id_token_algorithms.is_empty() {
            return invalid("id_token_algorithms must name at least one algorithm".into());
        }
        self.id_token_algorithms
            .iter()
            .map(|name| match Algorithm::from_str(name) {
                Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => invalid(
                    format!(
                        "id_token_algorithms: `{}` is not accepted (asymmetric algorithms only: ES256, ES384, EdDSA, RS256, PS256…)",
                        tether_runtime::clip(name)
                    ),
                ),
                Ok(alg) => Ok(alg),
            })
            .collect()
    }

    /// The default and the longest expiry.
    pub(crate) fn expiries(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.requested_expiry_secs),
            Duration::from_secs(self.max_requested_expiry_secs),
        )
    }
}

fn check_http_url(what: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| {
        ConfigError::Invalid(format!(
            "{what} `{}` is not a URL: {e}",
            tether_runtime::clip(text)
        ))
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return invalid(format!(
            "{what} `{}` must be an http(s) URL with a host",
            tether_runtime::clip(text)
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return invalid(format!(
            "{what} `{}` must not have a query or a fragment",
            tether_runtime::clip(text)
        ));
    }
    Ok(url)
}

/// Pings carry a bearer token: only over https, or plain http to this host.
fn check_notification_endpoint(text: &str) -> Result<(), ConfigError> {
    let url = check_http_url("notification_endpoint", text)?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return invalid(format!(
            "notification_endpoint `{}` must be https (plain http only on a loopback address)",
            tether_runtime::clip(text)
        ));
    }
    Ok(())
}

/// RFC 6749 §3.3 scope tokens, one of which is `openid`.
fn check_scope(scope: &str) -> Result<(), ConfigError> {
    let tokens: Vec<&str> = scope.split(' ').collect();
    let valid_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
    };
    if !tokens.iter().all(|t| valid_token(t)) {
        return invalid(format!(
            "scope `{}` must be scope tokens separated by single spaces",
            tether_runtime::clip(scope)
        ));
    }
    if !tokens.contains(&"openid") {
        return invalid(format!(
            "scope `{}` must contain `openid`: a CIBA request is an OpenID Connect authentication request",
            tether_runtime::clip(scope)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<CibaConfig, String> {
        let text = format!(
            "issuer = \"https://login.example.com\"\nclient_id = \"tether\"\n{extra}\n[client_auth]\nmethod = \"client_secret_basic\"\nsecret_file = \"/run/secrets/ciba\"\n"
        );
        let config: CibaConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_are_poll_openid_and_es256() {
        let config = parse("").unwrap();
        assert_eq!(config.mode().unwrap(), DeliveryMode::Poll);
        assert_eq!(config.scope, "openid");
        assert_eq!(config.algorithms().unwrap(), [Algorithm::ES256]);
        assert_eq!(config.binding_message_max_chars, 100);
    }

    #[test]
    fn push_mode_is_refused_with_the_reason() {
        let e = parse("delivery_mode = \"push\"").unwrap_err();
        assert!(
            e.contains("`push` is not supported") && e.contains("FAPI-CIBA"),
            "{e}"
        );
    }

    #[test]
    fn scope_must_contain_openid() {
        let e = parse("scope = \"profile email\"").unwrap_err();
        assert!(e.contains("must contain `openid`"), "{e}");
        assert!(
            parse("scope = \"openid  hr:offboard\"").is_err(),
            "double space"
        );
        assert!(parse("scope = \"openid hr:offboard\"").is_ok());
        assert!(parse("scope = \"openidx\"").is_err(), "a whole token");
    }

    #[test]
    fn ping_needs_a_safe_notification_endpoint_and_poll_refuses_one() {
        let e = parse("delivery_mode = \"ping\"").unwrap_err();
        assert!(e.contains("needs `notification_endpoint`"), "{e}");
        let e = parse(
            "delivery_mode = \"ping\"\nnotification_endpoint = \"http://tether.example.com/ciba\"",
        )
        .unwrap_err();
        assert!(e.contains("must be https"), "{e}");
        assert!(
            parse(
                "delivery_mode = \"ping\"\nnotification_endpoint = \"http://127.0.0.1:7010/ciba\""
            )
            .is_ok()
        );
        assert!(
            parse("delivery_mode = \"ping\"\nnotification_endpoint = \"https://tether.example.com/ciba\"")
                .is_ok()
        );
        let e = parse("notification_endpoint = \"https://tether.example.com/ciba\"").unwrap_err();
        assert!(e.contains("only used with delivery_mode `ping`"), "{e}");
    }

    #[test]
    fn unknown_keys_symmetric_algorithms_and_bad_limits_are_refused() {
        assert!(
            parse("colour = \"blue\"")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            parse("id_token_algorithms = [\"HS256\"]")
                .unwrap_err()
                .contains("asymmetric algorithms only")
        );
        assert!(parse("requested_expiry_secs = 0").is_err());
        assert!(
            parse("requested_expiry_secs = 900").is_err(),
            "over the max"
        );
        assert!(parse("binding_message_max_chars = 10").is_err());
        let bad_auth = "issuer = \"https://login.example.com\"\nclient_id = \"t\"\n[client_auth]\nmethod = \"client_secret_basic\"\nsecret = \"inline\"\n";
        assert!(
            toml::from_str::<CibaConfig>(bad_auth).is_err(),
            "no inline secret"
        );
    }

    #[test]
    fn the_issuer_must_be_an_http_url_without_query() {
        let mut config = parse("").unwrap();
        for bad in ["ftp://idp.example", "not a url", "https://idp.example/?x=1"] {
            config.issuer = bad.into();
            assert!(config.validate().is_err(), "{bad}");
        }
        config.issuer = "http://127.0.0.1:4000".into();
        assert!(config.validate().is_ok());
    }
}
