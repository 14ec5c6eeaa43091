//! What the audit log costs `Authorize`: the whole stack on loopback
//! (`FacadeStack`) and two more facades side by side on it, started the
//! same way from the same configuration except `[audit]`: one with the
//! audit log on (SQLite in a temporary directory on the machine's disk),
//! one with `enabled = false`. The same session's token calls both;
//! measured in the same run, alternating in rounds (this machine is
//! shared; absolute times drift, ratios within a run do not).
//!
//! `cargo bench -p tether-integration-tests --bench facade_audit`
//!
//! 1. Sequential `Authorize` (an allowed read: its decision record is
//!    written behind the answer, grouped with others).
//! 2. `Authorize` at concurrency 32: latency and throughput.
//! 3. For scale, what one durable record costs on the same disk
//!    (`AuditLog::append`, one commit with `synchronous = FULL`): the
//!    price an issuance, an approval or a session end pays on its path.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tether_audit::{AuditKey, AuditLog, AuditRecord, RecordKind};
use tether_integration_tests::Running;
use tether_integration_tests::bench::{AuthorizeCaller, Stats, Throughput, sequential, throughput};
use tether_integration_tests::facade::FacadeStack;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;

const ROUNDS: usize = 10;
const WARMUP: usize = 300;
const PER_ROUND: usize = 500;
const CONCURRENCY: usize = 32;
const CONCURRENT_ROUNDS: usize = 4;
const CONCURRENT_SECS: u64 = 3;
const APPENDS: usize = 500;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-servers")
        .enable_all()
        .build()
        .context("building the server runtime")?;

    // The stack and the second facade run on their own runtime (as
    // separate processes would), so the clients do not share their threads.
    let audit_dir = tempfile::tempdir()?;
    let (stack, [off, on]) = servers.block_on(async {
        let stack = FacadeStack::builder().start().await?;
        let mut off = stack.config().clone();
        off.audit.enabled = false;
        let mut on = stack.config().clone();
        on.audit.data_dir = audit_dir.path().to_owned();
        // The default interval, not the stack's test setting of 1 s.
        on.audit.checkpoint_interval_secs =
            tether_agent_facade::AuditConfig::default().checkpoint_interval_secs;
        let off = Facade::start(&stack, off).await?;
        let on = Facade::start(&stack, on).await?;
        anyhow::Ok((stack, [off, on]))
    })?;

    let result = runtime.block_on(async {
        let token = stack.session().await?.delegated_token;
        let caller = |facade: &Facade| -> anyhow::Result<AuthorizeCaller> {
            Ok(AuthorizeCaller {
                client: AgentGatewayClient::new(stack.pki().anonymous_channel(facade.addr)?),
                token: token.clone(),
            })
        };
        let (off_caller, on_caller) = (caller(&off)?, caller(&on)?);
        let log = tether_audit::AuditReader::open(&on.audit_url).await?;
        let records_before = log.size().await?;

        let mut callers = [off_caller.clone(), on_caller.clone()];
        let (seq_off, seq_on) = alternate(&mut callers).await?;
        let (conc_off, conc_on) = concurrent(&off_caller, &on_caller).await?;
        let append = durable_append().await?;
        let records = log.size().await? - records_before;

        println!();
        println!(
            "| `Authorize` (allowed read) | audit off p50 / p99 (µs) | audit on p50 / p99 (µs) | p50 ratio | p99 ratio | off / on throughput (req/s) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        row("sequential", &seq_off, &seq_on, None);
        row(
            &format!("concurrency {CONCURRENCY}"),
            &conc_off.latency,
            &conc_on.latency,
            Some((conc_off.per_second, conc_on.per_second)),
        );
        println!();
        println!(
            "decision records the audited facade wrote during the run: {records} (every audited call, warm-up included)"
        );
        println!(
            "one durable record (`AuditLog::append` on SQLite, same disk), sequential p50 / p99: {} µs",
            append.p50_p99()
        );
        anyhow::Ok(())
    });

    servers.block_on(async move {
        for mut facade in [off, on] {
            let _ = facade.running.stop().await;
        }
        let _ = stack.shutdown().await;
    });
    result
}

