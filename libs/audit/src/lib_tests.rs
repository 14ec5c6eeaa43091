//! The log on SQLite: appends, proofs, and every kind of tampering an
//! auditor must catch. PostgreSQL (several writers) is covered in
//! `integration-tests/tests/audit.rs`.

use tempfile::TempDir;

use super::*;
use crate::verify::VerifyError;

const ORIGIN: &str = "audit.test.example";

struct Fixture {
    _dir: TempDir,
    url: String,
    log: AuditLog,
    vkey: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = tether_store::sqlite_url(&dir.path().join("audit.db"));
    let key = AuditKey::generate();
    let vkey = key.verifier_key(ORIGIN);
    let log = AuditLog::open(&url, key, ORIGIN).await.unwrap();
    Fixture {
        _dir: dir,
        url,
        log,
        vkey,
    }
}

fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Decision, 1_767_225_600_000 + i as i64);
    r.agent = "hr-assistant".into();
    r.user_idp = "https://idp.example".into();
    r.user_sub = "alice".into();
    r.action = r#"Action::"read""#.into();
    r.resource = format!(r#"Employee::"{}""#, 1000 + i);
    r.decision = "allow".into();
    r.policy_ids = vec!["hr-read".into()];
    r.policy_version = "sha256:00".into();
    r.session_id = format!("s-{}", i % 2);
    r.risk = Some(0.1);
    r.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
    r
}

async fn append_n(log: &AuditLog, range: Range<u64>) {
    for i in range {
        assert_eq!(log.append(&record(i)).await.unwrap(), i);
    }
}

async fn all_leaves(log: &AuditLog) -> Vec<Leaf> {
    log.leaves(0..u64::MAX).await.unwrap()
}

async fn exec(log: &AuditLog, sql: &'static str) {
    sqlx::query(sql).execute(&log.reader.pool).await.unwrap();
}

#[tokio::test]
async fn appends_are_dense_and_every_proof_verifies() {
    let f = fixture().await;
    let empty = f.log.checkpoint().await.unwrap();
    assert_eq!((empty.size(), empty.root()), (0, tlog_tiles::EMPTY_HASH));
    append_n(&f.log, 0..9).await;
    assert_eq!(f.log.size().await.unwrap(), 9);

    let now = f.log.checkpoint().await.unwrap();
    assert_eq!(now.size(), 9);
    assert_eq!(verify::checkpoint(now.text(), &f.vkey).unwrap(), now);
    let leaves = all_leaves(&f.log).await;
    let report = verify::log(&leaves, &f.vkey, now.text(), Some(empty.text())).unwrap();
    assert_eq!(
        (report.size, report.root, report.uncovered),
        (9, now.root(), 0)
    );
    for (i, leaf) in leaves.iter().enumerate() {
        assert_eq!(
            AuditRecord::from_leaf(&leaf.data).unwrap(),
            record(i as u64)
        );
    }

    // Proofs computed from the stored hashes, for every size the log had:
    // a checkpoint is re-signed for each so the verifier only trusts
    // signed roots.
    let mut checkpoints = vec![empty];
    let key_for = |size: u64| {
        let mut tree = tree::MemoryTree::default();
        for leaf in &leaves[..size as usize] {
            tree.push(leaf.hash).unwrap();
        }
        checkpoint::sign(&f.log.signer, ORIGIN, size, tree.root(size).unwrap()).unwrap()
    };
    for size in 1..=9 {
        checkpoints.push(key_for(size));
    }
    for size in 1..=9_u64 {
        for index in 0..size {
            let proof = f.log.inclusion_proof(index, size).await.unwrap();
            let cp = &checkpoints[size as usize];
            verify::inclusion(&proof, &leaves[index as usize].data, cp).unwrap();
            let other = &leaves[((index + 1) % 9) as usize].data;
            assert!(matches!(
                verify::inclusion(&proof, other, cp),
                Err(VerifyError::NotIncluded { .. })
            ));
        }
    }
    for new in 0..=9_u64 {
        for old in 0..=new {
            let proof = f.log.consistency_proof(old, new).await.unwrap();
            verify::consistency(
                &proof,
                &checkpoints[old as usize],
                &checkpoints[new as usize],
            )
            .unwrap();
        }
    }
}

