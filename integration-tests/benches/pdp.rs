//! Policy decision point benchmark (issue 2, section 8).
//!
//! For the example HR pack and for a generated set of 1,000 policies (plus the
//! HR ones), measures Tether's in-process decision latency, its gRPC `Check`
//! latency (sequential) and its throughput at concurrency 32 on loopback, and
//! the same gRPC figures for Cerbos 0.55 serving the equivalent policies.
//!
//!     (cd integration-tests/peers/cerbos && npm ci)
//!     cargo bench -p tether-integration-tests --bench pdp
//!
//! Every measured request is the HR "read in business hours on a trusted
//! network, delegator in hr" case from `examples/hr/cases.yaml`; each call
//! checks that the answer is ALLOW, so a deny path is never measured by
//! accident. Results go to stdout as a Markdown table (for BENCHMARKS.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, EntityUid,
    PolicySet, Request, Schema,
};
use prost_types::value::Kind;
use serde_json::{Value, json};
use tempfile::TempDir;
use tether_integration_tests::bench::{Caller, Stats, Throughput, sequential, throughput};
use tether_integration_tests::cerbos::{self, CerbosServer};
use tether_policy::{CaseFile, Expected, Limits, Outcome, PolicyPack, Query, TestCase};
use tether_policy_decision::{Config, PolicyConfig, RequestLimits};
use tether_proto::policy::v1 as pdp;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::ServerConfig;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

use cerbos::cerbos::effect::v1::Effect;
use cerbos::cerbos::engine::v1 as cerbos_engine;
use cerbos::cerbos::request::v1::CheckResourcesRequest;
use cerbos::cerbos::request::v1::check_resources_request::ResourceEntry;
use cerbos::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;

const BENCH_CASE: &str = "HR staff's agent reads a record in office hours on the corporate network";
const GENERATED_POLICIES: usize = 1_000;

const IN_PROCESS_WARMUP: usize = 2_000;
const IN_PROCESS_ITERATIONS: usize = 20_000;
const SEQUENTIAL_WARMUP: usize = 1_000;
const SEQUENTIAL_ITERATIONS: usize = 10_000;
const CONCURRENCY: usize = 32;
const CHANNELS: usize = 4;
const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);
const THROUGHPUT_DURATION: Duration = Duration::from_secs(5);
/// Measurements alternate between the systems in this many rounds.
const ROUNDS: usize = 5;
const ROUND_WARMUP: Duration = Duration::from_millis(250);
const BREAKDOWN_ITERATIONS: usize = 3_000;

fn main() -> anyhow::Result<()> {
    // The client side, identical for both systems. Tether's server gets its
    // own runtime (see `TetherServer`), as Cerbos has its own process.
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let case = benchmark_case()?;
    let scratch = TempDir::new().context("creating a scratch directory")?;
    let with_cerbos = match cerbos::binary() {
        Ok(_) => true,
        Err(why) => {
            println!("Cerbos skipped: {why}");
            false
        }
    };
    let sets = policy_sets(scratch.path(), with_cerbos)?;

    let mut rows = Vec::new();
    let mut breakdowns = Vec::new();
    for set in &sets {
        println!("== {}", set.name);
        let mut in_process = Some(bench_in_process(&set.cedar_dir, &case)?);
        breakdowns.push(breakdown(set, &case)?);
        let tether = TetherServer::start(&set.cedar_dir)?;
        let grpc = client.block_on(bench_grpc(set, &case, tether.addr))?;
        drop(tether);
        for (system, sequential, throughput) in grpc {
            rows.push(Row {
                set: set.name.clone(),
                system,
                // Only Tether has an in-process figure; it comes first.
                in_process: in_process.take(),
                sequential,
                throughput,
            });
        }
    }
    print_table(&rows);
    print_breakdowns(&breakdowns);
    Ok(())
}

// ---------------------------------------------------------------- statistics

/// One system on one policy set.
struct Row {
    set: String,
    system: &'static str,
    in_process: Option<Stats>,
    sequential: Stats,
    throughput: Throughput,
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| policy set | system | in-process p50 / p99 (µs) | gRPC sequential p50 / p99 (µs) \
         | c={CONCURRENCY} throughput (req/s) | c={CONCURRENCY} p50 / p99 (µs) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for row in rows {
        let in_process = row
            .in_process
            .as_ref()
            .map_or_else(|| "n/a".to_owned(), Stats::p50_p99);
        println!(
            "| {} | {} | {} | {} | {:.0} | {} |",
            row.set,
            row.system,
            in_process,
            row.sequential.p50_p99(),
            row.throughput.per_second,
            row.throughput.latency.p50_p99()
        );
    }
    println!();
    println!(
        "in-process: {IN_PROCESS_ITERATIONS} decisions after {IN_PROCESS_WARMUP} warm-up. \
         gRPC, per system: sequential {SEQUENTIAL_ITERATIONS} calls on one channel after \
         {SEQUENTIAL_WARMUP} warm-up; throughput {CONCURRENCY} callers over {CHANNELS} HTTP/2 \
         channels for {THROUGHPUT_DURATION:?} after {THROUGHPUT_WARMUP:?}; both in {ROUNDS} \
         rounds alternating between the systems"
    );
}