/// A facade started on the stack, as the stack starts its own.
struct Facade {
    running: Running,
    addr: std::net::SocketAddr,
    audit_url: String,
}

impl Facade {
    async fn start(
        stack: &FacadeStack,
        config: tether_agent_facade::Config,
    ) -> anyhow::Result<Self> {
        let audit_url = config.audit.effective_url();
        let (running, addr) = stack.start_facade(config).await?;
        Ok(Self {
            running,
            addr,
            audit_url,
        })
    }
}

fn row(name: &str, off: &Stats, on: &Stats, per_second: Option<(f64, f64)>) {
    let rates = per_second
        .map(|(off, on)| format!("{off:.0} / {on:.0}"))
        .unwrap_or_else(|| "—".into());
    println!(
        "| {name} | {} | {} | {:.2}× | {:.2}× | {rates} |",
        off.p50_p99(),
        on.p50_p99(),
        on.micros(0.5) / off.micros(0.5),
        on.micros(0.99) / off.micros(0.99),
    );
}

/// (off, on): sequential rounds, the order swapped every round.
async fn alternate(callers: &mut [AuthorizeCaller; 2]) -> anyhow::Result<(Stats, Stats)> {
    let mut totals = [Stats::new()?, Stats::new()?];
    for caller in callers.iter_mut() {
        sequential(caller, WARMUP, 0).await?;
    }
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let stats = sequential(&mut callers[i], 0, PER_ROUND).await?;
            totals[i].merge(&stats)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [off, on] = totals;
    Ok((off, on))
}

/// (off, on) at [`CONCURRENCY`]: rounds of a fixed duration, alternating.
async fn concurrent(
    off: &AuthorizeCaller,
    on: &AuthorizeCaller,
) -> anyhow::Result<(Throughput, Throughput)> {
    let mut latency = [Stats::new()?, Stats::new()?];
    let mut calls = [0.0_f64; 2];
    let mut seconds = [0.0_f64; 2];
    for round in 0..CONCURRENT_ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let caller = if i == 0 { off } else { on };
            let callers = vec![caller.clone(); CONCURRENCY];
            let measured = throughput(
                callers,
                Duration::from_secs(1),
                Duration::from_secs(CONCURRENT_SECS),
            )
            .await?;
            latency[i].merge(&measured.latency)?;
            calls[i] += measured.per_second * CONCURRENT_SECS as f64;
            seconds[i] += CONCURRENT_SECS as f64;
        }
    }
    let [off_latency, on_latency] = latency;
    Ok((
        Throughput {
            per_second: calls[0] / seconds[0],
            latency: off_latency,
        },
        Throughput {
            per_second: calls[1] / seconds[1],
            latency: on_latency,
        },
    ))
}

/// One durable append after another, on a fresh log in a temporary
/// directory (the same disk the stack's log is on).
async fn durable_append() -> anyhow::Result<Stats> {
    let dir = tempfile::tempdir()?;
    let url = tether_store::sqlite_url(&dir.path().join("audit.db"));
    let log = AuditLog::open(&url, AuditKey::generate(), "bench.audit.example").await?;
    let mut record = AuditRecord::new(RecordKind::Issuance, 0);
    record.agent = "hr-assistant".into();
    record.action = r#"Action::"read""#.into();
    record.resource = r#"Employee::"1042""#.into();
    record.decision = "allow".into();
    record.policy_ids = vec!["hr-read-business-hours".into()];
    record.session_id = "bench".into();
    record.lease_id = "f3beb3a2-bee8-48c4-bdb6-53346647ce20".into();
    let mut stats = Stats::new()?;
    for i in 0..APPENDS {
        record.time_ms = i as i64;
        let started = Instant::now();
        log.append(&record).await?;
        stats.record(started.elapsed())?;
    }
    Ok(stats)
}
