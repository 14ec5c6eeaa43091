//! One lease's way from a request to a credential, in one place:
//! **reserve** a registry row (ISSUING) → **mint** at Vault → **confirm**
//! it (ACTIVE) or **abandon** it (revoked, nothing handed out).
//!
//! The order is the guarantee of docs/design/002-lease-registry.md: the row
//! exists before Vault is asked, so whatever Vault creates is either
//! claimed by the row or found by a sweep.
//!
//! A Vault read that creates a database role is never cut off mid-flight:
//! dropping the connection while OpenBao runs the creation statements can
//! commit the role and register no lease, which only the database sweep
//! (`dbsweep.rs`) can find again. The read runs in a task of its own for up
//! to `vault.creation_timeout_ms`; the call waits `request_timeout_ms` for
//! it and answers UNAVAILABLE past that, and the task then finishes the
//! read and revokes whatever it made.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::error::IssuerError;
use crate::registry::{BeginError, LeaseRow, NewLease, Registry, Status as LeaseStatus};
use crate::revoker::{Revoker, now_ms};
use crate::vault::{IssuedSecret, Vault, VaultError};

/// What an interrupted issuance's row says while nobody knows yet what
/// Vault did.
pub const OUTCOME_UNKNOWN: &str = "abandoned: creation outcome unknown; the sweeps settle it";

/// A grant as it will be recorded (see `service.rs`'s `fit_to_session`).
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// Local time when Vault's answer arrived (Unix ms).
    pub seen_at: i64,
    pub ttl_secs: i64,
    /// Unix ms.
    pub expires_at: i64,
    pub renewable: bool,
}

/// The lease lifecycle, shared by every Issue of the service.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    registry: Registry,
    vault: Arc<Vault>,
    revoker: Arc<Revoker>,
    /// How long an Issue call waits for Vault's answer.
    request_timeout: Duration,
}

