//! Approval orchestrator benchmark (BENCHMARKS.md, "Approval orchestrator").
//!
//! End to end on loopback, with the real test IdP (node `oidc-provider`,
//! its test device approving) and a real identity exchange minting the
//! agent's delegated tokens:
//!
//! 1. `ping`: the orchestrator in ping mode (the sandbox, in this process,
//!    over mTLS). Per approval: a fresh ticket (its own resource), a
//!    WatchApproval stream open on it, then the device approves; measured
//!    is the time from the approval (just before the approve call is sent,
//!    and from its answer) to the stream delivering the APPROVED ticket,
//!    with the hops in between taken from the orchestrator's own log
//!    events and the IdP's record of the token request. Interleaved with
//!    it, the same approval done against the IdP alone by a client that
//!    asks the token endpoint right after the approve answer: what the IdP
//!    itself takes.
//! 2. `poll`: 1,000 tickets pending at once on the release binary
//!    `tether-ciba-orchestrator` in its own process (production `[tickets]`
//!    and `[sessions]` defaults, SQLite, mTLS), the IdP answering with
//!    `interval` 5 s. Its CPU (utime + stime from `/proc/<pid>/stat`) and
//!    RSS (`VmRSS`) over a measured hold, idle, with the tickets, and with
//!    a WatchApproval stream open per ticket; then, from the IdP's record
//!    of every token request per CIBA request, whether any was polled
//!    faster than its interval.
//!
//! Run: `integration-tests/run.sh bench` (or
//! `cargo bench -p tether-integration-tests --bench approvals`; `-- ping`
//! or `-- poll` runs one part). The poll part runs the release binary
//! built beforehand by `cargo build --release -p tether-ciba-orchestrator`
//! (or `$APPROVALS_ORCHESTRATOR_BIN`). `APPROVALS_HOLD_SECS` and
//! `APPROVALS_TICKETS` shorten it for a quick look.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark binary: a failure aborts the run"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use tether_ciba_orchestrator::FatigueLimits;
use tether_integration_tests::approvals::{
    ApprovalsSandbox, Delivery, OFFBOARD, PING_CLIENT, POLL_CLIENT, SERVICE, approval_request,
    authority,
};
use tether_integration_tests::bench::Stats;
use tether_integration_tests::idp::Idp;
use tether_integration_tests::issuer::{DelegatedSession, SessionAuthority};
use tether_integration_tests::postgres::free_port;
use tether_proto::approval::v1 as pb;
use tether_proto::approval::v1::approval_orchestrator_client::ApprovalOrchestratorClient;
use tether_runtime::client::InternalChannel;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const PING_WARMUP: usize = 20;
const PING_SAMPLES: usize = 250;

/// Tickets held pending at once in the poll part.
const POLL_TICKETS: usize = 1_000;
/// The `interval` the IdP gives in poll mode (seconds).
const POLL_INTERVAL_SECS: u64 = 5;
/// Each measured window of the poll part.
const HOLD_SECS: u64 = 60;
/// Sessions the poll part's tickets are spread over.
const SESSIONS: usize = 10;
/// Callers creating the tickets at once.
const CREATORS: usize = 8;
/// Connections the WatchApproval streams are spread over.
const WATCH_CHANNELS: usize = 8;

fn main() -> anyhow::Result<()> {
    let marks = Marks::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    runtime.block_on(async {
        if wanted("ping") {
            ping(&marks).await.context("the ping part")?;
        }
        if wanted("poll") {
            poll().await.context("the poll part")?;
        }
        anyhow::Ok(())
    })
}

// ------------------------------------------------------------------ ping --

/// When the orchestrator (in this process) logged the steps of a ticket,
/// by ticket id: read from its own tracing events, so nothing is added to
/// the path being measured.
#[derive(Debug, Clone, Default)]
struct Marks(Arc<Mutex<HashMap<String, Mark>>>);

#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    /// The ping handler matched the ping and woke the ticket's driver.
    ping: Option<Instant>,
    /// The driver wrote the terminal state (and grant).
    decided: Option<Instant>,
}

/// `ping.rs` and `driver.rs` event messages.
const PING_ACCEPTED: &str = "CIBA ping accepted; fetching the result";
const DECIDED: &str = "approval ticket decided";

