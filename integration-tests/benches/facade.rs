//! What the agent facade costs on top of the service it fronts: the whole
//! stack on loopback (`FacadeStack`: test IdP, identity exchange, PDP,
//! credential issuer on OpenBao and PostgreSQL, approval orchestrator,
//! facade), each facade RPC measured against the direct call to the one
//! service that answers it, in the same run, alternating (this machine is
//! shared; absolute times drift, differences within a run much less).
//!
//! `cargo bench -p tether-integration-tests --bench facade`
//! (`-- authorize` or `-- acquire` runs one part)
//!
//! 1. `Authorize` (read on `Employee::"1042"`, ALLOW; the facade verifies
//!    the delegated token, builds the policy question and asks the PDP)
//!    against a direct PDP `Check` of the same question, as the facade
//!    builds it (`services/agent-facade/src/decision.rs`,
//!    `Question::check_request`), over mTLS with the facade's certificate:
//!    sequential p50/p99 in rounds, then throughput and latency at
//!    concurrency 32.
//! 2. `AcquireCredential` (`hr-read`: decision, issuer `Issue`, Vault,
//!    two audit records committed, one flush) against a direct OpenBao issuance of the
//!    same role (`GET /v1/database/creds/hr-readonly` with the root token),
//!    call by call; in the same rotation, to show where the difference
//!    goes, the facade's own `Issue` request sent straight to the issuer,
//!    and a second facade on the same stack with `[audit] enabled = false`.
//!    Every lease is revoked between batches, outside the timed calls
//!    (`EndSession`, then a fresh session; direct: the lease ids), so
//!    PostgreSQL roles do not pile up and no session reaches the issuer's
//!    lease limit.
//!
//! 3. `Authorize` with risk monitoring on vs off (`-- monitoring`): the
//!    stack's facade (monitoring off) against two more facades on the same
//!    stack with `[monitoring] enabled = true`, one with the one-replica
//!    SQLite store, one with the replicas' PostgreSQL store (the stack's
//!    PostgreSQL), each with its own audit log; sequential p50/p99 in
//!    alternating rounds, and the ratio to monitoring off (target ≤ 1.1×).
//!    Each decision reads the session's and the agent's counters (two
//!    queries) and adds its own (one transaction).
//!
//! Every timed call checks its answer (ALLOW, a credential), so an error
//! path is never measured.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use serde_json::{Map, Value, json};
use tether_audit::{AuditKey, AuditLog, AuditRecord, RecordKind};
use tether_integration_tests::bench::{
    AuthorizeCaller, Caller, Stats, Throughput, sequential, throughput,
};
use tether_integration_tests::facade::{FacadeStack, HR_ENTITIES, bearer, uid};
use tether_integration_tests::openbao::ROOT_TOKEN;
use tether_proto::credentials::v1 as credentials_pb;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;
use tether_proto::policy::v1 as policy_pb;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::client::InternalChannel;
use tether_token::{DelegatedClaims, Sessions};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Sequential rounds of (facade, direct, empty hop); each round measures
/// all three.
const ROUNDS: usize = 12;
const WARMUP: usize = 300;
const PER_ROUND: usize = 1_000;
/// Callers at once, spread over [`CHANNELS`] HTTP/2 connections (as in the
/// PDP bench).
const CONCURRENCY: usize = 32;
const CHANNELS: usize = 4;
const CONCURRENT_ROUNDS: usize = 4;
const CONCURRENT_SECS: u64 = 3;
/// In-process token verifications timed, for the breakdown.
const VERIFY_ITERATIONS: usize = 5_000;

/// `AcquireCredential` / direct issuance pairs (each a Vault issuance, a
/// PostgreSQL `CREATE ROLE`).
const ISSUE_WARMUP: usize = 30;
const ISSUE_ROUNDS: usize = 500;
/// Leases per path per session before it is ended: three paths (two
/// facades, direct `Issue`) share a session, and the issuer's default
/// limit is 64 live leases per session.
const LEASES_PER_SESSION: usize = 20;
/// Durable audit appends timed, for the breakdown.
const APPENDS: usize = 500;