// --------------------------------------------------------------- policy sets

struct BenchSet {
    name: String,
    cedar_dir: PathBuf,
    /// `None` when Cerbos is skipped.
    cerbos_dir: Option<PathBuf>,
    /// A request that only a generated policy allows, proving the large set
    /// is loaded on both sides.
    generated_probe: bool,
}

fn policy_sets(scratch: &Path, with_cerbos: bool) -> anyhow::Result<Vec<BenchSet>> {
    let hr = tether_integration_tests::workspace_root().join("examples/hr");
    let large_cedar = scratch.join("cedar-large");
    write_large_cedar_pack(&hr, &large_cedar, GENERATED_POLICIES)?;
    let large_cerbos = if with_cerbos {
        let dir = scratch.join("cerbos-large");
        cerbos::generate_large_policy_set(&dir, GENERATED_POLICIES)?;
        Some(dir)
    } else {
        None
    };
    Ok(vec![
        BenchSet {
            name: "HR example pack".into(),
            cedar_dir: hr,
            cerbos_dir: with_cerbos.then(cerbos::hr_policy_dir),
            generated_probe: false,
        },
        BenchSet {
            name: format!("{GENERATED_POLICIES} generated + HR"),
            cedar_dir: large_cedar,
            cerbos_dir: large_cerbos,
            generated_probe: true,
        },
    ])
}

/// Delegator groups the generated policies refer to (as `gen_large.py`).
const GROUPS: [&str; 7] = ["hr", "finance", "eng", "sales", "legal", "ops", "support"];

/// The HR schema plus a `Record` type and four actions for the generated
/// policies.
const GENERATED_SCHEMA: &str = r#"
// Added by the pdp bench for its generated policies.
entity Record = {
  kind: String,
  owner: User,
  department: String,
  tier: Long,
  locked: Bool,
};

action "view", "list", "edit", "delete" appliesTo {
  principal: [Agent],
  resource: [Record],
  context: RequestContext,
};
"#;

/// The HR pack (schema, policies, entities) plus `n` generated policies with
/// `when` conditions over attributes and context. Policy `i` mirrors one rule
/// of `gen_large.py`'s resource policy `res_i` (view/list, edit, delete in
/// turn), so both systems hold the same kinds of rules.
fn write_large_cedar_pack(hr: &Path, out: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).context("creating the generated pack directory")?;
    let schema = std::fs::read_to_string(hr.join("hr.cedarschema"))?;
    std::fs::write(out.join("hr.cedarschema"), schema + GENERATED_SCHEMA)?;
    std::fs::copy(hr.join("hr.cedar"), out.join("hr.cedar"))?;

    let mut entities: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(hr.join("entities.json"))?)
            .context("reading the HR entities")?;
    for group in GROUPS {
        let present = entities
            .iter()
            .any(|e| e["uid"] == json!({ "type": "Group", "id": group }));
        if !present {
            entities.push(
                json!({ "uid": { "type": "Group", "id": group }, "attrs": {}, "parents": [] }),
            );
        }
    }
    std::fs::write(
        out.join("entities.json"),
        serde_json::to_string_pretty(&entities)?,
    )?;

    let policies: String = (0..n).map(generated_policy).collect();
    std::fs::write(out.join("generated.cedar"), policies)?;
    Ok(())
}

fn generated_policy(i: usize) -> String {
    let kind = format!("res_{i}");
    match i % 3 {
        0 => format!(
            r#"@id("gen-{i:04}-view")
permit (principal is Agent, action in [Action::"view", Action::"list"], resource is Record)
when {{
  resource.kind == "{kind}" &&
  (resource.owner == principal.delegator ||
   (principal.delegator in Group::"{group}" && resource.tier <= {tier}))
}};
"#,
            group = GROUPS[i % GROUPS.len()],
            tier = i % 5
        ),
        1 => format!(
            r#"@id("gen-{i:04}-edit")
permit (principal is Agent, action == Action::"edit", resource is Record)
when {{
  resource.kind == "{kind}" &&
  resource.department == principal.delegator.department &&
  context.risk.score <= {cap} &&
  context.network.trusted
}};
"#,
            cap = 50 + i % 40
        ),
        _ => format!(
            r#"@id("gen-{i:04}-delete")
forbid (principal, action == Action::"delete", resource is Record)
when {{ resource.kind == "{kind}" && resource.locked }};
"#
        ),
    }
}

