//! The example Python agent (`examples/python-agent`, grpcio stubs
//! generated from `proto/`) as a subprocess against the whole stack on
//! loopback: it starts a session, is asked for the user's approval, waits
//! while the test plays the user's device, runs a real SQL query with its
//! just-in-time credential and ends the session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection as _;
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_integration_tests::identity::TestAgent;
use tether_integration_tests::{eventually, workspace_root};
use tether_proto::facade::v1 as pb;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::Command;
use tonic::Code;
use tonic_types::StatusExt as _;

/// The intent the agent declares.
const INTENT: &str =
    r#"[{"type":"hr_offboarding","actions":["offboard"],"identifier":"employee/1042"}]"#;

const SQL: &str = "SELECT count(*) FROM hr.employees";

/// Runs `agent.py` unchanged, recording what it must never print: the
/// credential it logs in with (at `psycopg.connect`), the delegated token
/// and its own assertion (at the generated stub's StartSession). Written as
/// JSON to `$SEEN_FILE` when the agent exits, so the test can look for them
/// in the output and try the credential after the session ended.
const HARNESS: &str = r#"
import atexit, json, os, runpy, sys
from pathlib import Path

agent = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(agent.parent / "gen"))
import psycopg
from tether.facade.v1 import facade_pb2_grpc

seen = {}
atexit.register(lambda: Path(os.environ["SEEN_FILE"]).write_text(json.dumps(seen)))

connect = psycopg.connect
def recording_connect(*args, **kwargs):
    seen["username"], seen["password"] = kwargs["user"], kwargs["password"]
    return connect(*args, **kwargs)
psycopg.connect = recording_connect

stub_init = facade_pb2_grpc.AgentGatewayStub.__init__
def recording_init(self, channel):
    stub_init(self, channel)
    start = self.StartSession
    def start_session(request, *args, **kwargs):
        seen["assertion"] = request.agent_assertion
        response = start(request, *args, **kwargs)
        seen["delegated_token"] = response.delegated_token
        return response
    self.StartSession = start_session
facade_pb2_grpc.AgentGatewayStub.__init__ = recording_init

sys.argv = [str(agent)] + sys.argv[2:]
runpy.run_path(str(agent), run_name="__main__")
"#;

fn agent_dir() -> PathBuf {
    workspace_root().join("examples/python-agent")
}

/// The virtualenv's Python (`PYTHON_AGENT_PY`, which
/// `integration-tests/run.sh test` sets, or the default place it installs
/// to). A missing install fails the test, never skips it.
fn python() -> PathBuf {
    let python = std::env::var_os("PYTHON_AGENT_PY").map_or_else(
        || workspace_root().join(".tools/python-agent-venv/bin/python"),
        PathBuf::from,
    );
    let stubs = agent_dir().join("gen/tether/facade/v1/facade_pb2_grpc.py");
    assert!(
        python.exists() && stubs.exists(),
        "the Python agent is not installed (no {} or no {}): run `integration-tests/run.sh test`, \
         whose ensure_python_agent step creates .tools/python-agent-venv and generates the stubs",
        python.display(),
        stubs.display()
    );
    python
}

/// The agent's settings for `stack`, signing with `key` (a PKCS#8 PEM file).
fn settings(stack: &FacadeStack, key: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("TETHER_FACADE", stack.addr().to_string()),
        (
            "TETHER_CA_FILE",
            stack.pki().ca_file().display().to_string(),
        ),
        ("TETHER_AGENT_ID", stack.authority.agent().id.clone()),
        ("TETHER_AGENT_KEY", key.display().to_string()),
        (
            "TETHER_TOKEN_ENDPOINT",
            stack.authority.identity().token_endpoint(),
        ),
        (
            "TETHER_DATABASE_URL",
            format!(
                "postgresql://127.0.0.1:{}/postgres?sslmode=disable",
                stack.deps.pg.port()
            ),
        ),
    ]
}

/// `python`, without the `TETHER_*` variables of the caller's environment
/// (the agent's settings come from the test alone).
fn command(python: &Path) -> Command {
    let mut command = Command::new(python);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            command.env_remove(name);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Plays the user's device: the one pending CIBA request must show the
/// confirmation code the agent printed; approves it.
async fn approve_on_device(stack: &FacadeStack, code: &str) {
    let pending = stack
        .authority
        .idp()
        .ciba_requests(&[("status", "pending")])
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let message = pending[0]["binding_message"].as_str().unwrap();
    assert_eq!(message, format!("Offboard employee 1042? Code: {code}"));
    stack
        .authority
        .idp()
        .ciba_device(
            pending[0]["auth_req_id"].as_str().unwrap(),
            "approve",
            json!({}),
        )
        .await
        .unwrap();
}

/// Whether `text` holds anything shaped like a JWT (`eyJ…` with two dots).
fn has_jwt(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .any(|word| word.starts_with("eyJ") && word.matches('.').count() >= 2)
}

/// The six-digit confirmation code in the agent's approval line.
fn confirmation_code(line: &str) -> String {
    let code = line
        .split("with confirmation code ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no confirmation code in {line:?}"));
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{line:?}"
    );
    code.to_owned()
}

