//! Pruning of the identity exchange's session store and the credential
//! issuer's lease registry (issue 12), on SQLite and on PostgreSQL: a prune
//! pass deletes what ended longer ago than the retention, keeps what ended
//! since, and never deletes what a guarantee still needs: a revoked session
//! the revocation feed must still list, an assertion id that could still be
//! replayed, a lease that is still live, the session of one, or an ended
//! session whose tokens could still verify. Two replicas pruning at once
//! share the work without an error. The clock is a parameter: nothing
//! sleeps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use tether_credential_issuer::{Pruned as RegistryPruned, Registry};
use tether_identity_exchange::{Pruned, SessionRecord, Store, UsedAssertion};
use tether_integration_tests::postgres::PgCluster;
use tether_runtime::clock::unix_now_ms as now_ms;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

async fn postgres() -> PgCluster {
    PgCluster::start()
        .await
        .expect("starting PostgreSQL (run `integration-tests/run.sh test`)")
}

// ---- identity exchange: sessions and used assertion ids ----------------

fn session(sid: &str, created_at_ms: i64, expires_at_ms: i64) -> SessionRecord {
    SessionRecord {
        sid: sid.into(),
        user_issuer: "https://idp.example".into(),
        sub: "alice".into(),
        agent: "hr-assistant".into(),
        audience: "https://tether.example/facade".into(),
        scope: "hr:read".into(),
        intent: "[]".into(),
        created_at_ms,
        expires_at_ms,
        revoked_at_ms: None,
        revoke_reason: None,
    }
}

fn assertion(jti: &str, keep_until_ms: i64) -> UsedAssertion {
    UsedAssertion {
        issuer: "hr-assistant".into(),
        jti: jti.into(),
        keep_until_ms,
    }
}

async fn present(store: &Store, sids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for sid in sids {
        if store.session(sid).await.unwrap().is_some() {
            out.push((*sid).to_owned());
        }
    }
    out
}

/// Which of `jtis` are still remembered (a replay of them is refused).
/// Records the forgotten ones again: call it last.
async fn remembered(store: &Store, jtis: &[(&str, i64)]) -> Vec<String> {
    let mut out = Vec::new();
    for (jti, keep) in jtis {
        if !store
            .record_exchange(Some(&assertion(jti, *keep)), None)
            .await
            .unwrap()
        {
            out.push((*jti).to_owned());
        }
    }
    out
}

