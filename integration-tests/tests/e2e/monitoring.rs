//! The facade's risk monitoring against the whole real stack (test IdP with
//! CIBA, identity exchange, PDP with the HR pack, credential issuer on
//! OpenBao and PostgreSQL, approvals), its store in that PostgreSQL: a
//! scripted compromised agent is scored up and quarantined by its rule (its
//! credential stops logging in, one signed alert reaches the webhook), an
//! agent quarantine refuses StartSession until an operator lifts it with
//! `tether quarantine lift`, bad input to the admin RPCs changes nothing,
//! and the benign demo story with monitoring on is never quarantined.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection as _;
use tether_agent_facade::{MonitoringConfig, MonitoringRule, QuarantineKind, WebhookConfig};
use tether_audit::{AuditReader, RecordKind};
use tether_integration_tests::Running;
use tether_integration_tests::demo::{self, Options};
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;
use tether_proto::facade::v1::session_admin_client::SessionAdminClient;
use tether_runtime::client::{Clients, InternalChannel};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic_types::StatusExt as _;

const ADMIN: &str = "admin";
const FACADE: &str = "agent-facade";
/// 32 bytes and more: the webhook's HMAC key.
const WEBHOOK_SECRET: &str = "monitoring-test-webhook-secret-0123456789";

/// One request the webhook received: its signature header and body.
#[derive(Debug, Clone)]
struct Delivery {
    signature: String,
    body: Vec<u8>,
}

