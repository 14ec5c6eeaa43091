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

use serde_json::{Value, json};
use tether_integration_tests::approvals::{
    ApprovalsSandbox, ApprovalsSandboxBuilder, Delivery, EMPLOYEE, OFFBOARD, PING_CLIENT,
    approval_request, authority,
};
use tether_integration_tests::eventually;
use tether_integration_tests::idp::Idp;
use tether_integration_tests::issuer::{DelegatedSession, SessionAuthority};
use tether_integration_tests::postgres::PgCluster;
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

// ---------------------------------------------------------------- helpers --

/// Starts an orchestrator on `authority`'s IdP with `delivery`, adjusted by
/// `configure`.
async fn start_with(
    authority: &SessionAuthority,
    delivery: Delivery,
    configure: impl FnOnce(ApprovalsSandboxBuilder) -> ApprovalsSandboxBuilder,
) -> ApprovalsSandbox {
    configure(
        ApprovalsSandbox::builder(authority)
            .unwrap()
            .delivery(delivery),
    )
    .start(authority.idp())
    .await
    .unwrap()
}

async fn start(authority: &SessionAuthority, delivery: Delivery) -> ApprovalsSandbox {
    start_with(authority, delivery, |builder| builder).await
}

/// RequestApproval with `session`'s token.
async fn request(
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    req: pb::RequestApprovalRequest,
) -> Result<pb::RequestApprovalResponse, tonic::Status> {
    sandbox
        .client()
        .request_approval(bearer(session, req))
        .await
        .map(tonic::Response::into_inner)
}