// ------------------------------------------------------------------ requests

/// The benchmark request, as `examples/hr/cases.yaml` writes it.
fn benchmark_case() -> anyhow::Result<TestCase> {
    let path = tether_integration_tests::workspace_root().join("examples/hr/cases.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading `{}`", path.display()))?;
    let file: CaseFile = serde_yaml_ng::from_str(&text).context("parsing the HR cases")?;
    let case = file
        .cases
        .into_iter()
        .find(|c| c.name == BENCH_CASE)
        .with_context(|| format!("no case `{BENCH_CASE}` in `{}`", path.display()))?;
    ensure!(
        case.expect == Expected::Allow && case.action.id == "read",
        "the benchmark case must be an allowed read"
    );
    Ok(case)
}

fn tether_request(case: &TestCase) -> pdp::CheckRequest {
    let uid = |u: &tether_policy::Uid| pdp::EntityUid {
        r#type: u.type_name.clone(),
        id: u.id.clone(),
    };
    let (context_json, entities_json) = case.json();
    pdp::CheckRequest {
        principal: Some(uid(&case.principal)),
        action: Some(uid(&case.action)),
        resource: Some(uid(&case.resource)),
        context_json,
        entities_json,
        request_id: "bench".into(),
    }
}

/// The benchmark request's delegator (`User`) and context facts, flattened
/// into Cerbos principal attributes as `peers/cerbos/README.md` maps them.
fn cerbos_principal(case: &TestCase) -> anyhow::Result<cerbos_engine::Principal> {
    let context = case.context.clone().unwrap_or_default();
    let entities = case.entities.clone().unwrap_or_default();
    let user = entities
        .as_array()
        .and_then(|all| all.iter().find(|e| e["uid"]["type"] == "User"))
        .context("the benchmark case has no User entity")?;
    let groups: Vec<Value> = user["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "Group")
        .map(|p| p["id"].clone())
        .collect();
    let number = |pointer: &str| -> anyhow::Result<Value> {
        context
            .pointer(pointer)
            .filter(|v| v.is_number())
            .cloned()
            .with_context(|| format!("context has no number at `{pointer}`"))
    };
    let attrs = json!({
        "delegator_groups": groups,
        "delegator_department": user["attrs"]["department"],
        "hour": number("/now/hour")?,
        "weekday": number("/now/weekday")?,
        "trusted_network": context.pointer("/network/trusted").cloned().unwrap_or(Value::Bool(false)),
        "risk_score": number("/risk/score")?,
        "approval_granted": context.pointer("/approval/granted").cloned().unwrap_or(Value::Bool(false)),
    });
    Ok(cerbos_engine::Principal {
        id: case.principal.id.clone(),
        policy_version: String::new(),
        roles: vec!["agent".into()],
        attr: to_proto_map(&attrs),
    })
}

fn cerbos_request(
    principal: cerbos_engine::Principal,
    action: &str,
    kind: &str,
    id: &str,
    attrs: &Value,
) -> CheckResourcesRequest {
    CheckResourcesRequest {
        request_id: "bench".into(),
        principal: Some(principal),
        resources: vec![ResourceEntry {
            actions: vec![action.into()],
            resource: Some(cerbos_engine::Resource {
                kind: kind.into(),
                policy_version: String::new(),
                id: id.into(),
                attr: to_proto_map(attrs),
            }),
        }],
    }
}

fn to_proto_map(object: &Value) -> HashMap<String, prost_types::Value> {
    object
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), to_proto_value(v)))
        .collect()
}