/// The agent's address as the facade sees it (every client is on
/// loopback).
const CALLER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-servers")
        .enable_all()
        .build()
        .context("building the server runtime")?;
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);

    // The stack runs on its own runtime (as separate processes would), so
    // the clients do not share its threads. A second facade on the same
    // stack, same configuration except `[audit] enabled = false`.
    let (stack, unaudited_addr, unaudited) = servers.block_on(async {
        let stack = FacadeStack::builder().start().await?;
        let mut config = stack.config().clone();
        config.audit.enabled = false;
        let (running, addr) = stack.start_facade(config).await?;
        anyhow::Ok((stack, addr, running))
    })?;
    // Two more with monitoring on (SQLite, PostgreSQL), each with an audit
    // log of its own, as the stack's facade has.
    let monitored_dir = tempfile::tempdir()?;
    let monitored = if wanted("monitoring") {
        Some(servers.block_on(async {
            let mut started = Vec::new();
            for (name, url) in [
                ("sqlite", None),
                ("postgres", Some(stack.deps.pg.admin_url("postgres"))),
            ] {
                let dir = monitored_dir.path().join(name);
                let mut config = stack.config().clone();
                config.audit.data_dir = dir.join("audit");
                config.monitoring = tether_agent_facade::MonitoringConfig {
                    enabled: true,
                    url,
                    data_dir: dir.clone(),
                    ..tether_agent_facade::MonitoringConfig::default()
                };
                let (running, addr) = stack.start_facade(config).await?;
                started.push((name, running, addr));
            }
            anyhow::Ok(started)
        })?)
    } else {
        None
    };
    let result = runtime.block_on(async {
        if wanted("authorize") {
            authorize_part(&stack).await?;
        }
        if wanted("acquire") {
            acquire_part(&stack, unaudited_addr).await?;
        }
        if let Some(monitored) = &monitored {
            let addrs: Vec<(&str, std::net::SocketAddr)> =
                monitored.iter().map(|(n, _, a)| (*n, *a)).collect();
            monitoring_part(&stack, &addrs).await?;
        }
        anyhow::Ok(())
    });
    servers.block_on(async move {
        let mut unaudited = unaudited;
        let _ = unaudited.stop().await;
        for (_, mut running, _) in monitored.into_iter().flatten() {
            let _ = running.stop().await;
        }
        let _ = stack.shutdown().await;
    });
    result
}

// ---------------------------------------------------------------------------
// 1. Authorize vs PDP Check

