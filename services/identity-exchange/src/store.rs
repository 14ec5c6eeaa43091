//! Durable sessions and the actor-assertion replay cache.

use sqlx::{AnyPool, Row as _};

use crate::error::ExchangeError;

mod group_commit;

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
    backend: tether_store::Backend,
    /// SQLite's group commit, once started ([`Store::group_commit`]).
    writer: Option<group_commit::GroupCommit>,
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub sid: String,
    pub revoked_at_ms: i64,
    pub expires_at_ms: i64,
    /// Its number in the feed ([`Store::revoked_after`]).
    pub seq: i64,
}

/// A page of the revocation feed and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedPage {
    pub entries: Vec<RevokedEntry>,
    /// More entries follow the last one.
    pub more: bool,
    /// The `after_seq` of the next read: every revocation numbered up to
    /// it was visible to this read, listed or (expired) left out.
    pub next_after_seq: i64,
}

/// The database's clock in Unix milliseconds, as SQL: the one clock every
/// replica's feed shares when it leaves out expired sessions.
const DB_NOW_MS_POSTGRES: &str =
    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms";
const DB_NOW_MS_SQLITE: &str =
    "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now_ms";

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
        let backend = tether_store::Backend::of(url).ok_or_else(|| {
            tether_store::StoreError::UnsupportedUrl(tether_store::redact_url(url))
        })?;
        // One SQLite connection (writers queueing instead of sleeping in
        // SQLite's busy handler) was tried and measured no better at
        // concurrency 32 (BENCHMARKS.md, issue 11): the default pool stays.
        let settings = tether_store::PoolSettings::default();
        let pool = tether_store::open(url, "identity_exchange", &settings).await?;
        tether_store::migrate(&pool, &MIGRATOR).await?;
        Ok(Self {
            pool,
            backend,
            writer: None,
        })
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

    /// What a successful exchange writes: the actor assertion's id, and
    /// the new session when there is one. `false`, with no session written,
    /// when the assertion was already used (a replay, concurrent or not).
    ///
    /// On PostgreSQL both rows go in one statement, so one commit (one WAL
    /// flush) per exchange. On SQLite they go through the group commit
    /// ([`Store::group_commit`]): the exchanges that arrive meanwhile are
    /// written in one transaction. Either way both rows are written or
    /// neither.
    pub async fn record_exchange(
        &self,
        assertion: Option<&UsedAssertion>,
        session: Option<&SessionRecord>,
    ) -> Result<bool, ExchangeError> {
        if let (tether_store::Backend::Postgres, Some(a), Some(s)) =
            (self.backend, assertion, session)
        {
            let inserted = sqlx::query(
                "WITH used AS ( \
                   INSERT INTO used_assertions (issuer, jti, expires_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (issuer, jti) DO NOTHING RETURNING 1) \
                 INSERT INTO sessions (sid, user_issuer, sub, agent, audience, scope, intent, created_at, expires_at) \
                 SELECT $4, $5, $6, $7, $8, $9, $10, $11, $12 WHERE EXISTS (SELECT 1 FROM used)",
            )
            .bind(&a.issuer)
            .bind(&a.jti)
            .bind(a.keep_until_ms)
            .bind(&s.sid)
            .bind(&s.user_issuer)
            .bind(&s.sub)
            .bind(&s.agent)
            .bind(&s.audience)
            .bind(&s.scope)
            .bind(&s.intent)
            .bind(s.created_at_ms)
            .bind(s.expires_at_ms)
            .execute(&self.pool)
            .await
            .map_err(ExchangeError::store)?;
            return Ok(inserted.rows_affected() == 1);
        }
        if assertion.is_none() && session.is_none() {
            return Ok(true);
        }
        let exchange = group_commit::Exchange {
            assertion: assertion.cloned(),
            session: session.cloned(),
        };
        match &self.writer {
            Some(writer) => writer.record(exchange).await,
            // No writer (a store opened by a tool or a test): a batch of one.
            None => {
                let mut conn = self.pool.acquire().await.map_err(ExchangeError::store)?;
                group_commit::write(&mut conn, &[exchange])
                    .await
                    .map(|fresh| fresh.first().copied().unwrap_or(false))
                    .map_err(ExchangeError::store)
            }
        }
    }

    /// Sends the exchanges' writes on SQLite through one writer task in
    /// `tasks`, which commits the exchanges that arrived meanwhile in one
    /// transaction (see `group_commit`); it stops with `tasks`. Nothing
    /// changes on PostgreSQL, where each exchange is already one statement.
    pub fn group_commit(mut self, tasks: &mut tether_runtime::tasks::Tasks) -> Self {
        if self.backend == tether_store::Backend::Sqlite {
            self.writer = Some(group_commit::GroupCommit::start(self.pool.clone(), tasks));
        }
        self
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
        self.begin_revocation(sid, reason, now_ms)
            .await?
            .commit()
            .await
    }

    /// [`Store::revoke`] up to its commit: the revocation is written in an
    /// open transaction, visible to nobody until [`PendingRevocation::commit`]
    /// (dropping it rolls back). Two steps so that a late commit can be
    /// produced on cue (a replica that stalls between write and commit).
    pub async fn begin_revocation(
        &self,
        sid: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<PendingRevocation<'_>, ExchangeError> {
        let mut tx = self.pool.begin().await.map_err(ExchangeError::store)?;
        // INVARIANT: the counter is taken first and in the same transaction
        // as the session's row. Its row lock (PostgreSQL) or the single
        // writer (SQLite) is held until commit or rollback, so revocations
        // get their numbers one at a time and commit in number order; a
        // number is never visible before every smaller one is. A rollback
        // (nothing to revoke) gives the number back.
        let seq: i64 = sqlx::query(
            "UPDATE revocation_counter SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq",
        )
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get("last_seq"))
        .map_err(ExchangeError::store)?;
        let updated = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2, revoked_seq = $3 WHERE sid = $4 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(seq)
        .bind(sid)
        .execute(&mut *tx)
        .await
        .map_err(ExchangeError::store)?;
        Ok(PendingRevocation {
            store: self,
            tx,
            sid: sid.to_owned(),
            revoked: (updated.rows_affected() == 1).then_some(now_ms),
        })
    }

    /// The revocation feed: revocations numbered after `after_seq`, in
    /// number order, at most `limit`, leaving out sessions that expired
    /// more than `margin_ms` ago by the database's clock (no replica's
    /// clock decides what a verifier is sent).
    ///
    /// The counter is read before the page: every revocation numbered up
    /// to it had committed by then, so the page (a later snapshot) sees all
    /// of them, and when the page is the last one the next read may start
    /// after the counter even if expired entries were left out below it.
    pub async fn revoked_after(
        &self,
        after_seq: i64,
        margin_ms: i64,
        limit: i64,
    ) -> Result<RevokedPage, ExchangeError> {
        let high: i64 = sqlx::query("SELECT last_seq FROM revocation_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get("last_seq"))
            .map_err(ExchangeError::store)?;
        let db_now = match self.backend {
            tether_store::Backend::Postgres => DB_NOW_MS_POSTGRES,
            tether_store::Backend::Sqlite => DB_NOW_MS_SQLITE,
        };
        let now_ms: i64 = sqlx::query(db_now)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get("now_ms"))
            .map_err(ExchangeError::store)?;
        let rows = sqlx::query(
            "SELECT sid, revoked_at, expires_at, revoked_seq FROM sessions \
             WHERE revoked_seq > $1 AND expires_at > $2 \
             ORDER BY revoked_seq LIMIT $3",
        )
        .bind(after_seq)
        .bind(now_ms.saturating_sub(margin_ms))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.pool)
        .await
        .map_err(ExchangeError::store)?;
        let mut entries = rows
            .iter()
            .map(|row| {
                Ok(RevokedEntry {
                    sid: row.try_get("sid")?,
                    revoked_at_ms: row.try_get("revoked_at")?,
                    expires_at_ms: row.try_get("expires_at")?,
                    seq: row.try_get("revoked_seq")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(ExchangeError::store)?;
        let more = entries.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let last = entries.last().map_or(after_seq, |e| e.seq);
        let next_after_seq = if more {
            last
        } else {
            last.max(high).max(after_seq)
        };
        Ok(RevokedPage {
            entries,
            more,
            next_after_seq,
        })
    }

    /// The feed as verifiers before the sequence read it: revocations after
    /// the cursor (`revoked_at > since_ms`, or equal and `sid > after_sid`)
    /// of sessions not expired before `live_after_ms`, oldest first, at
    /// most `limit`. Kept for verifiers not yet upgraded; it trusts the
    /// revoking replica's clock, which is why it is replaced.
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

    /// One prune pass at `now_ms`: deletes sessions that ended (expired,
    /// or were revoked) more than `retention_ms` ago, and used assertion
    /// ids whose assertion expired more than `retention_ms` ago, at most
    /// `batch` rows per statement and [`MAX_PRUNE_BATCHES`] statements per
    /// table; what is left waits for the next pass.
    ///
    /// Nothing goes sooner than [`MIN_RETENTION_MS`] after it stopped
    /// mattering, whatever `retention_ms` says. INVARIANT: a session row
    /// stays at least that long past its `expires_at`, so a revoked
    /// session stays in the revocation feed (which lists it until a minute
    /// past its expiry by the database's clock) for as long as any of its
    /// tokens (≤ 15 minutes, `exp` ≤ the session's expiry, plus a
    /// verifier's leeway) could verify, even from a replica whose clock is
    /// off by most of that hour; an assertion id stays at least as long
    /// past its `expires_at` (the assertion's `exp` plus leeway).
    ///
    /// Every replica may prune at once: each statement deletes rows by key
    /// from a bounded selection, so two passes only share the work, and a
    /// row another pass deleted first is simply not counted.
    pub async fn prune(
        &self,
        now_ms: i64,
        retention_ms: i64,
        batch: u32,
    ) -> Result<Pruned, ExchangeError> {
        let kept_past_expiry = now_ms.saturating_sub(MIN_RETENTION_MS);
        let cutoff = now_ms.saturating_sub(retention_ms.max(MIN_RETENTION_MS));
        let batch = i64::from(batch.max(1));
        // A session ended at the earlier of its expiry and its revocation.
        let sessions = delete_in_batches(
            &self.pool,
            "DELETE FROM sessions WHERE sid IN (SELECT sid FROM sessions \
             WHERE expires_at < $1 AND (expires_at < $2 OR revoked_at < $2) LIMIT $3)",
            &[kept_past_expiry, cutoff],
            batch,
        )
        .await?;
        let assertions = delete_in_batches(
            &self.pool,
            "DELETE FROM used_assertions WHERE (issuer, jti) IN \
             (SELECT issuer, jti FROM used_assertions WHERE expires_at < $1 LIMIT $2)",
            &[cutoff],
            batch,
        )
        .await?;
        Ok(Pruned {
            sessions,
            assertions,
        })
    }
}

/// The shortest time anything is kept after it stopped mattering,
/// whatever the configured retention.
pub use tether_store::MIN_RETENTION_MS;

/// Statements one prune pass runs per table at most.
pub const MAX_PRUNE_BATCHES: u32 = 100;

/// What one [`Store::prune`] pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub sessions: u64,
    pub assertions: u64,
}

/// Runs `sql` (a `DELETE … IN (SELECT … LIMIT $n)` whose last parameter is
/// the batch size, after `values`) until a batch comes back short or
/// [`MAX_PRUNE_BATCHES`] ran. Returns the rows deleted.
async fn delete_in_batches(
    pool: &AnyPool,
    sql: &'static str,
    values: &[i64],
    batch: i64,
) -> Result<u64, ExchangeError> {
    let mut deleted = 0;
    for _ in 0..MAX_PRUNE_BATCHES {
        let mut query = sqlx::query(sql);
        for value in values {
            query = query.bind(*value);
        }
        let n = query
            .bind(batch)
            .execute(pool)
            .await
            .map_err(ExchangeError::store)?
            .rows_affected();
        deleted += n;
        if n < u64::try_from(batch).unwrap_or(u64::MAX) {
            break;
        }
    }
    Ok(deleted)
}

/// A revocation written but not committed ([`Store::begin_revocation`]).
#[derive(Debug)]
pub struct PendingRevocation<'a> {
    store: &'a Store,
    tx: sqlx::Transaction<'static, sqlx::Any>,
    sid: String,
    /// When this transaction revoked the session; `None` when it changed
    /// nothing (already revoked, or no such session).
    revoked: Option<i64>,
}

