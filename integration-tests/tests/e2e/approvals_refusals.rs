//! Everything an attacker or a misbehaving caller can do to the approval
//! orchestrator, each refused with its exact status code, and each leaving
//! the ticket store and the user's phone untouched: bad input, tokens that
//! do not prove the session, callers other than the facade, prompt floods
//! (per user, after denials, across replicas), and forged or replayed
//! pings. Real IdP, real mTLS, real identity exchange; nothing is mocked.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use serde_json::{Value, json};
use tether_integration_tests::approvals::{
    ApprovalsSandbox, Delivery, EMPLOYEE, OFFBOARD, approval_request, authority,
};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::{DelegatedSession, SessionAuthority};
use tether_integration_tests::postgres::PgCluster;
use tether_proto::approval::v1 as pb;
use tether_proto::approval::v1::approval_orchestrator_client::ApprovalOrchestratorClient;
use tether_runtime::client::InternalChannel;
use tether_runtime::clock::unix_now;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt as _;

type Client = ApprovalOrchestratorClient<InternalChannel>;

/// What a refusal must leave as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Untouched {
    /// `(tickets, grants)` rows.
    rows: (i64, i64),
    /// CIBA requests the test device has ever seen.
    device: usize,
}

async fn device_requests(authority: &SessionAuthority) -> Vec<Value> {
    authority
        .idp()
        .ciba_requests(&[("all", "1")])
        .await
        .unwrap()
}

async fn snapshot(sandbox: &ApprovalsSandbox, authority: &SessionAuthority) -> Untouched {
    Untouched {
        rows: sandbox.counts().await.unwrap(),
        device: device_requests(authority).await.len(),
    }
}

/// Nothing was stored and nothing was sent to the IdP since `before`.
async fn assert_untouched(
    sandbox: &ApprovalsSandbox,
    authority: &SessionAuthority,
    before: Untouched,
    case: &str,
) {
    let now = snapshot(sandbox, authority).await;
    assert_eq!(
        now.rows, before.rows,
        "{case}: a ticket or grant was stored"
    );
    assert_eq!(now.device, before.device, "{case}: the IdP was asked");
}

async fn cancelled_sessions(sandbox: &ApprovalsSandbox) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM approval_cancelled_sessions")
        .fetch_one(sandbox.pool())
        .await
        .unwrap()
}

async fn poll_sandbox(authority: &SessionAuthority) -> ApprovalsSandbox {
    ApprovalsSandbox::builder(authority)
        .unwrap()
        .delivery(Delivery::Poll)
        .start(authority.idp())
        .await
        .unwrap()
}

/// `message` with `authorization` metadata set to exactly `values`.
fn with_authorization<T>(message: T, values: &[&str]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for value in values {
        let value = MetadataValue::try_from(*value).unwrap();
        request.metadata_mut().append("authorization", value);
    }
    request
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    with_authorization(message, &[&format!("Bearer {token}")])
}

fn get(session: &DelegatedSession, ticket_id: &str) -> pb::GetApprovalRequest {
    pb::GetApprovalRequest {
        ticket_id: ticket_id.into(),
        session_id: session.sid().into(),
    }
}

fn watch(session: &DelegatedSession, ticket_id: &str) -> pb::WatchApprovalRequest {
    pb::WatchApprovalRequest {
        ticket_id: ticket_id.into(),
        session_id: session.sid().into(),
    }
}

async fn request(
    client: &mut Client,
    token: &str,
    message: pb::RequestApprovalRequest,
) -> Result<pb::RequestApprovalResponse, tonic::Status> {
    client
        .request_approval(bearer(token, message))
        .await
        .map(tonic::Response::into_inner)
}

/// A new PENDING ticket for `action` on `resource` in `session`.
async fn created(
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    action: &str,
    resource: &str,
) -> pb::Ticket {
    let response = request(
        &mut sandbox.client(),
        &session.token,
        approval_request(session, action, resource),
    )
    .await
    .unwrap();
    assert_eq!(response.outcome(), pb::RequestOutcome::TicketCreated);
    response.ticket.unwrap()
}

async fn ticket(sandbox: &ApprovalsSandbox, session: &DelegatedSession, id: &str) -> pb::Ticket {
    sandbox
        .client()
        .get_approval(session.request(get(session, id)))
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap()
}

async fn wait_for_state(
    sandbox: &ApprovalsSandbox,
    session: &DelegatedSession,
    id: &str,
    state: pb::TicketState,
) -> pb::Ticket {
    eventually(Duration::from_secs(20), || async {
        let t = ticket(sandbox, session, id).await;
        if t.state() == state {
            Ok(t)
        } else {
            Err(format!("{:?}: {}", t.state(), t.state_reason))
        }
    })
    .await
    .unwrap()
}

/// The device's `auth_req_id` of the request showing `binding_message`.
async fn auth_req_id(authority: &SessionAuthority, binding_message: &str) -> String {
    let all = device_requests(authority).await;
    let found = all
        .iter()
        .find(|r| r["binding_message"] == binding_message)
        .unwrap_or_else(|| panic!("no device request shows {binding_message:?}: {all:?}"));
    found["auth_req_id"].as_str().unwrap().to_owned()
}