/// Asks `session`'s user to approve the offboarding of employee 1042; the
/// answer must be a new PENDING ticket.
async fn ask(sandbox: &ApprovalsSandbox, session: &DelegatedSession) -> pb::Ticket {
    let created = request(
        sandbox,
        session,
        approval_request(session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap();
    assert_eq!(created.outcome(), pb::RequestOutcome::TicketCreated);
    assert!(created.grant.is_none());
    let ticket = created.ticket.unwrap();
    assert_eq!(ticket.state(), pb::TicketState::Pending, "{ticket:?}");
    ticket
}

/// GetApproval with `session`'s token.
async fn get(
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    ticket_id: &str,
) -> Result<pb::Ticket, tonic::Status> {
    sandbox
        .client()
        .get_approval(bearer(
            session,
            pb::GetApprovalRequest {
                ticket_id: ticket_id.into(),
                session_id: session.sid().into(),
            },
        ))
        .await
        .map(|r| r.into_inner().ticket.unwrap())
}

/// CancelSession (no token: ending a session needs none).
async fn cancel(sandbox: &ApprovalsSandbox, sid: &str) -> pb::CancelSessionResponse {
    sandbox
        .client()
        .cancel_session(pb::CancelSessionRequest {
            session_id: sid.into(),
            reason: "session ended by agent".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every CIBA request the test device has seen, decided or not.
async fn device_requests(idp: &Idp) -> Vec<serde_json::Value> {
    idp.ciba_requests(&[("all", "1")]).await.unwrap()
}

/// The device's record of `ticket` (found by its binding message, which
/// ends with the ticket's confirmation code).
async fn device_record(idp: &Idp, ticket: &pb::Ticket) -> serde_json::Value {
    let mine: Vec<_> = device_requests(idp)
        .await
        .into_iter()
        .filter(|r| r["binding_message"] == ticket.binding_message.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "one device request per ticket: {mine:?}");
    mine.into_iter().next().unwrap()
}

/// The device's `auth_req_id` for `ticket`.
async fn auth_req_id(idp: &Idp, ticket: &pb::Ticket) -> String {
    device_record(idp, ticket).await["auth_req_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The user's answer on the device: `action` is `approve` or `deny`.
async fn answer(idp: &Idp, ticket: &pb::Ticket, action: &str, body: serde_json::Value) -> Value {
    let id = auth_req_id(idp, ticket).await;
    idp.ciba_device(&id, action, body).await.unwrap()
}

/// The token requests the IdP received for `auth_req_id`: `(at_ms, result)`.
async fn polls(idp: &Idp, auth_req_id: &str) -> Vec<(i64, String)> {
    idp.ciba_request(auth_req_id).await.unwrap()["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["at_ms"].as_i64().unwrap(),
                p["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `(id, state)` of every ticket row.
async fn ticket_rows(sandbox: &ApprovalsSandbox) -> Vec<(String, String)> {
    sqlx::query_as("SELECT id, state FROM approval_tickets ORDER BY created_at")
        .fetch_all(sandbox.pool())
        .await
        .unwrap()
}

fn ms(ts: Option<&prost_types::Timestamp>) -> i64 {
    let ts = ts.unwrap();
    ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000)
}

fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    tonic_types::StatusExt::get_details_error_info(status)
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

// ------------------------------------------------------------------ flows --

#[tokio::test]
async fn approve_by_ping_fetches_the_result_once_the_idp_pings() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Ping).await;
    let session = authority.session().await.unwrap();

    let ticket = ask(&sandbox, &session).await;
    assert_eq!(ticket.delivery_mode(), pb::DeliveryMode::Ping);
    let record = device_record(authority.idp(), &ticket).await;
    assert_eq!(record["client_id"], PING_CLIENT.0);
    let id = record["auth_req_id"].as_str().unwrap().to_owned();

    let approved = authority
        .idp()
        .ciba_device(&id, "approve", json!({}))
        .await
        .unwrap();
    assert_eq!(approved["notify"], "sent", "the IdP pinged: {approved}");

    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Approved, "{last:?}");
    assert_eq!(last.delivery_mode(), pb::DeliveryMode::Ping);
    assert_eq!(last.approver, "alice");
    assert_eq!(last.grant.as_ref().unwrap().ticket_id, ticket.ticket_id);
    // Ping mode never polls: the one token request came after the ping.
    let polls = polls(authority.idp(), &id).await;
    let results: Vec<&str> = polls.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(results, ["tokens"]);
    assert_eq!(sandbox.counts().await.unwrap(), (1, 1));
}

#[tokio::test]
async fn deny_ends_the_ticket_and_starts_a_cool_down_without_a_second_prompt() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();

    let ticket = ask(&sandbox, &session).await;
    answer(authority.idp(), &ticket, "deny", json!({})).await;
    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Denied, "{last:?}");
    assert!(last.grant.is_none());
    assert!(last.approver.is_empty());
    assert!(last.state_reason.contains("denied"), "{last:?}");
    assert!(last.decided_at.is_some());
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0), "no grant");

    let status = request(
        &sandbox,
        &session,
        approval_request(&session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "APPROVAL_COOL_DOWN");
    assert_eq!(info.domain, "tether");
    let retry = tonic_types::StatusExt::get_details_retry_info(&status)
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(300),
        "{retry:?}"
    );
    assert_eq!(device_requests(authority.idp()).await.len(), 1);
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0));
}

#[tokio::test]
async fn an_unanswered_ticket_expires_on_its_own_deadline() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();

    let mut req = approval_request(&session, OFFBOARD, EMPLOYEE);
    req.requested_expiry = Some(prost_types::Duration {
        seconds: 2,
        nanos: 0,
    });
    let created = request(&sandbox, &session, req).await.unwrap();
    assert_eq!(created.outcome(), pb::RequestOutcome::TicketCreated);
    let ticket = created.ticket.unwrap();
    let lifetime = ms(ticket.expires_at.as_ref()) - ms(ticket.created_at.as_ref());
    assert!(
        (1_500..=2_000).contains(&lifetime),
        "the user has the 2 s asked for: {lifetime} ms"
    );
    let record = device_record(authority.idp(), &ticket).await;
    assert_eq!(record["requested_expiry"], 2, "{record}");

    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Expired, "{last:?}");
    assert_eq!(
        last.state_reason, "expired: no answer before the deadline",
        "the orchestrator's own deadline, not the IdP's word"
    );
    assert!(
        ms(last.decided_at.as_ref()) >= ms(ticket.expires_at.as_ref()),
        "never before its time: {last:?}"
    );
    assert!(last.grant.is_none());
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0));
    let id = record["auth_req_id"].as_str().unwrap();
    assert!(
        polls(authority.idp(), id)
            .await
            .iter()
            .all(|(_, result)| result == "authorization_pending"),
        "the IdP never said it expired"
    );
}

