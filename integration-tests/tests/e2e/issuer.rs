//! The credential issuer against a real OpenBao 2.7.2 dev server and a real
//! PostgreSQL 15 cluster, over real gRPC on loopback, with a real identity
//! exchange (and the real test IdP) minting the delegated tokens that bind
//! Issue and Renew to a session.
//!
//! Tokens: every session is a real token exchange (alice logged in at the
//! test IdP once per test, then one RFC 8693 exchange per session, ~10 ms).
//! Only tokens the exchange would never mint (expired, another audience or
//! issuer, or shorter-lived than 15 minutes for the TTL tests) are signed
//! with the identity exchange's own key ring, changing just that claim.
//!
//! Needs OpenBao and the test IdP (`integration-tests/run.sh test` installs
//! them): without them these tests fail with a message saying so; they never
//! skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tether_credential_issuer::{LeaseStatus, Limits, Registry, Secret, VaultAuth};
use tether_integration_tests::eventually;
use tether_integration_tests::identity::FACADE_AUDIENCE;
use tether_integration_tests::issuer::{
    AGENT, CredentialDeps, DelegatedSession, IssuerSandbox, SessionAuthority, bearer, hr_profiles,
};
use tether_integration_tests::postgres::free_port;
use tether_proto::credentials::v1::{
    Credential, IssueRequest, IssueResponse, Lease, LeaseStatus as PbStatus, ListLeasesRequest,
    RenewRequest, RenewResponse, RevokeSessionRequest, credential,
};
use tether_runtime::ServerConfig;
use tonic::Code;

const READ_PATH: &str = "database/creds/hr-readonly";

/// An Issue request as the facade sends it now: no session fields (the
/// session comes from the bearer token).
fn issue_req(profile: &str) -> IssueRequest {
    IssueRequest {
        profile: profile.into(),
        requested_ttl: None,
        intent: r#"[{"type":"hr_review","employee":"1042"}]"#.into(),
        action: r#"Action::"read""#.into(),
        resource: r#"Employee::"1042""#.into(),
        policy_version: "sha256:00".into(),
        decision_id: "d-1".into(),
        policy_ids: vec!["hr-read".into()],
        approval_ticket_id: String::new(),
        ..IssueRequest::default()
    }
}

/// `req` also naming a session and claiming a user, agent and expiry, in
/// the deprecated fields the issuer must not trust.
#[expect(
    deprecated,
    reason = "tests that the deprecated session fields are ignored or only cross-checked"
)]
fn naming(req: IssueRequest, session: &str) -> IssueRequest {
    IssueRequest {
        session_id: session.into(),
        session_expires_at: Some(prost_types::Timestamp {
            seconds: tether_token::unix_now() - 10,
            nanos: 0,
        }),
        user_subject: "mallory".into(),
        agent_id: "rogue-agent".into(),
        ..req
    }
}

fn renew_req(lease_id: &str, increment_secs: Option<i64>) -> RenewRequest {
    RenewRequest {
        lease_id: lease_id.into(),
        increment: increment_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        ..RenewRequest::default()
    }
}

/// `req` also naming a session in the deprecated field.
#[expect(
    deprecated,
    reason = "tests that the deprecated session field is only cross-checked"
)]
fn renew_naming(req: RenewRequest, session: &str) -> RenewRequest {
    RenewRequest {
        session_id: session.into(),
        ..req
    }
}

fn login(cred: &Credential) -> (String, String) {
    match cred.kind.as_ref().unwrap() {
        credential::Kind::Database(d) => (d.username.clone(), d.password.clone()),
        credential::Kind::Generic(_) => panic!("expected a database credential"),
    }
}

async fn connect_as(deps: &CredentialDeps, cred: &Credential) -> Result<PgConnection, sqlx::Error> {
    let (user, password) = login(cred);
    PgConnection::connect_with(&deps.pg.options(&user, &password)).await
}

async fn issue(
    sandbox: &IssuerSandbox,
    session: &DelegatedSession,
    req: IssueRequest,
) -> Result<IssueResponse, tonic::Status> {
    sandbox
        .client()
        .issue(session.request(req))
        .await
        .map(tonic::Response::into_inner)
}

async fn renew(
    sandbox: &IssuerSandbox,
    session: &DelegatedSession,
    req: RenewRequest,
) -> Result<RenewResponse, tonic::Status> {
    sandbox
        .client()
        .renew(session.request(req))
        .await
        .map(tonic::Response::into_inner)
}

