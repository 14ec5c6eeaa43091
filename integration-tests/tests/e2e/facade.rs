//! The agent facade end to end: the whole stack on loopback with its real
//! dependencies (test IdP with CIBA, identity exchange, PDP, OpenBao and
//! PostgreSQL behind the credential issuer, approval orchestrator), driven
//! as an agent drives it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use serde_json::json;
use sqlx::Connection as _;
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, bearer, offboard_request, read_request, uid};
use tether_proto::facade::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

/// Asserts `status` is `code` with the contract's ErrorInfo `reason`
/// (domain `tether`); returns the ErrorInfo metadata.
fn refused(
    status: &tonic::Status,
    code: Code,
    reason: &str,
) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
    assert_eq!(info.domain, "tether", "{status:?}");
    assert_eq!(info.reason, reason, "{status:?}");
    info.metadata
}

/// Asserts `status` is UNAVAILABLE (DEPENDENCY_UNAVAILABLE) naming
/// `dependency`.
fn unavailable(status: &tonic::Status, dependency: &str) {
    let metadata = refused(status, Code::Unavailable, "DEPENDENCY_UNAVAILABLE");
    assert_eq!(
        metadata.get("dependency").map(String::as_str),
        Some(dependency),
        "{status:?}"
    );
}

fn authorize_request(action: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        action: uid("Action", action),
        resource: uid("Employee", "1042"),
        context_json: String::new(),
    }
}

/// The issued credential and its lease (never printed: it is a secret).
fn issued(response: pb::AcquireCredentialResponse) -> (pb::DatabaseCredential, pb::Lease) {
    assert_eq!(response.decision(), pb::Decision::Allow);
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = response.outcome else {
        panic!("no credential issued");
    };
    let Some(pb::credential::Kind::Database(db)) = issued.credential.and_then(|c| c.kind) else {
        panic!("not a database credential");
    };
    (db, issued.lease.expect("a lease"))
}

/// The pending ticket of an APPROVAL_REQUIRED answer.
fn ticket(response: &pb::AcquireCredentialResponse) -> pb::ApprovalTicket {
    assert_eq!(
        response.decision(),
        pb::Decision::ApprovalRequired,
        "{:?}",
        response.policy_ids
    );
    let Some(pb::acquire_credential_response::Outcome::ApprovalRequired(required)) =
        &response.outcome
    else {
        panic!("no ticket: {:?}", response.policy_ids);
    };
    assert!(required.retry_after.is_some_and(|d| d.seconds > 0));
    let ticket = required.ticket.clone().expect("a ticket");
    assert_eq!(ticket.state(), pb::ApprovalState::Pending, "{ticket:?}");
    ticket
}

/// Plays the user's device: answers the one pending request with
/// `action` (`approve` or `deny`).
async fn answer_on_device(stack: &FacadeStack, action: &str) {
    let pending = stack
        .authority
        .idp()
        .ciba_requests(&[("status", "pending")])
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    stack
        .authority
        .idp()
        .ciba_device(
            pending[0]["auth_req_id"].as_str().unwrap(),
            action,
            json!({}),
        )
        .await
        .unwrap();
}

/// Whether `user`/`password` can still open a PostgreSQL connection.
async fn logs_in(stack: &FacadeStack, db: &pb::DatabaseCredential) -> bool {
    sqlx::PgConnection::connect_with(&stack.deps.pg.options(&db.username, &db.password))
        .await
        .is_ok()
}

fn secs(ts: Option<prost_types::Timestamp>) -> i64 {
    ts.expect("a timestamp").seconds
}

