//! The gRPC handlers of `tether.credentials.v1.CredentialIssuer`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;
use tether_proto::credentials::v1 as pb;
use tether_runtime::into_status;
use tonic::{Request, Response, Status};

use crate::config::{Limits, Profile, TestHooks};
use crate::error::IssuerError;
use crate::lifecycle::{Grant, Lifecycle};
use crate::registry::{LeaseRow, NewLease, Registry, Status as LeaseStatus};
use crate::revoker::{Revoker, now_ms};
use crate::vault::{Vault, to_credential};
use tether_token::{Caller, Sessions};

const MAX_ID_BYTES: usize = 128;
const MAX_INTENT_BYTES: usize = 8 * 1024;
const MAX_UID_BYTES: usize = 512;
const MAX_REASON_BYTES: usize = 256;
const MAX_POLICY_IDS: usize = 256;
const MAX_PAGE: u32 = 1000;

/// How many renewals `fit_to_session` makes before it gives up on a lease.
const FIT_ATTEMPTS: usize = 3;

/// A Vault grant within its session.
#[derive(Debug, Clone, Copy)]
struct Fit {
    ttl: Duration,
    renewable: bool,
    /// Local time when Vault's answer arrived (Unix ms).
    seen_at: i64,
    /// `seen_at + ttl`, as the registry records it; Vault's own expiry of
    /// the lease is checked to be no later than the session's end.
    expires_at: i64,
}

impl Fit {
    fn new(ttl: Duration, renewable: bool, seen_at: i64) -> Self {
        Self {
            ttl,
            renewable,
            seen_at,
            expires_at: seen_at.saturating_add(duration_ms(ttl)),
        }
    }
}

/// Why a lease could not be brought within its session.
#[derive(Debug, thiserror::Error)]
enum FitError {
    #[error("the session has less than one second left")]
    NoTime,
    #[error("the lease is longer than allowed and not renewable")]
    NotRenewable,
    #[error(transparent)]
    Vault(crate::vault::VaultError),
    #[error("vault kept granting past the session's end")]
    TooLong,
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The time from `from` to `end` (Unix ms), zero when `end` has passed.
fn remaining_between(from: i64, end: i64) -> Duration {
    Duration::from_millis(u64::try_from(end.saturating_sub(from)).unwrap_or(0))
}

/// The time left until `end` (Unix ms).
fn remaining_until(end: i64) -> Duration {
    remaining_between(now_ms(), end)
}

/// `tether.credentials.v1.CredentialIssuer`.
#[derive(Debug, Clone)]
pub struct CredentialIssuerService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sessions: Sessions,
    profiles: BTreeMap<String, Profile>,
    limits: Limits,
    registry: Registry,
    vault: Arc<Vault>,
    revoker: Arc<Revoker>,
    /// Reserve → mint → confirm or abandon, for `Issue`.
    lifecycle: Lifecycle,
    issuing_window: Duration,
    revoke_budget: Duration,
    test_hooks: TestHooks,
}

impl CredentialIssuerService {
    #[expect(clippy::too_many_arguments, reason = "wired once, in `Issuer::start`")]
    pub(crate) fn new(
        sessions: Sessions,
        profiles: BTreeMap<String, Profile>,
        limits: Limits,
        registry: Registry,
        vault: Arc<Vault>,
        revoker: Arc<Revoker>,
        issuing_window: Duration,
        request_timeout: Duration,
        revoke_budget: Duration,
        test_hooks: TestHooks,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions,
                profiles,
                limits,
                lifecycle: Lifecycle::new(
                    registry.clone(),
                    Arc::clone(&vault),
                    Arc::clone(&revoker),
                    request_timeout,
                ),
                registry,
                vault,
                revoker,
                issuing_window,
                revoke_budget,
                test_hooks,
            }),
        }
    }
}

