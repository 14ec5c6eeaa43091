//! The durable tickets and grants (sqlx; SQLite or PostgreSQL).
//!
//! Times are Unix milliseconds. Every state change is one conditional
//! write, so a ticket reaches exactly one terminal state however the
//! request path, the drivers, CancelSession and other replicas race, and a
//! grant's last use is spent once. See `docs/design/005-approval-tickets.md`.

use std::time::Duration;

use sha2::Digest as _;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use crate::config::FatigueLimits;

/// The service's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where a ticket is in its life (the proto's `TicketState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Denied => "DENIED",
            Self::Expired => "EXPIRED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        Ok(match s {
            "PENDING" => Self::Pending,
            "APPROVED" => Self::Approved,
            "DENIED" => Self::Denied,
            "EXPIRED" => Self::Expired,
            "CANCELLED" => Self::Cancelled,
            "FAILED" => Self::Failed,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown ticket state `{other}`").into(),
                ));
            }
        })
    }

    pub fn is_terminal(self) -> bool {
        self != Self::Pending
    }
}

/// Whether the IdP was asked (`approval_tickets.sent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Reserved; the request is being sent.
    NotYet = 0,
    /// The IdP accepted the request: the phone was asked.
    Accepted = 1,
    /// The IdP refused it: the phone was not asked.
    Refused = -1,
    /// The IdP did not answer: the phone may have been asked.
    Unknown = 2,
}

/// The scope of a ticket and a grant: SHA-256 over the length-prefixed
/// (session, action, resource, intent), so no two scopes collide by
/// concatenation.
pub fn scope_key(session: &str, action: &str, resource: &str, intent: &str) -> String {
    let mut hash = sha2::Sha256::new();
    for part in [session, action, resource, intent] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// One row of `approval_tickets` (the notification token only as a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRow {
    pub id: String,
    pub session_id: String,
    pub scope_key: String,
    pub user_subject: String,
    pub agent_id: String,
    pub action: String,
    pub resource: String,
    pub intent: String,
    pub binding_message: String,
    pub confirmation_code: String,
    pub delivery_mode: String,
    pub state: State,
    pub state_reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub session_expires_at: i64,
    pub decided_at: Option<i64>,
    pub approver: String,
    pub sent: i64,
    pub auth_req_id: Option<String>,
    pub poll_interval_ms: Option<i64>,
    pub deadline: Option<i64>,
    pub notification_token_hash: Option<String>,
    pub owner: Option<String>,
    pub owner_until: Option<i64>,
    pub ping_at: Option<i64>,
    pub policy_ids: Vec<String>,
    pub policy_version: String,
    pub grant_id: Option<String>,
}

const TICKET_COLUMNS: &str = "id, session_id, scope_key, user_subject, agent_id, action, resource, intent, \
     binding_message, confirmation_code, delivery_mode, state, state_reason, created_at, expires_at, \
     session_expires_at, decided_at, approver, sent, auth_req_id, poll_interval_ms, deadline, \
     notification_token_hash, owner, owner_until, ping_at, policy_ids, policy_version, grant_id";

impl TicketRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let policy_ids: String = row.try_get("policy_ids")?;
        Ok(Self {
            id: row.try_get("id")?,
            session_id: row.try_get("session_id")?,
            scope_key: row.try_get("scope_key")?,
            user_subject: row.try_get("user_subject")?,
            agent_id: row.try_get("agent_id")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            intent: row.try_get("intent")?,
            binding_message: row.try_get("binding_message")?,
            confirmation_code: row.try_get("confirmation_code")?,
            delivery_mode: row.try_get("delivery_mode")?,
            state: State::parse(&row.try_get::<String, _>("state")?)?,
            state_reason: row.try_get("state_reason")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            session_expires_at: row.try_get("session_expires_at")?,
            decided_at: row.try_get("decided_at")?,
            approver: row.try_get("approver")?,
            sent: row.try_get("sent")?,
            auth_req_id: row.try_get("auth_req_id")?,
            poll_interval_ms: row.try_get("poll_interval_ms")?,
            deadline: row.try_get("deadline")?,
            notification_token_hash: row.try_get("notification_token_hash")?,
            owner: row.try_get("owner")?,
            owner_until: row.try_get("owner_until")?,
            ping_at: row.try_get("ping_at")?,
            policy_ids: serde_json::from_str(&policy_ids)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            policy_version: row.try_get("policy_version")?,
            grant_id: row.try_get("grant_id")?,
        })
    }
}

