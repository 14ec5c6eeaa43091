//! One agent request is one trace, across processes: the five services run
//! as separate processes (their own `main`, through `tether-services`),
//! each exporting OTLP/gRPC to a receiver in this test
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), every hop mTLS. An agent takes a
//! credential for an action that needs the user's approval (CIBA ping, the
//! test IdP's device approves), then asks again carrying its own
//! `traceparent`, `tracestate` and `baggage`. The test checks the span tree
//! (each service's server span is the child of the facade's client span for
//! that call, everything under the facade's server span, itself the child
//! of the agent's span), the attributes of every hop, that the agent's
//! sampled flag, `tracestate` and `baggage` steer nothing, and that no
//! secret the test knows is anywhere in what was exported.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use tether_integration_tests::approvals::PING_CLIENT;
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{HR_ENTITIES, bearer, hr_pack_any_hour, uid};
use tether_integration_tests::identity::{FACADE_AUDIENCE, TestAgent};
use tether_integration_tests::idp::{API_RESOURCE, Idp};
use tether_integration_tests::issuer::{AGENT, CredentialDeps, INTENT};
use tether_integration_tests::openbao::ROOT_TOKEN;
use tether_integration_tests::pki::TestPki;
use tether_integration_tests::postgres::free_port;
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;
use tether_runtime::client::InternalChannel;

const BIN: &str = env!("CARGO_BIN_EXE_tether-services");

const FACADE: &str = "tether-agent-facade";
const IDENTITY: &str = "tether-identity-exchange";
const PDP: &str = "tether-policy-decision";
const ISSUER: &str = "tether-credential-issuer";
const APPROVALS: &str = "tether-ciba-orchestrator";

/// The agent's own trace context and baggage on the traced call.
const AGENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN_ID: &str = "00f067aa0ba902b7";
const AGENT_TRACESTATE: &str = "agent=tracestate-marker";
const AGENT_BAGGAGE: &str = "decision=ALLOW,approval=granted,marker=baggage-marker";
/// Its StartSession, in a trace of its own.
const START_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const START_SPAN_ID: &str = "b7ad6b7169203331";

