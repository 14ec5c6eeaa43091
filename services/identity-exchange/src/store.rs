//! Durable sessions and the actor-assertion replay cache.

use sqlx::{AnyPool, Row as _};

use crate::error::ExchangeError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A session's durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub sid: String,
    pub sub: String,
    pub agent: String,
    pub audience: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool = tether_store::open(
            url,
            "identity_exchange",
            &tether_store::PoolSettings::default(),
        )
        .await?;
        tether_store::migrate(&pool, &MIGRATOR).await?;
        Ok(Self { pool })
    }

    /// Records a single-use assertion id. `false` when it was already used.
    pub async fn consume_assertion(
        &self,
        issuer: &str,
        jti: &str,
        expires_at_ms: i64,
    ) -> Result<bool, ExchangeError> {
        let result = sqlx::query(
            "INSERT INTO used_assertions (issuer, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT (issuer, jti) DO NOTHING",
        )
        .bind(issuer)
        .bind(jti)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn insert_session(&self, s: &SessionRecord) -> Result<(), ExchangeError> {
        sqlx::query(
            "INSERT INTO sessions (sid, sub, agent, audience, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.sid)
        .bind(&s.sub)
        .bind(&s.agent)
        .bind(&s.audience)
        .bind(s.created_at_ms)
        .bind(s.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        Ok(())
    }

    pub async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, ExchangeError> {
        let row = sqlx::query(
            "SELECT sid, sub, agent, audience, created_at, expires_at, revoked_at FROM sessions WHERE sid = $1",
        )
        .bind(sid)
        .fetch_optional(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        row.map(|row| {
            Ok(SessionRecord {
                sid: row.try_get("sid")?,
                sub: row.try_get("sub")?,
                agent: row.try_get("agent")?,
                audience: row.try_get("audience")?,
                created_at_ms: row.try_get("created_at")?,
                expires_at_ms: row.try_get("expires_at")?,
                revoked_at_ms: row.try_get("revoked_at")?,
            })
        })
        .transpose()
        .map_err(ExchangeError::store)
    }

    /// Marks a session revoked. Returns the revocation time and whether it
    /// was already revoked; `None` when the session does not exist.
    pub async fn revoke(
        &self,
        sid: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<(i64, bool)>, ExchangeError> {
        let updated = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE sid = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(sid)
        .execute(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        if updated.rows_affected() == 1 {
            return Ok(Some((now_ms, false)));
        }
        Ok(self
            .session(sid)
            .await?
            .and_then(|s| s.revoked_at_ms.map(|at| (at, true))))
    }

    /// Revocations after the cursor (`revoked_at > since_ms`, or equal and
    /// `sid > after_sid`) of sessions not expired before `live_after_ms`,
    /// oldest first, at most `limit`.
    pub async fn revoked_since(
        &self,
        since_ms: i64,
        after_sid: &str,
        live_after_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, i64)>, ExchangeError> {
        let rows = sqlx::query(
            "SELECT sid, revoked_at, expires_at FROM sessions \
             WHERE revoked_at IS NOT NULL AND expires_at > $3 \
               AND (revoked_at > $1 OR (revoked_at = $1 AND sid > $2)) \
             ORDER BY revoked_at, sid LIMIT $4",
        )
        .bind(since_ms)
        .bind(after_sid)
        .bind(live_after_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("sid")?,
                    row.try_get("revoked_at")?,
                    row.try_get("expires_at")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ExchangeError::store)
    }

    /// Forgets assertion ids that can no longer be replayed anyway.
    pub async fn purge_expired_assertions(&self, now_ms: i64) -> Result<u64, ExchangeError> {
        let r = sqlx::query("DELETE FROM used_assertions WHERE expires_at < $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(ExchangeError::store)?;
        Ok(r.rows_affected())
    }
}