impl Marks {
    /// Installs the process-wide subscriber: these marks from the
    /// orchestrator, and WARN and above from everything to stderr.
    fn install() -> Self {
        let marks = Self::default();
        let layer = marks
            .clone()
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("tether_ciba_orchestrator")
            }));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        tracing_subscriber::registry().with(layer).with(fmt).init();
        marks
    }

    fn get(&self, ticket: &str) -> Mark {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ticket)
            .copied()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct EventFields {
    message: String,
    ticket: String,
}

impl tracing::field::Visit for EventFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "ticket" => self.ticket = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "ticket" => value.clone_into(&mut self.ticket),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Marks {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let at = Instant::now();
        let mut fields = EventFields::default();
        event.record(&mut fields);
        if fields.ticket.is_empty() {
            return;
        }
        let mut marks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mark = marks.entry(fields.ticket).or_default();
        match fields.message.as_str() {
            PING_ACCEPTED => mark.ping = mark.ping.or(Some(at)),
            DECIDED => mark.decided = mark.decided.or(Some(at)),
            _ => {}
        }
    }
}

/// The test IdP over one keep-alive HTTP client: its CIBA endpoints as a
/// client calls them, and its test device.
struct IdpHttp {
    http: reqwest::Client,
    issuer: String,
    backchannel: String,
    token: String,
}

impl IdpHttp {
    async fn new(issuer: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let discovery: Value = http
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let endpoint = |name: &str| {
            discovery[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("discovery has no `{name}`"))
        };
        Ok(Self {
            backchannel: endpoint("backchannel_authentication_endpoint")?,
            token: endpoint("token_endpoint")?,
            http,
            issuer: issuer.trim_end_matches('/').to_owned(),
        })
    }

    /// `{issuer}/test/ciba/<segments…>`.
    fn test_url(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.issuer)?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the issuer URL has no path"))?
            .pop_if_empty()
            .extend(["test", "ciba"])
            .extend(segments);
        Ok(url)
    }

    /// The device approves (`POST /test/ciba/:id/approve`); for a ping
    /// client the IdP answers after it delivered the ping.
    async fn approve(&self, auth_req_id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.test_url(&[auth_req_id, "approve"])?)
            .json(&json!({}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status.is_success(), "approve answered {status}: {body}");
        Ok(body)
    }

    /// One CIBA request as the device sees it, with its `polls`.
    async fn request(&self, auth_req_id: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(self.test_url(&[auth_req_id])?)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The pending requests of `client_id`, each with its `polls`.
    async fn pending(&self, client_id: &str) -> anyhow::Result<Vec<Value>> {
        let mut url = self.test_url(&["pending"])?;
        url.query_pairs_mut()
            .append_pair("status", "pending")
            .append_pair("client_id", client_id);
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// A backchannel authentication request for alice, as `client`.
    async fn backchannel(&self, client: (&str, &str), message: &str) -> anyhow::Result<String> {
        let body: Value = self
            .http
            .post(&self.backchannel)
            .basic_auth(client.0, Some(client.1))
            .form(&[
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("binding_message", message),
                ("requested_expiry", "300"),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        body["auth_req_id"]
            .as_str()
            .map(str::to_owned)
            .context("no auth_req_id")
    }

    /// One token request (grant type CIBA), as `client`.
    async fn token(
        &self,
        client: (&str, &str),
        auth_req_id: &str,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let response = self
            .http
            .post(&self.token)
            .basic_auth(client.0, Some(client.1))
            .form(&[
                ("grant_type", "urn:openid:params:grant-type:ciba"),
                ("auth_req_id", auth_req_id),
            ])
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.json().await?))
    }
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn from_ms(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// p50 / p99 in milliseconds.
fn ms(stats: &Stats) -> String {
    format!(
        "{:.2} / {:.2}",
        stats.micros(0.50) / 1000.0,
        stats.micros(0.99) / 1000.0
    )
}

/// Every histogram of the ping part.
struct PingStats {
    /// Approve sent → WatchApproval delivers APPROVED.
    total: Stats,
    /// Approve answered → WatchApproval delivers (0 when it came first).
    after_answer: Stats,
    /// How many deliveries came before the approve call's answer.
    before_answer: usize,
    /// Approve sent → its answer (the IdP decides, saves, and pings).
    approve_answer: Stats,
    /// Approve sent → the orchestrator accepted the ping.
    to_ping: Stats,
    /// Ping accepted → ticket decided (token request, ID token, write).
    ping_to_decided: Stats,
    /// Decided → the WatchApproval message arrives.
    decided_to_watch: Stats,
    /// Approve sent → the orchestrator's token request reaches the IdP
    /// (the IdP's clock, whole milliseconds).
    to_token_request: Stats,
    /// The IdP alone: approve answer (no ping), token request answered
    /// `authorization_pending`, token request answered with tokens, and
    /// approve sent → tokens in hand.
    peer_approve: Stats,
    peer_pending: Stats,
    peer_tokens: Stats,
    peer_total: Stats,
}

impl PingStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            total: Stats::new()?,
            after_answer: Stats::new()?,
            before_answer: 0,
            approve_answer: Stats::new()?,
            to_ping: Stats::new()?,
            ping_to_decided: Stats::new()?,
            decided_to_watch: Stats::new()?,
            to_token_request: Stats::new()?,
            peer_approve: Stats::new()?,
            peer_pending: Stats::new()?,
            peer_tokens: Stats::new()?,
            peer_total: Stats::new()?,
        })
    }
}

