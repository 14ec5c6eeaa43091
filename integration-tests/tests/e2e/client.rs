//! `tether-client` against the whole stack on loopback (test IdP with CIBA,
//! identity exchange, PDP, OpenBao and PostgreSQL behind the credential
//! issuer, approval orchestrator, facade), driven the way an agent drives
//! it: its own key, a user token, typed answers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sqlx::Connection as _;
use tether_client::{
    Acquired, AgentKey, ApprovalState, AuthorizeRequest, Client, ClientConfig, ClientConfigBuilder,
    Code, CredentialRequest, Decision, Entity, Error, IssuedCredential, LeaseStatus, RetryPolicy,
    Session, SessionState,
};
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, INTENT};
use tether_integration_tests::issuer::AGENT;
use tokio::net::{TcpListener, TcpStream};

/// Short waits so that retries do not slow the tests down.
fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        attempts,
        Duration::from_millis(10),
        Duration::from_millis(100),
    )
}

/// A configuration for `endpoint`, trusting the stack's CA.
fn config_for(stack: &FacadeStack, endpoint: String) -> ClientConfigBuilder {
    ClientConfig::builder(endpoint)
        .token_endpoint(stack.authority.identity().token_endpoint())
        .ca_file(stack.pki().ca_file())
        .retry(fast_retries(4))
}

/// `hr-assistant`'s registered key, as the agent holds it (a private JWK).
fn agent_key(stack: &FacadeStack) -> AgentKey {
    let jwk = stack.authority.agent().key.private_jwk().unwrap();
    AgentKey::from_jwk(AGENT, jwk.to_string().as_bytes()).unwrap()
}

fn client(stack: &FacadeStack) -> Client {
    let config = config_for(stack, format!("https://{}", stack.addr()))
        .build()
        .unwrap();
    Client::new(config, agent_key(stack)).unwrap()
}

async fn start(stack: &FacadeStack, client: &Client) -> Session {
    client
        .start_session(stack.authority.user_token(), INTENT, "hr:read")
        .await
        .unwrap()
}

fn employee() -> Entity {
    Entity::new("Employee", "1042")
}

fn action(name: &str) -> Entity {
    Entity::new("Action", name)
}

fn read_request() -> CredentialRequest {
    CredentialRequest::new(action("read"), employee(), "hr-read")
}

fn offboard_request() -> CredentialRequest {
    CredentialRequest::new(action("offboard"), employee(), "hr-write")
}

fn issued(acquired: Acquired) -> IssuedCredential {
    match acquired {
        Acquired::Issued(issued) => *issued,
        Acquired::ApprovalRequired(decision) => panic!("approval required: {decision:?}"),
    }
}

/// Whether `issued`'s database login still opens a connection.
async fn logs_in(stack: &FacadeStack, issued: &IssuedCredential) -> bool {
    let db = issued.credential.database().expect("a database credential");
    sqlx::PgConnection::connect_with(&stack.deps.pg.options(db.username(), db.password()))
        .await
        .is_ok()
}

/// Asserts that `text` (some `Debug` output) holds no token and none of
/// `secrets`. Every JWT starts with `eyJ` (base64url of `{"`): the user
/// token, the agent's assertions and the delegated token are all JWTs.
fn assert_no_secret(text: &str, secrets: &[&str]) {
    assert!(!text.contains("eyJ"), "a token in: {text}");
    for secret in secrets {
        assert!(!text.contains(secret), "a secret in: {text}");
    }
}