/// One row of `approval_grants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub id: String,
    pub ticket_id: String,
    pub session_id: String,
    pub action: String,
    pub resource: String,
    pub intent: String,
    pub approver: String,
    pub granted_at: i64,
    pub expires_at: i64,
    pub remaining_uses: i64,
    pub initial_uses: i64,
    pub revoked_at: Option<i64>,
}

const GRANT_COLUMNS: &str = "id, ticket_id, session_id, action, resource, intent, approver, \
     granted_at, expires_at, remaining_uses, initial_uses, revoked_at";

impl GrantRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            ticket_id: row.try_get("ticket_id")?,
            session_id: row.try_get("session_id")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            intent: row.try_get("intent")?,
            approver: row.try_get("approver")?,
            granted_at: row.try_get("granted_at")?,
            expires_at: row.try_get("expires_at")?,
            remaining_uses: row.try_get("remaining_uses")?,
            initial_uses: row.try_get("initial_uses")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// A ticket to create, once the limits allow it.
#[derive(Debug, Clone)]
pub struct NewTicket {
    pub id: String,
    pub session_id: String,
    pub scope_key: String,
    pub user_subject: String,
    pub agent_id: String,
    pub action: String,
    pub resource: String,
    pub intent: String,
    pub binding_message: String,
    pub confirmation_code: String,
    pub delivery_mode: &'static str,
    pub expires_at: i64,
    pub session_expires_at: i64,
    pub policy_ids: Vec<String>,
    pub policy_version: String,
}

/// A limit that refuses a new prompt; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The user already had `prompts_per_user` prompts in the window.
    Rate { retry_after: Duration },
    /// The user denied this (agent, action) within the cool-down.
    CoolDown { retry_after: Duration },
    /// This agent's prompts to the user were denied or unanswered
    /// `escalation_after` times within the escalation window.
    Escalation { retry_after: Duration },
}

/// What [`Store::reserve`] did.
#[derive(Debug)]
pub enum Reserved {
    /// A PENDING ticket for the scope exists: nothing was written.
    Existing(TicketRow),
    /// A new PENDING ticket was written (owned by the caller, not yet
    /// sent).
    Created(TicketRow),
    /// A limit applies: nothing was written.
    Limited(Limited),
}

/// What [`Store::cancel_session`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub cancelled_tickets: Vec<String>,
    pub revoked_grants: Vec<String>,
    pub cancelled_at: i64,
    pub already_cancelled: bool,
}

/// How a ticket ends, written by [`Store::finish`].
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub state: State,
    pub reason: &'a str,
    /// The verified approver (APPROVED only).
    pub approver: &'a str,
    /// The grant to create with an APPROVED ticket: TTL and uses.
    pub grant: Option<(Duration, u32)>,
}

/// The tickets and grants.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn until(from_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(from_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// The time from `now` until fewer than `limit` of `times` (newest first)
/// lie within `window` of it, or `None` when fewer than `limit` already do.
fn blocked_for(times: &[i64], limit: u32, window: Duration, now: i64) -> Option<Duration> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let nth = *times.get(limit.checked_sub(1)?)?;
    let lifts_at = nth.saturating_add(ms(window));
    (lifts_at > now).then(|| until(lifts_at, now).max(Duration::from_secs(1)))
}