async fn ping(marks: &Marks) -> anyhow::Result<()> {
    let authority = authority().await?;
    let sandbox = ApprovalsSandbox::builder(&authority)?
        .delivery(Delivery::Ping)
        .limits(FatigueLimits {
            prompts_per_user: 1_000_000,
            ..FatigueLimits::default()
        })
        .start(authority.idp())
        .await?;
    let session = authority.session().await?;
    let idp = IdpHttp::new(authority.idp().issuer()).await?;
    let mut client = sandbox.client();
    let mut stats = PingStats::new()?;
    let mut warm = PingStats::new()?;
    for i in 0..PING_WARMUP + PING_SAMPLES {
        let into = if i < PING_WARMUP {
            &mut warm
        } else {
            &mut stats
        };
        orchestrator_approval(&mut client, &idp, &session, marks, i, into).await?;
        peer_approval(&idp, i, into).await?;
    }

    // Every approval cost the IdP exactly one token request.
    let all = idp.pending(PING_CLIENT.0).await?;
    ensure!(all.is_empty(), "tickets left pending: {}", all.len());

    let n = stats.total.count();
    println!();
    println!(
        "Ping mode: {n} approvals (after {PING_WARMUP} warm-up), one at a time, each a fresh ticket with a WatchApproval stream open; IdP approve answers only after its ping was delivered."
    );
    println!();
    println!("| ping mode, approval → agent | p50 / p99 (ms) |");
    println!("| --- | ---: |");
    println!(
        "| **approve sent → WatchApproval delivers APPROVED** | **{}** |",
        ms(&stats.total)
    );
    println!(
        "| approve answered → WatchApproval delivers (delivered before the answer, counted as 0: {} of {n}) | {} |",
        stats.before_answer,
        ms(&stats.after_answer)
    );
    println!(
        "| … approve sent → the orchestrator accepted the ping (IdP decides, saves, POSTs the ping; ticket looked up, driver woken) | {} |",
        ms(&stats.to_ping)
    );
    println!(
        "| … ping accepted → ticket decided (token request, ID token verified, ticket and grant written) | {} |",
        ms(&stats.ping_to_decided)
    );
    println!(
        "| … ticket decided → WatchApproval message received (store re-read, gRPC over mTLS) | {} |",
        ms(&stats.decided_to_watch)
    );
    println!(
        "| approve sent → the orchestrator's token request reaches the IdP (IdP clock, 1 ms resolution) | {} |",
        ms(&stats.to_token_request)
    );
    println!(
        "| approve sent → approve answered (ping client: after the ping) | {} |",
        ms(&stats.approve_answer)
    );
    println!("| **IdP alone** (poll client, no ping), interleaved | |");
    println!(
        "| approve sent → approve answered | {} |",
        ms(&stats.peer_approve)
    );
    println!(
        "| token request → `authorization_pending` | {} |",
        ms(&stats.peer_pending)
    );
    println!(
        "| token request → tokens (ID token signed) | {} |",
        ms(&stats.peer_tokens)
    );
    println!(
        "| **approve sent → tokens in hand** (client asks right after the approve answer) | **{}** |",
        ms(&stats.peer_total)
    );
    Ok(())
}