#[tokio::test]
async fn an_altered_record_is_detected() {
    let f = fixture().await;
    append_n(&f.log, 0..6).await;
    let cp = f.log.checkpoint().await.unwrap();

    // The record's text changed, its stored leaf hash not.
    exec(
        &f.log,
        "UPDATE audit_leaves SET leaf = REPLACE(leaf, '\"allow\"', '\"deny\"') WHERE idx = 3",
    )
    .await;
    let err = verify::log(&all_leaves(&f.log).await, &f.vkey, cp.text(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::LeafHashMismatch { index: 3 }),
        "{err}"
    );

    // The leaf hash rewritten to match: the root gives it away.
    let mut leaves = all_leaves(&f.log).await;
    leaves[3].hash = tlog_tiles::record_hash(leaves[3].data.as_bytes());
    let err = verify::log(&leaves, &f.vkey, cp.text(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::RootMismatch { size: 6 }),
        "{err}"
    );
}

#[tokio::test]
async fn a_removed_record_is_detected() {
    let f = fixture().await;
    append_n(&f.log, 0..6).await;
    let cp = f.log.checkpoint().await.unwrap();

    exec(&f.log, "DELETE FROM audit_leaves WHERE idx = 2").await;
    let err = verify::log(&all_leaves(&f.log).await, &f.vkey, cp.text(), None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::IndexGap {
                expected: 2,
                found: 3
            }
        ),
        "{err}"
    );

    // Renumbered to close the gap: too few records for the checkpoint.
    exec(
        &f.log,
        "UPDATE audit_leaves SET idx = idx - 1 WHERE idx > 2",
    )
    .await;
    let err = verify::log(&all_leaves(&f.log).await, &f.vkey, cp.text(), None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::MissingRecords {
                have: 5,
                checkpoint: 6
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn reordered_records_are_detected() {
    let f = fixture().await;
    append_n(&f.log, 0..6).await;
    let cp = f.log.checkpoint().await.unwrap();

    // Swap records 1 and 4, each with its own leaf hash.
    exec(&f.log, "UPDATE audit_leaves SET idx = 100 WHERE idx = 1").await;
    exec(&f.log, "UPDATE audit_leaves SET idx = 1 WHERE idx = 4").await;
    exec(&f.log, "UPDATE audit_leaves SET idx = 4 WHERE idx = 100").await;
    let leaves = all_leaves(&f.log).await;
    assert_eq!(AuditRecord::from_leaf(&leaves[1].data).unwrap(), record(4));
    let err = verify::log(&leaves, &f.vkey, cp.text(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::RootMismatch { size: 6 }),
        "{err}"
    );
}

#[tokio::test]
async fn an_inserted_record_is_detected() {
    let f = fixture().await;
    append_n(&f.log, 0..6).await;
    let cp = f.log.checkpoint().await.unwrap();

    // Make room at index 2 and slip in a well-formed record with a
    // correct leaf hash.
    exec(
        &f.log,
        "UPDATE audit_leaves SET idx = idx + 100 WHERE idx >= 2",
    )
    .await;
    exec(
        &f.log,
        "UPDATE audit_leaves SET idx = idx - 99 WHERE idx >= 100",
    )
    .await;
    let forged = record(42).to_leaf().unwrap();
    sqlx::query(
        "INSERT INTO audit_leaves (idx, time_ms, kind, session_id, leaf, leaf_hash) \
         VALUES (2, 0, 'decision', 's-0', $1, $2)",
    )
    .bind(&forged)
    .bind(tlog_tiles::record_hash(forged.as_bytes()).to_string())
    .execute(&f.log.reader.pool)
    .await
    .unwrap();
    let leaves = all_leaves(&f.log).await;
    assert_eq!(leaves.len(), 7);
    let err = verify::log(&leaves, &f.vkey, cp.text(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::RootMismatch { size: 6 }),
        "{err}"
    );
}

/// What a hash chain cannot show: the last records cut off, and the log
/// carrying on (new appends, new checkpoints honestly signed over what is
/// left). Only a checkpoint saved before the cut reveals it.
#[tokio::test]
async fn a_truncated_tail_is_detected_against_an_earlier_checkpoint() {
    let f = fixture().await;
    append_n(&f.log, 0..10).await;
    let saved = f.log.checkpoint().await.unwrap();

    // Cut records 7..9 with everything derived from them.
    let cut = tlog_tiles::stored_hash_index(0, 7) as i64;
    exec(&f.log, "DELETE FROM audit_leaves WHERE idx >= 7").await;
    sqlx::query("DELETE FROM audit_hashes WHERE idx >= $1")
        .bind(cut)
        .execute(&f.log.reader.pool)
        .await
        .unwrap();
    exec(&f.log, "UPDATE audit_head SET size = 7 WHERE id = 0").await;

    // The log carries on, and verifies on its own.
    assert_eq!(f.log.append(&record(100)).await.unwrap(), 7);
    let shorter = f.log.checkpoint().await.unwrap();
    let leaves = all_leaves(&f.log).await;
    verify::log(&leaves, &f.vkey, shorter.text(), None).unwrap();

    // Against the saved checkpoint: shorter than what was once signed.
    let err = verify::log(&leaves, &f.vkey, shorter.text(), Some(saved.text())).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Rollback {
                earlier: 10,
                current: 8
            }
        ),
        "{err}"
    );

    // Grown past the saved size again: not an extension of it.
    for i in 101..106 {
        f.log.append(&record(i)).await.unwrap();
    }
    let longer = f.log.checkpoint().await.unwrap();
    assert_eq!(longer.size(), 13);
    let leaves = all_leaves(&f.log).await;
    verify::log(&leaves, &f.vkey, longer.text(), None).unwrap();
    let err = verify::log(&leaves, &f.vkey, longer.text(), Some(saved.text())).unwrap_err();
    assert!(
        matches!(err, VerifyError::Inconsistent { old: 10, new: 13 }),
        "{err}"
    );
    // The log's own consistency proof cannot bridge the cut either.
    let proof = f.log.consistency_proof(10, 13).await.unwrap();
    let err = verify::consistency(&proof, &saved, &longer).unwrap_err();
    assert!(matches!(err, VerifyError::Inconsistent { .. }), "{err}");
}

