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

use serde_json::json;
use sqlx::Connection as _;
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_proto::facade::v1 as pb;

#[tokio::test]
async fn read_with_a_just_in_time_credential_then_offboard_after_approval_then_end() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    assert_eq!(session.user_subject, "alice");
    assert_eq!(session.agent_id, "hr-assistant");
    let token = session.delegated_token.clone();

    // Read: allowed, a PostgreSQL login that really connects.
    let read = stack
        .client()
        .acquire_credential(bearer(
            pb::AcquireCredentialRequest {
                action: uid("Action", "read"),
                resource: uid("Employee", "1042"),
                profile: "hr-read".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.decision(), pb::Decision::Allow);
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = read.outcome else {
        panic!("no credential");
    };
    let Some(pb::credential::Kind::Database(db)) = issued.credential.unwrap().kind else {
        panic!("not a database credential");
    };
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
    drop(conn);

    // Offboard: the user is asked first.
    let offboard = || {
        bearer(
            pb::AuthorizeRequest {
                action: uid("Action", "offboard"),
                resource: uid("Employee", "1042"),
                context_json: String::new(),
            },
            &token,
        )
    };
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
    let ticket = asked.approval_required.unwrap().ticket.unwrap();
    assert!(
        ticket
            .binding_message
            .starts_with("Offboard employee 1042?"),
        "{ticket:?}"
    );
    let device = stack
        .authority
        .idp()
        .ciba_requests(&[("status", "pending")])
        .await
        .unwrap();
    assert_eq!(device.len(), 1);
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
                ticket_id: ticket.ticket_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = watch.message().await.unwrap() {
        last = message.ticket;
    }
    assert_eq!(last.unwrap().state(), pb::ApprovalState::Approved);
    let allowed = stack
        .client()
        .authorize(offboard())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision(), pb::Decision::Allow, "{allowed:?}");
    assert_eq!(allowed.approval_grant.unwrap().ticket_id, ticket.ticket_id);

    // End: the receipt lists the lease; the token no longer works.
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
        1,
        "{receipt:?}"
    );
    let after = stack.client().authorize(offboard()).await.unwrap_err();
    assert_eq!(after.code(), tonic::Code::Unauthenticated, "{after:?}");
}