fn to_proto_value(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_proto_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(prost_types::Struct {
            fields: to_proto_map(value).into_iter().collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

// -------------------------------------------------------------------- Tether

/// Connects to the PDP and checks that it answers the benchmark request (and,
/// on the large set, a request only a generated policy allows) with ALLOW.
async fn tether_target(
    set: &BenchSet,
    case: &TestCase,
    addr: SocketAddr,
) -> anyhow::Result<Target> {
    let channels = connect(addr.to_string()).await?;
    let channel = channels.first().context("no channel")?.clone();
    let policies = PolicyDecisionClient::new(channel.clone())
        .get_policy_set(pdp::GetPolicySetRequest {})
        .await?
        .into_inner()
        .policy_count;
    let mut caller = TetherCaller {
        client: PolicyDecisionClient::new(channel),
        request: tether_request(case),
    };
    let ids = caller.check_allow().await?;
    println!("sanity: Tether ({policies} policies) answers ALLOW via {ids:?}");
    if set.generated_probe {
        tether_generated_probe(&mut caller.client, case).await?;
    }
    Ok(Target {
        system: "Tether",
        channels,
        prototype: AnyCaller::Tether(caller),
    })
}

/// `PolicyPack::evaluate` with the strings a gRPC request would carry.
fn bench_in_process(dir: &Path, case: &TestCase) -> anyhow::Result<Stats> {
    let pack = PolicyPack::load_dir(dir)?;
    let limits = Limits::default();
    let (context_json, entities_json) = case.json();
    let query = Query {
        principal: (&case.principal.type_name, &case.principal.id),
        action: (&case.action.type_name, &case.action.id),
        resource: (&case.resource.type_name, &case.resource.id),
        context_json: &context_json,
        entities_json: &entities_json,
    };
    let decision = pack.evaluate(&query, &limits)?;
    ensure!(
        decision.outcome == Outcome::Allow,
        "in-process: expected ALLOW, got {decision:?}"
    );
    for _ in 0..IN_PROCESS_WARMUP {
        std::hint::black_box(pack.evaluate(std::hint::black_box(&query), &limits)?);
    }
    let mut stats = Stats::new()?;
    for _ in 0..IN_PROCESS_ITERATIONS {
        let start = Instant::now();
        let decision = pack.evaluate(std::hint::black_box(&query), &limits)?;
        stats.record(start.elapsed())?;
        std::hint::black_box(decision);
    }
    Ok(stats)
}

/// A `view` of a `Record` that only the generated `gen-0000-view` allows.
async fn tether_generated_probe(
    client: &mut PolicyDecisionClient<Channel>,
    case: &TestCase,
) -> anyhow::Result<()> {
    let mut request = tether_request(case);
    request.action = Some(pdp::EntityUid {
        r#type: "Action".into(),
        id: "view".into(),
    });
    request.resource = Some(pdp::EntityUid {
        r#type: "Record".into(),
        id: "r-0".into(),
    });
    let mut entities = case.entities.clone().unwrap_or_default();
    let delegator = entities
        .as_array()
        .and_then(|all| all.iter().find(|e| e["uid"]["type"] == "User"))
        .map(|user| user["uid"].clone())
        .context("the benchmark case has no User entity")?;
    if let Some(all) = entities.as_array_mut() {
        all.push(json!({
            "uid": { "type": "Record", "id": "r-0" },
            "attrs": { "kind": "res_0", "owner": { "__entity": delegator },
                       "department": "people", "tier": 3, "locked": false },
            "parents": [],
        }));
    }
    request.entities_json = entities.to_string();
    let response = client.check(request).await?.into_inner();
    ensure!(
        response.decision() == pdp::Decision::Allow && response.policy_ids == ["gen-0000-view"],
        "Tether generated-policy probe: expected ALLOW by gen-0000-view, got {response:?}"
    );
    println!("sanity: Tether generated policy gen-0000-view answers ALLOW");
    Ok(())
}

#[derive(Clone)]
struct TetherCaller {
    client: PolicyDecisionClient<Channel>,
    request: pdp::CheckRequest,
}

impl TetherCaller {
    async fn check_allow(&mut self) -> anyhow::Result<Vec<String>> {
        let response = self.client.check(self.request.clone()).await?.into_inner();
        if response.decision() != pdp::Decision::Allow {
            bail!("Tether: expected ALLOW, got {response:?}");
        }
        Ok(response.policy_ids)
    }
}

impl Caller for TetherCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.check_allow().await.map(drop)
    }
}

/// The real PDP (`tether_policy_decision::run`) on 127.0.0.1:0, on its own
/// two-thread runtime. Stopped when dropped.
struct TetherServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<Runtime>,
}