#[tokio::test]
async fn a_forged_checkpoint_signature_is_refused() {
    let f = fixture().await;
    append_n(&f.log, 0..5).await;
    let real = f.log.checkpoint().await.unwrap();
    let text = real.text();

    // A larger size under the real signature.
    let bigger = text.replacen("\n5\n", "\n6\n", 1);
    assert_ne!(bigger, text);
    // Another root under the real signature.
    let root = real.root().to_string();
    let other_root = text.replacen(&root, &tlog_tiles::EMPTY_HASH.to_string(), 1);
    // The signature itself altered (keeping the key id bytes).
    let (body, sig_line) = text.rsplit_once("— ").unwrap();
    let (name, sig) = sig_line.trim_end().split_once(' ').unwrap();
    let mut raw = base64_decode(sig);
    raw[10] ^= 1;
    let bad_sig = format!("{body}— {name} {}\n", base64_encode(&raw));

    for forged in [bigger, other_root, bad_sig] {
        let err = verify::checkpoint(&forged, &f.vkey).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature), "{err}");
        let err = verify::log(&all_leaves(&f.log).await, &f.vkey, &forged, None).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature), "{err}");
    }
    // An unsigned checkpoint is not a checkpoint.
    let unsigned = text.split("\n\n").next().unwrap().to_owned() + "\n";
    assert!(matches!(
        verify::checkpoint(&unsigned, &f.vkey),
        Err(VerifyError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_checkpoint_from_another_key_is_refused() {
    let f = fixture().await;
    append_n(&f.log, 0..5).await;

    // The same log (same store, same origin) signed with another key.
    let impostor = AuditLog::open(&f.url, AuditKey::generate(), ORIGIN)
        .await
        .unwrap();
    let cp = impostor.checkpoint().await.unwrap();
    assert_eq!(cp.root(), f.log.checkpoint().await.unwrap().root());
    let err = verify::checkpoint(cp.text(), &f.vkey).unwrap_err();
    assert!(matches!(err, VerifyError::NotSignedByKey), "{err}");
    let err = verify::log(&all_leaves(&f.log).await, &f.vkey, cp.text(), None).unwrap_err();
    assert!(matches!(err, VerifyError::NotSignedByKey), "{err}");

    // The right key under another log's name is another key.
    let real = f.log.checkpoint().await.unwrap();
    let other_name = AuditKey::generate().verifier_key("other.example");
    assert!(matches!(
        verify::checkpoint(real.text(), &other_name),
        Err(VerifyError::NotSignedByKey)
    ));
    assert!(matches!(
        verify::checkpoint(real.text(), "not a key"),
        Err(VerifyError::BadVerifierKey)
    ));
}

#[tokio::test]
async fn tail_tells_one_session_in_time_order() {
    let f = fixture().await;
    let times = [50, 10, 40, 10, 30];
    for (i, t) in times.iter().enumerate() {
        let mut r = record(i as u64);
        r.time_ms = *t;
        r.session_id = if i == 2 { "other".into() } else { "s".into() };
        r.kind = RecordKind::Approval;
        f.log.append(&r).await.unwrap();
    }
    let tail = f.log.tail("s").await.unwrap();
    let got: Vec<(u64, i64)> = tail.iter().map(|e| (e.index, e.record.time_ms)).collect();
    assert_eq!(got, [(1, 10), (3, 10), (4, 30), (0, 50)]);
    assert_eq!(tail[0].record.kind, RecordKind::Approval);
    assert!(f.log.tail("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_requests_are_refused_and_write_nothing() {
    let f = fixture().await;
    append_n(&f.log, 0..3).await;

    for origin in ["", "has space", "a+b", "two\nlines"] {
        let err = AuditLog::open(&f.url, AuditKey::generate(), origin)
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::BadOrigin(_)), "{err}");
    }
    let mut huge = record(9);
    huge.resource = "r".repeat(MAX_LEAF_BYTES);
    assert!(matches!(
        f.log.append(&huge).await,
        Err(AuditError::RecordTooLarge { .. })
    ));
    assert_eq!(f.log.size().await.unwrap(), 3);

    for (index, size) in [(3, 3), (0, 4), (5, 2)] {
        assert!(matches!(
            f.log.inclusion_proof(index, size).await,
            Err(AuditError::OutOfRange { .. })
        ));
    }
    for (old, new) in [(2, 1), (1, 4)] {
        assert!(matches!(
            f.log.consistency_proof(old, new).await,
            Err(AuditError::OutOfRange { .. })
        ));
    }
}

#[tokio::test]
async fn two_pools_on_one_file_append_in_one_order() {
    let f = fixture().await;
    let second = AuditLog::open(&f.url, AuditKey::generate(), ORIGIN)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40_u64 {
        let log = if i % 2 == 0 {
            f.log.clone()
        } else {
            second.clone()
        };
        tasks.spawn(async move { log.append(&record(i)).await.unwrap() });
    }
    let mut indexes = tasks.join_all().await;
    indexes.sort_unstable();
    assert_eq!(indexes, (0..40).collect::<Vec<_>>());
    let cp = f.log.checkpoint().await.unwrap();
    verify::log(&all_leaves(&f.log).await, &f.vkey, cp.text(), None).unwrap();
}

#[test]
fn the_log_can_be_shared_across_tasks() {
    fn send<T: Send>(_: &T) {}
    fn shared<T: Send + Sync + Clone>() {}
    shared::<AuditLog>();
    let _ = |log: AuditLog, r: AuditRecord| async move {
        let append = log.append(&r);
        send(&append);
        let cp = log.checkpoint();
        send(&cp);
        let proof = log.inclusion_proof(0, 1);
        send(&proof);
    };
}

#[tokio::test]
async fn a_batch_is_the_same_tree_as_single_appends() {
    let single = fixture().await;
    append_n(&single.log, 0..11).await;
    let batched = fixture().await;
    assert_eq!(batched.log.append(&record(0)).await.unwrap(), 0);
    let records: Vec<AuditRecord> = (1..11).map(record).collect();
    assert_eq!(batched.log.append_all(&records).await.unwrap(), 1..11);
    assert!(matches!(
        batched.log.append_all(&[]).await,
        Err(AuditError::InvalidRecord(_))
    ));
    let a = single.log.checkpoint().await.unwrap();
    let b = batched.log.checkpoint().await.unwrap();
    assert_eq!((a.size(), a.root()), (b.size(), b.root()));
    verify::log(
        &all_leaves(&batched.log).await,
        &batched.vkey,
        b.text(),
        None,
    )
    .unwrap();
    for i in 0..11 {
        let proof = batched.log.inclusion_proof(i, 11).await.unwrap();
        let leaf = &all_leaves(&batched.log).await[i as usize];
        verify::inclusion(&proof, &leaf.data, &b).unwrap();
    }

    // A batch larger than one multi-row insert.
    let many: Vec<AuditRecord> = (11..311).map(record).collect();
    assert_eq!(batched.log.append_all(&many).await.unwrap(), 11..311);
    let big = batched.log.checkpoint().await.unwrap();
    let leaves = all_leaves(&batched.log).await;
    verify::log(&leaves, &batched.vkey, big.text(), Some(b.text())).unwrap();
    let proof = batched.log.inclusion_proof(200, 311).await.unwrap();
    verify::inclusion(&proof, &leaves[200].data, &big).unwrap();

    // A batch with one bad record writes nothing.
    let mut bad = record(311);
    bad.risk = Some(f64::INFINITY);
    assert!(batched.log.append_all(&[record(311), bad]).await.is_err());
    assert_eq!(batched.log.size().await.unwrap(), 311);

    // Deferred to disk: the same tree, in the same order.
    let later: Vec<AuditRecord> = (311..320).map(record).collect();
    assert_eq!(
        batched
            .log
            .append_all_with(&later, Flush::Deferred)
            .await
            .unwrap(),
        311..320
    );
    batched.log.append(&record(320)).await.unwrap();
    let now = batched.log.checkpoint().await.unwrap();
    verify::log(
        &all_leaves(&batched.log).await,
        &batched.vkey,
        now.text(),
        Some(big.text()),
    )
    .unwrap();
}

#[tokio::test]
async fn the_published_checkpoint_only_moves_forward() {
    let f = fixture().await;
    let reader = AuditReader::open(&f.url).await.unwrap();
    assert_eq!(reader.published_checkpoint().await.unwrap(), None);
    append_n(&f.log, 0..3).await;
    let first = f.log.publish_checkpoint().await.unwrap();
    assert_eq!(
        reader.published_checkpoint().await.unwrap().as_deref(),
        Some(first.text())
    );
    append_n(&f.log, 3..5).await;
    let second = f.log.publish_checkpoint().await.unwrap();
    assert_eq!(second.size(), 5);
    let stored = reader.published_checkpoint().await.unwrap().unwrap();
    assert_eq!(verify::checkpoint(&stored, &f.vkey).unwrap(), second);

    // A writer that has fallen behind (here: a stale size written back)
    // does not replace a larger published tree.
    exec(&f.log, "UPDATE audit_head SET size = 3 WHERE id = 0").await;
    f.log.publish_checkpoint().await.unwrap();
    let stored = reader.published_checkpoint().await.unwrap().unwrap();
    assert_eq!(verify::checkpoint(&stored, &f.vkey).unwrap().size(), 5);
}

#[tokio::test]
async fn records_are_found_by_request_id_through_a_reader() {
    let f = fixture().await;
    let mut records: Vec<AuditRecord> = (0..4).map(record).collect();
    records[1].request_id = "dec_a".into();
    records[2].request_id = "dec_a".into();
    records[3].request_id = "rcpt_b".into();
    f.log.append_all(&records).await.unwrap();
    let reader = AuditReader::open(&f.url).await.unwrap();
    assert_eq!(reader.size().await.unwrap(), 4);
    let found: Vec<u64> = reader
        .request("dec_a")
        .await
        .unwrap()
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(found, [1, 2]);
    assert_eq!(
        reader.request("rcpt_b").await.unwrap()[0].record,
        records[3]
    );
    assert!(reader.request("").await.unwrap().len() == 1);
    assert!(reader.request("dec_none").await.unwrap().is_empty());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn parameters_are_numbered_for_postgresql_and_in_order_for_sqlite() {
    assert_eq!(
        placeholders(2, 3, Params::Numbered),
        "($1, $2, $3), ($4, $5, $6)"
    );
    assert_eq!(placeholders(2, 2, Params::Positional), "(?, ?), (?, ?)");
    assert_eq!(Params::Numbered.list(3), "$1, $2, $3");
    assert_eq!(Params::Positional.list(1), "?");
}