#[tokio::test]
async fn the_python_agent_waits_for_approval_queries_with_its_credential_and_ends_the_session() {
    let python = python();
    // One use per approval: the agent's repeated AcquireCredential uses it.
    let stack = FacadeStack::builder()
        .approvals(|b| b.grants(300, 1))
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.pem");
    stack.authority.agent().key.save(&key).unwrap();
    let token_file = dir.path().join("user-token");
    std::fs::write(&token_file, stack.authority.user_token()).unwrap();
    let harness = dir.path().join("harness.py");
    std::fs::write(&harness, HARNESS).unwrap();
    let seen_file = dir.path().join("seen.json");
    let mut child = command(&python)
        .arg(&harness)
        .arg(agent_dir().join("agent.py"))
        .arg("--user-token-file")
        .arg(&token_file)
        .args(["--intent", INTENT, "--scope", "hr:read"])
        .args([
            "--action",
            "Action::offboard",
            "--resource",
            "Employee::1042",
        ])
        .args([
            "--profile",
            "hr-write",
            "--sql",
            SQL,
            "--approval-timeout",
            "120",
        ])
        .envs(settings(&stack, &key))
        .env("SEEN_FILE", &seen_file)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });

    // Read the agent's steps as it prints them; approve on the device
    // while it waits on WatchApproval. (The timeout only keeps a hung
    // agent from hanging the test.)
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let status = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("approval: required") {
                approve_on_device(&stack, &confirmation_code(&line)).await;
            }
            out.push(line);
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("the agent finished");
    let errors = errors.await.unwrap();
    assert!(status.success(), "{status}\n{}\n{errors}", out.join("\n"));

    let [started, required, approved, allowed, sql, ended] = out.as_slice() else {
        panic!("not one line per step:\n{}\n{errors}", out.join("\n"));
    };
    let sid = started
        .strip_prefix("session: started ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{started:?}"));
    assert!(
        started.contains(" for alice as hr-assistant, scope \"hr:read\", until "),
        "{started:?}"
    );
    assert!(
        required.starts_with(
            "approval: required by offboard-needs-approval; the user's device shows \
             \"Offboard employee 1042?\" with confirmation code "
        ),
        "{required:?}"
    );
    assert!(
        approved == "approval: APPROVED" || approved.starts_with("approval: APPROVED ("),
        "{approved:?}"
    );
    assert!(
        allowed.starts_with("credential: ALLOW by hr-offboard; lease ")
            && allowed.contains("(hr-write, "),
        "{allowed:?}"
    );
    // Two employees in the example database: the credential really
    // connected and read.
    assert_eq!(
        sql,
        &format!("sql: \"{SQL}\" returned 1 row(s), first (2,)")
    );
    assert!(
        ended.starts_with(&format!(
            "session: ended {sid}; 1 lease(s) revoked, 0 pending, 0 ticket(s) cancelled; receipt "
        )),
        "{ended:?}"
    );

    // What the agent held, from the harness: none of it in the output.
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&seen_file).unwrap()).unwrap();
    let secret = |name: &str| seen[name].as_str().unwrap().to_owned();
    let (username, password) = (secret("username"), secret("password"));
    let delegated = secret("delegated_token");
    let printed = format!("{}\n{errors}", out.join("\n"));
    for (name, value) in [
        ("the user token", stack.authority.user_token()),
        ("the delegated token", delegated.as_str()),
        ("the agent's assertion", secret("assertion").as_str()),
        ("the database password", password.as_str()),
        ("the database user", username.as_str()),
    ] {
        assert!(value.len() >= 8, "{name} was not recorded");
        assert!(!printed.contains(value), "the agent printed {name}");
    }
    assert!(!has_jwt(&printed), "the agent printed a JWT");
    println!("the agent's output:\n{printed}");

    // After EndSession the credential no longer logs in, its role is gone
    // from PostgreSQL and its lease from Vault, and the token is refused.
    let login = || async {
        match sqlx::PgConnection::connect_with(&stack.deps.pg.options(&username, &password)).await {
            Ok(_) => Err("the credential still logs in"),
            Err(_) => Ok(()),
        }
    };
    eventually(Duration::from_secs(10), login).await.unwrap();
    let footprint = stack.footprint().await.unwrap();
    assert!(footprint.roles.is_empty(), "{footprint:?}");
    assert_eq!(footprint.vault_leases, Some(Vec::new()), "{footprint:?}");
    assert_eq!(
        (footprint.sessions, footprint.leases, footprint.prompts),
        (1, 1, Some(1)),
        "{footprint:?}"
    );
    let after = stack
        .client()
        .authorize(bearer(
            pb::AuthorizeRequest {
                action: uid("Action", "offboard"),
                resource: uid("Employee", "1042"),
                context_json: String::new(),
            },
            &delegated,
        ))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    assert_eq!(
        after.get_details_error_info().map(|i| i.reason),
        Some("SESSION_ENDED".into())
    );
}

#[tokio::test]
async fn the_python_agent_with_a_key_it_was_not_registered_with_is_refused_and_nothing_is_issued() {
    let python = python();
    let stack = FacadeStack::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The registered agent id, signing with a key of its own.
    let key = dir.path().join("wrong.pem");
    TestAgent::new("hr-assistant")
        .unwrap()
        .key
        .save(&key)
        .unwrap();
    let before = stack.footprint().await.unwrap();

    // Settings from the environment only, the user token included.
    let output = command(&python)
        .arg(agent_dir().join("agent.py"))
        .envs(settings(&stack, &key))
        .env("TETHER_USER_TOKEN", stack.authority.user_token())
        .env("TETHER_INTENT", INTENT)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr
            .lines()
            .any(|l| l
                .starts_with("error: start session: UNAUTHENTICATED AGENT_ASSERTION_INVALID: ")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(stack.authority.user_token()) && !has_jwt(&stderr),
        "the agent printed a token"
    );

    // No session, lease, role, ticket or prompt.
    let after = stack.footprint().await.unwrap();
    assert_eq!(after, before);
    assert_eq!((after.sessions, after.leases, after.tickets), (0, 0, 0));
    assert!(after.roles.is_empty());
    assert_eq!(after.prompts, Some(0));
}
