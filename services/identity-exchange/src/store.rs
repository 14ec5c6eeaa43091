//! Durable sessions and the actor-assertion replay cache.

use sqlx::{AnyPool, Row as _};

use crate::error::ExchangeError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A session's durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub sid: String,
    /// The IdP that authenticated the user (empty for sessions recorded
    /// before it was kept).
    pub user_issuer: String,
    pub sub: String,
    pub agent: String,
    pub audience: String,
    /// The scope granted, space-separated.
    pub scope: String,
    /// The declared intent (`authorization_details` JSON).
    pub intent: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoke_reason: Option<String>,
}

/// Which sessions [`Store::list_sessions`] returns. Empty strings match
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub sub: String,
    pub agent: String,
    /// Only sessions neither revoked nor expired at this instant (Unix ms).
    pub active_at_ms: Option<i64>,
}

/// Where a page of [`Store::list_sessions`] starts: after this session in
/// the order (newest first: `created_at` descending, then `sid`
/// descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCursor {
    pub created_at_ms: i64,
    pub sid: String,
}

/// The columns [`session_row`] reads, as a literal for `concat!`.
macro_rules! session_columns {
    () => {
        "sid, user_issuer, sub, agent, audience, scope, intent, created_at, expires_at, revoked_at, revoke_reason"
    };
}

fn session_row(row: &sqlx::any::AnyRow) -> Result<SessionRecord, sqlx::Error> {
    Ok(SessionRecord {
        sid: row.try_get("sid")?,
        user_issuer: row.try_get("user_issuer")?,
        sub: row.try_get("sub")?,
        agent: row.try_get("agent")?,
        audience: row.try_get("audience")?,
        scope: row.try_get("scope")?,
        intent: row.try_get("intent")?,
        created_at_ms: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
    })
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

/// A single-use assertion id to record: who issued it, and until when it
/// must be remembered (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedAssertion {
    pub issuer: String,
    pub jti: String,
    pub keep_until_ms: i64,
}

impl Store {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        // SQLite has one writer at a time; several connections would make
        // concurrent exchanges wait in SQLite's busy handler, which sleeps
        // in milliseconds. One connection queues them without sleeping.
        let settings = match tether_store::Backend::of(url) {
            Some(tether_store::Backend::Sqlite) => tether_store::PoolSettings {
                max_connections: 1,
                ..tether_store::PoolSettings::default()
            },
            _ => tether_store::PoolSettings::default(),
        };
        let pool = tether_store::open(url, "identity_exchange", &settings).await?;
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

    /// Whether a single-use assertion id was already recorded.
    pub async fn assertion_used(&self, issuer: &str, jti: &str) -> Result<bool, ExchangeError> {
        let row =
            sqlx::query("SELECT 1 AS used FROM used_assertions WHERE issuer = $1 AND jti = $2")
                .bind(issuer)
                .bind(jti)
                .fetch_optional(&self.pool)
                .await
                .map_err(ExchangeError::store)?;
        Ok(row.is_some())
    }

    /// What a successful exchange writes, in one transaction (one commit
    /// on the exchange's path): the actor assertion's id, and the new
    /// session when there is one. `false`, with nothing written, when the
    /// assertion was already used (a concurrent replay that passed
    /// [`Store::assertion_used`] too).
    pub async fn record_exchange(
        &self,
        assertion: Option<&UsedAssertion>,
        session: Option<&SessionRecord>,
    ) -> Result<bool, ExchangeError> {
        let mut tx = self.pool.begin().await.map_err(ExchangeError::store)?;
        if let Some(a) = assertion {
            let inserted = sqlx::query(
                "INSERT INTO used_assertions (issuer, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT (issuer, jti) DO NOTHING",
            )
            .bind(&a.issuer)
            .bind(&a.jti)
            .bind(a.keep_until_ms)
            .execute(&mut *tx)
            .await
            .map_err(ExchangeError::store)?;
            if inserted.rows_affected() != 1 {
                tx.rollback().await.map_err(ExchangeError::store)?;
                return Ok(false);
            }
        }
        if let Some(s) = session {
            sqlx::query(
                "INSERT INTO sessions (sid, user_issuer, sub, agent, audience, scope, intent, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&s.sid)
            .bind(&s.user_issuer)
            .bind(&s.sub)
            .bind(&s.agent)
            .bind(&s.audience)
            .bind(&s.scope)
            .bind(&s.intent)
            .bind(s.created_at_ms)
            .bind(s.expires_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(ExchangeError::store)?;
        }
        tx.commit().await.map_err(ExchangeError::store)?;
        Ok(true)
    }

    pub async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, ExchangeError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE sid = $1"
        ))
        .bind(sid)
        .fetch_optional(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        row.as_ref()
            .map(session_row)
            .transpose()
            .map_err(ExchangeError::store)
    }

