//! Group commit of the exchanges' writes on SQLite.
//!
//! Each exchange writes its actor assertion's id and its new session. On
//! SQLite every statement is a hop to sqlx's worker thread and every
//! autocommit a commit, and the database takes one writer at a time
//! anyway: with many exchanges at once, they queue in SQLite's busy
//! handler and the hops crowd the cores. One writer task instead takes
//! whatever exchanges have arrived (at most [`MAX_BATCH`]) and writes them
//! in one transaction of four statements, however many they are, then
//! answers each caller.

use std::collections::HashSet;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Row as _};
use tether_runtime::tasks::{StopSignal, Tasks};
use tokio::sync::{mpsc, oneshot};

use super::{SessionRecord, UsedAssertion};
use crate::error::ExchangeError;

/// Exchanges written in one transaction at most: 64 sessions are 576 bound
/// values, far below SQLite's limit (32,766).
const MAX_BATCH: usize = 64;

/// Exchanges waiting for the writer at most; a caller beyond it waits for
/// room (backpressure, not unbounded memory).
const QUEUE: usize = 16 * MAX_BATCH;

/// What one exchange writes (see [`super::Store::record_exchange`]).
#[derive(Debug)]
pub(super) struct Exchange {
    pub assertion: Option<UsedAssertion>,
    pub session: Option<SessionRecord>,
}

struct Pending {
    exchange: Exchange,
    reply: oneshot::Sender<Result<bool, ExchangeError>>,
}