#[tokio::test]
async fn read_with_a_just_in_time_credential_then_offboard_after_approval_then_end() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    assert_eq!(session.user_subject, "alice");
    assert_eq!(session.agent_id, "hr-assistant");
    let token = session.delegated_token.clone();
    let session_end = secs(session.session_expires_at);

    // Read: allowed, a PostgreSQL login that really connects and can only
    // read.
    let read = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.policy_ids, ["hr-read-business-hours"]);
    let (db, lease) = issued(read);
    let mut conn = sqlx::PgConnection::connect_with(
        &stack
            .deps
            .pg
            .options(&db.username, &db.password)
            .database("postgres"),
    )
    .await
    .unwrap();
    let (name,): (String,) = sqlx::query_as("SELECT name FROM hr.employees WHERE id = 1042")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!name.is_empty());
    let update = sqlx::query("UPDATE hr.employees SET name = 'x' WHERE id = 1042")
        .execute(&mut conn)
        .await;
    assert!(update.is_err(), "a read-only credential updated a row");
    drop(conn);

    // The TTL: unset is the profile's maximum (600 s); a smaller wish is
    // honoured; a larger one is capped, never refused; never past the
    // session.
    let ttl = |lease: &pb::Lease| lease.granted_ttl.expect("a granted TTL").seconds;
    assert!((590..=600).contains(&ttl(&lease)), "{lease:?}");
    let with_ttl = |seconds: i64| {
        bearer(
            pb::AcquireCredentialRequest {
                requested_ttl: Some(prost_types::Duration { seconds, nanos: 0 }),
                ..read_request()
            },
            &token,
        )
    };
    let (_, short) = issued(
        stack
            .client()
            .acquire_credential(with_ttl(120))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!((110..=120).contains(&ttl(&short)), "{short:?}");
    let (_, capped) = issued(
        stack
            .client()
            .acquire_credential(with_ttl(86_400))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!((590..=600).contains(&ttl(&capped)), "{capped:?}");
    for lease in [&lease, &short, &capped] {
        assert!(secs(lease.expires_at) <= session_end, "{lease:?}");
        assert_eq!(lease.status(), pb::LeaseStatus::Active);
        assert_eq!(lease.profile, "hr-read");
    }

    // GetSession lists the three leases, never their credentials.
    let described = stack
        .client()
        .get_session(bearer(pb::GetSessionRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(described.session_id, session.session_id);
    assert_eq!(described.state(), pb::SessionState::Active);
    assert_eq!(described.user_subject, "alice");
    assert_eq!(described.actor_chain, ["hr-assistant"]);
    let mut listed: Vec<&str> = described
        .leases
        .iter()
        .map(|l| l.lease_id.as_str())
        .collect();
    listed.sort_unstable();
    let mut ours = vec![
        lease.lease_id.as_str(),
        short.lease_id.as_str(),
        capped.lease_id.as_str(),
    ];
    ours.sort_unstable();
    assert_eq!(listed, ours);
    assert!(
        described
            .leases
            .iter()
            .all(|l| l.status() == pb::LeaseStatus::Active)
    );
    let text = format!("{described:?}");
    assert!(
        !text.contains(&db.password) && !text.contains(&db.username),
        "GetSession carries the credential"
    );

    // Offboard: the user is asked first.
    let offboard = || bearer(authorize_request("offboard"), &token);
    let asked = stack
        .client()
        .authorize(offboard())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        asked.decision(),
        pb::Decision::ApprovalRequired,
        "{asked:?}"
    );
    assert_eq!(asked.policy_ids, ["offboard-needs-approval"]);
    let ticket = asked.approval_required.unwrap().ticket.unwrap();
    assert!(
        ticket
            .binding_message
            .starts_with("Offboard employee 1042?"),
        "{ticket:?}"
    );
    answer_on_device(&stack, "approve").await;
    let last = stack.watch_to_end(&token, &ticket.ticket_id).await.unwrap();
    assert_eq!(last.state(), pb::ApprovalState::Approved);
    let allowed = stack
        .client()
        .authorize(offboard())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision(), pb::Decision::Allow, "{allowed:?}");
    assert_eq!(allowed.approval_grant.unwrap().ticket_id, ticket.ticket_id);

    // End: the receipt lists the leases; the token no longer works.
    let receipt = stack
        .client()
        .end_session(bearer(pb::EndSessionRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(
        receipt.revoked_leases.len() + receipt.pending_leases.len(),
        3,
        "{receipt:?}"
    );
    let after = stack.client().authorize(offboard()).await.unwrap_err();
    refused(&after, Code::Unauthenticated, "SESSION_ENDED");
}

#[tokio::test]
async fn a_denial_names_its_policies_and_issues_nothing() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let before = stack.footprint().await.unwrap();

    let salary = || {
        bearer(
            pb::AcquireCredentialRequest {
                action: uid("Action", "update_salary"),
                resource: uid("Employee", "1042"),
                profile: "hr-write".into(),
                ..Default::default()
            },
            &token,
        )
    };
    let denied = stack
        .client()
        .acquire_credential(salary())
        .await
        .unwrap_err();
    let metadata = refused(&denied, Code::PermissionDenied, "POLICY_DENIED");
    let policy_ids: Vec<String> = serde_json::from_str(&metadata["policy_ids"]).unwrap();
    assert_eq!(policy_ids, ["no-agent-salary-changes"], "{denied:?}");
    let version = &metadata["policy_version"];
    assert!(version.starts_with("sha256:"), "{denied:?}");
    assert!(!metadata["decision_id"].is_empty(), "{denied:?}");
    // The same request again is the same answer, a new decision.
    let again = stack
        .client()
        .acquire_credential(salary())
        .await
        .unwrap_err();
    let again = refused(&again, Code::PermissionDenied, "POLICY_DENIED");
    assert_eq!(again["policy_ids"], metadata["policy_ids"]);
    assert_ne!(again["decision_id"], metadata["decision_id"]);

    // Authorize: DENY is a normal answer, with the same policy.
    let answer = stack
        .client()
        .authorize(bearer(authorize_request("update_salary"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.decision(), pb::Decision::Deny, "{answer:?}");
    assert_eq!(answer.policy_ids, ["no-agent-salary-changes"]);
    assert_eq!(&answer.policy_version, version);
    assert!(!answer.decision_id.is_empty());
    assert!(answer.approval_required.is_none() && answer.approval_grant.is_none());

    // Nothing issued: no lease in the registry or at Vault, no role, nobody
    // asked.
    assert_eq!(stack.footprint().await.unwrap(), before);
    assert_eq!(before.leases, 0);
    assert!(before.roles.is_empty());
}

#[tokio::test]
async fn a_step_up_the_user_denies_cools_down_and_issues_nothing() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;

    let asked = stack
        .client()
        .acquire_credential(bearer(offboard_request(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked.policy_ids, ["offboard-needs-approval"]);
    let ticket = ticket(&asked);
    answer_on_device(&stack, "deny").await;
    let last = stack.watch_to_end(&token, &ticket.ticket_id).await.unwrap();
    assert_eq!(last.state(), pb::ApprovalState::Denied, "{last:?}");
    assert!(last.decided_at.is_some());
    let before = stack.footprint().await.unwrap();

    // Asking again during the cool-down: refused without reaching the
    // phone, with when to retry.
    let again = stack
        .client()
        .acquire_credential(bearer(offboard_request(), &token))
        .await
        .unwrap_err();
    refused(&again, Code::ResourceExhausted, "APPROVAL_COOL_DOWN");
    let retry = again
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(300),
        "{retry:?}"
    );
    // Authorize says the same.
    let authorize = stack
        .client()
        .authorize(bearer(authorize_request("offboard"), &token))
        .await
        .unwrap_err();
    refused(&authorize, Code::ResourceExhausted, "APPROVAL_COOL_DOWN");

    let after = stack.footprint().await.unwrap();
    assert_eq!(after, before);
    assert_eq!(
        after.prompts,
        Some(1),
        "the device saw more than one request"
    );
    assert_eq!((after.leases, after.grants), (0, 0));
    assert!(after.roles.is_empty());
}

#[tokio::test]
async fn an_approved_step_up_issues_and_its_grant_is_reused_without_a_second_prompt() {
    // Two uses per approval: the two requests after the approval use it,
    // the third asks the user again.
    let stack = FacadeStack::builder()
        .approvals(|b| b.grants(300, 2))
        .start()
        .await
        .unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let acquire = || async {
        stack
            .client()
            .acquire_credential(bearer(offboard_request(), &token))
            .await
            .unwrap()
            .into_inner()
    };

    let first = ticket(&acquire().await);
    // Asking again while pending returns the same ticket; the phone is
    // not asked twice.
    assert_eq!(ticket(&acquire().await).ticket_id, first.ticket_id);
    assert_eq!(stack.footprint().await.unwrap().leases, 0);
    answer_on_device(&stack, "approve").await;
    assert_eq!(
        stack
            .watch_to_end(&token, &first.ticket_id)
            .await
            .unwrap()
            .state(),
        pb::ApprovalState::Approved
    );

    let mut remaining = Vec::new();
    let mut credentials = Vec::new();
    for _ in 0..2 {
        let response = acquire().await;
        assert_eq!(
            response.policy_ids,
            ["hr-offboard"],
            "{:?}",
            response.reasons
        );
        let grant = response.approval_grant.clone().expect("the grant used");
        assert_eq!(grant.ticket_id, first.ticket_id);
        remaining.push(grant.remaining_uses);
        let (db, lease) = issued(response);
        assert_eq!(lease.profile, "hr-write");
        credentials.push(db);
    }
    assert_eq!(remaining, [1, 0]);
    let footprint = stack.footprint().await.unwrap();
    assert_eq!(footprint.prompts, Some(1), "the grant was not reused");
    assert_eq!(footprint.leases, 2);
    assert_eq!(footprint.roles.len(), 2);
    // The writer's credential really writes.
    let mut conn = sqlx::PgConnection::connect_with(
        &stack
            .deps
            .pg
            .options(&credentials[0].username, &credentials[0].password),
    )
    .await
    .unwrap();
    let updated = sqlx::query("UPDATE hr.employees SET name = name WHERE id = 1042")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    drop(conn);

    // The uses are spent: the next identical request asks the user again.
    let second = ticket(&acquire().await);
    assert_ne!(second.ticket_id, first.ticket_id);
    let footprint = stack.footprint().await.unwrap();
    assert_eq!(footprint.prompts, Some(2));
    assert_eq!(footprint.leases, 2);
}

#[tokio::test]
async fn ending_a_session_revokes_everything_and_the_receipt_lists_it() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    let token = session.delegated_token.clone();
    let (db, lease) = issued(
        stack
            .client()
            .acquire_credential(bearer(read_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(logs_in(&stack, &db).await);
    assert_eq!(stack.deps.pg.roles_like("v-").await.unwrap().len(), 1);
    let pending = ticket(
        &stack
            .client()
            .acquire_credential(bearer(offboard_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );

    let receipt = stack
        .client()
        .end_session(bearer(
            pb::EndSessionRequest {
                reason: "task complete".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(receipt.session_id, session.session_id);
    assert!(!receipt.already_ended);
    assert!(receipt.session_revoked_at.is_some() && receipt.ended_at.is_some());
    assert!(!receipt.receipt_id.is_empty());
    assert_eq!(receipt.cancelled_ticket_ids, [pending.ticket_id.as_str()]);
    let listed: Vec<&str> = receipt
        .revoked_leases
        .iter()
        .chain(&receipt.pending_leases)
        .map(|l| l.lease_id.as_str())
        .collect();
    assert_eq!(listed, [lease.lease_id.as_str()], "{receipt:?}");
    // At once, not after the next revocation-list sync: the token is
    // refused, even for a decision that needs no other service.
    let at_once = stack
        .client()
        .authorize(bearer(authorize_request("read"), &token))
        .await
        .unwrap_err();
    refused(&at_once, Code::Unauthenticated, "SESSION_ENDED");

    // The credential no longer logs in; its role is gone; Vault holds no
    // lease.
    eventually(Duration::from_secs(20), || async {
        let roles = stack.deps.pg.roles_like("v-").await.unwrap();
        if roles.is_empty() && !logs_in(&stack, &db).await {
            Ok(())
        } else {
            Err(format!("still there: {roles:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        stack.footprint().await.unwrap().vault_leases,
        Some(Vec::new())
    );

    // The token is refused; the ticket is CANCELLED.
    let refused_call = stack
        .client()
        .authorize(bearer(authorize_request("read"), &token))
        .await
        .unwrap_err();
    refused(&refused_call, Code::Unauthenticated, "SESSION_ENDED");
    let acquire = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    refused(&acquire, Code::Unauthenticated, "SESSION_ENDED");
    let watch = stack
        .client()
        .watch_approval(bearer(
            pb::WatchApprovalRequest {
                ticket_id: pending.ticket_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    refused(&watch, Code::Unauthenticated, "SESSION_ENDED");
    let cancelled = stack
        .approvals
        .store()
        .ticket(&pending.ticket_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.state.as_str(), "CANCELLED");

    // EndSession again: OK, already ended, the first revocation's time.
    let again = stack
        .client()
        .end_session(bearer(pb::EndSessionRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert!(again.already_ended);
    assert_eq!(again.session_revoked_at, receipt.session_revoked_at);
    assert!(again.cancelled_ticket_ids.is_empty());
    assert_eq!(
        again.revoked_leases.len() + again.pending_leases.len(),
        1,
        "{again:?}"
    );

    // GetSession still describes it: ENDED, its lease revoked.
    let described = stack
        .client()
        .get_session(bearer(pb::GetSessionRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(described.state(), pb::SessionState::Ended);
    let ended_at = described.ended_at.expect("an ENDED session says when");
    assert!(
        (ended_at.seconds - again.session_revoked_at.unwrap().seconds).abs() <= 1,
        "{described:?}"
    );
    assert_eq!(described.leases.len(), 1);
    assert_eq!(described.leases[0].lease_id, lease.lease_id);
    assert_eq!(described.leases[0].status(), pb::LeaseStatus::Revoked);
    assert!(described.leases[0].revoked_at.is_some());
}

// Each dependency down in turn: a deny with UNAVAILABLE naming it, and
// nothing issued.

#[tokio::test]
async fn the_policy_decision_point_down_is_a_deny() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    stack.pdp.stop().await.unwrap();
    let before = stack.footprint().await.unwrap();

    let authorize = stack
        .client()
        .authorize(bearer(authorize_request("read"), &token))
        .await
        .unwrap_err();
    unavailable(&authorize, "policy");
    let acquire = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    unavailable(&acquire, "policy");
    assert_eq!(stack.footprint().await.unwrap(), before);
    assert_eq!(before.leases, 0);
}

#[tokio::test]
async fn the_credential_issuer_down_is_a_deny() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let pending = ticket(
        &stack
            .client()
            .acquire_credential(bearer(offboard_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    stack.issuer.stop_serving().await.unwrap();
    let before = stack.footprint().await.unwrap();

    let acquire = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    unavailable(&acquire, "credentials");
    // GetSession cannot list the leases either.
    let get = stack
        .client()
        .get_session(bearer(pb::GetSessionRequest::default(), &token))
        .await
        .unwrap_err();
    unavailable(&get, "credentials");
    // A decision without a credential does not need the issuer.
    let authorize = stack
        .client()
        .authorize(bearer(authorize_request("read"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authorize.decision(), pb::Decision::Allow);
    assert_eq!(stack.footprint().await.unwrap(), before);
    assert!(before.roles.is_empty() && before.leases == 0);

    // EndSession cannot reach the issuer, and says so; the session is
    // revoked and its ticket cancelled all the same.
    let end = stack
        .client()
        .end_session(bearer(pb::EndSessionRequest::default(), &token))
        .await
        .unwrap_err();
    unavailable(&end, "credentials");
    let cancelled = stack
        .approvals
        .store()
        .ticket(&pending.ticket_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.state.as_str(), "CANCELLED");
    let after = stack
        .client()
        .authorize(bearer(authorize_request("read"), &token))
        .await
        .unwrap_err();
    refused(&after, Code::Unauthenticated, "SESSION_ENDED");
}

#[tokio::test]
async fn openbao_down_is_a_deny() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    stack.deps.bao.stop().unwrap();

    let acquire = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    unavailable(&acquire, "vault");
    let after = stack.footprint().await.unwrap();
    assert_eq!(after.vault_leases, None, "OpenBao still answers");
    assert_eq!(after.leases, 0, "a lease was recorded");
    assert!(after.roles.is_empty(), "{:?}", after.roles);
}

#[tokio::test]
async fn the_approval_service_down_is_a_deny() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let (db, _) = issued(
        stack
            .client()
            .acquire_credential(bearer(read_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    stack.approvals.stop().await.unwrap();
    let before = stack.footprint().await.unwrap();

    let authorize = stack
        .client()
        .authorize(bearer(authorize_request("offboard"), &token))
        .await
        .unwrap_err();
    unavailable(&authorize, "approval");
    let acquire = stack
        .client()
        .acquire_credential(bearer(offboard_request(), &token))
        .await
        .unwrap_err();
    unavailable(&acquire, "approval");
    assert_eq!(stack.footprint().await.unwrap(), before);
    assert_eq!(before.prompts, Some(0));

    // EndSession cannot cancel the approvals, and says so; the session is
    // revoked and its credential gone all the same.
    let end = stack
        .client()
        .end_session(bearer(pb::EndSessionRequest::default(), &token))
        .await
        .unwrap_err();
    unavailable(&end, "approval");
    assert!(!logs_in(&stack, &db).await, "the credential still logs in");
    assert!(stack.deps.pg.roles_like("v-").await.unwrap().is_empty());
    let after = stack
        .client()
        .authorize(bearer(authorize_request("read"), &token))
        .await
        .unwrap_err();
    refused(&after, Code::Unauthenticated, "SESSION_ENDED");
}

#[tokio::test]
async fn the_idp_down_is_a_deny_for_an_approval() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    stack.authority.idp_mut().stop().await.unwrap();

    let authorize = stack
        .client()
        .authorize(bearer(authorize_request("offboard"), &token))
        .await
        .unwrap_err();
    unavailable(&authorize, "idp");
    let acquire = stack
        .client()
        .acquire_credential(bearer(offboard_request(), &token))
        .await
        .unwrap_err();
    unavailable(&acquire, "idp");
    let after = stack.footprint().await.unwrap();
    assert_eq!((after.leases, after.grants), (0, 0));
    assert!(after.roles.is_empty());
    // No ticket is left PENDING (a FAILED one may be kept for audit).
    let (pending,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM approval_tickets WHERE state = 'PENDING'")
            .fetch_one(stack.approvals.pool())
            .await
            .unwrap();
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn the_identity_exchange_down_is_a_deny() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let (db, _) = issued(
        stack
            .client()
            .acquire_credential(bearer(read_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    let pending = ticket(
        &stack
            .client()
            .acquire_credential(bearer(offboard_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    // A second session, which an operator will end.
    let other = stack.session().await.unwrap();
    let (other_db, _) = issued(
        stack
            .client()
            .acquire_credential(bearer(read_request(), &other.delegated_token))
            .await
            .unwrap()
            .into_inner(),
    );
    stack.authority.identity_mut().stop().await.unwrap();
    let before = stack.footprint().await.unwrap();

    // No new session.
    let start = stack
        .client()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap_err();
    unavailable(&start, "identity");
    // Tokens already handed out stop working once the facade's copy of the
    // session revocation list is too old to trust (fail closed).
    let status = eventually(Duration::from_secs(20), || async {
        match stack
            .client()
            .authorize(bearer(authorize_request("read"), &token))
            .await
        {
            Err(status) if status.code() == Code::Unavailable => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    unavailable(&status, "identity");
    assert_eq!(stack.footprint().await.unwrap(), before);

    // EndSession cannot revoke the session, and says so; its ticket is
    // cancelled and its credential gone all the same.
    let end = stack
        .client()
        .end_session(bearer(pb::EndSessionRequest::default(), &token))
        .await
        .unwrap_err();
    unavailable(&end, "identity");
    assert!(!logs_in(&stack, &db).await, "the credential still logs in");
    assert_eq!(
        stack.deps.pg.roles_like("v-").await.unwrap(),
        std::slice::from_ref(&other_db.username),
        "only the other session's role is left"
    );
    let cancelled = stack
        .approvals
        .store()
        .ticket(&pending.ticket_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.state.as_str(), "CANCELLED");

    // An operator can still cut a session off in an incident: its owner
    // cannot be looked up and its token not revoked (said), but its
    // credential dies all the same.
    let admin = tether_proto::facade::v1::session_admin_client::SessionAdminClient::new(
        stack
            .pki()
            .channel("admin", stack.addr(), "agent-facade")
            .unwrap(),
    );
    let end = admin
        .clone()
        .end_session(pb::AdminEndSessionRequest {
            session_id: other.session_id.clone(),
            reason: "incident".into(),
        })
        .await
        .unwrap_err();
    unavailable(&end, "identity");
    assert!(
        !logs_in(&stack, &other_db).await,
        "the operator's end left the credential alive"
    );
    assert!(stack.deps.pg.roles_like("v-").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_approval_never_outlives_a_policy_that_changed_after_it() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let asked = ticket(
        &stack
            .client()
            .acquire_credential(bearer(offboard_request(), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    answer_on_device(&stack, "approve").await;
    assert_eq!(
        stack
            .watch_to_end(&token, &asked.ticket_id)
            .await
            .unwrap()
            .state(),
        pb::ApprovalState::Approved
    );

    // Meanwhile a forbid that is not a step-up arrives, one that only the
    // real approval in context can trigger (the PDP's step-up check
    // assumes `approval.granted` alone, so the request still asks for an
    // approval first): alice may no longer approve offboardings.
    let version = |stack: &FacadeStack| {
        let mut pdp = stack.pdp.client();
        async move {
            pdp.get_policy_set(tether_proto::policy::v1::GetPolicySetRequest::default())
                .await
                .unwrap()
                .into_inner()
                .version
        }
    };
    let old = version(&stack).await;
    let policies = stack.pdp.pack_dir().join("hr.cedar");
    let mut text = std::fs::read_to_string(&policies).unwrap();
    text.push_str(concat!(
        "\n@id(\"alice-may-not-approve-offboarding\")\n",
        "forbid (principal, action == Action::\"offboard\", resource)\n",
        "when { context has approval && context.approval has approver && ",
        "context.approval.approver == \"alice\" };\n",
    ));
    std::fs::write(&policies, text).unwrap();
    let new = eventually(Duration::from_secs(20), || async {
        let now = version(&stack).await;
        if now == old { Err(now) } else { Ok(now) }
    })
    .await
    .unwrap();

    // The grant is applied, the policy decided again with the approval in
    // context, and the new forbid wins: no credential.
    let denied = stack
        .client()
        .acquire_credential(bearer(offboard_request(), &token))
        .await
        .unwrap_err();
    let metadata = refused(&denied, Code::PermissionDenied, "POLICY_DENIED");
    let policy_ids: Vec<String> = serde_json::from_str(&metadata["policy_ids"]).unwrap();
    assert_eq!(
        policy_ids,
        ["alice-may-not-approve-offboarding"],
        "{denied:?}"
    );
    assert_eq!(metadata["policy_version"], new);
    let footprint = stack.footprint().await.unwrap();
    assert_eq!(footprint.leases, 0);
    assert!(footprint.roles.is_empty());
    assert_eq!(footprint.prompts, Some(1));

    // A forbid that denies outright is a deny before any approval.
    let mut text = std::fs::read_to_string(&policies).unwrap();
    text.push_str(
        "\n@id(\"offboarding-frozen\")\nforbid (principal, action == Action::\"offboard\", resource);\n",
    );
    std::fs::write(&policies, text).unwrap();
    eventually(Duration::from_secs(20), || async {
        let now = version(&stack).await;
        if now == new { Err(now) } else { Ok(now) }
    })
    .await
    .unwrap();
    let frozen = stack
        .client()
        .acquire_credential(bearer(offboard_request(), &token))
        .await
        .unwrap_err();
    let metadata = refused(&frozen, Code::PermissionDenied, "POLICY_DENIED");
    assert!(
        metadata["policy_ids"].contains("offboarding-frozen"),
        "{frozen:?}"
    );
    let footprint = stack.footprint().await.unwrap();
    assert_eq!((footprint.leases, footprint.prompts), (0, Some(1)));
}

#[tokio::test]
async fn a_session_at_its_lease_limit_gets_no_more_credentials() {
    let stack = FacadeStack::builder()
        .issuer_limits(tether_credential_issuer::Limits {
            max_leases_per_session: 2,
        })
        .start()
        .await
        .unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    for _ in 0..2 {
        issued(
            stack
                .client()
                .acquire_credential(bearer(read_request(), &token))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let before = stack.footprint().await.unwrap();
    let third = stack
        .client()
        .acquire_credential(bearer(read_request(), &token))
        .await
        .unwrap_err();
    refused(&third, Code::ResourceExhausted, "LEASE_LIMIT");
    assert_eq!(stack.footprint().await.unwrap(), before);
    assert_eq!((before.leases, before.roles.len()), (2, 2));
}
