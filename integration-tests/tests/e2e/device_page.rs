//! The test IdP's device page in a real browser: a person plays the
//! user's phone. The whole stack runs on loopback; an agent's step-up
//! (AcquireCredential of the offboarding profile) becomes a real CIBA
//! request; `integration-tests/idp/device-click.mjs` opens
//! `/device?user=alice` in headless Chromium and clicks Approve or Deny;
//! the facade then issues the credential, or refuses.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`) and `npm ci` in
//! `integration-tests/idp` (for playwright-core); `integration-tests/run.sh
//! test` installs both. Without them these tests fail, saying so.
//!
//! `TETHER_DEVICE_SCREENSHOT=/path/page.png` keeps the approval test's
//! screenshot of the page (otherwise it goes to a temporary directory).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_integration_tests::idp::Idp;
use tether_proto::facade::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

const CHROMIUM: &str = "/usr/bin/chromium";

fn idp_dir() -> PathBuf {
    tether_integration_tests::workspace_root().join("integration-tests/idp")
}

/// Fails (never skips) when the browser or its driver is missing.
fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` \
         (integration-tests/run.sh test does it)"
    );
    assert!(
        idp_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in integration-tests/idp \
         (integration-tests/run.sh test does it)"
    );
}

/// What the page showed for the request it clicked (device-click.mjs's
/// JSON line).
#[derive(Debug, Deserialize)]
struct Shown {
    id: String,
    auth_req_id: String,
    status: String,
    client: String,
    client_id: String,
    binding_message: String,
    scope: String,
    expires: String,
    result: String,
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// `node device-click.mjs <page> <action> <request> [args…]`.
async fn device_click(page: &str, action: &str, request: &str, extra: &[&str]) -> Run {
    let child = tokio::process::Command::new("node")
        .arg("device-click.mjs")
        .args([page, action, request])
        .args(extra)
        .current_dir(idp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node (is Node.js installed?)");
    // The script gives up on its own after its --timeout (30 s by
    // default); this only guards against a hung browser.
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("device-click.mjs did not finish within 120 s")
        .unwrap();
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Clicks `action` on the one request matching `request`; panics with the
/// script's explanation when it fails.
async fn click(page: &str, action: &str, request: &str, screenshot: Option<&Path>) -> Shown {
    let screenshot = screenshot.map(|p| p.to_str().expect("a UTF-8 path"));
    let extra: Vec<&str> = screenshot.map_or_else(Vec::new, |p| vec!["--screenshot", p]);
    let run = device_click(page, action, request, &extra).await;
    assert!(
        run.success,
        "device-click.mjs failed: {}{}",
        run.stderr, run.stdout
    );
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("device-click.mjs printed {:?}: {e}", run.stdout))
}

fn offboard(employee: &str) -> pb::AcquireCredentialRequest {
    pb::AcquireCredentialRequest {
        action: uid("Action", "offboard"),
        resource: uid("Employee", employee),
        profile: "hr-write".into(),
        ..Default::default()
    }
}

/// The pending ticket of an APPROVAL_REQUIRED answer.
fn ticket(response: &pb::AcquireCredentialResponse) -> pb::ApprovalTicket {
    assert_eq!(
        response.decision(),
        pb::Decision::ApprovalRequired,
        "{:?}",
        response.policy_ids
    );
    assert_eq!(response.policy_ids, ["offboard-needs-approval"]);
    let Some(pb::acquire_credential_response::Outcome::ApprovalRequired(required)) =
        &response.outcome
    else {
        panic!("no ticket: {:?}", response.policy_ids);
    };
    let ticket = required.ticket.clone().expect("a ticket");
    assert_eq!(ticket.state(), pb::ApprovalState::Pending, "{ticket:?}");
    ticket
}

/// The confirmation code at the end of a binding message ("… Code: 123456").
fn code_of(binding_message: &str) -> &str {
    let (_, code) = binding_message
        .rsplit_once(" Code: ")
        .unwrap_or_else(|| panic!("no confirmation code in {binding_message:?}"));
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{binding_message:?}"
    );
    code
}

#[tokio::test]
async fn clicking_approve_on_the_device_page_lets_the_facade_issue_the_credential() {
    require_browser();
    let stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let acquire = || async {
        stack
            .client()
            .acquire_credential(bearer(offboard("1042"), &token))
            .await
            .unwrap()
            .into_inner()
    };
    let asked = ticket(&acquire().await);
    assert!(
        asked.binding_message.starts_with("Offboard employee 1042?"),
        "{asked:?}"
    );
    assert_eq!(stack.footprint().await.unwrap().leases, 0);

    let dir = tempfile::tempdir().unwrap();
    let png = std::env::var_os("TETHER_DEVICE_SCREENSHOT")
        .map_or_else(|| dir.path().join("device.png"), PathBuf::from);
    let idp = stack.authority.idp();
    // The request is picked by its whole binding message, code included,
    // as the person compares it with the agent's screen.
    let shown = click(
        &idp.device_url("alice").unwrap(),
        "approve",
        &asked.binding_message,
        Some(&png),
    )
    .await;

    // The page showed the request as the IdP holds it, and the outcome.
    let held = idp.ciba_request(&shown.auth_req_id).await.unwrap();
    assert_eq!(held["id"], shown.id.as_str());
    assert_eq!(held["status"], "approved", "{held}");
    assert_eq!(held["sub"], "alice");
    assert_eq!(shown.status, "approved");
    assert_eq!(shown.binding_message, asked.binding_message);
    assert_eq!(shown.client_id, "tether-ciba");
    assert_eq!(shown.client, "Tether CIBA orchestrator (poll)");
    assert_eq!(held["scope"], shown.scope.as_str());
    assert!(shown.scope.split(' ').any(|s| s == "openid"), "{shown:?}");
    assert!(!shown.expires.is_empty(), "{shown:?}");
    assert!(shown.result.starts_with("Approved at "), "{shown:?}");
    let image = std::fs::read(&png).unwrap();
    assert!(
        image.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );

    // The click reached the agent: the ticket is APPROVED and the same
    // request now gets its credential through the grant.
    let last = stack.watch_to_end(&token, &asked.ticket_id).await.unwrap();
    assert_eq!(last.state(), pb::ApprovalState::Approved, "{last:?}");
    let allowed = acquire().await;
    assert_eq!(allowed.decision(), pb::Decision::Allow);
    assert_eq!(allowed.policy_ids, ["hr-offboard"], "{:?}", allowed.reasons);
    assert_eq!(
        allowed
            .approval_grant
            .clone()
            .expect("the grant used")
            .ticket_id,
        asked.ticket_id
    );
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = allowed.outcome else {
        panic!("no credential issued");
    };
    assert_eq!(issued.lease.expect("a lease").profile, "hr-write");
    let footprint = stack.footprint().await.unwrap();
    assert_eq!(footprint.prompts, Some(1), "the phone was asked twice");
    assert_eq!(footprint.leases, 1);
    assert_eq!(footprint.roles.len(), 1);
}

#[tokio::test]
async fn clicking_deny_on_the_device_page_refuses_the_agent_and_issues_nothing() {
    require_browser();
    let stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let asked = ticket(
        &stack
            .client()
            .acquire_credential(bearer(offboard("1042"), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    let idp = stack.authority.idp();
    // This time the request is picked by its auth_req_id.
    let pending = idp.ciba_requests(&[("status", "pending")]).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let auth_req_id = pending[0]["auth_req_id"].as_str().unwrap();
    let shown = click(&idp.device_url("alice").unwrap(), "deny", auth_req_id, None).await;
    assert_eq!(shown.auth_req_id, auth_req_id);
    assert_eq!(shown.status, "denied");
    assert!(shown.result.starts_with("Denied at "), "{shown:?}");
    assert_eq!(
        idp.ciba_request(auth_req_id).await.unwrap()["status"],
        "denied"
    );

    let last = stack.watch_to_end(&token, &asked.ticket_id).await.unwrap();
    assert_eq!(last.state(), pb::ApprovalState::Denied, "{last:?}");
    let before = stack.footprint().await.unwrap();

    // Asking again is refused without reaching the phone (the contract's
    // cool-down after a denial), and nothing is issued.
    let again = stack
        .client()
        .acquire_credential(bearer(offboard("1042"), &token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    let info = again.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "APPROVAL_COOL_DOWN", "{again:?}");
    let after = stack.footprint().await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.prompts, Some(1));
    assert_eq!((after.leases, after.grants), (0, 0));
    assert!(after.roles.is_empty(), "{:?}", after.roles);
}

#[tokio::test]
async fn markup_an_agent_puts_in_a_binding_message_is_shown_as_text() {
    require_browser();
    let stack = FacadeStack::builder().start().await.unwrap();
    // The agent chooses the resource id, and the policy's binding message
    // ("Offboard employee {resource.id}?") carries it to the phone. Its
    // session declares offboarding without naming the employee, so the
    // hostile id is inside the declared intent.
    let mut start = stack.start_request().unwrap();
    start.intent = r#"[{"type":"hr_record_access","actions":["offboard"]}]"#.into();
    let token = stack
        .client()
        .start_session(start)
        .await
        .unwrap()
        .into_inner()
        .delegated_token;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let asked = ticket(
        &stack
            .client()
            .acquire_credential(bearer(offboard(hostile), &token))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(asked.binding_message.contains(hostile), "{asked:?}");
    let code = code_of(&asked.binding_message);

    // device-click.mjs fails on any dialog, page error or CSP violation,
    // so a pass means none of the markup ran; the text the card shows is
    // the message itself, tags and all, so it was not parsed as HTML.
    let shown = click(
        &stack.authority.idp().device_url("alice").unwrap(),
        "deny",
        &format!("Code: {code}"),
        None,
    )
    .await;
    assert_eq!(shown.binding_message, asked.binding_message);
    assert_eq!(shown.status, "denied");
    let last = stack.watch_to_end(&token, &asked.ticket_id).await.unwrap();
    assert_eq!(last.state(), pb::ApprovalState::Denied, "{last:?}");
}

/// Starts a CIBA request for alice at the IdP's backchannel endpoint, as
/// the approval orchestrator does.
async fn backchannel(idp: &Idp, binding_message: &str) -> String {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/backchannel", idp.issuer()))
        .basic_auth("tether-ciba", Some("tether-ciba-secret"))
        .form(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("binding_message", binding_message),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["auth_req_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no auth_req_id: {response}"))
        .to_owned()
}

#[tokio::test]
async fn device_click_refuses_to_guess_and_says_why() {
    require_browser();
    let idp = Idp::start().await.unwrap();
    let first = backchannel(&idp, "Offboard employee 1042? Code: 111111").await;
    let second = backchannel(&idp, "Offboard employee 2077? Code: 222222").await;
    let page = idp.device_url("alice").unwrap();

    // Two requests match: nothing is clicked.
    let ambiguous = device_click(&page, "approve", "Offboard employee", &["--timeout", "20"]).await;
    assert!(!ambiguous.success, "{}", ambiguous.stdout);
    assert!(
        ambiguous.stderr.contains("2 requests match"),
        "{}",
        ambiguous.stderr
    );
    // None matches: it gives up with that reason.
    let missing = device_click(&page, "approve", "Code: 333333", &["--timeout", "3"]).await;
    assert!(!missing.success, "{}", missing.stdout);
    assert!(
        missing.stderr.contains("no request matching"),
        "{}",
        missing.stderr
    );
    // Another user's phone does not show alice's requests.
    let bobs = device_click(
        &idp.device_url("bob").unwrap(),
        "approve",
        &first,
        &["--timeout", "3"],
    )
    .await;
    assert!(!bobs.success, "{}", bobs.stdout);
    for id in [&first, &second] {
        assert_eq!(idp.ciba_request(id).await.unwrap()["status"], "pending");
    }

    // An unknown user's page is an error, not an empty phone.
    let nobody = device_click(
        &idp.device_url("mallory").unwrap(),
        "approve",
        &first,
        &["--timeout", "10"],
    )
    .await;
    assert!(!nobody.success);
    assert!(nobody.stderr.contains("HTTP 404"), "{}", nobody.stderr);

    // A decided request is not clicked again.
    idp.ciba_device(&first, "deny", serde_json::json!({}))
        .await
        .unwrap();
    let decided = device_click(&page, "approve", &first, &["--timeout", "20"]).await;
    assert!(!decided.success, "{}", decided.stdout);
    assert!(
        decided.stderr.contains("is denied, not waiting"),
        "{}",
        decided.stderr
    );
    assert_eq!(idp.ciba_request(&first).await.unwrap()["status"], "denied");
    assert_eq!(
        idp.ciba_request(&second).await.unwrap()["status"],
        "pending"
    );
}