fn check_id(field: &str, value: &str) -> Result<(), IssuerError> {
    if value.is_empty() {
        return Err(IssuerError::InvalidArgument(format!("missing `{field}`")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(IssuerError::InvalidArgument(format!(
            "`{field}` is {} bytes, the limit is {MAX_ID_BYTES}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) || value.trim() != value {
        return Err(IssuerError::InvalidArgument(format!(
            "`{field}` contains control characters or surrounding whitespace"
        )));
    }
    Ok(())
}

/// The deprecated `IssueRequest.session_id`: only cross-checked against the
/// bearer token's session.
#[expect(
    deprecated,
    reason = "read only to refuse a request that names another session than its token"
)]
fn named_session_of_issue(req: &pb::IssueRequest) -> &str {
    &req.session_id
}

/// The deprecated `RenewRequest.session_id`, likewise.
#[expect(
    deprecated,
    reason = "read only to refuse a request that names another session than its token"
)]
fn named_session_of_renew(req: &pb::RenewRequest) -> &str {
    &req.session_id
}

/// A request may still name its session (deprecated); if it does, it must be
/// the one its token proves.
fn check_same_session(named: &str, caller: &Caller) -> Result<(), IssuerError> {
    if named.is_empty() || named == caller.sid {
        Ok(())
    } else {
        Err(IssuerError::OtherSession)
    }
}

fn check_len(field: &str, value: &str, limit: usize) -> Result<(), IssuerError> {
    if value.len() > limit {
        return Err(IssuerError::InvalidArgument(format!(
            "`{field}` is {} bytes, the limit is {limit}",
            value.len()
        )));
    }
    Ok(())
}

fn positive_duration(field: &str, d: &prost_types::Duration) -> Result<Duration, IssuerError> {
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return Err(IssuerError::InvalidArgument(format!(
            "`{field}` must be positive"
        )));
    }
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Ok(Duration::new(secs, nanos.min(999_999_999)))
}

fn to_ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn to_pb(row: &LeaseRow) -> pb::Lease {
    let status = match row.status {
        LeaseStatus::Issuing => pb::LeaseStatus::Issuing,
        LeaseStatus::Active => pb::LeaseStatus::Active,
        LeaseStatus::Revoking => pb::LeaseStatus::Revoking,
        LeaseStatus::Revoked => pb::LeaseStatus::Revoked,
        LeaseStatus::Expired => pb::LeaseStatus::Expired,
        LeaseStatus::RevocationFailed => pb::LeaseStatus::RevocationFailed,
        LeaseStatus::Abandoned => pb::LeaseStatus::Abandoned,
    };
    let pending = matches!(
        row.status,
        LeaseStatus::Revoking | LeaseStatus::RevocationFailed
    );
    pb::Lease {
        lease_id: row.id.clone(),
        session_id: row.session_id.clone(),
        profile: row.profile.clone(),
        vault_path: row.vault_path.clone(),
        vault_lease_id: row.vault_lease_id.clone().unwrap_or_default(),
        granted_ttl: row.granted_ttl_secs.map(|s| prost_types::Duration {
            seconds: s,
            nanos: 0,
        }),
        issued_at: row.issued_at.map(to_ts),
        expires_at: row.expires_at.map(to_ts),
        status: status.into(),
        renewable: row.renewable,
        revoked_at: row
            .revoked_at
            .filter(|_| row.status.is_terminal())
            .map(to_ts),
        revocation_attempts: u32::try_from(row.revocation_attempts).unwrap_or(u32::MAX),
        next_attempt_at: row.next_attempt_at.filter(|_| pending).map(to_ts),
        last_error: row.last_error.clone().unwrap_or_default(),
        action: row.action.clone(),
        resource: row.resource.clone(),
    }
}

fn page_token(session_id: &str, offset: i64) -> String {
    let digest = sha2::Sha256::digest(session_id.as_bytes());
    format!("{offset}.{}", hex::encode(&digest[..8]))
}

fn parse_page_token(session_id: &str, token: &str) -> Result<i64, IssuerError> {
    if token.is_empty() {
        return Ok(0);
    }
    let bad = || {
        IssuerError::InvalidArgument(
            "`page_token` was not produced by ListLeases for this session".into(),
        )
    };
    let (offset, _) = token.split_once('.').ok_or_else(bad)?;
    let offset: i64 = offset.parse().map_err(|_| bad())?;
    if offset < 0 || page_token(session_id, offset) != token {
        return Err(bad());
    }
    Ok(offset)
}