impl PendingRevocation<'_> {
    /// Commits: the revocation time and whether the session was already
    /// revoked; `None` when the session does not exist.
    pub async fn commit(self) -> Result<Option<(i64, bool)>, ExchangeError> {
        match self.revoked {
            Some(at) => {
                self.tx.commit().await.map_err(ExchangeError::store)?;
                Ok(Some((at, false)))
            }
            None => {
                self.tx.rollback().await.map_err(ExchangeError::store)?;
                Ok(self
                    .store
                    .session(&self.sid)
                    .await?
                    .and_then(|s| s.revoked_at_ms.map(|at| (at, true))))
            }
        }
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
    async fn an_exchange_records_its_assertion_and_session_and_a_replay_neither() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let used = UsedAssertion {
            issuer: "hr-assistant".into(),
            jti: "j-1".into(),
            keep_until_ms: i64::MAX,
        };
        let first = session("s_1", "alice", "hr-assistant", 1_000);
        assert!(
            store
                .record_exchange(Some(&used), Some(&first))
                .await
                .unwrap()
        );
        assert!(
            store
                .consume_assertion("report-writer", "j-1", i64::MAX)
                .await
                .unwrap(),
            "ids are per issuer"
        );
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

    #[tokio::test]
    async fn the_revocation_feed_numbers_revocations_and_skips_only_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let now = crate::exchange::unix_now_ms();
        let live = |sid: &str| SessionRecord {
            expires_at_ms: now + 600_000,
            ..session(sid, "alice", "hr-assistant", now)
        };
        for s in [live("s_1"), live("s_2"), live("s_3")] {
            assert!(store.record_exchange(None, Some(&s)).await.unwrap());
        }
        // Expired long ago (by any clock): numbered, never listed.
        let expired = SessionRecord {
            expires_at_ms: now - 3_600_000,
            ..session("s_old", "alice", "hr-assistant", now - 4_000_000)
        };
        assert!(store.record_exchange(None, Some(&expired)).await.unwrap());

        // The revocation time is whatever the revoking replica's clock
        // said; the order is the database's.
        store.revoke("s_2", "a", now).await.unwrap();
        store.revoke("s_old", "b", now).await.unwrap();
        store.revoke("s_1", "c", now - 3_600_000).await.unwrap();
        // Nothing to revoke: no number is used up.
        assert_eq!(
            store.revoke("s_2", "again", now).await.unwrap(),
            Some((now, true))
        );
        assert_eq!(store.revoke("s_none", "x", now).await.unwrap(), None);
        store.revoke("s_3", "d", now).await.unwrap();

        let page = store.revoked_after(0, 60_000, 2).await.unwrap();
        let listed: Vec<(&str, i64)> = page
            .entries
            .iter()
            .map(|e| (e.sid.as_str(), e.seq))
            .collect();
        assert_eq!(listed, [("s_2", 1), ("s_1", 3)]);
        assert!(page.more);
        assert_eq!(page.next_after_seq, 3);
        let page = store.revoked_after(3, 60_000, 2).await.unwrap();
        let listed: Vec<(&str, i64)> = page
            .entries
            .iter()
            .map(|e| (e.sid.as_str(), e.seq))
            .collect();
        assert_eq!(listed, [("s_3", 4)]);
        assert!(!page.more);
        assert_eq!(page.next_after_seq, 4);
        // Nothing new: the cursor stays; a later expired-only revocation
        // moves it without listing anything.
        let page = store.revoked_after(4, 60_000, 2).await.unwrap();
        assert_eq!(
            (page.entries.len(), page.more, page.next_after_seq),
            (0, false, 4)
        );
        let gone = SessionRecord {
            expires_at_ms: now - 3_600_000,
            ..session("s_gone", "alice", "hr-assistant", now - 4_000_000)
        };
        assert!(store.record_exchange(None, Some(&gone)).await.unwrap());
        store.revoke("s_gone", "e", now).await.unwrap();
        let page = store.revoked_after(4, 60_000, 2).await.unwrap();
        assert_eq!(
            (page.entries.len(), page.more, page.next_after_seq),
            (0, false, 5)
        );
    }

    #[tokio::test]
    async fn an_uncommitted_revocation_is_not_listed_and_a_dropped_one_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let now = crate::exchange::unix_now_ms();
        let s = SessionRecord {
            expires_at_ms: now + 600_000,
            ..session("s_1", "alice", "hr-assistant", now)
        };
        assert!(store.record_exchange(None, Some(&s)).await.unwrap());
        let pending = store.begin_revocation("s_1", "x", now).await.unwrap();
        drop(pending);
        assert_eq!(
            store.session("s_1").await.unwrap().unwrap().revoked_at_ms,
            None
        );
        let page = store.revoked_after(0, 60_000, 10).await.unwrap();
        assert_eq!((page.entries.len(), page.next_after_seq), (0, 0));
        let pending = store.begin_revocation("s_1", "x", now).await.unwrap();
        assert_eq!(pending.commit().await.unwrap(), Some((now, false)));
        let page = store.revoked_after(0, 60_000, 10).await.unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(
            page.entries[0].seq, 1,
            "the rolled-back number was given back"
        );
    }
}
