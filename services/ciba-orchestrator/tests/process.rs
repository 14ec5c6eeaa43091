//! The real binary: configuration errors exit 64 with one line before any
//! port is bound, and a ticket pending when the process is killed is
//! resumed by the next start, so the user's approval still counts. Uses
//! the real test IdP's CIBA and a real identity exchange
//! (`integration-tests/run.sh test` installs them; without them these
//! tests fail, they never skip).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tether_integration_tests::approvals::{EMPLOYEE, OFFBOARD, approval_request, authority};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::SessionAuthority;
use tether_integration_tests::postgres::free_port;
use tether_proto::approval::v1 as pb;
use tether_proto::approval::v1::approval_orchestrator_client::ApprovalOrchestratorClient;
use tether_runtime::client::InternalChannel;

const BIN: &str = env!("CARGO_BIN_EXE_tether-ciba-orchestrator");

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("ciba-orchestrator.toml");
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
[ciba]
issuer = "http://127.0.0.1:9"
client_id = "tether-ciba"
delivery_mode = "poll"
[ciba.client_auth]
method = "client_secret_basic"
secret_file = "/run/secrets/ciba-client-secret"
[sessions]
token_issuer = "http://127.0.0.1:7002"
audience = "https://tether.local/facade"
jwks_url = "http://127.0.0.1:7002/.well-known/jwks.json"
identity_exchange = "http://127.0.0.1:7002"
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
            GOOD.replace("delivery_mode = \"poll\"", "delivery_mode = \"push\""),
            vec![],
            "`push` is not supported",
        ),
        (
            GOOD.replace("delivery_mode = \"poll\"", "delivery_mode = \"ping\""),
            vec![],
            "notification_endpoint",
        ),
        (
            GOOD.replace("client_id =", "clientid ="),
            vec![],
            "unknown field `clientid`",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_GRANTS__USES", "0")],
            "grants.uses must be between 1 and 100",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_LIMITS__PROMPTS_PER_USER", "0")],
            "limits.prompts_per_user",
        ),
        (
            GOOD.to_owned(),
            vec![("TETHER_STORE__URL", "mysql://u:hunter2@db/x")],
            "store.url `mysql://u:***@db/x`",
        ),
        (
            GOOD.replace("[sessions]", "[sessionz]"),
            vec![],
            "unknown field `sessionz`",
        ),
        (
            GOOD.replace("insecure_plaintext = true", "insecure_plaintext = false"),
            vec![],
            "mTLS is required",
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

/// The binary, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .env("TETHER_LOG_FORMAT", "json")
        .env("TETHER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Proc(cmd.spawn().unwrap())
}

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn live_config(dir: &Path, authority: &SessionAuthority, port: u16) -> PathBuf {
    let sessions = authority.sessions_config();
    let tls = authority.identity().pki().tls("ciba-orchestrator").unwrap();
    let secret = dir.join("ciba-secret");
    std::fs::write(&secret, "tether-ciba-secret").unwrap();
    write_config(
        dir,
        (format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
shutdown_delay_secs = 0
drain_timeout_secs = 5
[ciba]
issuer = "{idp}"
client_id = "tether-ciba"
delivery_mode = "poll"
[ciba.client_auth]
method = "client_secret_basic"
secret_file = "{secret}"
[store]
data_dir = "{data}"
[sessions]
token_issuer = "{token_issuer}"
audience = "{audience}"
jwks_url = "{jwks_url}"
identity_exchange = "{identity_exchange}"
revocation_poll_ms = 200
revocation_max_staleness_ms = 5000
[tickets]
claim_interval_ms = 300
owner_lease_ms = 1000
watch_poll_ms = 100
"#,
            idp = authority.idp().issuer(),
            secret = secret.display(),
            data = dir.join("data").display(),
            token_issuer = sessions.token_issuer,
            audience = sessions.audience,
            jwks_url = sessions.jwks_url,
            identity_exchange = sessions.identity_exchange,
        ) + &tls.to_toml_section())
            .as_str(),
    )
}

/// A client as the agent facade, once the orchestrator answers health.
async fn connect(
    authority: &SessionAuthority,
    port: u16,
    log: &Path,
) -> ApprovalOrchestratorClient<InternalChannel> {
    let channel = authority
        .identity()
        .pki()
        .channel(
            "agent-facade",
            ([127, 0, 0, 1], port).into(),
            "ciba-orchestrator",
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
            return ApprovalOrchestratorClient::new(channel);
        }
        assert!(
            Instant::now() < deadline,
            "the orchestrator did not start listening: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_ticket_pending_at_sigkill_is_resumed_and_its_approval_counts() {
    let authority = authority().await.expect(
        "starting the test IdP and the identity exchange (run `integration-tests/run.sh test`)",
    );
    let session = authority.session().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = live_config(dir.path(), &authority, port);

    let log = dir.path().join("first.log");
    let first = spawn(&config, &log);
    let mut client = connect(&authority, port, &log).await;
    let created = client
        .request_approval(session.request(approval_request(&session, OFFBOARD, EMPLOYEE)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.outcome(), pb::RequestOutcome::TicketCreated);
    let ticket = created.ticket.unwrap();
    signal(&first, "-KILL");
    drop(first);

    // The user approves while no orchestrator runs.
    let device = authority
        .idp()
        .ciba_requests(&[("status", "pending")])
        .await
        .unwrap();
    assert_eq!(device.len(), 1, "{device:?}");
    let auth_req_id = device[0]["auth_req_id"].as_str().unwrap().to_owned();
    authority
        .idp()
        .ciba_device(&auth_req_id, "approve", json!({}))
        .await
        .unwrap();

    let second_log = dir.path().join("second.log");
    let second = spawn(&config, &second_log);
    let mut client = connect(&authority, port, &second_log).await;
    let approved = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        let request = session.request(pb::GetApprovalRequest {
            ticket_id: ticket.ticket_id.clone(),
            session_id: session.sid().into(),
        });
        async move {
            let ticket = client
                .get_approval(request)
                .await
                .map_err(|e| format!("{e:?}"))?
                .into_inner()
                .ticket
                .unwrap();
            if ticket.state() == pb::TicketState::Approved {
                Ok(ticket)
            } else {
                Err(format!("{ticket:?}"))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(approved.approver, "alice");
    assert!(approved.grant.is_some());

    // The grant answers the same step-up without a second prompt.
    let again = client
        .request_approval(session.request(approval_request(&session, OFFBOARD, EMPLOYEE)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome(), pb::RequestOutcome::GrantUsed);
    let all = authority
        .idp()
        .ciba_requests(&[("all", "1")])
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "the device was asked once");

    signal(&second, "-TERM");
    let mut second = second;
    let status = second.0.wait().unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0: {status:?}");
    let text = std::fs::read_to_string(&second_log).unwrap();
    assert!(
        text.contains("resuming a pending approval ticket"),
        "{text}"
    );
    assert!(!text.contains("tether-ciba-secret"), "{text}");
    assert!(!text.contains(&session.token), "the delegated token leaked");
}