impl Store {
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Whether CancelSession ended `session`.
    pub async fn is_cancelled(&self, session: &str) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("SELECT 1 FROM approval_cancelled_sessions WHERE session_id = $1")
                .bind(session)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Consumes one use of a live grant for `scope`, atomically: of two
    /// concurrent calls on the last use, one gets the grant and the other
    /// `None`. Returns the grant after the use.
    pub async fn use_grant(&self, scope: &str, now: i64) -> Result<Option<GrantRow>, sqlx::Error> {
        // The conditional re-check of `remaining_uses > 0` in the UPDATE is
        // what makes the last use single: PostgreSQL re-evaluates it on the
        // row version it locked, SQLite serializes writers.
        let q = format!(
            "UPDATE approval_grants SET remaining_uses = remaining_uses - 1 \
             WHERE id = (SELECT id FROM approval_grants WHERE scope_key = $1 AND remaining_uses > 0 \
                         AND expires_at > $2 AND revoked_at IS NULL ORDER BY expires_at LIMIT 1) \
               AND remaining_uses > 0 AND expires_at > $2 AND revoked_at IS NULL \
             RETURNING {GRANT_COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(scope)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(GrantRow::from_row)
            .transpose()
    }

    /// In one transaction, serialized per user: returns the PENDING ticket
    /// of the scope if there is one, else checks the limits and writes the
    /// new ticket (owned by `owner` until `owner_until`).
    pub async fn reserve(
        &self,
        ticket: &NewTicket,
        limits: &FatigueLimits,
        owner: &str,
        owner_until: i64,
        now: i64,
    ) -> Result<Reserved, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO approval_users (user_subject, prompts) VALUES ($1, 0) \
             ON CONFLICT (user_subject) DO NOTHING",
        )
        .bind(&ticket.user_subject)
        .execute(&mut *tx)
        .await?;
        // The lock: every reserving transaction of this user waits here.
        sqlx::query("UPDATE approval_users SET prompts = prompts + 1 WHERE user_subject = $1")
            .bind(&ticket.user_subject)
            .execute(&mut *tx)
            .await?;

        let q = format!(
            "SELECT {TICKET_COLUMNS} FROM approval_tickets WHERE scope_key = $1 AND state = 'PENDING'"
        );
        if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(&ticket.scope_key)
            .fetch_optional(&mut *tx)
            .await?
        {
            let existing = TicketRow::from_row(&row)?;
            tx.rollback().await?;
            return Ok(Reserved::Existing(existing));
        }

        if let Some(limited) = self.limited(&mut tx, ticket, limits, now).await? {
            tx.rollback().await?;
            return Ok(Reserved::Limited(limited));
        }