impl Lifecycle {
    pub fn new(
        registry: Registry,
        vault: Arc<Vault>,
        revoker: Arc<Revoker>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            registry,
            vault,
            revoker,
            request_timeout,
        }
    }

    /// Writes the ISSUING row (and the session, if new), refusing an ended
    /// session or one at its lease limit. Returns the session's end as
    /// first recorded.
    pub async fn reserve(&self, new: &NewLease, max_live: u32) -> Result<i64, IssuerError> {
        match self.registry.begin_issue(new, max_live).await {
            Ok(end) => Ok(end),
            Err(BeginError::SessionEnded) => Err(IssuerError::FailedPrecondition(format!(
                "session `{}` has ended; it gets no new credentials",
                new.session_id
            ))),
            Err(BeginError::TooMany { limit }) => Err(IssuerError::TooManyLeases {
                session: new.session_id.clone(),
                limit,
            }),
            Err(BeginError::Db(e)) => Err(IssuerError::Registry(e)),
        }
    }

    /// Removes a reserved row that Vault was never asked about, or whose
    /// Vault request certainly did nothing.
    pub async fn release(&self, id: &str) {
        if let Err(db) = self.registry.discard(id).await {
            tracing::warn!(lease_id = %id, error = %db, "discarding the lease row failed; the sweeper settles it");
        }
    }

    /// Asks Vault for a secret at `path` for the reserved row `id`, waiting
    /// at most the request timeout. Past it, the read goes on in the
    /// background and what it creates is revoked; the call fails
    /// UNAVAILABLE either way. The same happens when the caller goes away
    /// (the handler's future is dropped).
    pub async fn mint(&self, id: &str, path: &str) -> Result<IssuedSecret, IssuerError> {
        let (answer, mut answered) = oneshot::channel();
        let finisher = self.clone();
        let (row_id, vault_path) = (id.to_owned(), path.to_owned());
        // INVARIANT: the read runs to its end (or its creation timeout)
        // whatever happens to this call; an answer nobody takes is settled
        // by `finish_unwanted`.
        tokio::spawn(
            async move {
                let result = finisher.vault.issue(&vault_path).await;
                if let Err(unwanted) = answer.send(result) {
                    finisher.finish_unwanted(&row_id, unwanted).await;
                }
            }
            .in_current_span(),
        );
        let result = match tokio::time::timeout(self.request_timeout, &mut answered).await {
            Ok(Ok(result)) => result,
            // The task ended without an answer (the runtime is stopping):
            // what Vault did is unknown.
            Ok(Err(_)) => Err(VaultError::NoAnswer("the vault call was cancelled".into())),
            Err(_elapsed) => {
                // From here on the task keeps what it gets; one that came
                // in this very moment is still taken.
                answered.close();
                match answered.try_recv() {
                    Ok(result) => result,
                    Err(_) => {
                        self.note_outcome_unknown(id).await;
                        Err(VaultError::NoAnswer(format!(
                            "no answer within {} ms; the creation finishes in the background and is revoked",
                            self.request_timeout.as_millis()
                        )))
                    }
                }
            }
        };
        let e = match result {
            Ok(secret) => return Ok(secret),
            Err(e) => e,
        };
        self.revoker
            .metrics()
            .issue_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(lease_id = %id, error = %e, "vault issuance failed");
        if e.certainly_not_applied() {
            self.release(id).await;
            return Err(IssuerError::Vault(e));
        }
        // Vault may have created a lease we never saw, or a role without
        // one: the row stays ISSUING for the sweeps.
        self.revoker.wake();
        Err(IssuerError::VaultNoAnswer(e))
    }

    /// Records the minted lease on its row: ACTIVE if the row is still in
    /// time and its session live, otherwise the lease is revoked at once
    /// and nothing is handed out.
    pub async fn confirm(
        &self,
        id: &str,
        secret: &IssuedSecret,
        grant: Grant,
    ) -> Result<LeaseRow, IssuerError> {
        let claimed = self
            .registry
            .claim(
                id,
                &secret.lease_id,
                grant.seen_at,
                grant.ttl_secs,
                grant.expires_at,
                grant.renewable,
                secret.db_username(),
                grant.seen_at,
            )
            .await;
        let row = match claimed {
            Ok(Some(row)) => row,
            Ok(None) => {
                return Err(IssuerError::Internal(format!(
                    "lease `{id}` vanished during issuance"
                )));
            }
            Err(e) => {
                tracing::warn!(lease_id = %id, error = %e, "recording the vault lease failed; revoking it");
                if let Err(ve) = self.vault.revoke(&secret.lease_id).await {
                    tracing::warn!(lease_id = %id, error = %ve, "revoking the unrecorded lease failed; the orphan sweep will");
                }
                return Err(IssuerError::Registry(e));
            }
        };
        if row.status != LeaseStatus::Active {
            self.revoker.revoke_one(&row).await;
            return Err(IssuerError::FailedPrecondition(format!(
                "session `{}` ended (or the issuance outlived its deadline) while the credential was being issued; it was revoked",
                row.session_id
            )));
        }
        Ok(row)
    }

    /// Records a minted lease that will not be handed out (it could not be
    /// kept within the session), and revokes it (retrying in the background
    /// if that fails).
    pub async fn abandon(&self, id: &str, secret: &IssuedSecret) -> IssuerError {
        self.revoke_unwanted(id, secret).await;
        IssuerError::FailedPrecondition(
            "the credential could not be limited to the session's lifetime; it was revoked".into(),
        )
    }

    /// Records `secret` on row `id` as REVOKING and revokes it; when the
    /// registry cannot record it, revokes it at Vault directly (the orphan
    /// sweep covers a failure of both).
    async fn revoke_unwanted(&self, id: &str, secret: &IssuedSecret) {
        match self
            .registry
            .record_for_revocation(id, &secret.lease_id, secret.db_username(), now_ms())
            .await
        {
            Ok(Some(row)) => {
                self.revoker.revoke_one(&row).await;
            }
            Ok(None) => {
                // The row holds another lease id already (never expected)
                // or is gone: nothing else will revoke this one.
                if let Err(ve) = self.vault.revoke(&secret.lease_id).await {
                    tracing::warn!(lease_id = %id, error = %ve, "revoking an unrecorded lease failed; the orphan sweep will");
                }
            }
            Err(e) => {
                tracing::warn!(lease_id = %id, error = %e, "recording the unwanted lease failed");
                if let Err(ve) = self.vault.revoke(&secret.lease_id).await {
                    tracing::warn!(lease_id = %id, error = %ve, "revoking the unwanted lease failed; the orphan sweep will");
                }
            }
        }
    }

    /// A Vault answer that arrived after the call gave up (or went away):
    /// whatever it created is revoked; a refusal lets the row go.
    async fn finish_unwanted(&self, id: &str, result: Result<IssuedSecret, VaultError>) {
        match result {
            Ok(secret) => {
                tracing::info!(
                    lease_id = %id,
                    vault_lease_id = %secret.lease_id,
                    "vault created the credential after the call gave up; revoking it"
                );
                self.revoke_unwanted(id, &secret).await;
            }
            Err(e) if e.certainly_not_applied() => self.release(id).await,
            Err(e) => {
                tracing::warn!(lease_id = %id, error = %e, "the background vault read ended without an answer; the sweeps settle it");
                self.note_outcome_unknown(id).await;
            }
        }
    }

    async fn note_outcome_unknown(&self, id: &str) {
        if let Err(e) = self
            .registry
            .note_outcome_unknown(id, OUTCOME_UNKNOWN)
            .await
        {
            tracing::warn!(lease_id = %id, error = %e, "noting an unknown issuance outcome failed");
        }
    }
}