/// The ErrorInfo and RetryInfo of a RESOURCE_EXHAUSTED refusal.
fn limited(status: &tonic::Status, reason: &str, rule: &str) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.domain, "tether");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(
        info.metadata.get("rule").map(String::as_str),
        Some(rule),
        "{info:?}"
    );
    let retry = status
        .get_details_retry_info()
        .expect("a RetryInfo")
        .retry_delay
        .expect("a retry_delay");
    assert!(retry > Duration::ZERO, "{retry:?}");
    retry
}

type Edit = Box<dyn Fn(&mut pb::RequestApprovalRequest)>;

fn edit(f: impl Fn(&mut pb::RequestApprovalRequest) + 'static) -> Edit {
    Box::new(f)
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_stored_or_sent() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let invalid = Code::InvalidArgument;
    let big_intent = format!(
        r#"[{{"type":"hr_record_access","pad":"{}"}}]"#,
        "a".repeat(8 * 1024)
    );
    let cases: Vec<(&str, Code, Edit)> = vec![
        ("empty session_id", invalid, edit(|r| r.session_id.clear())),
        (
            "empty user_subject",
            invalid,
            edit(|r| r.user_subject.clear()),
        ),
        ("empty agent_id", invalid, edit(|r| r.agent_id.clear())),
        ("empty action", invalid, edit(|r| r.action.clear())),
        ("empty resource", invalid, edit(|r| r.resource.clear())),
        ("empty intent", invalid, edit(|r| r.intent.clear())),
        (
            "empty binding_message",
            invalid,
            edit(|r| r.binding_message.clear()),
        ),
        (
            "session_id of 129 bytes",
            invalid,
            edit(|r| r.session_id = "s".repeat(129)),
        ),
        (
            "user_subject of 257 bytes",
            invalid,
            edit(|r| r.user_subject = "u".repeat(257)),
        ),
        (
            "agent_id of 257 bytes",
            invalid,
            edit(|r| r.agent_id = "a".repeat(257)),
        ),
        (
            "action of 513 bytes",
            invalid,
            edit(|r| r.action = format!(r#"Hr::Action::"{}""#, "x".repeat(500))),
        ),
        (
            "resource of 513 bytes",
            invalid,
            edit(|r| r.resource = format!(r#"Hr::Employee::"{}""#, "1".repeat(500))),
        ),
        (
            "intent over 8 KiB",
            invalid,
            edit(move |r| r.intent = big_intent.clone()),
        ),
        (
            "binding_message of 129 characters",
            invalid,
            edit(|r| r.binding_message = "é".repeat(129)),
        ),
        (
            "LF in session_id",
            invalid,
            edit(|r| r.session_id.push('\n')),
        ),
        (
            "CR in session_id",
            invalid,
            edit(|r| r.session_id.insert(0, '\r')),
        ),
        (
            "NUL in session_id",
            invalid,
            edit(|r| r.session_id.insert(3, '\0')),
        ),
        (
            "LF in user_subject",
            invalid,
            edit(|r| r.user_subject.push_str("\nadmin")),
        ),
        (
            "CR in agent_id",
            invalid,
            edit(|r| r.agent_id.push_str("\rother")),
        ),
        ("NUL in action", invalid, edit(|r| r.action.push('\0'))),
        (
            "LF in resource",
            invalid,
            edit(|r| r.resource.push_str("\nHr::Employee::\"1\"")),
        ),
        (
            "surrounding whitespace in user_subject",
            invalid,
            edit(|r| r.user_subject.insert(0, ' ')),
        ),
        (
            "LF in binding_message",
            invalid,
            edit(|r| r.binding_message = "Offboard\nemployee 1042?".into()),
        ),
        (
            "CR in binding_message",
            invalid,
            edit(|r| r.binding_message = "Offboard employee 1042?\rApproved".into()),
        ),
        (
            "NUL in binding_message",
            invalid,
            edit(|r| r.binding_message = "Offboard\0employee 1042?".into()),
        ),
        (
            "binding_message of invisible characters only",
            invalid,
            edit(|r| r.binding_message = "\u{200b}\u{200b}\u{2060}".into()),
        ),
        (
            "intent is not JSON",
            invalid,
            edit(|r| r.intent = "not json".into()),
        ),
        (
            "intent is a JSON object",
            invalid,
            edit(|r| r.intent = r#"{"type":"hr_record_access"}"#.into()),
        ),
        (
            "intent is a JSON string",
            invalid,
            edit(|r| r.intent = r#""[]""#.into()),
        ),
        (
            "requested_expiry zero",
            invalid,
            edit(|r| {
                r.requested_expiry = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                });
            }),
        ),
        (
            "requested_expiry negative",
            invalid,
            edit(|r| {
                r.requested_expiry = Some(prost_types::Duration {
                    seconds: -60,
                    nanos: 0,
                });
            }),
        ),
        (
            "requested_expiry negative nanos",
            invalid,
            edit(|r| {
                r.requested_expiry = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: -1,
                });
            }),
        ),
        (
            // The IdP counts whole seconds: half a second is no time at all.
            "requested_expiry under a second",
            invalid,
            edit(|r| {
                r.requested_expiry = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                });
            }),
        ),
        (
            "session_expires_at missing",
            invalid,
            edit(|r| r.session_expires_at = None),
        ),
        (
            "session_expires_at with invalid nanos",
            invalid,
            edit(|r| {
                if let Some(ts) = r.session_expires_at.as_mut() {
                    ts.nanos = 1_000_000_000;
                }
            }),
        ),
        (
            "session_expires_at in the past",
            Code::FailedPrecondition,
            edit(|r| {
                r.session_expires_at = Some(prost_types::Timestamp {
                    seconds: unix_now() - 10,
                    nanos: 0,
                });
            }),
        ),
        (
            "session_expires_at now",
            Code::FailedPrecondition,
            edit(|r| {
                r.session_expires_at = Some(prost_types::Timestamp {
                    seconds: unix_now(),
                    nanos: 0,
                });
            }),
        ),
        (
            // No time to ask: refused like a session that has ended.
            "session_expires_at half a second from now",
            Code::FailedPrecondition,
            edit(|r| {
                let at = std::time::SystemTime::now() + Duration::from_millis(500);
                let at = at.duration_since(std::time::UNIX_EPOCH).unwrap();
                r.session_expires_at = Some(prost_types::Timestamp {
                    seconds: i64::try_from(at.as_secs()).unwrap(),
                    nanos: i32::try_from(at.subsec_nanos()).unwrap(),
                });
            }),
        ),
        (
            "unknown delivery_mode 7",
            invalid,
            edit(|r| r.delivery_mode = 7),
        ),
        (
            "negative delivery_mode",
            invalid,
            edit(|r| r.delivery_mode = -1),
        ),
        (
            "65 policy_ids",
            invalid,
            edit(|r| r.policy_ids = (0..65).map(|i| format!("policy-{i}")).collect()),
        ),
        (
            "empty policy id",
            invalid,
            edit(|r| r.policy_ids.push(String::new())),
        ),
        (
            "policy id of 257 bytes",
            invalid,
            edit(|r| r.policy_ids.push("p".repeat(257))),
        ),
        (
            "LF in a policy id",
            invalid,
            edit(|r| r.policy_ids.push("forged\nline".into())),
        ),
        (
            "LF in policy_version",
            invalid,
            edit(|r| r.policy_version = "sha256:x\nforged".into()),
        ),
    ];
    let before = snapshot(&sandbox, &authority).await;
    assert_eq!(before.rows, (0, 0));
    let mut client = sandbox.client();
    for (name, code, edit) in &cases {
        let mut message = approval_request(&session, OFFBOARD, EMPLOYEE);
        edit(&mut message);
        let status = request(&mut client, &session.token, message)
            .await
            .expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {status:?}");
        assert!(
            !status.message().contains('\n') && !status.message().contains('\0'),
            "{name}: caller input echoed raw: {:?}",
            status.message()
        );
        assert_untouched(&sandbox, &authority, before, name).await;
    }

    // Over the server's message size (4 MiB): refused by the transport.
    let mut huge = approval_request(&session, OFFBOARD, EMPLOYEE);
    huge.binding_message = "x".repeat(5 * 1024 * 1024);
    let status = request(&mut client, &session.token, huge)
        .await
        .unwrap_err();
    // libs/runtime's message limit: RESOURCE_EXHAUSTED (tonic's own
    // decoder would say OUT_OF_RANGE).
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_untouched(&sandbox, &authority, before, "over 4 MiB").await;

    // The same request unedited is accepted: the table's refusals are the
    // edits, not the base request. Limits that are allowed are accepted too.
    let mut at_limits = approval_request(&session, OFFBOARD, EMPLOYEE);
    at_limits.binding_message = "é".repeat(128);
    at_limits.policy_ids = (0..64).map(|i| format!("policy-{i}")).collect();
    at_limits.requested_expiry = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let response = request(&mut client, &session.token, at_limits)
        .await
        .unwrap();
    assert_eq!(response.outcome(), pb::RequestOutcome::TicketCreated);
}