async fn authorize_part(stack: &FacadeStack) -> anyhow::Result<()> {
    let token = stack.session().await?.delegated_token;
    // The token's claims, verified as the facade verifies them (same
    // configuration, same TLS identity); also used to time verification.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (sessions, sync) = Sessions::start(
        &stack.config().sessions,
        &stack.config().server.tls,
        async move {
            let _ = stopped.await;
        },
    )
    .await?;
    let claims = sessions.verify(&token).await?;
    let check = check_request(stack, &claims)?;

    // Channels made here are driven by the client runtime.
    let facade_channels = (0..CHANNELS)
        .map(|_| stack.pki().anonymous_channel(stack.addr()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pdp_channels = (0..CHANNELS)
        .map(|_| {
            stack
                .pki()
                .channel("agent-facade", stack.pdp.addr(), "policy-decision")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let facade = |i: usize| AuthorizeCaller {
        client: AgentGatewayClient::new(facade_channels[i % CHANNELS].clone()),
        token: token.clone(),
    };
    let direct = |i: usize| CheckCaller {
        client: PolicyDecisionClient::new(pdp_channels[i % CHANNELS].clone()),
        request: check.clone(),
    };

    // Same question, same answer: the facade's decision and the direct one
    // name the same policy and policy version.
    let mut probe_facade = facade(0);
    let mut probe_direct = direct(0);
    let via_facade = probe_facade.authorize().await?;
    let via_pdp = probe_direct.check().await?;
    ensure!(
        via_facade.policy_ids == via_pdp.policy_ids
            && via_facade.policy_version == via_pdp.policy_version,
        "the facade and the direct check decided differently: {:?} {} vs {:?} {}",
        via_facade.policy_ids,
        via_facade.policy_version,
        via_pdp.policy_ids,
        via_pdp.policy_version
    );

    let mut hop = HealthCaller(HealthClient::new(facade_channels[0].clone()));
    let [seq_facade, seq_direct, seq_hop] =
        alternate(&mut probe_facade, &mut probe_direct, &mut hop).await?;
    let (conc_facade, conc_direct) = concurrent(&facade, &direct).await?;
    let verify = verify_in_process(&sessions, &token).await?;
    let _ = stop.send(());
    let _ = sync.await;

    println!();
    println!(
        "| `Authorize` (allowed read, token verified) | facade p50 / p99 (µs) | direct PDP `Check` p50 / p99 (µs) | p50 overhead (µs) | facade / direct throughput (req/s) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    authorize_row("sequential", &seq_facade, &seq_direct, None);
    authorize_row(
        &format!("concurrency {CONCURRENCY}"),
        &conc_facade.latency,
        &conc_direct.latency,
        Some((conc_facade.per_second, conc_direct.per_second)),
    );
    println!();
    println!(
        "policy {:?}, version {}",
        via_facade.policy_ids, via_facade.policy_version
    );
    println!(
        "the agent's hop alone (the facade's gRPC health check, same connection), sequential p50 / p99: {} µs",
        seq_hop.p50_p99()
    );
    println!(
        "delegated-token verification in process (as the facade does it: signature, claims, revocation list), p50 / p99: {} µs",
        verify.p50_p99()
    );
    println!(
        "overhead p50 {:.0} µs = hop {:.0} + verification {:.0} + the rest {:.0} (request checks and building, the facade's PDP client, audit queue, spans)",
        seq_facade.micros(0.5) - seq_direct.micros(0.5),
        seq_hop.micros(0.5),
        verify.micros(0.5),
        seq_facade.micros(0.5) - seq_direct.micros(0.5) - seq_hop.micros(0.5) - verify.micros(0.5),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Authorize with monitoring on vs off

async fn monitoring_part(
    stack: &FacadeStack,
    monitored: &[(&str, std::net::SocketAddr)],
) -> anyhow::Result<()> {
    // One session per facade, so each one's counters are its own.
    let caller = |addr| -> anyhow::Result<AuthorizeCaller> {
        Ok(AuthorizeCaller {
            client: AgentGatewayClient::new(stack.pki().anonymous_channel(addr)?),
            token: String::new(),
        })
    };
    let mut callers = vec![("off", caller(stack.addr())?)];
    for (name, addr) in monitored {
        callers.push((name, caller(*addr)?));
    }
    for (_, c) in &mut callers {
        c.token = stack.session().await?.delegated_token;
        sequential(c, WARMUP, 0).await?;
    }
    let mut totals = Vec::new();
    for _ in &callers {
        totals.push(Stats::new()?);
    }
    let n = callers.len();
    for round in 0..ROUNDS {
        for k in (0..n).map(|k| (round + k) % n) {
            let stats = sequential(&mut callers[k].1, 0, PER_ROUND).await?;
            totals[k].merge(&stats)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!();
    println!(
        "| `Authorize` (allowed read), sequential | p50 / p99 (µs) | p50 ratio to off | p99 ratio to off |"
    );
    println!("| --- | ---: | ---: | ---: |");
    let off = &totals[0];
    for ((name, _), stats) in callers.iter().zip(&totals) {
        let label = if *name == "off" {
            "monitoring off".to_owned()
        } else {
            format!("monitoring on, {name} store")
        };
        println!(
            "| {label} | {} | {:.2}× | {:.2}× |",
            stats.p50_p99(),
            stats.micros(0.5) / off.micros(0.5),
            stats.micros(0.99) / off.micros(0.99),
        );
    }
    Ok(())
}

fn authorize_row(name: &str, facade: &Stats, direct: &Stats, per_second: Option<(f64, f64)>) {
    let rates = per_second
        .map(|(f, d)| format!("{f:.0} / {d:.0}"))
        .unwrap_or_else(|| "—".into());
    println!(
        "| {name} | {} | {} | {:+.1} | {rates} |",
        facade.p50_p99(),
        direct.p50_p99(),
        facade.micros(0.5) - direct.micros(0.5),
    );
}

/// The `CheckRequest` the facade sends for this session's read of
/// `Employee::"1042"` from loopback, built field by field as
/// `Question::check_request` builds it: principal `Agent::"<act.sub>"`
/// whose `delegator` is the user (the token's attributes, its groups as
/// parents), the resource from Tether's entity data, and the context keys
/// only Tether sets.
fn check_request(
    stack: &FacadeStack,
    claims: &DelegatedClaims,
) -> anyhow::Result<policy_pb::CheckRequest> {
    let config = stack.config();
    let policy = &config.policy;
    let principal = json!({ "type": policy.agent_type, "id": claims.act.sub });
    let user = json!({ "type": policy.user_type, "id": claims.sub });
    let mut user_attrs = Map::new();
    for name in &policy.user_attributes {
        let value = claims.user.get(name).and_then(Value::as_str).unwrap_or("");
        user_attrs.insert(name.clone(), Value::String(value.to_owned()));
    }
    let groups: Vec<Value> = claims
        .user
        .get("groups")
        .and_then(Value::as_array)
        .map(|gs| {
            gs.iter()
                .filter_map(Value::as_str)
                .map(|g| json!({ "type": policy.group_type, "id": g }))
                .collect()
        })
        .unwrap_or_default();
    let data: Vec<Value> = serde_json::from_str(HR_ENTITIES)?;
    let employee = data
        .into_iter()
        .find(|e| e["uid"] == json!({ "type": "Employee", "id": "1042" }))
        .context("no Employee 1042 in the stack's entity data")?;
    let entities = json!([
        {
            "uid": principal,
            "attrs": { "delegator": { "__entity": user } },
            "parents": [],
        },
        { "uid": user, "attrs": user_attrs, "parents": groups },
        employee,
    ]);

    let unix = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    let local = unix + i64::from(config.clock.utc_offset_minutes) * 60;
    let (zone, trusted) = config.network.classify(CALLER);
    let intent = claims
        .authorization_details
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_default();
    let context = json!({
        "now": {
            "hour": local.rem_euclid(86_400) / 3600,
            "weekday": (local.div_euclid(86_400) + 3).rem_euclid(7) + 1,
            "unix": unix,
        },
        "network": { "ip": CALLER.to_string(), "trusted": trusted, "zone": zone },
        "session": {
            "id": claims.sid,
            "age_seconds": unix.saturating_sub(claims.iat).max(0),
            "intent": intent,
            // The session's intent names `read` on employee 1042.
            "in_intent": true,
        },
        "risk": tether_agent_facade::Risk::baseline(
            config.risk.baseline_score,
            config.monitoring.medium_at,
            config.monitoring.high_at,
        )
        .to_context(),
    });
    Ok(policy_pb::CheckRequest {
        principal: Some(policy_pb::EntityUid {
            r#type: policy.agent_type.clone(),
            id: claims.act.sub.clone(),
        }),
        action: Some(policy_pb::EntityUid {
            r#type: "Action".into(),
            id: "read".into(),
        }),
        resource: Some(policy_pb::EntityUid {
            r#type: "Employee".into(),
            id: "1042".into(),
        }),
        context_json: context.to_string(),
        entities_json: entities.to_string(),
        request_id: format!("dec_{}", uuid::Uuid::new_v4().simple()),
    })
}

#[derive(Clone)]
struct CheckCaller {
    client: PolicyDecisionClient<InternalChannel>,
    request: policy_pb::CheckRequest,
}

impl CheckCaller {
    async fn check(&mut self) -> anyhow::Result<policy_pb::CheckResponse> {
        let response = self.client.check(self.request.clone()).await?.into_inner();
        ensure!(
            response.decision() == policy_pb::Decision::Allow,
            "expected ALLOW, got {response:?}"
        );
        Ok(response)
    }
}

impl Caller for CheckCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.check().await.map(drop)
    }
}

/// (facade, direct, empty hop): sequential rounds, the order rotated every
/// round so none always goes first.
async fn alternate(
    facade: &mut AuthorizeCaller,
    direct: &mut CheckCaller,
    hop: &mut HealthCaller,
) -> anyhow::Result<[Stats; 3]> {
    sequential(facade, WARMUP, 0).await?;
    sequential(direct, WARMUP, 0).await?;
    sequential(hop, WARMUP, 0).await?;
    let mut totals = [Stats::new()?, Stats::new()?, Stats::new()?];
    for round in 0..ROUNDS {
        for k in (0..3).map(|k| (round + k) % 3) {
            let stats = match k {
                0 => sequential(facade, 0, PER_ROUND).await?,
                1 => sequential(direct, 0, PER_ROUND).await?,
                _ => sequential(hop, 0, PER_ROUND).await?,
            };
            totals[k].merge(&stats)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(totals)
}

/// The facade's gRPC health check on the agent's connection: the TLS hop
/// from the agent to the facade with nothing behind it (no token, no
/// downstream call), i.e. the floor of any facade RPC.
struct HealthCaller(HealthClient<InternalChannel>);

impl Caller for HealthCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self
            .0
            .check(HealthCheckRequest::default())
            .await?
            .into_inner();
        ensure!(
            response.status() == ServingStatus::Serving,
            "the facade is not serving: {response:?}"
        );
        Ok(())
    }
}

/// (facade, direct) at [`CONCURRENCY`]: rounds of a fixed duration after a
/// one-second warm-up, alternating.
async fn concurrent(
    facade: &impl Fn(usize) -> AuthorizeCaller,
    direct: &impl Fn(usize) -> CheckCaller,
) -> anyhow::Result<(Throughput, Throughput)> {
    let mut f = Accumulated::new()?;
    let mut d = Accumulated::new()?;
    for round in 0..CONCURRENT_ROUNDS {
        let run_facade = || {
            throughput(
                (0..CONCURRENCY).map(facade).collect(),
                Duration::from_secs(1),
                Duration::from_secs(CONCURRENT_SECS),
            )
        };
        let run_direct = || {
            throughput(
                (0..CONCURRENCY).map(direct).collect(),
                Duration::from_secs(1),
                Duration::from_secs(CONCURRENT_SECS),
            )
        };
        if round % 2 == 0 {
            f.add(&run_facade().await?)?;
            d.add(&run_direct().await?)?;
        } else {
            d.add(&run_direct().await?)?;
            f.add(&run_facade().await?)?;
        }
    }
    Ok((f.done(), d.done()))
}

/// Throughput rounds of equal length, merged.
struct Accumulated {
    latency: Stats,
    per_second: Vec<f64>,
}

impl Accumulated {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Stats::new()?,
            per_second: Vec::new(),
        })
    }

    fn add(&mut self, round: &Throughput) -> anyhow::Result<()> {
        self.latency.merge(&round.latency)?;
        self.per_second.push(round.per_second);
        Ok(())
    }

    fn done(self) -> Throughput {
        let rounds = self.per_second.len().max(1) as f64;
        Throughput {
            per_second: self.per_second.iter().sum::<f64>() / rounds,
            latency: self.latency,
        }
    }
}

/// The facade's own verification step, in process: `Sessions::verify`
/// with the facade's configuration (cached JWKS, synced revocation list).
async fn verify_in_process(sessions: &Sessions, token: &str) -> anyhow::Result<Stats> {
    let mut stats = Stats::new()?;
    for i in 0..VERIFY_ITERATIONS + 500 {
        let start = Instant::now();
        sessions.verify(token).await?;
        if i >= 500 {
            stats.record(start.elapsed())?;
        }
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------
// 2. AcquireCredential vs direct OpenBao issuance

async fn acquire_part(
    stack: &FacadeStack,
    unaudited_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let token = stack.session().await?.delegated_token;
    let mut facade = AcquireCaller {
        client: AgentGatewayClient::new(stack.pki().anonymous_channel(stack.addr())?),
        token: token.clone(),
        issued: 0,
    };
    let mut unaudited = AcquireCaller {
        client: AgentGatewayClient::new(stack.pki().anonymous_channel(unaudited_addr)?),
        token: token.clone(),
        issued: 0,
    };
    unaudited.acquire().await?;
    // The facade's own request to the issuer (`IssueRequest` as
    // `acquire_credential` fills it), sent straight to the issuer with the
    // facade's certificate and the same token.
    let probe = facade.acquire().await?;
    let mut issuer = IssueCaller {
        client: CredentialIssuerClient::new(stack.pki().channel(
            "agent-facade",
            stack.issuer.addr(),
            "credential-issuer",
        )?),
        request: credentials_pb::IssueRequest {
            profile: "hr-read".into(),
            intent: unverified_claims(&token)?
                .authorization_details
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            action: r#"Action::"read""#.into(),
            resource: r#"Employee::"1042""#.into(),
            policy_version: probe.policy_version,
            decision_id: probe.decision_id,
            policy_ids: probe.policy_ids,
            ..Default::default()
        },
        token,
        issued: 0,
    };
    let mut vault = DirectIssuer {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        vault: stack.deps.bao.addr().to_owned(),
        leases: Vec::new(),
    };
    // 0: facade, 1: facade without audit, 2: issuer `Issue`, 3: OpenBao.
    let mut totals = [Stats::new()?, Stats::new()?, Stats::new()?, Stats::new()?];
    let mut paired = [Vec::new(), Vec::new(), Vec::new()];
    let mut sessions_ended = 0_usize;
    for i in 0..ISSUE_WARMUP + ISSUE_ROUNDS {
        if facade.issued >= LEASES_PER_SESSION {
            // Outside the timed calls: every lease so far revoked on every
            // path (EndSession revokes all of the session's leases, however
            // they were issued), and a fresh session.
            facade.end_session(unaudited.issued + issuer.issued).await?;
            vault.revoke_all().await?;
            let token = stack.session().await?.delegated_token;
            facade.token.clone_from(&token);
            unaudited.token.clone_from(&token);
            unaudited.issued = 0;
            issuer.token = token;
            issuer.issued = 0;
            sessions_ended += 1;
        }
        // Call by call, rotating which goes first, so all four see the
        // same Vault and PostgreSQL state; paired differences cancel much
        // of their noise.
        let mut took = [Duration::ZERO; 4];
        for k in (0..4).map(|k| (i + k) % 4) {
            let start = Instant::now();
            match k {
                0 => facade.call().await?,
                1 => unaudited.call().await?,
                2 => issuer.call().await?,
                _ => vault.call().await?,
            }
            took[k] = start.elapsed();
        }
        if i >= ISSUE_WARMUP {
            for (total, t) in totals.iter_mut().zip(took) {
                total.record(t)?;
            }
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            for (k, differences) in paired.iter_mut().enumerate() {
                differences.push(us(took[k]) - us(took[3]));
            }
        }
    }
    facade.end_session(unaudited.issued + issuer.issued).await?;
    vault.revoke_all().await?;
    sessions_ended += 1;
    let roles_left = stack.deps.pg.roles_like("v-").await?;
    let append = durable_append().await?;

    let paired = paired.map(|mut d| {
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied().unwrap_or(f64::NAN)
    });
    let vault_p50 = totals[3].micros(0.5);
    println!();
    println!(
        "| `hr-read` credential, {ISSUE_ROUNDS} of each, interleaved | p50 / p99 (µs) | p50 − direct OpenBao p50 (µs) | median paired difference to OpenBao (µs) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (k, name) in [
        "facade `AcquireCredential`",
        "facade `AcquireCredential`, audit log off",
        "issuer `Issue` (the facade's request, sent directly)",
    ]
    .into_iter()
    .enumerate()
    {
        println!(
            "| {name} | {} | {:+.0} | {:+.0} |",
            totals[k].p50_p99(),
            totals[k].micros(0.5) - vault_p50,
            paired[k],
        );
    }
    println!(
        "| direct OpenBao (`GET database/creds/hr-readonly`) | {} | — | — |",
        totals[3].p50_p99(),
    );
    println!();
    println!(
        "one durable audit record (`AuditLog::append`, SQLite `synchronous = FULL`, same disk), p50 / p99: {} µs; AcquireCredential commits two (decision, issuance) before it answers, with one flush",
        append.p50_p99()
    );
    println!(
        "{sessions_ended} sessions ended (every lease revoked: {LEASES_PER_SESSION} per path per session); PostgreSQL roles left: {}",
        roles_left.len()
    );
    Ok(())
}

/// A delegated token's claims, read without verification (the token came
/// from the facade a moment ago; only its declared intent is wanted).
fn unverified_claims(token: &str) -> anyhow::Result<DelegatedClaims> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&json)?)
}

/// One durable append after another, on a fresh log in a temporary
/// directory (the same disk as the stack's own log).
async fn durable_append() -> anyhow::Result<Stats> {
    let dir = tempfile::tempdir()?;
    let url = tether_store::sqlite_url(&dir.path().join("audit.db"));
    let log = AuditLog::open(&url, AuditKey::generate(), "bench.facade.example").await?;
    let mut record = AuditRecord::new(RecordKind::Issuance, 0);
    record.agent = "hr-assistant".into();
    record.action = r#"Action::"read""#.into();
    record.resource = r#"Employee::"1042""#.into();
    record.decision = "allow".into();
    record.policy_ids = vec!["hr-read-business-hours".into()];
    record.session_id = "bench".into();
    record.lease_id = uuid::Uuid::new_v4().to_string();
    let mut stats = Stats::new()?;
    for i in 0..APPENDS {
        record.time_ms = i64::try_from(i)?;
        let started = Instant::now();
        log.append(&record).await?;
        stats.record(started.elapsed())?;
    }
    Ok(stats)
}

struct AcquireCaller {
    client: AgentGatewayClient<InternalChannel>,
    token: String,
    /// Credentials issued in this session so far.
    issued: usize,
}

/// The decision behind a credential, as the agent sees it.
struct Probe {
    policy_version: String,
    decision_id: String,
    policy_ids: Vec<String>,
}

impl AcquireCaller {
    /// Ends the session; every lease it held (this caller's, and `others`
    /// issued for it on other paths) must be revoked.
    async fn end_session(&mut self, others: usize) -> anyhow::Result<()> {
        let receipt = self
            .client
            .end_session(bearer(
                pb::EndSessionRequest {
                    reason: "benchmark batch done".into(),
                },
                &self.token,
            ))
            .await?
            .into_inner()
            .receipt
            .context("no receipt")?;
        let issued = self.issued + others;
        ensure!(
            receipt.revoked_leases.len() == issued && receipt.pending_leases.is_empty(),
            "EndSession revoked {} leases ({} pending), {issued} were issued",
            receipt.revoked_leases.len(),
            receipt.pending_leases.len(),
        );
        self.issued = 0;
        Ok(())
    }

    /// One checked `AcquireCredential`.
    async fn acquire(&mut self) -> anyhow::Result<Probe> {
        let request = pb::AcquireCredentialRequest {
            action: uid("Action", "read"),
            resource: uid("Employee", "1042"),
            profile: "hr-read".into(),
            ..Default::default()
        };
        let response = self
            .client
            .acquire_credential(bearer(request, &self.token))
            .await?
            .into_inner();
        ensure!(
            response.decision() == pb::Decision::Allow,
            "expected ALLOW, got {:?}",
            response.decision()
        );
        let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = response.outcome
        else {
            anyhow::bail!("ALLOW without a credential");
        };
        let Some(pb::credential::Kind::Database(db)) = issued.credential.and_then(|c| c.kind)
        else {
            anyhow::bail!("not a database credential");
        };
        ensure!(
            !db.username.is_empty() && !db.password.is_empty() && issued.lease.is_some(),
            "an empty credential or no lease"
        );
        self.issued += 1;
        Ok(Probe {
            policy_version: response.policy_version,
            decision_id: response.decision_id,
            policy_ids: response.policy_ids,
        })
    }
}

impl Caller for AcquireCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.acquire().await.map(drop)
    }
}

