//! `tether audit verify|checkpoint|proof|tail` as an auditor runs them,
//! against a log written through `tether-audit` into a SQLite file, and
//! every kind of tampering done to that file with SQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;
use tempfile::TempDir;
use tether_audit::{AuditKey, AuditLog, AuditRecord, RecordKind};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const ORIGIN: &str = "audit.cli-test.example";

/// A log of `n` records (sessions `s-0` and `s-1`, request ids `dec_<i>`)
/// with a published checkpoint, its verifier key in `audit-key.vkey`.
struct Written {
    dir: TempDir,
    db: PathBuf,
    url: String,
    key: AuditKey,
    log: AuditLog,
}

impl Written {
    fn store(&self) -> &str {
        self.db.to_str().unwrap()
    }

    fn vkey_file(&self) -> PathBuf {
        self.dir.path().join("audit-key.vkey")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn sql(&self, statements: &str) {
        let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    async fn leaf(&self, index: i64) -> String {
        let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
        let (leaf,): (String,) = sqlx::query_as("SELECT leaf FROM audit_leaves WHERE idx = $1")
            .bind(index)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        leaf
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let vkey = self.vkey_file();
        let mut args = vec![
            "audit",
            "verify",
            "--store",
            self.store(),
            "--key-file",
            vkey.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tether(&args)
    }

    /// Saves the current published checkpoint to `name` with the CLI.
    fn save_checkpoint(&self, name: &str) -> PathBuf {
        let out = self.file(name);
        let vkey = self.vkey_file();
        let saved = tether(&[
            "audit",
            "checkpoint",
            "--store",
            self.store(),
            "--out",
            out.to_str().unwrap(),
            "--key-file",
            vkey.to_str().unwrap(),
        ]);
        assert!(saved.status.success(), "{saved:?}");
        out
    }
}

fn record(i: u64) -> AuditRecord {
    let kind = if i % 3 == 2 {
        RecordKind::Issuance
    } else {
        RecordKind::Decision
    };
    let mut r = AuditRecord::new(kind, 1_767_225_600_000 + 1_000 * i as i64);
    r.agent = "hr-assistant".into();
    r.user_idp = "https://idp.example".into();
    r.user_sub = "alice".into();
    r.action = r#"Action::"read""#.into();
    r.resource = format!(r#"Employee::"{}""#, 1000 + i);
    r.decision = "allow".into();
    r.policy_ids = vec!["hr-read".into()];
    r.policy_version = "sha256:00".into();
    r.session_id = format!("s-{}", i % 2);
    r.request_id = format!("dec_{i}");
    if kind == RecordKind::Issuance {
        r.lease_id = format!("l-{i}");
    }
    r.risk = Some(0.0);
    r
}

async fn written(n: u64) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let url = tether_store::sqlite_url(&db);
    let key = AuditKey::generate();
    std::fs::write(
        dir.path().join("audit-key.vkey"),
        format!("{}\n", key.verifier_key(ORIGIN)),
    )
    .unwrap();
    let log = AuditLog::open(&url, key.clone(), ORIGIN).await.unwrap();
    for i in 0..n {
        assert_eq!(log.append(&record(i)).await.unwrap(), i);
    }
    log.publish_checkpoint().await.unwrap();
    Written {
        dir,
        db,
        url,
        key,
        log,
    }
}

fn tether(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 1 with the message `want` on stderr.
fn assert_detected(out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("audit log verification FAILED") && err.contains(want),
        "wanted `{want}` in: {err}"
    );
}

#[tokio::test]
async fn an_untouched_log_verifies_with_the_verifier_key_or_the_public_key() {
    let w = written(8).await;
    let saved = w.save_checkpoint("saved.checkpoint");
    assert!(
        std::fs::read_to_string(&saved)
            .unwrap()
            .starts_with(&format!("{ORIGIN}\n8\n"))
    );
    let out = w.verify(&["--checkpoint", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("ok: 8 records of `audit.cli-test.example` verified"),
        "{text}"
    );
    assert!(
        text.contains("consistent with the saved checkpoint of 8 records"),
        "{text}"
    );

    // Records appended after the checkpoint are reported, not trusted.
    w.log.append(&record(8)).await.unwrap();
    let out = w.verify(&[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("1 newer records are not covered"),
        "{out:?}"
    );

    // The PEM public key works as well as the verifier key; the URL form
    // of the store as well as its path.
    let pem = w.file("audit-key.pub.pem");
    std::fs::write(&pem, w.key.public_key_pem()).unwrap();
    let out = tether(&[
        "audit",
        "verify",
        "--store",
        &w.url,
        "--key-file",
        pem.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");

    // A private key is refused: auditors hold the public half only.
    let private = w.file("audit-key.pem");
    w.key.save(&private).unwrap();
    let out = w.verify(&[]);
    assert!(out.status.success());
    let out = tether(&[
        "audit",
        "verify",
        "--store",
        w.store(),
        "--key-file",
        private.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("is a private key"), "{out:?}");
}

#[tokio::test]
async fn an_altered_record_is_detected() {
    let w = written(8).await;
    w.sql(r#"UPDATE audit_leaves SET leaf = replace(leaf, '"allow"', '"deny"') WHERE idx = 3"#)
        .await;
    assert_detected(
        &w.verify(&[]),
        "record 3 does not match its stored leaf hash: a record was altered",
    );

    // Altered together with its stored leaf hash: the root gives it away.
    let leaf = w.leaf(3).await;
    let hash = tlog_tiles::record_hash(leaf.as_bytes()).to_string();
    w.sql(&format!(
        "UPDATE audit_leaves SET leaf_hash = '{hash}' WHERE idx = 3"
    ))
    .await;
    assert_detected(
        &w.verify(&[]),
        "the first 8 records do not hash to the checkpoint's root",
    );
}

#[tokio::test]
async fn a_removed_record_is_detected() {
    let w = written(8).await;
    w.sql("DELETE FROM audit_leaves WHERE idx = 2").await;
    assert_detected(
        &w.verify(&[]),
        "record 2 is missing (the next stored record is 3): a record was removed",
    );

    // Removed and the later records renumbered to close the gap.
    w.sql("UPDATE audit_leaves SET idx = idx - 1 WHERE idx > 2")
        .await;
    assert_detected(&w.verify(&[]), "records covered by the checkpoint are gone");
}

#[tokio::test]
async fn reordered_records_are_detected() {
    let w = written(8).await;
    w.sql(
        "UPDATE audit_leaves SET idx = -1 WHERE idx = 4; \
         UPDATE audit_leaves SET idx = 4 WHERE idx = 5; \
         UPDATE audit_leaves SET idx = 5 WHERE idx = -1;",
    )
    .await;
    assert_detected(
        &w.verify(&[]),
        "do not hash to the checkpoint's root: records were altered, reordered",
    );
}

#[tokio::test]
async fn an_inserted_record_is_detected() {
    let w = written(8).await;
    let mut forged = record(2);
    forged.kind = RecordKind::Revocation;
    forged.detail = "nothing to see".into();
    let leaf = forged.to_leaf().unwrap();
    let hash = tlog_tiles::record_hash(leaf.as_bytes()).to_string();
    w.sql(&format!(
        "UPDATE audit_leaves SET idx = idx + 1000 WHERE idx >= 2; \
         UPDATE audit_leaves SET idx = idx - 999 WHERE idx >= 1000; \
         INSERT INTO audit_leaves (idx, time_ms, kind, session_id, request_id, leaf, leaf_hash) \
         VALUES (2, 0, 'revocation', 's-0', '', '{}', '{hash}');",
        leaf.replace('\'', "''")
    ))
    .await;
    assert_detected(
        &w.verify(&[]),
        "the first 8 records do not hash to the checkpoint's root",
    );
}

#[tokio::test]
async fn a_truncated_tail_is_detected() {
    // Cut off: the latest checkpoint still covers the missing records.
    let w = written(8).await;
    w.sql("DELETE FROM audit_leaves WHERE idx >= 6").await;
    assert_detected(
        &w.verify(&[]),
        "the log holds 6 records but the checkpoint covers 8",
    );

    // Cut off, then the log carries on and a new checkpoint is signed
    // honestly over what is left: only a checkpoint saved before the cut
    // tells.
    let w = written(12).await;
    let saved = w.save_checkpoint("before-the-cut.checkpoint");
    w.sql(&format!(
        "DELETE FROM audit_leaves WHERE idx >= 9; \
         DELETE FROM audit_hashes WHERE idx >= {}; \
         UPDATE audit_head SET size = 9 WHERE id = 0;",
        tlog_tiles::stored_hash_index(0, 9)
    ))
    .await;
    for i in 100..106 {
        w.log.append(&record(i)).await.unwrap();
    }
    w.log.publish_checkpoint().await.unwrap();
    // The store's published checkpoint only moves forward (15 > 12).
    let out = w.verify(&[]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("cut-off tail cannot be detected"));
    assert_detected(
        &w.verify(&["--checkpoint", saved.to_str().unwrap()]),
        "the log of 15 records is not an extension of the earlier one of 12 records: the log was rewritten or truncated",
    );
}

#[tokio::test]
async fn a_rolled_back_or_foreign_checkpoint_is_refused() {
    let w = written(4).await;
    let early = w.save_checkpoint("early.checkpoint");
    for i in 4..8 {
        w.log.append(&record(i)).await.unwrap();
    }
    w.log.publish_checkpoint().await.unwrap();
    let late = w.save_checkpoint("late.checkpoint");

    // The store's checkpoint put back to the earlier one.
    let early_text = std::fs::read_to_string(&early).unwrap();
    w.sql(&format!(
        "UPDATE audit_checkpoint SET size = 4, note = '{early_text}' WHERE id = 0"
    ))
    .await;
    assert_detected(
        &w.verify(&["--checkpoint", late.to_str().unwrap()]),
        "the current checkpoint covers 4 records, an earlier one covered 8: the log was rolled back",
    );

    // Another log's key.
    let other = w.file("other.vkey");
    std::fs::write(&other, AuditKey::generate().verifier_key(ORIGIN)).unwrap();
    let out = tether(&[
        "audit",
        "verify",
        "--store",
        w.store(),
        "--key-file",
        other.to_str().unwrap(),
    ]);
    assert_detected(&out, "the checkpoint is not signed by the log's key");

    // No checkpoint at all.
    w.sql("DELETE FROM audit_checkpoint").await;
    assert_detected(&w.verify(&[]), "no published checkpoint");
}

#[tokio::test]
async fn proof_prints_a_verifiable_inclusion_proof() {
    let w = written(8).await;
    let vkey = w.vkey_file();
    let out = tether(&[
        "audit",
        "proof",
        "--store",
        w.store(),
        "--record",
        "5",
        "--key-file",
        vkey.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("record 5 in the tree of 8 records"), "{text}");
    assert!(
        text.contains("inclusion proof (RFC 6962 audit path, 3 hashes):"),
        "{text}"
    );
    assert!(
        text.contains("verified: record 5 is in the log `audit.cli-test.example` of 8 records"),
        "{text}"
    );
    assert!(text.contains(r#""request_id":"dec_5""#), "{text}");

    // By the decision id the agent was given.
    let out = tether(&["audit", "proof", "--store", w.store(), "--record", "dec_2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("record 2 in the tree of 8 records"));

    // Not covered by the checkpoint yet; not there at all.
    w.log.append(&record(8)).await.unwrap();
    let out = tether(&["audit", "proof", "--store", w.store(), "--record", "8"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("not covered by the latest checkpoint"));
    let out = tether(&[
        "audit",
        "proof",
        "--store",
        w.store(),
        "--record",
        "dec_nope",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // A proof checked against a tampered record fails.
    w.sql(r#"UPDATE audit_leaves SET leaf = replace(leaf, '"allow"', '"deny"') WHERE idx = 5"#)
        .await;
    let out = tether(&[
        "audit",
        "proof",
        "--store",
        w.store(),
        "--record",
        "5",
        "--key-file",
        vkey.to_str().unwrap(),
    ]);
    assert_detected(
        &out,
        "the inclusion proof for record 5 does not lead to the checkpoint's root",
    );
}

#[tokio::test]
async fn tail_tells_one_session_in_time_order() {
    let w = written(6).await;
    let out = tether(&["audit", "tail", "--store", w.store(), "--session", "s-1"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(
            r#"2026-01-01T00:00:01Z #1 decision allow Action::"read" on Employee::"1001" agent=hr-assistant user=alice@https://idp.example policies=hr-read version=sha256:00 risk=0 id=dec_1"#
        ),
        "{text}"
    );
    assert!(lines[1].contains("#3 decision"), "{text}");
    assert!(
        lines[2].contains("#5 issuance allow") && lines[2].contains("lease=l-5"),
        "{text}"
    );

    let out = tether(&["audit", "tail", "--store", w.store(), "--session", "s-9"]);
    assert_eq!(out.status.code(), Some(1));
    let out = tether(&[
        "audit",
        "tail",
        "--store",
        Path::new("/nonexistent/audit.db").to_str().unwrap(),
        "--session",
        "s-1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no audit store file"), "{out:?}");
}
