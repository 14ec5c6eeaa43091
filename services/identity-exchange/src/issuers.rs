//! Trusted IdPs: their verification rules and keys (OIDC discovery + JWKS).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::IssuerUrl;
use openidconnect::core::CoreProviderMetadata;
use serde_json::{Map, Value};
use tether_runtime::clip;
use tether_token::{Actor, Algorithm, JwksCache, TokenError, TypRule, VerifyPolicy};
use tokio::sync::{Mutex, OnceCell};

use crate::config::{Config, TrustedIssuer, parse_algorithms};

/// How long a failed discovery is remembered before it is tried again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct IssuerEntry {
    pub issuer: String,
    audiences: Vec<String>,
    allow_multi_audience: bool,
    /// `None`: any client (`["*"]`).
    clients: Option<Vec<String>>,
    access_token_types: Vec<String>,
    scope_claim: String,
    /// User attribute ← claim path.
    attributes: Vec<(String, Vec<String>)>,
    allow_service_subjects: bool,
    allow_id_tokens: bool,
    algorithms: Vec<Algorithm>,
    jwks_uri: Option<String>,
    keys: OnceCell<JwksCache>,
    last_failure: Mutex<Option<(Instant, String)>>,
    http: reqwest::Client,
    min_refresh: Duration,
    max_stale: Duration,
    leeway: Duration,
    max_token_bytes: usize,
}

impl IssuerEntry {
    fn new(config: &TrustedIssuer, root: &Config, http: reqwest::Client) -> Result<Self, String> {
        Ok(Self {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            allow_multi_audience: config.allow_multi_audience,
            clients: (!config.clients.iter().any(|c| c == "*")).then(|| config.clients.clone()),
            access_token_types: config.access_token_types.clone(),
            scope_claim: config.scope_claim.clone(),
            attributes: match &config.claims {
                Some(map) => map
                    .iter()
                    .map(|(attribute, path)| (attribute.clone(), split_path(path)))
                    .collect(),
                None => root
                    .tokens
                    .propagate_claims
                    .iter()
                    .map(|claim| (claim.clone(), vec![claim.clone()]))
                    .collect(),
            },
            allow_service_subjects: config.allow_service_subjects,
            allow_id_tokens: config.allow_id_tokens,
            algorithms: parse_algorithms(&config.algorithms)?,
            jwks_uri: config.jwks_uri.clone(),
            keys: OnceCell::new(),
            last_failure: Mutex::new(None),
            http,
            min_refresh: Duration::from_secs(root.http.jwks_min_refresh_secs),
            max_stale: Duration::from_secs(root.http.jwks_max_stale_secs),
            leeway: Duration::from_secs(root.tokens.leeway_secs),
            max_token_bytes: root.tokens.max_token_bytes,
        })
    }

    /// The verification rules for a subject token of this issuer: an access
    /// token with one of the configured `typ`s, or an ID token (`JWT` or
    /// none) where the configuration accepts them.
    pub fn policy(&self, kind: SubjectKind) -> Result<VerifyPolicy, String> {
        let typ = match kind {
            SubjectKind::AccessToken => {
                // `none`: no `typ` header at all (Okta).
                let mut types: Vec<String> = self
                    .access_token_types
                    .iter()
                    .map(|t| {
                        if t == "none" {
                            String::new()
                        } else {
                            t.clone()
                        }
                    })
                    .collect();
                if types.iter().any(|t| t.eq_ignore_ascii_case("at+jwt")) {
                    types.push("application/at+jwt".into());
                }
                TypRule::OneOf(types)
            }
            SubjectKind::IdToken if self.allow_id_tokens => TypRule::JwtOrAbsent,
            SubjectKind::IdToken => {
                return Err(format!(
                    "ID tokens of `{}` are not accepted as subject tokens (its `allow_id_tokens` is off); present the user's access token",
                    clip(&self.issuer)
                ));
            }
        };
        let mut policy = VerifyPolicy::new(
            vec![self.issuer.clone()],
            self.audiences.clone(),
            self.algorithms.clone(),
        );
        policy.typ = typ;
        policy.leeway = self.leeway;
        policy.max_token_bytes = self.max_token_bytes;
        Ok(policy)
    }