impl TetherServer {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tether-pdp")
            .enable_all()
            .build()
            .context("building the server runtime")?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let config = Config {
            // Cerbos serves plaintext here, so Tether does too; the cost of
            // mTLS is measured on its own by `benches/mtls.rs`.
            server: ServerConfig {
                tls: tether_runtime::TlsConfig::plaintext(),
                ..ServerConfig::default()
            },
            policy: PolicyConfig {
                dir: dir.to_path_buf(),
                watch: false,
                reload_debounce_ms: 200,
            },
            limits: RequestLimits::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(err) = tether_policy_decision::run(config, listener, shutdown).await {
                eprintln!("Tether PDP stopped with an error: {err:#}");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }
}

impl Drop for TetherServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

// ----------------------------------------------------------------- breakdown

/// Where an in-process decision's time goes: the steps of
/// `PolicyPack::evaluate`, done with cedar-policy directly on the same files
/// and request, next to the cheaper way of doing each step that the
/// benchmark notes propose for `libs/policy/src/eval.rs`.
struct Breakdown {
    set: String,
    /// `(step, latency, note)`, in the same order for every set.
    steps: Vec<(&'static str, Stats, String)>,
}

fn print_breakdowns(breakdowns: &[Breakdown]) {
    let Some(first) = breakdowns.first() else {
        return;
    };
    println!();
    println!(
        "In-process breakdown: cedar-policy called directly, p50 / p99 (µs), \
         {BREAKDOWN_ITERATIONS} iterations per step"
    );
    println!();
    let sets: Vec<&str> = breakdowns.iter().map(|b| b.set.as_str()).collect();
    println!("| step | {} |", sets.join(" | "));
    println!("| --- |{}", " ---: |".repeat(sets.len()));
    for (i, (step, _, _)) in first.steps.iter().enumerate() {
        let cells: Vec<String> = breakdowns
            .iter()
            .map(|b| match b.steps.get(i) {
                Some((_, stats, note)) if note.is_empty() => stats.p50_p99(),
                Some((_, stats, note)) => format!("{} ({note})", stats.p50_p99()),
                None => "n/a".into(),
            })
            .collect();
        println!("| {step} | {} |", cells.join(" | "));
    }
}

fn breakdown(set: &BenchSet, case: &TestCase) -> anyhow::Result<Breakdown> {
    let pack = CedarPack::load(&set.cedar_dir)?;
    let (context_json, entities_json) = case.json();
    let principal = direct::uid_of(&case.principal)?;
    let action = direct::uid_of(&case.action)?;
    let resource = direct::uid_of(&case.resource)?;
    let context_value: Value = serde_json::from_str(&context_json)?;
    let entities_value: Value = serde_json::from_str(&entities_json)?;
    let request_with = |context: Context| {
        anyhow::Ok(Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            Some(&pack.schema),
        )?)
    };
    let cedar_json_request = |context: Value| {
        let context = Context::from_json_value(context, Some((&pack.schema, &action)))?;
        request_with(context)
    };
    let direct_request = |context: &Value| request_with(direct::context(context)?);
    let direct_entities = |statics: Entities| {
        let items = entities_value.as_array().into_iter().flatten();
        let items = items
            .map(direct::entity)
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::Ok(statics.add_entities(items, Some(&pack.schema))?)
    };

    // Cedar's JSON parser and the direct path, on every policy or on the action slice,
    // must give the same answer.
    let request = cedar_json_request(context_value.clone())?;
    let entities = pack
        .entities
        .clone()
        .add_entities_from_json_value(entities_value.clone(), Some(&pack.schema))?;
    let slice = action_slice(&pack.policies, &action)?;
    let mut answers = Vec::new();
    for (request, entities) in [
        (&request, &entities),
        (
            &direct_request(&context_value)?,
            &direct_entities(pack.entities.clone())?,
        ),
    ] {
        for policies in [&pack.policies, &slice] {
            let response = Authorizer::new().is_authorized(request, policies, entities);
            let mut reasons: Vec<String> = response
                .diagnostics()
                .reason()
                .map(ToString::to_string)
                .collect();
            reasons.sort();
            answers.push((response.decision(), reasons));
        }
    }
    ensure!(
        answers
            .iter()
            .all(|a| a.0 == CedarDecision::Allow && Some(a) == answers.first()),
        "breakdown: expected the same Allow four times, got {answers:?}"
    );
    // The direct path still checks the context against the schema.
    let mut wrong_type = context_value.clone();
    if let Some(hour) = wrong_type.pointer_mut("/now/hour") {
        *hour = json!("ten");
    }
    let mut undeclared = context_value.clone();
    if let Some(map) = undeclared.as_object_mut() {
        map.insert("undeclared".into(), json!(1));
    }
    for bad in [wrong_type, undeclared] {
        ensure!(
            direct_request(&bad).is_err(),
            "breakdown: the direct context accepted {bad}"
        );
    }

