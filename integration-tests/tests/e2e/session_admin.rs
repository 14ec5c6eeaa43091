//! The facade's session administration (`tether.facade.v1.SessionAdmin`)
//! and the identity exchange's `ListSessions` / `GetSession` behind it,
//! against the whole real stack: operators list and describe sessions
//! (never a token), end one exactly as its agent would (token refused,
//! leases revoked at Vault, the credential no longer logs in, the end on
//! record naming the operator), and everyone else is refused with nothing
//! changed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use sqlx::Connection as _;
use tether_audit::{AuditReader, RecordKind};
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, INTENT, bearer, read_request, uid};
use tether_integration_tests::identity::{FACADE_AUDIENCE, IdentitySandbox, TestAgent};
use tether_integration_tests::idp::Idp;
use tether_integration_tests::postgres::PgCluster;
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::session_admin_client::SessionAdminClient;
use tether_proto::identity::v1 as identity_pb;
use tether_runtime::client::{Clients, InternalChannel};
use tonic::Code;
use tonic_types::StatusExt as _;

const ADMIN: &str = "admin";
const FACADE: &str = "agent-facade";

fn admin(stack: &FacadeStack) -> SessionAdminClient<InternalChannel> {
    SessionAdminClient::new(stack.pki().channel(ADMIN, stack.addr(), FACADE).unwrap())
}

/// A client with the facade's own certificate (read from its files, not
/// rewritten): a real identity of the stack, but not an operator's.
fn as_the_facade(stack: &FacadeStack) -> SessionAdminClient<InternalChannel> {
    let channel = Clients::new(&stack.pki().paths(FACADE))
        .unwrap()
        .grpc(&format!("https://{}", stack.addr()), FACADE)
        .unwrap();
    SessionAdminClient::new(channel)
}

/// An agent's view: TLS to the facade, no client certificate.
fn as_an_agent(stack: &FacadeStack) -> SessionAdminClient<InternalChannel> {
    SessionAdminClient::new(stack.pki().anonymous_channel(stack.addr()).unwrap())
}

fn authorize_read() -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        action: uid("Action", "read"),
        resource: uid("Employee", "1042"),
        context_json: String::new(),
    }
}

/// A session for carol (another user in the `hr` group) and the same agent.
async fn carols_session(stack: &FacadeStack) -> pb::StartSessionResponse {
    let carol = stack
        .authority
        .idp()
        .login("carol", &["openid", "profile", "email", "hr:read"])
        .await
        .unwrap();
    let mut request = stack.start_request().unwrap();
    request.user_token = carol.access_token;
    stack
        .client()
        .start_session(request)
        .await
        .unwrap()
        .into_inner()
}

/// The credential of an ALLOW (never printed: it is a secret).
fn issued(response: pb::AcquireCredentialResponse) -> (pb::DatabaseCredential, pb::Lease) {
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = response.outcome else {
        panic!("no credential issued");
    };
    let Some(pb::credential::Kind::Database(db)) = issued.credential.and_then(|c| c.kind) else {
        panic!("not a database credential");
    };
    (db, issued.lease.expect("a lease"))
}

async fn logs_in(stack: &FacadeStack, db: &pb::DatabaseCredential) -> bool {
    sqlx::PgConnection::connect_with(&stack.deps.pg.options(&db.username, &db.password))
        .await
        .is_ok()
}

fn refused(case: &str, status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{case}: no ErrorInfo: {status:?}"));
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("tether", reason),
        "{case}: {status:?}"
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// Asserts `debug` (a response, printed) holds none of `secrets`.
fn no_secret(what: &str, debug: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!debug.contains(secret), "{what} carries a secret");
    }
}