/// Plays the user's device: once the one CIBA request is pending, answers
/// it with `answer` (`approve` or `deny`).
async fn answer_when_asked(stack: &FacadeStack, answer: &str) {
    let pending = eventually(Duration::from_secs(30), || async {
        let pending = stack
            .authority
            .idp()
            .ciba_requests(&[("status", "pending")])
            .await
            .map_err(|e| e.to_string())?;
        if pending.len() == 1 {
            Ok(pending)
        } else {
            Err(format!("{} pending requests", pending.len()))
        }
    })
    .await
    .unwrap();
    stack
        .authority
        .idp()
        .ciba_device(
            pending[0]["auth_req_id"].as_str().unwrap(),
            answer,
            json!({}),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_session_authorizes_acquires_a_working_credential_and_ends() {
    let stack = FacadeStack::builder().start().await.unwrap();
    // mTLS: the agent presents a certificate from the stack's CA.
    let identity = stack.pki().tls("client-test-agent").unwrap();
    let config = config_for(&stack, format!("https://{}", stack.addr()))
        .client_identity_files(identity.cert_file.unwrap(), identity.key_file.unwrap())
        .build()
        .unwrap();
    let client = Client::new(config, agent_key(&stack)).unwrap();
    let session = start(&stack, &client).await;
    let info = session.info().clone();
    assert_eq!(info.user_subject, "alice");
    assert_eq!(info.agent_id, AGENT);
    assert_eq!(info.scope, "hr:read");
    assert!(!session.id().is_empty());
    assert!(info.expires_at.is_some() && info.session_expires_at.is_some());

    // Authorize: ALLOW and DENY are answers, with the policies that decided.
    let read = session
        .authorize(&AuthorizeRequest::new(action("read"), employee()))
        .await
        .unwrap();
    assert_eq!(read.decision, Decision::Allow, "{read:?}");
    assert!(read.is_allowed());
    assert_eq!(read.policy_ids, ["hr-read-business-hours"]);
    assert!(read.policy_version.starts_with("sha256:"), "{read:?}");
    assert!(!read.decision_id.is_empty());
    let salary = session
        .authorize(&AuthorizeRequest::new(action("update_salary"), employee()))
        .await
        .unwrap();
    assert_eq!(salary.decision, Decision::Deny, "{salary:?}");
    assert!(!salary.is_allowed());
    assert_eq!(salary.policy_ids, ["no-agent-salary-changes"]);
    assert!(salary.approval.is_none() && salary.grant.is_none());

    // AcquireCredential: a DENY is a typed error naming the policy, and
    // nothing is issued.
    let before = stack.footprint().await.unwrap();
    let denied = session
        .acquire_credential(&CredentialRequest::new(
            action("update_salary"),
            employee(),
            "hr-write",
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    assert_eq!(denied.reason(), Some("POLICY_DENIED"));
    assert_eq!(denied.policy_ids(), ["no-agent-salary-changes"]);
    assert_eq!(
        denied.rpc().unwrap().attempts(),
        1,
        "a refusal is never retried"
    );
    assert_eq!(stack.footprint().await.unwrap(), before);

    // An allowed read: a PostgreSQL login that really connects.
    let credential = issued(session.acquire_credential(&read_request()).await.unwrap());
    assert_eq!(credential.lease.profile, "hr-read");
    assert_eq!(credential.lease.status, LeaseStatus::Active);
    assert!(
        credential
            .lease
            .granted_ttl
            .is_some_and(|ttl| ttl > Duration::ZERO)
    );
    assert_eq!(
        credential.authorization.policy_ids,
        ["hr-read-business-hours"]
    );
    let db = credential.credential.database().unwrap();
    let mut conn =
        sqlx::PgConnection::connect_with(&stack.deps.pg.options(db.username(), db.password()))
            .await
            .unwrap();
    let (name,): (String,) = sqlx::query_as("SELECT name FROM hr.employees WHERE id = 1042")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!name.is_empty());
    drop(conn);

    // GetSession lists the lease, never its credential.
    let details = session.get().await.unwrap();
    assert_eq!(details.session_id, session.id());
    assert_eq!(details.state, SessionState::Active);
    assert_eq!(details.actor_chain, [AGENT]);
    let leases: Vec<&str> = details.leases.iter().map(|l| l.lease_id.as_str()).collect();
    assert_eq!(leases, [credential.lease.lease_id.as_str()]);

    // No client type shows a token or the credential.
    let (username, password) = (db.username().to_owned(), db.password().to_owned());
    let secrets = [
        stack.authority.user_token(),
        username.as_str(),
        password.as_str(),
    ];
    for text in [
        format!("{client:?}"),
        format!("{session:?}"),
        format!("{session:#?}"),
        format!("{credential:?}"),
        format!("{credential:#?}"),
        format!("{:?}", credential.credential),
        format!("{read:?}"),
        format!("{denied:?}"),
        format!("{denied}"),
        format!("{details:?}"),
        format!("{:?}", agent_key(&stack)),
    ] {
        assert_no_secret(&text, &secrets);
    }

    // End: the receipt lists the lease; the token is refused at once; the
    // credential stops working.
    let receipt = session.end("task complete").await.unwrap();
    assert_eq!(receipt.session_id, session.id());
    assert!(!receipt.already_ended);
    assert!(receipt.session_revoked_at.is_some());
    let listed: Vec<&str> = receipt
        .revoked_leases
        .iter()
        .chain(&receipt.pending_leases)
        .map(|l| l.lease_id.as_str())
        .collect();
    assert_eq!(listed, [credential.lease.lease_id.as_str()], "{receipt:?}");
    assert_no_secret(&format!("{receipt:?}"), &secrets);
    let after = session
        .authorize(&AuthorizeRequest::new(action("read"), employee()))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after}");
    assert_eq!(after.reason(), Some("SESSION_ENDED"));
    assert_no_secret(&format!("{after:?} {after}"), &secrets);
    eventually(Duration::from_secs(20), || async {
        if logs_in(&stack, &credential).await {
            Err("the credential still logs in")
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    // EndSession is idempotent; GetSession still describes the session.
    assert!(session.end("again").await.unwrap().already_ended);
    assert_eq!(session.get().await.unwrap().state, SessionState::Ended);
}

#[tokio::test]
async fn a_step_up_waits_on_watch_approval_while_the_user_approves_then_issues() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = start(&stack, &client(&stack)).await;

    let request = offboard_request().wait_for_approval(Duration::from_secs(60));
    let (acquired, ()) = tokio::join!(
        session.acquire_credential(&request),
        answer_when_asked(&stack, "approve")
    );
    let credential = issued(acquired.unwrap());
    assert_eq!(credential.lease.profile, "hr-write");
    assert_eq!(credential.authorization.policy_ids, ["hr-offboard"]);
    let grant = credential
        .authorization
        .grant
        .clone()
        .expect("the allow used the approval's grant");
    assert!(!grant.ticket_id.is_empty());
    assert!(logs_in(&stack, &credential).await);
    let footprint = stack.footprint().await.unwrap();
    assert_eq!(footprint.prompts, Some(1), "the user was asked once");
    assert_eq!(footprint.leases, 1);
    session.end("done").await.unwrap();
}

#[tokio::test]
async fn a_denied_approval_is_a_typed_error_and_issues_nothing() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = start(&stack, &client(&stack)).await;

    let request = offboard_request().wait_for_approval(Duration::from_secs(60));
    let (acquired, ()) = tokio::join!(
        session.acquire_credential(&request),
        answer_when_asked(&stack, "deny")
    );
    let err = acquired.unwrap_err();
    let Error::ApprovalNotGranted { ticket } = &err else {
        panic!("not an approval error: {err:?}");
    };
    assert_eq!(ticket.state, ApprovalState::Denied, "{ticket:?}");
    assert!(ticket.decided_at.is_some());
    assert!(
        ticket
            .binding_message
            .starts_with("Offboard employee 1042?"),
        "{ticket:?}"
    );
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.to_string().contains("DENIED"), "{err}");
    let footprint = stack.footprint().await.unwrap();
    assert_eq!((footprint.leases, footprint.grants), (0, 0));
    assert!(footprint.roles.is_empty());

    // Asking again during the cool-down: refused with when to retry, and
    // not retried by the client (RESOURCE_EXHAUSTED is an answer).
    let again = session.acquire_credential(&request).await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again}");
    assert_eq!(again.reason(), Some("APPROVAL_COOL_DOWN"));
    assert!(
        again.retry_after().is_some_and(|d| d > Duration::ZERO),
        "{again:?}"
    );
    assert_eq!(again.rpc().unwrap().attempts(), 1);
    assert_eq!(stack.footprint().await.unwrap().prompts, Some(1));
}

#[tokio::test]
async fn watch_approval_streams_snapshots_until_the_session_end_cancels_the_ticket() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = start(&stack, &client(&stack)).await;
    let Acquired::ApprovalRequired(decision) = session
        .acquire_credential(&offboard_request())
        .await
        .unwrap()
    else {
        panic!("issued without an approval");
    };
    assert_eq!(decision.decision, Decision::ApprovalRequired);
    assert_eq!(decision.policy_ids, ["offboard-needs-approval"]);
    let approval = decision.approval.clone().unwrap();
    assert!(approval.retry_after.is_some());
    let ticket_id = approval.ticket.ticket_id.clone();

    let mut watch = session.watch_approval(&ticket_id).await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.state, ApprovalState::Pending);
    assert_eq!(first.ticket_id, ticket_id);
    assert_eq!(first.action, Some(action("offboard")));

    let receipt = session.end("user left").await.unwrap();
    assert_eq!(receipt.cancelled_ticket_ids, [ticket_id.as_str()]);
    let mut last = first;
    while let Some(snapshot) = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("a snapshot within the keepalive")
        .unwrap()
    {
        last = snapshot;
    }
    assert_eq!(last.state, ApprovalState::Cancelled, "{last:?}");

    // Waiting on it now: the session is over, a typed refusal, not retried.
    let err = session
        .wait_for_approval(&ticket_id, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(err.rpc().unwrap().attempts(), 1);
    // Bad ticket ids never leave the client.
    for bad in ["", "t\r\n1", &"t".repeat(129)] {
        let err = session.watch_approval(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.rpc().is_none());
    }
}