    let mut steps = Vec::new();
    let parse = time_steps(
        || (),
        |()| {
            let context: Value = serde_json::from_str(&context_json)?;
            let entities: Value = serde_json::from_str(&entities_json)?;
            std::hint::black_box((context, entities));
            Ok(())
        },
    )?;
    steps.push((
        "parse context + entities JSON (serde_json)",
        parse,
        String::new(),
    ));
    let merge = time_steps(
        || (pack.entities.clone(), entities_value.clone()),
        |(statics, request)| {
            let merged = statics.add_entities_from_json_value(request, Some(&pack.schema))?;
            std::hint::black_box(merged);
            Ok(())
        },
    )?;
    steps.push((
        "request entities: Cedar's JSON parser, `add_entities_from_json_value` (fallback)",
        merge,
        String::new(),
    ));
    let merge = time_steps(
        || pack.entities.clone(),
        |statics| {
            std::hint::black_box(direct_entities(statics)?);
            Ok(())
        },
    )?;
    steps.push((
        "request entities: direct Cedar values, `add_entities`",
        merge,
        String::new(),
    ));
    let context = time_steps(
        || context_value.clone(),
        |context| {
            std::hint::black_box(cedar_json_request(context)?);
            Ok(())
        },
    )?;
    steps.push((
        "context + request: `Context::from_json_value`, `Request::new` (fallback)",
        context,
        String::new(),
    ));
    let context = time_steps(
        || (),
        |()| {
            std::hint::black_box(direct_request(&context_value)?);
            Ok(())
        },
    )?;
    steps.push((
        "context + request: direct Cedar values, `Context::from_pairs`, `Request::new`",
        context,
        String::new(),
    ));
    for (label, policies) in [
        ("authorize: every policy (plain Cedar)", &pack.policies),
        (
            "authorize: policies whose action scope admits the action (Tether's per-action slice)",
            &slice,
        ),
    ] {
        let authorize = time_steps(
            || (),
            |()| {
                let response = Authorizer::new().is_authorized(&request, policies, &entities);
                std::hint::black_box(response);
                Ok(())
            },
        )?;
        let note = format!("{} policies", policies.num_of_policies());
        steps.push((label, authorize, note));
    }
    Ok(Breakdown {
        set: set.name.clone(),
        steps,
    })
}

/// Cedar values built straight from parsed JSON, as `libs/policy/src/fast.rs`
/// does. Only the explicit forms: anything else (`__extn`, an entity
/// reference without `__entity`, a number that is not a Long) is an error
/// here, where `eval.rs` would fall back to Cedar's schema-based JSON parser.
/// Schema conformance is still checked, by `Request::new` and `add_entities`.
mod direct {
    use std::collections::{HashMap, HashSet};
    use std::str::FromStr as _;

    use anyhow::{Context as _, bail, ensure};
    use cedar_policy::{
        Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression,
    };
    use serde_json::Value;

    pub fn uid_of(uid: &tether_policy::Uid) -> anyhow::Result<EntityUid> {
        Ok(EntityUid::from_type_name_and_id(
            EntityTypeName::from_str(&uid.type_name)?,
            EntityId::new(&uid.id),
        ))
    }

    fn uid(json: &Value) -> anyhow::Result<EntityUid> {
        let type_name = json["type"]
            .as_str()
            .context("an entity uid needs a `type`")?;
        let id = json["id"].as_str().context("an entity uid needs an `id`")?;
        Ok(EntityUid::from_type_name_and_id(
            EntityTypeName::from_str(type_name)?,
            EntityId::new(id),
        ))
    }