    /// What a verified subject token says about its user, after the checks
    /// signature verification cannot make: every audience trusted, an
    /// allowed client, a human user, an access token that is not an ID
    /// token, a well-formed `act` chain. The error is the refusal's reason.
    pub fn user(&self, claims: &Map<String, Value>, kind: SubjectKind) -> Result<User, String> {
        if !self.allow_multi_audience
            && let Some(other) = untrusted_audience(&self.audiences, claims.get("aud"))
        {
            return Err(format!(
                "it is also for `{}`, an audience this server does not trust (a token for several services is refused unless its issuer's `allow_multi_audience` is set)",
                clip(other)
            ));
        }
        let client = client_of(claims, kind)
            .ok_or("it names no client (`azp`, `client_id`, `cid` or `appid`)")?;
        if let Some(clients) = &self.clients
            && !clients.iter().any(|c| c == client)
        {
            return Err(format!(
                "it was issued to client `{}`, which is not in this issuer's `clients`",
                clip(client)
            ));
        }
        if kind == SubjectKind::AccessToken && looks_like_id_token(claims) {
            return Err(
                "it is an ID token (`nonce`, `at_hash` or `typ: ID`), presented as an access token"
                    .into(),
            );
        }
        if let Some(why) = service_subject(claims, client)
            && !self.allow_service_subjects
        {
            return Err(format!(
                "it names no human user ({why}); a client's own token is not a user's (set the issuer's `allow_service_subjects` to accept service subjects)"
            ));
        }
        let act = match claims.get("act") {
            None => None,
            Some(act) => Some(actor_chain(act, MAX_ACT_DEPTH)?),
        };
        let mut attributes: Map<String, Value> = self
            .attributes
            .iter()
            .filter_map(|(name, path)| claim_at(claims, path).map(|v| (name.clone(), v.clone())))
            .collect();
        let groups = strings(attributes.get("groups"));
        let scopes = match claims.get(&self.scope_claim) {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            Some(array @ Value::Array(items)) if items.iter().all(Value::is_string) => {
                strings(Some(array))
            }
            Some(_) => {
                return Err(format!(
                    "its `{}` claim is neither a space-separated string nor an array of strings",
                    self.scope_claim
                ));
            }
        };
        // Users are named by (IdP, sub): `alice` at one IdP is not `alice`
        // at another. The IdP travels with the token for every later check.
        attributes.insert("idp".into(), Value::String(self.issuer.clone()));
        Ok(User {
            scopes,
            groups,
            attributes,
            act,
        })
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
                        .with_min_refresh_interval(self.min_refresh)
                        .with_max_stale(self.max_stale),
                )
            })
            .await;
        if let Err(e) = &result {
            tracing::warn!(issuer = %self.issuer, error = %e, "IdP discovery failed");
            *self.last_failure.lock().await = Some((Instant::now(), e.to_string()));
        }
        result
    }

    /// True when this IdP's keys are past their allowed staleness
    /// (`http.jwks_max_stale_secs`): the last fetch (or discovery) failed
    /// and nothing fetched within the allowance remains. Keys never asked
    /// for are not stale.
    pub async fn keys_stale(&self) -> bool {
        match self.keys.get() {
            Some(keys) => keys.is_stale().await,
            None => self.last_failure.lock().await.is_some(),
        }
    }

    /// True when the keys should be fetched again to know whether they are
    /// stale: they are, or the last successful fetch is older than the
    /// allowance (with no traffic nothing else would fetch them).
    pub async fn keys_need_fetch(&self) -> bool {
        if self.keys_stale().await {
            return true;
        }
        match self.keys.get() {
            Some(keys) => keys.age().await.is_some_and(|age| age >= self.max_stale),
            None => false,
        }
    }

    /// Tries to fetch the keys again (discovery first if it never
    /// succeeded). Health uses it: a replica reported NOT_SERVING gets no
    /// traffic, so no request would ever trigger the fetch that recovers it.
    pub async fn refetch(&self) {
        // A failed discovery is logged by `keys`.
        if let Ok(keys) = self.keys().await
            && let Err(e) = keys.refresh().await
        {
            tracing::warn!(issuer = %self.issuer, error = %e, "fetching the IdP's keys failed");
        }
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

/// What a subject token is presented as (`subject_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    AccessToken,
    IdToken,
}

