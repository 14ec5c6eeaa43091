//! The story behind `integration-tests/run.sh demo` (README command one):
//! the whole stack as separate processes on loopback ([`ProcessStack`]),
//! and one scripted agent that goes through the facade only, with the Rust
//! client (`tether-client`). Every step checks what it expects, so the demo
//! fails loudly when the product does not behave as the story says; the
//! end-to-end test runs the same story.
//!
//! It prints one timeline line per step (decision, policy ids, lease TTL,
//! approval state, trace id), a text waterfall of the offboarding
//! request's trace (and an SVG picture of it), and never a token, key or
//! password.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use sqlx::Connection as _;
use tether_client::{
    Acquired, AgentKey, Authorization, AuthorizeRequest, Client, ClientConfig, Code,
    CredentialRequest, Entity, Error as ClientError, IssuedCredential, Session,
};

use crate::otlp::Collector;
use crate::processes::{ProcessStack, ProcessStackBuilder};
use crate::waterfall::Trace;

/// The session's declared intent (RFC 9396 `authorization_details`): read,
/// offboard or change the salary of employee 1042, nothing else.
pub const INTENT: &str = r#"[{"type":"hr_record_access","actions":["read","offboard","update_salary"],"identifier":"employee/1042"}]"#;

/// What the demo needs from outside.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `tether-services` dispatcher binary.
    pub services_bin: PathBuf,
    /// The `tether` CLI binary (`tether audit verify`).
    pub tether_bin: PathBuf,
    /// Where the trace picture goes.
    pub out_dir: PathBuf,
    /// Print the timeline as the story goes (the test keeps it quiet).
    pub verbose: bool,
}

/// One line of the timeline.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub what: String,
    /// ALLOW, DENY, APPROVAL_REQUIRED, or what happened.
    pub outcome: String,
    /// Said in the story, not in the timeline.
    pub detail: String,
    pub policy_ids: Vec<String>,
    pub lease_ttl: Option<Duration>,
    pub approval: String,
    pub trace_id: String,
}

/// What the story produced, for the caller to show or check.
#[derive(Debug)]
pub struct Story {
    pub steps: Vec<Step>,
    /// The offboarding request's trace as text, and where its SVG is.
    pub waterfall: Option<(String, PathBuf)>,
    /// `tether audit verify`'s output.
    pub audit_verify: String,
}

/// Starts the stack (exporting spans to `otlp` when set, else to a
/// collector of its own) and runs the story, with the facade's risk
/// monitoring on, as a deployment runs it (default rules and weights: the
/// story trips none of them).
pub async fn run(options: &Options, otlp: Option<String>) -> anyhow::Result<(Story, ProcessStack)> {
    run_with(options, otlp, |builder| {
        builder.monitoring(serde_json::json!({ "enabled": true }))
    })
    .await
}

/// [`run`] on a stack `adjust` configures further (e.g. the facade's
/// `[monitoring]`): the same story, step for step.
pub async fn run_with(
    options: &Options,
    otlp: Option<String>,
    adjust: impl FnOnce(ProcessStackBuilder) -> ProcessStackBuilder,
) -> anyhow::Result<(Story, ProcessStack)> {
    let collector = match &otlp {
        Some(_) => None,
        None => Some(
            Collector::start()
                .await
                .context("starting the OTLP receiver")?,
        ),
    };
    let endpoint = otlp
        .clone()
        .or_else(|| collector.as_ref().map(|(_, endpoint)| endpoint.clone()));
    let mut builder = adjust(ProcessStack::builder(&options.services_bin).grant_uses(2));
    if let Some(endpoint) = &endpoint {
        builder = builder.otlp_endpoint(endpoint);
    }
    let say = Say(options.verbose);
    say.heading("starting PostgreSQL (HR database), OpenBao, the test IdP and the five Tether services, each its own process, mTLS between them");
    let stack = builder.start().await?;
    let addrs = stack.addrs();
    say.line(&format!(
        "facade {} · identity exchange {} · policy decision {} · credential issuer {} · approvals {} · IdP {}",
        addrs.facade,
        addrs.identity,
        addrs.pdp,
        addrs.issuer,
        addrs.approvals,
        stack.idp.issuer()
    ));
    match &otlp {
        Some(endpoint) => say.line(&format!("spans go to {endpoint}")),
        None => say.line("spans go to an OTLP receiver inside this demo"),
    }
    let mut story = Story {
        steps: Vec::new(),
        waterfall: None,
        audit_verify: String::new(),
    };
    let offboard_trace = scenario(&stack, options, &say, &mut story)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n\nwhat the services logged:\n{}",
                tail(&stack.logs(), 60)
            )
        })?;

    if let Some((collector, _)) = &collector {
        let spans = collector
            .trace(&offboard_trace, Duration::from_secs(3))
            .await;
        ensure!(
            !spans.is_empty(),
            "no span of the offboarding request reached the receiver"
        );
        let trace = Trace::from_spans(&spans);
        std::fs::create_dir_all(&options.out_dir)?;
        let svg = options.out_dir.join("offboarding-trace.svg");
        std::fs::write(&svg, trace.to_svg())
            .with_context(|| format!("writing {}", svg.display()))?;
        story.waterfall = Some((trace.to_text(40), svg));
    }
    Ok((story, stack))
}

