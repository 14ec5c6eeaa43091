//! The credential issuer's guarantees where replicas, concurrency and
//! broken leases meet (issue 12): the per-session lease limit under
//! concurrent `Issue` calls through two replicas on one PostgreSQL with
//! default durability; a lease never outliving its session as OpenBao
//! itself reports the lease's expiry; one lease that cannot be revoked
//! never stalling the others; and the start-up reconciler, the periodic
//! sweeper and the orphan sweep of two replicas never revoking each
//! other's live leases.
//!
//! Everything is real: OpenBao 2.7.2 dev server, PostgreSQL 15, the test
//! IdP and identity exchange minting the delegated tokens, gRPC with mTLS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection as _;
use tether_credential_issuer::{Limits, Profile, Registry, RevocationConfig, Secret, VaultAuth};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::{
    CredentialDeps, DelegatedSession, IssuerSandbox, SessionAuthority, hr_profiles, test_revocation,
};
use tether_integration_tests::openbao::{HR_READONLY_CREATE, OpenBao};
use tether_integration_tests::postgres::{ADMIN_USER, PgCluster};
use tether_proto::credentials::v1::{
    IssueRequest, IssueResponse, LeaseStatus as PbStatus, RenewRequest, RevokeSessionRequest,
    credential,
};
use tonic::Code;

const READ_PATH: &str = "database/creds/hr-readonly";

fn issue_req(profile: &str) -> IssueRequest {
    IssueRequest {
        profile: profile.into(),
        intent: r#"[{"type":"hr_review","employee":"1042"}]"#.into(),
        action: r#"Action::"read""#.into(),
        resource: r#"Employee::"1042""#.into(),
        policy_version: "sha256:00".into(),
        decision_id: "d-1".into(),
        policy_ids: vec!["hr-read".into()],
        ..IssueRequest::default()
    }
}

async fn issue(
    issuer: &IssuerSandbox,
    session: &DelegatedSession,
    req: IssueRequest,
) -> Result<IssueResponse, tonic::Status> {
    issuer
        .client()
        .issue(session.request(req))
        .await
        .map(tonic::Response::into_inner)
}

async fn authority() -> SessionAuthority {
    SessionAuthority::start().await.expect(
        "starting the test IdP and the identity exchange (run `integration-tests/run.sh test`)",
    )
}

/// OpenBao against a PostgreSQL with `durable` (PostgreSQL's default
/// durability: every commit flushed) or test settings.
async fn deps(durable: bool) -> CredentialDeps {
    let pg = if durable {
        PgCluster::start_durable().await
    } else {
        PgCluster::start().await
    }
    .expect("starting PostgreSQL (run `integration-tests/run.sh test`)");
    let bao = OpenBao::start()
        .await
        .expect("starting OpenBao (run `integration-tests/run.sh test`)");
    bao.setup_database(&pg, 600).await.unwrap();
    CredentialDeps { bao, pg }
}

/// Live rows (ISSUING, ACTIVE, REVOKING, REVOCATION_FAILED) of a session.
async fn live_rows(registry: &Registry, sid: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM credential_leases WHERE session_id = $1 \
         AND status IN ('ISSUING', 'ACTIVE', 'REVOKING', 'REVOCATION_FAILED')",
    )
    .bind(sid)
    .fetch_one(registry.pool())
    .await
    .unwrap();
    n
}

/// Unix milliseconds of an RFC 3339 time as OpenBao prints it
/// (`2026-12-06T06:30:12.123456789Z` or with a `±hh:mm` offset).
fn rfc3339_ms(s: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap() };
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, sec) = (num(11..13), num(14..16), num(17..19));
    let rest = &s[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap();
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let millis: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    let offset_secs = if zone == "Z" {
        0
    } else {
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        sign * (zone[1..3].parse::<i64>().unwrap() * 3600 + zone[4..6].parse::<i64>().unwrap() * 60)
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs) * 1000 + millis
}

/// When OpenBao will expire `vault_lease_id` (its own `sys/leases/lookup`),
/// in Unix milliseconds.
async fn vault_expiry_ms(bao: &OpenBao, vault_lease_id: &str) -> i64 {
    let v = bao
        .api(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": vault_lease_id })),
        )
        .await
        .unwrap();
    rfc3339_ms(
        v.pointer("/data/expire_time")
            .and_then(Value::as_str)
            .expect("lookup without expire_time"),
    )
}