#[tokio::test]
async fn bad_ticket_ids_and_cancellations_are_invalid_argument() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let ticket = created(&sandbox, &session, OFFBOARD, EMPLOYEE).await;
    let before = snapshot(&sandbox, &authority).await;
    let sid = session.sid().to_owned();
    let id = ticket.ticket_id.clone();

    let reads: Vec<(&str, String, String)> = vec![
        ("empty ticket_id", String::new(), sid.clone()),
        ("empty session_id", id.clone(), String::new()),
        ("ticket_id of 129 bytes", "t".repeat(129), sid.clone()),
        ("session_id of 129 bytes", id.clone(), "s".repeat(129)),
        ("LF in ticket_id", format!("{id}\n"), sid.clone()),
        ("NUL in ticket_id", format!("{id}\0"), sid.clone()),
        ("CR in session_id", id.clone(), format!("{sid}\r")),
    ];
    let mut client = sandbox.client();
    for (name, ticket_id, session_id) in &reads {
        let status = client
            .get_approval(session.request(pb::GetApprovalRequest {
                ticket_id: ticket_id.clone(),
                session_id: session_id.clone(),
            }))
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "get, {name}: {status:?}"
        );
        let status = client
            .watch_approval(session.request(pb::WatchApprovalRequest {
                ticket_id: ticket_id.clone(),
                session_id: session_id.clone(),
            }))
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "watch, {name}: {status:?}"
        );
        assert_untouched(&sandbox, &authority, before, name).await;
    }

    let cancels: Vec<(&str, String, String)> = vec![
        ("empty session_id", String::new(), String::new()),
        ("session_id of 129 bytes", "s".repeat(129), String::new()),
        ("LF in session_id", format!("{sid}\n"), String::new()),
        ("NUL in session_id", format!("\0{sid}"), String::new()),
        ("reason of 257 bytes", sid.clone(), "r".repeat(257)),
        // 129 two-byte characters: 258 bytes, under 256 characters.
        ("reason of 258 UTF-8 bytes", sid.clone(), "é".repeat(129)),
    ];
    for (name, session_id, reason) in &cancels {
        let status = client
            .cancel_session(pb::CancelSessionRequest {
                session_id: session_id.clone(),
                reason: reason.clone(),
            })
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "cancel, {name}: {status:?}"
        );
        assert_eq!(cancelled_sessions(&sandbox).await, 0, "{name}: recorded");
        assert_untouched(&sandbox, &authority, before, name).await;
    }
    // Nothing was cancelled by the refused calls: the ticket is still asked.
    assert_eq!(
        self::ticket(&sandbox, &session, &id).await.state(),
        pb::TicketState::Pending
    );

    // At the limit (128 two-byte characters = 256 bytes) it is accepted.
    let done = client
        .cancel_session(pb::CancelSessionRequest {
            session_id: sid.clone(),
            reason: "é".repeat(128),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.cancelled_ticket_ids, vec![id]);
    assert_eq!(cancelled_sessions(&sandbox).await, 1);

    // From then on the session asks nothing: neither the cancelled scope
    // nor a new one.
    let before = snapshot(&sandbox, &authority).await;
    for resource in [EMPLOYEE, r#"Hr::Employee::"7""#] {
        let status = request(
            &mut client,
            &session.token,
            approval_request(&session, OFFBOARD, resource),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_untouched(&sandbox, &authority, before, "cancelled session").await;
    }
}

#[tokio::test]
async fn tokens_that_do_not_prove_the_session_are_refused() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let other = authority.session().await.unwrap();
    let valid = || approval_request(&session, OFFBOARD, EMPLOYEE);
    let tampered = {
        let mut t = session.token.clone();
        let last = t.pop().unwrap();
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    };
    let expired = authority
        .forge(&session, |c| {
            c.iat = unix_now() - 1_200;
            c.exp = unix_now() - 600;
        })
        .unwrap();
    let unknown_key = authority.forge_with_unknown_key(&session).unwrap();
    let other_audience = authority
        .forge(&session, |c| c.aud = "https://tether.local/other".into())
        .unwrap();
    let other_issuer = authority
        .forge(&session, |c| c.iss = "https://evil.example".into())
        .unwrap();
    let sid_of_other = authority
        .forge(&session, |c| c.sid = other.sid().to_owned())
        .unwrap();
    let other_idp = authority
        .forge(&session, |c| {
            c.user
                .insert("idp".into(), "https://evil.example/idp".into());
        })
        .unwrap();

    struct Case {
        name: &'static str,
        authorization: Vec<String>,
        message: pb::RequestApprovalRequest,
        code: Code,
    }
    let case = |name, authorization: &[&str], message, code| Case {
        name,
        authorization: authorization.iter().map(|s| (*s).to_owned()).collect(),
        message,
        code,
    };
    let with_bearer = |t: &str| format!("Bearer {t}");
    let unauthenticated = Code::Unauthenticated;
    let cases = vec![
        case("no authorization metadata", &[], valid(), unauthenticated),
        case("scheme only", &["Bearer"], valid(), unauthenticated),
        case(
            "another scheme",
            &[&format!("Basic {}", session.token)],
            valid(),
            unauthenticated,
        ),
        case(
            "two tokens in one value",
            &[&format!("Bearer {} {}", session.token, session.token)],
            valid(),
            unauthenticated,
        ),
        case(
            "two authorization entries",
            &[&with_bearer(&session.token), &with_bearer(&other.token)],
            valid(),
            unauthenticated,
        ),
        case(
            "not a JWT",
            &["Bearer not-a-token"],
            valid(),
            unauthenticated,
        ),
        case(
            "signature tampered",
            &[&with_bearer(&tampered)],
            valid(),
            unauthenticated,
        ),
        case(
            "signed with a key never published",
            &[&with_bearer(&unknown_key)],
            valid(),
            unauthenticated,
        ),
        case(
            "expired",
            &[&with_bearer(&expired)],
            valid(),
            unauthenticated,
        ),
        case(
            "for another audience",
            &[&with_bearer(&other_audience)],
            valid(),
            unauthenticated,
        ),
        case(
            "from another issuer",
            &[&with_bearer(&other_issuer)],
            valid(),
            unauthenticated,
        ),
        case(
            "another session's token",
            &[&with_bearer(&other.token)],
            valid(),
            Code::PermissionDenied,
        ),
        case(
            "this session's claims with another sid",
            &[&with_bearer(&sid_of_other)],
            valid(),
            Code::PermissionDenied,
        ),
        case(
            "request names another user",
            &[&with_bearer(&session.token)],
            pb::RequestApprovalRequest {
                user_subject: "bob".into(),
                ..valid()
            },
            Code::PermissionDenied,
        ),
        case(
            "request names another agent",
            &[&with_bearer(&session.token)],
            pb::RequestApprovalRequest {
                agent_id: "report-writer".into(),
                ..valid()
            },
            Code::PermissionDenied,
        ),
        case(
            "request declares another intent",
            &[&with_bearer(&session.token)],
            pb::RequestApprovalRequest {
                intent: r#"[{"type":"hr_record_access","actions":["delete"],"identifier":"employee/1042"}]"#
                    .into(),
                ..valid()
            },
            Code::PermissionDenied,
        ),
        case(
            "the user comes from another IdP",
            &[&with_bearer(&other_idp)],
            valid(),
            Code::FailedPrecondition,
        ),
    ];

    let before = snapshot(&sandbox, &authority).await;
    let mut client = sandbox.client();
    for c in cases {
        let authorization: Vec<&str> = c.authorization.iter().map(String::as_str).collect();
        let status = client
            .request_approval(with_authorization(c.message, &authorization))
            .await
            .expect_err(c.name);
        assert_eq!(status.code(), c.code, "{}: {status:?}", c.name);
        for token in [&session.token, &other.token] {
            assert!(
                !status.message().contains(&token[token.len() - 24..]),
                "{}: a token was echoed",
                c.name
            );
        }
        assert_untouched(&sandbox, &authority, before, c.name).await;
    }

    // Reads and watches need the token as much.
    let status = client
        .get_approval(tonic::Request::new(get(&session, "tkt_none")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .watch_approval(bearer(&expired, watch(&session, "tkt_none")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .get_approval(other.request(get(&session, "tkt_none")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The same request with the session's own token is accepted.
    let response = request(&mut client, &session.token, valid()).await.unwrap();
    assert_eq!(response.outcome(), pb::RequestOutcome::TicketCreated);
}

#[tokio::test]
async fn a_revoked_session_is_refused() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let mut client = sandbox.client();
    // While the session lives, a read of a ticket that does not exist is
    // NOT_FOUND (no side effect): the probe below.
    let status = client
        .get_approval(session.request(get(&session, "tkt_none")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    authority.revoke(session.sid()).await.unwrap();
    eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        let session = session.clone();
        async move {
            match client
                .get_approval(session.request(get(&session, "tkt_none")))
                .await
            {
                Err(s) if s.code() == Code::Unauthenticated => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();

    let before = snapshot(&sandbox, &authority).await;
    assert_eq!(before.rows, (0, 0));
    let status = request(
        &mut client,
        &session.token,
        approval_request(&session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "session revoked");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "SESSION_REVOKED"
    );
    let status = client
        .watch_approval(session.request(watch(&session, "tkt_none")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_untouched(&sandbox, &authority, before, "revoked session").await;
}

#[tokio::test]
async fn only_the_agent_facade_may_call() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let ticket = created(&sandbox, &session, OFFBOARD, EMPLOYEE).await;
    let before = snapshot(&sandbox, &authority).await;

    let anonymous = ApprovalOrchestratorClient::new(
        authority
            .identity()
            .pki()
            .anonymous_channel(sandbox.addr())
            .unwrap(),
    );
    let mut callers = vec![("no client certificate", anonymous, Code::Unauthenticated)];
    for identity in [
        "credential-issuer",
        "policy-decision",
        "admin",
        "identity-exchange",
        "ciba-orchestrator",
    ] {
        callers.push((
            identity,
            sandbox.client_as(identity).unwrap(),
            Code::PermissionDenied,
        ));
    }
    for (who, mut client, code) in callers {
        let status = client
            .request_approval(session.request(approval_request(
                &session,
                OFFBOARD,
                "Hr::Employee::\"7\"",
            )))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{who}, request: {status:?}");
        let status = client
            .get_approval(session.request(get(&session, &ticket.ticket_id)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{who}, get: {status:?}");
        let status = client
            .watch_approval(session.request(watch(&session, &ticket.ticket_id)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{who}, watch: {status:?}");
        let status = client
            .cancel_session(pb::CancelSessionRequest {
                session_id: session.sid().into(),
                reason: "not yours to end".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{who}, cancel: {status:?}");
        assert_eq!(cancelled_sessions(&sandbox).await, 0, "{who}: cancelled");
        assert_untouched(&sandbox, &authority, before, who).await;
    }
    assert_eq!(
        self::ticket(&sandbox, &session, &ticket.ticket_id)
            .await
            .state(),
        pb::TicketState::Pending
    );
}

#[tokio::test]
async fn another_sessions_ticket_is_not_found() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let other = authority.session().await.unwrap();
    let ticket = created(&sandbox, &session, OFFBOARD, EMPLOYEE).await;
    let mut client = sandbox.client();

    // The other session names its own session: the ticket is not there.
    let status = client
        .get_approval(other.request(get(&other, &ticket.ticket_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .watch_approval(other.request(watch(&other, &ticket.ticket_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // It names the ticket's session: its token is not that session's.
    let status = client
        .get_approval(other.request(get(&session, &ticket.ticket_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = client
        .watch_approval(other.request(watch(&session, &ticket.ticket_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // The same scope asked with the other session's token is refused, not
    // reused.
    let status = request(
        &mut client,
        &other.token,
        approval_request(&session, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        self::ticket(&sandbox, &session, &ticket.ticket_id)
            .await
            .state(),
        pb::TicketState::Pending
    );
}

#[tokio::test]
async fn the_per_user_rate_limit_stops_the_fourth_prompt() {
    let authority = authority().await.unwrap();
    // Defaults: 3 prompts per user per 5 minutes.
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let resources: Vec<String> = (1..=4).map(|i| format!("Hr::Employee::\"{i}\"")).collect();
    let mut first = None;
    for resource in &resources[..3] {
        let t = created(&sandbox, &session, OFFBOARD, resource).await;
        first.get_or_insert(t);
    }
    let before = snapshot(&sandbox, &authority).await;
    assert_eq!(
        before,
        Untouched {
            rows: (3, 0),
            device: 3
        }
    );

    let mut client = sandbox.client();
    let status = request(
        &mut client,
        &session.token,
        approval_request(&session, OFFBOARD, &resources[3]),
    )
    .await
    .unwrap_err();
    let retry = limited(&status, "APPROVAL_RATE_LIMITED", "prompts_per_user");
    assert!(retry <= Duration::from_secs(300), "{retry:?}");
    assert_untouched(&sandbox, &authority, before, "fourth prompt").await;

    // Per user: a new session of the same user is limited as well.
    let again = authority.session().await.unwrap();
    let status = request(
        &mut client,
        &again.token,
        approval_request(&again, OFFBOARD, EMPLOYEE),
    )
    .await
    .unwrap_err();
    limited(&status, "APPROVAL_RATE_LIMITED", "prompts_per_user");
    assert_untouched(&sandbox, &authority, before, "another session").await;

    // Asking again for a pending scope is not a new prompt.
    let reused = request(
        &mut client,
        &session.token,
        approval_request(&session, OFFBOARD, &resources[0]),
    )
    .await
    .unwrap();
    assert_eq!(reused.outcome(), pb::RequestOutcome::TicketReused);
    assert_eq!(reused.ticket.unwrap().ticket_id, first.unwrap().ticket_id);
    assert_untouched(&sandbox, &authority, before, "reuse").await;
}

#[tokio::test]
async fn concurrent_prompts_do_not_slip_past_the_rate_limit() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let calls = (0..8).map(|i| {
        let mut client = sandbox.client();
        let message = approval_request(&session, OFFBOARD, &format!("Hr::Employee::\"{i}\""));
        let token = session.token.clone();
        async move { request(&mut client, &token, message).await }
    });
    let results = futures::future::join_all(calls).await;
    let created = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_ok_and(|r| r.outcome() == pb::RequestOutcome::TicketCreated)
        })
        .count();
    assert_eq!(created, 3, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        limited(refused, "APPROVAL_RATE_LIMITED", "prompts_per_user");
    }
    assert_eq!(
        snapshot(&sandbox, &authority).await,
        Untouched {
            rows: (3, 0),
            device: 3
        }
    );
}

#[tokio::test]
async fn a_denial_starts_a_cool_down_for_that_agent_and_action() {
    let authority = authority().await.unwrap();
    let sandbox = poll_sandbox(&authority).await;
    let session = authority.session().await.unwrap();
    let denied = created(&sandbox, &session, OFFBOARD, EMPLOYEE).await;
    let id = auth_req_id(&authority, &denied.binding_message).await;
    authority
        .idp()
        .ciba_device(&id, "deny", json!({}))
        .await
        .unwrap();
    wait_for_state(
        &sandbox,
        &session,
        &denied.ticket_id,
        pb::TicketState::Denied,
    )
    .await;
    let before = snapshot(&sandbox, &authority).await;

    // The same action on another resource waits out the cool-down.
    let status = request(
        &mut sandbox.client(),
        &session.token,
        approval_request(&session, OFFBOARD, r#"Hr::Employee::"7""#),
    )
    .await
    .unwrap_err();
    let retry = limited(&status, "APPROVAL_COOL_DOWN", "cool_down");
    assert!(retry <= Duration::from_secs(300), "{retry:?}");
    assert_untouched(&sandbox, &authority, before, "cool-down").await;

    // Another action is another question.
    created(&sandbox, &session, r#"Hr::Action::"view""#, EMPLOYEE).await;
}

#[tokio::test]
async fn repeated_denials_escalate_to_a_cool_down_for_the_agent() {
    let authority = authority().await.unwrap();
    let sandbox = ApprovalsSandbox::builder(&authority)
        .unwrap()
        .limits(tether_ciba_orchestrator::FatigueLimits {
            prompts_per_user: 100,
            escalation_after: 3,
            cool_down_secs: 0,
            ..Default::default()
        })
        .start(authority.idp())
        .await
        .unwrap();
    let session = authority.session().await.unwrap();
    // Three different actions: no (agent, action) cool-down is involved.
    for action in ["export", "transfer", "terminate"] {
        let t = created(
            &sandbox,
            &session,
            &format!("Hr::Action::\"{action}\""),
            EMPLOYEE,
        )
        .await;
        let id = auth_req_id(&authority, &t.binding_message).await;
        authority
            .idp()
            .ciba_device(&id, "deny", json!({}))
            .await
            .unwrap();
        wait_for_state(&sandbox, &session, &t.ticket_id, pb::TicketState::Denied).await;
    }
    let before = snapshot(&sandbox, &authority).await;
    assert_eq!(
        before,
        Untouched {
            rows: (3, 0),
            device: 3
        }
    );

    let status = request(
        &mut sandbox.client(),
        &session.token,
        approval_request(&session, r#"Hr::Action::"promote""#, EMPLOYEE),
    )
    .await
    .unwrap_err();
    let retry = limited(&status, "APPROVAL_COOL_DOWN", "escalation");
    assert!(retry <= Duration::from_secs(900), "{retry:?}");
    assert_untouched(&sandbox, &authority, before, "escalation").await;
}

#[tokio::test]
async fn the_rate_limit_holds_across_replicas_on_postgres() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("approvals").await.unwrap();
    let url = pg.admin_url("approvals");
    let authority = authority().await.unwrap();
    let start = || async {
        ApprovalsSandbox::builder(&authority)
            .unwrap()
            .store_url(url.clone())
            .start(authority.idp())
            .await
            .unwrap()
    };
    let one = start().await;
    let two = start().await;
    let session = authority.session().await.unwrap();

    // Six prompts at once, three through each replica: three get through.
    let calls = (0..6).map(|i| {
        let mut client = if i % 2 == 0 {
            one.client()
        } else {
            two.client()
        };
        let message = approval_request(&session, OFFBOARD, &format!("Hr::Employee::\"{i}\""));
        let token = session.token.clone();
        async move { request(&mut client, &token, message).await }
    });
    let results = futures::future::join_all(calls).await;
    let created = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_ok_and(|r| r.outcome() == pb::RequestOutcome::TicketCreated)
        })
        .count();
    assert_eq!(created, 3, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        limited(refused, "APPROVAL_RATE_LIMITED", "prompts_per_user");
    }
    let before = snapshot(&one, &authority).await;
    assert_eq!(
        before,
        Untouched {
            rows: (3, 0),
            device: 3
        }
    );
    assert_eq!(two.counts().await.unwrap(), (3, 0), "one store");

    // And one at a time, on either replica, still nothing more.
    for (name, sandbox) in [("replica one", &one), ("replica two", &two)] {
        let status = request(
            &mut sandbox.client(),
            &session.token,
            approval_request(&session, OFFBOARD, r#"Hr::Employee::"99""#),
        )
        .await
        .unwrap_err();
        limited(&status, "APPROVAL_RATE_LIMITED", "prompts_per_user");
        assert_untouched(&one, &authority, before, name).await;
    }
}

/// A ping sandbox with one PENDING ticket, and the notification token the
/// orchestrator gave the IdP for it.
struct PingStack {
    sandbox: ApprovalsSandbox,
    session: DelegatedSession,
    ticket: pb::Ticket,
    auth_req_id: String,
    token: String,
    url: String,
    // Field order = drop order: the authority (IdP) stops last.
    authority: SessionAuthority,
}

async fn ping_stack() -> PingStack {
    let authority = authority().await.unwrap();
    let sandbox = ApprovalsSandbox::builder(&authority)
        .unwrap()
        .delivery(Delivery::Ping)
        .start(authority.idp())
        .await
        .unwrap();
    let session = authority.session().await.unwrap();
    let ticket = created(&sandbox, &session, OFFBOARD, EMPLOYEE).await;
    assert_eq!(ticket.delivery_mode(), pb::DeliveryMode::Ping);
    let auth_req_id = auth_req_id(&authority, &ticket.binding_message).await;
    let token =
        authority.idp().ciba_request(&auth_req_id).await.unwrap()["client_notification_token"]
            .as_str()
            .expect("the test IdP shows the notification token")
            .to_owned();
    let url = sandbox.ping_url().unwrap();
    PingStack {
        sandbox,
        session,
        ticket,
        auth_req_id,
        token,
        url,
        authority,
    }
}

/// The token requests the IdP saw for `auth_req_id`.
async fn polls(authority: &SessionAuthority, auth_req_id: &str) -> Vec<Value> {
    authority.idp().ciba_request(auth_req_id).await.unwrap()["polls"]
        .as_array()
        .unwrap()
        .clone()
}

async fn ping(url: &str, authorization: &[&str], body: impl Into<reqwest::Body>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for value in authorization {
        request = request.header("authorization", *value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forged_and_malformed_pings_change_nothing() {
    let s = ping_stack().await;
    let second = created(&s.sandbox, &s.session, OFFBOARD, r#"Hr::Employee::"7""#).await;
    let second_id = auth_req_id(&s.authority, &second.binding_message).await;
    let before = snapshot(&s.sandbox, &s.authority).await;
    assert_eq!(before.rows, (2, 0));
    let body = |id: &str| json!({ "auth_req_id": id }).to_string();
    let real = format!("Bearer {}", s.token);
    let basic = format!("Basic {}", s.token);
    let cases: Vec<(&str, Vec<&str>, String, u16)> = vec![
        ("no authorization", vec![], body(&s.auth_req_id), 401),
        (
            "wrong bearer",
            vec!["Bearer x3kM0u5o3J2QpVtGJ9b1yq4v7XzRkq0ZlEwK8cNfHhA"],
            body(&s.auth_req_id),
            401,
        ),
        ("another scheme", vec![&basic], body(&s.auth_req_id), 401),
        (
            "the token twice",
            vec![&real, &real],
            body(&s.auth_req_id),
            401,
        ),
        (
            "unknown auth_req_id",
            vec![&real],
            body("no-such-request"),
            401,
        ),
        (
            "another request's auth_req_id",
            vec![&real],
            body(&second_id),
            401,
        ),
        ("not JSON", vec![&real], "auth_req_id=1".into(), 400),
        (
            "auth_req_id not a string",
            vec![&real],
            json!({ "auth_req_id": 7 }).to_string(),
            400,
        ),
        (
            "over 4 KiB",
            vec![&real],
            json!({ "auth_req_id": s.auth_req_id, "pad": "p".repeat(5 * 1024) }).to_string(),
            413,
        ),
    ];
    for (name, authorization, body, expected) in cases {
        let status = ping(&s.url, &authorization, body).await;
        assert_eq!(status, expected, "{name}");
        assert_untouched(&s.sandbox, &s.authority, before, name).await;
        for (t, id) in [(&s.ticket, &s.auth_req_id), (&second, &second_id)] {
            let now = ticket(&s.sandbox, &s.session, &t.ticket_id).await;
            assert_eq!(now.state(), pb::TicketState::Pending, "{name}");
            assert!(now.grant.is_none(), "{name}");
            // A refused ping wakes nothing: the IdP's token endpoint was
            // not asked.
            assert!(polls(&s.authority, id).await.is_empty(), "{name}");
        }
    }
}

#[tokio::test]
async fn an_early_ping_only_fetches_pending_and_a_replayed_ping_changes_nothing() {
    let s = ping_stack().await;
    let real = format!("Bearer {}", s.token);
    let body = json!({ "auth_req_id": s.auth_req_id }).to_string();

    // Before the user answers: the ping is genuine, the fetch it triggers
    // is told `authorization_pending`, and the ticket stays PENDING.
    assert_eq!(ping(&s.url, &[&real], body.clone()).await, 204);
    let seen = eventually(Duration::from_secs(10), || async {
        let polls = polls(&s.authority, &s.auth_req_id).await;
        if polls.is_empty() {
            Err("no fetch yet")
        } else {
            Ok(polls)
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["result"], "authorization_pending");
    let pending = ticket(&s.sandbox, &s.session, &s.ticket.ticket_id).await;
    assert_eq!(pending.state(), pb::TicketState::Pending);
    assert_eq!(s.sandbox.counts().await.unwrap(), (1, 0));

    // The user approves; the IdP's own ping completes the ticket.
    s.authority
        .idp()
        .ciba_device(&s.auth_req_id, "approve", json!({}))
        .await
        .unwrap();
    let approved = wait_for_state(
        &s.sandbox,
        &s.session,
        &s.ticket.ticket_id,
        pb::TicketState::Approved,
    )
    .await;
    let before = snapshot(&s.sandbox, &s.authority).await;
    assert_eq!(before.rows, (1, 1));
    let fetched = polls(&s.authority, &s.auth_req_id).await;

    // Replayed afterwards (by anyone who saw it): accepted and ignored. The
    // ticket is terminal and its driver has ended, so nothing is fetched.
    for _ in 0..3 {
        assert_eq!(ping(&s.url, &[&real], body.clone()).await, 204);
    }
    let after = ticket(&s.sandbox, &s.session, &s.ticket.ticket_id).await;
    assert_eq!(after, approved);
    assert_untouched(&s.sandbox, &s.authority, before, "replayed ping").await;
    assert_eq!(polls(&s.authority, &s.auth_req_id).await, fetched);
}
