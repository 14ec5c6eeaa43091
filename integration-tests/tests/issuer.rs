//! The credential issuer against a real OpenBao 2.7.2 dev server and a real
//! PostgreSQL 15 cluster, over real gRPC on loopback.
//!
//! Needs OpenBao (`integration-tests/run.sh test` installs it): without it
//! these tests fail with a message saying so; they never skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tether_credential_issuer::{LeaseStatus, Limits, Registry, Secret, VaultAuth};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::{CredentialDeps, IssuerSandbox, hr_profiles};
use tether_integration_tests::postgres::free_port;
use tether_proto::credentials::v1::{
    Credential, IssueRequest, IssueResponse, Lease, LeaseStatus as PbStatus, ListLeasesRequest,
    RenewRequest, RevokeSessionRequest, credential,
};
use tether_runtime::ServerConfig;
use tonic::Code;

const READ_PATH: &str = "database/creds/hr-readonly";

fn in_secs(secs: i64) -> prost_types::Timestamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap() + secs,
        nanos: 0,
    }
}

fn issue_req(session: &str, profile: &str, session_secs: i64) -> IssueRequest {
    IssueRequest {
        session_id: session.into(),
        profile: profile.into(),
        session_expires_at: Some(in_secs(session_secs)),
        requested_ttl: None,
        intent: r#"[{"type":"hr_review","employee":"1042"}]"#.into(),
        action: r#"Action::"read""#.into(),
        resource: r#"Employee::"1042""#.into(),
        policy_version: "sha256:00".into(),
        decision_id: "d-1".into(),
        policy_ids: vec!["hr-read".into()],
        approval_ticket_id: String::new(),
        user_subject: "alice".into(),
        agent_id: "hr-assistant".into(),
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

async fn issue(sandbox: &IssuerSandbox, req: IssueRequest) -> Result<IssueResponse, tonic::Status> {
    sandbox
        .client()
        .issue(req)
        .await
        .map(tonic::Response::into_inner)
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

async fn deps() -> CredentialDeps {
    CredentialDeps::start(600)
        .await
        .expect("starting OpenBao and PostgreSQL (run `integration-tests/run.sh test`)")
}

#[tokio::test]
async fn issued_credential_selects_but_cannot_insert_and_dies_with_the_session() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();

    let resp = issue(&issuer, issue_req("s-real", "hr-read", 900))
        .await
        .unwrap();
    let lease = resp.lease.clone().unwrap();
    assert_eq!(lease.status(), PbStatus::Active);
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
            session_id: "s-real".into(),
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

    // Idempotent, and an ended session never gets a new lease.
    let again = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: "s-real".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_ended);
    assert_eq!(again.revoked.len(), 1);
    let status = issue(&issuer, issue_req("s-real", "hr-read", 900))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("ended"), "{status:?}");
    assert_eq!(list(&issuer, "s-real").await.len(), 1);
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_writer_profile_can_insert() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();
    let resp = issue(&issuer, issue_req("s-writer", "hr-write", 900))
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
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();

    // A requested TTL below everything else wins.
    let mut req = issue_req("s-short", "hr-read", 900);
    req.requested_ttl = Some(prost_types::Duration {
        seconds: 30,
        nanos: 0,
    });
    let lease = issue(&issuer, req).await.unwrap().lease.unwrap();
    assert_eq!(lease.granted_ttl.unwrap().seconds, 30);

    // The session ends in 5 s: Vault's 600 s default is cut to what is left.
    let resp = issue(&issuer, issue_req("s-expiring", "hr-read", 5))
        .await
        .unwrap();
    let lease = resp.lease.unwrap();
    let granted = lease.granted_ttl.unwrap().seconds;
    assert!((1..=5).contains(&granted), "granted {granted} s");
    let session_end = in_secs(5).seconds;
    assert!(lease.expires_at.unwrap().seconds <= session_end);
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
        let leases = list(&issuer, "s-expiring").await;
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
async fn renew_extends_but_never_past_the_session_or_the_profile() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .profiles(hr_profiles(20))
        .start()
        .await
        .unwrap();
    let mut req = issue_req("s-renew", "hr-read", 60);
    req.requested_ttl = Some(prost_types::Duration {
        seconds: 5,
        nanos: 0,
    });
    let lease = issue(&issuer, req).await.unwrap().lease.unwrap();
    assert_eq!(lease.granted_ttl.unwrap().seconds, 5);

    let renewed = issuer
        .client()
        .renew(RenewRequest {
            lease_id: lease.lease_id.clone(),
            session_id: "s-renew".into(),
            increment: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(
        renewed.granted_ttl.unwrap().seconds,
        20,
        "capped at the profile's 20 s"
    );
    assert!(renewed.expires_at.unwrap().seconds <= in_secs(60).seconds);

    // Another session's lease is NOT_FOUND; a bad increment is refused.
    let status = issuer
        .client()
        .renew(RenewRequest {
            lease_id: lease.lease_id.clone(),
            session_id: "s-other".into(),
            increment: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = issuer
        .client()
        .renew(RenewRequest {
            lease_id: lease.lease_id.clone(),
            session_id: "s-renew".into(),
            increment: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: "s-renew".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let status = issuer
        .client()
        .renew(RenewRequest {
            lease_id: lease.lease_id,
            session_id: "s-renew".into(),
            increment: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_issued() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .server(ServerConfig {
            max_message_bytes: 64 * 1024,
            ..ServerConfig::default()
        })
        .start()
        .await
        .unwrap();
    let base = || issue_req("s-bad", "hr-read", 900);
    let cases: Vec<(&str, IssueRequest, Code, &str)> = vec![
        (
            "empty session",
            IssueRequest {
                session_id: String::new(),
                ..base()
            },
            Code::InvalidArgument,
            "missing `session_id`",
        ),
        (
            "long session",
            IssueRequest {
                session_id: "s".repeat(129),
                ..base()
            },
            Code::InvalidArgument,
            "`session_id` is 129 bytes",
        ),
        (
            "control chars",
            IssueRequest {
                session_id: "s\n1".into(),
                ..base()
            },
            Code::InvalidArgument,
            "control characters",
        ),
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
            "no expiry",
            IssueRequest {
                session_expires_at: None,
                ..base()
            },
            Code::InvalidArgument,
            "missing `session_expires_at`",
        ),
        (
            "bad nanos",
            IssueRequest {
                session_expires_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -1,
                }),
                ..base()
            },
            Code::InvalidArgument,
            "nanos",
        ),
        (
            "expired session",
            IssueRequest {
                session_expires_at: Some(in_secs(-10)),
                ..base()
            },
            Code::FailedPrecondition,
            "has expired",
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
        let status = issue(&issuer, req).await.unwrap_err();
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
        IssueRequest {
            intent: "x".repeat(100 * 1024),
            ..base()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );

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
    let status = client
        .renew(RenewRequest {
            lease_id: "no-such-lease".into(),
            session_id: "s-unknown".into(),
            increment: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
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

#[tokio::test]
async fn session_lease_limit_is_resource_exhausted() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .limits(Limits {
            max_leases_per_session: 2,
        })
        .start()
        .await
        .unwrap();
    for _ in 0..2 {
        issue(&issuer, issue_req("s-limit", "hr-read", 900))
            .await
            .unwrap();
    }
    let status = issue(&issuer, issue_req("s-limit", "hr-read", 900))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(list(&issuer, "s-limit").await.len(), 2);
    assert_eq!(deps.bao.leases(READ_PATH).await.unwrap().len(), 2);
}

#[tokio::test]
async fn vault_unreachable_is_unavailable_and_nothing_is_half_issued() {
    // Nothing listens on this port.
    let port = free_port().unwrap();
    let issuer = IssuerSandbox::builder(format!("http://127.0.0.1:{port}"))
        .start()
        .await
        .unwrap();
    let status = issue(&issuer, issue_req("s-down", "hr-read", 900))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no credential was issued"),
        "{status:?}"
    );
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 0);
    assert!(list(&issuer, "s-down").await.is_empty());

    // And when the server dies under a running issuer.
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();
    issue(&issuer, issue_req("s-dies", "hr-read", 900))
        .await
        .unwrap();
    let CredentialDeps { bao, pg } = deps;
    drop(bao);
    let status = issue(&issuer, issue_req("s-dies", "hr-read", 900))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 1);
    assert_eq!(list(&issuer, "s-dies").await.len(), 1);
    assert_eq!(pg.roles_like("v-").await.unwrap().len(), 1);
}

#[tokio::test]
async fn vault_sealed_is_unavailable_and_nothing_is_issued() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();
    issue(&issuer, issue_req("s-seal", "hr-read", 900))
        .await
        .unwrap();
    deps.bao.seal().await.unwrap();
    let status = issue(&issuer, issue_req("s-seal", "hr-read", 900))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("sealed"), "{status:?}");
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 1);
    assert_eq!(deps.pg.roles_like("v-").await.unwrap().len(), 1);
}

#[tokio::test]
async fn database_down_at_revocation_is_retried_until_it_succeeds() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();
    let mut users = Vec::new();
    for _ in 0..2 {
        let resp = issue(&issuer, issue_req("s-pgdown", "hr-read", 900))
            .await
            .unwrap();
        users.push(login(resp.credential.as_ref().unwrap()).0);
    }
    deps.pg.stop().unwrap();
    let resp = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: "s-pgdown".into(),
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
        let leases = list(&issuer, "s-pgdown").await;
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
    let scraped = reqwest::get(format!("http://{}/metrics", issuer.addr()))
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
        let leases = list(&issuer, "s-pgdown").await;
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
    let deps = deps().await;
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
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .profiles(profiles)
        .vault_timeout_ms(500)
        .start()
        .await
        .unwrap();
    // A lease the registry owns survives the sweep.
    let owned = issue(&issuer, issue_req("s-owned", "hr-read", 900))
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
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();
    issue(&issuer, issue_req("s-restart", "hr-read", 3))
        .await
        .unwrap();
    let live = issue(&issuer, issue_req("s-live", "hr-read", 900))
        .await
        .unwrap();
    let dir = issuer.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start_in(dir)
        .await
        .unwrap();
    // The durable registry remembers both sessions.
    eventually(Duration::from_secs(20), || async {
        let leases = list(&issuer, "s-restart").await;
        if leases.len() == 1 && leases[0].status() == PbStatus::Expired {
            Ok(())
        } else {
            Err(format!("{leases:?}"))
        }
    })
    .await
    .unwrap();
    let leases = list(&issuer, "s-live").await;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].status(), PbStatus::Active);
    assert_eq!(leases[0].lease_id, live.lease.unwrap().lease_id);
    assert_eq!(deps.bao.leases(READ_PATH).await.unwrap().len(), 1);
}