/// Drops a generated role by hand, as an administrator cleaning up would
/// (grants first: DROP ROLE fails while they remain).
async fn drop_role(pg: &PgCluster, role: &str) {
    let mut admin = pg.admin().await.unwrap();
    for sql in [
        format!("REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA hr FROM \"{role}\""),
        format!("REVOKE USAGE ON SCHEMA hr FROM \"{role}\""),
        format!("DROP ROLE \"{role}\""),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    admin.close().await.unwrap();
}

fn username(resp: &IssueResponse) -> String {
    match resp.credential.as_ref().unwrap().kind.as_ref().unwrap() {
        credential::Kind::Database(d) => d.username.clone(),
        credential::Kind::Generic(_) => panic!("expected a database credential"),
    }
}

// ---- 1. the per-session lease limit ------------------------------------

#[tokio::test]
async fn lease_limit_holds_under_concurrent_issue_through_two_replicas() {
    const LIMIT: u32 = 3;
    const CALLS: usize = 24;
    let (deps, auth) = tokio::join!(deps(true), authority());
    deps.pg.create_database("tether").await.unwrap();
    let replica = || {
        IssuerSandbox::builder(deps.bao.addr(), auth.identity())
            .store_url(deps.pg.admin_url("tether"))
            .limits(Limits {
                max_leases_per_session: LIMIT,
            })
    };
    // One after the other: the second finds the schema migrated.
    let a = replica().start().await.unwrap();
    let b = replica().start().await.unwrap();
    let session = auth.session().await.unwrap();

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let client = if i % 2 == 0 { a.client() } else { b.client() };
        let request = session.request(issue_req("hr-read"));
        calls.spawn(async move {
            let mut client = client;
            client.issue(request).await.map(tonic::Response::into_inner)
        });
    }
    let mut issued = Vec::new();
    let mut refused = Vec::new();
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(resp) => issued.push(resp),
            Err(status) => refused.push(status),
        }
    }

    let live = live_rows(a.registry().unwrap(), session.sid()).await;
    let vault_leases = deps.bao.leases(READ_PATH).await.unwrap();
    let roles = deps.pg.roles_like("v-").await.unwrap();
    assert!(
        issued.len() <= LIMIT as usize
            && live <= i64::from(LIMIT)
            && vault_leases.len() <= LIMIT as usize,
        "limit {LIMIT}: {} calls succeeded, {live} live rows in the registry, {} leases at OpenBao, {} roles in PostgreSQL",
        issued.len(),
        vault_leases.len(),
        roles.len()
    );
    // Nothing failed for another reason: exactly `LIMIT` got through, and
    // every other call was refused with the documented status and reason.
    assert_eq!(issued.len(), LIMIT as usize, "{refused:?}");
    assert_eq!(live, i64::from(LIMIT));
    assert_eq!(vault_leases.len(), LIMIT as usize);
    assert_eq!(roles.len(), LIMIT as usize);
    assert_eq!(refused.len(), CALLS - LIMIT as usize);
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let info = tonic_types::StatusExt::get_details_error_info(status).expect("an ErrorInfo");
        assert_eq!(info.reason, "LEASE_LIMIT", "{status:?}");
    }
    // The leases handed out are the ones OpenBao holds.
    let mut handed: Vec<String> = issued
        .iter()
        .map(|r| r.lease.as_ref().unwrap().vault_lease_id.clone())
        .collect();
    handed.sort();
    let mut held = vault_leases;
    held.sort();
    assert_eq!(handed, held);
}

// ---- 2. a lease never outlives its session -----------------------------

#[tokio::test]
async fn a_lease_never_outlives_its_session_as_openbao_reports_it() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    // Three seconds pass between OpenBao creating the lease (with the
    // role's 600 s) and the issuer shortening it: a TTL computed before
    // the call would end the lease three seconds after the session.
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .vault_timeout_ms(5_000)
        .test_hooks(tether_credential_issuer::TestHooks {
            pause_after_vault_issue_ms: 3_000,
        })
        .start()
        .await
        .unwrap();
    let session = auth.session_ending_in(20).await.unwrap();
    let session_end_ms = session.claims.exp * 1000;
    let resp = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    let lease = resp.lease.unwrap();
    let expiry = vault_expiry_ms(&deps.bao, &lease.vault_lease_id).await;
    assert!(
        expiry <= session_end_ms,
        "OpenBao expires the lease at {expiry} ms, {} ms after the session ends ({session_end_ms} ms)",
        expiry - session_end_ms
    );
    assert!(lease.expires_at.unwrap().seconds <= session.claims.exp);
}