/// The `pause_after_vault_issue_ms` fail point (compiled in only with the
/// `test-hooks` feature).
async fn test_pause_after_vault_issue(hooks: TestHooks) {
    if cfg!(feature = "test-hooks") && hooks.pause_after_vault_issue_ms > 0 {
        tracing::warn!(
            pause_ms = hooks.pause_after_vault_issue_ms,
            "test hook: paused after vault issuance"
        );
        tokio::time::sleep(Duration::from_millis(hooks.pause_after_vault_issue_ms)).await;
    }
}

impl Inner {
    /// The session the call's bearer token proves, recorded on the request's
    /// span (the token itself never is).
    async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, IssuerError> {
        let caller = self.sessions.caller(metadata).await?;
        tracing::Span::current().record("session_id", truncate(&caller.sid));
        Ok(caller)
    }

    async fn issue(
        &self,
        caller: Caller,
        req: pb::IssueRequest,
    ) -> Result<pb::IssueResponse, IssuerError> {
        check_same_session(named_session_of_issue(&req), &caller)?;
        // Deprecated fields (`session_expires_at`, `user_subject`,
        // `agent_id`) are ignored: the token says who and until when.
        check_id("profile", &req.profile)?;
        check_len("intent", &req.intent, MAX_INTENT_BYTES)?;
        check_len("action", &req.action, MAX_UID_BYTES)?;
        check_len("resource", &req.resource, MAX_UID_BYTES)?;
        check_len("policy_version", &req.policy_version, MAX_ID_BYTES)?;
        check_len("decision_id", &req.decision_id, MAX_ID_BYTES)?;
        check_len("approval_ticket_id", &req.approval_ticket_id, MAX_ID_BYTES)?;
        if req.policy_ids.len() > MAX_POLICY_IDS {
            return Err(IssuerError::InvalidArgument(format!(
                "`policy_ids` has {} entries, the limit is {MAX_POLICY_IDS}",
                req.policy_ids.len()
            )));
        }
        for id in &req.policy_ids {
            check_len("policy_ids[]", id, MAX_ID_BYTES)?;
        }
        let expires_at = caller.expires_at_ms;
        let requested = req
            .requested_ttl
            .as_ref()
            .map(|d| positive_duration("requested_ttl", d))
            .transpose()?;
        let profile = self
            .profiles
            .get(&req.profile)
            .ok_or_else(|| IssuerError::UnknownProfile(req.profile.clone()))?;

        let now = now_ms();
        // The verifier's leeway accepts a token up to a few seconds past its
        // `exp`; nothing is issued for one that has no time left.
        let remaining = Duration::from_millis(u64::try_from(expires_at - now).unwrap_or(0));
        let target = bounded_ttl(profile.max_ttl(), remaining, requested);
        if target.is_zero() {
            return Err(IssuerError::FailedPrecondition(
                "the delegated token has less than one second left (exchange a fresh one), or `requested_ttl` is under one second".into(),
            ));
        }

        let id = uuid::Uuid::new_v4().to_string();
        let new = NewLease {
            id: id.clone(),
            session_id: caller.sid.clone(),
            session_expires_at: expires_at,
            profile: req.profile.clone(),
            vault_path: profile.vault_path.clone(),
            created_at: now,
            issuing_deadline: now
                + i64::try_from(self.issuing_window.as_millis()).unwrap_or(i64::MAX / 2),
            action: req.action.clone(),
            resource: req.resource.clone(),
            intent: req.intent.clone(),
            policy_version: req.policy_version.clone(),
            decision_id: req.decision_id.clone(),
            policy_ids: serde_json::to_string(&req.policy_ids).unwrap_or_else(|_| "[]".into()),
            approval_ticket_id: req.approval_ticket_id.clone(),
            user_subject: caller.user.clone(),
            agent_id: caller.agent.clone(),
        };
        tracing::Span::current().record("lease_id", id.as_str());
        // INVARIANT: the registry row exists (ISSUING) before Vault is asked,
        // so every lease Vault creates for us is either claimed by this row
        // or found by the orphan sweep of this profile's path.
        let recorded_end = self
            .lifecycle
            .reserve(&new, self.limits.max_leases_per_session)
            .await?;
        // The session ends when it was first recorded to end, or when this
        // token does, whichever is sooner.
        let session_end = recorded_end.min(expires_at);
        if bounded_ttl(profile.max_ttl(), remaining_until(session_end), requested).is_zero() {
            self.lifecycle.release(&id).await;
            return Err(IssuerError::FailedPrecondition(format!(
                "session `{}` has less than one second left; it gets no new credentials",
                caller.sid
            )));
        }

        let secret = self.lifecycle.mint(&id, &profile.vault_path).await?;
        test_pause_after_vault_issue(self.test_hooks).await;

        // INVARIANT: the lease's expiry is checked against the session's end
        // from the moment Vault created it (any time up to now), not from
        // when the call began: a grant that may end later is shortened,
        // and one that cannot be is revoked.
        let fitted = self
            .fit_to_session(
                &secret.lease_id,
                Some((secret.lease_duration, secret.renewable, now_ms())),
                session_end,
                profile.max_ttl(),
                requested,
            )
            .await;
        let fit = match fitted {
            Ok(fit) => fit,
            Err(e) => {
                tracing::warn!(lease_id = %id, error = %e, "cannot cap the lease to the session; revoking it");
                return Err(self.lifecycle.abandon(&id, &secret).await);
            }
        };
        let granted_secs = i64::try_from(fit.ttl.as_secs()).unwrap_or(i64::MAX);
        let row = self
            .lifecycle
            .confirm(
                &id,
                &secret,
                Grant {
                    seen_at: fit.seen_at,
                    ttl_secs: granted_secs,
                    expires_at: fit.expires_at,
                    renewable: fit.renewable,
                },
            )
            .await?;
        let total = self
            .revoker
            .metrics()
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        tracing::info!(
            lease_id = %id,
            session_id = %caller.sid,
            profile = %req.profile,
            ttl_secs = granted_secs,
            tether_credential_issued_total = total,
            "credential issued"
        );
        Ok(pb::IssueResponse {
            credential: Some(to_credential(&secret.data)),
            lease: Some(to_pb(&row)),
        })
    }

