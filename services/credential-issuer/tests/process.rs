//! The real binary: configuration errors, SIGKILL between Vault issuance and
//! the reply, and no secret (nor the agent's delegated token) in its logs.
//! Uses a real OpenBao and PostgreSQL, and a real identity exchange with the
//! test IdP for the tokens (`integration-tests/run.sh test` installs them;
//! without them these tests fail, they never skip).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tether_integration_tests::eventually;
use tether_integration_tests::issuer::{CredentialDeps, DelegatedSession, SessionAuthority};
use tether_integration_tests::postgres::free_port;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::credentials::v1::{
    IssueRequest, LeaseStatus, ListLeasesRequest, RenewRequest, RevokeSessionRequest, credential,
};
use tether_runtime::client::InternalChannel;

const BIN: &str = env!("CARGO_BIN_EXE_tether-credential-issuer");
const READ_PATH: &str = "database/creds/hr-readonly";

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("credential-issuer.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn run(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).args(extra);
    cmd.env_remove("TETHER_LOG_FORMAT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
[server.tls]
insecure_plaintext = true
[vault]
address = "http://127.0.0.1:8200"
[vault.auth]
method = "token"
token = "dev-only"
[sessions]
token_issuer = "http://127.0.0.1:7002"
audience = "https://tether.local/facade"
jwks_url = "http://127.0.0.1:7002/.well-known/jwks.json"
identity_exchange = "http://127.0.0.1:7002"
[profiles.hr-read]
vault_path = "database/creds/hr-readonly"
max_ttl_secs = 600
"#;

#[test]
fn validate_only_accepts_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&write_config(dir.path(), GOOD), &["--validate-only"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration is valid"
    );
}

#[test]
fn invalid_configuration_exits_64_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            GOOD.replace("address =", "adress ="),
            vec![],
            "unknown field `adress`",
        ),
        (
            GOOD.replace("database/creds/hr-readonly", "sys/seal"),
            vec![],
            "profiles.hr-read.vault_path `sys/seal`",
        ),
        (
            GOOD.replace("database/creds/hr-readonly", "database/../sys/raw"),
            vec![],
            "is not a plain relative Vault path",
        ),
        (
            GOOD.replace("max_ttl_secs = 600", "max_ttl_secs = 0"),
            vec![],
            "max_ttl_secs must be positive",
        ),
        (
            GOOD.replace("method = \"token\"", "method = \"ldap\""),
            vec![],
            "unknown variant `ldap`",
        ),
        (
            GOOD.replace(
                "method = \"token\"\ntoken = \"dev-only\"",
                "method = \"approle\"\nrole_id = \"r\"",
            ),
            vec![],
            "exactly one of `secret_id` and `secret_id_file`",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_STORE__URL", "mysql://u:hunter2@db/x")],
            "store.url `mysql://u:***@db/x`",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_VAULT__ADDRESS", "vault.internal:8200")],
            "vault.address",
        ),
        (
            GOOD.split("[profiles.hr-read]").next().unwrap().to_owned(),
            vec![],
            "missing field `profiles`",
        ),
        (
            GOOD.replace("[sessions]", "[sessionz]"),
            vec![],
            "unknown field `sessionz`",
        ),
        (
            GOOD.replace("audience = \"https://tether.local/facade\"\n", ""),
            vec![],
            "missing field `audience`",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_SESSIONS__JWKS_URL", "identity-exchange/jwks.json")],
            "sessions.jwks_url `identity-exchange/jwks.json` must be an http:// or https:// URL",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_SESSIONS__REVOCATION_MAX_STALENESS_MS", "1500")],
            "sessions.revocation_max_staleness_ms (1500) must be at least twice revocation_poll_ms (1000)",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_SESSIONS__REVOCATION_POLL_MS", "0")],
            "sessions.revocation_poll_ms must be at least 100",
        ),
        (
            GOOD.replace("insecure_plaintext = true", "insecure_plaintext = false"),
            vec![],
            "mTLS is required",
        ),
        (
            GOOD.to_owned()
                + "[profiles.hr-read.database_sweep]\nadmin_url_file = \"/run/secrets/db\"\nusername_prefix = \"v-\"\n",
            vec![],
            "profiles.hr-read.database_sweep.username_prefix `v-` must be 4-63 characters",
        ),
        (
            GOOD.to_owned()
                + "[profiles.hr-read.database_sweep]\nadmin_url_file = \"\"\nusername_prefix = \"v-token-hr-reado-\"\n",
            vec![],
            "profiles.hr-read.database_sweep.admin_url_file is empty",
        ),
        (
            GOOD.replace(
                "[vault]\n",
                "[vault]\nrequest_timeout_ms = 5000\ncreation_timeout_ms = 1000\n",
            ),
            vec![],
            "vault.creation_timeout_ms is below request_timeout_ms",
        ),
    ];
    for (body, env, expect) in cases {
        let config = write_config(dir.path(), &body);
        for extra in [&["--validate-only"][..], &[][..]] {
            let out = run(&config, extra, &env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{body}: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one line expected: {stderr}");
            assert!(
                lines[0].starts_with("error: invalid configuration: "),
                "{stderr}"
            );
            assert!(lines[0].contains(expect), "`{stderr}` lacks `{expect}`");
            assert!(!stderr.contains("hunter2"), "{stderr}");
        }
    }
}

