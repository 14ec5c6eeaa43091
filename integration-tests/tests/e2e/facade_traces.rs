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
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use tether_integration_tests::approvals::PING_CLIENT;
use tether_integration_tests::facade::{bearer, uid};
use tether_integration_tests::issuer::{AGENT, INTENT};
use tether_integration_tests::otlp::{Collector, Exported, from_hex};
use tether_integration_tests::processes::{APPROVALS, FACADE, IDENTITY, ISSUER, PDP, ProcessStack};
use tether_integration_tests::waterfall::{self, TEXT_HEADER_LINES, Trace};
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;

const BIN: &str = env!("CARGO_BIN_EXE_tether-services");

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

/// The spans of trace `trace_id` once they include `expected` server spans
/// (service, span name, how many).
async fn trace_with(
    collector: &Collector,
    trace_id: &str,
    expected: &[(&str, &str, usize)],
) -> Result<Vec<Exported>, String> {
    collector
        .trace_until(trace_id, Duration::from_secs(20), |spans| {
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
            Ok(())
        })
        .await
}

fn hex(text: &str) -> Vec<u8> {
    from_hex(text).unwrap()
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
    let (receiver, otlp) = Collector::start().await.unwrap();
    // The five services as processes, each exporting to the receiver.
    let mut stack = ProcessStack::builder(BIN)
        .otlp_endpoint(&otlp)
        .start()
        .await
        .unwrap();
    let (idp, agent) = (&stack.idp, stack.agent());
    let issuer_url = stack.identity_url().to_owned();
    // An agent: TLS that trusts the CA, no client certificate.
    let channel = stack.facade_channel().unwrap();
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
    let trace = trace_with(
        &receiver,
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

    // ---- The waterfall the demo shows of this very trace: every span on
    // one line of text, the agent's (unexported) span's child at the top,
    // and an SVG that is well-formed XML. TRACE_WATERFALL_SVG names a file to
    // write the picture to, to look at it (not a TETHER_* name: the service
    // processes inherit the environment and read those as configuration).
    let waterfall = Trace::from_spans(&trace);
    assert_eq!(waterfall.len(), trace.len());
    assert_eq!(waterfall.trace_id(), AGENT_TRACE_ID);
    assert_eq!(waterfall.rows()[0].name, acquire);
    assert!(waterfall.rows()[0].orphan);
    assert_eq!(waterfall.services().len(), 4, "{:?}", waterfall.services());
    let text = waterfall.to_text(48);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), TEXT_HEADER_LINES + trace.len(), "{text}");
    for (line, row) in lines[TEXT_HEADER_LINES..].iter().zip(waterfall.rows()) {
        assert!(line.contains(&row.label()), "{line}\n{text}");
    }
    let handler_line = lines
        .iter()
        .find(|l| l.contains("facade.acquire_credential"))
        .unwrap();
    for shown in [
        format!("session={sid}"),
        "decision=ALLOW".to_owned(),
        "approval=APPROVED".to_owned(),
        format!("lease={}", lease.lease_id),
        format!("ttl={ttl}s"),
    ] {
        assert!(handler_line.contains(&shown), "{shown}: {text}");
    }
    let svg = waterfall.to_svg();
    waterfall::check_xml(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert_eq!(svg.matches("<g>").count(), trace.len());
    if let Some(path) = std::env::var_os("TRACE_WATERFALL_SVG") {
        std::fs::write(&path, &svg).unwrap();
        std::fs::write(Path::new(&path).with_extension("txt"), &text).unwrap();
    }

    // ---- StartSession: the identity exchange's server span is the child of
    // the facade's client span, in the agent's trace.
    let exchange = "tether.identity.v1.IdentityExchange/Exchange";
    let started = trace_with(
        &receiver,
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
    let pg_admin_password = stack.deps.pg.admin_password().to_owned();
    stack.stop_services();
    let exported = receiver.bytes();
    let secrets: [(&str, &str); 9] = [
        ("the delegated token", &token),
        ("the user's token", &user_token),
        ("the agent's assertion", &assertion),
        ("the credential's password", &db.password),
        ("the PostgreSQL admin password", &pg_admin_password),
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