    /// Brings a Vault lease within the session: its expiry, as Vault
    /// counts it, no later than `session_end`, its TTL no longer than the
    /// profile's maximum or what the caller asked. `current` is the grant
    /// as Vault made it, with the local time it was received; `None`
    /// renews unconditionally (the Renew RPC).
    ///
    /// Vault counts a grant from when it handles the call, somewhere before
    /// this process hears back, so every check is made against the clock
    /// after the answer, and a renewal that may still end past the session
    /// (its round trip ate the whole-second slack) is shortened again.
    async fn fit_to_session(
        &self,
        vault_lease_id: &str,
        current: Option<(Duration, bool, i64)>,
        session_end: i64,
        profile_max: Duration,
        asked: Option<Duration>,
    ) -> Result<Fit, FitError> {
        if let Some((ttl, renewable, seen_at)) = current {
            // One second less: Vault cuts a TTL its own max_ttl capped to
            // whole seconds in its answer, not in the lease.
            let cap = bounded_ttl(
                profile_max,
                remaining_between(seen_at, session_end).saturating_sub(Duration::from_secs(1)),
                asked,
            );
            if !ttl.is_zero() && ttl <= cap {
                return Ok(Fit::new(ttl, renewable, seen_at));
            }
            if !renewable {
                return Err(FitError::NotRenewable);
            }
        }
        for _ in 0..FIT_ATTEMPTS {
            let increment =
                bounded_ttl(profile_max, remaining_between(now_ms(), session_end), asked);
            if increment.is_zero() {
                return Err(FitError::NoTime);
            }
            // Renewing to a smaller increment moves the expiry earlier.
            let (ttl, renewable) = self
                .vault
                .renew(vault_lease_id, increment)
                .await
                .map_err(FitError::Vault)?;
            let seen_at = now_ms();
            // Vault's new expiry is its own now (before `seen_at`) plus at
            // most `increment`.
            let longest = increment.min(ttl + Duration::from_secs(1));
            if !ttl.is_zero()
                && ttl <= increment
                && seen_at.saturating_add(duration_ms(longest)) <= session_end
            {
                return Ok(Fit::new(ttl, renewable, seen_at));
            }
        }
        Err(FitError::TooLong)
    }