#[tokio::test]
async fn slow_down_adds_five_seconds_to_the_poll_interval_for_the_rest_of_the_ticket() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();
    let idp = authority.idp();

    let ticket = ask(&sandbox, &session).await;
    let id = auth_req_id(idp, &ticket).await;
    idp.ciba_device(&id, "slow-down", json!({ "count": 1 }))
        .await
        .unwrap();
    // One `slow_down`, then one more `authorization_pending` at the raised
    // interval, then the approval.
    eventually(Duration::from_secs(30), || async {
        let polls = polls(idp, &id).await;
        match polls.iter().position(|(_, r)| r == "slow_down") {
            Some(at) if polls.len() > at + 1 => Ok(()),
            _ => Err(format!("{polls:?}")),
        }
    })
    .await
    .unwrap();
    idp.ciba_device(&id, "approve", json!({})).await.unwrap();
    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    assert_eq!(
        seen.last().unwrap().state(),
        pb::TicketState::Approved,
        "{seen:?}"
    );

    let polls = polls(idp, &id).await;
    let slow = polls.iter().position(|(_, r)| r == "slow_down").unwrap();
    let results: Vec<&str> = polls[slow..].iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        results,
        ["slow_down", "authorization_pending", "tokens"],
        "{polls:?}"
    );
    let gaps: Vec<i64> = polls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // The IdP stamps arrivals in whole ms: 1 ms allowance.
    assert!(
        gaps.iter().all(|g| *g >= 1_000 - 1),
        "never faster than the 1 s interval: {polls:?}"
    );
    assert!(
        gaps[slow..].iter().all(|g| *g >= 6_000 - 1),
        "1 s + 5 s after slow_down, to the end: {polls:?}"
    );
    let row = sandbox
        .store()
        .ticket(&ticket.ticket_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.poll_interval_ms,
        Some(6_000),
        "kept for a restart: {row:?}"
    );
}

#[tokio::test]
async fn cancel_session_cancels_pending_tickets_and_ignores_a_late_answer() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();
    let idp = authority.idp();

    let ticket = ask(&sandbox, &session).await;
    let id = auth_req_id(idp, &ticket).await;
    let first = cancel(&sandbox, session.sid()).await;
    assert_eq!(
        first.cancelled_ticket_ids,
        std::slice::from_ref(&ticket.ticket_id)
    );
    assert!(first.revoked_grant_ids.is_empty());
    assert!(!first.already_cancelled);
    assert!(first.cancelled_at.is_some());

    let again = cancel(&sandbox, session.sid()).await;
    assert!(again.already_cancelled);
    assert_eq!(again.cancelled_at, first.cancelled_at);
    assert!(again.cancelled_ticket_ids.is_empty());
    assert!(again.revoked_grant_ids.is_empty());

    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let cancelled = seen.last().unwrap();
    assert_eq!(cancelled.state(), pb::TicketState::Cancelled, "{seen:?}");
    assert!(
        cancelled.state_reason.contains("session ended by agent"),
        "{cancelled:?}"
    );

    // The user answers after all; the answer must count for nothing.
    let approved = idp.ciba_device(&id, "approve", json!({})).await.unwrap();
    assert_eq!(approved["status"], "approved");
    // Nothing can be waited for here (the point is that nothing happens):
    // give a driver that was wrongly left running a few 1 s intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = get(&sandbox, &session, &ticket.ticket_id).await.unwrap();
    assert_eq!(after.state(), pb::TicketState::Cancelled, "{after:?}");
    assert_eq!(after.decided_at, cancelled.decided_at);
    assert!(after.grant.is_none() && after.approver.is_empty());
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0), "no grant row");
    assert!(
        polls(idp, &id).await.iter().all(|(_, r)| r != "tokens"),
        "the approval was never fetched"
    );

    let status = request(
        &sandbox,
        &session,
        approval_request(&session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0));
    assert_eq!(device_requests(idp).await.len(), 1);
}