    /// Sessions matching `filter`, newest first (`created_at`, then `sid`,
    /// both descending), after `after` when given, at most `limit`.
    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&SessionCursor>,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, ExchangeError> {
        // INVARIANT: the SQL text is constant; every caller-supplied value
        // is a bound parameter, and an unused filter is switched off by a
        // bound flag rather than by building another statement.
        let (after_flag, after_ms, after_sid) = match after {
            Some(c) => (1_i64, c.created_at_ms, c.sid.as_str()),
            None => (0, 0, ""),
        };
        let (active_flag, now_ms) = match filter.active_at_ms {
            Some(now) => (1_i64, now),
            None => (0, 0),
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions \
             WHERE ($1 = '' OR sub = $1) \
               AND ($2 = '' OR agent = $2) \
               AND ($3 = 0 OR (revoked_at IS NULL AND expires_at > $4)) \
               AND ($5 = 0 OR created_at < $6 OR (created_at = $6 AND sid < $7)) \
             ORDER BY created_at DESC, sid DESC LIMIT $8"
        ))
        .bind(&filter.sub)
        .bind(&filter.agent)
        .bind(active_flag)
        .bind(now_ms)
        .bind(after_flag)
        .bind(after_ms)
        .bind(after_sid)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        rows.iter()
            .map(session_row)
            .collect::<Result<_, _>>()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sid: &str, sub: &str, agent: &str, created_at_ms: i64) -> SessionRecord {
        SessionRecord {
            sid: sid.into(),
            user_issuer: "https://idp.example".into(),
            sub: sub.into(),
            agent: agent.into(),
            audience: "https://tether.example/facade".into(),
            scope: "hr:read".into(),
            intent: r#"[{"type":"hr"}]"#.into(),
            created_at_ms,
            expires_at_ms: created_at_ms + 1_000,
            revoked_at_ms: None,
            revoke_reason: None,
        }
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&tether_store::sqlite_url(&dir.path().join("identity.db")))
            .await
            .unwrap()
    }

    fn sids(rows: &[SessionRecord]) -> Vec<&str> {
        rows.iter().map(|r| r.sid.as_str()).collect()
    }

    #[tokio::test]
    async fn an_exchange_records_its_assertion_and_session_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let used = UsedAssertion {
            issuer: "hr-assistant".into(),
            jti: "j-1".into(),
            keep_until_ms: i64::MAX,
        };
        assert!(!store.assertion_used("hr-assistant", "j-1").await.unwrap());
        let first = session("s_1", "alice", "hr-assistant", 1_000);
        assert!(
            store
                .record_exchange(Some(&used), Some(&first))
                .await
                .unwrap()
        );
        assert!(store.assertion_used("hr-assistant", "j-1").await.unwrap());
        assert!(!store.assertion_used("report-writer", "j-1").await.unwrap());
        // A replay of the same assertion writes nothing, its session neither.
        let second = session("s_2", "alice", "hr-assistant", 2_000);
        assert!(
            !store
                .record_exchange(Some(&used), Some(&second))
                .await
                .unwrap()
        );
        assert!(store.session("s_2").await.unwrap().is_none());
        assert!(store.session("s_1").await.unwrap().is_some());
        // And the single-use check outside an exchange agrees.
        assert!(
            !store
                .consume_assertion("hr-assistant", "j-1", i64::MAX)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn sessions_list_newest_first_with_filters_and_stable_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        // Two sessions in the same millisecond: `sid` breaks the tie.
        for s in [
            session("s_a", "alice", "hr-assistant", 1_000),
            session("s_b", "alice", "hr-assistant", 2_000),
            session("s_c", "carol", "hr-assistant", 2_000),
            session("s_d", "alice", "report-writer", 3_000),
        ] {
            assert!(store.record_exchange(None, Some(&s)).await.unwrap());
        }
        store.revoke("s_b", "done", 2_500).await.unwrap();

        let all = SessionFilter::default();
        let rows = store.list_sessions(&all, None, 10).await.unwrap();
        assert_eq!(sids(&rows), ["s_d", "s_c", "s_b", "s_a"]);
        let b = &rows[2];
        assert_eq!(
            (b.revoked_at_ms, b.revoke_reason.as_deref()),
            (Some(2_500), Some("done"))
        );
        assert_eq!(b.user_issuer, "https://idp.example");
        assert_eq!(
            (b.scope.as_str(), b.intent.as_str()),
            ("hr:read", r#"[{"type":"hr"}]"#)
        );

        // Pages of two, each after the last row of the one before; a
        // session that starts meanwhile does not shift them.
        let first = store.list_sessions(&all, None, 2).await.unwrap();
        store
            .record_exchange(None, Some(&session("s_e", "alice", "hr-assistant", 4_000)))
            .await
            .unwrap();
        let last = first.last().unwrap();
        let cursor = SessionCursor {
            created_at_ms: last.created_at_ms,
            sid: last.sid.clone(),
        };
        let second = store.list_sessions(&all, Some(&cursor), 2).await.unwrap();
        assert_eq!(sids(&first), ["s_d", "s_c"]);
        assert_eq!(sids(&second), ["s_b", "s_a"]);

        let alice = SessionFilter {
            sub: "alice".into(),
            ..SessionFilter::default()
        };
        let rows = store.list_sessions(&alice, None, 10).await.unwrap();
        assert_eq!(sids(&rows), ["s_e", "s_d", "s_b", "s_a"]);
        let alice_hr = SessionFilter {
            agent: "hr-assistant".into(),
            ..alice.clone()
        };
        let rows = store.list_sessions(&alice_hr, None, 10).await.unwrap();
        assert_eq!(sids(&rows), ["s_e", "s_b", "s_a"]);
        // Active at 2 600 ms: not revoked (s_b is) and not expired (s_a
        // ended at 2 000 ms).
        let active = SessionFilter {
            active_at_ms: Some(2_600),
            ..alice
        };
        let rows = store.list_sessions(&active, None, 10).await.unwrap();
        assert_eq!(sids(&rows), ["s_e", "s_d"]);
        // A filter is a value, never SQL.
        let injected = SessionFilter {
            sub: "alice' OR '1'='1".into(),
            ..SessionFilter::default()
        };
        assert!(
            store
                .list_sessions(&injected, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