    async fn renew(
        &self,
        caller: Caller,
        req: pb::RenewRequest,
    ) -> Result<pb::RenewResponse, IssuerError> {
        check_same_session(named_session_of_renew(&req), &caller)?;
        check_id("lease_id", &req.lease_id)?;
        let increment = req
            .increment
            .as_ref()
            .map(|d| positive_duration("increment", d))
            .transpose()?;
        // A lease of another session is NOT_FOUND, exactly like a lease id
        // that does not exist: a token learns nothing about other sessions.
        let row = self
            .registry
            .get(&req.lease_id)
            .await?
            .filter(|r| r.session_id == caller.sid)
            .ok_or_else(|| IssuerError::NotFound(req.lease_id.clone()))?;
        if row.status != LeaseStatus::Active {
            return Err(IssuerError::FailedPrecondition(format!(
                "lease `{}` is {}, not ACTIVE",
                row.id,
                row.status.as_str()
            )));
        }
        if !row.renewable {
            return Err(IssuerError::FailedPrecondition(format!(
                "lease `{}` is not renewable",
                row.id
            )));
        }
        // The session's end is what was recorded when it was first seen: a
        // token naming a later end extends nothing (it only shortens, below).
        let session = self
            .registry
            .session(&row.session_id)
            .await?
            .ok_or_else(|| IssuerError::Internal(format!("lease `{}` has no session", row.id)))?;
        if session.ended_at.is_some() {
            return Err(IssuerError::FailedPrecondition(format!(
                "session `{}` has ended",
                row.session_id
            )));
        }
        let session_end = session.expires_at.min(caller.expires_at_ms);
        let profile = self.profiles.get(&row.profile).ok_or_else(|| {
            IssuerError::FailedPrecondition(format!(
                "profile `{}` is no longer configured",
                row.profile
            ))
        })?;
        let vault_lease_id = row.vault_lease_id.as_deref().ok_or_else(|| {
            IssuerError::Internal(format!("active lease `{}` without vault id", row.id))
        })?;
        let fit = match self
            .fit_to_session(
                vault_lease_id,
                None,
                session_end,
                profile.max_ttl(),
                increment,
            )
            .await
        {
            Ok(fit) => fit,
            Err(FitError::NoTime) => {
                return Err(IssuerError::FailedPrecondition(format!(
                    "session `{}` has no time left to extend into (it ends within a second)",
                    row.session_id
                )));
            }
            Err(FitError::Vault(e)) => return Err(IssuerError::VaultRenew(e)),
            Err(e) => {
                // Vault kept the lease past the session's end: it goes.
                tracing::warn!(lease_id = %row.id, error = %e, "cannot keep the renewed lease within the session; revoking it");
                if self.registry.mark_revoking(&row.id, now_ms()).await?
                    && let Some(row) = self.registry.get(&row.id).await?
                {
                    self.revoker.revoke_one(&row).await;
                }
                self.revoker.wake();
                return Err(IssuerError::FailedPrecondition(format!(
                    "lease `{}` could not be kept within its session's lifetime; it was revoked",
                    row.id
                )));
            }
        };
        let granted = i64::try_from(fit.ttl.as_secs()).unwrap_or(i64::MAX);
        if !self
            .registry
            .renewed(&row.id, granted, fit.expires_at, fit.renewable)
            .await?
        {
            return Err(IssuerError::FailedPrecondition(format!(
                "lease `{}` was revoked during the renewal",
                row.id
            )));
        }
        tracing::info!(lease_id = %row.id, session_id = %row.session_id, ttl_secs = granted, "lease renewed");
        let row = self
            .registry
            .get(&row.id)
            .await?
            .ok_or_else(|| IssuerError::Internal("renewed lease vanished".into()))?;
        Ok(pb::RenewResponse {
            lease: Some(to_pb(&row)),
        })
    }

