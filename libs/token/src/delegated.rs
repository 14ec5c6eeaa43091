//! Local verification of Tether delegated tokens, for the other services.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How long a verified token's claims are reused without checking its
/// signature again: a key the identity service retires stops being
/// accepted within this time, as with a JWKS cache.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Verified tokens remembered at most (about 2 KiB each).
const VERIFIED_MAX: usize = 4_096;

/// Verifies delegated tokens against the identity service's keys, then
/// checks the session revocation list. Fails closed: a revocation check that
/// cannot answer is a deny.
///
/// An agent presents the same token on every call of its session, so the
/// claims of a token whose signature checked out are remembered for
/// [`VERIFIED_TTL`], keyed by the token's SHA-256: a repeat costs a hash
/// instead of an ECDSA verification. Only successes are remembered;
/// expiry and `nbf` are checked again on every use, and the revocation
/// list is always asked.
#[derive(Debug)]
pub struct DelegatedTokenVerifier<K, R> {
    policy: VerifyPolicy,
    keys: K,
    revocations: R,
    verified: Mutex<HashMap<[u8; 32], Remembered>>,
}

#[derive(Debug)]
struct Remembered {
    claims: DelegatedClaims,
    at: Instant,
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
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The verification policy, to change; tokens verified under the old
    /// one are forgotten.
    pub fn policy_mut(&mut self) -> &mut VerifyPolicy {
        self.verified
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
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
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        if let Some(claims) = self.remembered(&digest) {
            return Ok(claims);
        }
        let verified = verify::<DelegatedClaims, _>(token, &self.policy, &self.keys).await?;
        if verified.claims.sid.is_empty() || verified.claims.jti.is_empty() {
            return Err(TokenError::MissingClaim("sid".into()));
        }
        self.remember(digest, &verified.claims);
        Ok(verified.claims)
    }

    /// The claims of a token verified less than [`VERIFIED_TTL`] ago that
    /// is still within its validity (with the policy's leeway, as when it
    /// was verified).
    fn remembered(&self, digest: &[u8; 32]) -> Option<DelegatedClaims> {
        let verified = self.verified.lock().ok()?;
        let entry = verified.get(digest)?;
        let now = crate::unix_now();
        let leeway = i64::try_from(self.policy.leeway.as_secs()).unwrap_or(0);
        let fresh = entry.at.elapsed() < VERIFIED_TTL
            && now <= entry.claims.exp.saturating_add(leeway)
            && entry
                .claims
                .nbf
                .is_none_or(|nbf| nbf <= now.saturating_add(leeway));
        fresh.then(|| entry.claims.clone())
    }

    fn remember(&self, digest: [u8; 32], claims: &DelegatedClaims) {
        let Ok(mut verified) = self.verified.lock() else {
            return;
        };
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, e| e.at.elapsed() < VERIFIED_TTL);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(
            digest,
            Remembered {
                claims: claims.clone(),
                at: Instant::now(),
            },
        );
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
    /// sid → (session expiry, revocation time) in Unix ms; entries are
    /// dropped after expiry.
    revoked: std::collections::HashMap<String, (i64, i64)>,
    synced_at: Option<std::time::Instant>,
    /// Where the next sync starts: the feed's `next_after_sequence` after
    /// the last complete sync. A number the database assigned, not a time:
    /// no clock (the revoking replica's, the serving replica's or this
    /// one's) moves it, and the feed never shows a number before every
    /// smaller one, so nothing behind it can appear later.
    cursor_seq: i64,
}

/// One revoked session as the identity service lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSession {
    pub sid: String,
    pub revoked_at_ms: i64,
    pub expires_at_ms: i64,
}

/// How long past a session's expiry its revocation is remembered (covers
/// verification leeway and clock skew).
const REVOKED_MARGIN_MS: i64 = 60_000;

/// Pages one sync may read before it gives up (and the list goes stale).
const MAX_SYNC_PAGES: usize = 1_000;

/// One page of `ListRevokedSessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationPage {
    pub entries: Vec<RevokedSession>,
    /// The server's clock when the page was read (Unix ms); informative.
    pub server_time_ms: i64,
    /// More entries follow the last one.
    pub more: bool,
    /// Where the next page (or the next sync) starts.
    pub next_after_sequence: i64,
}

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

    /// Pulls every revocation since the last sync, page by page, with
    /// `fetch(after_sequence)`. The copy counts as current (and the cursor
    /// moves) only once the last page has arrived: a sync that fails or is
    /// cut short leaves it to go stale, and a stale list denies.
    pub async fn sync<F, Fut>(&self, mut fetch: F) -> Result<usize, TokenError>
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = Result<RevocationPage, String>>,
    {
        let mut after = self.read().cursor_seq;
        let mut count = 0;
        for _ in 0..MAX_SYNC_PAGES {
            let page = fetch(after).await.map_err(TokenError::KeysUnavailable)?;
            count += page.entries.len();
            {
                // Revocations are applied as they arrive: knowing more
                // revoked sessions is always safe.
                let mut state = self
                    .state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for entry in page.entries {
                    state
                        .revoked
                        .insert(entry.sid, (entry.expires_at_ms, entry.revoked_at_ms));
                }
                if !page.more {
                    // Forgotten by this verifier's own clock, the one it
                    // checks `exp` with.
                    let now_ms = crate::unix_now().saturating_mul(1000);
                    state.revoked.retain(|_, (expires, _)| {
                        expires.saturating_add(REVOKED_MARGIN_MS) > now_ms
                    });
                    state.cursor_seq = state.cursor_seq.max(page.next_after_sequence);
                    state.synced_at = Some(std::time::Instant::now());
                    return Ok(count);
                }
            }
            if page.next_after_sequence <= after {
                return Err(TokenError::KeysUnavailable(
                    "revocation list paging made no progress".into(),
                ));
            }
            after = page.next_after_sequence;
        }
        Err(TokenError::KeysUnavailable(format!(
            "revocation list did not fit in {MAX_SYNC_PAGES} pages; not current"
        )))
    }

    /// When `sid` was revoked (Unix ms), `None` when it is not; an error
    /// when the copy is stale.
    pub fn revoked_at(&self, sid: &str) -> Result<Option<i64>, TokenError> {
        let state = self.read();
        match state.synced_at {
            Some(at) if at.elapsed() <= self.max_staleness => {
                Ok(state.revoked.get(sid).map(|(_, revoked_at)| *revoked_at))
            }
            _ => Err(TokenError::KeysUnavailable(
                "the session revocation list is stale; denying until it syncs".into(),
            )),
        }
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

#[cfg(test)]
#[path = "delegated_tests.rs"]
mod tests;
