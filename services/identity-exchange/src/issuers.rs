//! Trusted IdPs: their verification rules and keys (OIDC discovery + JWKS).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::IssuerUrl;
use openidconnect::core::CoreProviderMetadata;
use tether_token::{Algorithm, JwksCache, TokenError, TypRule, VerifyPolicy};
use tokio::sync::{Mutex, OnceCell};

use crate::config::{Config, TrustedIssuer, parse_algorithms};

/// How long a failed discovery is remembered before it is tried again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct IssuerEntry {
    pub issuer: String,
    audiences: Vec<String>,
    allow_multi_audience: bool,
    algorithms: Vec<Algorithm>,
    jwks_uri: Option<String>,
    keys: OnceCell<JwksCache>,
    last_failure: Mutex<Option<(Instant, String)>>,
    http: reqwest::Client,
    min_refresh: Duration,
    leeway: Duration,
    max_token_bytes: usize,
}

impl IssuerEntry {
    fn new(config: &TrustedIssuer, root: &Config, http: reqwest::Client) -> Result<Self, String> {
        Ok(Self {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            allow_multi_audience: config.allow_multi_audience,
            algorithms: parse_algorithms(&config.algorithms)?,
            jwks_uri: config.jwks_uri.clone(),
            keys: OnceCell::new(),
            last_failure: Mutex::new(None),
            http,
            min_refresh: Duration::from_secs(root.http.jwks_min_refresh_secs),
            leeway: Duration::from_secs(root.tokens.leeway_secs),
            max_token_bytes: root.tokens.max_token_bytes,
        })
    }

    /// The verification rules for a subject token of this issuer.
    pub fn policy(&self, typ: TypRule) -> VerifyPolicy {
        let mut policy = VerifyPolicy::new(
            vec![self.issuer.clone()],
            self.audiences.clone(),
            self.algorithms.clone(),
        );
        policy.typ = typ;
        policy.leeway = self.leeway;
        policy.max_token_bytes = self.max_token_bytes;
        policy
    }

    /// The first `aud` value of a subject token that this issuer's
    /// configuration does not trust, unless it allows multi-audience
    /// tokens. (Verification already required one trusted value.)
    pub fn untrusted_audience<'a>(&self, aud: Option<&'a serde_json::Value>) -> Option<&'a str> {
        if self.allow_multi_audience {
            return None;
        }
        untrusted_audience(&self.audiences, aud)
    }

    /// The issuer's key cache, discovering its JWKS URL on first use.
    pub async fn keys(&self) -> Result<&JwksCache, TokenError> {
        if let Some(keys) = self.keys.get() {
            return Ok(keys);
        }
        {
            let failure = self.last_failure.lock().await;
            if let Some((at, message)) = failure.as_ref()
                && at.elapsed() < DISCOVERY_RETRY
            {
                return Err(TokenError::KeysUnavailable(message.clone()));
            }
        }
        let result = self
            .keys
            .get_or_try_init(|| async {
                let uri = match &self.jwks_uri {
                    Some(uri) => uri.clone(),
                    None => self.discover().await?,
                };
                Ok::<_, TokenError>(
                    JwksCache::new(uri, self.http.clone())
                        .with_min_refresh_interval(self.min_refresh),
                )
            })
            .await;
        if let Err(e) = &result {
            tracing::warn!(issuer = %self.issuer, error = %e, "IdP discovery failed");
            *self.last_failure.lock().await = Some((Instant::now(), e.to_string()));
        }
        result
    }

    async fn discover(&self) -> Result<String, TokenError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            TokenError::KeysUnavailable(format!("OIDC discovery for `{}` failed: {e}", self.issuer))
        };
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| unavailable(&e))?;
        let client = tether_token::oidc_client(self.http.clone());
        let metadata = CoreProviderMetadata::discover_async(issuer, &client)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(metadata.jwks_uri().url().to_string())
    }
}

/// Every trusted issuer, by exact `iss`.
#[derive(Debug, Default)]
pub struct TrustedIssuers {
    by_issuer: HashMap<String, Arc<IssuerEntry>>,
}

impl TrustedIssuers {
    pub fn new(config: &Config, http: &reqwest::Client) -> Result<Self, String> {
        let mut by_issuer = HashMap::new();
        for issuer in &config.trusted_issuers {
            by_issuer.insert(
                issuer.issuer.clone(),
                Arc::new(IssuerEntry::new(issuer, config, http.clone())?),
            );
        }
        Ok(Self { by_issuer })
    }

    pub fn get(&self, issuer: &str) -> Option<&Arc<IssuerEntry>> {
        self.by_issuer.get(issuer)
    }
}

/// The first value of an `aud` array that is not in `trusted`.
fn untrusted_audience<'a>(
    trusted: &[String],
    aud: Option<&'a serde_json::Value>,
) -> Option<&'a str> {
    let values = aud?.as_array()?;
    values.iter().find_map(|v| match v.as_str() {
        Some(a) if trusted.iter().any(|t| t == a) => None,
        Some(a) => Some(a),
        None => Some("(not a string)"),
    })
}

#[cfg(test)]
mod audience_tests {
    use serde_json::json;

    use super::untrusted_audience;

    #[test]
    fn an_aud_array_may_only_name_trusted_audiences() {
        let trusted = vec!["api".to_owned(), "cli".to_owned()];
        let check =
            |aud: serde_json::Value| untrusted_audience(&trusted, Some(&aud)).map(str::to_owned);
        assert_eq!(
            check(json!("api")),
            None,
            "a single value was checked by verify"
        );
        assert_eq!(check(json!(["api"])), None);
        assert_eq!(check(json!(["api", "cli"])), None);
        assert_eq!(check(json!(["api", "payments"])), Some("payments".into()));
        assert_eq!(check(json!(["payments", "api"])), Some("payments".into()));
        assert_eq!(check(json!(["api", 7])), Some("(not a string)".into()));
        assert_eq!(untrusted_audience(&trusted, None), None);
    }
}