// ---------------------------------------------------------------------------
// The OTLP receiver.

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One exported span and the service that exported it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    fn kind(&self) -> SpanKind {
        self.span.kind()
    }

    fn name(&self) -> &str {
        &self.span.name
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Exported> {
        let exports = self.0.lock().unwrap();
        let mut out = Vec::new();
        for export in exports.iter() {
            for resource_spans in &export.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| attribute(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        out.push(Exported {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Everything exported, as the bytes that went over the wire.
    fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(Message::encode_to_vec)
            .collect()
    }

    /// The spans of trace `trace_id` once they include `expected` server
    /// spans (service, span name, how many).
    async fn trace(
        &self,
        trace_id: &str,
        expected: &[(&str, &str, usize)],
    ) -> Result<Vec<Exported>, String> {
        let id = hex(trace_id);
        eventually(Duration::from_secs(20), || async {
            let spans: Vec<Exported> = self
                .spans()
                .into_iter()
                .filter(|s| s.span.trace_id == id)
                .collect();
            for (service, name, count) in expected {
                let found = spans
                    .iter()
                    .filter(|s| {
                        s.service == *service && s.name() == *name && s.kind() == SpanKind::Server
                    })
                    .count();
                if found < *count {
                    return Err(format!(
                        "{found} of {count} `{name}` server spans from {service}; trace so far: {:#?}",
                        spans.iter().map(|s| (&s.service, s.name())).collect::<Vec<_>>()
                    ));
                }
            }
            Ok(spans)
        })
        .await
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// The services, as processes.

/// A service process, killed on drop (SIGTERM first, so it flushes).
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Strips `null`s (TOML has none) and writes `config` as TOML.
fn write_toml(path: &Path, config: Value) {
    fn strip(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(strip).collect()),
            other => other,
        }
    }
    let text = toml::to_string(&strip(config)).unwrap();
    std::fs::write(path, text).unwrap();
}

struct Stack {
    dir: tempfile::TempDir,
    bin_dir: tempfile::TempDir,
    otlp: String,
    procs: Vec<Proc>,
}

impl Stack {
    /// Starts `name` (a service binary's name) with `config`, through a
    /// link of that name to `tether-services`.
    fn spawn(&mut self, name: &'static str, config: Value) {
        let link = self.bin_dir.path().join(name);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        let path = self.dir.path().join(format!("{name}.toml"));
        write_toml(&path, config);
        let log = self.dir.path().join(format!("{name}.log"));
        // Relative default paths (data directories) land in the sandbox.
        let child = Command::new(&link)
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(&path)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &self.otlp)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("TETHER_LOG", "info")
            .env("TETHER_LOG_FORMAT", "json")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_SERVICE_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.procs.push(Proc { name, child, log });
    }

    /// What every service logged so far.
    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}\n{}\n", p.name, p.log()))
            .collect()
    }

    /// Waits until the last started service answers gRPC health on
    /// `channel`; its log on failure.
    async fn wait_serving(&mut self, channel: InternalChannel) {
        let proc = self.procs.last_mut().unwrap();
        let health = tonic_health::pb::health_client::HealthClient::new(channel);
        let result = eventually(Duration::from_secs(30), || {
            let mut health = health.clone();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Err(format!("exited: {status}"));
                }
                health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        if let Err(e) = result {
            panic!("{} did not start ({e}):\n{}", proc.name, proc.log());
        }
    }
}

fn listen(port: u16) -> Value {
    json!(format!("127.0.0.1:{port}"))
}

fn tls(pki: &TestPki, service: &str) -> Value {
    serde_json::to_value(pki.tls(service).unwrap()).unwrap()
}

/// `message` as an agent sends it: its delegated token, and its own trace
/// context and baggage.
fn traced<T>(message: T, token: &str, trace_id: &str, span_id: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    let metadata = request.metadata_mut();
    // Sampled flag off: the agent may not switch tracing off.
    metadata.insert(
        "traceparent",
        format!("00-{trace_id}-{span_id}-00").parse().unwrap(),
    );
    metadata.insert("tracestate", AGENT_TRACESTATE.parse().unwrap());
    metadata.insert("baggage", AGENT_BAGGAGE.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_request_is_one_trace_across_every_service_process() {
    let (receiver, otlp) = Receiver::start().await;
    let (deps, idp) = tokio::join!(
        CredentialDeps::start(600),
        Idp::start_with_config(json!({ "cibaInterval": 1 }))
    );
    let (deps, idp) = (deps.unwrap(), idp.unwrap());
    let pki = TestPki::new().unwrap();
    let mut stack = Stack {
        dir: tempfile::tempdir().unwrap(),
        bin_dir: tempfile::tempdir().unwrap(),
        otlp: format!("http://{otlp}"),
        procs: Vec::new(),
    };
    let dir = stack.dir.path().to_path_buf();
    let port = |_| free_port().unwrap();
    let [
        identity_port,
        pdp_port,
        issuer_port,
        approvals_port,
        ping_port,
        facade_port,
    ]: [u16; 6] = std::array::from_fn(port);
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };

    // Identity exchange: alice's IdP trusted, `hr-assistant` registered.
    let agent = TestAgent::new(AGENT).unwrap();
    let issuer_url = format!("https://127.0.0.1:{identity_port}");
    stack.spawn(
        IDENTITY,
        json!({
            "server": { "listen": listen(identity_port), "drain_timeout_secs": 2, "tls": tls(&pki, "identity-exchange") },
            "issuer": issuer_url,
            "store": { "url": tether_store::sqlite_url(&dir.join("identity.db")) },
            "tokens": { "keys_dir": dir.join("identity-keys") },
            "trusted_issuers": [{
                "issuer": idp.issuer(),
                "audiences": [API_RESOURCE, "tether-cli"],
                "algorithms": ["ES256"],
            }],
            "agents": [{
                "id": AGENT,
                "jwks": serde_json::to_value(agent.key.jwks()).unwrap(),
                "audiences": [FACADE_AUDIENCE],
                "scopes": ["hr:read"],
                "may_act_for": { "groups": ["hr"] },
                "algorithms": ["ES256"],
            }],
            "http": { "timeout_secs": 2, "jwks_min_refresh_secs": 1 },
        }),
    );
    stack
        .wait_serving(
            pki.channel("agent-facade", addr(identity_port), "identity-exchange")
                .unwrap(),
        )
        .await;
    let sessions = json!({
        "token_issuer": issuer_url,
        "audience": FACADE_AUDIENCE,
        "jwks_url": format!("{issuer_url}/.well-known/jwks.json"),
        "identity_exchange": issuer_url,
        "revocation_poll_ms": 200,
        "revocation_max_staleness_ms": 5000,
    });

    // Policy decision point: the HR pack, any hour.
    let pack = hr_pack_any_hour(&dir).unwrap();
    stack.spawn(
        PDP,
        json!({
            "server": { "listen": listen(pdp_port), "drain_timeout_secs": 2, "tls": tls(&pki, "policy-decision") },
            "policy": { "dir": pack, "watch": false },
        }),
    );
    stack
        .wait_serving(
            pki.channel("agent-facade", addr(pdp_port), "policy-decision")
                .unwrap(),
        )
        .await;

    // Credential issuer: OpenBao's database engine in front of PostgreSQL.
    std::fs::create_dir_all(dir.join("issuer")).unwrap();
    stack.spawn(
        ISSUER,
        json!({
            "server": { "listen": listen(issuer_port), "drain_timeout_secs": 2, "tls": tls(&pki, "credential-issuer") },
            "vault": { "address": deps.bao.addr(), "auth": { "method": "token", "token": ROOT_TOKEN } },
            "store": { "data_dir": dir.join("issuer") },
            "sessions": sessions,
            "profiles": {
                "hr-read": { "vault_path": "database/creds/hr-readonly", "max_ttl_secs": 600 },
                "hr-write": { "vault_path": "database/creds/hr-writer", "max_ttl_secs": 600 },
            },
        }),
    );
    stack
        .wait_serving(
            pki.channel("agent-facade", addr(issuer_port), "credential-issuer")
                .unwrap(),
        )
        .await;

    // Approval orchestrator: CIBA ping mode, pings on a listener of their
    // own that the test IdP delivers to.
    std::fs::create_dir_all(dir.join("approvals")).unwrap();
    let secret_file = dir.join("ciba-client-secret");
    std::fs::write(&secret_file, PING_CLIENT.1).unwrap();
    let ping_url = format!(
        "http://127.0.0.1:{ping_port}{}",
        tether_ciba_orchestrator::GRPC_PORT_PING_PATH
    );
    idp.set_ping_target(PING_CLIENT.0, &ping_url).await.unwrap();
    stack.spawn(
        APPROVALS,
        json!({
            "server": { "listen": listen(approvals_port), "drain_timeout_secs": 2, "tls": tls(&pki, "ciba-orchestrator") },
            "ciba": {
                "issuer": idp.issuer(),
                "client_id": PING_CLIENT.0,
                "client_auth": { "method": "client_secret_basic", "secret_file": secret_file },
                "delivery_mode": "ping",
                "notification_endpoint": ping_url,
            },
            "ping": { "listen": listen(ping_port) },
            "store": { "data_dir": dir.join("approvals") },
            "sessions": sessions,
            "tickets": { "claim_interval_ms": 300, "owner_lease_ms": 3000, "watch_poll_ms": 100 },
        }),
    );
    stack
        .wait_serving(
            pki.channel("agent-facade", addr(approvals_port), "ciba-orchestrator")
                .unwrap(),
        )
        .await;

    // The facade.
    let entities = dir.join("entities.json");
    std::fs::write(&entities, HR_ENTITIES).unwrap();
    std::fs::create_dir_all(dir.join("audit")).unwrap();
    stack.spawn(
        FACADE,
        json!({
            "server": { "listen": listen(facade_port), "drain_timeout_secs": 2, "tls": tls(&pki, "agent-facade") },
            "upstreams": {
                "identity_exchange": issuer_url,
                "policy_decision": format!("https://127.0.0.1:{pdp_port}"),
                "credential_issuer": format!("https://127.0.0.1:{issuer_port}"),
                "ciba_orchestrator": format!("https://127.0.0.1:{approvals_port}"),
                "timeout_ms": 5000,
            },
            "sessions": sessions,
            "policy": { "entities_file": entities },
            "network": { "zones": [{ "name": "corp", "cidrs": ["127.0.0.0/8"], "trusted": true }] },
            "audit": { "data_dir": dir.join("audit") },
            "profiles": {
                "hr-read": { "actions": ["Action::\"read\""], "resource_types": ["Employee"] },
                "hr-write": {
                    "actions": ["Action::\"offboard\"", "Action::\"update_salary\""],
                    "resource_types": ["Employee"],
                },
            },
        }),
    );
    // An agent: TLS that trusts the CA, no client certificate.
    let channel = pki.anonymous_channel(addr(facade_port)).unwrap();
    stack.wait_serving(channel.clone()).await;
    let agent_client = || AgentGatewayClient::new(channel.clone());

    // StartSession, in a trace the agent started.
    let user_token = idp
        .login("alice", &["openid", "profile", "email", "hr:read"])
        .await
        .unwrap()
        .access_token;
    let assertion = agent.assertion(&format!("{issuer_url}/token")).unwrap();
    let mut start = tonic::Request::new(pb::StartSessionRequest {
        user_token: user_token.clone(),
        user_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        agent_assertion: assertion.clone(),
        agent_assertion_type: String::new(),
        intent: INTENT.into(),
        scope: "hr:read".into(),
    });
    start.metadata_mut().insert(
        "traceparent",
        format!("00-{START_TRACE_ID}-{START_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let session = agent_client()
        .start_session(start)
        .await
        .unwrap()
        .into_inner();
    let token = session.delegated_token.clone();
    let offboard = || pb::AcquireCredentialRequest {
        action: uid("Action", "offboard"),
        resource: uid("Employee", "1042"),
        profile: "hr-write".into(),
        ..Default::default()
    };

    // Offboarding needs alice's approval: asked on her device, approved.
    let asked = agent_client()
        .acquire_credential(bearer(offboard(), &token))
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
        panic!("no ticket: {asked:?}");
    };
    let ticket = required.ticket.unwrap();
    let device = idp.ciba_requests(&[("status", "pending")]).await.unwrap();
    assert_eq!(device.len(), 1, "{device:?}");
    let auth_req_id = device[0]["auth_req_id"].as_str().unwrap().to_owned();
    let notification_token =
        idp.ciba_request(&auth_req_id).await.unwrap()["client_notification_token"]
            .as_str()
            .unwrap()
            .to_owned();
    idp.ciba_device(&auth_req_id, "approve", json!({}))
        .await
        .unwrap();
    let mut watch = agent_client()
        .watch_approval(bearer(
            pb::WatchApprovalRequest {
                ticket_id: ticket.ticket_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    loop {
        let update = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .expect("no approval within 20 s")
            .unwrap()
            .expect("the watch ended before the approval");
        let state = update.ticket.unwrap().state();
        if state == pb::ApprovalState::Approved {
            break;
        }
        assert_eq!(state, pb::ApprovalState::Pending);
    }
    drop(watch);

    // The traced request: the same AcquireCredential again, now issued.
    let issued = agent_client()
        .acquire_credential(traced(offboard(), &token, AGENT_TRACE_ID, AGENT_SPAN_ID))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.decision(), pb::Decision::Allow, "{issued:?}");
    let Some(pb::acquire_credential_response::Outcome::Issued(credential)) = issued.outcome.clone()
    else {
        panic!("nothing issued: {issued:?}");
    };
    let lease = credential.lease.unwrap();
    let Some(pb::credential::Kind::Database(db)) = credential.credential.unwrap().kind else {
        panic!("not a database credential");
    };

    // ---- The span tree of the traced request.
    let check = "tether.policy.v1.PolicyDecision/Check";
    let request_approval = "tether.approval.v1.ApprovalOrchestrator/RequestApproval";
    let issue = "tether.credentials.v1.CredentialIssuer/Issue";
    let acquire = "tether.facade.v1.AgentGateway/AcquireCredential";
    let trace = receiver
        .trace(
            AGENT_TRACE_ID,
            &[
                (FACADE, acquire, 1),
                // The decision, and the decision again with the approval.
                (PDP, check, 2),
                (APPROVALS, request_approval, 1),
                (ISSUER, issue, 1),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let by_id: HashMap<&[u8], &Exported> = trace
        .iter()
        .map(|s| (s.span.span_id.as_slice(), s))
        .collect();
    let parent_of = |span: &Exported| by_id.get(span.span.parent_span_id.as_slice()).copied();
    let children_of = |span: &Exported, name: &str| -> Vec<&Exported> {
        trace
            .iter()
            .filter(|s| s.span.parent_span_id == span.span.span_id && s.name() == name)
            .collect()
    };

    // The facade's server span is the child of the agent's span.
    let servers = |service: &str, name: &str| -> Vec<&Exported> {
        trace
            .iter()
            .filter(|s| s.service == service && s.name() == name && s.kind() == SpanKind::Server)
            .collect()
    };
    let facade_server = servers(FACADE, acquire)[0];
    assert_eq!(facade_server.span.parent_span_id, hex(AGENT_SPAN_ID));
    // The agent's tracestate is not carried on, anywhere.
    assert!(
        trace.iter().all(|s| s.span.trace_state.is_empty()),
        "{trace:#?}"
    );
    let handler = children_of(facade_server, "facade.acquire_credential");
    assert_eq!(handler.len(), 1, "{trace:#?}");
    let handler = handler[0];

    // Every hop: a server span in the callee's process whose parent is the
    // facade's client span for that very call, below the facade's server
    // span; the callee's handler span below it.
    let hop = |service: &str, name: &str, handler_name: &str| -> Vec<(&Exported, &Exported)> {
        let found = servers(service, name);
        assert!(!found.is_empty(), "no {name} server span from {service}");
        found
            .into_iter()
            .map(|server| {
                assert_rpc(server, name, "0");
                let client = parent_of(server).unwrap_or_else(|| {
                    panic!("the parent of {name} in {service} is not in the trace")
                });
                assert_eq!(client.service, FACADE, "{client:#?}");
                assert_eq!(client.kind(), SpanKind::Client, "{client:#?}");
                assert_rpc(client, name, "0");
                let mut up = client;
                while up.span.span_id != facade_server.span.span_id {
                    up = parent_of(up).unwrap_or_else(|| {
                        panic!("{name} in {service} is not below the facade's server span")
                    });
                }
                let handlers = children_of(server, handler_name);
                assert_eq!(handlers.len(), 1, "{handler_name} under {name}: {trace:#?}");
                (server, handlers[0])
            })
            .collect()
    };
    let checks = hop(PDP, check, "pdp.check");
    let approvals = hop(APPROVALS, request_approval, "approval.request");
    let issues = hop(ISSUER, issue, "credentials.issue");
    assert_rpc(facade_server, acquire, "0");

    // The facade's request span: who, what, the decision, the approval and
    // the lease.
    let sid = &session.session_id;
    let expect = |span: &Exported, key: &str, value: &str| {
        assert_eq!(
            span.attr(key).as_deref(),
            Some(value),
            "`{key}` of {} ({}): {:#?}",
            span.name(),
            span.service,
            span.span.attributes
        );
    };
    expect(handler, "session_id", sid);
    expect(handler, "agent", AGENT);
    expect(handler, "user", "alice");
    expect(handler, "action", "Action::offboard");
    expect(handler, "resource", "Employee::1042");
    expect(handler, "decision", "DECISION_ALLOW");
    expect(handler, "policy_ids", &issued.policy_ids.join(","));
    expect(handler, "policy_version", &issued.policy_version);
    expect(handler, "approval_state", "APPROVAL_STATE_APPROVED");
    expect(handler, "approval_ticket", &ticket.ticket_id);
    expect(handler, "lease_id", &lease.lease_id);
    let ttl = lease.granted_ttl.unwrap().seconds.to_string();
    expect(handler, "granted_ttl_secs", &ttl);
    assert!(!issued.policy_ids.is_empty());

    // The PDP: first approval required, then allowed with the approval.
    let decisions: Vec<String> = checks
        .iter()
        .map(|(_, h)| h.attr("decision").unwrap_or_default())
        .collect();
    assert!(
        decisions.contains(&"DECISION_APPROVAL_REQUIRED".to_owned())
            && decisions.contains(&"DECISION_ALLOW".to_owned()),
        "{decisions:?}"
    );
    for (_, pdp) in &checks {
        expect(pdp, "policy_version", &issued.policy_version);
    }
    let allowed = checks
        .iter()
        .find(|(_, h)| h.attr("decision").as_deref() == Some("DECISION_ALLOW"))
        .unwrap()
        .1;
    expect(allowed, "policy_ids", &issued.policy_ids.join(","));

    // The orchestrator: the approval's grant used.
    let (_, approval) = approvals[0];
    expect(approval, "session_id", sid);
    expect(approval, "outcome", "REQUEST_OUTCOME_GRANT_USED");
    expect(approval, "approval_state", "TICKET_STATE_APPROVED");
    expect(approval, "ticket", &ticket.ticket_id);

    // The issuer: the lease and its TTL.
    let (_, issuance) = issues[0];
    expect(issuance, "session_id", sid);
    expect(issuance, "lease_id", &lease.lease_id);
    expect(issuance, "granted_ttl_secs", &ttl);

    // ---- StartSession: the identity exchange's server span is the child of
    // the facade's client span, in the agent's trace.
    let exchange = "tether.identity.v1.IdentityExchange/Exchange";
    let started = receiver
        .trace(
            START_TRACE_ID,
            &[
                (FACADE, "tether.facade.v1.AgentGateway/StartSession", 1),
                (IDENTITY, exchange, 1),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let start_server = started
        .iter()
        .find(|s| s.service == FACADE && s.kind() == SpanKind::Server)
        .unwrap();
    assert_eq!(start_server.span.parent_span_id, hex(START_SPAN_ID));
    let identity_server = started
        .iter()
        .find(|s| s.service == IDENTITY && s.name() == exchange && s.kind() == SpanKind::Server)
        .unwrap();
    assert_rpc(identity_server, exchange, "0");
    let client = started
        .iter()
        .find(|s| s.span.span_id == identity_server.span.parent_span_id)
        .expect("the exchange's parent is in the trace");
    assert_eq!(
        (client.service.as_str(), client.kind(), client.name()),
        (FACADE, SpanKind::Client, exchange)
    );
    let minted = started
        .iter()
        .find(|s| s.name() == "identity.exchange")
        .unwrap();
    assert_eq!(minted.span.parent_span_id, identity_server.span.span_id);
    expect(minted, "session_id", sid);
    expect(minted, "agent", AGENT);
    expect(minted, "user", "alice");
    expect(minted, "outcome", "minted");

    // ---- Nothing secret anywhere (names, attributes, events, resources),
    // nor the agent's baggage or tracestate. The services flush on SIGTERM.
    for proc in &mut stack.procs {
        proc.terminate();
    }
    let exported = receiver.bytes();
    let secrets: [(&str, &str); 9] = [
        ("the delegated token", &token),
        ("the user's token", &user_token),
        ("the agent's assertion", &assertion),
        ("the credential's password", &db.password),
        ("the PostgreSQL admin password", deps.pg.admin_password()),
        ("the CIBA client secret", PING_CLIENT.1),
        ("the CIBA notification token", &notification_token),
        ("the agent's baggage", "baggage-marker"),
        ("the agent's tracestate", "tracestate-marker"),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 8, "{what} is too short to search for");
        assert!(
            !exported
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{what} was exported"
        );
    }
    // Baggage keys never became attributes either.
    let all = receiver.spans();
    assert!(
        all.iter()
            .all(|s| s.attr("approval").is_none() && s.attr("marker").is_none()),
        "baggage became an attribute"
    );
}

/// The OpenTelemetry RPC attributes of a span of `method`
/// (`pkg.Service/Method`) that ended with `status`.
fn assert_rpc(span: &Exported, method: &str, status: &str) {
    let (service, name) = method.split_once('/').unwrap();
    assert_eq!(span.name(), method, "{span:#?}");
    assert_eq!(
        span.attr("rpc.system").as_deref(),
        Some("grpc"),
        "{span:#?}"
    );
    assert_eq!(
        span.attr("rpc.service").as_deref(),
        Some(service),
        "{span:#?}"
    );
    assert_eq!(span.attr("rpc.method").as_deref(), Some(name), "{span:#?}");
    assert_eq!(
        span.attr("rpc.grpc.status_code").as_deref(),
        Some(status),
        "{span:#?}"
    );
}