/// A loopback listener that counts connections and closes each at once:
/// a facade that is not there.
async fn refusing_listener() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, seen)
}

/// A front for `target` that closes its first `refuse` connections (a
/// facade still starting) and forwards the others.
async fn flaky_front(
    target: std::net::SocketAddr,
    refuse: usize,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if counter.fetch_add(1, Ordering::SeqCst) < refuse {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn an_unreachable_facade_is_retried_a_bounded_number_of_times_then_reported() {
    // No stack needed: nothing answers.
    let (addr, seen) = refusing_listener().await;
    let ca = tether_integration_tests::pki::TestPki::new().unwrap();
    ca.tls("agent-facade").unwrap();
    let config = ClientConfig::builder(format!("https://{addr}"))
        .token_endpoint("https://127.0.0.1:1/token")
        .ca_file(ca.ca_file())
        .retry(fast_retries(3))
        .build()
        .unwrap();
    let key = AgentKey::from_jwk(
        AGENT,
        tether_token::SigningKey::generate()
            .unwrap()
            .private_jwk()
            .unwrap()
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let client = Client::new(config, key).unwrap();
    let err = client
        .start_session("not-a-real-user-token", INTENT, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.rpc().unwrap().attempts(), 3, "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "one connection per attempt");
    assert_no_secret(&format!("{err:?} {err}"), &["not-a-real-user-token"]);
}

#[tokio::test]
async fn a_facade_that_comes_up_late_is_reached_by_retrying_and_a_wrong_ca_is_refused() {
    let stack = FacadeStack::builder().start().await.unwrap();
    // The agent's key from a PEM file, as an operator would deploy it.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("agent-key.pem");
    stack.authority.agent().key.save(&key_file).unwrap();

    // A CA that did not sign the facade's certificate: no session, however
    // often the client tries.
    let other = tether_integration_tests::pki::TestPki::new().unwrap();
    other.tls("agent-facade").unwrap();
    let before = stack.footprint().await.unwrap();
    let wrong_ca = ClientConfig::builder(format!("https://{}", stack.addr()))
        .token_endpoint(stack.authority.identity().token_endpoint())
        .ca_file(other.ca_file())
        .retry(fast_retries(2))
        .build()
        .unwrap();
    let err = Client::new(wrong_ca, AgentKey::from_file(AGENT, &key_file).unwrap())
        .unwrap()
        .start_session(stack.authority.user_token(), INTENT, "hr:read")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(stack.footprint().await.unwrap(), before);

    // The first two connections are refused: the third attempt gets the
    // session (each attempt with its own fresh assertion).
    let (front, seen) = flaky_front(stack.addr(), 2).await;
    let config = config_for(&stack, format!("https://{front}"))
        .server_name("localhost")
        .retry(fast_retries(3))
        .build()
        .unwrap();
    let client = Client::new(config, AgentKey::from_file(AGENT, &key_file).unwrap()).unwrap();
    let session = start(&stack, &client).await;
    assert_eq!(session.info().user_subject, "alice");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    let answer = session
        .authorize(&AuthorizeRequest::new(action("read"), employee()))
        .await
        .unwrap();
    assert!(answer.is_allowed(), "{answer:?}");
    session.end("done").await.unwrap();
}

#[tokio::test]
async fn start_session_retries_unavailable_with_a_fresh_assertion_each_time() {
    let mut stack = FacadeStack::builder().start().await.unwrap();
    // The IdP is down before any session: the identity exchange consumes
    // the agent's assertion, then cannot verify the user token
    // (UNAVAILABLE). A reused assertion would be refused as a replay
    // (UNAUTHENTICATED) on the second attempt.
    stack.authority.idp_mut().stop().await.unwrap();
    let config = config_for(&stack, format!("https://{}", stack.addr()))
        .retry(fast_retries(3))
        .build()
        .unwrap();
    let client = Client::new(config, agent_key(&stack)).unwrap();
    let err = client
        .start_session(stack.authority.user_token(), INTENT, "hr:read")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.reason(), Some("DEPENDENCY_UNAVAILABLE"), "{err}");
    assert_eq!(err.rpc().unwrap().attempts(), 3, "{err}");
    assert_no_secret(&format!("{err:?} {err}"), &[stack.authority.user_token()]);

    // Three attempts, three different assertions consumed; no session.
    let identity = tether_store::open(
        &tether_store::sqlite_url(&stack.authority.identity().store_path()),
        "identity_exchange",
        &tether_store::PoolSettings::default(),
    )
    .await
    .unwrap();
    let (used, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT jti) FROM used_assertions")
            .fetch_one(&identity)
            .await
            .unwrap();
    identity.close().await;
    assert_eq!((used, distinct), (3, 3));
    assert_eq!(stack.footprint().await.unwrap().sessions, 0);
}