/// An Issue of `hr-read` for the session of `session`'s bearer token.
fn issue_req(session: &DelegatedSession) -> tonic::Request<IssueRequest> {
    session.request(IssueRequest {
        profile: "hr-read".into(),
        ..IssueRequest::default()
    })
}

/// A config for a real run against `deps` and the identity exchange of
/// `authority`, listening on `port` with mTLS (a certificate from the
/// authority's CA).
fn live_config(
    dir: &Path,
    deps: &CredentialDeps,
    authority: &SessionAuthority,
    port: u16,
    auth: &str,
) -> PathBuf {
    let sessions = authority.sessions_config();
    let tls = authority.identity().pki().tls("credential-issuer").unwrap();
    write_config(
        dir,
        (format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
shutdown_delay_secs = 0
drain_timeout_secs = 5
[sessions]
token_issuer = "{token_issuer}"
audience = "{audience}"
jwks_url = "{jwks_url}"
identity_exchange = "{identity_exchange}"
[vault]
address = "{addr}"
request_timeout_ms = 1000
creation_timeout_ms = 2000
[vault.auth]
{auth}
[store]
data_dir = "{data}"
[profiles.hr-read]
vault_path = "{READ_PATH}"
max_ttl_secs = 600
[revocation]
sweep_interval_ms = 300
orphan_sweep_interval_ms = 1000
backoff_initial_ms = 100
backoff_max_ms = 1000
clock_skew_ms = 500
"#,
            addr = deps.bao.addr(),
            data = dir.join("data").display(),
            token_issuer = sessions.token_issuer,
            audience = sessions.audience,
            jwks_url = sessions.jwks_url,
            identity_exchange = sessions.identity_exchange,
        ) + &tls.to_toml_section())
            .as_str(),
    )
}

/// OpenBao + PostgreSQL, and the test IdP + identity exchange that mint
/// the delegated tokens.
async fn stack() -> (CredentialDeps, SessionAuthority) {
    let (deps, authority) = tokio::join!(CredentialDeps::start(600), SessionAuthority::start());
    (
        deps.expect("starting OpenBao and PostgreSQL (run `integration-tests/run.sh test`)"),
        authority.expect(
            "starting the test IdP and the identity exchange (run `integration-tests/run.sh test`)",
        ),
    )
}

/// The binary, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, log: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .env("TETHER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