    fn value(json: &Value) -> anyhow::Result<RestrictedExpression> {
        Ok(match json {
            Value::Bool(b) => RestrictedExpression::new_bool(*b),
            Value::Number(n) => RestrictedExpression::new_long(n.as_i64().context("not a Long")?),
            Value::String(s) => RestrictedExpression::new_string(s.clone()),
            Value::Array(items) => RestrictedExpression::new_set(
                items
                    .iter()
                    .map(value)
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            Value::Object(map) => {
                if let Some(entity) = map.get("__entity") {
                    return Ok(RestrictedExpression::new_entity_uid(uid(entity)?));
                }
                ensure!(!map.contains_key("__extn"), "`__extn` is left to Cedar");
                RestrictedExpression::new_record(fields(map)?)?
            }
            Value::Null => bail!("null is not a Cedar value"),
        })
    }

    fn fields(
        map: &serde_json::Map<String, Value>,
    ) -> anyhow::Result<Vec<(String, RestrictedExpression)>> {
        map.iter()
            .map(|(k, v)| anyhow::Ok((k.clone(), value(v)?)))
            .collect()
    }

    pub fn context(json: &Value) -> anyhow::Result<Context> {
        let map = json.as_object().context("the context must be an object")?;
        Ok(Context::from_pairs(fields(map)?)?)
    }

    pub fn entity(json: &Value) -> anyhow::Result<Entity> {
        let attrs: HashMap<String, RestrictedExpression> = match json["attrs"].as_object() {
            Some(map) => fields(map)?.into_iter().collect(),
            None => HashMap::new(),
        };
        let parents = json["parents"].as_array().into_iter().flatten();
        let parents = parents.map(uid).collect::<anyhow::Result<HashSet<_>>>()?;
        Ok(Entity::new(uid(&json["uid"])?, attrs, parents)?)
    }
}

/// Times `step` (not `setup`) `BREAKDOWN_ITERATIONS` times after a warm-up.
fn time_steps<T>(
    mut setup: impl FnMut() -> T,
    mut step: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<Stats> {
    for _ in 0..BREAKDOWN_ITERATIONS / 10 {
        step(setup())?;
    }
    let mut stats = Stats::new()?;
    for _ in 0..BREAKDOWN_ITERATIONS {
        let input = setup();
        let start = Instant::now();
        step(input)?;
        stats.record(start.elapsed())?;
    }
    Ok(stats)
}

/// The policies whose action scope admits `action`: the others cannot apply
/// to the request, since a scope constraint never errors. (These packs have
/// no action groups; with groups, `In` must also match the action's
/// ancestors from the schema.)
fn action_slice(policies: &PolicySet, action: &EntityUid) -> anyhow::Result<PolicySet> {
    let mut slice = PolicySet::new();
    for policy in policies.policies() {
        let admits = match policy.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(uid) => &uid == action,
            ActionConstraint::In(uids) => uids.contains(action),
        };
        if admits {
            slice.add(policy.clone())?;
        }
    }
    Ok(slice)
}

/// A pack's schema, policies and static entities, read with cedar-policy
/// alone.
struct CedarPack {
    schema: Schema,
    policies: PolicySet,
    entities: Entities,
}

impl CedarPack {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut schema = None;
        let mut policies = String::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match name.as_deref() {
                Some(n) if n.ends_with(".cedarschema") => {
                    schema =
                        Some(Schema::from_cedarschema_str(&std::fs::read_to_string(&path)?)?.0);
                }
                Some(n) if n.ends_with(".cedar") => {
                    policies.push_str(&std::fs::read_to_string(&path)?);
                    policies.push('\n');
                }
                _ => {}
            }
        }
        let schema = schema.with_context(|| format!("no schema in `{}`", dir.display()))?;
        let entities = Entities::from_json_str(
            &std::fs::read_to_string(dir.join("entities.json"))?,
            Some(&schema),
        )?;
        Ok(Self {
            schema,
            policies: PolicySet::from_str(&policies)?,
            entities,
        })
    }
}

// -------------------------------------------------------------------- Cerbos

/// Starts Cerbos on `policy_dir`, connects, and checks that it answers the
/// benchmark request (and, on the large set, a request only a generated
/// policy allows) with EFFECT_ALLOW.
async fn cerbos_target(
    set: &BenchSet,
    case: &TestCase,
    policy_dir: &Path,
) -> anyhow::Result<(CerbosServer, Target)> {
    let started = Instant::now();
    let server = CerbosServer::start(policy_dir).await?;
    println!(
        "Cerbos SERVING after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let channels = connect(server.grpc_addr().to_owned()).await?;
    let client = CerbosServiceClient::new(channels.first().context("no channel")?.clone());
    let principal = cerbos_principal(case)?;
    let request = cerbos_request(
        principal.clone(),
        &case.action.id,
        "employee",
        &case.resource.id,
        &json!({}),
    );
    let mut caller = CerbosCaller {
        client: client.clone(),
        request,
        action: case.action.id.clone(),
    };
    caller.call().await?;
    println!("sanity: Cerbos answers EFFECT_ALLOW");
    if set.generated_probe {
        let attrs = json!({ "owner": case.principal.id, "department": "people", "tier": 3, "locked": false });
        let mut probe = CerbosCaller {
            client,
            request: cerbos_request(principal, "view", "res_0", "r-0", &attrs),
            action: "view".into(),
        };
        probe
            .call()
            .await
            .context("Cerbos generated-policy probe")?;
        println!("sanity: Cerbos generated policy res_0 answers EFFECT_ALLOW");
    }
    let target = Target {
        system: "Cerbos 0.55",
        channels,
        prototype: AnyCaller::Cerbos(caller),
    };
    Ok((server, target))
}

#[derive(Clone)]
struct CerbosCaller {
    client: CerbosServiceClient<Channel>,
    request: CheckResourcesRequest,
    action: String,
}

impl Caller for CerbosCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self
            .client
            .check_resources(self.request.clone())
            .await?
            .into_inner();
        let effect = response
            .results
            .first()
            .and_then(|r| r.actions.get(&self.action))
            .map(|e| Effect::try_from(*e));
        if effect != Some(Ok(Effect::Allow)) {
            bail!("Cerbos: expected EFFECT_ALLOW, got {response:?}");
        }
        Ok(())
    }
}