/// One approval through the orchestrator in ping mode.
async fn orchestrator_approval(
    client: &mut ApprovalOrchestratorClient<InternalChannel>,
    idp: &IdpHttp,
    session: &DelegatedSession,
    marks: &Marks,
    i: usize,
    into: &mut PingStats,
) -> anyhow::Result<()> {
    let resource = format!(r#"Hr::Employee::"ping-{i}""#);
    let created = client
        .request_approval(session.request(approval_request(session, OFFBOARD, &resource)))
        .await?
        .into_inner();
    ensure!(
        created.outcome() == pb::RequestOutcome::TicketCreated,
        "{created:?}"
    );
    let ticket = created.ticket.context("no ticket")?;
    let device: Vec<Value> = idp
        .pending(PING_CLIENT.0)
        .await?
        .into_iter()
        .filter(|r| r["binding_message"] == ticket.binding_message.as_str())
        .collect();
    ensure!(device.len() == 1, "the device shows {device:?}");
    let auth_req_id = device[0]["auth_req_id"]
        .as_str()
        .context("no auth_req_id")?
        .to_owned();

    let mut stream = client
        .watch_approval(session.request(pb::WatchApprovalRequest {
            ticket_id: ticket.ticket_id.clone(),
            session_id: session.sid().into(),
        }))
        .await?
        .into_inner();
    let first = stream.message().await?.context("no first snapshot")?;
    ensure!(
        first.ticket.as_ref().map(pb::Ticket::state) == Some(pb::TicketState::Pending),
        "{first:?}"
    );

    let wall = SystemTime::now();
    let sent = Instant::now();
    let (answered, delivered) = tokio::join!(
        async {
            let answer = idp.approve(&auth_req_id).await;
            (answer, Instant::now())
        },
        async {
            let last = loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        let t = m.ticket.unwrap_or_default();
                        if t.state() != pb::TicketState::Pending {
                            break Ok(t);
                        }
                    }
                    Ok(None) => break Err(anyhow::anyhow!("the stream ended while pending")),
                    Err(e) => break Err(e.into()),
                }
            };
            (last, Instant::now())
        },
    );
    let (answer, answered_at) = answered;
    let answer = answer?;
    ensure!(answer["notify"] == "sent", "ping not delivered: {answer}");
    let (last, delivered_at) = delivered;
    let last = last?;
    ensure!(
        last.state() == pb::TicketState::Approved && last.approver == "alice",
        "{last:?}"
    );
    ensure!(last.grant.is_some(), "approved without a grant: {last:?}");

    into.total.record(delivered_at - sent)?;
    into.approve_answer.record(answered_at - sent)?;
    match delivered_at.checked_duration_since(answered_at) {
        Some(after) => into.after_answer.record(after)?,
        None => {
            into.before_answer += 1;
            into.after_answer.record(Duration::ZERO)?;
        }
    }
    let mark = marks.get(&ticket.ticket_id);
    let (Some(pinged), Some(decided)) = (mark.ping, mark.decided) else {
        bail!(
            "the orchestrator did not log `{PING_ACCEPTED}` and `{DECIDED}` for {}: {mark:?}",
            ticket.ticket_id
        );
    };
    into.to_ping
        .record(pinged.saturating_duration_since(sent))?;
    into.ping_to_decided
        .record(decided.saturating_duration_since(pinged))?;
    into.decided_to_watch
        .record(delivered_at.saturating_duration_since(decided))?;

    let record = idp.request(&auth_req_id).await?;
    let polls = record["polls"].as_array().context("no polls")?;
    ensure!(
        polls.len() == 1 && polls[0]["result"] == "tokens",
        "one token request per approval expected: {polls:?}"
    );
    let at = polls[0]["at_ms"].as_f64().context("no at_ms")?;
    into.to_token_request.record(from_ms(at - unix_ms(wall)))?;
    Ok(())
}