#[tokio::test]
async fn cancel_session_revokes_a_live_grant() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();

    let ticket = ask(&sandbox, &session).await;
    answer(authority.idp(), &ticket, "approve", json!({})).await;
    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let grant = seen.last().unwrap().grant.clone().unwrap();
    assert_eq!(grant.remaining_uses, 1);

    let done = cancel(&sandbox, session.sid()).await;
    assert_eq!(
        done.revoked_grant_ids,
        std::slice::from_ref(&grant.grant_id)
    );
    assert!(done.cancelled_ticket_ids.is_empty());
    let row = sandbox
        .store()
        .grant(&grant.grant_id)
        .await
        .unwrap()
        .unwrap();
    assert!(row.revoked_at.is_some(), "{row:?}");

    let status = request(
        &sandbox,
        &session,
        approval_request(&session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // Not usable through the store either, and its use was not spent.
    let scope = sandbox
        .store()
        .ticket(&ticket.ticket_id)
        .await
        .unwrap()
        .unwrap()
        .scope_key;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(
        sandbox
            .store()
            .use_grant(&scope, now)
            .await
            .unwrap()
            .is_none()
    );
    let row = sandbox
        .store()
        .grant(&grant.grant_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.remaining_uses, 1);
    assert_eq!(device_requests(authority.idp()).await.len(), 1);
}

/// Starts with `delivery`, creates a ticket, restarts the orchestrator on
/// the same store, approves on the device and watches from the new
/// process.
async fn approve_across_a_restart(delivery: Delivery) {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, delivery).await;
    let session = authority.session().await.unwrap();
    let ticket = ask(&sandbox, &session).await;
    let id = auth_req_id(authority.idp(), &ticket).await;
    let mut before = sandbox
        .client()
        .watch_approval(bearer(
            &session,
            pb::WatchApprovalRequest {
                ticket_id: ticket.ticket_id.clone(),
                session_id: session.sid().into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = before.message().await.unwrap().unwrap().ticket.unwrap();
    assert_eq!(first.state(), pb::TicketState::Pending);

    let (dir, builder) = sandbox.shutdown().await.unwrap();
    // The stream open across the shutdown ends UNAVAILABLE ("watch
    // again"), never with a state the ticket did not reach.
    let ended = loop {
        match before.message().await {
            Ok(Some(message)) => {
                assert_eq!(message.ticket.unwrap().state(), pb::TicketState::Pending);
            }
            Ok(None) => panic!("the watch ended without a terminal state or a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    let sandbox = builder.start_in(dir, authority.idp()).await.unwrap();
    let resumed = get(&sandbox, &session, &ticket.ticket_id).await.unwrap();
    assert_eq!(resumed.state(), pb::TicketState::Pending, "{resumed:?}");

    let approved = authority
        .idp()
        .ciba_device(&id, "approve", json!({}))
        .await
        .unwrap();
    if delivery == Delivery::Ping {
        assert_eq!(
            approved["notify"], "sent",
            "pinged the new process: {approved}"
        );
    }
    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Approved, "{seen:?}");
    assert_eq!(last.approver, "alice");
    assert!(last.grant.is_some());
    assert_eq!(sandbox.counts().await.unwrap(), (1, 1));
    assert_eq!(device_requests(authority.idp()).await.len(), 1);
}

#[tokio::test]
async fn a_pending_poll_ticket_is_resumed_after_a_restart() {
    approve_across_a_restart(Delivery::Poll).await;
}

#[tokio::test]
async fn a_pending_ping_ticket_is_resumed_after_a_restart() {
    approve_across_a_restart(Delivery::Ping).await;
}

/// Approves `ticket` on the device and waits for its grant.
async fn approved_grant(
    authority: &SessionAuthority,
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    ticket: &pb::Ticket,
) -> pb::Grant {
    answer(authority.idp(), ticket, "approve", json!({})).await;
    let seen = watch_to_end(sandbox, session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Approved, "{seen:?}");
    last.grant.clone().unwrap()
}

#[tokio::test]
async fn a_grant_is_used_as_many_times_as_configured_then_the_user_is_asked_again() {
    let authority = authority().await.unwrap();
    let sandbox = start_with(&authority, Delivery::Poll, |b| b.grants(300, 2)).await;
    let session = authority.session().await.unwrap();
    let ticket = ask(&sandbox, &session).await;
    let grant = approved_grant(&authority, &sandbox, &session, &ticket).await;
    assert_eq!((grant.initial_uses, grant.remaining_uses), (2, 2));

    for left in [1, 0] {
        let used = request(
            &sandbox,
            &session,
            approval_request(&session, OFFBOARD, EMPLOYEE),
        )
        .await
        .unwrap();
        assert_eq!(used.outcome(), pb::RequestOutcome::GrantUsed);
        assert!(used.ticket.is_none());
        let used = used.grant.unwrap();
        assert_eq!(used.grant_id, grant.grant_id);
        assert_eq!(used.remaining_uses, left);
    }
    assert_eq!(device_requests(authority.idp()).await.len(), 1);

    let spent = ask(&sandbox, &session).await;
    assert_ne!(spent.ticket_id, ticket.ticket_id);
    assert_eq!(device_requests(authority.idp()).await.len(), 2);
}

#[tokio::test]
async fn an_expired_grant_is_not_used() {
    let authority = authority().await.unwrap();
    let sandbox = start_with(&authority, Delivery::Poll, |b| b.grants(2, 1)).await;
    let session = authority.session().await.unwrap();
    let ticket = ask(&sandbox, &session).await;
    let grant = approved_grant(&authority, &sandbox, &session, &ticket).await;
    let expires_at = ms(grant.expires_at.as_ref());
    assert_eq!(expires_at - ms(grant.granted_at.as_ref()), 2_000);

    // Waiting for the expiry itself.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let left = u64::try_from(expires_at - now).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(left + 50)).await;

    let again = ask(&sandbox, &session).await;
    assert_ne!(again.ticket_id, ticket.ticket_id);
    let row = sandbox
        .store()
        .grant(&grant.grant_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.remaining_uses, 1, "the expired grant was not spent");
    assert_eq!(device_requests(authority.idp()).await.len(), 2);
}

#[tokio::test]
async fn the_last_use_of_a_grant_is_spent_once_under_concurrency_on_postgres() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("approvals").await.unwrap();
    let authority = authority().await.unwrap();
    let sandbox = start_with(&authority, Delivery::Poll, |b| {
        b.store_url(pg.admin_url("approvals"))
    })
    .await;
    let session = authority.session().await.unwrap();
    let ticket = ask(&sandbox, &session).await;
    let grant = approved_grant(&authority, &sandbox, &session, &ticket).await;
    assert_eq!(grant.remaining_uses, 1);

    let answers = futures::future::join_all((0..16).map(|_| {
        request(
            &sandbox,
            &session,
            approval_request(&session, OFFBOARD, EMPLOYEE),
        )
    }))
    .await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let used: Vec<_> = answers
        .iter()
        .filter(|a| a.outcome() == pb::RequestOutcome::GrantUsed)
        .collect();
    assert_eq!(used.len(), 1, "{answers:?}");
    assert_eq!(used[0].grant.as_ref().unwrap().remaining_uses, 0);
    let others: Vec<_> = answers
        .iter()
        .filter(|a| a.outcome() != pb::RequestOutcome::GrantUsed)
        .collect();
    assert!(
        others.iter().all(|a| matches!(
            a.outcome(),
            pb::RequestOutcome::TicketCreated | pb::RequestOutcome::TicketReused
        ) && a.grant.is_none()),
        "{answers:?}"
    );
    let created = others
        .iter()
        .filter(|a| a.outcome() == pb::RequestOutcome::TicketCreated)
        .count();
    assert_eq!(
        created, 1,
        "one new prompt, reused by the rest: {answers:?}"
    );
    let ids: std::collections::BTreeSet<_> = others
        .iter()
        .map(|a| a.ticket.as_ref().unwrap().ticket_id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(device_requests(authority.idp()).await.len(), 2);
    let row = sandbox
        .store()
        .grant(&grant.grant_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.remaining_uses, 0);
}

#[tokio::test]
async fn approval_with_another_account_fails_the_ticket() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();

    let ticket = ask(&sandbox, &session).await;
    let approved = answer(
        authority.idp(),
        &ticket,
        "approve",
        json!({ "account": "bob" }),
    )
    .await;
    assert_eq!(approved["approved_by"], "bob");
    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Failed, "{last:?}");
    assert!(
        last.state_reason.contains("another account")
            && last.state_reason.contains("not the requested user"),
        "{last:?}"
    );
    // The other account's identity is not shown to the agent.
    assert!(!last.state_reason.contains("bob"), "{last:?}");
    assert!(last.approver.is_empty());
    assert!(last.grant.is_none());
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0), "no grant");
}

#[tokio::test]
async fn an_unreachable_idp_is_unavailable_and_leaves_no_pending_ticket() {
    let mut authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();
    authority.idp_mut().stop().await.unwrap();

    for _ in 0..2 {
        let status = request(
            &sandbox,
            &session,
            approval_request(&session, OFFBOARD, EMPLOYEE),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
        assert_eq!(
            info.metadata.get("dependency").map(String::as_str),
            Some("idp")
        );
    }
    let rows = ticket_rows(&sandbox).await;
    assert!(
        rows.iter().all(|(_, state)| state == "FAILED"),
        "no PENDING ticket remains: {rows:?}"
    );
    assert_eq!(sandbox.counts().await.unwrap().1, 0);
}

#[tokio::test]
async fn the_same_request_while_pending_joins_the_ticket() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();

    let ticket = ask(&sandbox, &session).await;
    let again = request(
        &sandbox,
        &session,
        approval_request(&session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap();
    assert_eq!(again.outcome(), pb::RequestOutcome::TicketReused);
    let reused = again.ticket.unwrap();
    assert_eq!(reused.ticket_id, ticket.ticket_id);
    assert_eq!(reused.state(), pb::TicketState::Pending);
    assert_eq!(reused.confirmation_code, ticket.confirmation_code);
    assert_eq!(device_requests(authority.idp()).await.len(), 1);
    assert_eq!(sandbox.counts().await.unwrap(), (1, 0));
}

#[tokio::test]
async fn a_ticket_of_another_session_is_not_found() {
    let authority = authority().await.unwrap();
    let sandbox = start(&authority, Delivery::Poll).await;
    let session = authority.session().await.unwrap();
    let other = authority.session().await.unwrap();
    assert_ne!(session.sid(), other.sid());

    let ticket = ask(&sandbox, &session).await;
    let status = get(&sandbox, &other, &ticket.ticket_id).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = sandbox
        .client()
        .watch_approval(bearer(
            &other,
            pb::WatchApprovalRequest {
                ticket_id: ticket.ticket_id.clone(),
                session_id: other.sid().into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // Its own session still sees it.
    let mine = get(&sandbox, &session, &ticket.ticket_id).await.unwrap();
    assert_eq!(mine.state(), pb::TicketState::Pending);
}

#[tokio::test]
async fn a_lost_ping_delays_the_answer_but_does_not_lose_it() {
    let authority = authority().await.unwrap();
    let sandbox = start_with(&authority, Delivery::Ping, |b| {
        b.tickets(tether_ciba_orchestrator::TicketsConfig {
            keepalive_secs: 15,
            owner_lease_ms: 3_000,
            claim_interval_ms: 500,
            watch_poll_ms: 200,
            ping_fallback_secs: 2,
        })
    })
    .await;
    let session = authority.session().await.unwrap();
    let ticket = ask(&sandbox, &session).await;
    // The IdP's ping goes nowhere (nothing listens on port 9).
    authority
        .idp()
        .set_ping_target(
            tether_integration_tests::approvals::PING_CLIENT.0,
            "http://127.0.0.1:9/ciba/notify",
        )
        .await
        .unwrap();
    answer(authority.idp(), &ticket, "approve", json!({})).await;
    let seen = watch_to_end(&sandbox, &session, &ticket.ticket_id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::TicketState::Approved, "{seen:?}");
    assert_eq!(last.approver, "alice");
    let record = device_record(authority.idp(), &ticket).await;
    assert_ne!(
        record["notify"], "sent",
        "the ping was never delivered: {record}"
    );
}
