//! The approval orchestrator end to end: real gRPC over mTLS, the real
//! test IdP's CIBA (its test device approves and denies), a real identity
//! exchange's delegated tokens, and SQLite or PostgreSQL ticket stores.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use serde_json::json;
use tether_integration_tests::approvals::{
    ApprovalsSandbox, Delivery, EMPLOYEE, OFFBOARD, approval_request, authority,
};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::DelegatedSession;
use tether_proto::approval::v1 as pb;

/// `message` carrying `session`'s delegated token, as the facade sends it.
fn bearer<T>(session: &DelegatedSession, message: T) -> tonic::Request<T> {
    session.request(message)
}

/// Waits on WatchApproval until the ticket is terminal; returns every
/// snapshot.
async fn watch_to_end(
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    ticket_id: &str,
) -> Vec<pb::Ticket> {
    let mut stream = sandbox
        .client()
        .watch_approval(bearer(
            session,
            pb::WatchApprovalRequest {
                ticket_id: ticket_id.into(),
                session_id: session.sid().into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("a snapshot within the keepalive")
        .unwrap()
    {
        seen.push(message.ticket.unwrap());
    }
    seen
}

#[tokio::test]
async fn approve_by_poll_creates_a_grant_that_the_next_request_uses() {
    let authority = authority().await.unwrap();
    let sandbox = ApprovalsSandbox::builder(&authority)
        .unwrap()
        .delivery(Delivery::Poll)
        .start(authority.idp())
        .await
        .unwrap();
    let session = authority.session().await.unwrap();

    let created = sandbox
        .client()
        .request_approval(bearer(
            &session,
            approval_request(&session, OFFBOARD, EMPLOYEE),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.outcome(), pb::RequestOutcome::TicketCreated);
    let ticket = created.ticket.unwrap();
    assert_eq!(ticket.state(), pb::TicketState::Pending);
    assert_eq!(ticket.confirmation_code.len(), 6);
    assert!(
        ticket
            .binding_message
            .starts_with("Offboard employee 1042?")
    );
    assert!(ticket.binding_message.ends_with(&ticket.confirmation_code));

    // The device shows exactly that message, for alice.
    let device = authority
        .idp()
        .ciba_requests(&[("status", "pending")])
        .await
        .unwrap();
    assert_eq!(device.len(), 1, "{device:?}");
    assert_eq!(
        device[0]["binding_message"],
        ticket.binding_message.as_str()
    );
    let auth_req_id = device[0]["auth_req_id"].as_str().unwrap().to_owned();
    authority
        .idp()
        .ciba_device(&auth_req_id, "approve", json!({}))
        .await
        .unwrap();

    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Approved, "{last:?}");
    assert_eq!(last.approver, "alice");
    let grant = last.grant.clone().unwrap();
    assert_eq!(grant.initial_uses, 1);

    // The same step-up is covered by the grant: no second prompt.
    let again = sandbox
        .client()
        .request_approval(bearer(
            &session,
            approval_request(&session, OFFBOARD, EMPLOYEE),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome(), pb::RequestOutcome::GrantUsed);
    assert_eq!(again.grant.unwrap().remaining_uses, 0);
    let all = authority
        .idp()
        .ciba_requests(&[("all", "1")])
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "the device was asked once");
    let _ = eventually(Duration::from_secs(1), || async { Ok::<_, ()>(()) }).await;
}