/// The same approval against the IdP alone: a client that asks the token
/// endpoint once while pending and once right after the approve answer.
async fn peer_approval(idp: &IdpHttp, i: usize, into: &mut PingStats) -> anyhow::Result<()> {
    let auth_req_id = idp
        .backchannel(POLL_CLIENT, &format!("Direct approval {i}"))
        .await?;
    let start = Instant::now();
    let (status, body) = idp.token(POLL_CLIENT, &auth_req_id).await?;
    into.peer_pending.record(start.elapsed())?;
    ensure!(
        status == reqwest::StatusCode::BAD_REQUEST && body["error"] == "authorization_pending",
        "{status}: {body}"
    );
    let sent = Instant::now();
    idp.approve(&auth_req_id).await?;
    let answered = Instant::now();
    let (status, body) = idp.token(POLL_CLIENT, &auth_req_id).await?;
    let done = Instant::now();
    ensure!(
        status.is_success() && body["id_token"].is_string(),
        "{status}: {body}"
    );
    into.peer_approve.record(answered - sent)?;
    into.peer_tokens.record(done - answered)?;
    into.peer_total.record(done - sent)?;
    Ok(())
}

// ------------------------------------------------------------------ poll --

fn env_or(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("`{name}`")),
        Err(_) => Ok(default),
    }
}

/// The release binary: `$APPROVALS_ORCHESTRATOR_BIN`, else the one in
/// this bench's own profile directory, built beforehand with `cargo build
/// --release -p tether-ciba-orchestrator` (`run.sh bench` does): `cargo
/// bench` holds the target directory's lock while a bench runs, so the
/// bench cannot build it itself.
fn orchestrator_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("APPROVALS_ORCHESTRATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    // This bench is <target>/release/deps/approvals-<hash>.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench's profile directory")?
        .join("tether-ciba-orchestrator");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "no {}: run `cargo build --release -p tether-ciba-orchestrator` first",
                bin.display()
            )
        })?;
    let crate_dir = tether_integration_tests::workspace_root().join("services/ciba-orchestrator");
    if newest_file(&crate_dir).is_some_and(|newest| newest > built) {
        eprintln!(
            "warning: {} is older than the sources in {}; rebuild it with `cargo build --release -p tether-ciba-orchestrator`",
            bin.display(),
            crate_dir.display()
        );
    }
    Ok(bin)
}

/// The latest modification time of any file under `dir`.
fn newest_file(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let kind = entry.file_type().ok()?;
            if kind.is_dir() {
                newest_file(&entry.path())
            } else {
                entry.metadata().and_then(|m| m.modified()).ok()
            }
        })
        .max()
}

/// The orchestrator process; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) and memory of one process, from `/proc`.
struct ProcStat {
    pid: u32,
    ticks_per_sec: f64,
}

impl ProcStat {
    fn new(pid: u32) -> Self {
        let ticks_per_sec = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self { pid, ticks_per_sec }
    }

    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name; the first of them is field 3.
        let rest = stat.rsplit_once(')').context("unreadable stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<f64> {
            Ok(fields
                .get(n - 3)
                .with_context(|| format!("stat field {n}"))?
                .parse()?)
        };
        // utime and stime are fields 14 and 15, in clock ticks.
        Ok(Duration::from_secs_f64(
            (field(14)? + field(15)?) / self.ticks_per_sec,
        ))
    }

    /// `(VmRSS, VmHWM)` in KiB.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib = |key: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .with_context(|| format!("no {key}"))?
                .parse()
                .map_err(Into::into)
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }
}

/// The newest live `node` child of this process: the test IdP.
fn idp_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let Some((head, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                head.ends_with("(node")
                    && fields.first() != Some(&"Z")
                    && fields.get(1) == Some(&me.as_str())
            })
        })
        .max()
}

/// What one measured window saw.
struct Usage {
    wall: Duration,
    cpu_percent: f64,
    rss_mean_mib: f64,
    rss_max_mib: f64,
    idp_cpu_percent: Option<f64>,
    /// Unix ms of the window's start and end.
    from_ms: f64,
    to_ms: f64,
}