// ---------------------------------------------------------- gRPC load driver

/// Sequential latency and throughput of Tether and (when available) Cerbos
/// on one policy set. The systems take turns, `ROUNDS` times, so that both
/// see the same machine: other load on a 2-core box moves the numbers.
async fn bench_grpc(
    set: &BenchSet,
    case: &TestCase,
    tether: SocketAddr,
) -> anyhow::Result<Vec<(&'static str, Stats, Throughput)>> {
    let mut targets = vec![tether_target(set, case, tether).await?];
    let cerbos = match &set.cerbos_dir {
        Some(dir) => Some(cerbos_target(set, case, dir).await?),
        None => None,
    };
    // The server is killed when this function returns, also on an error or
    // a panic.
    let (_cerbos_server, cerbos_target) = cerbos.unzip();
    targets.extend(cerbos_target);

    let sequential = sequential_rounds(&targets).await?;
    let throughput = throughput_rounds(&targets).await?;
    Ok(targets
        .iter()
        .map(|t| t.system)
        .zip(sequential)
        .zip(throughput)
        .map(|((system, sequential), throughput)| (system, sequential, throughput))
        .collect())
}

async fn sequential_rounds(targets: &[Target]) -> anyhow::Result<Vec<Stats>> {
    let mut all = Vec::new();
    for target in targets {
        sequential(&mut target.caller(0), SEQUENTIAL_WARMUP, 0).await?;
        all.push(Stats::new()?);
    }
    for _ in 0..ROUNDS {
        for (target, stats) in targets.iter().zip(&mut all) {
            let mut caller = target.caller(0);
            let round = sequential(&mut caller, 0, SEQUENTIAL_ITERATIONS / ROUNDS).await?;
            stats.merge(&round)?;
        }
    }
    Ok(all)
}

async fn throughput_rounds(targets: &[Target]) -> anyhow::Result<Vec<Throughput>> {
    // (seconds measured, latencies) per target
    let mut all = Vec::new();
    for _ in targets {
        all.push((0.0_f64, Stats::new()?));
    }
    for round in 0..ROUNDS {
        let warmup = if round == 0 {
            THROUGHPUT_WARMUP
        } else {
            ROUND_WARMUP
        };
        for (target, (seconds, latency)) in targets.iter().zip(&mut all) {
            let callers = (0..CONCURRENCY).map(|i| target.caller(i)).collect();
            let result = throughput(callers, warmup, THROUGHPUT_DURATION / ROUNDS as u32).await?;
            ensure!(
                result.per_second > 0.0,
                "{}: no request completed",
                target.system
            );
            *seconds += result.latency.count() as f64 / result.per_second;
            latency.merge(&result.latency)?;
        }
    }
    Ok(all
        .into_iter()
        .map(|(seconds, latency)| Throughput {
            per_second: latency.count() as f64 / seconds,
            latency,
        })
        .collect())
}

/// One system under test: its channels and a caller to copy onto them.
struct Target {
    system: &'static str,
    channels: Vec<Channel>,
    prototype: AnyCaller,
}

impl Target {
    /// A caller on channel `i` modulo the channel count (round robin).
    fn caller(&self, i: usize) -> AnyCaller {
        let channel = self.channels[i % self.channels.len()].clone();
        self.prototype.on(channel)
    }
}

#[derive(Clone)]
enum AnyCaller {
    Tether(TetherCaller),
    Cerbos(CerbosCaller),
}

impl AnyCaller {
    /// The same request on another channel.
    fn on(&self, channel: Channel) -> Self {
        match self {
            Self::Tether(c) => Self::Tether(TetherCaller {
                client: PolicyDecisionClient::new(channel),
                request: c.request.clone(),
            }),
            Self::Cerbos(c) => Self::Cerbos(CerbosCaller {
                client: CerbosServiceClient::new(channel),
                request: c.request.clone(),
                action: c.action.clone(),
            }),
        }
    }
}

impl Caller for AnyCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Tether(c) => c.call().await,
            Self::Cerbos(c) => c.call().await,
        }
    }
}

/// `CHANNELS` HTTP/2 connections to `addr`, the same for both systems.
async fn connect(addr: String) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let channel = tokio::time::timeout(Duration::from_secs(30), endpoint.connect())
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}