async fn identity_store_is_pruned(url: &str) {
    // Two replicas on one store.
    let store = Store::open(url).await.unwrap();
    let other = Store::open(url).await.unwrap();
    let now = now_ms();
    let sessions = [
        // Ended (expired) eight days ago, and one revoked too.
        ("old", now - 9 * DAY, now - 8 * DAY, None),
        (
            "old_revoked",
            now - 9 * DAY,
            now - 8 * DAY,
            Some(now - 8 * DAY - HOUR),
        ),
        // Ended two days ago: inside a week's retention.
        ("recent", now - 3 * DAY, now - 2 * DAY, None),
        // Revoked two days ago, but its expiry is 30 s ago: its tokens may
        // still verify (leeway), the feed must still list it.
        (
            "revoked_long_ago",
            now - 3 * DAY,
            now - 30_000,
            Some(now - 2 * DAY),
        ),
        // Revoked, expired 30 s ago: still in the feed.
        (
            "just_revoked",
            now - 15 * MINUTE,
            now - 30_000,
            Some(now - 5 * MINUTE),
        ),
        // Live, one of them revoked.
        ("live_revoked", now, now + 10 * MINUTE, Some(now)),
        ("live", now, now + 10 * MINUTE, None),
    ];
    for (sid, created, expires, revoked) in sessions {
        assert!(
            store
                .record_exchange(None, Some(&session(sid, created, expires)))
                .await
                .unwrap()
        );
        if let Some(at) = revoked {
            store.revoke(sid, "test", at).await.unwrap().unwrap();
        }
    }
    let jtis = [
        ("a_old", now - 8 * DAY),
        ("a_recent", now - 2 * DAY),
        ("a_just_expired", now - 10 * MINUTE),
        ("a_live", now + 5 * MINUTE),
    ];
    for (jti, keep) in jtis {
        assert!(
            store
                .record_exchange(Some(&assertion(jti, keep)), None)
                .await
                .unwrap()
        );
    }
    let sids: Vec<&str> = sessions.iter().map(|s| s.0).collect();

    // A week's retention, one row per statement: what ended eight days ago
    // goes, in several batches.
    assert_eq!(
        store.prune(now, WEEK, 1).await.unwrap(),
        Pruned {
            sessions: 2,
            assertions: 1
        }
    );
    assert_eq!(
        present(&store, &sids).await,
        [
            "recent",
            "revoked_long_ago",
            "just_revoked",
            "live_revoked",
            "live"
        ]
    );

    // A retention of zero, on both replicas at once: only the floor is
    // left. What ended two days ago goes (deleted once between the two);
    // nothing a guarantee needs does.
    let (a, b) = tokio::join!(store.prune(now, 0, 1), other.prune(now, 0, 1));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.sessions + b.sessions, a.assertions + b.assertions),
        (1, 1),
        "{a:?} {b:?}"
    );
    assert_eq!(
        store.prune(now, 0, 1000).await.unwrap(),
        Pruned::default(),
        "a second pass finds nothing"
    );
    assert_eq!(
        present(&store, &sids).await,
        ["revoked_long_ago", "just_revoked", "live_revoked", "live"]
    );
    // Every revoked session whose tokens could still verify is still in
    // the feed, to every replica.
    let page = other.revoked_after(0, 60_000, 100).await.unwrap();
    let mut listed: Vec<&str> = page.entries.iter().map(|e| e.sid.as_str()).collect();
    listed.sort_unstable();
    assert_eq!(listed, ["just_revoked", "live_revoked", "revoked_long_ago"]);
    assert!(!page.more);
    // An assertion that is still valid (or expired under an hour ago) is
    // still refused as a replay, at either replica.
    assert_eq!(
        remembered(&other, &jtis).await,
        ["a_just_expired", "a_live"]
    );
}

#[tokio::test]
async fn identity_store_is_pruned_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    identity_store_is_pruned(&tether_store::sqlite_url(&dir.path().join("identity.db"))).await;
}

#[tokio::test]
async fn identity_store_is_pruned_on_postgres() {
    let pg = postgres().await;
    identity_store_is_pruned(&pg.admin_url("postgres")).await;
}

// ---- credential issuer: lease rows and sessions ------------------------

async fn lease(
    registry: &Registry,
    id: &str,
    session: &str,
    status: &str,
    revoked_at: Option<i64>,
) {
    let created = revoked_at.unwrap_or_else(now_ms) - 30 * DAY;
    sqlx::query(
        "INSERT INTO credential_leases (id, session_id, profile, vault_path, vault_lease_id, \
         status, created_at, issuing_deadline, revoked_at) \
         VALUES ($1, $2, 'hr-read', 'database/creds/hr-readonly', $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(session)
    .bind(format!("database/creds/hr-readonly/{id}"))
    .bind(status)
    .bind(created)
    .bind(created + 5_000)
    .bind(revoked_at)
    .execute(registry.pool())
    .await
    .unwrap();
}

/// A session first seen with this end (an Issue), not ended.
async fn seen_session(registry: &Registry, sid: &str, expires_at: i64) {
    sqlx::query(
        "INSERT INTO credential_sessions (session_id, expires_at, created_at) VALUES ($1, $2, $3)",
    )
    .bind(sid)
    .bind(expires_at)
    .bind(expires_at - 15 * MINUTE)
    .execute(registry.pool())
    .await
    .unwrap();
}

async fn rows(registry: &Registry, table: &str, key: &str) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {key} FROM {table} ORDER BY {key}"
    )))
    .fetch_all(registry.pool())
    .await
    .unwrap();
    rows.into_iter().map(|(k,)| k).collect()
}

