//! No secret of an approval ever reaches a log line or span: a ping-mode
//! approval runs end to end (and a denial, and refusals of every kind) with
//! TRACE logging captured, and the capture is searched for the delegated
//! tokens, the CIBA client secret, the notification tokens and anything
//! shaped like a JWT (the ID tokens the IdP returns are never seen by the
//! test, so their shape stands in for them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tether_integration_tests::approvals::{
    ApprovalsSandbox, Delivery, EMPLOYEE, OFFBOARD, PING_CLIENT, POLL_CLIENT, approval_request,
    authority,
};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::{DelegatedSession, SessionAuthority, bearer};
use tether_proto::approval::v1 as pb;

async fn wait_for_state(
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    ticket_id: &str,
    state: pb::TicketState,
) {
    eventually(Duration::from_secs(20), || async {
        let ticket = sandbox
            .client()
            .get_approval(session.request(pb::GetApprovalRequest {
                ticket_id: ticket_id.into(),
                session_id: session.sid().into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .ticket
            .unwrap();
        if ticket.state() == state {
            Ok(())
        } else {
            Err(format!("{:?}", ticket.state()))
        }
    })
    .await
    .unwrap();
}

/// Asks for `resource`; returns the ticket, its `auth_req_id` and the
/// notification token the orchestrator gave the IdP for it.
async fn ask(
    sandbox: &ApprovalsSandbox,
    authority: &SessionAuthority,
    session: &DelegatedSession,
    resource: &str,
) -> (pb::Ticket, String, String) {
    let response = sandbox
        .client()
        .request_approval(session.request(approval_request(session, OFFBOARD, resource)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outcome(), pb::RequestOutcome::TicketCreated);
    let ticket = response.ticket.unwrap();
    let device = authority
        .idp()
        .ciba_requests(&[("all", "1")])
        .await
        .unwrap();
    let id = device
        .iter()
        .find(|r| r["binding_message"] == ticket.binding_message.as_str())
        .unwrap()["auth_req_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = authority.idp().ciba_request(&id).await.unwrap()["client_notification_token"]
        .as_str()
        .unwrap()
        .to_owned();
    (ticket, id, token)
}

async fn ping(url: &str, authorization: &str, auth_req_id: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("authorization", authorization)
        .json(&json!({ "auth_req_id": auth_req_id }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every `eyJ….eyJ…` (a JWS header and payload, base64url JSON objects)
/// in `text`.
fn jwt_shapes(text: &str) -> Vec<String> {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut found = Vec::new();
    for (at, _) in text.match_indices("eyJ") {
        let rest = &text[at..];
        let header = rest.find(|c: char| !b64(c)).unwrap_or(rest.len());
        if rest[header..].starts_with(".eyJ") {
            let end = rest.len().min(header + 40);
            found.push(rest[..end].to_owned());
        }
    }
    found
}

#[tokio::test]
async fn approval_secrets_never_reach_the_logs() {
    let capture = tether_integration_tests::logs::capture_trace();

    let authority = authority().await.unwrap();
    let sandbox = ApprovalsSandbox::builder(&authority)
        .unwrap()
        .delivery(Delivery::Ping)
        .start(authority.idp())
        .await
        .unwrap();
    let url = sandbox.ping_url().unwrap();
    let session = authority.session().await.unwrap();
    let other = authority.session().await.unwrap();
    let mut secrets = vec![session.token.clone(), other.token.clone()];

    // Approved end to end: a genuine early ping (answered pending), the
    // user's approval, the IdP's ping, the ID token fetched and verified,
    // then the grant used.
    let (approved, approved_id, approved_token) =
        ask(&sandbox, &authority, &session, EMPLOYEE).await;
    secrets.push(approved_token.clone());
    let genuine = format!("Bearer {approved_token}");
    assert_eq!(ping(&url, &genuine, &approved_id).await, 204);
    authority
        .idp()
        .ciba_device(&approved_id, "approve", json!({}))
        .await
        .unwrap();
    wait_for_state(
        &sandbox,
        &session,
        &approved.ticket_id,
        pb::TicketState::Approved,
    )
    .await;
    let used = sandbox
        .client()
        .request_approval(session.request(approval_request(&session, OFFBOARD, EMPLOYEE)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used.outcome(), pb::RequestOutcome::GrantUsed);
    // Replayed after the decision.
    assert_eq!(ping(&url, &genuine, &approved_id).await, 204);

    // Denied.
    let (denied, denied_id, denied_token) =
        ask(&sandbox, &authority, &session, r#"Hr::Employee::"7""#).await;
    secrets.push(denied_token.clone());
    authority
        .idp()
        .ciba_device(&denied_id, "deny", json!({}))
        .await
        .unwrap();
    wait_for_state(
        &sandbox,
        &session,
        &denied.ticket_id,
        pb::TicketState::Denied,
    )
    .await;

    // Pings that are refused, each carrying a bearer.
    let wrong = "Bearer q9sT1vWm3xZ5bN7cR2dF4gH6jK8lP0oI1uY3tE5wA7s";
    secrets.push(wrong["Bearer ".len()..].to_owned());
    assert_eq!(ping(&url, wrong, &denied_id).await, 401);
    assert_eq!(ping(&url, &genuine, &denied_id).await, 401);
    assert_eq!(ping(&url, &genuine, "no-such-request").await, 401);

    // Calls that are refused, each carrying a token.
    let mut client = sandbox.client();
    let unknown_key = authority.forge_with_unknown_key(&session).unwrap();
    let expired = authority
        .forge(&session, |c| {
            c.iat = tether_token::unix_now() - 1_200;
            c.exp = tether_token::unix_now() - 600;
        })
        .unwrap();
    secrets.extend([unknown_key.clone(), expired.clone()]);
    let resource = r#"Hr::Employee::"8""#;
    for token in [&unknown_key, &expired, &other.token] {
        let status = client
            .request_approval(bearer(
                approval_request(&session, OFFBOARD, resource),
                token,
            ))
            .await
            .unwrap_err();
        assert_ne!(status.code(), tonic::Code::Ok);
    }
    let mut bad = approval_request(&session, OFFBOARD, resource);
    bad.binding_message = "Approve?\nCode: 000000".into();
    let status = client
        .request_approval(session.request(bad))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut bad = approval_request(&session, OFFBOARD, resource);
    bad.intent = json!([{ "type": "hr_record_access", "token": session.token }]).to_string();
    let status = client
        .request_approval(session.request(bad))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    client
        .cancel_session(pb::CancelSessionRequest {
            session_id: session.sid().into(),
            reason: "done".into(),
        })
        .await
        .unwrap();

    let logs = capture.text();
    assert!(
        logs.contains("the user is being asked to approve")
            && logs.contains("approval ticket decided")
            && logs.contains("CIBA ping accepted")
            && logs.contains("CIBA ping for a ticket that already ended")
            && logs.contains("CIBA ping with an unknown request or a wrong notification token")
            && logs.contains("session ended for approvals"),
        "the capture works and every path ran"
    );
    assert!(logs.contains(&approved.ticket_id), "ticket ids are logged");

    for (client_id, secret) in [PING_CLIENT, POLL_CLIENT] {
        assert!(!logs.contains(secret), "the CIBA client secret was logged");
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        assert!(
            !logs.contains(&basic),
            "the CIBA client's Basic credentials were logged"
        );
    }
    for secret in &secrets {
        let tail = &secret[secret.len() - 24..];
        assert!(!logs.contains(tail), "a token or its signature was logged");
        if let Some(payload) = secret.split('.').nth(1) {
            assert!(!logs.contains(payload), "a token's payload was logged");
        }
    }
    assert_eq!(jwt_shapes(&session.token).len(), 1, "the JWT search works");
    let shapes = jwt_shapes(&logs);
    assert!(shapes.is_empty(), "JWT-shaped text was logged: {shapes:?}");
}