/// A client as the agent facade, once the issuer answers its health check.
async fn connect(
    authority: &SessionAuthority,
    port: u16,
    log: &Path,
) -> CredentialIssuerClient<InternalChannel> {
    let channel = authority
        .identity()
        .pki()
        .channel(
            "agent-facade",
            ([127, 0, 0, 1], port).into(),
            "credential-issuer",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        if health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
        {
            return CredentialIssuerClient::new(channel);
        }
        assert!(
            Instant::now() < deadline,
            "the issuer did not start listening: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigkill_between_vault_issuance_and_reply_is_revoked_after_restart() {
    let (deps, authority) = stack().await;
    let session = authority.session().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = live_config(
        dir.path(),
        &deps,
        &authority,
        port,
        "method = \"token\"\ntoken = \"root\"",
    );
    let log = dir.path().join("first.log");
    let first = spawn(
        &config,
        &log,
        &[("TETHER_TEST_HOOKS__PAUSE_AFTER_VAULT_ISSUE_MS", "600000")],
    );
    let mut client = connect(&authority, port, &log).await;
    let request = issue_req(&session);
    let call = tokio::spawn(async move { client.issue(request).await });

    // Vault has issued; the issuer sits between issuance and the reply.
    eventually(Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("paused after vault issuance") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .unwrap();
    let issued = deps.bao.leases(READ_PATH).await.unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(deps.pg.roles_like("v-").await.unwrap().len(), 1);

    signal(&first, "-KILL");
    drop(first);
    // The caller got no credential (the connection broke: a transport error).
    let status = call.await.unwrap().unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");

    // Restart without the pause: the reconciler finds the interrupted
    // issuance in the registry and the orphan sweep revokes its lease.
    let second_log = dir.path().join("second.log");
    let second = spawn(&config, &second_log, &[]);
    let mut client = connect(&authority, port, &second_log).await;
    let sid = session.sid().to_owned();
    eventually(Duration::from_secs(30), || async {
        let leases = deps.bao.leases(READ_PATH).await?;
        let roles = deps.pg.roles_like("v-").await?;
        if leases.is_empty() && roles.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("vault leases {leases:?}, roles {roles:?}"))
        }
    })
    .await
    .unwrap();
    let leases = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        let sid = sid.clone();
        async move {
            let leases = client
                .list_leases(ListLeasesRequest {
                    session_id: sid,
                    ..ListLeasesRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .leases;
            if leases.len() == 1 && leases[0].status() == LeaseStatus::Abandoned {
                Ok(leases)
            } else {
                Err(format!("{leases:?}"))
            }
        }
    })
    .await
    .unwrap();
    // Nothing was handed out, and the row does not claim more than is
    // known: its lease was revoked as an orphan, not as its own.
    assert!(
        leases[0]
            .last_error
            .starts_with("abandoned: creation outcome unknown"),
        "{leases:?}"
    );
    // The session itself is still usable: a new credential works (the
    // restarted issuer loaded the keys and revocation list before serving).
    client.issue(issue_req(&session)).await.unwrap();

    signal(&second, "-TERM");
    drop(second);
    let text = std::fs::read_to_string(&second_log).unwrap();
    assert!(text.contains("orphan lease revoked"), "{text}");
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let (deps, authority) = stack().await;
    let session = authority.session().await.unwrap();
    let (role_id, secret_id) = deps.bao.setup_approle(60, 600).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = live_config(
        dir.path(),
        &deps,
        &authority,
        port,
        &format!("method = \"approle\"\nrole_id = \"{role_id}\"\nsecret_id = \"{secret_id}\""),
    );
    let log = dir.path().join("issuer.log");
    let proc = spawn(&config, &log, &[("TETHER_LOG", "debug")]);
    let mut client = connect(&authority, port, &log).await;

    let resp = client
        .issue(issue_req(&session))
        .await
        .unwrap()
        .into_inner();
    let Some(credential::Kind::Database(db)) = resp.credential.unwrap().kind else {
        panic!("expected a database credential");
    };
    let lease = resp.lease.unwrap();
    client
        .renew(session.request(RenewRequest {
            lease_id: lease.lease_id.clone(),
            ..RenewRequest::default()
        }))
        .await
        .unwrap();
    let status = client
        .issue(session.request(IssueRequest {
            profile: "no-such-profile".into(),
            ..IssueRequest::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Refused tokens, logged at debug by the error mapping: a tampered one
    // (signature kept, payload changed) and the real one under another
    // scheme.
    let mut parts: Vec<&str> = session.token.split('.').collect();
    let tampered_payload = format!("{}x", parts[1]);
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    for request in [
        tether_integration_tests::issuer::bearer(
            IssueRequest {
                profile: "hr-read".into(),
                ..IssueRequest::default()
            },
            &tampered,
        ),
        {
            let mut r = tonic::Request::new(IssueRequest::default());
            r.metadata_mut().insert(
                "authorization",
                format!("Token {}", session.token).parse().unwrap(),
            );
            r
        },
    ] {
        let status = client.issue(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    client
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    signal(&proc, "-TERM");
    drop(proc);

    let text = std::fs::read_to_string(&log).unwrap();
    // The log is really there, with the events of this run.
    for expected in [
        "logged in to vault",
        "credential issued",
        "lease renewed",
        "lease revoked",
    ] {
        assert!(text.contains(expected), "log lacks `{expected}`:\n{text}");
    }
    let vault_lease_id = lease.vault_lease_id;
    assert!(text.contains(&lease.lease_id));
    assert!(text.contains(session.sid()), "the session id is logged");
    assert!(text.contains("request refused"), "the refusals are logged");
    let signature = session.token.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("password", db.password.as_str()),
        ("database username", db.username.as_str()),
        ("approle secret_id", secret_id.as_str()),
        ("postgres admin password", deps.pg.admin_password()),
        ("delegated token", session.token.as_str()),
        ("delegated token signature", signature),
        ("tampered delegated token", tampered.as_str()),
    ] {
        assert!(!text.contains(secret), "{what} found in the logs");
    }
    assert!(
        !text.contains("client_token"),
        "a vault token field in the logs"
    );
    assert!(!vault_lease_id.is_empty());
}