async fn lease_registry_is_pruned(url: &str) {
    let settings = tether_store::PoolSettings::default();
    let registry = Registry::open(url, &settings).await.unwrap();
    let other = Registry::open(url, &settings).await.unwrap();
    let now = now_ms();

    // Sessions: ended or expired eight days ago with only terminal leases
    // left; ended two days ago; ended long ago but still holding a lease
    // whose revocation keeps failing; ended five minutes ago (its tokens
    // may still verify); live.
    registry
        .end_session("s_old_ended", "test", now - 8 * DAY)
        .await
        .unwrap();
    seen_session(&registry, "s_old_expired", now - 8 * DAY).await;
    registry
        .end_session("s_recent", "test", now - 2 * DAY)
        .await
        .unwrap();
    registry
        .end_session("s_with_live_lease", "test", now - 30 * DAY)
        .await
        .unwrap();
    registry
        .end_session("s_just_ended", "test", now - 5 * MINUTE)
        .await
        .unwrap();
    seen_session(&registry, "s_live", now + 10 * MINUTE).await;

    lease(
        &registry,
        "l_old_revoked",
        "s_old_ended",
        "REVOKED",
        Some(now - 8 * DAY),
    )
    .await;
    lease(
        &registry,
        "l_old_expired",
        "s_old_expired",
        "EXPIRED",
        Some(now - 8 * DAY),
    )
    .await;
    lease(
        &registry,
        "l_recent",
        "s_recent",
        "REVOKED",
        Some(now - 2 * DAY),
    )
    .await;
    lease(
        &registry,
        "l_just_revoked",
        "s_just_ended",
        "REVOKED",
        Some(now - 10 * MINUTE),
    )
    .await;
    // Live leases, however old: never pruned.
    lease(
        &registry,
        "l_failing",
        "s_with_live_lease",
        "REVOCATION_FAILED",
        None,
    )
    .await;
    lease(
        &registry,
        "l_revoking",
        "s_with_live_lease",
        "REVOKING",
        None,
    )
    .await;
    lease(&registry, "l_issuing", "s_with_live_lease", "ISSUING", None).await;
    lease(&registry, "l_active", "s_live", "ACTIVE", None).await;

    // A week's retention, one row per statement.
    assert_eq!(
        registry.prune(now, WEEK, 1).await.unwrap(),
        RegistryPruned {
            leases: 2,
            sessions: 2
        }
    );
    assert_eq!(
        rows(&registry, "credential_leases", "id").await,
        [
            "l_active",
            "l_failing",
            "l_issuing",
            "l_just_revoked",
            "l_recent",
            "l_revoking"
        ]
    );
    assert_eq!(
        rows(&registry, "credential_sessions", "session_id").await,
        ["s_just_ended", "s_live", "s_recent", "s_with_live_lease"]
    );

    // A retention of zero on two replicas at once: only the floor and the
    // live leases hold rows back.
    let (a, b) = tokio::join!(registry.prune(now, 0, 1), other.prune(now, 0, 1));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.leases + b.leases, a.sessions + b.sessions),
        (1, 1),
        "{a:?} {b:?}"
    );
    assert_eq!(
        registry.prune(now, 0, 1000).await.unwrap(),
        RegistryPruned::default()
    );
    assert_eq!(
        rows(&registry, "credential_leases", "id").await,
        [
            "l_active",
            "l_failing",
            "l_issuing",
            "l_just_revoked",
            "l_revoking"
        ]
    );
    assert_eq!(
        rows(&registry, "credential_sessions", "session_id").await,
        ["s_just_ended", "s_live", "s_with_live_lease"]
    );
    // The session that ended five minutes ago is still recorded as ended:
    // a token of it that still verifies gets nothing.
    assert!(
        registry
            .session("s_just_ended")
            .await
            .unwrap()
            .unwrap()
            .ended_at
            .is_some()
    );
}

#[tokio::test]
async fn lease_registry_is_pruned_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    lease_registry_is_pruned(&tether_store::sqlite_url(&dir.path().join("leases.db"))).await;
}

#[tokio::test]
async fn lease_registry_is_pruned_on_postgres() {
    let pg = postgres().await;
    lease_registry_is_pruned(&pg.admin_url("postgres")).await;
}
