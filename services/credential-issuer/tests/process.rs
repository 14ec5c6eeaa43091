//! The real binary: configuration errors, SIGKILL between Vault issuance and
//! the reply, and no secret in its logs. Uses a real OpenBao and PostgreSQL
//! (`integration-tests/run.sh test` installs OpenBao; without it these tests
//! fail, they never skip).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_integration_tests::eventually;
use tether_integration_tests::issuer::CredentialDeps;
use tether_integration_tests::postgres::free_port;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::credentials::v1::{
    IssueRequest, LeaseStatus, ListLeasesRequest, RenewRequest, RevokeSessionRequest, credential,
};

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
[vault]
address = "http://127.0.0.1:8200"
[vault.auth]
method = "token"
token = "dev-only"
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

fn in_secs(secs: i64) -> prost_types::Timestamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap() + secs,
        nanos: 0,
    }
}

fn issue_req(session: &str) -> IssueRequest {
    IssueRequest {
        session_id: session.into(),
        profile: "hr-read".into(),
        session_expires_at: Some(in_secs(900)),
        ..IssueRequest::default()
    }
}

/// A config for a real run against `deps`, listening on `port`.
fn live_config(dir: &Path, deps: &CredentialDeps, port: u16, auth: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
drain_timeout_secs = 5
[vault]
address = "{addr}"
request_timeout_ms = 1000
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

async fn connect(port: u16, log: &Path) -> CredentialIssuerClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = CredentialIssuerClient::connect(format!("http://127.0.0.1:{port}")).await {
            return c;
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
    let deps = CredentialDeps::start(600)
        .await
        .expect("starting OpenBao and PostgreSQL (run `integration-tests/run.sh test`)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = live_config(
        dir.path(),
        &deps,
        port,
        "method = \"token\"\ntoken = \"root\"",
    );
    let log = dir.path().join("first.log");
    let first = spawn(
        &config,
        &log,
        &[("TETHER_TEST_HOOKS__PAUSE_AFTER_VAULT_ISSUE_MS", "600000")],
    );
    let mut client = connect(port, &log).await;
    let call = tokio::spawn(async move { client.issue(issue_req("s-killed")).await });

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
    let mut client = connect(port, &second_log).await;
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
        async move {
            let leases = client
                .list_leases(ListLeasesRequest {
                    session_id: "s-killed".into(),
                    ..ListLeasesRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .leases;
            if leases.len() == 1 && leases[0].status() == LeaseStatus::Revoked {
                Ok(leases)
            } else {
                Err(format!("{leases:?}"))
            }
        }
    })
    .await
    .unwrap();
    assert!(leases[0].last_error.contains("interrupted"), "{leases:?}");
    // The session itself is still usable: a new credential works.
    client.issue(issue_req("s-killed")).await.unwrap();

    signal(&second, "-TERM");
    drop(second);
    let text = std::fs::read_to_string(&second_log).unwrap();
    assert!(text.contains("orphan lease revoked"), "{text}");
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let deps = CredentialDeps::start(600)
        .await
        .expect("starting OpenBao and PostgreSQL (run `integration-tests/run.sh test`)");
    let (role_id, secret_id) = deps.bao.setup_approle(60, 600).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = live_config(
        dir.path(),
        &deps,
        port,
        &format!("method = \"approle\"\nrole_id = \"{role_id}\"\nsecret_id = \"{secret_id}\""),
    );
    let log = dir.path().join("issuer.log");
    let proc = spawn(&config, &log, &[("TETHER_LOG", "debug")]);
    let mut client = connect(port, &log).await;

    let resp = client
        .issue(issue_req("s-logs"))
        .await
        .unwrap()
        .into_inner();
    let Some(credential::Kind::Database(db)) = resp.credential.unwrap().kind else {
        panic!("expected a database credential");
    };
    let lease = resp.lease.unwrap();
    client
        .renew(RenewRequest {
            lease_id: lease.lease_id.clone(),
            session_id: "s-logs".into(),
            increment: None,
        })
        .await
        .unwrap();
    let status = client
        .issue(IssueRequest {
            profile: "no-such-profile".into(),
            ..issue_req("s-logs")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    client
        .revoke_session(RevokeSessionRequest {
            session_id: "s-logs".into(),
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
    for (what, secret) in [
        ("password", db.password.as_str()),
        ("database username", db.username.as_str()),
        ("approle secret_id", secret_id.as_str()),
        ("postgres admin password", deps.pg.admin_password()),
    ] {
        assert!(!text.contains(secret), "{what} found in the logs");
    }
    assert!(
        !text.contains("client_token"),
        "a vault token field in the logs"
    );
    assert!(!vault_lease_id.is_empty());
}