        let policy_ids = serde_json::to_string(&ticket.policy_ids)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO approval_tickets (id, session_id, scope_key, user_subject, agent_id, action, \
             resource, intent, binding_message, confirmation_code, delivery_mode, state, created_at, \
             expires_at, session_expires_at, sent, owner, owner_until, policy_ids, policy_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'PENDING', $12, $13, $14, 0, $15, $16, $17, $18)",
        )
        .bind(&ticket.id)
        .bind(&ticket.session_id)
        .bind(&ticket.scope_key)
        .bind(&ticket.user_subject)
        .bind(&ticket.agent_id)
        .bind(&ticket.action)
        .bind(&ticket.resource)
        .bind(&ticket.intent)
        .bind(&ticket.binding_message)
        .bind(&ticket.confirmation_code)
        .bind(ticket.delivery_mode)
        .bind(now)
        .bind(ticket.expires_at)
        .bind(ticket.session_expires_at)
        .bind(owner)
        .bind(owner_until)
        .bind(policy_ids)
        .bind(&ticket.policy_version)
        .execute(&mut *tx)
        .await?;
        let q = format!("SELECT {TICKET_COLUMNS} FROM approval_tickets WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(&ticket.id)
            .fetch_one(&mut *tx)
            .await?;
        let created = TicketRow::from_row(&row)?;
        tx.commit().await?;
        Ok(Reserved::Created(created))
    }

    /// The first limit that refuses a new prompt, in order: cool-down,
    /// escalation, rate.
    async fn limited(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        ticket: &NewTicket,
        limits: &FatigueLimits,
        now: i64,
    ) -> Result<Option<Limited>, sqlx::Error> {
        let cool_down = Duration::from_secs(limits.cool_down_secs);
        let denied: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(decided_at) FROM approval_tickets WHERE user_subject = $1 AND agent_id = $2 \
             AND action = $3 AND state = 'DENIED' AND decided_at > $4",
        )
        .bind(&ticket.user_subject)
        .bind(&ticket.agent_id)
        .bind(&ticket.action)
        .bind(now.saturating_sub(ms(cool_down)))
        .fetch_one(&mut **tx)
        .await?;
        if let Some(at) = denied {
            return Ok(Some(Limited::CoolDown {
                retry_after: until(at.saturating_add(ms(cool_down)), now)
                    .max(Duration::from_secs(1)),
            }));
        }

        let window = Duration::from_secs(limits.escalation_window_secs);
        let unanswered: Vec<i64> = sqlx::query_scalar(
            "SELECT decided_at FROM approval_tickets WHERE user_subject = $1 AND agent_id = $2 \
             AND state IN ('DENIED', 'EXPIRED') AND decided_at > $3 ORDER BY decided_at DESC",
        )
        .bind(&ticket.user_subject)
        .bind(&ticket.agent_id)
        .bind(now.saturating_sub(ms(window)))
        .fetch_all(&mut **tx)
        .await?;
        if let Some(retry_after) = blocked_for(&unanswered, limits.escalation_after, window, now) {
            return Ok(Some(Limited::Escalation { retry_after }));
        }

        let window = Duration::from_secs(limits.prompt_window_secs);
        // A prompt the IdP refused never reached the phone and does not count.
        let prompts: Vec<i64> = sqlx::query_scalar(
            "SELECT created_at FROM approval_tickets WHERE user_subject = $1 AND sent <> -1 \
             AND created_at > $2 ORDER BY created_at DESC",
        )
        .bind(&ticket.user_subject)
        .bind(now.saturating_sub(ms(window)))
        .fetch_all(&mut **tx)
        .await?;
        Ok(blocked_for(&prompts, limits.prompts_per_user, window, now)
            .map(|retry_after| Limited::Rate { retry_after }))
    }

    /// Records that the IdP accepted the request. `false` when the ticket
    /// is no longer PENDING (cancelled meanwhile).
    pub async fn mark_sent(
        &self,
        id: &str,
        auth_req_id: &str,
        interval: Duration,
        deadline: i64,
        notification_token_hash: Option<&str>,
        expires_at: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE approval_tickets SET sent = 1, auth_req_id = $2, poll_interval_ms = $3, \
             deadline = $4, notification_token_hash = $5, expires_at = $6 \
             WHERE id = $1 AND state = 'PENDING'",
        )
        .bind(id)
        .bind(auth_req_id)
        .bind(ms(interval))
        .bind(deadline)
        .bind(notification_token_hash)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a ticket whose request could not be sent.
    pub async fn mark_not_sent(
        &self,
        id: &str,
        sent: Sent,
        reason: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE approval_tickets SET sent = $2, state = 'FAILED', state_reason = $3, decided_at = $4, \
             owner = NULL WHERE id = $1 AND state = 'PENDING'",
        )
        .bind(id)
        .bind(sent as i64)
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Keeps the raised poll interval (after `slow_down`) across restarts.
    pub async fn save_interval(&self, id: &str, interval: Duration) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE approval_tickets SET poll_interval_ms = $2 WHERE id = $1 AND state = 'PENDING'",
        )
        .bind(id)
        .bind(ms(interval))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a PENDING ticket to its terminal state (with its grant, for an
    /// approval, in the same transaction). `false` when the ticket had
    /// already ended: the first terminal state stays.
    pub async fn finish(&self, id: &str, how: &Finish<'_>, now: i64) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let grant_id = how
            .grant
            .map(|_| format!("grt_{}", uuid::Uuid::new_v4().simple()));
        let done = sqlx::query(
            "UPDATE approval_tickets SET state = $2, state_reason = $3, approver = $4, decided_at = $5, \
             grant_id = $6, owner = NULL WHERE id = $1 AND state = 'PENDING'",
        )
        .bind(id)
        .bind(how.state.as_str())
        .bind(how.reason)
        .bind(how.approver)
        .bind(now)
        .bind(grant_id.as_deref())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let (Some(grant_id), Some((ttl, uses))) = (grant_id, how.grant) {
            // INVARIANT: a grant never outlives the session.
            sqlx::query(
                "INSERT INTO approval_grants (id, ticket_id, session_id, scope_key, action, resource, \
                 intent, approver, granted_at, expires_at, remaining_uses, initial_uses) \
                 SELECT $1, id, session_id, scope_key, action, resource, intent, $2, $3, \
                 CASE WHEN session_expires_at < $4 THEN session_expires_at ELSE $4 END, $5, $5 \
                 FROM approval_tickets WHERE id = $6",
            )
            .bind(&grant_id)
            .bind(how.approver)
            .bind(now)
            .bind(now.saturating_add(ms(ttl)))
            .bind(i64::from(uses))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn ticket(&self, id: &str) -> Result<Option<TicketRow>, sqlx::Error> {
        let q = format!("SELECT {TICKET_COLUMNS} FROM approval_tickets WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(TicketRow::from_row)
            .transpose()
    }

    pub async fn ticket_by_auth_req_id(
        &self,
        auth_req_id: &str,
    ) -> Result<Option<TicketRow>, sqlx::Error> {
        let q = format!("SELECT {TICKET_COLUMNS} FROM approval_tickets WHERE auth_req_id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(auth_req_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(TicketRow::from_row)
            .transpose()
    }

    pub async fn grant(&self, id: &str) -> Result<Option<GrantRow>, sqlx::Error> {
        let q = format!("SELECT {GRANT_COLUMNS} FROM approval_grants WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(GrantRow::from_row)
            .transpose()
    }

    /// Ends `session` for approvals: records the cancellation (once),
    /// cancels its PENDING tickets and revokes its grants.
    pub async fn cancel_session(
        &self,
        session: &str,
        reason: &str,
        now: i64,
    ) -> Result<Cancelled, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO approval_cancelled_sessions (session_id, cancelled_at, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(session)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        let cancelled_at: i64 = sqlx::query_scalar(
            "SELECT cancelled_at FROM approval_cancelled_sessions WHERE session_id = $1",
        )
        .bind(session)
        .fetch_one(&mut *tx)
        .await?;
        let cancelled_tickets: Vec<String> = sqlx::query_scalar(
            "UPDATE approval_tickets SET state = 'CANCELLED', state_reason = $2, decided_at = $3, owner = NULL \
             WHERE session_id = $1 AND state = 'PENDING' RETURNING id",
        )
        .bind(session)
        .bind(format!("session ended: {reason}"))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let revoked_grants: Vec<String> = sqlx::query_scalar(
            "UPDATE approval_grants SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL \
             RETURNING id",
        )
        .bind(session)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Cancelled {
            cancelled_tickets,
            revoked_grants,
            cancelled_at,
            already_cancelled: inserted.rows_affected() == 0,
        })
    }

    /// Extends `owner`'s lease on its PENDING tickets; returns their ids.
    pub async fn renew(&self, owner: &str, owner_until: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE approval_tickets SET owner_until = $2 WHERE owner = $1 AND state = 'PENDING' RETURNING id",
        )
        .bind(owner)
        .bind(owner_until)
        .fetch_all(&self.pool)
        .await
    }

    /// Takes over the PENDING tickets nobody owns any more (their replica
    /// stopped), `all` of them at start-up with SQLite (one replica).
    pub async fn claim_orphans(
        &self,
        owner: &str,
        owner_until: i64,
        now: i64,
        all: bool,
    ) -> Result<Vec<TicketRow>, sqlx::Error> {
        let q = format!(
            "UPDATE approval_tickets SET owner = $1, owner_until = $2 \
             WHERE state = 'PENDING' AND (owner IS NULL OR owner_until < $3 OR $4 = 1) \
             RETURNING {TICKET_COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(owner)
            .bind(owner_until)
            .bind(now)
            .bind(i64::from(all))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(TicketRow::from_row)
            .collect()
    }

    /// Records a ping for a ticket driven by another replica.
    pub async fn record_ping(&self, id: &str, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE approval_tickets SET ping_at = $2 WHERE id = $1 AND state = 'PENDING'")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes the pings other replicas recorded for `owner`'s tickets.
    pub async fn take_pings(&self, owner: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE approval_tickets SET ping_at = NULL WHERE owner = $1 AND state = 'PENDING' \
             AND ping_at IS NOT NULL RETURNING id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_do_not_collide_by_concatenation() {
        assert_ne!(
            scope_key("ab", "c", "d", "e"),
            scope_key("a", "bc", "d", "e")
        );
        assert_eq!(scope_key("a", "b", "c", "d"), scope_key("a", "b", "c", "d"));
    }

    #[test]
    fn blocked_until_the_nth_newest_leaves_the_window() {
        let w = Duration::from_secs(300);
        let now = 1_000_000;
        // Two prompts, limit 3: not blocked.
        assert_eq!(blocked_for(&[now - 10, now - 20], 3, w, now), None);
        // Three prompts: blocked until the oldest of the three is 300 s old.
        let t = [now - 10_000, now - 20_000, now - 100_000];
        assert_eq!(
            blocked_for(&t, 3, w, now),
            Some(Duration::from_millis(200_000))
        );
        // Only the 3rd newest matters.
        let t = [now - 10_000, now - 20_000, now - 100_000, now - 290_000];
        assert_eq!(
            blocked_for(&t, 3, w, now),
            Some(Duration::from_millis(200_000))
        );
        // A limit of 0 never blocks by count (configuration refuses it).
        assert_eq!(blocked_for(&t, 0, w, now), None);
    }
}