/// The agent's story, step by step. Returns the offboarding request's
/// trace id.
async fn scenario(
    stack: &ProcessStack,
    options: &Options,
    say: &Say,
    story: &mut Story,
) -> anyhow::Result<String> {
    // 1. The user logs in.
    say.heading("alice (HR) logs in at her company IdP: OpenID Connect Authorization Code + PKCE");
    let login = stack
        .idp
        .login("alice", &["openid", "profile", "email", "hr:read"])
        .await
        .context("logging in")?;
    ensure!(login.subject == "alice", "logged in as {}", login.subject);
    story.push(
        say,
        Step {
            what: "login (Authorization Code + PKCE)".into(),
            outcome: "logged in".into(),
            detail: format!("user token for {}", login.subject),
            ..Step::default()
        },
    );

    // 2. The agent opens a session with the Rust client.
    let config = ClientConfig::builder(format!("https://{}", stack.addrs().facade))
        .token_endpoint(format!("{}/token", stack.identity_url()))
        .ca_file(stack.pki().ca_file())
        .build()?;
    let jwk = stack.agent().key.private_jwk()?;
    let agent = AgentKey::from_jwk(&stack.agent().id, jwk.to_string().as_bytes())?;
    let client = Client::new(config, agent)?;
    say.heading(&format!(
        "the agent `{}` starts a session for alice, declaring its intent: {INTENT}",
        stack.agent().id
    ));
    let trace = TraceIds::new();
    let session = client
        .clone()
        .with_traceparent(&trace.traceparent())?
        .start_session(&login.access_token, INTENT, "hr:read")
        .await
        .context("StartSession")?;
    story.push(
        say,
        Step {
            what: "StartSession (token exchange, RFC 8693)".into(),
            outcome: "session".into(),
            detail: format!(
                "session {} · {} acting for {}",
                session.id(),
                session.info().agent_id,
                session.info().user_subject
            ),
            trace_id: trace.trace_id.clone(),
            ..Step::default()
        },
    );

    // 3. A just-in-time database login that really connects.
    say.heading("it reads employee 1042 with a just-in-time PostgreSQL login");
    let trace = TraceIds::new();
    let read = CredentialRequest::new(
        Entity::new("Action", "read"),
        Entity::new("Employee", "1042"),
        "hr-read",
    );
    let issued = traced(&session, &trace)?
        .acquire_credential(&read)
        .await
        .context("AcquireCredential (read)")?
        .issued()
        .context("the read was not issued a credential")?;
    let reader = issued
        .credential
        .database()
        .context("hr-read gives a database login")?;
    let mut db = sqlx::PgConnection::connect_with(
        &stack.deps.pg.options(reader.username(), reader.password()),
    )
    .await
    .context("connecting with the issued login")?;
    let (name, department): (String, String) =
        sqlx::query_as("SELECT name, department FROM hr.employees WHERE id = 1042")
            .fetch_one(&mut db)
            .await?;
    db.close().await?;
    story.push(
        say,
        issued_step("AcquireCredential read Employee 1042", &issued, &trace),
    );
    say.line(&format!(
        "  connected as {} and read: {name}, {department}",
        reader.username()
    ));

    // 4. A salary change: denied, naming the policy.
    say.heading("it asks to change employee 1042's salary");
    let trace = TraceIds::new();
    let salary = traced(&session, &trace)?
        .authorize(&AuthorizeRequest::new(
            Entity::new("Action", "update_salary"),
            Entity::new("Employee", "1042"),
        ))
        .await
        .context("Authorize (salary)")?;
    ensure!(
        salary.decision.as_str() == "DENY" && salary.policy_ids == ["no-agent-salary-changes"],
        "the salary change was not denied by `no-agent-salary-changes`: {} {:?}",
        salary.decision.as_str(),
        salary.policy_ids
    );
    story.push(
        say,
        decision_step("Authorize update_salary Employee 1042", &salary, &trace),
    );

    // 5. Offboarding needs alice's approval on her phone.
    say.heading("it asks to offboard employee 1042: the policy wants alice's approval (CIBA)");
    let trace = TraceIds::new();
    let offboard = CredentialRequest::new(
        Entity::new("Action", "offboard"),
        Entity::new("Employee", "1042"),
        "hr-write",
    );
    let asked = traced(&session, &trace)?
        .acquire_credential(&offboard)
        .await
        .context("AcquireCredential (offboard)")?;
    let Acquired::ApprovalRequired(required) = asked else {
        bail!("offboarding was issued without an approval");
    };
    let ticket = required
        .approval
        .as_ref()
        .map(|a| a.ticket.clone())
        .context("no ticket with APPROVAL_REQUIRED")?;
    let mut step = decision_step(
        "AcquireCredential offboard Employee 1042",
        &required,
        &trace,
    );
    step.approval = format!("{} {}", short(&ticket.ticket_id), ticket.state.as_str());
    story.push(say, step);
    say.line(&format!(
        "  alice's phone shows: “{}”",
        ticket.binding_message
    ));

    let device = stack.idp.device_url("alice")?;
    say.heading(&format!("alice approves on her device ({device})"));
    let pending = stack
        .idp
        .ciba_requests(&[("status", "pending"), ("wait_ms", "10000")])
        .await?;
    let request = pending
        .iter()
        .find(|r| r["binding_message"].as_str() == Some(ticket.binding_message.as_str()))
        .with_context(|| format!("the IdP has no pending request for the ticket: {pending:?}"))?;
    let auth_req_id = request["auth_req_id"]
        .as_str()
        .context("a pending request without auth_req_id")?;
    match approve_in_browser(&device, auth_req_id, &options.out_dir).await? {
        Some(screenshot) => say.line(&format!(
            "  approved in headless Chromium on the device page (screenshot: {})",
            screenshot.display()
        )),
        None => {
            // No browser on this machine: the same approval through the
            // test IdP's device API.
            stack
                .idp
                .ciba_device(auth_req_id, "approve", json!({}))
                .await?;
            say.line("  approved through the test IdP's device API (no /usr/bin/chromium here)");
        }
    }
    let approved = session
        .wait_for_approval(&ticket.ticket_id, Duration::from_secs(60))
        .await
        .context("waiting for the approval")?;
    story.push(
        say,
        Step {
            what: "WatchApproval".into(),
            outcome: "approved".into(),
            detail: "alice approved on her device".into(),
            approval: format!("{} {}", short(&approved.ticket_id), approved.state.as_str()),
            ..Step::default()
        },
    );

    let offboard_trace = TraceIds::new();
    let writer = traced(&session, &offboard_trace)?
        .acquire_credential(&offboard)
        .await
        .context("AcquireCredential (offboard, approved)")?
        .issued()
        .context("offboarding was not issued after the approval")?;
    let mut step = issued_step(
        "AcquireCredential offboard Employee 1042",
        &writer,
        &offboard_trace,
    );
    step.what.push_str(" (again)");
    story.push(say, step);
    let login_for_writer = writer
        .credential
        .database()
        .context("hr-write gives a database login")?;
    let mut db = sqlx::PgConnection::connect_with(
        &stack
            .deps
            .pg
            .options(login_for_writer.username(), login_for_writer.password()),
    )
    .await?;
    let updated = sqlx::query("UPDATE hr.employees SET department = 'offboarded' WHERE id = 1042")
        .execute(&mut db)
        .await?
        .rows_affected();
    db.close().await?;
    ensure!(updated == 1, "the offboarding updated {updated} rows");
    say.line("  employee 1042 offboarded in the HR database");

    // 6. The grant covers one more use: no second prompt.
    say.heading("it offboards employee 1042's second system: the approval still covers it, no second prompt");
    let trace = TraceIds::new();
    let again = traced(&session, &trace)?
        .acquire_credential(&offboard)
        .await
        .context("AcquireCredential (offboard, grant reuse)")?
        .issued()
        .context("the grant was not reused")?;
    let grant = again
        .authorization
        .grant
        .as_ref()
        .context("issued without the grant")?;
    ensure!(
        grant.ticket_id == ticket.ticket_id,
        "another ticket's grant"
    );
    let prompts = stack.idp.ciba_requests(&[("all", "1")]).await?.len();
    ensure!(prompts == 1, "alice was asked {prompts} times");
    let mut step = issued_step("AcquireCredential offboard Employee 1042", &again, &trace);
    step.what.push_str(" (grant reused)");
    story.push(say, step);

    // 7. Outside the declared intent.
    say.heading("it tries to read employee 1043, which its session never declared");
    let trace = TraceIds::new();
    let outside = traced(&session, &trace)?
        .acquire_credential(&CredentialRequest::new(
            Entity::new("Action", "read"),
            Entity::new("Employee", "1043"),
            "hr-read",
        ))
        .await;
    let refused = match outside {
        Err(e) if e.code() == Code::PermissionDenied => e,
        Err(e) => bail!("reading employee 1043 failed otherwise: {e}"),
        Ok(_) => bail!("reading employee 1043 was allowed"),
    };
    ensure!(
        refused.policy_ids() == ["outside-declared-intent"],
        "refused by {:?}",
        refused.policy_ids()
    );
    story.push(
        say,
        refusal_step("AcquireCredential read Employee 1043", &refused, &trace),
    );

    // 8. The session ends: everything it held dies with it.
    say.heading("the agent ends its session");
    let trace = TraceIds::new();
    let receipt = traced(&session, &trace)?
        .end("task done")
        .await
        .context("EndSession")?;
    let revoked = receipt.revoked_leases.len();
    ensure!(
        revoked == 3 && receipt.pending_leases.is_empty(),
        "{revoked} leases revoked, {} pending",
        receipt.pending_leases.len()
    );
    story.push(
        say,
        Step {
            what: "EndSession".into(),
            outcome: "ended".into(),
            detail: format!(
                "{revoked} leases revoked, {} grants revoked, receipt {}",
                receipt.revoked_grant_ids.len(),
                receipt.receipt_id
            ),
            trace_id: trace.trace_id.clone(),
            ..Step::default()
        },
    );
    let login_after = sqlx::PgConnection::connect_with(
        &stack.deps.pg.options(reader.username(), reader.password()),
    )
    .await;
    ensure!(login_after.is_err(), "the read login still connects");
    let roles = stack.deps.pg.roles_like("v-").await?;
    ensure!(roles.is_empty(), "PostgreSQL still has roles {roles:?}");
    let token_after = session
        .authorize(&AuthorizeRequest::new(
            Entity::new("Action", "read"),
            Entity::new("Employee", "1042"),
        ))
        .await;
    let rejected = match token_after {
        Err(e) if e.code() == Code::Unauthenticated => e,
        other => bail!("the ended session's token was not rejected: {other:?}"),
    };
    say.line(&format!(
        "  proof: the read login no longer connects, pg_roles has no issued role, the token is rejected ({})",
        rejected.reason().unwrap_or("UNAUTHENTICATED")
    ));

    // 9. The audit log the story produced verifies.
    say.heading("`tether audit verify` on the audit log this story wrote");
    story.audit_verify = audit_verify(stack, &options.tether_bin).await?;
    say.line(&indent(&story.audit_verify));
    Ok(offboard_trace.trace_id)
}

