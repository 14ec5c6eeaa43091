//! The audit log on a real PostgreSQL 15 cluster: several writers (each
//! its own pool, as facade replicas would be) share one total order, and
//! an auditor holding an earlier checkpoint catches a cut-off tail.
//!
//! The SQLite behaviour and every other kind of tampering are tested in
//! `libs/audit`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tether_audit::verify::{self, VerifyError};
use tether_audit::{AuditKey, AuditLog, AuditRecord, RecordKind};
use tether_integration_tests::postgres::PgCluster;

const ORIGIN: &str = "audit.integration.example";

fn record(writer: usize, i: usize) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Issuance, 1_767_225_600_000 + i as i64);
    r.agent = format!("agent-{writer}");
    r.user_idp = "https://idp.example".into();
    r.user_sub = "alice".into();
    r.action = r#"Action::"read""#.into();
    r.resource = format!(r#"Employee::"{i}""#);
    r.decision = "allow".into();
    r.policy_ids = vec!["hr-read".into()];
    r.session_id = format!("s-{writer}");
    r.lease_id = format!("l-{writer}-{i}");
    r
}

/// A cluster with an empty database `audit` and its URL.
async fn database() -> (PgCluster, String) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("audit").await.unwrap();
    let url = pg.admin_url("audit");
    (pg, url)
}

/// A superuser connection to the log's tables, for tampering.
async fn raw(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("SET search_path TO audit")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn writers_on_separate_pools_share_one_gapless_order() {
    let (_pg, url) = database().await;
    let key = AuditKey::generate();
    let vkey = key.verifier_key(ORIGIN);
    const WRITERS: usize = 3;
    const EACH: usize = 40;
    let mut logs = Vec::new();
    for _ in 0..WRITERS {
        logs.push(AuditLog::open(&url, key.clone(), ORIGIN).await.unwrap());
    }

    // Every writer appends concurrently, several appends in flight each.
    let mut tasks = tokio::task::JoinSet::new();
    for (w, log) in logs.iter().enumerate() {
        for i in 0..EACH {
            let log = log.clone();
            tasks.spawn(async move { (log.append(&record(w, i)).await.unwrap(), w, i) });
        }
    }
    let mut appended = tasks.join_all().await;
    appended.sort_unstable();
    let indexes: Vec<u64> = appended.iter().map(|(index, ..)| *index).collect();
    assert_eq!(indexes, (0..(WRITERS * EACH) as u64).collect::<Vec<_>>());

    // Each returned index holds the record appended, and the stored tree
    // (hashes written by three processes in turn) is the tree of the
    // leaves.
    let n = (WRITERS * EACH) as u64;
    let leaves = logs[1].leaves(0..n).await.unwrap();
    for (leaf, (index, w, i)) in leaves.iter().zip(&appended) {
        assert_eq!(leaf.index, *index);
        assert_eq!(AuditRecord::from_leaf(&leaf.data).unwrap(), record(*w, *i));
    }
    let cp = logs[2].checkpoint().await.unwrap();
    assert_eq!(cp.size(), n);
    let report = verify::log(&leaves, &vkey, cp.text(), None).unwrap();
    assert_eq!((report.size, report.uncovered), (n, 0));
    let proof = logs[0].inclusion_proof(n / 2, n).await.unwrap();
    verify::inclusion(&proof, &leaves[(n / 2) as usize].data, &cp).unwrap();

    let mut conn = raw(&url).await;
    let (rows, head): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_leaves), (SELECT size FROM audit_head WHERE id = 0)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((rows, head), (n as i64, n as i64));

    // One session's story, from any replica.
    let tail = logs[0].tail("s-2").await.unwrap();
    assert_eq!(tail.len(), EACH);
    assert!(
        tail.windows(2)
            .all(|w| w[0].record.time_ms <= w[1].record.time_ms)
    );
    assert!(tail.iter().all(|e| e.record.agent == "agent-2"));
}

#[tokio::test]
async fn a_truncated_tail_is_caught_by_an_earlier_checkpoint() {
    let (_pg, url) = database().await;
    let key = AuditKey::generate();
    let vkey = key.verifier_key(ORIGIN);
    let log = AuditLog::open(&url, key, ORIGIN).await.unwrap();
    for i in 0..12 {
        assert_eq!(log.append(&record(0, i)).await.unwrap(), i as u64);
    }
    let saved = log.checkpoint().await.unwrap();

    // Someone with write access to the database cuts records 9..11 and
    // everything derived from them; the log carries on.
    let mut conn = raw(&url).await;
    sqlx::query("DELETE FROM audit_leaves WHERE idx >= 9")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_hashes WHERE idx >= $1")
        .bind(tlog_tiles::stored_hash_index(0, 9) as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_head SET size = 9 WHERE id = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    for i in 100..106 {
        log.append(&record(0, i)).await.unwrap();
    }
    let now = log.checkpoint().await.unwrap();
    assert_eq!(now.size(), 15);
    let leaves = log.leaves(0..now.size()).await.unwrap();

    // On its own the shortened log verifies: its checkpoint was signed
    // honestly over what was left (a hash chain would look the same).
    verify::log(&leaves, &vkey, now.text(), None).unwrap();
    // The checkpoint saved before the cut gives it away.
    let err = verify::log(&leaves, &vkey, now.text(), Some(saved.text())).unwrap_err();
    assert!(
        matches!(err, VerifyError::Inconsistent { old: 12, new: 15 }),
        "{err}"
    );
    let proof = log.consistency_proof(12, 15).await.unwrap();
    let err = verify::consistency(&proof, &saved, &now).unwrap_err();
    assert!(matches!(err, VerifyError::Inconsistent { .. }), "{err}");
}