async fn revoke_session(sandbox: &IssuerSandbox, sid: &str) {
    sandbox
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: sid.into(),
            reason: String::new(),
        })
        .await
        .unwrap();
}

async fn list(sandbox: &IssuerSandbox, session: &str) -> Vec<Lease> {
    sandbox
        .client()
        .list_leases(ListLeasesRequest {
            session_id: session.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .leases
}

async fn registry_rows(registry: &Registry) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM credential_leases")
        .fetch_one(registry.pool())
        .await
        .unwrap();
    n
}

/// Lease rows of one session in the registry.
async fn session_rows(registry: &Registry, sid: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM credential_leases WHERE session_id = $1")
            .bind(sid)
            .fetch_one(registry.pool())
            .await
            .unwrap();
    n
}

/// What exists before a refused call: PostgreSQL roles and Vault leases.
struct Before {
    roles: Vec<String>,
    vault_leases: Vec<String>,
}

async fn before(deps: &CredentialDeps) -> Before {
    let mut roles = deps.pg.roles_like("v-").await.unwrap();
    roles.sort();
    let mut vault_leases = deps.bao.leases(READ_PATH).await.unwrap();
    vault_leases.sort();
    Before {
        roles,
        vault_leases,
    }
}

/// Nothing was issued for `sid`: no lease row, `pg_roles` and Vault's
/// leases as they were.
async fn assert_nothing_issued(
    what: &str,
    issuer: &IssuerSandbox,
    deps: &CredentialDeps,
    sid: &str,
    was: &Before,
) {
    assert_eq!(
        session_rows(issuer.registry().unwrap(), sid).await,
        0,
        "{what}: a lease row was written"
    );
    let now = before(deps).await;
    assert_eq!(now.roles, was.roles, "{what}: pg_roles changed");
    assert_eq!(
        now.vault_leases, was.vault_leases,
        "{what}: vault leases changed"
    );
}

async fn deps() -> CredentialDeps {
    CredentialDeps::start(600)
        .await
        .expect("starting OpenBao and PostgreSQL (run `integration-tests/run.sh test`)")
}

async fn authority() -> SessionAuthority {
    SessionAuthority::start().await.expect(
        "starting the test IdP and the identity exchange (run `integration-tests/run.sh test`)",
    )
}

/// OpenBao + PostgreSQL and the IdP + identity exchange, started together.
async fn stack() -> (CredentialDeps, SessionAuthority) {
    tokio::join!(deps(), authority())
}

#[tokio::test]
async fn issued_credential_selects_but_cannot_insert_and_dies_with_the_session() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();

    let resp = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    let lease = resp.lease.clone().unwrap();
    assert_eq!(lease.status(), PbStatus::Active);
    assert_eq!(lease.session_id, session.sid());
    assert_eq!(lease.vault_path, READ_PATH);
    assert!(lease.vault_lease_id.starts_with(READ_PATH));
    assert_eq!(
        lease.granted_ttl.unwrap().seconds,
        600,
        "the role's default TTL, capped at the profile's 600 s"
    );
    let cred = resp.credential.unwrap();

    let mut conn = connect_as(&deps, &cred).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM hr.employees")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let err = sqlx::query("INSERT INTO hr.employees VALUES (9, 'Mallory', 'it')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    conn.close().await.unwrap();
    let (user, _) = login(&cred);
    assert_eq!(deps.pg.roles_like(&user).await.unwrap(), vec![user.clone()]);

    let revoked = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: "session ended by agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked.len(), 1, "{revoked:?}");
    assert!(revoked.pending.is_empty());
    assert!(!revoked.already_ended);
    assert_eq!(revoked.revoked[0].status(), PbStatus::Revoked);
    assert!(revoked.revoked[0].revoked_at.is_some());

    // Gone for real: no login, no role, no Vault lease.
    let err = connect_as(&deps, &cred).await.unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(deps.pg.roles_like(&user).await.unwrap().is_empty());
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());

    // Idempotent, and an ended session never gets a new lease, even with
    // a token that is still valid.
    let again = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_ended);
    assert_eq!(again.revoked.len(), 1);
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("ended"), "{status:?}");
    assert_eq!(list(&issuer, session.sid()).await.len(), 1);
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_writer_profile_can_insert() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let resp = issue(&issuer, &session, issue_req("hr-write"))
        .await
        .unwrap();
    let mut conn = connect_as(&deps, resp.credential.as_ref().unwrap())
        .await
        .unwrap();
    sqlx::query("INSERT INTO hr.employees VALUES (7, 'Linus', 'it')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn ttl_is_capped_by_the_session_and_expiry_kills_the_login() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();

    // A requested TTL below everything else wins.
    let session = auth.session().await.unwrap();
    let mut req = issue_req("hr-read");
    req.requested_ttl = Some(prost_types::Duration {
        seconds: 30,
        nanos: 0,
    });
    let lease = issue(&issuer, &session, req).await.unwrap().lease.unwrap();
    assert_eq!(lease.granted_ttl.unwrap().seconds, 30);

    // The token (and so the session, as far as the issuer knows) ends in
    // 5 s: Vault's 600 s default is cut to what is left.
    let expiring = auth.session_ending_in(5).await.unwrap();
    let resp = issue(&issuer, &expiring, issue_req("hr-read"))
        .await
        .unwrap();
    let lease = resp.lease.unwrap();
    let granted = lease.granted_ttl.unwrap().seconds;
    assert!((1..=5).contains(&granted), "granted {granted} s");
    assert!(lease.expires_at.unwrap().seconds <= expiring.claims.exp);
    let cred = resp.credential.unwrap();
    let (user, _) = login(&cred);
    connect_as(&deps, &cred)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    // After expiry: Vault revoked it on its own, the login fails, the role
    // is gone, and the sweeper records EXPIRED.
    eventually(Duration::from_secs(30), || async {
        if deps.pg.roles_like(&user).await?.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("role `{user}` still exists"))
        }
    })
    .await
    .unwrap();
    assert!(connect_as(&deps, &cred).await.is_err());
    eventually(Duration::from_secs(20), || async {
        let leases = list(&issuer, expiring.sid()).await;
        if leases[0].status() == PbStatus::Expired {
            Ok(())
        } else {
            Err(format!("{:?}", leases[0].status()))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn renew_extends_but_never_past_the_token_or_the_profile() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .profiles(hr_profiles(20))
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let mut req = issue_req("hr-read");
    req.requested_ttl = Some(prost_types::Duration {
        seconds: 5,
        nanos: 0,
    });
    let lease = issue(&issuer, &session, req).await.unwrap().lease.unwrap();
    assert_eq!(lease.granted_ttl.unwrap().seconds, 5);

    let renewed = renew(&issuer, &session, renew_req(&lease.lease_id, Some(3600)))
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(
        renewed.granted_ttl.unwrap().seconds,
        20,
        "capped at the profile's 20 s"
    );
    assert!(renewed.expires_at.unwrap().seconds <= session.claims.exp);

    // A token of the same session that ends sooner (the exchange's own key,
    // an earlier `exp`) renews no further than it lives.
    let soon = tether_token::unix_now() + 8;
    let short = DelegatedSession {
        token: auth.forge(&session, |c| c.exp = soon).unwrap(),
        claims: session.claims.clone(),
    };
    let renewed = renew(&issuer, &short, renew_req(&lease.lease_id, None))
        .await
        .unwrap()
        .lease
        .unwrap();
    let granted = renewed.granted_ttl.unwrap().seconds;
    assert!((1..=8).contains(&granted), "granted {granted} s");
    assert!(renewed.expires_at.unwrap().seconds <= soon);

    // A bad increment is refused.
    let status = renew(&issuer, &session, renew_req(&lease.lease_id, Some(-1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    revoke_session(&issuer, session.sid()).await;
    let status = renew(&issuer, &session, renew_req(&lease.lease_id, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_issued() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .server(ServerConfig {
            max_message_bytes: 64 * 1024,
            ..ServerConfig::default()
        })
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let base = || issue_req("hr-read");
    let cases: Vec<(&str, IssueRequest, Code, &str)> = vec![
        (
            "unknown profile",
            IssueRequest {
                profile: "database/creds/hr-writer".into(),
                ..base()
            },
            Code::InvalidArgument,
            "unknown credential profile `database/creds/hr-writer`",
        ),
        (
            "no profile",
            IssueRequest {
                profile: String::new(),
                ..base()
            },
            Code::InvalidArgument,
            "missing `profile`",
        ),
        (
            "long profile",
            IssueRequest {
                profile: "p".repeat(129),
                ..base()
            },
            Code::InvalidArgument,
            "`profile` is 129 bytes",
        ),
        (
            "control chars",
            IssueRequest {
                profile: "hr\nread".into(),
                ..base()
            },
            Code::InvalidArgument,
            "control characters",
        ),
        (
            "zero ttl",
            IssueRequest {
                requested_ttl: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..base()
            },
            Code::InvalidArgument,
            "`requested_ttl` must be positive",
        ),
        (
            "negative ttl",
            IssueRequest {
                requested_ttl: Some(prost_types::Duration {
                    seconds: -60,
                    nanos: 0,
                }),
                ..base()
            },
            Code::InvalidArgument,
            "`requested_ttl` must be positive",
        ),
        (
            "big intent",
            IssueRequest {
                intent: "x".repeat(9 * 1024),
                ..base()
            },
            Code::InvalidArgument,
            "`intent` is 9216 bytes, the limit is 8192",
        ),
        (
            "big action",
            IssueRequest {
                action: "x".repeat(600),
                ..base()
            },
            Code::InvalidArgument,
            "`action` is 600 bytes",
        ),
        (
            "many policy ids",
            IssueRequest {
                policy_ids: vec!["p".into(); 300],
                ..base()
            },
            Code::InvalidArgument,
            "`policy_ids` has 300 entries",
        ),
    ];
    for (name, req, code, message) in cases {
        let status = issue(&issuer, &session, req).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: `{}` lacks `{message}`",
            status.message()
        );
    }
    // Over the transport limit: refused before the handler runs.
    let status = issue(
        &issuer,
        &session,
        IssueRequest {
            intent: "x".repeat(100 * 1024),
            ..base()
        },
    )
    .await
    .unwrap_err();
    // libs/runtime's message limit: RESOURCE_EXHAUSTED (tonic's own
    // decoder would say OUT_OF_RANGE).
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The other RPCs.
    let mut client = issuer.client();
    let status = client
        .list_leases(ListLeasesRequest {
            session_id: "s-bad".into(),
            page_size: 1001,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .list_leases(ListLeasesRequest {
            session_id: "s-bad".into(),
            page_size: 10,
            page_token: "5.0000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("page_token"));
    let status = client
        .revoke_session(RevokeSessionRequest {
            session_id: "s-bad".into(),
            reason: "r".repeat(257),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .revoke_session(RevokeSessionRequest {
            session_id: String::new(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = renew(&issuer, &session, renew_req("no-such-lease", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = renew(&issuer, &session, renew_req("", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // An unknown session lists as empty.
    assert!(list(&issuer, "s-unknown").await.is_empty());

    // Nothing was issued or stored anywhere.
    let registry = issuer.registry().unwrap();
    assert_eq!(registry_rows(registry).await, 0);
    let (sessions,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM credential_sessions")
        .fetch_one(registry.pool())
        .await
        .unwrap();
    assert_eq!(sessions, 0, "bad input recorded a session");
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
    assert!(deps.pg.roles_like("v-").await.unwrap().is_empty());
}

// ---- session binding: the bearer token decides the session -------------

#[tokio::test]
async fn issue_without_a_bearer_token_is_unauthenticated_and_nothing_is_issued() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let was = before(&deps).await;

    // No metadata at all, even naming a real session in the request.
    let status = issuer
        .client()
        .issue(naming(issue_req("hr-read"), session.sid()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("authorization"), "{status:?}");
    assert_nothing_issued("no token", &issuer, &deps, session.sid(), &was).await;

    // Malformed `authorization` metadata.
    for (what, value) in [
        ("basic auth", format!("Basic {}", session.token)),
        ("no scheme", session.token.clone()),
        ("empty bearer", "Bearer ".to_owned()),
        ("not a jwt", "Bearer not-a-jwt".to_owned()),
    ] {
        let mut request = tonic::Request::new(issue_req("hr-read"));
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let status = issuer.client().issue(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            !status.message().contains(&session.token),
            "{what}: the token is echoed"
        );
        assert_nothing_issued(what, &issuer, &deps, session.sid(), &was).await;
    }
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 0);
}

#[tokio::test]
async fn a_token_of_another_session_is_permission_denied_and_nothing_is_issued() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    // Two genuine sessions of the same agent for the same user.
    let a = auth.session().await.unwrap();
    let b = auth.session().await.unwrap();
    assert_ne!(a.sid(), b.sid());
    let was = before(&deps).await;

    // A's token, a request naming B.
    let status = issue(&issuer, &a, naming(issue_req("hr-read"), b.sid()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "the bearer token is for another session");
    assert_nothing_issued("A's token for B", &issuer, &deps, b.sid(), &was).await;
    assert_nothing_issued("A's token for B", &issuer, &deps, a.sid(), &was).await;
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 0);
}

#[tokio::test]
async fn a_revoked_sessions_token_is_unauthenticated_and_nothing_is_issued() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let lease = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap()
        .lease
        .unwrap();

    // Revoked at the identity exchange (its real RevokeSession).
    auth.revoke(session.sid()).await.unwrap();
    // Wait until the issuer's copy of the revocation list has it, probing
    // with a Renew of a lease that does not exist (no side effect: NOT_FOUND
    // while the token still passes, UNAUTHENTICATED once it does not).
    eventually(Duration::from_secs(10), || async {
        match renew(&issuer, &session, renew_req("no-such-lease", None)).await {
            Err(s) if s.code() == Code::Unauthenticated => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    let rows = session_rows(issuer.registry().unwrap(), session.sid()).await;
    let was = before(&deps).await;
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "session revoked");
    assert_eq!(
        session_rows(issuer.registry().unwrap(), session.sid()).await,
        rows,
        "a lease row was written"
    );
    let now = before(&deps).await;
    assert_eq!(now.roles, was.roles, "pg_roles changed");
    assert_eq!(now.vault_leases, was.vault_leases);

    // Nor is a lease renewed with it.
    let status = renew(&issuer, &session, renew_req(&lease.lease_id, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Ending the session's credentials needs no token (it may be revoked).
    revoke_session(&issuer, session.sid()).await;
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
}

#[tokio::test]
async fn tokens_the_exchange_did_not_mint_for_this_issuer_are_unauthenticated() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let now = tether_token::unix_now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired (beyond the 30 s leeway)",
            auth.forge(&session, |c| {
                c.iat = now - 600;
                c.exp = now - 120;
            })
            .unwrap(),
            "expired",
        ),
        (
            "signed by a key the exchange never published",
            auth.forge_with_unknown_key(&session).unwrap(),
            "unknown",
        ),
        (
            "for another audience",
            auth.forge(&session, |c| c.aud = "https://tether.local/other".into())
                .unwrap(),
            "audience",
        ),
        (
            "from another issuer",
            auth.forge(&session, |c| c.iss = "https://evil.example".into())
                .unwrap(),
            "issuer",
        ),
        (
            "tampered payload (user changed, signature kept)",
            {
                let other = auth.forge(&session, |c| c.sub = "mallory".into()).unwrap();
                let mut parts: Vec<&str> = session.token.split('.').collect();
                parts[1] = other.split('.').nth(1).unwrap();
                parts.join(".")
            },
            "signature",
        ),
    ];
    for (what, token, message) in cases {
        let was = before(&deps).await;
        let status = issuer
            .client()
            .issue(bearer(issue_req("hr-read"), &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains(message),
            "{what}: `{}` lacks `{message}`",
            status.message()
        );
        assert!(!status.message().contains(&token), "{what}: token echoed");
        assert_nothing_issued(what, &issuer, &deps, session.sid(), &was).await;
    }
    // The genuine token of the same session works.
    issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
}

#[tokio::test]
async fn renew_with_another_sessions_token_is_refused_and_the_lease_is_unchanged() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let a = auth.session().await.unwrap();
    let b = auth.session().await.unwrap();
    let mut req = issue_req("hr-read");
    req.requested_ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let lease = issue(&issuer, &a, req).await.unwrap().lease.unwrap();
    let unchanged = || async {
        let leases = list(&issuer, a.sid()).await;
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].expires_at, lease.expires_at, "the lease moved");
        assert_eq!(leases[0].granted_ttl, lease.granted_ttl);
        assert_eq!(session_rows(issuer.registry().unwrap(), b.sid()).await, 0);
    };

    // B's token for A's lease: NOT_FOUND, as for a lease id that does not
    // exist (a token learns nothing about other sessions' leases).
    let status = renew(&issuer, &b, renew_req(&lease.lease_id, Some(600)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    unchanged().await;

    // B's token naming A: the request contradicts its token.
    let status = renew(
        &issuer,
        &b,
        renew_naming(renew_req(&lease.lease_id, Some(600)), a.sid()),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    unchanged().await;

    // No token at all.
    let status = issuer
        .client()
        .renew(renew_naming(renew_req(&lease.lease_id, Some(600)), a.sid()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    unchanged().await;

    // A's own token renews it.
    let renewed = renew(&issuer, &a, renew_req(&lease.lease_id, Some(600)))
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(renewed.granted_ttl.unwrap().seconds, 600);
}

#[tokio::test]
async fn unreachable_keys_or_a_stale_revocation_list_is_unavailable_and_nothing_is_issued() {
    let (deps, auth) = stack().await;
    let session = auth.session().await.unwrap();
    let dead = free_port().unwrap();

    // The revocation feed cannot be reached: the list never becomes
    // current, so every token is refused (fail closed).
    let mut sessions = auth.sessions_config();
    sessions.identity_exchange = format!("https://127.0.0.1:{dead}");
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .sessions(sessions)
        .start()
        .await
        .unwrap();
    let was = before(&deps).await;
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("revocation list"), "{status:?}");
    assert!(!status.message().contains(&dead.to_string()), "{status:?}");
    assert_nothing_issued("stale revocation list", &issuer, &deps, session.sid(), &was).await;
    drop(issuer);

    // The keys cannot be fetched.
    let mut sessions = auth.sessions_config();
    sessions.jwks_url = format!("https://127.0.0.1:{dead}/.well-known/jwks.json");
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .sessions(sessions)
        .start()
        .await
        .unwrap();
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_nothing_issued("keys unreachable", &issuer, &deps, session.sid(), &was).await;
}

#[tokio::test]
async fn session_user_agent_and_expiry_come_from_the_token_not_the_request() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    assert_eq!(session.claims.aud, FACADE_AUDIENCE);
    // The deprecated fields claim an expired session, another user and
    // another agent; the request names the token's own session.
    let resp = issue(
        &issuer,
        &session,
        naming(issue_req("hr-read"), session.sid()),
    )
    .await
    .unwrap();
    let lease = resp.lease.unwrap();
    assert_eq!(lease.session_id, session.sid());
    assert!(lease.expires_at.unwrap().seconds <= session.claims.exp);
    let (user, agent): (String, String) =
        sqlx::query_as("SELECT user_subject, agent_id FROM credential_leases WHERE id = $1")
            .bind(&lease.lease_id)
            .fetch_one(issuer.registry().unwrap().pool())
            .await
            .unwrap();
    assert_eq!(user, session.claims.sub);
    assert_eq!(user, "alice");
    assert_eq!(agent, AGENT);
    let (expires_at,): (i64,) =
        sqlx::query_as("SELECT expires_at FROM credential_sessions WHERE session_id = $1")
            .bind(session.sid())
            .fetch_one(issuer.registry().unwrap().pool())
            .await
            .unwrap();
    assert_eq!(
        expires_at,
        session.claims.exp * 1000,
        "the session ends with the token"
    );
    // Without naming any session, the lease goes to the token's session too.
    let lease = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(lease.session_id, session.sid());
    assert_eq!(list(&issuer, session.sid()).await.len(), 2);
}

// ---- registry, Vault and revocation ------------------------------------

#[tokio::test]
async fn session_lease_limit_is_resource_exhausted() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .limits(Limits {
            max_leases_per_session: 2,
        })
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    for _ in 0..2 {
        issue(&issuer, &session, issue_req("hr-read"))
            .await
            .unwrap();
    }
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(list(&issuer, session.sid()).await.len(), 2);
    assert_eq!(deps.bao.leases(READ_PATH).await.unwrap().len(), 2);
}

#[tokio::test]
async fn vault_unreachable_is_unavailable_and_nothing_is_half_issued() {
    let auth = authority().await;
    let session = auth.session().await.unwrap();
    // Nothing listens on this port.
    let port = free_port().unwrap();
    let issuer = IssuerSandbox::builder(format!("http://127.0.0.1:{port}"), auth.identity())
        .start()
        .await
        .unwrap();
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no credential was issued"),
        "{status:?}"
    );
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 0);
    assert!(list(&issuer, session.sid()).await.is_empty());

    // And when the server dies under a running issuer.
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    let CredentialDeps { bao, pg } = deps;
    drop(bao);
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 1);
    assert_eq!(list(&issuer, session.sid()).await.len(), 1);
    assert_eq!(pg.roles_like("v-").await.unwrap().len(), 1);
}

#[tokio::test]
async fn vault_sealed_is_unavailable_and_nothing_is_issued() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    deps.bao.seal().await.unwrap();
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("sealed"), "{status:?}");
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 1);
    assert_eq!(deps.pg.roles_like("v-").await.unwrap().len(), 1);
}

#[tokio::test]
async fn database_down_at_revocation_is_retried_until_it_succeeds() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let sid = session.sid();
    let mut users = Vec::new();
    for _ in 0..2 {
        let resp = issue(&issuer, &session, issue_req("hr-read"))
            .await
            .unwrap();
        users.push(login(resp.credential.as_ref().unwrap()).0);
    }
    deps.pg.stop().unwrap();
    let resp = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: sid.into(),
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.revoked.is_empty(), "{resp:?}");
    assert_eq!(resp.pending.len(), 2);

    // Visible while failing: status, attempts, last error, the counter; and
    // it keeps trying.
    eventually(Duration::from_secs(20), || async {
        let leases = list(&issuer, sid).await;
        if leases.iter().all(|l| {
            l.status() == PbStatus::RevocationFailed
                && l.revocation_attempts >= 3
                && !l.last_error.is_empty()
                && l.next_attempt_at.is_some()
        }) {
            Ok(())
        } else {
            Err(format!("{leases:?}"))
        }
    })
    .await
    .unwrap();
    assert!(
        tether_credential_issuer::Metrics::get(&issuer.metrics().unwrap().revocation_failures) >= 6
    );
    // The same counter, as a scraper sees it on the service's own port.
    let scraped = auth
        .identity()
        .http()
        .get(format!("https://{}/metrics", issuer.addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: u64 = scraped
        .lines()
        .find_map(|l| l.strip_prefix("tether_lease_revocation_failures_total "))
        .expect("the failure counter is exported")
        .parse()
        .unwrap();
    assert!(failures >= 6, "{scraped}");

    deps.pg.start_again().unwrap();
    eventually(Duration::from_secs(30), || async {
        let leases = list(&issuer, sid).await;
        if leases.iter().all(|l| l.status() == PbStatus::Revoked) {
            Ok(())
        } else {
            Err(format!("{leases:?}"))
        }
    })
    .await
    .unwrap();
    for user in users {
        assert!(
            deps.pg.roles_like(&user).await.unwrap().is_empty(),
            "{user} still exists"
        );
    }
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
}

#[tokio::test]
async fn orphan_sweep_revokes_vault_leases_no_session_owns() {
    let (deps, auth) = stack().await;
    // A lease on a managed path that the registry does not know (e.g. from
    // a crash before its row existed, or issued behind Tether's back).
    let (orphan, user, _) = deps.bao.issue_direct("hr-readonly").await.unwrap();
    // An unmanaged path is left alone.
    let profiles = {
        let mut p = hr_profiles(600);
        p.remove("hr-write");
        p
    };
    let (unmanaged, unmanaged_user, _) = deps.bao.issue_direct("hr-writer").await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .profiles(profiles)
        .vault_timeout_ms(500)
        .start()
        .await
        .unwrap();
    // A lease the registry owns survives the sweep.
    let session = auth.session().await.unwrap();
    let owned = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        let leases = deps.bao.leases(READ_PATH).await?;
        if leases.contains(&orphan) {
            Err(anyhow::anyhow!("orphan still there"))
        } else {
            Ok(leases)
        }
    })
    .await
    .unwrap();
    assert!(deps.pg.roles_like(&user).await.unwrap().is_empty());
    assert!(
        tether_credential_issuer::Metrics::get(&issuer.metrics().unwrap().orphans_revoked) >= 1
    );
    let vault_leases = deps.bao.leases(READ_PATH).await.unwrap();
    assert_eq!(vault_leases, vec![owned.lease.unwrap().vault_lease_id]);
    assert!(
        connect_as(&deps, owned.credential.as_ref().unwrap())
            .await
            .is_ok()
    );
    assert!(
        deps.bao
            .leases("database/creds/hr-writer")
            .await
            .unwrap()
            .contains(&unmanaged)
    );
    assert_eq!(deps.pg.roles_like(&unmanaged_user).await.unwrap().len(), 1);
}

#[tokio::test]
async fn restart_reconciles_sessions_that_expired_while_down() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let expiring = auth.session_ending_in(3).await.unwrap();
    issue(&issuer, &expiring, issue_req("hr-read"))
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let live = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    let dir = issuer.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start_in(dir)
        .await
        .unwrap();
    // The durable registry remembers both sessions.
    eventually(Duration::from_secs(20), || async {
        let leases = list(&issuer, expiring.sid()).await;
        if leases.len() == 1 && leases[0].status() == PbStatus::Expired {
            Ok(())
        } else {
            Err(format!("{leases:?}"))
        }
    })
    .await
    .unwrap();
    let leases = list(&issuer, session.sid()).await;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].status(), PbStatus::Active);
    assert_eq!(leases[0].lease_id, live.lease.unwrap().lease_id);
    assert_eq!(deps.bao.leases(READ_PATH).await.unwrap().len(), 1);
}

#[tokio::test]
async fn fifty_leases_are_revoked_in_one_call_and_listed_in_pages() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let sid = session.sid();
    for _ in 0..50 {
        issue(&issuer, &session, issue_req("hr-read"))
            .await
            .unwrap();
    }
    let mut client = issuer.client();
    let first = client
        .list_leases(ListLeasesRequest {
            session_id: sid.into(),
            page_size: 30,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.leases.len(), 30);
    let second = client
        .list_leases(ListLeasesRequest {
            session_id: sid.into(),
            page_size: 30,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.leases.len(), 20);
    assert!(second.next_page_token.is_empty());
    // A token is bound to its session.
    let status = client
        .list_leases(ListLeasesRequest {
            session_id: "s-other".into(),
            page_size: 30,
            page_token: first.next_page_token,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let resp = client
        .revoke_session(RevokeSessionRequest {
            session_id: sid.into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.revoked.len(), 50);
    assert!(resp.pending.is_empty());
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
    assert!(deps.pg.roles_like("v-").await.unwrap().is_empty());
}

#[tokio::test]
async fn approle_login_renews_and_reauthenticates() {
    let (deps, auth) = stack().await;
    // Tokens live 2 s and at most 5 s: the issuer must renew and then log in
    // again to keep working.
    let (role_id, secret_id) = deps.bao.setup_approle(2, 5).await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .auth(VaultAuth::Approle {
            mount: "approle".into(),
            role_id: role_id.clone(),
            secret_id: Some(Secret::new(secret_id)),
            secret_id_file: None,
        })
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Renewed while it could be, then logged in again at the max TTL.
    let (logins, renewals) = issuer.vault_stats();
    assert!(renewals >= 1, "renewals {renewals}");
    assert!(logins >= 2, "logins {logins}");
    let resp = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    connect_as(&deps, resp.credential.as_ref().unwrap())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let revoked = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked.len(), 2, "{revoked:?}");
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());

    // A wrong secret_id: nothing is issued, UNAVAILABLE.
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .auth(VaultAuth::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(Secret::new("not-the-secret-id")),
            secret_id_file: None,
        })
        .start()
        .await
        .unwrap();
    let other = auth.session().await.unwrap();
    let status = issue(&issuer, &other, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 0);
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_lease_registry() {
    let (deps, auth) = stack().await;
    deps.pg.create_database("tether").await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .store_url(deps.pg.admin_url("tether"))
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let resp = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    let lease = resp.lease.unwrap();
    let mut admin = PgConnection::connect_with(
        &deps
            .pg
            .options(
                tether_integration_tests::postgres::ADMIN_USER,
                deps.pg.admin_password(),
            )
            .database("tether"),
    )
    .await
    .unwrap();
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM credential_issuer.credential_leases WHERE id = $1")
            .bind(&lease.lease_id)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(status, LeaseStatus::Active.as_str());
    // A renewal records the token's expiry for the session (PostgreSQL's
    // UPDATE … RETURNING path).
    renew(&issuer, &session, renew_req(&lease.lease_id, Some(60)))
        .await
        .unwrap();
    let resp = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.revoked.len(), 1);
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM credential_issuer.credential_leases WHERE id = $1")
            .bind(&lease.lease_id)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(status, "REVOKED");
    admin.close().await.unwrap();
}

#[tokio::test]
async fn only_the_facades_certificate_may_issue_even_with_a_valid_token() {
    let (deps, auth) = stack().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let was = before(&deps).await;

    // A stolen token is not enough from another workload of the mesh...
    for identity in [
        "policy-decision",
        "identity-exchange",
        "ciba-orchestrator",
        "admin",
    ] {
        let err = issuer
            .client_as(identity)
            .unwrap()
            .issue(session.request(issue_req("hr-read")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{identity}: {err:?}");
    }
    // ... nor from a caller without a certificate.
    let anonymous = auth
        .identity()
        .pki()
        .anonymous_channel(issuer.addr())
        .unwrap();
    let err = tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient::new(
        anonymous,
    )
    .issue(session.request(issue_req("hr-read")))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_nothing_issued("other identities", &issuer, &deps, session.sid(), &was).await;

    // Operators may list leases; the facade with the token is served.
    issuer
        .client_as("admin")
        .unwrap()
        .list_leases(ListLeasesRequest {
            session_id: session.sid().into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap();
    issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
}