/// Clicks Approve for `auth_req_id` on the device page in headless Chromium
/// (`integration-tests/idp/device-click.mjs`), saving a screenshot; `None`
/// when this machine has no Chromium or the IdP's node modules lack
/// playwright-core.
async fn approve_in_browser(
    page: &str,
    auth_req_id: &str,
    out_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let idp = crate::workspace_root().join("integration-tests/idp");
    if !Path::new("/usr/bin/chromium").exists()
        || !idp.join("node_modules/playwright-core").exists()
    {
        return Ok(None);
    }
    std::fs::create_dir_all(out_dir)?;
    // Absolute: the script runs in the IdP's directory.
    let screenshot = std::path::absolute(out_dir.join("alice-device.png"))?;
    let out = tokio::process::Command::new("node")
        .current_dir(&idp)
        .arg("device-click.mjs")
        .args([page, "approve", auth_req_id, "--screenshot"])
        .arg(&screenshot)
        .output()
        .await
        .context("running node device-click.mjs")?;
    ensure!(
        out.status.success(),
        "clicking Approve on the device page failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Some(screenshot))
}

/// Runs `tether audit verify` on the facade's log once a checkpoint covers
/// every record the story wrote.
async fn audit_verify(stack: &ProcessStack, tether: &Path) -> anyhow::Result<String> {
    let (db, key) = stack.audit_files();
    let store = tether_store::sqlite_url(&db);
    let vkey = key.with_extension("vkey");
    let mut last = String::new();
    // Checkpoints are published every second.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = tokio::process::Command::new(tether)
            .args(["audit", "verify", "--store", &store, "--key-file"])
            .arg(&vkey)
            .output()
            .await
            .with_context(|| format!("running {}", tether.display()))?;
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && !last.contains("not covered") {
            return Ok(last.trim_end().to_owned());
        }
    }
    bail!("`tether audit verify` did not pass: {last}")
}