#[tokio::test]
async fn a_later_token_never_extends_the_sessions_recorded_end() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    // The session is first seen with a token ending in 30 s.
    let first = auth.session_ending_in(30).await.unwrap();
    let session_end_ms = first.claims.exp * 1000;
    let lease = issue(&issuer, &first, issue_req("hr-read"))
        .await
        .unwrap()
        .lease
        .unwrap();
    // A token of the same session naming a later end (10 minutes).
    let later_exp = tether_token::unix_now() + 600;
    let later = DelegatedSession {
        token: auth.forge(&first, |c| c.exp = later_exp).unwrap(),
        claims: first.claims.clone(),
    };

    // Renewing with it stays within the end recorded first.
    let renewed = issuer
        .client()
        .renew(later.request(RenewRequest {
            lease_id: lease.lease_id.clone(),
            increment: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..RenewRequest::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let expiry = vault_expiry_ms(&deps.bao, &lease.vault_lease_id).await;
    assert!(
        expiry <= session_end_ms,
        "after a renewal with a later token OpenBao expires the lease {} ms after the session's recorded end",
        expiry - session_end_ms
    );
    assert!(renewed.expires_at.unwrap().seconds <= first.claims.exp);

    // So does a new lease issued with it.
    let other = issue(&issuer, &later, issue_req("hr-read"))
        .await
        .unwrap()
        .lease
        .unwrap();
    let expiry = vault_expiry_ms(&deps.bao, &other.vault_lease_id).await;
    assert!(
        expiry <= session_end_ms,
        "a lease issued with a later token expires at OpenBao {} ms after the session's recorded end",
        expiry - session_end_ms
    );
    // And the registry still records the first end.
    let (recorded,): (i64,) =
        sqlx::query_as("SELECT expires_at FROM credential_sessions WHERE session_id = $1")
            .bind(first.sid())
            .fetch_one(issuer.registry().unwrap().pool())
            .await
            .unwrap();
    assert_eq!(recorded, session_end_ms);
}

// ---- 3. an unrevocable lease stalls nothing ----------------------------

#[tokio::test]
async fn a_lease_whose_role_was_dropped_by_hand_is_still_revoked() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let resp = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    let role = username(&resp);
    let lease = resp.lease.unwrap();
    drop_role(&deps.pg, &role).await;

    let ended = issuer
        .client()
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ended.revoked.len(),
        1,
        "revoked {:?}, pending {:?}",
        ended.revoked,
        ended
            .pending
            .iter()
            .map(|l| (l.status(), l.last_error.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(ended.revoked[0].status(), PbStatus::Revoked);
    assert!(
        !deps
            .bao
            .leases(READ_PATH)
            .await
            .unwrap()
            .contains(&lease.vault_lease_id)
    );
}

/// The revocation statements the README recommended before they were
/// guarded by the role's existence: they fail on a role that is gone.
const UNGUARDED_REVOKE: &str = r#"REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA hr FROM "{{name}}"; REVOKE USAGE ON SCHEMA hr FROM "{{name}}"; DROP ROLE IF EXISTS "{{name}}";"#;

const FRAGILE_PATH: &str = "database/creds/hr-fragile";

#[tokio::test]
async fn one_unrevocable_orphan_never_stalls_the_orphan_sweep() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    // A role with the unguarded statements, on its own connection.
    deps.bao
        .api(
            "POST",
            "database/config/fragile",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!(
                    "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
                    deps.pg.port()
                ),
                "username": ADMIN_USER,
                "password": deps.pg.admin_password(),
                "allowed_roles": "hr-fragile",
            })),
        )
        .await
        .unwrap();
    deps.bao
        .api(
            "POST",
            "database/roles/hr-fragile",
            Some(json!({
                "db_name": "fragile",
                "creation_statements": [HR_READONLY_CREATE],
                "revocation_statements": [UNGUARDED_REVOKE],
                "default_ttl": 600,
                "max_ttl": 86_400,
            })),
        )
        .await
        .unwrap();
    // Two orphans on the path (leases no registry row owns): one whose role
    // an administrator dropped by hand, so its revocation fails every time,
    // and a healthy one.
    let (broken, broken_role, _) = deps.bao.issue_direct("hr-fragile").await.unwrap();
    drop_role(&deps.pg, &broken_role).await;
    let (healthy, healthy_role, _) = deps.bao.issue_direct("hr-fragile").await.unwrap();
    // Both are older than the orphan grace (issuing window + clock skew,
    // 2.5 s with a 500 ms Vault timeout) from the issuer's first sweep on.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut profiles = hr_profiles(600);
    profiles.insert(
        "fragile".into(),
        Profile {
            vault_path: FRAGILE_PATH.into(),
            max_ttl_secs: 600,
            database_sweep: None,
        },
    );
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .profiles(profiles)
        .vault_timeout_ms(500)
        .start()
        .await
        .unwrap();
    let registry = issuer.registry().unwrap();
    // An issuance on the same path interrupted a minute ago (a replica died
    // between writing its row and hearing from OpenBao), as that replica
    // left it: only the orphan sweep can settle it.
    let now = tether_token::unix_now() * 1000;
    sqlx::query(
        "INSERT INTO credential_leases (id, session_id, profile, vault_path, status, \
         created_at, issuing_deadline) VALUES ('interrupted', 's-dead', 'fragile', $1, \
         'ISSUING', $2, $3)",
    )
    .bind(FRAGILE_PATH)
    .bind(now - 62_000)
    .bind(now - 60_000)
    .execute(registry.pool())
    .await
    .unwrap();

    // The healthy orphan is revoked and the interrupted issuance settled,
    // although the broken lease fails on every pass.
    eventually(Duration::from_secs(20), || async {
        let leases = deps.bao.leases(FRAGILE_PATH).await?;
        let row = registry.get("interrupted").await?.unwrap();
        if leases.contains(&healthy) || !row.status.is_terminal() {
            anyhow::bail!(
                "healthy orphan still at OpenBao: {}; interrupted issuance {} ({:?})",
                leases.contains(&healthy),
                row.status.as_str(),
                row.last_error
            );
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(deps.pg.roles_like(&healthy_role).await.unwrap().is_empty());
    // The broken one is still there, still retried, and counted.
    assert!(
        deps.bao
            .leases(FRAGILE_PATH)
            .await
            .unwrap()
            .contains(&broken)
    );
    assert!(
        tether_credential_issuer::Metrics::get(&issuer.metrics().unwrap().revocation_failures) >= 1
    );
    // And the issuer still serves its own path.
    let session = auth.session().await.unwrap();
    issue(&issuer, &session, issue_req("fragile"))
        .await
        .unwrap();
}

// ---- 4. Vault login and answers from in front of Vault -----------------

#[tokio::test]
async fn concurrent_calls_finding_the_vault_token_revoked_log_in_once() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    let (role_id, secret_id) = deps.bao.setup_approle(600, 600).await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .auth(VaultAuth::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(Secret::new(secret_id)),
            secret_id_file: None,
        })
        // No orphan sweep: only the calls below talk to Vault.
        .revocation(RevocationConfig {
            orphan_sweep: false,
            ..test_revocation()
        })
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap();
    assert_eq!(issuer.vault_stats().0, 1);

    // Every token AppRole handed out is revoked behind the issuer's back.
    deps.bao
        .api("PUT", "sys/leases/revoke-prefix/auth/approle/login", None)
        .await
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = issuer.client();
        let request = session.request(issue_req("hr-read"));
        calls.spawn(async move { client.issue(request).await.map(|_| ()) });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(
        issuer.vault_stats().0,
        2,
        "16 calls that found the token revoked logged in {} times",
        issuer.vault_stats().0 - 1
    );
    // Every call got its credential (revoking the first token revoked the
    // lease issued with it: OpenBao's leases die with their token).
    assert_eq!(deps.bao.leases(READ_PATH).await.unwrap().len(), 16);
}