async fn measure(orchestrator: &ProcStat, window: Duration) -> anyhow::Result<Usage> {
    let idp = idp_pid().map(ProcStat::new);
    let from_ms = unix_ms(SystemTime::now());
    let start = Instant::now();
    let cpu0 = orchestrator.cpu()?;
    let idp0 = idp.as_ref().and_then(|p| p.cpu().ok());
    let mut rss = Vec::new();
    while start.elapsed() < window {
        rss.push(orchestrator.memory()?.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu1 = orchestrator.cpu()?;
    let idp1 = idp.as_ref().and_then(|p| p.cpu().ok());
    let wall = start.elapsed();
    let to_ms = unix_ms(SystemTime::now());
    let percent = |d: Duration| d.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(Usage {
        wall,
        cpu_percent: percent(cpu1.saturating_sub(cpu0)),
        rss_mean_mib: mib(rss.iter().sum::<u64>()) / rss.len().max(1) as f64,
        rss_max_mib: mib(rss.iter().copied().max().unwrap_or(0)),
        idp_cpu_percent: idp0.zip(idp1).map(|(a, b)| percent(b.saturating_sub(a))),
        from_ms,
        to_ms,
    })
}

/// `ciba-orchestrator.toml` for the poll part: production defaults except
/// the IdP, the store directory and the anti-fatigue rate limit.
fn poll_config(dir: &Path, authority: &SessionAuthority, port: u16) -> anyhow::Result<PathBuf> {
    let sessions = authority.sessions_config();
    let mut tls = authority.identity().pki().tls(SERVICE)?;
    tls.reload_interval_ms = tether_runtime::TlsConfig::default().reload_interval_ms;
    let secret = dir.join("ciba-client-secret");
    std::fs::write(&secret, POLL_CLIENT.1)?;
    let body = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[ciba]
issuer = "{idp}"
client_id = "{client}"
delivery_mode = "poll"
requested_expiry_secs = 600
max_requested_expiry_secs = 600
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
[limits]
prompts_per_user = 1000000
"#,
        idp = authority.idp().issuer(),
        client = POLL_CLIENT.0,
        secret = secret.display(),
        data = dir.join("data").display(),
        token_issuer = sessions.token_issuer,
        audience = sessions.audience,
        jwks_url = sessions.jwks_url,
        identity_exchange = sessions.identity_exchange,
    ) + &tls.to_toml_section();
    let path = dir.join("ciba-orchestrator.toml");
    std::fs::write(&path, body)?;
    Ok(path)
}

/// Waits until the orchestrator answers health on `channel`.
async fn connect(
    channel: InternalChannel,
    proc: &mut Proc,
    log: &Path,
) -> anyhow::Result<ApprovalOrchestratorClient<InternalChannel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        if health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
        {
            return Ok(ApprovalOrchestratorClient::new(channel));
        }
        if let Some(status) = proc.0.try_wait()? {
            bail!(
                "the orchestrator exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "the orchestrator did not answer health within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `count` tickets, `CREATORS` at a time; returns (ticket id,
/// session index).
async fn create_tickets(
    client: &ApprovalOrchestratorClient<InternalChannel>,
    sessions: &Arc<Vec<DelegatedSession>>,
    count: usize,
) -> anyhow::Result<Vec<(String, usize)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let mut client = client.clone();
        let sessions = Arc::clone(sessions);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(made);
                }
                let s = i % sessions.len();
                let session = &sessions[s];
                let resource = format!(r#"Hr::Employee::"hold-{i}""#);
                let created = client
                    .request_approval(
                        session.request(approval_request(session, OFFBOARD, &resource)),
                    )
                    .await?
                    .into_inner();
                ensure!(
                    created.outcome() == pb::RequestOutcome::TicketCreated,
                    "{created:?}"
                );
                made.push((created.ticket.context("no ticket")?.ticket_id, s));
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// What the IdP recorded about the orchestrator's token requests.
struct PollCheck {
    requests: usize,
    polls: usize,
    /// Smallest gap between two token requests for the same request.
    min_gap_ms: f64,
    /// Gaps shorter than the interval.
    too_fast: usize,
    /// Token requests per request inside each window: (min, max).
    per_window: Vec<(usize, usize, usize)>,
    /// Answers other than `authorization_pending`.
    other_answers: usize,
}

fn check_polls(records: &[Value], windows: &[(f64, f64)], interval_ms: f64) -> PollCheck {
    let mut check = PollCheck {
        requests: records.len(),
        polls: 0,
        min_gap_ms: f64::INFINITY,
        too_fast: 0,
        per_window: vec![(usize::MAX, 0, 0); windows.len()],
        other_answers: 0,
    };
    for record in records {
        let polls = record["polls"].as_array().cloned().unwrap_or_default();
        let times: Vec<f64> = polls.iter().filter_map(|p| p["at_ms"].as_f64()).collect();
        check.polls += times.len();
        check.other_answers += polls
            .iter()
            .filter(|p| p["result"] != "authorization_pending")
            .count();
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            check.min_gap_ms = check.min_gap_ms.min(gap);
            if gap < interval_ms {
                check.too_fast += 1;
            }
        }
        for (w, (from, to)) in windows.iter().enumerate() {
            let n = times.iter().filter(|t| (*from..*to).contains(*t)).count();
            let slot = &mut check.per_window[w];
            slot.0 = slot.0.min(n);
            slot.1 = slot.1.max(n);
            slot.2 += n;
        }
    }
    check
}

async fn poll() -> anyhow::Result<()> {
    let hold = Duration::from_secs(env_or("APPROVALS_HOLD_SECS", HOLD_SECS)?);
    let count = usize::try_from(env_or("APPROVALS_TICKETS", POLL_TICKETS as u64)?)?;
    let bin = orchestrator_binary()?;
    ensure!(bin.exists(), "no orchestrator binary at {}", bin.display());

    let idp = Idp::start_with_config(json!({ "cibaInterval": POLL_INTERVAL_SECS })).await?;
    let authority = SessionAuthority::start_on(idp, |builder| builder).await?;
    let idp = IdpHttp::new(authority.idp().issuer()).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config = poll_config(dir.path(), &authority, port)?;
    // Every client certificate is written before the orchestrator starts
    // (writing one rewrites the CA bundle the orchestrator watches).
    let mut channels = Vec::new();
    for _ in 0..=WATCH_CHANNELS {
        channels.push(
            authority
                .identity()
                .pki()
                .channel("agent-facade", addr, SERVICE)?,
        );
    }
    let log = dir.path().join("orchestrator.log");
    let mut proc = Proc(
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .env("TETHER_LOG", "info")
            .env_remove("TETHER_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let client = connect(channels[WATCH_CHANNELS].clone(), &mut proc, &log).await?;
    let stat = ProcStat::new(proc.0.id());

    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(authority.session().await?);
    }
    let min_exp = sessions.iter().map(|s| s.claims.exp).min().unwrap_or(0);
    let needed = i64::try_from((hold * 2 + Duration::from_secs(120)).as_secs())?;
    ensure!(
        min_exp - tether_token::unix_now() > needed,
        "the sessions end too soon for the hold"
    );
    let sessions = Arc::new(sessions);

    println!();
    println!(
        "Poll mode: the release binary, its own process; {count} tickets over {SESSIONS} sessions; IdP interval {POLL_INTERVAL_SECS} s; each window {} s.",
        hold.as_secs()
    );
    let settle = Duration::from_secs(10);
    tokio::time::sleep(settle).await;
    let idle = measure(&stat, hold.min(Duration::from_secs(20))).await?;

    let started = Instant::now();
    let tickets = create_tickets(&client, &sessions, count).await?;
    let creation = started.elapsed();
    let device = idp.pending(POLL_CLIENT.0).await?;
    ensure!(
        device.len() == count,
        "the device shows {} pending requests",
        device.len()
    );
    // Let the creation burst pass: polls spread over the interval as the
    // tickets were created.
    tokio::time::sleep(settle).await;
    let held = measure(&stat, hold).await?;

    // The facade's view: a WatchApproval stream per ticket, drained.
    let mut channels: Vec<_> = channels[..WATCH_CHANNELS]
        .iter()
        .cloned()
        .map(ApprovalOrchestratorClient::new)
        .collect();
    let snapshots = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for (n, (ticket_id, s)) in tickets.iter().enumerate() {
        let session = &sessions[*s];
        let mut stream = channels[n % WATCH_CHANNELS]
            .watch_approval(session.request(pb::WatchApprovalRequest {
                ticket_id: ticket_id.clone(),
                session_id: session.sid().into(),
            }))
            .await?
            .into_inner();
        let snapshots = Arc::clone(&snapshots);
        let ended = Arc::clone(&ended);
        watchers.push(tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(m))
                        if m.ticket.as_ref().map(pb::Ticket::state)
                            == Some(pb::TicketState::Pending) =>
                    {
                        snapshots.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        ended.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(settle).await;
    let watched = measure(&stat, hold).await?;
    let streams_ended = ended.load(Ordering::Relaxed);
    let snapshots = snapshots.load(Ordering::Relaxed);
    for watcher in &watchers {
        watcher.abort();
    }
    let (_, peak_kib) = stat.memory()?;

    let records = idp.pending(POLL_CLIENT.0).await?;
    ensure!(
        records.len() == count,
        "{} of {count} requests still pending at the IdP after the hold",
        records.len()
    );
    let interval_ms = (POLL_INTERVAL_SECS * 1000) as f64;
    let check = check_polls(
        &records,
        &[(held.from_ms, held.to_ms), (watched.from_ms, watched.to_ms)],
        interval_ms,
    );

    // Stop it as an operator would: SIGTERM, drain, exit 0.
    let stopping = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let exit = loop {
        if let Some(exit) = proc.0.try_wait()? {
            break Some(exit);
        }
        if stopping.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop_time = stopping.elapsed();

    println!();
    println!(
        "Created {count} tickets in {:.1} s ({:.0}/s, {CREATORS} callers).",
        creation.as_secs_f64(),
        count as f64 / creation.as_secs_f64()
    );
    println!();
    println!(
        "| tether-ciba-orchestrator (release) | window (s) | CPU, % of one core | RSS mean / max (MiB) | IdP (node) CPU, % of one core | token requests/s at the IdP |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, u: &Usage, polls: Option<usize>| {
        println!(
            "| {name} | {:.1} | {:.2} | {:.1} / {:.1} | {} | {} |",
            u.wall.as_secs_f64(),
            u.cpu_percent,
            u.rss_mean_mib,
            u.rss_max_mib,
            u.idp_cpu_percent
                .map_or_else(|| "n/a".to_owned(), |p| format!("{p:.1}")),
            polls.map_or_else(
                || "0".to_owned(),
                |n| format!("{:.1}", n as f64 / ((u.to_ms - u.from_ms) / 1000.0))
            ),
        );
    };
    row("idle (no tickets)", &idle, None);
    row(
        &format!("{count} pending tickets"),
        &held,
        Some(check.per_window[0].2),
    );
    row(
        &format!("{count} pending tickets + {count} WatchApproval streams"),
        &watched,
        Some(check.per_window[1].2),
    );
    println!();
    println!(
        "Peak RSS over the whole run (VmHWM): {:.1} MiB. Watch streams: {snapshots} PENDING snapshots received, {streams_ended} ended early.",
        peak_kib as f64 / 1024.0
    );
    let expected_max = (hold.as_secs() / POLL_INTERVAL_SECS) + 1;
    println!(
        "Poll interval (the IdP's record of every token request): {} token requests over {} CIBA requests; smallest gap between two for the same request {:.0} ms (interval {interval_ms:.0} ms); gaps under the interval: {}; answers other than `authorization_pending`: {}; per request in the first window: {} to {} (at most {expected_max} possible), in the second: {} to {}.",
        check.polls,
        check.requests,
        check.min_gap_ms,
        check.too_fast,
        check.other_answers,
        check.per_window[0].0,
        check.per_window[0].1,
        check.per_window[1].0,
        check.per_window[1].1,
    );
    println!(
        "SIGTERM with {count} tickets pending: {} in {:.2} s.",
        exit.map_or_else(|| "no exit".to_owned(), |e| e.to_string()),
        stop_time.as_secs_f64()
    );
    ensure!(
        check.too_fast == 0,
        "a ticket was polled faster than its interval"
    );
    ensure!(
        streams_ended == 0,
        "WatchApproval streams ended while pending"
    );
    Ok(())
}