/// The session, with a fresh W3C trace context the agent sends.
fn traced(session: &Session, trace: &TraceIds) -> Result<Session, ClientError> {
    session.clone().with_traceparent(&trace.traceparent())
}

fn decision_step(what: &str, answer: &Authorization, trace: &TraceIds) -> Step {
    Step {
        what: what.into(),
        outcome: answer.decision.as_str().into(),
        policy_ids: answer.policy_ids.clone(),
        approval: answer
            .grant
            .as_ref()
            .map(|g| {
                format!(
                    "grant of {} ({} left)",
                    short(&g.ticket_id),
                    g.remaining_uses
                )
            })
            .unwrap_or_default(),
        trace_id: trace.trace_id.clone(),
        ..Step::default()
    }
}

fn issued_step(what: &str, issued: &IssuedCredential, trace: &TraceIds) -> Step {
    Step {
        detail: format!("lease {}", issued.lease.lease_id),
        lease_ttl: issued.lease.granted_ttl,
        ..decision_step(what, &issued.authorization, trace)
    }
}

fn refusal_step(what: &str, error: &ClientError, trace: &TraceIds) -> Step {
    Step {
        what: what.into(),
        outcome: "DENY".into(),
        detail: format!(
            "PERMISSION_DENIED ({})",
            error.reason().unwrap_or("no reason")
        ),
        policy_ids: error.policy_ids(),
        trace_id: trace.trace_id.clone(),
        ..Step::default()
    }
}