    async fn revoke_session(
        &self,
        req: pb::RevokeSessionRequest,
    ) -> Result<pb::RevokeSessionResponse, IssuerError> {
        check_id("session_id", &req.session_id)?;
        check_len("reason", &req.reason, MAX_REASON_BYTES)?;
        let now = now_ms();
        let (ended_at, already_ended) = self
            .registry
            .end_session(&req.session_id, &req.reason, now)
            .await?;
        tracing::info!(session_id = %req.session_id, already_ended, "session ended for credentials");
        let all = self.all_leases(&req.session_id).await?;
        let due: Vec<LeaseRow> = all
            .into_iter()
            .filter(|r| {
                r.vault_lease_id.is_some()
                    && matches!(
                        r.status,
                        LeaseStatus::Revoking | LeaseStatus::RevocationFailed
                    )
            })
            .collect();
        let count = due.len();
        if tokio::time::timeout(self.revoke_budget, self.revoker.revoke_many(due))
            .await
            .is_err()
        {
            tracing::warn!(session_id = %req.session_id, leases = count, "revocations still running after the call budget; they go on in the background");
        }
        self.revoker.wake();
        let (revoked, pending): (Vec<_>, Vec<_>) = self
            .all_leases(&req.session_id)
            .await?
            .iter()
            .map(to_pb)
            .partition(|l| {
                matches!(
                    l.status(),
                    pb::LeaseStatus::Revoked | pb::LeaseStatus::Expired
                )
            });
        Ok(pb::RevokeSessionResponse {
            revoked,
            pending,
            session_ended_at: Some(to_ts(ended_at)),
            already_ended,
        })
    }

    async fn revoke_lease(
        &self,
        caller: Caller,
        req: pb::RevokeLeaseRequest,
    ) -> Result<pb::RevokeLeaseResponse, IssuerError> {
        check_id("lease_id", &req.lease_id)?;
        if req.reason.len() > MAX_REASON_BYTES {
            return Err(IssuerError::InvalidArgument(format!(
                "`reason` is {} bytes, the limit is {MAX_REASON_BYTES}",
                req.reason.len()
            )));
        }
        // A lease of another session is NOT_FOUND, like one that does not
        // exist.
        let row = self
            .registry
            .get(&req.lease_id)
            .await?
            .filter(|r| r.session_id == caller.sid)
            .ok_or_else(|| IssuerError::NotFound(req.lease_id.clone()))?;
        if self.registry.mark_revoking(&row.id, now_ms()).await? {
            tracing::info!(lease_id = %row.id, reason = %tether_runtime::clip(&req.reason), "lease revocation requested");
        }
        if let Some(row) = self.registry.get(&row.id).await?
            && row.vault_lease_id.is_some()
            && matches!(
                row.status,
                LeaseStatus::Revoking | LeaseStatus::RevocationFailed
            )
            && tokio::time::timeout(self.revoke_budget, self.revoker.revoke_one(&row))
                .await
                .is_err()
        {
            tracing::warn!(lease_id = %row.id, "revocation still running after the call budget; it goes on in the background");
        }
        self.revoker.wake();
        let row = self
            .registry
            .get(&req.lease_id)
            .await?
            .ok_or_else(|| IssuerError::NotFound(req.lease_id.clone()))?;
        Ok(pb::RevokeLeaseResponse {
            lease: Some(to_pb(&row)),
        })
    }