/// The user a verified subject token names, as this issuer's configuration
/// reads it.
#[derive(Debug)]
pub struct User {
    pub scopes: Vec<String>,
    /// The `groups` attribute, for `may_act_for.groups`.
    pub groups: Vec<String>,
    /// User attributes for the delegated token's `user` claim, with `idp`.
    pub attributes: Map<String, Value>,
    /// The delegation chain the token already carries (RFC 8693 `act`).
    pub act: Option<Actor>,
}

/// Deepest `act` chain read from a subject token, before the service's own
/// `max_delegation_depth` (at most 10) is applied to the whole chain.
const MAX_ACT_DEPTH: usize = 10;

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

    pub fn iter(&self) -> impl Iterator<Item = &Arc<IssuerEntry>> {
        self.by_issuer.values()
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

/// The claim at a path of nested object keys.
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |value, key| value.get(key))
}

/// The strings of an array value (others ignored).
fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The IdP client a token was issued to: `azp`, RFC 9068's `client_id`,
/// Okta's `cid`, Entra ID v1's `appid`; for an ID token without `azp`, its
/// single audience (OIDC Core §2).
fn client_of(claims: &Map<String, Value>, kind: SubjectKind) -> Option<&str> {
    let named = ["azp", "client_id", "cid", "appid"]
        .iter()
        .find_map(|name| claims.get(*name).and_then(Value::as_str))
        .filter(|c| !c.is_empty());
    match (named, kind, claims.get("aud")) {
        (Some(client), _, _) => Some(client),
        (None, SubjectKind::IdToken, Some(Value::String(aud))) => Some(aud),
        (None, SubjectKind::IdToken, Some(Value::Array(auds))) if auds.len() == 1 => {
            auds[0].as_str()
        }
        _ => None,
    }
}

/// Why a token names a client rather than a human user, if it does: the
/// client-credentials shapes of RFC 9068 (§2.2: `sub` identifies the
/// client), Auth0 (`gty`), Entra ID (`idtyp`) and Keycloak (its service
/// account user).
fn service_subject(claims: &Map<String, Value>, client: &str) -> Option<&'static str> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    if sub == client
        || ["client_id", "cid", "appid", "azp"]
            .iter()
            .any(|c| claim(c) == Some(sub))
    {
        return Some("`sub` is the client");
    }
    if claim("gty") == Some("client-credentials") {
        return Some("`gty` is client-credentials");
    }
    if claim("idtyp") == Some("app") {
        return Some("`idtyp` is app");
    }
    if claim("preferred_username").is_some_and(|u| u.starts_with("service-account-")) {
        return Some("a Keycloak service account");
    }
    None
}

/// Claims only an ID token carries (OIDC Core §2, §3.1.3.6; Keycloak's
/// `typ` claim).
fn looks_like_id_token(claims: &Map<String, Value>) -> bool {
    claims.contains_key("nonce")
        || claims.contains_key("at_hash")
        || claims.get("typ").and_then(Value::as_str) == Some("ID")
}

/// A subject token's RFC 8693 `act` claim as a chain: every level an
/// object with a non-empty string `sub` (other members are dropped), at
/// most `limit` deep.
fn actor_chain(act: &Value, limit: usize) -> Result<Actor, String> {
    let mut subs = Vec::new();
    let mut next = Some(act);
    while let Some(level) = next {
        if subs.len() == limit {
            return Err(format!("its `act` chain is deeper than {limit}"));
        }
        let sub = level
            .as_object()
            .and_then(|o| o.get("sub"))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or("its `act` claim is not a chain of objects with a non-empty `sub`")?;
        subs.push(sub.to_owned());
        next = level.get("act");
    }
    let mut chain: Option<Actor> = None;
    for sub in subs.into_iter().rev() {
        chain = Some(Actor {
            sub,
            act: chain.map(Box::new),
        });
    }
    chain.ok_or_else(|| "its `act` claim is empty".to_owned())
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
