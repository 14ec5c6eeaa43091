//! Where verification keys come from.

use std::future::Future;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use crate::error::TokenError;
use crate::verify::clip;

/// A source of verification keys.
pub trait KeySource: Send + Sync {
    /// The key for `kid` usable with `alg`. A token without `kid` is only
    /// accepted when exactly one key fits `alg`.
    fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> impl Future<Output = Result<DecodingKey, TokenError>> + Send;
}

/// A parsed key set: only public signature keys that fit an algorithm.
#[derive(Clone, Default)]
struct KeySet {
    keys: Vec<(Option<String>, Jwk, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _, _)| kid))
            .finish()
    }
}

impl KeySet {
    fn parse(set: &JwkSet) -> Self {
        let keys = set
            .keys
            .iter()
            .filter(|jwk| {
                !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
                    && !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            })
            .filter_map(|jwk| {
                DecodingKey::from_jwk(jwk)
                    .ok()
                    .map(|key| (jwk.common.key_id.clone(), jwk.clone(), key))
            })
            .collect();
        Self { keys }
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        let mut fitting = self.keys.iter().filter(|(_, jwk, _)| fits(jwk, alg));
        match kid {
            Some(kid) => {
                let found = self.keys.iter().find(|(k, _, _)| k.as_deref() == Some(kid));
                match found {
                    Some((_, jwk, key)) if fits(jwk, alg) => Ok(key.clone()),
                    Some(_) => Err(TokenError::KeyMismatch),
                    None => Err(TokenError::UnknownKey(clip(kid))),
                }
            }
            None => match (fitting.next(), fitting.next()) {
                (Some((_, _, key)), None) => Ok(key.clone()),
                _ => Err(TokenError::UnknownKey("(no kid)".into())),
            },
        }
    }
}

/// Whether `jwk` may verify `alg`: the key type and curve fit, and a
/// declared `alg` on the key agrees.
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(declared) = jwk.common.key_algorithm
        && format!("{declared:?}") != format!("{alg:?}")
    {
        return false;
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        _ => false,
    }
}

/// Keys fixed in configuration (an agent's registered keys, a SPIFFE bundle).
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(KeySet);

impl StaticKeys {
    pub fn new(set: &JwkSet) -> Self {
        Self(KeySet::parse(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.keys.is_empty()
    }
}

impl KeySource for StaticKeys {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        self.0.find(kid, alg)
    }
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 512 * 1024;

#[derive(Debug, Default)]
struct CacheState {
    keys: KeySet,
    /// Last successful fetch: how fresh the keys are.
    fetched_at: Option<Instant>,
    /// Last attempt, successful or not: the refresh rate limit.
    attempted_at: Option<Instant>,
    /// Set when the last fetch failed: a lookup that misses then reports the
    /// outage (UNAVAILABLE), not an unknown key.
    last_error: Option<TokenError>,
}

impl CacheState {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        self.keys
            .find(kid, alg)
            .map_err(|miss| self.last_error.clone().unwrap_or(miss))
    }
}

/// Keys fetched from a JWKS URL and cached. An unknown `kid` triggers a
/// refresh, at most once per `min_refresh_interval`, so a flood of tokens
/// with random `kid`s cannot turn into a flood of fetches.
#[derive(Debug)]
pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    min_refresh_interval: Duration,
    max_age: Duration,
    max_stale: Duration,
    state: RwLock<CacheState>,
    refreshing: Mutex<()>,
    /// Read by the staleness gauge ([`crate::jwks_metrics`]).
    last_good: crate::jwks_metrics::LastGood,
}

impl JwksCache {
    pub fn new(url: impl Into<String>, http: reqwest::Client) -> Self {
        Self {
            url: url.into(),
            http,
            min_refresh_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(600),
            max_stale: Duration::from_secs(3600),
            state: RwLock::new(CacheState::default()),
            refreshing: Mutex::new(()),
            last_good: crate::jwks_metrics::register(),
        }
    }

    /// Smallest interval between two fetches triggered by unknown keys.
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Age after which the cached set is fetched again on next use.
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// How long after the last successful fetch cached keys may still be
    /// used while the endpoint cannot be reached.
    pub fn with_max_stale(mut self, age: Duration) -> Self {
        self.max_stale = age;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the key set now.
    pub async fn refresh(&self) -> Result<(), TokenError> {
        let set = self.fetch().await;
        crate::jwks_metrics::fetched(&self.last_good, set.is_ok());
        let mut state = self.state.write().await;
        state.attempted_at = Some(Instant::now());
        match set {
            Ok(set) => {
                state.fetched_at = state.attempted_at;
                state.keys = KeySet::parse(&set);
                state.last_error = None;
                Ok(())
            }
            Err(e) => {
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            TokenError::KeysUnavailable(format!("fetching `{}`: {e}", self.url))
        };
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| unavailable(&e))?
            .error_for_status()
            .map_err(|e| unavailable(&e))?;
        let bytes = crate::oidc_http::read_capped(response, MAX_JWKS_BYTES)
            .await
            .map_err(|e| unavailable(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| unavailable(&e))
    }
}

impl JwksCache {
    /// True when the last fetch failed and the keys from the last
    /// successful one (if any) are past `max_stale`: no token from this
    /// source can verify until a fetch succeeds. A cache never fetched is
    /// not stale until a fetch fails.
    pub async fn is_stale(&self) -> bool {
        let state = self.state.read().await;
        state.last_error.is_some() && !self.usable_while_down(&state)
    }

    /// Time since the last successful fetch (`None`: never fetched).
    pub async fn age(&self) -> Option<Duration> {
        self.state.read().await.fetched_at.map(|t| t.elapsed())
    }

    /// Cached keys stay usable through an outage of the JWKS endpoint for at
    /// most `max_stale` after the last successful fetch (a key the IdP has
    /// since withdrawn must not live on just because the endpoint is down).
    fn usable_while_down(&self, state: &CacheState) -> bool {
        state
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.max_stale)
    }
}

impl KeySource for JwksCache {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        {
            let state = self.state.read().await;
            let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
            if fresh && let Ok(key) = state.keys.find(kid, alg) {
                return Ok(key);
            }
        }
        let _one_at_a_time = self.refreshing.lock().await;
        {
            let state = self.state.read().await;
            let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
            let recent = state
                .attempted_at
                .is_some_and(|t| t.elapsed() < self.min_refresh_interval);
            match state.find(kid, alg) {
                Ok(key) if fresh => return Ok(key),
                Ok(key) if recent && self.usable_while_down(&state) => return Ok(key),
                Err(e) if recent => return Err(e),
                _ => {}
            }
        }
        match self.refresh().await {
            Ok(()) => self.state.read().await.find(kid, alg),
            // Keep serving known keys while the JWKS endpoint is down, for a
            // bounded time after the last successful fetch; never accept an
            // unknown one.
            Err(e) => {
                let state = self.state.read().await;
                match state.keys.find(kid, alg) {
                    Ok(key) if self.usable_while_down(&state) => {
                        tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; using cached keys");
                        Ok(key)
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

/// Lets a `HashMap` of caches (one per trusted issuer) be used by reference.
impl<K: KeySource> KeySource for &K {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        (**self).key(kid, alg).await
    }
}