/// An HTTP/1.1 proxy in front of OpenBao that forwards every request, and
/// answers `504 Gateway Timeout` instead of OpenBao's answer to secret
/// reads (`/v1/database/creds/…`): the request was applied, the caller
/// cannot know. A fake for a fault the real server cannot be made to
/// produce on demand.
async fn gateway_timeout_proxy(upstream: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let http = http.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then a Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap().split(' ');
                    let (method, path) = (first.next().unwrap(), first.next().unwrap());
                    let mut headers = Vec::new();
                    let mut length = 0usize;
                    for line in lines.filter(|l| !l.is_empty()) {
                        let (name, value) = line.split_once(':').unwrap();
                        let (name, value) = (name.trim(), value.trim());
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.parse().unwrap();
                        }
                        if name.eq_ignore_ascii_case("x-vault-token")
                            || name.eq_ignore_ascii_case("content-type")
                        {
                            headers.push((name.to_owned(), value.to_owned()));
                        }
                    }
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + length].to_vec();
                    buf.drain(..head_end + length);
                    let mut req = http.request(
                        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                        format!("{upstream}{path}"),
                    );
                    for (name, value) in headers {
                        req = req.header(name, value);
                    }
                    let Ok(resp) = req.body(body).send().await else {
                        return;
                    };
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let out = if path.starts_with("/v1/database/creds/") {
                        b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                    } else {
                        let mut out = format!(
                            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            status.as_u16(),
                            status.canonical_reason().unwrap_or(""),
                            bytes.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(&bytes);
                        out
                    };
                    if conn.write_all(&out).await.is_err() || out.starts_with(b"HTTP/1.1 504") {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_gateway_timeout_keeps_the_lease_row_for_the_reconciler() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    let proxy = gateway_timeout_proxy(deps.bao.addr().to_owned()).await;
    let issuer = IssuerSandbox::builder(proxy, auth.identity())
        .vault_timeout_ms(500)
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let status = issue(&issuer, &session, issue_req("hr-read"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // OpenBao did create the lease, behind the 504.
    let created = deps.bao.leases(READ_PATH).await.unwrap();
    assert_eq!(created.len(), 1);
    // The row stays, and the reconciler settles it: the lease is revoked,
    // and the row is ABANDONED (what OpenBao did is unknown to it).
    let registry = issuer.registry().unwrap();
    let (rows,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM credential_leases WHERE session_id = $1")
            .bind(session.sid())
            .fetch_one(registry.pool())
            .await
            .unwrap();
    assert_eq!(rows, 1, "the lease row was discarded after a 504");
    eventually(Duration::from_secs(20), || async {
        let leases = deps.bao.leases(READ_PATH).await?;
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM credential_leases WHERE session_id = $1")
                .bind(session.sid())
                .fetch_one(registry.pool())
                .await?;
        if leases.is_empty() && status == "ABANDONED" {
            Ok(())
        } else {
            anyhow::bail!("vault leases {leases:?}, row {status}")
        }
    })
    .await
    .unwrap();
}

// ---- 5. sweeps on two replicas -----------------------------------------

/// Whether `resp`'s database credential can log in and read `hr`.
async fn logs_in(pg: &PgCluster, resp: &IssueResponse) -> bool {
    let credential::Kind::Database(db) = resp.credential.as_ref().unwrap().kind.as_ref().unwrap()
    else {
        panic!("expected a database credential");
    };
    let Ok(mut conn) =
        sqlx::PgConnection::connect_with(&pg.options(&db.username, &db.password)).await
    else {
        return false;
    };
    let read = sqlx::query("SELECT id FROM hr.employees")
        .fetch_all(&mut conn)
        .await
        .is_ok();
    let _ = conn.close().await;
    read
}

/// Two issuers on one PostgreSQL registry, each running its start-up
/// reconciler, its sweeper and its orphan sweep every 100 ms over the same
/// Vault path. Leases are issued through both; one replica's issuances sit
/// between OpenBao creating the lease and the registry claiming it (the
/// window in which a careless sweep of the other replica would see an
/// unowned lease); one replica restarts meanwhile (its reconciler runs
/// while the other's issuances are in flight). The sweeps do their job
/// (an orphan no row owns and the lease of an expired session are
/// revoked), and every lease of a live session is still ACTIVE, still held
/// by OpenBao, and still logs in.
#[tokio::test]
async fn sweeps_of_two_replicas_never_revoke_each_others_live_leases() {
    let (deps, auth) = tokio::join!(deps(false), authority());
    deps.pg.create_database("tether").await.unwrap();
    let sweeps = RevocationConfig {
        sweep_interval_ms: 100,
        orphan_sweep_interval_ms: 100,
        ..test_revocation()
    };
    // Issuing window: 2 x 2 s + 1 s. Replica B's issuances pause 3.5 s
    // after OpenBao created the lease, inside that window.
    let replica = |pause_ms: u64| {
        IssuerSandbox::builder(deps.bao.addr(), auth.identity())
            .store_url(deps.pg.admin_url("tether"))
            .revocation(sweeps.clone())
            .vault_timeout_ms(2_000)
            .test_hooks(tether_credential_issuer::TestHooks {
                pause_after_vault_issue_ms: pause_ms,
            })
    };
    let a = replica(0).start().await.unwrap();
    let b = replica(3_500).start().await.unwrap();

    // An orphan (a lease no registry row owns) and a session about to end:
    // the sweeps must remove both, proving they ran.
    let (orphan, _, _) = deps.bao.issue_direct("hr-readonly").await.unwrap();
    let ending = auth.session_ending_in(8).await.unwrap();
    let ending_lease = issue(&a, &ending, issue_req("hr-read"))
        .await
        .unwrap()
        .lease
        .unwrap();

    // Live sessions, with leases through both replicas; B's in flight.
    let (s1, s2) = (auth.session().await.unwrap(), auth.session().await.unwrap());
    let mut in_flight = tokio::task::JoinSet::new();
    for session in [&s1, &s2, &s2] {
        let mut client = b.client();
        let request = session.request(issue_req("hr-read"));
        in_flight
            .spawn(async move { client.issue(request).await.map(tonic::Response::into_inner) });
    }
    // B's leases exist at OpenBao and are not claimed yet while both
    // replicas sweep the path (OpenBao holds more leases than the
    // registry has claimed, the orphan aside).
    let registry = a.registry().unwrap().clone();
    eventually(Duration::from_secs(10), || async {
        let at_vault = i64::try_from(deps.bao.leases(READ_PATH).await?.len())?;
        let (claimed,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM credential_leases WHERE vault_lease_id IS NOT NULL",
        )
        .fetch_one(registry.pool())
        .await?;
        if at_vault > claimed + 1 {
            Ok(())
        } else {
            anyhow::bail!("{at_vault} leases at OpenBao, {claimed} claimed")
        }
    })
    .await
    .unwrap();
    let mut live = Vec::new();
    for session in [&s1, &s1, &s2] {
        live.push(issue(&a, session, issue_req("hr-read")).await.unwrap());
    }
    // A restarts while B's issuances are in flight: its start-up
    // reconciler (a forced pass with an orphan sweep) runs now.
    drop(a);
    let a = replica(0).start().await.unwrap();
    while let Some(result) = in_flight.join_next().await {
        live.push(result.unwrap().unwrap());
    }
    // One more lease through the restarted A.
    live.push(issue(&a, &s1, issue_req("hr-read")).await.unwrap());

    // The sweeps ran after all of this: the orphan and the ended session's
    // lease are revoked.
    eventually(Duration::from_secs(30), || async {
        let leases = deps.bao.leases(READ_PATH).await?;
        let ended = registry.get(&ending_lease.lease_id).await?.unwrap();
        if leases.contains(&orphan) || !ended.status.is_terminal() {
            anyhow::bail!(
                "orphan still at OpenBao: {}; the ended session's lease is {}",
                leases.contains(&orphan),
                ended.status.as_str()
            );
        }
        Ok(())
    })
    .await
    .unwrap();

    // Every lease of a live session survived both replicas' sweeps.
    let held = deps.bao.leases(READ_PATH).await.unwrap();
    assert_eq!(live.len(), 7);
    for resp in &live {
        let lease = resp.lease.as_ref().unwrap();
        let row = registry.get(&lease.lease_id).await.unwrap().unwrap();
        assert_eq!(
            row.status,
            tether_credential_issuer::LeaseStatus::Active,
            "lease {} of session {}: {:?}",
            lease.lease_id,
            row.session_id,
            row.last_error
        );
        assert!(
            held.contains(&lease.vault_lease_id),
            "{} gone from OpenBao",
            lease.vault_lease_id
        );
        assert!(
            logs_in(&deps.pg, resp).await,
            "lease {} no longer logs in",
            lease.lease_id
        );
    }
    assert_eq!(held.len(), live.len());
    drop(b);
}