/// The way to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the writer in `tasks`: it stops with them, and whoever still
    /// waits for it then gets an error, never a hang.
    pub fn start(pool: AnyPool, tasks: &mut Tasks) -> Self {
        let (queue, exchanges) = mpsc::channel(QUEUE);
        tasks.spawn(
            "session-store-writer",
            writer(pool, exchanges, tasks.signal()),
        );
        Self { queue }
    }

    /// Hands `exchange` to the writer and waits for its batch's commit.
    pub async fn record(&self, exchange: Exchange) -> Result<bool, ExchangeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { exchange, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writer is gone (the service is stopping): nothing of this exchange
/// is known to be written, so it is refused.
fn stopped() -> ExchangeError {
    ExchangeError::Unavailable("session store unavailable: its writer has stopped".into())
}

async fn writer(pool: AnyPool, mut exchanges: mpsc::Receiver<Pending>, mut stop: StopSignal) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer keeps its connection between batches (the pool would
    // ping it on every acquire: one more hop per batch), and gives it back
    // after a failure or when it stops (until then, `AnyPool::close` would
    // wait for it).
    let mut conn: Option<PoolConnection<Any>> = None;
    loop {
        // The stop is only looked at between batches: a batch being
        // written finishes and is answered (within the stop deadline).
        // Exchanges still queued are dropped with the queue, and their
        // callers get `stopped()`.
        tokio::select! {
            biased;
            () = stop.stopped() => return,
            n = exchanges.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
        }
        let (work, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|p| (p.exchange, p.reply)).unzip();
        let written = match &mut conn {
            Some(c) => write(c, &work).await,
            None => match pool.acquire().await {
                Ok(c) => write(conn.insert(c), &work).await,
                Err(e) => Err(e),
            },
        };
        match written {
            Ok(fresh) => {
                for (reply, fresh) in replies.into_iter().zip(fresh) {
                    let _ = reply.send(Ok(fresh));
                }
            }
            Err(e) => {
                conn = None;
                let err = ExchangeError::store(e);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Writes `exchanges` in one transaction: every assertion id not used
/// before, and the sessions of the exchanges whose assertion was fresh (or
/// that had none). Returns, for each exchange, whether it was fresh; of
/// two exchanges with the same assertion, only the first is.
///
/// All or nothing: when it fails, no assertion is spent and no session
/// written (no token was minted for any of them, so a retry with the same
/// assertion is a first use, not a replay). One exchange's failure
/// refuses its whole batch; none is expected (session ids are random).
pub(super) async fn write(
    conn: &mut AnyConnection,
    exchanges: &[Exchange],
) -> Result<Vec<bool>, sqlx::Error> {
    // A transaction only when there are two statements to tie together:
    // one statement is atomic alone, and a re-exchange (an assertion, no
    // new session) keeps its single round trip on PostgreSQL.
    let with_assertion = exchanges.iter().any(|e| e.assertion.is_some());
    let with_session = exchanges.iter().any(|e| e.session.is_some());
    if !(with_assertion && with_session) {
        return insert(conn, exchanges).await;
    }
    let mut tx = conn.begin().await?;
    let fresh = insert(&mut tx, exchanges).await?;
    tx.commit().await?;
    Ok(fresh)
}

/// [`write`]'s statements.
async fn insert(
    conn: &mut AnyConnection,
    exchanges: &[Exchange],
) -> Result<Vec<bool>, sqlx::Error> {
    let assertions: Vec<&UsedAssertion> = exchanges
        .iter()
        .filter_map(|e| e.assertion.as_ref())
        .collect();
    // The ids this statement inserted. A duplicate within the batch is
    // skipped by ON CONFLICT like any used id, so each id comes back once.
    let mut inserted = HashSet::new();
    if !assertions.is_empty() {
        // INVARIANT: only placeholders are generated; every value is bound.
        let sql = format!(
            "INSERT INTO used_assertions (issuer, jti, expires_at) VALUES {} \
             ON CONFLICT (issuer, jti) DO NOTHING RETURNING issuer, jti",
            placeholders(assertions.len(), 3)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &assertions {
            query = query.bind(&a.issuer).bind(&a.jti).bind(a.keep_until_ms);
        }
        for row in query.fetch_all(&mut *conn).await? {
            inserted.insert((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?));
        }
    }
    // `remove`: the first exchange holding an inserted id takes it; a
    // second one with the same id is a replay.
    let fresh: Vec<bool> = exchanges
        .iter()
        .map(|e| {
            e.assertion
                .as_ref()
                .is_none_or(|a| inserted.remove(&(a.issuer.clone(), a.jti.clone())))
        })
        .collect();
    let sessions: Vec<&SessionRecord> = exchanges
        .iter()
        .zip(&fresh)
        .filter(|(_, fresh)| **fresh)
        .filter_map(|(e, _)| e.session.as_ref())
        .collect();
    if !sessions.is_empty() {
        // INVARIANT: only placeholders are generated; every value is bound.
        let sql = format!(
            "INSERT INTO sessions (sid, user_issuer, sub, agent, audience, scope, intent, created_at, expires_at) VALUES {}",
            placeholders(sessions.len(), 9)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in &sessions {
            query = query
                .bind(&s.sid)
                .bind(&s.user_issuer)
                .bind(&s.sub)
                .bind(&s.agent)
                .bind(&s.audience)
                .bind(&s.scope)
                .bind(&s.intent)
                .bind(s.created_at_ms)
                .bind(s.expires_at_ms);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(fresh)
}

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` values.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let values: Vec<String> = (1..=columns)
            .map(|c| format!("${}", r * columns + c))
            .collect();
        format!("({})", values.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::task::JoinSet;

    use super::*;
    use crate::store::Store;

    fn used(jti: &str) -> UsedAssertion {
        UsedAssertion {
            issuer: "hr-assistant".into(),
            jti: jti.into(),
            keep_until_ms: i64::MAX,
        }
    }

    fn session(sid: &str) -> SessionRecord {
        SessionRecord {
            sid: sid.into(),
            user_issuer: "https://idp.example".into(),
            sub: "alice".into(),
            agent: "hr-assistant".into(),
            audience: "https://tether.example/facade".into(),
            scope: "hr:read".into(),
            intent: String::new(),
            created_at_ms: 1_000,
            expires_at_ms: 2_000,
            revoked_at_ms: None,
            revoke_reason: None,
        }
    }

    fn exchange(jti: Option<&str>, sid: Option<&str>) -> Exchange {
        Exchange {
            assertion: jti.map(used),
            session: sid.map(session),
        }
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&tether_store::sqlite_url(&dir.path().join("identity.db")))
            .await
            .unwrap()
    }

    async fn count(store: &Store, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }

    /// `n` exchanges through `store`'s writer at once, each with its own
    /// session (`s_{round}_{i}`) and the assertion `jti(i)`.
    async fn concurrently(
        store: &Store,
        round: &str,
        n: usize,
        jti: impl Fn(usize) -> String,
    ) -> Vec<Result<bool, ExchangeError>> {
        let mut calls = JoinSet::new();
        for i in 0..n {
            let store = store.clone();
            let (a, s) = (used(&jti(i)), session(&format!("s_{round}_{i}")));
            calls.spawn(async move { store.record_exchange(Some(&a), Some(&s)).await });
        }
        calls.join_all().await
    }

    fn is_store_error(result: &Result<bool, ExchangeError>) -> bool {
        matches!(result, Err(ExchangeError::Unavailable(m)) if m.starts_with("session store unavailable"))
    }

    #[tokio::test]
    async fn one_batch_spends_each_assertion_once_and_writes_only_fresh_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        assert!(
            store
                .consume_assertion("hr-assistant", "j-old", i64::MAX)
                .await
                .unwrap()
        );
        let batch = [
            exchange(None, Some("s_no_assertion")),
            exchange(Some("j-1"), None),
            // The same assertion twice in one statement: SQLite skips the
            // second row like any used id, and only the first exchange wins.
            exchange(Some("j-1"), Some("s_replay_in_batch")),
            exchange(Some("j-2"), Some("s_fresh")),
            exchange(Some("j-2"), Some("s_replay_in_batch_2")),
            exchange(Some("j-old"), Some("s_replay")),
        ];
        assert_eq!(
            write(&mut store.pool.acquire().await.unwrap(), &batch)
                .await
                .unwrap(),
            [true, true, false, true, false, false]
        );
        for (sid, written) in [
            ("s_no_assertion", true),
            ("s_fresh", true),
            ("s_replay_in_batch", false),
            ("s_replay_in_batch_2", false),
            ("s_replay", false),
        ] {
            assert_eq!(
                store.session(sid).await.unwrap().is_some(),
                written,
                "{sid}"
            );
        }
        assert_eq!(count(&store, "used_assertions").await, 3);
        assert_eq!(count(&store, "sessions").await, 2);
        // A later batch sees them spent.
        assert_eq!(
            write(
                &mut store.pool.acquire().await.unwrap(),
                &[exchange(Some("j-1"), Some("s_late"))]
            )
            .await
            .unwrap(),
            [false]
        );
        assert!(store.session("s_late").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn concurrent_exchanges_through_the_writer_spend_an_assertion_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Tasks::new();
        let store = store(&dir).await.group_commit(&mut tasks);
        // 32 exchanges with one assertion: exactly one wins, whatever the
        // batches turned out to be.
        let results = concurrently(&store, "same", 32, |_| "j-same".into()).await;
        let won = results.iter().filter(|r| matches!(r, Ok(true))).count();
        let replays = results.iter().filter(|r| matches!(r, Ok(false))).count();
        assert_eq!((won, replays), (1, 31));
        assert_eq!(count(&store, "sessions").await, 1);
        // 32 with their own assertions: all win.
        let results = concurrently(&store, "own", 32, |i| format!("j-{i}")).await;
        assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
        assert_eq!(count(&store, "sessions").await, 33);
        assert_eq!(count(&store, "used_assertions").await, 33);
        // Without an assertion, or without a session.
        assert!(
            store
                .record_exchange(None, Some(&session("s_solo")))
                .await
                .unwrap()
        );
        assert!(store.session("s_solo").await.unwrap().is_some());
        assert!(
            store
                .record_exchange(Some(&used("j-solo")), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_exchange(Some(&used("j-solo")), None)
                .await
                .unwrap()
        );
        tasks.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_failing_batch_refuses_every_exchange_and_spends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Tasks::new();
        let store = store(&dir).await.group_commit(&mut tasks);
        // The sessions' insert fails after the assertions' went in.
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let results = concurrently(&store, "refused", 16, |i| format!("j-{i}")).await;
        assert!(results.iter().all(is_store_error), "{results:?}");
        assert_eq!(count(&store, "used_assertions").await, 0, "rolled back");
        assert_eq!(count(&store, "sessions").await, 0);

        // With the store gone, every exchange is refused the same way.
        store.pool.close().await;
        let results = concurrently(&store, "closed", 16, |i| format!("j-{i}")).await;
        assert!(results.iter().all(is_store_error), "{results:?}");
        tasks.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn callers_waiting_when_the_writer_stops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Tasks::new();
        let store = store(&dir).await.group_commit(&mut tasks);
        // Another connection holds SQLite's write lock, so the writer's
        // batch waits in the busy handler until it is aborted.
        let mut lock = store.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO used_assertions (issuer, jti, expires_at) VALUES ('x', 'x', 0)")
            .execute(&mut *lock)
            .await
            .unwrap();
        let mut calls = JoinSet::new();
        for i in 0..8 {
            let store = store.clone();
            calls.spawn(async move {
                store
                    .record_exchange(
                        Some(&used(&format!("j-{i}"))),
                        Some(&session(&format!("s_{i}"))),
                    )
                    .await
            });
        }
        // The callers and the writer run up to their waits first (this
        // test runs on one thread).
        tokio::task::yield_now().await;
        tasks.stop(Duration::from_millis(100)).await;
        let results = calls.join_all().await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(ExchangeError::Unavailable(_)))),
            "{results:?}"
        );
        // And whoever comes after the stop.
        let late = store
            .record_exchange(Some(&used("j-late")), Some(&session("s_late")))
            .await;
        assert!(
            matches!(&late, Err(ExchangeError::Unavailable(m)) if m.contains("writer has stopped")),
            "{late:?}"
        );
        // The aborted batch never commits, even once the lock is gone.
        lock.rollback().await.unwrap();
        assert_eq!(count(&store, "used_assertions").await, 0);
    }
}
