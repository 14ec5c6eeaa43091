//! The durable lease registry (sqlx; SQLite or PostgreSQL).
//!
//! Times are Unix milliseconds. Every state change is one conditional
//! `UPDATE`, so two replicas (or the request path and the sweeper) racing on
//! the same row cannot move it backwards.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

/// The service's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where a lease is in its life (the proto's `LeaseStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Issuing,
    Active,
    Revoking,
    Revoked,
    Expired,
    RevocationFailed,
    /// Terminal: an interrupted issuance (no Vault lease id recorded),
    /// settled once the sweeps covered it; nothing was handed out and
    /// nothing is known to have been revoked.
    Abandoned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issuing => "ISSUING",
            Self::Active => "ACTIVE",
            Self::Revoking => "REVOKING",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::RevocationFailed => "REVOCATION_FAILED",
            Self::Abandoned => "ABANDONED",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        Ok(match s {
            "ISSUING" => Self::Issuing,
            "ACTIVE" => Self::Active,
            "REVOKING" => Self::Revoking,
            "REVOKED" => Self::Revoked,
            "EXPIRED" => Self::Expired,
            "REVOCATION_FAILED" => Self::RevocationFailed,
            "ABANDONED" => Self::Abandoned,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown lease status `{other}`").into(),
                ));
            }
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Revoked | Self::Expired | Self::Abandoned)
    }
}

/// One row of `credential_leases` (no secret is ever stored).
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub id: String,
    pub session_id: String,
    pub profile: String,
    pub vault_path: String,
    pub vault_lease_id: Option<String>,
    pub status: Status,
    pub created_at: i64,
    pub issuing_deadline: i64,
    pub issued_at: Option<i64>,
    pub granted_ttl_secs: Option<i64>,
    pub expires_at: Option<i64>,
    pub renewable: bool,
    pub revoked_at: Option<i64>,
    pub revocation_attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub action: String,
    pub resource: String,
}

const COLUMNS: &str = "id, session_id, profile, vault_path, vault_lease_id, status, created_at, \
     issuing_deadline, issued_at, granted_ttl_secs, expires_at, renewable, revoked_at, \
     revocation_attempts, next_attempt_at, last_error, action, resource";

fn row(r: &AnyRow) -> Result<LeaseRow, sqlx::Error> {
    Ok(LeaseRow {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        profile: r.try_get("profile")?,
        vault_path: r.try_get("vault_path")?,
        vault_lease_id: r.try_get("vault_lease_id")?,
        status: Status::parse(&r.try_get::<String, _>("status")?)?,
        created_at: r.try_get("created_at")?,
        issuing_deadline: r.try_get("issuing_deadline")?,
        issued_at: r.try_get("issued_at")?,
        granted_ttl_secs: r.try_get("granted_ttl_secs")?,
        expires_at: r.try_get("expires_at")?,
        renewable: r.try_get::<i64, _>("renewable")? != 0,
        revoked_at: r.try_get("revoked_at")?,
        revocation_attempts: r.try_get("revocation_attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        action: r.try_get("action")?,
        resource: r.try_get("resource")?,
    })
}

/// Everything recorded when an Issue begins.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub id: String,
    pub session_id: String,
    pub session_expires_at: i64,
    pub profile: String,
    pub vault_path: String,
    pub created_at: i64,
    pub issuing_deadline: i64,
    pub action: String,
    pub resource: String,
    pub intent: String,
    pub policy_version: String,
    pub decision_id: String,
    pub policy_ids: String,
    pub approval_ticket_id: String,
    pub user_subject: String,
    pub agent_id: String,
}

/// Why an Issue could not begin.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error("the session has ended")]
    SessionEnded,
    #[error("the session holds {limit} live leases, the limit")]
    TooMany { limit: u32 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A session as recorded.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub expires_at: i64,
    pub ended_at: Option<i64>,
}

/// The shortest time anything is kept after it stopped mattering,
/// whatever the configured retention.
pub use tether_store::MIN_RETENTION_MS;

/// Statements one prune pass runs per table at most.
pub const MAX_PRUNE_BATCHES: u32 = 100;

/// What one [`Registry::prune`] pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub leases: u64,
    pub sessions: u64,
}

/// The registry.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: AnyPool,
}

const LIVE: &str = "('ISSUING', 'ACTIVE', 'REVOKING', 'REVOCATION_FAILED')";

