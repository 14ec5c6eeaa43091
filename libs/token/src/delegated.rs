//! Local verification of Tether delegated tokens, for the other services.

use std::future::Future;

use jsonwebtoken::Algorithm;

use crate::claims::DelegatedClaims;
use crate::error::TokenError;
use crate::jwks::KeySource;
use crate::verify::{TypRule, VerifyPolicy, verify};

/// Answers whether a session has been revoked.
pub trait RevocationCheck: Send + Sync {
    /// `Err` means the answer is unknown — callers deny.
    fn is_revoked(&self, sid: &str) -> impl Future<Output = Result<bool, TokenError>> + Send;
}

/// Verifies delegated tokens against the identity service's keys, then
/// checks the session revocation list. Fails closed: a revocation check that
/// cannot answer is a deny.
#[derive(Debug)]
pub struct DelegatedTokenVerifier<K, R> {
    policy: VerifyPolicy,
    keys: K,
    revocations: R,
}

impl<K: KeySource, R: RevocationCheck> DelegatedTokenVerifier<K, R> {
    /// `issuer` is the identity service's issuer, `audience` the resource
    /// this verifier protects.
    pub fn new(issuer: String, audience: String, keys: K, revocations: R) -> Self {
        let mut policy = VerifyPolicy::new(
            vec![issuer],
            vec![audience],
            vec![Algorithm::ES256, Algorithm::EdDSA],
        );
        policy.typ = TypRule::AccessToken;
        Self {
            policy,
            keys,
            revocations,
        }
    }

    pub fn policy_mut(&mut self) -> &mut VerifyPolicy {
        &mut self.policy
    }

    /// Verifies signature and claims, then that the session is live.
    pub async fn verify(&self, token: &str) -> Result<DelegatedClaims, TokenError> {
        let claims = self.verify_ignoring_revocation(token).await?;
        if self.revocations.is_revoked(&claims.sid).await? {
            return Err(TokenError::SessionRevoked);
        }
        Ok(claims)
    }

    /// Verifies signature and claims only — for ending a session that may
    /// already be revoked.
    pub async fn verify_ignoring_revocation(
        &self,
        token: &str,
    ) -> Result<DelegatedClaims, TokenError> {
        let verified = verify::<DelegatedClaims, _>(token, &self.policy, &self.keys).await?;
        if verified.claims.sid.is_empty() || verified.claims.jti.is_empty() {
            return Err(TokenError::MissingClaim("sid".into()));
        }
        Ok(verified.claims)
    }
}

/// A local copy of the identity service's session revocation list, kept
/// current by [`RevocationList::sync`]. Fails closed: when the copy is older
/// than `max_staleness`, every check is an error (a deny).
#[derive(Debug)]
pub struct RevocationList {
    state: std::sync::RwLock<RevocationState>,
    max_staleness: std::time::Duration,
}

#[derive(Debug, Default)]
struct RevocationState {
    /// sid → session expiry (Unix ms); entries are dropped after expiry.
    revoked: std::collections::HashMap<String, i64>,
    synced_at: Option<std::time::Instant>,
    /// Server time of the last sync (Unix ms), the next `since`.
    cursor_ms: i64,
}

/// One revoked session as the identity service lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSession {
    pub sid: String,
    pub revoked_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Overlap between polls, covering clock differences between replicas.
const SYNC_OVERLAP_MS: i64 = 5_000;

impl RevocationList {
    pub fn new(max_staleness: std::time::Duration) -> Self {
        Self {
            state: std::sync::RwLock::new(RevocationState::default()),
            max_staleness,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RevocationState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pulls revocations since the last sync with `fetch(since_ms)`, which
    /// returns the revoked sessions and the server's time.
    pub async fn sync<F, Fut>(&self, fetch: F) -> Result<usize, TokenError>
    where
        F: FnOnce(i64) -> Fut,
        Fut: Future<Output = Result<(Vec<RevokedSession>, i64), String>>,
    {
        let since = (self.read().cursor_ms - SYNC_OVERLAP_MS).max(0);
        let (entries, server_time_ms) = fetch(since).await.map_err(TokenError::KeysUnavailable)?;
        let count = entries.len();
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in entries {
            state.revoked.insert(entry.sid, entry.expires_at_ms);
        }
        state.revoked.retain(|_, expires| *expires > server_time_ms);
        state.cursor_ms = server_time_ms;
        state.synced_at = Some(std::time::Instant::now());
        Ok(count)
    }

    /// Number of revoked, unexpired sessions known.
    pub fn len(&self) -> usize {
        self.read().revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RevocationCheck for RevocationList {
    async fn is_revoked(&self, sid: &str) -> Result<bool, TokenError> {
        let state = self.read();
        match state.synced_at {
            Some(at) if at.elapsed() <= self.max_staleness => Ok(state.revoked.contains_key(sid)),
            _ => Err(TokenError::KeysUnavailable(
                "the session revocation list is stale; denying until it syncs".into(),
            )),
        }
    }
}

impl<R: RevocationCheck> RevocationCheck for std::sync::Arc<R> {
    async fn is_revoked(&self, sid: &str) -> Result<bool, TokenError> {
        (**self).is_revoked(sid).await
    }
}