/// A small HTTP/1.1 receiver on loopback that answers 204 and keeps what it
/// received.
struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, Arc::clone(&keep)));
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests on one connection until it closes.
async fn serve(mut stream: tokio::net::TcpStream, keep: Arc<Mutex<Vec<Delivery>>>) {
    let mut buffer = Vec::new();
    loop {
        let header_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[header_end..header_end + length].to_vec();
        buffer.drain(..header_end + length);
        keep.lock().unwrap().push(Delivery {
            signature: header("x-tether-signature").unwrap_or_default(),
            body,
        });
        if stream
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

fn rule(name: &str, signal: &str, count: i64, kind: QuarantineKind) -> MonitoringRule {
    MonitoringRule {
        name: name.into(),
        signal: signal.into(),
        count,
        window_secs: 600,
        quarantine: kind,
        duration_secs: (kind == QuarantineKind::Agent).then_some(3600),
    }
}

/// A facade on `stack` with monitoring on, its store in the stack's
/// PostgreSQL (shared-store mode, as replicas run it), its own audit log.
async fn monitored_facade(
    stack: &FacadeStack,
    dir: &std::path::Path,
    rules: Vec<MonitoringRule>,
    webhook: Option<SocketAddr>,
) -> (Running, SocketAddr) {
    let mut config = stack.config().clone();
    config.audit.data_dir = dir.join("audit");
    let webhook = webhook.map(|addr| {
        let secret = dir.join("webhook-secret");
        std::fs::write(&secret, format!("{WEBHOOK_SECRET}\n")).unwrap();
        WebhookConfig {
            url: format!("http://{addr}/alerts"),
            secret_file: secret,
            queue_capacity: 16,
            max_attempts: 3,
            timeout_ms: 2000,
        }
    });
    config.monitoring = MonitoringConfig {
        enabled: true,
        url: Some(stack.deps.pg.admin_url("postgres")),
        rules: Some(rules),
        webhook,
        ..MonitoringConfig::default()
    };
    stack.start_facade(config).await.unwrap()
}

fn agent_client(stack: &FacadeStack, addr: SocketAddr) -> AgentGatewayClient<InternalChannel> {
    AgentGatewayClient::new(stack.pki().anonymous_channel(addr).unwrap())
}

fn admin(stack: &FacadeStack, addr: SocketAddr) -> SessionAdminClient<InternalChannel> {
    SessionAdminClient::new(stack.pki().channel(ADMIN, addr, FACADE).unwrap())
}

fn offboard(id: &str) -> pb::AcquireCredentialRequest {
    pb::AcquireCredentialRequest {
        action: uid("Action", "offboard"),
        resource: uid("Employee", id),
        profile: "hr-write".into(),
        ..Default::default()
    }
}

fn read(id: &str) -> pb::AcquireCredentialRequest {
    pb::AcquireCredentialRequest {
        action: uid("Action", "read"),
        resource: uid("Employee", id),
        profile: "hr-read".into(),
        ..Default::default()
    }
}

/// The ErrorInfo reason of a refusal.
fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Follows `ticket_id` through `client` until it is terminal.
async fn watch_to_end(
    client: &AgentGatewayClient<InternalChannel>,
    token: &str,
    ticket_id: &str,
) -> pb::ApprovalTicket {
    let mut watch = client
        .clone()
        .watch_approval(bearer(
            pb::WatchApprovalRequest {
                ticket_id: ticket_id.into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        last = message.ticket;
    }
    last.unwrap()
}

/// Every record of `sid` in the facade's audit log at `dir`.
async fn audit_of(dir: &std::path::Path, sid: &str) -> Vec<tether_audit::AuditRecord> {
    let url = tether_store::sqlite_url(&dir.join("audit/audit.db"));
    let reader = AuditReader::open(&url).await.unwrap();
    reader
        .tail(sid)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_agent_is_scored_up_quarantined_and_alerted_once() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start().await;
    let (mut facade, addr) = monitored_facade(
        &stack,
        dir.path(),
        vec![
            rule(
                "repeated-out-of-intent",
                "out_of_intent",
                2,
                QuarantineKind::Session,
            ),
            rule("denial-burst", "denials", 5, QuarantineKind::Session),
        ],
        Some(webhook.addr),
    )
    .await;
    let client = agent_client(&stack, addr);

    // The agent, told to "offboard every employee", starts a session that
    // declares employee 1042 only, and reads 1042 with a real login.
    let session = client
        .clone()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap()
        .into_inner();
    let token = session.delegated_token.clone();
    let issued = client
        .clone()
        .acquire_credential(bearer(read("1042"), &token))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = issued.outcome else {
        panic!("the read was not issued: {issued:?}");
    };
    let Some(pb::credential::Kind::Database(login)) = issued.credential.and_then(|c| c.kind) else {
        panic!("no database login");
    };
    let options = stack.deps.pg.options(&login.username, &login.password);
    sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    // 1. Offboarding 1042 needs alice's approval; she denies it on her
    //    device, and the agent sees the denial.
    let asked = client
        .clone()
        .acquire_credential(bearer(offboard("1042"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        asked.decision(),
        pb::Decision::ApprovalRequired,
        "{asked:?}"
    );
    let Some(pb::acquire_credential_response::Outcome::ApprovalRequired(required)) = asked.outcome
    else {
        panic!("no ticket");
    };
    let ticket = required.ticket.unwrap();
    let pending = stack
        .authority
        .idp()
        .ciba_requests(&[("status", "pending"), ("wait_ms", "10000")])
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let auth_req_id = pending[0]["auth_req_id"].as_str().unwrap();
    stack
        .authority
        .idp()
        .ciba_device(auth_req_id, "deny", json!({}))
        .await
        .unwrap();
    let denied = watch_to_end(&client, &token, &ticket.ticket_id).await;
    assert_eq!(denied.state(), pb::ApprovalState::Denied, "{denied:?}");

    // 2. It goes on with the next employees, outside its declared intent:
    //    denied, each attempt scored higher; the second fires the rule.
    for employee in ["1043", "1044"] {
        let status = client
            .clone()
            .acquire_credential(bearer(offboard(employee), &token))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{employee}: {status:?}"
        );
        assert_eq!(reason(&status), "POLICY_DENIED");
    }

    // 3. The session is quarantined: ended as EndSession ends it.
    let after = client
        .clone()
        .authorize(bearer(
            pb::AuthorizeRequest {
                action: uid("Action", "read"),
                resource: uid("Employee", "1042"),
                context_json: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    assert_eq!(reason(&after), "SESSION_ENDED");
    assert!(
        sqlx::PgConnection::connect_with(&options).await.is_err(),
        "the read login still connects"
    );
    assert!(stack.deps.pg.roles_like("v-").await.unwrap().is_empty());

    // The decisions' records carry the score and the signals that made it:
    // 0, 0, 30 (the denied approval), 65 (+ a denial, + out of intent).
    let records = audit_of(dir.path(), &session.session_id).await;
    let decisions: Vec<(&str, Option<f64>)> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Decision)
        .map(|r| (r.resource.as_str(), r.risk))
        .collect();
    assert_eq!(
        decisions,
        [
            (r#"Employee::"1042""#, Some(0.0)),
            (r#"Employee::"1042""#, Some(0.0)),
            (r#"Employee::"1043""#, Some(30.0)),
            (r#"Employee::"1044""#, Some(65.0)),
        ]
    );
    let last = records
        .iter()
        .rfind(|r| r.kind == RecordKind::Decision)
        .unwrap();
    for (signal, value) in [
        ("approvals_denied", 1),
        ("denials", 1),
        ("out_of_intent", 1),
    ] {
        assert_eq!(last.signals.get(signal), Some(&value), "{:?}", last.signals);
    }
    let quarantines: Vec<_> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Quarantine)
        .collect();
    assert_eq!(quarantines.len(), 1, "{quarantines:?}");
    assert_eq!(quarantines[0].decision, "quarantined");
    assert!(quarantines[0].detail.contains("repeated-out-of-intent"));
    let end = records
        .iter()
        .find(|r| r.kind == RecordKind::SessionEnd)
        .expect("the session's end is on record");
    assert_eq!(end.agent, "monitoring:repeated-out-of-intent");

    // Operators see it.
    let listed = admin(&stack, addr)
        .list_quarantines(pb::ListQuarantinesRequest {
            active_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .quarantines;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind(), pb::QuarantineKind::Session);
    assert_eq!(listed[0].subject, session.session_id);
    assert_eq!(listed[0].rule, "repeated-out-of-intent");
    assert_eq!(listed[0].quarantine_id, quarantines[0].request_id);

    // 4. Exactly one alert reached the webhook, and its HMAC verifies.
    let deliveries = eventually(Duration::from_secs(10), || async {
        let got = webhook.deliveries();
        if got.is_empty() { Err(()) } else { Ok(got) }
    })
    .await
    .expect("the webhook received nothing");
    // Everything the facade had to do is done (the session ended, on
    // record, listed); stopping it drains the alert queue: nothing later.
    facade.stop().await.unwrap();
    let deliveries_after = webhook.deliveries();
    assert_eq!(deliveries_after.len(), 1, "{deliveries_after:?}");
    let delivery = &deliveries[0];
    let signature = delivery
        .signature
        .strip_prefix("sha256=")
        .expect("a sha256= signature");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    aws_lc_rs::hmac::verify(&key, &delivery.body, &hex_decode(signature))
        .expect("the alert's HMAC verifies with the shared secret");
    let wrong = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"another secret");
    assert!(aws_lc_rs::hmac::verify(&wrong, &delivery.body, &hex_decode(signature)).is_err());
    let alert: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(alert["type"], "tether.quarantine");
    assert_eq!(alert["kind"], "session");
    assert_eq!(alert["subject"], session.session_id.as_str());
    assert_eq!(alert["rule"], "repeated-out-of-intent");
    assert_eq!(alert["quarantine_id"], listed[0].quarantine_id.as_str());
    let text = String::from_utf8_lossy(&delivery.body);
    assert!(!text.contains("eyJ") && !text.contains(&login.password));
    stack.shutdown().await.unwrap();
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The `tether` CLI, built by this workspace next to this test's binaries.
fn tether_bin() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let debug = deps.parent().unwrap().parent().unwrap();
    let bin = debug.join("tether");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tether-cli` (run.sh test does)",
        bin.display()
    );
    bin
}

/// `tether quarantine ARGS` against the facade at `addr` with the
/// operators' certificate.
async fn tether(stack: &FacadeStack, addr: SocketAddr, args: &[&str]) -> std::process::Output {
    let tls = stack.pki().paths(ADMIN);
    let path = |p: &Option<PathBuf>| p.as_ref().unwrap().display().to_string();
    tokio::process::Command::new(tether_bin())
        .args(args)
        .args(["--endpoint", &format!("https://{addr}")])
        .args(["--tls-cert", &path(&tls.cert_file)])
        .args(["--tls-key", &path(&tls.key_file)])
        .args(["--tls-ca", &path(&tls.ca_file)])
        .args(["--trust-domain", "tether.test"])
        .env_remove("TETHER_FACADE_ENDPOINT")
        .output()
        .await
        .unwrap()
}

async fn active_quarantines(stack: &FacadeStack, addr: SocketAddr) -> Vec<pb::Quarantine> {
    admin(stack, addr)
        .list_quarantines(pb::ListQuarantinesRequest {
            active_only: true,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .quarantines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_quarantine_refuses_start_session_until_an_operator_lifts_it() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_facade, addr) = monitored_facade(
        &stack,
        dir.path(),
        vec![rule(
            "agent-out-of-intent",
            "out_of_intent",
            1,
            QuarantineKind::Agent,
        )],
        None,
    )
    .await;
    let client = agent_client(&stack, addr);
    let session = client
        .clone()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap()
        .into_inner();
    // Another session of the same agent, well behaved.
    let other = client
        .clone()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap()
        .into_inner();
    // One read of an employee the session never declared.
    let status = client
        .clone()
        .acquire_credential(bearer(read("1043"), &session.delegated_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The agent is quarantined: StartSession is refused, nothing minted.
    let before = stack.footprint().await.unwrap();
    let refused = client
        .clone()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.reason, "AGENT_QUARANTINED");
    assert_eq!(info.metadata["rule"], "agent-out-of-intent");
    assert_eq!(stack.footprint().await.unwrap(), before);
    let active = active_quarantines(&stack, addr).await;
    assert_eq!(active.len(), 1);
    let quarantine = &active[0];
    assert_eq!(quarantine.kind(), pb::QuarantineKind::Agent);
    assert_eq!(quarantine.subject, session.agent_id);
    assert_eq!(info.metadata["quarantine_id"], quarantine.quarantine_id);
    assert!(quarantine.until.is_some());
    // Its session was ended with it.
    let ended = client
        .clone()
        .authorize(bearer(
            pb::AuthorizeRequest {
                action: uid("Action", "read"),
                resource: uid("Employee", "1042"),
                context_json: String::new(),
            },
            &session.delegated_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
    // ...and so was the agent's other session.
    let other_ended = client
        .clone()
        .authorize(bearer(
            pb::AuthorizeRequest {
                action: uid("Action", "read"),
                resource: uid("Employee", "1042"),
                context_json: String::new(),
            },
            &other.delegated_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(other_ended.code(), Code::Unauthenticated);
    assert_eq!(reason(&other_ended), "SESSION_ENDED");

    // Bad input to the admin RPCs: the exact status, nothing changed.
    for (id, why, code) in [
        (String::new(), "", Code::InvalidArgument),
        ("q".repeat(129), "", Code::InvalidArgument),
        ("q_1\n".to_owned(), "", Code::InvalidArgument),
        ("q_1\u{1b}[2J".to_owned(), "", Code::InvalidArgument),
        (
            quarantine.quarantine_id.clone(),
            "bad\nreason",
            Code::InvalidArgument,
        ),
        (
            quarantine.quarantine_id.clone(),
            &*"r".repeat(257),
            Code::InvalidArgument,
        ),
        ("q_0000".to_owned(), "", Code::NotFound),
    ] {
        let status = admin(&stack, addr)
            .lift_quarantine(pb::LiftQuarantineRequest {
                quarantine_id: id.clone(),
                reason: why.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{id:?} {why:?}: {status:?}");
    }
    let too_many = admin(&stack, addr)
        .list_quarantines(pb::ListQuarantinesRequest {
            active_only: false,
            limit: 1001,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    // Not an operator: an agent (no certificate), the facade's own identity.
    let lift = pb::LiftQuarantineRequest {
        quarantine_id: quarantine.quarantine_id.clone(),
        reason: String::new(),
    };
    let as_agent = SessionAdminClient::new(stack.pki().anonymous_channel(addr).unwrap())
        .lift_quarantine(lift.clone())
        .await
        .unwrap_err();
    assert_eq!(as_agent.code(), Code::Unauthenticated);
    let channel = Clients::new(&stack.pki().paths(FACADE))
        .unwrap()
        .grpc(&format!("https://{addr}"), FACADE)
        .unwrap();
    let as_service = SessionAdminClient::new(channel)
        .lift_quarantine(lift)
        .await
        .unwrap_err();
    assert_eq!(as_service.code(), Code::PermissionDenied);
    assert_eq!(active_quarantines(&stack, addr).await, active);
    assert_eq!(stack.footprint().await.unwrap(), before);

    // `tether quarantine list|lift`, as an operator.
    let out = tether(&stack, addr, &["quarantine", "list", "--active", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["quarantines"][0]["quarantine_id"],
        quarantine.quarantine_id.as_str()
    );
    assert_eq!(listed["quarantines"][0]["kind"], "agent");
    let out = tether(
        &stack,
        addr,
        &[
            "quarantine",
            "lift",
            &quarantine.quarantine_id,
            "--reason",
            "reviewed: a test",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lifted"),
        "{out:?}"
    );
    assert!(active_quarantines(&stack, addr).await.is_empty());
    // Lifting again changes nothing; a bad id never leaves the CLI.
    let again = tether(
        &stack,
        addr,
        &["quarantine", "lift", &quarantine.quarantine_id],
    )
    .await;
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("was not in force"));
    let bad = tether(&stack, addr, &["quarantine", "lift", "q_1;rm"]).await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // The agent may start a session again; the lift is on record.
    let again = client
        .clone()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap()
        .into_inner();
    assert!(!again.session_id.is_empty());
    let url = tether_store::sqlite_url(&dir.path().join("audit/audit.db"));
    let lifted = AuditReader::open(&url)
        .await
        .unwrap()
        .request(&quarantine.quarantine_id)
        .await
        .unwrap();
    let decisions: Vec<&str> = lifted.iter().map(|e| e.record.decision.as_str()).collect();
    assert_eq!(decisions, ["quarantined", "lifted"]);
    assert_eq!(lifted[1].record.agent, "spiffe://tether.test/tether/admin");
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benign_demo_story_with_monitoring_on_is_never_quarantined() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        services_bin: PathBuf::from(env!("CARGO_BIN_EXE_tether-services")),
        tether_bin: tether_bin(),
        out_dir: out.path().to_owned(),
        verbose: false,
    };
    // The default rules and weights: the story must pass every one.
    let (story, stack) = demo::run_with(&options, None, |builder| {
        builder.monitoring(json!({ "enabled": true }))
    })
    .await
    .unwrap();
    assert_eq!(story.steps.last().unwrap().outcome, "ended");

    let (db, _) = stack.audit_files();
    let reader = AuditReader::open(&tether_store::sqlite_url(&db))
        .await
        .unwrap();
    let size = reader.size().await.unwrap();
    let records: Vec<_> = reader
        .leaves(0..size)
        .await
        .unwrap()
        .into_iter()
        .map(|leaf| tether_audit::AuditRecord::from_leaf(&leaf.data).unwrap())
        .collect();
    assert!(
        !records.iter().any(|r| r.kind == RecordKind::Quarantine),
        "the story was quarantined"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.kind == RecordKind::SessionEnd)
            .all(|r| !r.agent.starts_with("monitoring")),
        "a session was ended by the monitoring"
    );
    // Every decision saw a behavioural score, and none was medium.
    let risks: Vec<f64> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Decision)
        .map(|r| r.risk.unwrap())
        .collect();
    assert!(!risks.is_empty());
    assert!(risks.iter().all(|r| *r < 40.0), "{risks:?}");
    // The monitoring store has no quarantine either.
    let monitoring = tether_store::open(
        &tether_store::sqlite_url(&stack.dir().join("data/monitoring.db")),
        "facade_monitoring",
        &tether_store::PoolSettings::default(),
    )
    .await
    .unwrap();
    let (quarantines,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM quarantines")
        .fetch_one(&monitoring)
        .await
        .unwrap();
    assert_eq!(quarantines, 0);
    let (counted,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM monitoring_counts")
        .fetch_one(&monitoring)
        .await
        .unwrap();
    assert!(counted > 0, "the story's decisions were not counted");
    monitoring.close().await;
    stack.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_monitoring_store_denies_with_dependency_unavailable() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_facade, addr) = monitored_facade(&stack, dir.path(), Vec::new(), None).await;
    let client = agent_client(&stack, addr);
    let session = client
        .clone()
        .start_session(stack.start_request().unwrap())
        .await
        .unwrap()
        .into_inner();
    let authorize = || {
        let mut client = client.clone();
        let token = session.delegated_token.clone();
        async move {
            client
                .authorize(bearer(
                    pb::AuthorizeRequest {
                        action: uid("Action", "read"),
                        resource: uid("Employee", "1042"),
                        context_json: String::new(),
                    },
                    &token,
                ))
                .await
        }
    };
    let allowed = authorize().await.unwrap().into_inner();
    assert_eq!(allowed.decision(), pb::Decision::Allow);

    // The monitoring's PostgreSQL goes away: no score of 0, a deny, once
    // the replica's memory of the session is due for a read.
    stack.deps.pg.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(
        MonitoringConfig::default().refresh_ms,
    ))
    .await;
    let unavailable = |status: &tonic::Status| {
        let info = status.get_details_error_info().unwrap();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
        assert_eq!(info.metadata["dependency"], "monitoring");
    };
    unavailable(&authorize().await.unwrap_err());
    let before = sessions_minted(&stack).await;
    unavailable(
        &client
            .clone()
            .start_session(stack.start_request().unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        sessions_minted(&stack).await,
        before,
        "a session was minted without the monitoring"
    );

    // Back: decisions are taken again.
    stack.deps.pg.start_again().unwrap();
    let again = eventually(Duration::from_secs(20), || async {
        authorize().await.map(tonic::Response::into_inner)
    })
    .await
    .unwrap();
    assert_eq!(again.decision(), pb::Decision::Allow);
    stack.shutdown().await.unwrap();
}

/// Sessions the identity exchange minted (its own store; PostgreSQL may be
/// down).
async fn sessions_minted(stack: &FacadeStack) -> i64 {
    let store = tether_store::open(
        &tether_store::sqlite_url(&stack.authority.identity().store_path()),
        "identity_exchange",
        &tether_store::PoolSettings::default(),
    )
    .await
    .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions")
        .fetch_one(&store)
        .await
        .unwrap();
    store.close().await;
    n
}