/// The issuer's `Issue` as the facade calls it: its certificate, the
/// agent's token, the facade's request.
struct IssueCaller {
    client: CredentialIssuerClient<InternalChannel>,
    token: String,
    request: credentials_pb::IssueRequest,
    /// Credentials issued in the current session.
    issued: usize,
}

impl Caller for IssueCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        // A decision id per call, as the facade sends.
        self.request.decision_id = format!("dec_{}", uuid::Uuid::new_v4().simple());
        let response = self
            .client
            .issue(bearer(self.request.clone(), &self.token))
            .await?
            .into_inner();
        let Some(credentials_pb::credential::Kind::Database(db)) =
            response.credential.and_then(|c| c.kind)
        else {
            anyhow::bail!("the issuer answered without a database credential");
        };
        ensure!(
            !db.username.is_empty() && !db.password.is_empty() && response.lease.is_some(),
            "an empty credential or no lease"
        );
        self.issued += 1;
        Ok(())
    }
}

/// A client without Tether: `GET /v1/database/creds/hr-readonly` with the
/// root token over HTTP/1.1 keep-alive.
struct DirectIssuer {
    http: reqwest::Client,
    vault: String,
    /// Vault lease ids not yet revoked.
    leases: Vec<String>,
}

impl DirectIssuer {
    async fn revoke_all(&mut self) -> anyhow::Result<()> {
        for lease in self.leases.drain(..) {
            let response = self
                .http
                .put(format!("{}/v1/sys/leases/revoke", self.vault))
                .header("X-Vault-Token", ROOT_TOKEN)
                .json(&json!({ "lease_id": lease }))
                .send()
                .await?;
            ensure!(
                response.status().is_success(),
                "revoking a lease: {}",
                response.status()
            );
        }
        Ok(())
    }
}

impl Caller for DirectIssuer {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/v1/database/creds/hr-readonly", self.vault))
            .header("X-Vault-Token", ROOT_TOKEN)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "OpenBao: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str);
        let (Some(lease), Some(username), Some(password)) = (
            text("/lease_id"),
            text("/data/username"),
            text("/data/password"),
        ) else {
            anyhow::bail!("OpenBao answered without a credential");
        };
        ensure!(
            !lease.is_empty() && !username.is_empty() && !password.is_empty(),
            "an empty credential"
        );
        self.leases.push(lease.to_owned());
        Ok(())
    }
}