    async fn all_leases(&self, session_id: &str) -> Result<Vec<LeaseRow>, IssuerError> {
        let mut out = Vec::new();
        loop {
            let page = self
                .registry
                .leases_of(
                    session_id,
                    1000,
                    i64::try_from(out.len()).unwrap_or(i64::MAX),
                )
                .await?;
            let done = page.len() < 1000;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    async fn list_leases(
        &self,
        req: pb::ListLeasesRequest,
    ) -> Result<pb::ListLeasesResponse, IssuerError> {
        check_id("session_id", &req.session_id)?;
        if req.page_size > MAX_PAGE {
            return Err(IssuerError::InvalidArgument(format!(
                "`page_size` is {}, the limit is {MAX_PAGE}",
                req.page_size
            )));
        }
        let size = if req.page_size == 0 {
            100
        } else {
            req.page_size
        };
        let offset = parse_page_token(&req.session_id, &req.page_token)?;
        let mut rows = self
            .registry
            .leases_of(&req.session_id, i64::from(size) + 1, offset)
            .await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        Ok(pb::ListLeasesResponse {
            next_page_token: if more {
                page_token(&req.session_id, offset + i64::from(size))
            } else {
                String::new()
            },
            leases: rows.iter().map(to_pb).collect(),
        })
    }
}

#[tonic::async_trait]
impl pb::credential_issuer_server::CredentialIssuer for CredentialIssuerService {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "credentials.issue",
            session_id = tracing::field::Empty,
            profile = %truncate(&req.profile),
            lease_id = tracing::field::Empty,
            granted_ttl_secs = tracing::field::Empty,
        );
        let inner = Arc::clone(&self.inner);
        let result = tracing::Instrument::instrument(
            async move {
                let caller = inner.caller(&metadata).await?;
                inner.issue(caller, req).await
            },
            span.clone(),
        )
        .await;
        match result {
            Ok(resp) => {
                if let Some(ttl) = resp.lease.as_ref().and_then(|l| l.granted_ttl.as_ref()) {
                    span.record("granted_ttl_secs", ttl.seconds);
                }
                Ok(Response::new(resp))
            }
            Err(e) => Err(span.in_scope(|| into_status(e))),
        }
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "credentials.renew",
            lease_id = %truncate(&req.lease_id),
            session_id = tracing::field::Empty,
        );
        let inner = Arc::clone(&self.inner);
        in_span(span, async move {
            let caller = inner.caller(&metadata).await?;
            inner.renew(caller, req).await
        })
        .await
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("credentials.revoke_session", session_id = %truncate(&req.session_id));
        let inner = Arc::clone(&self.inner);
        in_span(span, async move { inner.revoke_session(req).await }).await
    }

    async fn revoke_lease(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "credentials.revoke_lease",
            lease_id = %truncate(&req.lease_id),
            session_id = tracing::field::Empty,
        );
        let inner = Arc::clone(&self.inner);
        in_span(span, async move {
            let caller = inner.caller(&metadata).await?;
            inner.revoke_lease(caller, req).await
        })
        .await
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let req = request.into_inner();
        let span =
            tracing::info_span!("credentials.list_leases", session_id = %truncate(&req.session_id));
        let inner = Arc::clone(&self.inner);
        in_span(span, async move { inner.list_leases(req).await }).await
    }
}

/// Runs a handler's work in its span; a failure becomes its status inside
/// the span, so the error is logged with the request's fields.
async fn in_span<T>(
    span: tracing::Span,
    work: impl std::future::Future<Output = Result<T, IssuerError>>,
) -> Result<Response<T>, Status> {
    tracing::Instrument::instrument(work, span.clone())
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
}

/// Caller-supplied ids go into spans only up to the id size limit.
/// The TTL to ask Vault for: never past the profile's maximum, the
/// session's remaining time, or what the caller asked; in whole seconds, as
/// Vault counts them.
fn bounded_ttl(
    profile_max: Duration,
    session_remaining: Duration,
    asked: Option<Duration>,
) -> Duration {
    let cap = profile_max.min(session_remaining);
    let ttl = asked.map_or(cap, |asked| cap.min(asked));
    Duration::from_secs(ttl.as_secs())
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(MAX_ID_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_the_session() {
        let t = page_token("s-1", 100);
        assert_eq!(parse_page_token("s-1", &t).unwrap(), 100);
        assert!(parse_page_token("s-2", &t).is_err());
        assert!(parse_page_token("s-1", "100.deadbeef").is_err());
        assert!(parse_page_token("s-1", "garbage").is_err());
        assert_eq!(parse_page_token("s-1", "").unwrap(), 0);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("session_id", "").is_err());
        assert!(check_id("session_id", &"x".repeat(129)).is_err());
        assert!(check_id("session_id", "a\nb").is_err());
        assert!(check_id("session_id", "sid-1").is_ok());
    }

    #[test]
    fn durations_must_be_positive() {
        let zero = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        let neg = prost_types::Duration {
            seconds: -5,
            nanos: 0,
        };
        assert!(positive_duration("requested_ttl", &zero).is_err());
        assert!(positive_duration("requested_ttl", &neg).is_err());
        assert_eq!(
            positive_duration(
                "requested_ttl",
                &prost_types::Duration {
                    seconds: 5,
                    nanos: 0
                }
            )
            .unwrap(),
            Duration::from_secs(5)
        );
    }
}