impl Story {
    fn push(&mut self, say: &Say, step: Step) {
        say.line(&format!("  {}", step.line()));
        self.steps.push(step);
    }

    /// The whole timeline as a table.
    pub fn timeline(&self) -> String {
        const TRACE_ID: &str = "trace id";
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>2}  {:<56} {:<17} {:<24} {:>9}  {:<32} {TRACE_ID}",
            "#", "step", "decision", "policies", "lease TTL", "approval"
        );
        for (n, step) in self.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>2}  {:<56} {:<17} {:<24} {:>9}  {:<32} {}",
                n + 1,
                step.what,
                step.outcome,
                dash(&step.policy_ids.join(",")),
                step.lease_ttl
                    .map_or_else(|| "-".into(), |t| format!("{}s", t.as_secs())),
                dash(&step.approval),
                dash(&step.trace_id),
            );
        }
        out
    }
}

impl Step {
    fn line(&self) -> String {
        let mut parts = vec![self.outcome.clone()];
        if !self.detail.is_empty() {
            parts.push(self.detail.clone());
        }
        if !self.policy_ids.is_empty() {
            parts.push(format!("policies {}", self.policy_ids.join(",")));
        }
        if let Some(ttl) = self.lease_ttl {
            parts.push(format!("lease TTL {}s", ttl.as_secs()));
        }
        if !self.approval.is_empty() {
            parts.push(format!("approval {}", self.approval));
        }
        if !self.trace_id.is_empty() {
            parts.push(format!("trace {}", self.trace_id));
        }
        format!("{}: {}", self.what, parts.join(" · "))
    }
}

/// An id shortened for the timeline (`tkt_7713b940…`).
fn short(id: &str) -> String {
    match id.char_indices().nth(12) {
        Some((end, _)) => format!("{}…", &id[..end]),
        None => id.to_owned(),
    }
}

fn dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh W3C trace context, sampled.
struct TraceIds {
    trace_id: String,
    span_id: String,
}

impl TraceIds {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let span = uuid::Uuid::new_v4().simple().to_string();
        Self {
            trace_id: id,
            span_id: span[..16].to_owned(),
        }
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// Prints the story when asked to.
struct Say(bool);

impl Say {
    fn heading(&self, text: &str) {
        if self.0 {
            println!("\n\u{25b6} {text}");
        }
    }

    fn line(&self, text: &str) {
        if self.0 {
            println!("{text}");
        }
    }
}