#[tokio::test]
async fn operators_list_show_and_end_sessions_as_the_agent_would() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let alice = stack.session().await.unwrap();
    let carol = carols_session(&stack).await;
    let (db, lease) = issued(
        stack
            .client()
            .acquire_credential(bearer(read_request(), &alice.delegated_token))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(logs_in(&stack, &db).await);
    let secrets = [
        alice.delegated_token.as_str(),
        carol.delegated_token.as_str(),
        stack.authority.user_token(),
        db.password.as_str(),
        db.username.as_str(),
    ];
    let mut admin = admin(&stack);

    // Both sessions, newest first, with their facts and no token.
    let all = admin
        .list_sessions(pb::AdminListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    no_secret("ListSessions", &format!("{all:?}"), &secrets);
    let ids: Vec<&str> = all.sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&alice.session_id.as_str()) && ids.contains(&carol.session_id.as_str()));
    let order: Vec<(i64, &str)> = all
        .sessions
        .iter()
        .map(|s| (s.started_at.unwrap().seconds, s.session_id.as_str()))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {order:?}"
    );
    assert!(all.next_page_token.is_empty());
    for s in &all.sessions {
        assert_eq!(s.status(), pb::SessionStatus::Active);
        assert_eq!(s.agent_id, "hr-assistant");
        assert_eq!(s.user_issuer, stack.authority.idp().issuer());
        assert_eq!(s.scope, "hr:read");
        assert_eq!(json(&s.intent), json(INTENT));
        assert!(s.revoked_at.is_none() && s.revoke_reason.is_empty());
        assert!(s.expires_at.unwrap().seconds > s.started_at.unwrap().seconds);
    }

    // Filters.
    let by_user = |user: &str| pb::AdminListSessionsRequest {
        user_subject: user.into(),
        ..Default::default()
    };
    let carols = admin
        .list_sessions(by_user("carol"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(carols.sessions.len(), 1);
    assert_eq!(carols.sessions[0].session_id, carol.session_id);
    assert_eq!(carols.sessions[0].user_subject, "carol");
    let nobodys = admin
        .list_sessions(by_user("nobody"))
        .await
        .unwrap()
        .into_inner();
    assert!(nobodys.sessions.is_empty());
    let other_agent = admin
        .list_sessions(pb::AdminListSessionsRequest {
            agent_id: "report-writer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other_agent.sessions.is_empty());

    // Pages of one: the same two, in the same order; the token is bound to
    // its filters.
    let first = admin
        .list_sessions(pb::AdminListSessionsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.sessions.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = admin
        .list_sessions(pb::AdminListSessionsRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let paged: Vec<&str> = first
        .sessions
        .iter()
        .chain(&second.sessions)
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(paged, ids);
    assert!(second.next_page_token.is_empty());
    let mismatched = admin
        .list_sessions(pb::AdminListSessionsRequest {
            user_subject: "alice".into(),
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(
        "a page token with other filters",
        &mismatched,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );

    // One session in full: facts and its lease, no token, no credential.
    let shown = admin
        .get_session(pb::AdminGetSessionRequest {
            session_id: alice.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    no_secret("GetSession", &format!("{shown:?}"), &secrets);
    let facts = shown.session.unwrap();
    assert_eq!(facts.session_id, alice.session_id);
    assert_eq!(facts.user_subject, "alice");
    assert_eq!(facts.status(), pb::SessionStatus::Active);
    assert_eq!(shown.leases.len(), 1);
    assert_eq!(shown.leases[0].lease_id, lease.lease_id);
    assert_eq!(shown.leases[0].status(), pb::LeaseStatus::Active);

    // The identity exchange answers operators directly too (its own table).
    let direct = stack
        .authority
        .identity()
        .client_as(ADMIN)
        .unwrap()
        .get_session(identity_pb::GetSessionRequest {
            sid: carol.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(direct.user_subject, "carol");
    no_secret("identity GetSession", &format!("{direct:?}"), &secrets);

    // The operator ends alice's session.
    let receipt = admin
        .end_session(pb::AdminEndSessionRequest {
            session_id: alice.session_id.clone(),
            reason: "suspected prompt injection".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    no_secret("EndSession", &format!("{receipt:?}"), &secrets);
    assert_eq!(receipt.session_id, alice.session_id);
    assert!(!receipt.already_ended);
    assert!(receipt.session_revoked_at.is_some() && !receipt.receipt_id.is_empty());
    let listed: Vec<&str> = receipt
        .revoked_leases
        .iter()
        .chain(&receipt.pending_leases)
        .map(|l| l.lease_id.as_str())
        .collect();
    assert_eq!(listed, [lease.lease_id.as_str()]);

    // At once the agent's token is refused, as after its own EndSession.
    let refused_call = stack
        .client()
        .authorize(bearer(authorize_read(), &alice.delegated_token))
        .await
        .unwrap_err();
    refused(
        "the ended session's token",
        &refused_call,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    let again = stack
        .client()
        .acquire_credential(bearer(read_request(), &alice.delegated_token))
        .await
        .unwrap_err();
    refused(
        "a new credential",
        &again,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    // The credential no longer logs in; its role is gone.
    eventually(Duration::from_secs(20), || async {
        if logs_in(&stack, &db).await {
            Err("the credential still logs in")
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(stack.deps.pg.roles_like("v-").await.unwrap().is_empty());
    // The identity exchange says it is revoked.
    let introspected = stack
        .authority
        .identity()
        .client()
        .introspect(identity_pb::IntrospectRequest {
            token: alice.delegated_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!introspected.active);

    // The end is on record under the receipt's id, naming the operator as
    // the actor and alice as the user whose session it was.
    let log = AuditReader::open(&stack.config().audit.effective_url())
        .await
        .unwrap();
    let story = log.tail(&alice.session_id).await.unwrap();
    let end = story
        .iter()
        .find(|e| e.record.kind == RecordKind::SessionEnd)
        .expect("a session_end record");
    assert_eq!(end.record.request_id, receipt.receipt_id);
    assert_eq!(end.record.decision, "ended");
    assert_eq!(end.record.agent, "spiffe://tether.test/tether/admin");
    assert_eq!(end.record.user_sub, "alice");
    assert_eq!(end.record.user_idp, stack.authority.idp().issuer());
    assert_eq!(end.record.detail, "suspected prompt injection");
    let revocation = story
        .iter()
        .find(|e| e.record.kind == RecordKind::Revocation && e.record.lease_id == lease.lease_id)
        .expect("the lease's revocation on record");
    assert_eq!(revocation.record.request_id, receipt.receipt_id);
    assert_eq!(revocation.record.agent, "spiffe://tether.test/tether/admin");
    // Its agent's own records still name the agent.
    assert!(
        story
            .iter()
            .any(|e| e.record.kind == RecordKind::Issuance && e.record.agent == "hr-assistant")
    );

    // Idempotent: the same receipt shape, already ended, the first time.
    let repeated = admin
        .end_session(pb::AdminEndSessionRequest {
            session_id: alice.session_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert!(repeated.already_ended);
    assert_eq!(repeated.session_revoked_at, receipt.session_revoked_at);
    assert_eq!(
        repeated.revoked_leases.len() + repeated.pending_leases.len(),
        1
    );
    // And the agent's own EndSession agrees.
    let agents = stack
        .client()
        .end_session(bearer(
            pb::EndSessionRequest::default(),
            &alice.delegated_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert!(agents.already_ended);
    assert_eq!(agents.session_revoked_at, receipt.session_revoked_at);

    // Described as revoked, with the operator's reason and its lease gone;
    // carol's session is untouched.
    let after = admin
        .get_session(pb::AdminGetSessionRequest {
            session_id: alice.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let facts = after.session.unwrap();
    assert_eq!(facts.status(), pb::SessionStatus::Revoked);
    assert_eq!(facts.revoke_reason, "suspected prompt injection");
    assert_eq!(facts.revoked_at, receipt.session_revoked_at);
    assert_eq!(after.leases[0].status(), pb::LeaseStatus::Revoked);
    let active = admin
        .list_sessions(pb::AdminListSessionsRequest {
            active_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let active: Vec<&str> = active
        .sessions
        .iter()
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(active, [carol.session_id.as_str()]);
    stack
        .client()
        .authorize(bearer(authorize_read(), &carol.delegated_token))
        .await
        .unwrap();
}

#[tokio::test]
async fn only_operators_are_served_and_bad_input_changes_nothing() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    let (db, _lease) = issued(
        stack
            .client()
            .acquire_credential(bearer(read_request(), &session.delegated_token))
            .await
            .unwrap()
            .into_inner(),
    );
    let before = stack.footprint().await.unwrap();
    let sid = session.session_id.clone();
    let end = |sid: &str, reason: &str| pb::AdminEndSessionRequest {
        session_id: sid.into(),
        reason: reason.into(),
    };
    let get = |sid: &str| pb::AdminGetSessionRequest {
        session_id: sid.into(),
    };

    // Not operators: an agent (no certificate, even with its token) and
    // the facade's own certificate.
    for (who, mut client, code, reason) in [
        (
            "an agent",
            as_an_agent(&stack),
            Code::Unauthenticated,
            "PEER_UNAUTHENTICATED",
        ),
        (
            "the facade's certificate",
            as_the_facade(&stack),
            Code::PermissionDenied,
            "CALLER_NOT_ALLOWED",
        ),
    ] {
        let status = client
            .list_sessions(pb::AdminListSessionsRequest::default())
            .await
            .unwrap_err();
        refused(who, &status, code, reason);
        let status = client.get_session(get(&sid)).await.unwrap_err();
        refused(who, &status, code, reason);
        let status = client.end_session(end(&sid, "")).await.unwrap_err();
        refused(who, &status, code, reason);
        let status = client
            .end_session(bearer(end(&sid, ""), &session.delegated_token))
            .await
            .unwrap_err();
        refused(who, &status, code, reason);
    }
    // Nor may another identity ask the identity exchange for sessions.
    let status = stack
        .authority
        .identity()
        .client_as("auditor")
        .unwrap()
        .list_sessions(identity_pb::ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Malformed input from an operator.
    let mut admin = admin(&stack);
    let long = "s".repeat(129);
    for bad in [
        "",
        "s_1\n",
        "s_1\r\nforged",
        "s 1",
        "s_\u{1b}[2J",
        "s_1'--",
        long.as_str(),
    ] {
        let status = admin.get_session(get(bad)).await.unwrap_err();
        refused(
            &format!("GetSession {bad:?}"),
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
        );
        let status = admin.end_session(end(bad, "")).await.unwrap_err();
        refused(
            &format!("EndSession {bad:?}"),
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
        );
    }
    let too_long = "r".repeat(257);
    for reason in ["two\nlines", "bell\u{7}", too_long.as_str()] {
        let status = admin.end_session(end(&sid, reason)).await.unwrap_err();
        refused(
            "a bad reason",
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
        );
    }
    for request in [
        pb::AdminListSessionsRequest {
            page_size: 1001,
            ..Default::default()
        },
        pb::AdminListSessionsRequest {
            user_subject: "alice\n".into(),
            ..Default::default()
        },
        pb::AdminListSessionsRequest {
            agent_id: "a".repeat(257),
            ..Default::default()
        },
        pb::AdminListSessionsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        },
    ] {
        let status = admin.list_sessions(request.clone()).await.unwrap_err();
        refused(
            &format!("{request:?}"),
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
        );
    }
    // A well-formed id of no session.
    let unknown = "s_00000000000000000000000000000000";
    let status = admin.get_session(get(unknown)).await.unwrap_err();
    refused(
        "an unknown session",
        &status,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let status = admin.end_session(end(unknown, "")).await.unwrap_err();
    refused(
        "ending an unknown session",
        &status,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );

    // Nothing changed: the session acts, its credential logs in, nothing
    // was minted, issued, revoked or asked.
    assert_eq!(stack.footprint().await.unwrap(), before);
    assert!(logs_in(&stack, &db).await);
    stack
        .client()
        .authorize(bearer(authorize_read(), &session.delegated_token))
        .await
        .unwrap();
    let facts = admin.get_session(get(&sid)).await.unwrap().into_inner();
    assert_eq!(facts.session.unwrap().status(), pb::SessionStatus::Active);
    let identity_row = stack
        .authority
        .identity()
        .client_as(ADMIN)
        .unwrap()
        .get_session(identity_pb::GetSessionRequest {
            sid: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(identity_row.code(), Code::NotFound);
}

/// The identity exchange's listing on PostgreSQL (replicated deployments),
/// not only SQLite: the same order, filters, paging and facts.
#[tokio::test]
async fn sessions_list_the_same_from_postgresql() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("tether").await.unwrap();
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .store_url(pg.admin_url("tether"))
        .start()
        .await
        .unwrap();
    let scopes = ["openid", "profile", "email", "hr:read"];
    let mut sids = Vec::new();
    for user in ["alice", "carol", "alice"] {
        let token = idp.login(user, &scopes).await.unwrap().access_token;
        let minted = identity
            .client()
            .exchange(identity_pb::ExchangeRequest {
                subject_token: token,
                subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
                actor_token: agent.assertion(&identity.token_endpoint()).unwrap(),
                actor_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                audience: FACADE_AUDIENCE.into(),
                scope: "hr:read".into(),
                requested_token_type: String::new(),
                authorization_details: INTENT.into(),
            })
            .await
            .unwrap()
            .into_inner();
        sids.push(minted.sid);
    }
    identity
        .client()
        .revoke_session(identity_pb::RevokeSessionRequest {
            sid: sids[0].clone(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    let mut admin = identity.client_as(ADMIN).unwrap();
    let list = |user: &str, active_only: bool, page_size: u32, page_token: &str| {
        identity_pb::ListSessionsRequest {
            user_subject: user.into(),
            agent_id: String::new(),
            active_only,
            page_size,
            page_token: page_token.into(),
        }
    };
    let all = admin
        .list_sessions(list("", false, 0, ""))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(i64, String)> = all
        .sessions
        .iter()
        .map(|s| (s.started_at.unwrap().seconds, s.sid.clone()))
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.windows(2).all(|w| w[0] > w[1]), "{listed:?}");
    // Pages of two, then one: the same order.
    let first = admin
        .list_sessions(list("", false, 2, ""))
        .await
        .unwrap()
        .into_inner();
    let second = admin
        .list_sessions(list("", false, 2, &first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.sessions.len(), second.sessions.len()), (2, 1));
    assert!(second.next_page_token.is_empty());
    let paged: Vec<&str> = first
        .sessions
        .iter()
        .chain(&second.sessions)
        .map(|s| s.sid.as_str())
        .collect();
    let unpaged: Vec<&str> = listed.iter().map(|(_, sid)| sid.as_str()).collect();
    assert_eq!(paged, unpaged);
    // Filters: alice's two, alice's active one, nobody's none, and a
    // filter is a value, never SQL.
    let alices = admin
        .list_sessions(list("alice", false, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alices.sessions.len(), 2);
    let active = admin
        .list_sessions(list("alice", true, 0, ""))
        .await
        .unwrap()
        .into_inner();
    let active: Vec<&str> = active.sessions.iter().map(|s| s.sid.as_str()).collect();
    assert_eq!(active, [sids[2].as_str()]);
    let injected = admin
        .list_sessions(list("alice' OR '1'='1", false, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(injected.sessions.is_empty());
    // The revoked one's facts.
    let revoked = admin
        .get_session(identity_pb::GetSessionRequest {
            sid: sids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(revoked.user_subject, "alice");
    assert_eq!(revoked.user_issuer, idp.issuer());
    assert_eq!(revoked.agent_id, "hr-assistant");
    assert_eq!(revoked.scope, "hr:read");
    assert_eq!(json(&revoked.intent), json(INTENT));
    assert_eq!(revoked.revoke_reason, "done");
    assert!(revoked.revoked_at.is_some());
}