impl Registry {
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Opens and migrates the registry at `url` (what the issuer does at
    /// start, and tools or tests acting as another replica).
    pub async fn open(url: &str, settings: &tether_store::PoolSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let pool = tether_store::open(url, "credential_issuer", settings)
            .await
            .context("opening the lease registry")?;
        tether_store::migrate(&pool, &MIGRATOR)
            .await
            .context("migrating the lease registry")?;
        Ok(Self::new(pool))
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Records the session (if new) and the lease in state ISSUING, in one
    /// transaction, refusing an ended session or one at its lease limit.
    /// Returns the session's end as recorded: fixed when the session was
    /// first seen, never moved by a later call (a token naming a later end
    /// extends nothing).
    pub async fn begin_issue(&self, new: &NewLease, max_live: u32) -> Result<i64, BeginError> {
        let mut tx = self.pool.begin().await?;
        // INVARIANT: the transaction's first statement writes the session's
        // row, so every Issue of one session, on any replica, holds it until
        // commit: PostgreSQL locks the row (`ON CONFLICT DO UPDATE` locks it
        // even when nothing changes), SQLite takes its write lock before the
        // statement reads anything. The count below then sees every lease an
        // earlier holder committed (READ COMMITTED takes a new snapshot per
        // statement), so no two calls both pass the limit; `end_session`
        // waits for the same lock, so an ended session is seen here.
        let session = sqlx::query(
            "INSERT INTO credential_sessions (session_id, expires_at, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (session_id) DO UPDATE SET expires_at = credential_sessions.expires_at \
             RETURNING expires_at, ended_at",
        )
        .bind(&new.session_id)
        .bind(new.session_expires_at)
        .bind(new.created_at)
        .fetch_one(&mut *tx)
        .await?;
        let recorded_end: i64 = session.try_get("expires_at")?;
        let ended: Option<i64> = session.try_get("ended_at")?;
        if ended.is_some() {
            return Err(BeginError::SessionEnded);
        }
        // INVARIANT: a session ending after this commit, or between it and
        // the Vault call, is caught by `claim`, which turns the row REVOKING
        // and revokes whatever Vault issued.
        let inserted = sqlx::query(
            "INSERT INTO credential_leases (id, session_id, profile, vault_path, status, created_at, \
             issuing_deadline, action, resource, intent, policy_version, decision_id, policy_ids, \
             approval_ticket_id, user_subject, agent_id) \
             SELECT $1, $2, $3, $4, 'ISSUING', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
             WHERE (SELECT COUNT(*) FROM credential_leases WHERE session_id = $2 \
                    AND status IN ('ISSUING', 'ACTIVE', 'REVOKING', 'REVOCATION_FAILED')) < $16",
        )
        .bind(&new.id)
        .bind(&new.session_id)
        .bind(&new.profile)
        .bind(&new.vault_path)
        .bind(new.created_at)
        .bind(new.issuing_deadline)
        .bind(&new.action)
        .bind(&new.resource)
        .bind(&new.intent)
        .bind(&new.policy_version)
        .bind(&new.decision_id)
        .bind(&new.policy_ids)
        .bind(&new.approval_ticket_id)
        .bind(&new.user_subject)
        .bind(&new.agent_id)
        .bind(i64::from(max_live))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            // Dropping the transaction rolls it back.
            return Err(BeginError::TooMany { limit: max_live });
        }
        tx.commit().await?;
        Ok(recorded_end)
    }

    /// Removes an ISSUING row whose Vault request certainly did not create
    /// a lease.
    pub async fn discard(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM credential_leases WHERE id = $1 AND vault_lease_id IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the Vault lease of an ISSUING row. The row becomes ACTIVE only
    /// if it is still ISSUING, `now` is before its issuing deadline and its
    /// session has not ended; otherwise it becomes REVOKING (the caller then
    /// revokes the lease and hands nothing out). Returns the row as updated.
    #[expect(clippy::too_many_arguments, reason = "one column per argument")]
    pub async fn claim(
        &self,
        id: &str,
        vault_lease_id: &str,
        issued_at: i64,
        granted_ttl_secs: i64,
        expires_at: i64,
        renewable: bool,
        db_username: Option<&str>,
        now: i64,
    ) -> Result<Option<LeaseRow>, sqlx::Error> {
        // One statement (UPDATE … RETURNING, SQLite ≥ 3.35 and PostgreSQL):
        // this is on every issuance's path.
        let q = format!(
            "UPDATE credential_leases SET vault_lease_id = $1, issued_at = $2, granted_ttl_secs = $3, \
             expires_at = $4, renewable = $5, revoked_at = NULL, db_username = $8, \
             status = CASE WHEN status = 'ISSUING' AND $6 < issuing_deadline AND NOT EXISTS \
               (SELECT 1 FROM credential_sessions s WHERE s.session_id = credential_leases.session_id \
                AND s.ended_at IS NOT NULL) THEN 'ACTIVE' ELSE 'REVOKING' END, \
             next_attempt_at = CASE WHEN status = 'ISSUING' AND $6 < issuing_deadline AND NOT EXISTS \
               (SELECT 1 FROM credential_sessions s WHERE s.session_id = credential_leases.session_id \
                AND s.ended_at IS NOT NULL) THEN NULL ELSE $6 END \
             WHERE id = $7 AND vault_lease_id IS NULL RETURNING {COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(vault_lease_id)
            .bind(issued_at)
            .bind(granted_ttl_secs)
            .bind(expires_at)
            .bind(i64::from(renewable))
            .bind(now)
            .bind(id)
            .bind(db_username)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    /// Records a Vault lease that will not be handed out, for revocation.
    /// Also an interrupted issuance whose creation finished after the sweeps
    /// settled its row ABANDONED: the row becomes live again, because now
    /// there is something to revoke. Returns the row as updated.
    pub async fn record_for_revocation(
        &self,
        id: &str,
        vault_lease_id: &str,
        db_username: Option<&str>,
        now: i64,
    ) -> Result<Option<LeaseRow>, sqlx::Error> {
        let q = format!(
            "UPDATE credential_leases SET vault_lease_id = $1, status = 'REVOKING', issued_at = $2, \
             next_attempt_at = $2, revoked_at = NULL, db_username = $4 \
             WHERE id = $3 AND vault_lease_id IS NULL RETURNING {COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(vault_lease_id)
            .bind(now)
            .bind(id)
            .bind(db_username)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    /// Notes on an ISSUING row that its Vault request outlived the call:
    /// whether Vault created anything is not known yet.
    pub async fn note_outcome_unknown(&self, id: &str, note: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE credential_leases SET last_error = $1 \
             WHERE id = $2 AND status = 'ISSUING' AND vault_lease_id IS NULL",
        )
        .bind(note)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<LeaseRow>, sqlx::Error> {
        let q = format!("SELECT {COLUMNS} FROM credential_leases WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    pub async fn session(&self, session_id: &str) -> Result<Option<SessionRow>, sqlx::Error> {
        let r = sqlx::query(
            "SELECT expires_at, ended_at FROM credential_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| {
            Ok(SessionRow {
                expires_at: r.try_get("expires_at")?,
                ended_at: r.try_get("ended_at")?,
            })
        })
        .transpose()
    }

    /// A renewal's new grant, if the lease is still ACTIVE.
    pub async fn renewed(
        &self,
        id: &str,
        granted_ttl_secs: i64,
        expires_at: i64,
        renewable: bool,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE credential_leases SET granted_ttl_secs = $1, expires_at = $2, renewable = $3 \
             WHERE id = $4 AND status = 'ACTIVE'",
        )
        .bind(granted_ttl_secs)
        .bind(expires_at)
        .bind(i64::from(renewable))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks one live lease REVOKING (due now). `false` when it is not
    /// live (already being revoked, or ended).
    pub async fn mark_revoking(&self, id: &str, now: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE credential_leases SET status = 'REVOKING', next_attempt_at = $1 \
             WHERE id = $2 AND status IN ('ACTIVE', 'ISSUING')",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks the session ended (once) and every live lease of it REVOKING.
    /// Returns when it was first ended and whether it already was.
    pub async fn end_session(
        &self,
        session_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<(i64, bool), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO credential_sessions (session_id, expires_at, created_at) VALUES ($1, $2, $2) \
             ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(session_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let first = sqlx::query(
            "UPDATE credential_sessions SET ended_at = $1, end_reason = $2 \
             WHERE session_id = $3 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let ended_at: i64 =
            sqlx::query("SELECT ended_at FROM credential_sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("ended_at")?;
        sqlx::query(
            "UPDATE credential_leases SET status = 'REVOKING', next_attempt_at = $1 \
             WHERE session_id = $2 AND status IN ('ACTIVE', 'ISSUING')",
        )
        .bind(now)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((ended_at, !first))
    }

    /// One page of a session's leases, newest first.
    pub async fn leases_of(
        &self,
        session_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<LeaseRow>, sqlx::Error> {
        let q = format!(
            "SELECT {COLUMNS} FROM credential_leases WHERE session_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(session_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row)
            .collect()
    }

    /// Moves every ACTIVE lease whose session ended or expired, or which is
    /// itself past its expiry, to REVOKING. Returns how many.
    pub async fn mark_due(&self, now: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE credential_leases SET status = 'REVOKING', next_attempt_at = $1 \
             WHERE status = 'ACTIVE' AND (expires_at <= $1 OR session_id IN \
               (SELECT session_id FROM credential_sessions WHERE ended_at IS NOT NULL OR expires_at <= $1))",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Leases whose revocation is due: REVOKING or REVOCATION_FAILED with
    /// `next_attempt_at` passed, and ISSUING rows past their deadline.
    pub async fn due(&self, now: i64, limit: i64) -> Result<Vec<LeaseRow>, sqlx::Error> {
        let q = format!(
            "SELECT {COLUMNS} FROM credential_leases WHERE \
             (status IN ('REVOKING', 'REVOCATION_FAILED') AND (next_attempt_at IS NULL OR next_attempt_at <= $1)) \
             OR (status = 'ISSUING' AND issuing_deadline <= $1 AND (next_attempt_at IS NULL OR next_attempt_at <= $1)) \
             ORDER BY next_attempt_at LIMIT $2"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row)
            .collect()
    }

    /// The earliest scheduled attempt among non-terminal leases.
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query(
            "SELECT MIN(CASE WHEN status = 'ISSUING' THEN COALESCE(next_attempt_at, issuing_deadline) \
             ELSE next_attempt_at END) AS t \
             FROM credential_leases WHERE status IN ('ISSUING', 'REVOKING', 'REVOCATION_FAILED')",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get("t")
    }

    /// Vault confirmed the revocation (or did not know the lease).
    /// `true` when this call ended the lease (`false`: another revocation
    /// of the same lease, by the sweeper or a call, recorded it first).
    pub async fn mark_done(&self, id: &str, status: Status, now: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE credential_leases SET status = $1, revoked_at = $2, next_attempt_at = NULL \
             WHERE id = $3 AND status IN ('REVOKING', 'REVOCATION_FAILED') AND vault_lease_id IS NOT NULL",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A revocation attempt failed; schedules the next one.
    pub async fn mark_failed(
        &self,
        id: &str,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE credential_leases SET status = 'REVOCATION_FAILED', \
             revocation_attempts = revocation_attempts + 1, next_attempt_at = $1, last_error = $2 \
             WHERE id = $3 AND status IN ('ISSUING', 'REVOKING', 'REVOCATION_FAILED')",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Postpones an interrupted issuance until the orphan sweep may act on
    /// it.
    pub async fn postpone(&self, id: &str, next_attempt_at: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE credential_leases SET next_attempt_at = $1 WHERE id = $2 AND vault_lease_id IS NULL",
        )
        .bind(next_attempt_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The Vault lease ids under `vault_path` that a live row owns.
    pub async fn claimed(
        &self,
        vault_path: &str,
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let q = format!(
            "SELECT vault_lease_id FROM credential_leases WHERE vault_path = $1 \
             AND vault_lease_id IS NOT NULL AND status IN {LIVE}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(vault_path)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("vault_lease_id"))
            .collect()
    }

    /// Whether a live row records `db_username` as its lease's login: the
    /// database sweep never drops such a role.
    pub async fn owns_db_username(&self, db_username: &str) -> Result<bool, sqlx::Error> {
        self.live_row_with("db_username", db_username).await
    }

    /// Live rows under `vault_path` holding a Vault lease whose login is not
    /// recorded (issued before `db_username` existed, or not a database
    /// secret): while any exists, the database sweep cannot tell which
    /// roles they own and leaves the path alone.
    pub async fn unknown_owners(&self, vault_path: &str) -> Result<i64, sqlx::Error> {
        let q = format!(
            "SELECT COUNT(*) AS n FROM credential_leases WHERE vault_path = $1 \
             AND vault_lease_id IS NOT NULL AND db_username IS NULL AND status IN {LIVE}"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(vault_path)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// Whether a live row owns this Vault lease.
    pub async fn is_claimed(&self, vault_lease_id: &str) -> Result<bool, sqlx::Error> {
        self.live_row_with("vault_lease_id", vault_lease_id).await
    }

    /// Whether a live row has `column` = `value`. `column` is one of this
    /// file's names, never caller input.
    async fn live_row_with(&self, column: &'static str, value: &str) -> Result<bool, sqlx::Error> {
        let q = format!(
            "SELECT COUNT(*) AS n FROM credential_leases WHERE {column} = $1 AND status IN {LIVE}"
        );
        let n: i64 = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(value)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    /// After an orphan sweep of its path: settles one interrupted issuance
    /// (no Vault lease id recorded) whose deadline is before `cutoff` as
    /// ABANDONED with `note` (what became of whatever it may have created),
    /// because any lease it may have created was unclaimed and old enough
    /// for the sweep to revoke it. Returns whether it did.
    pub async fn settle_interrupted(
        &self,
        id: &str,
        cutoff: i64,
        now: i64,
        note: &str,
    ) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE credential_leases SET status = 'ABANDONED', revoked_at = $1, next_attempt_at = NULL, \
             last_error = $4 \
             WHERE id = $2 AND vault_lease_id IS NULL AND issuing_deadline < $3 \
             AND status IN ('ISSUING', 'REVOKING', 'REVOCATION_FAILED')",
        )
        .bind(now)
        .bind(id)
        .bind(cutoff)
        .bind(note)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// One prune pass at `now`: deletes lease rows that were revoked,
    /// expired or abandoned (REVOKED, EXPIRED, ABANDONED) more than
    /// `retention_ms` ago, and
    /// sessions that ended (RevokeSession) or expired more than
    /// `retention_ms` ago and hold no live lease; at most `batch` rows per
    /// statement and [`MAX_PRUNE_BATCHES`] statements per table.
    ///
    /// Nothing goes sooner than [`MIN_RETENTION_MS`] after it ended,
    /// whatever `retention_ms` says. INVARIANT: a live lease row
    /// (ISSUING, ACTIVE, REVOKING, REVOCATION_FAILED) is never deleted,
    /// and neither is the session of one; an ended session's row stays
    /// while any token of it could still verify (a delegated token lives
    /// at most 15 minutes), so `begin_issue` keeps refusing it.
    ///
    /// Every replica may prune at once: each statement deletes rows by key
    /// from a bounded selection of terminal rows, so two passes only share
    /// the work.
    pub async fn prune(
        &self,
        now: i64,
        retention_ms: i64,
        batch: u32,
    ) -> Result<Pruned, sqlx::Error> {
        let cutoff = now.saturating_sub(retention_ms.max(MIN_RETENTION_MS));
        let batch = i64::from(batch.max(1));
        let leases = self
            .delete_in_batches(
                "DELETE FROM credential_leases WHERE id IN (SELECT id FROM credential_leases \
                 WHERE status IN ('REVOKED', 'EXPIRED', 'ABANDONED') AND revoked_at < $1 LIMIT $2)",
                cutoff,
                batch,
            )
            .await?;
        let sessions = self
            .delete_in_batches(
                "DELETE FROM credential_sessions WHERE session_id IN \
                 (SELECT s.session_id FROM credential_sessions s \
                  WHERE s.expires_at < $1 AND (s.ended_at IS NULL OR s.ended_at < $1) \
                  AND NOT EXISTS (SELECT 1 FROM credential_leases l WHERE l.session_id = s.session_id \
                    AND l.status IN ('ISSUING', 'ACTIVE', 'REVOKING', 'REVOCATION_FAILED')) \
                  LIMIT $2)",
                cutoff,
                batch,
            )
            .await?;
        Ok(Pruned { leases, sessions })
    }

    /// Runs `sql` (`DELETE … IN (SELECT … < $1 LIMIT $2)`) until a batch
    /// comes back short or [`MAX_PRUNE_BATCHES`] ran.
    async fn delete_in_batches(
        &self,
        sql: &'static str,
        cutoff: i64,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        for _ in 0..MAX_PRUNE_BATCHES {
            let n = sqlx::query(sql)
                .bind(cutoff)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            deleted += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                break;
            }
        }
        Ok(deleted)
    }

    /// Counts leases per status (for tests, logs and metrics).
    pub async fn count(&self, status: Status) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM credential_leases WHERE status = $1")
            .bind(status.as_str())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let url = tether_store::sqlite_url(&dir.path().join("leases.db"));
        let pool = tether_store::open(
            &url,
            "credential_issuer",
            &tether_store::PoolSettings::default(),
        )
        .await
        .unwrap();
        tether_store::migrate(&pool, &MIGRATOR).await.unwrap();
        (dir, Registry::new(pool))
    }

    fn lease(session: &str, session_expires_at: i64, now: i64) -> NewLease {
        NewLease {
            id: uuid::Uuid::new_v4().to_string(),
            session_id: session.into(),
            session_expires_at,
            profile: "hr-read".into(),
            vault_path: "database/creds/hr-readonly".into(),
            created_at: now,
            issuing_deadline: now + 5_000,
            action: String::new(),
            resource: String::new(),
            intent: String::new(),
            policy_version: String::new(),
            decision_id: String::new(),
            policy_ids: "[]".into(),
            approval_ticket_id: String::new(),
            user_subject: "alice".into(),
            agent_id: "hr-assistant".into(),
        }
    }

    async fn live(registry: &Registry, session: &str) -> i64 {
        let q = format!(
            "SELECT COUNT(*) AS n FROM credential_leases WHERE session_id = $1 AND status IN {LIVE}"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(session)
            .fetch_one(registry.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }

    /// 24 concurrent beginnings over the pool's 8 connections: exactly the
    /// limit get a row, every other one is told the limit, none errs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_lease_limit_holds_under_concurrency_on_sqlite() {
        let (_dir, registry) = sqlite().await;
        let now = crate::revoker::now_ms();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..24 {
            let registry = registry.clone();
            let new = lease("s-1", now + 600_000, now);
            calls.spawn(async move { registry.begin_issue(&new, 3).await });
        }
        let (mut ok, mut refused) = (0, 0);
        while let Some(result) = calls.join_next().await {
            match result.unwrap() {
                Ok(_) => ok += 1,
                Err(BeginError::TooMany { limit: 3 }) => refused += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!((ok, refused), (3, 21));
        assert_eq!(live(&registry, "s-1").await, 3);
    }

    /// The session's end is the one recorded first: a later call naming a
    /// later end gets the first back, and the row keeps it.
    #[tokio::test]
    async fn the_sessions_end_is_fixed_when_first_seen() {
        let (_dir, registry) = sqlite().await;
        let now = crate::revoker::now_ms();
        let first = now + 30_000;
        assert_eq!(
            registry
                .begin_issue(&lease("s-1", first, now), 10)
                .await
                .unwrap(),
            first
        );
        assert_eq!(
            registry
                .begin_issue(&lease("s-1", now + 600_000, now), 10)
                .await
                .unwrap(),
            first
        );
        assert_eq!(
            registry.session("s-1").await.unwrap().unwrap().expires_at,
            first
        );
    }

    /// A prune pass with no retention still keeps a session that ended
    /// minutes ago (its tokens may still verify): it keeps being refused.
    /// One that ended past the floor, with no live lease, goes.
    #[tokio::test]
    async fn pruning_never_forgets_a_session_whose_tokens_may_still_verify() {
        let (_dir, registry) = sqlite().await;
        let now = crate::revoker::now_ms();
        registry
            .end_session("s-recent", "test", now - 5 * 60_000)
            .await
            .unwrap();
        registry
            .end_session("s-old", "test", now - MIN_RETENTION_MS - 1)
            .await
            .unwrap();
        assert_eq!(
            registry.prune(now, 0, 10).await.unwrap(),
            Pruned {
                leases: 0,
                sessions: 1
            }
        );
        assert!(registry.session("s-old").await.unwrap().is_none());
        assert!(matches!(
            registry
                .begin_issue(&lease("s-recent", now + 600_000, now), 10)
                .await,
            Err(BeginError::SessionEnded)
        ));
        assert_eq!(live(&registry, "s-recent").await, 0);
    }

    /// An ended session gets no row, whatever its limit.
    #[tokio::test]
    async fn an_ended_session_gets_no_lease() {
        let (_dir, registry) = sqlite().await;
        let now = crate::revoker::now_ms();
        registry.end_session("s-1", "test", now).await.unwrap();
        assert!(matches!(
            registry
                .begin_issue(&lease("s-1", now + 600_000, now), 10)
                .await,
            Err(BeginError::SessionEnded)
        ));
        assert_eq!(live(&registry, "s-1").await, 0);
    }
}