#[tokio::test]
async fn fifty_leases_are_revoked_in_one_call_and_listed_in_pages() {
    let deps = deps().await;
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .start()
        .await
        .unwrap();
    for _ in 0..50 {
        issue(&issuer, issue_req("s-fifty", "hr-read", 900))
            .await
            .unwrap();
    }
    let mut client = issuer.client();
    let first = client
        .list_leases(ListLeasesRequest {
            session_id: "s-fifty".into(),
            page_size: 30,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.leases.len(), 30);
    let second = client
        .list_leases(ListLeasesRequest {
            session_id: "s-fifty".into(),
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
            session_id: "s-fifty".into(),
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
    let deps = deps().await;
    // Tokens live 2 s and at most 5 s: the issuer must renew and then log in
    // again to keep working.
    let (role_id, secret_id) = deps.bao.setup_approle(2, 5).await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .auth(VaultAuth::Approle {
            mount: "approle".into(),
            role_id: role_id.clone(),
            secret_id: Some(Secret::new(secret_id)),
            secret_id_file: None,
        })
        .start()
        .await
        .unwrap();
    issue(&issuer, issue_req("s-approle", "hr-read", 900))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Renewed while it could be, then logged in again at the max TTL.
    let (logins, renewals) = issuer.vault_stats();
    assert!(renewals >= 1, "renewals {renewals}");
    assert!(logins >= 2, "logins {logins}");
    let resp = issue(&issuer, issue_req("s-approle", "hr-read", 900))
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
            session_id: "s-approle".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked.len(), 2, "{revoked:?}");
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());

    // A wrong secret_id: nothing is issued, UNAVAILABLE.
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .auth(VaultAuth::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(Secret::new("not-the-secret-id")),
            secret_id_file: None,
        })
        .start()
        .await
        .unwrap();
    let status = issue(&issuer, issue_req("s-badlogin", "hr-read", 900))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(registry_rows(issuer.registry().unwrap()).await, 0);
    assert!(deps.bao.leases(READ_PATH).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_lease_registry() {
    let deps = deps().await;
    deps.pg.create_database("tether").await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr())
        .store_url(deps.pg.admin_url("tether"))
        .start()
        .await
        .unwrap();
    let resp = issue(&issuer, issue_req("s-pg", "hr-read", 900))
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
    let resp = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: "s-pg".into(),
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
