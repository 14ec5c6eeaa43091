//! The facade's audit log end to end: a session's story (a read with a
//! credential, a denial, an offboard approved on the user's device, the
//! session's end) is in the log in order, with no secret in it, and
//! `tether audit verify` accepts the log; an audit store that cannot be
//! written is a deny, with nothing issued.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tether_audit::{AuditReader, RecordKind};
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, bearer, read_request, uid};
use tether_integration_tests::postgres::PgCluster;
use tether_proto::facade::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

fn authorize(action: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        action: uid("Action", action),
        resource: uid("Employee", "1042"),
        context_json: String::new(),
    }
}

async fn reader(stack: &FacadeStack) -> AuditReader {
    AuditReader::open(&stack.config().audit.effective_url())
        .await
        .unwrap()
}

fn vkey_file(stack: &FacadeStack) -> PathBuf {
    stack
        .config()
        .audit
        .effective_key_file()
        .with_extension("vkey")
}

#[tokio::test]
async fn a_sessions_story_is_on_record_in_order_without_secrets_and_verifies() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    let token = session.delegated_token.clone();
    let sid = session.session_id.clone();

    // A read with a just-in-time credential.
    let read = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = read.outcome.clone()
    else {
        panic!("no credential: {read:?}");
    };
    let lease_id = issued.lease.unwrap().lease_id;
    let Some(pb::credential::Kind::Database(db)) = issued.credential.unwrap().kind else {
        panic!("not a database credential");
    };

    // A denial.
    let denied = stack
        .client()
        .authorize(bearer(authorize("update_salary"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.decision(), pb::Decision::Deny);

    // An offboard the user approves on their device.
    let asked = stack
        .client()
        .authorize(bearer(authorize("offboard"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked.decision(), pb::Decision::ApprovalRequired);
    let ticket_id = asked
        .approval_required
        .clone()
        .unwrap()
        .ticket
        .unwrap()
        .ticket_id;
    let device = stack
        .authority
        .idp()
        .ciba_requests(&[("status", "pending")])
        .await
        .unwrap();
    stack
        .authority
        .idp()
        .ciba_device(
            device[0]["auth_req_id"].as_str().unwrap(),
            "approve",
            json!({}),
        )
        .await
        .unwrap();
    let mut watch = stack
        .client()
        .watch_approval(bearer(
            pb::WatchApprovalRequest {
                ticket_id: ticket_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    while watch.message().await.unwrap().is_some() {}
    let allowed = stack
        .client()
        .authorize(bearer(authorize("offboard"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision(), pb::Decision::Allow, "{allowed:?}");

    // The end.
    let receipt = stack
        .client()
        .end_session(bearer(pb::EndSessionRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();

    // The session's story, in order. Decisions that neither issue nor
    // involve an approval are written behind the answer: wait for them.
    let log = reader(&stack).await;
    let story = eventually(Duration::from_secs(10), || async {
        let story = log.tail(&sid).await.unwrap();
        if story
            .iter()
            .any(|e| e.record.request_id == denied.decision_id)
        {
            Ok(story)
        } else {
            Err(story)
        }
    })
    .await
    .unwrap();
    let shape: Vec<(RecordKind, &str, &str)> = story
        .iter()
        .filter(|e| e.record.kind != RecordKind::Revocation)
        .map(|e| {
            (
                e.record.kind,
                e.record.decision.as_str(),
                e.record.request_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (RecordKind::Decision, "allow", read.decision_id.as_str()),
            (RecordKind::Issuance, "allow", read.decision_id.as_str()),
            (RecordKind::Decision, "deny", denied.decision_id.as_str()),
            (
                RecordKind::Decision,
                "approval_required",
                asked.decision_id.as_str()
            ),
            (
                RecordKind::Approval,
                "ticket_pending",
                asked.decision_id.as_str()
            ),
            (
                RecordKind::Approval,
                "grant_used",
                allowed.decision_id.as_str()
            ),
            (RecordKind::Decision, "allow", allowed.decision_id.as_str()),
            (RecordKind::SessionEnd, "ended", receipt.receipt_id.as_str()),
        ],
        "{story:#?}"
    );
    for entry in &story {
        let r = &entry.record;
        assert_eq!(
            (r.agent.as_str(), r.user_sub.as_str(), r.session_id.as_str()),
            ("hr-assistant", "alice", sid.as_str()),
            "{r:?}"
        );
        assert!(r.user_idp.starts_with("http"), "{r:?}");
    }
    let by_id = |id: &str| story.iter().find(|e| e.record.request_id == id).unwrap();
    let issuance = story
        .iter()
        .find(|e| e.record.kind == RecordKind::Issuance)
        .unwrap();
    assert_eq!(issuance.record.lease_id, lease_id);
    assert_eq!(issuance.record.action, r#"Action::"read""#);
    assert_eq!(issuance.record.resource, r#"Employee::"1042""#);
    assert!(
        issuance.record.detail.contains("profile hr-read, ttl "),
        "{issuance:?}"
    );
    assert_eq!(
        by_id(&denied.decision_id).record.policy_ids,
        denied.policy_ids
    );
    assert_eq!(
        by_id(&denied.decision_id).record.policy_version,
        denied.policy_version
    );
    assert!(
        story
            .iter()
            .filter(|e| e.record.kind == RecordKind::Approval)
            .all(|e| e.record.ticket_id == ticket_id)
    );
    // The lease, revoked with the session, carries the receipt's id.
    assert!(story.iter().any(|e| {
        e.record.kind == RecordKind::Revocation
            && e.record.lease_id == lease_id
            && e.record.request_id == receipt.receipt_id
    }));

    // No secret anywhere in the log.
    let size = log.size().await.unwrap();
    let leaves = log.leaves(0..size).await.unwrap();
    for secret in [
        token.as_str(),
        db.password.as_str(),
        stack.authority.user_token(),
    ] {
        assert!(secret.len() >= 16);
        for leaf in &leaves {
            assert!(
                !leaf.data.contains(secret),
                "a secret in record {}",
                leaf.index
            );
        }
    }

    // An auditor's verification, once a checkpoint covers it all.
    eventually(Duration::from_secs(10), || async {
        let text = log
            .published_checkpoint()
            .await
            .unwrap()
            .unwrap_or_default();
        let covered: u64 = text
            .lines()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if covered >= size {
            Ok(())
        } else {
            Err(covered)
        }
    })
    .await
    .unwrap();
    let store = stack.config().audit.effective_url();
    let saved = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(
        tether_cli::audit::checkpoint(&store, Some(saved.path()), Some(&vkey_file(&stack)))
            .await
            .unwrap(),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tether_cli::audit::verify(&store, &vkey_file(&stack), Some(saved.path()))
            .await
            .unwrap(),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tether_cli::audit::proof(&store, &read.decision_id, Some(&vkey_file(&stack)))
            .await
            .unwrap(),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tether_cli::audit::tail(&store, &sid).await.unwrap(),
        ExitCode::SUCCESS
    );
}

#[tokio::test]
async fn an_audit_store_that_cannot_be_written_denies_and_nothing_is_issued() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("audit").await.unwrap();
    let url = pg.admin_url("audit");
    let stack = FacadeStack::builder()
        .configure(move |config| config.audit.url = Some(url))
        .start()
        .await
        .unwrap();
    let session = stack.session().await.unwrap();
    let token = session.delegated_token.clone();

    // Recorded and allowed while the store takes writes.
    let allowed = stack
        .client()
        .authorize(bearer(authorize("read"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision(), pb::Decision::Allow);
    let log = AuditReader::open(&pg.admin_url("audit")).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        match log.request(&allowed.decision_id).await.unwrap().len() {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await
    .unwrap();

    pg.stop().unwrap();
    let before = stack.footprint().await.unwrap();
    let status = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
    assert_eq!(
        info.metadata.get("dependency").map(String::as_str),
        Some("audit")
    );
    assert_eq!(stack.footprint().await.unwrap(), before, "something issued");

    // From then on every decision is refused at once, without asking.
    let status = stack
        .client()
        .authorize(bearer(authorize("read"), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = stack
        .client()
        .authorize(bearer(authorize("offboard"), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        stack.footprint().await.unwrap(),
        before,
        "someone was asked"
    );

    // Back in service once the store takes writes again.
    pg.start_again().unwrap();
    let read = eventually(Duration::from_secs(30), || async {
        stack
            .client()
            .acquire_credential(bearer(read_request(), &token))
            .await
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(read.decision(), pb::Decision::Allow);
    let log = AuditReader::open(&pg.admin_url("audit")).await.unwrap();
    let found = log.request(&read.decision_id).await.unwrap();
    let kinds: Vec<RecordKind> = found.iter().map(|e| e.record.kind).collect();
    assert_eq!(kinds, [RecordKind::Decision, RecordKind::Issuance]);
}

#[tokio::test]
async fn refusals_and_dependency_failures_are_on_record() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    let token = session.delegated_token.clone();

    // The agent tries to supply the approval itself.
    let status = stack
        .client()
        .authorize(bearer(
            pb::AuthorizeRequest {
                context_json: r#"{"approval":{"granted":true}}"#.into(),
                ..authorize("offboard")
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The issuer is down: allowed, recorded, then not issued.
    stack.issuer.stop_serving().await.unwrap();
    let status = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The policy decision point is down: nothing decided.
    stack.pdp.stop().await.unwrap();
    let status = stack
        .client()
        .authorize(bearer(authorize("read"), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let log = reader(&stack).await;
    let story = eventually(Duration::from_secs(10), || async {
        let story = log.tail(&session.session_id).await.unwrap();
        if story.len() >= 4 {
            Ok(story)
        } else {
            Err(story)
        }
    })
    .await
    .unwrap();
    let shape: Vec<(RecordKind, &str, &str)> = story
        .iter()
        .map(|e| {
            (
                e.record.kind,
                e.record.decision.as_str(),
                e.record.action.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (RecordKind::Denial, "deny", r#"Action::"offboard""#),
            (RecordKind::Decision, "allow", r#"Action::"read""#),
            (RecordKind::Failure, "deny", r#"Action::"read""#),
            (RecordKind::Failure, "deny", r#"Action::"read""#),
        ],
        "{story:#?}"
    );
    assert!(
        story[0].record.detail.starts_with("INVALID_REQUEST"),
        "{story:#?}"
    );
    assert!(
        story[2]
            .record
            .detail
            .contains("(dependency `credentials`)"),
        "{story:#?}"
    );
    assert!(
        story[3].record.detail.contains("(dependency `policy`)"),
        "{story:#?}"
    );
    assert!(story.iter().all(|e| e.record.agent == "hr-assistant"));
}
