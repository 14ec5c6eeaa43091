//! Metrics and the ops port, end to end: the real identity exchange (with
//! the test IdP), policy decision point and credential issuer (with OpenBao
//! and PostgreSQL), mTLS on their main ports, each with `server.ops_listen`
//! on loopback. The test makes real calls, scrapes `/metrics` over
//! plaintext HTTP and checks that each counter moved by exactly what was
//! done, that nothing secret or personal became a label, and that the ops
//! port answers gRPC health in plaintext and serves nothing else.
//!
//! The services run in this test's process, so they share one meter
//! provider (as a binary's services would not): every ops port renders the
//! same instruments. Each test runs in its own process (nextest), so the
//! counters start from what the sandboxes themselves did; the test compares
//! a scrape before with one after.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_integration_tests::eventually;
use tether_integration_tests::identity::FACADE_AUDIENCE;
use tether_integration_tests::issuer::{CredentialDeps, IssuerSandbox, SessionAuthority};
use tether_integration_tests::pdp::{PdpSandbox, hr_context, hr_request};
use tether_integration_tests::postgres::free_port;
use tether_proto::credentials::v1::{IssueRequest, RevokeLeaseRequest, credential};
use tether_proto::identity::v1::ExchangeRequest;
use tether_proto::policy::v1::{CheckRequest, Decision};
use tether_runtime::ServerConfig;
use tether_runtime::metrics::value_of;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn ops_server() -> (SocketAddr, ServerConfig) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    (
        addr,
        ServerConfig {
            ops_listen: Some(addr),
            ..ServerConfig::default()
        },
    )
}

async fn scrape(ops: SocketAddr) -> String {
    let response = reqwest::Client::new()
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        tether_runtime::metrics::CONTENT_TYPE
    );
    response.text().await.unwrap()
}

/// How much `name{labels}` moved between two scrapes.
fn moved(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value_of(after, name, labels) - value_of(before, name, labels)
}

fn calls(service: &str, method: &str, code: &str) -> Vec<(&'static str, String)> {
    vec![
        ("rpc_service", service.to_owned()),
        ("rpc_method", method.to_owned()),
        ("rpc_grpc_status_code", code.to_owned()),
    ]
}

fn rpc_moved(before: &str, after: &str, service: &str, method: &str, code: &str) -> f64 {
    let labels = calls(service, method, code);
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    moved(
        before,
        after,
        "rpc_server_call_duration_seconds_count",
        &labels,
    )
}

fn plaintext(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

async fn health(addr: SocketAddr) -> Result<ServingStatus, tonic::Status> {
    let answer = HealthClient::new(plaintext(addr))
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status).unwrap())
}

const PDP: &str = "tether.policy.v1.PolicyDecision";
const ISSUER: &str = "tether.credentials.v1.CredentialIssuer";
const IDENTITY: &str = "tether.identity.v1.IdentityExchange";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_counts_what_it_did_and_the_ops_port_serves_only_health_and_metrics() {
    let (deps, auth) = tokio::join!(CredentialDeps::start(600), SessionAuthority::start());
    let (deps, auth) = (deps.unwrap(), auth.unwrap());
    let (issuer_ops, server) = ops_server();
    // On PostgreSQL: the registry gauges' queries run on the store replicas
    // share.
    deps.pg.create_database("tether").await.unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .store_url(deps.pg.admin_url("tether"))
        .server(server)
        .start()
        .await
        .unwrap();
    let (pdp_ops, server) = ops_server();
    let pdp = PdpSandbox::builder()
        .pki(Arc::clone(auth.identity().pki()))
        .server(server)
        .start()
        .await
        .unwrap();
    let version = pdp
        .client()
        .get_policy_set(tether_proto::policy::v1::GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;

    // The registry gauges have been read once the issuer has run a moment:
    // nothing live, nothing overdue.
    let before = eventually(Duration::from_secs(30), || async {
        let scrape = scrape(issuer_ops).await;
        if scrape.contains("tether_leases_live ") {
            Ok(scrape)
        } else {
            Err(scrape)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        value_of(&before, "tether_leases_live", &[]),
        0.0,
        "{before}"
    );
    assert_eq!(
        value_of(
            &before,
            "tether_lease_revocation_oldest_pending_age_seconds",
            &[]
        ),
        0.0
    );

    // Policy decisions: an allow, a deny, a request that cannot be
    // evaluated, and a caller the table refuses.
    let allow = pdp
        .client()
        .check(hr_request("read", &hr_context(10, None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allow.decision(), Decision::Allow);
    let deny = pdp
        .client()
        .check(hr_request("update_salary", &hr_context(10, None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deny.decision(), Decision::Deny);
    let invalid = pdp
        .client()
        .check(CheckRequest {
            principal: None,
            ..hr_request("read", &hr_context(10, None))
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let refused = pdp
        .client_as("credential-issuer")
        .unwrap()
        .check(hr_request("read", &hr_context(10, None)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // Exchanges: one minted (the session), one refused over HTTP /token,
    // one refused over gRPC.
    let session = auth.session().await.unwrap();
    let bad_grant = auth
        .identity()
        .http()
        .post(auth.identity().token_endpoint())
        .form(&[
            ("grant_type", "password"),
            ("subject_token", auth.user_token()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_grant.status(), 400);
    let junk_actor = "eyJhbGciOiJub25lIn0.junk-actor-token.x";
    let refused_exchange = auth
        .identity()
        .client()
        .exchange(ExchangeRequest {
            subject_token: auth.user_token().to_owned(),
            subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            actor_token: junk_actor.into(),
            actor_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            audience: FACADE_AUDIENCE.into(),
            scope: "hr:read".into(),
            requested_token_type: String::new(),
            authorization_details: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused_exchange.code(), tonic::Code::Unauthenticated);

    // A lease issued, then revoked.
    let issued = issuer
        .client()
        .issue(session.request(IssueRequest {
            profile: "hr-read".into(),
            intent: r#"[{"type":"hr_review","employee":"1042"}]"#.into(),
            action: r#"Action::"read""#.into(),
            resource: r#"Employee::"1042""#.into(),
            policy_version: version.clone(),
            decision_id: "d-1".into(),
            policy_ids: vec!["hr-read-business-hours".into()],
            ..IssueRequest::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let lease = issued.lease.unwrap();
    let (username, password) = match issued.credential.unwrap().kind.unwrap() {
        credential::Kind::Database(d) => (d.username, d.password),
        credential::Kind::Generic(_) => panic!("expected a database credential"),
    };
    // Live, as the registry says.
    eventually(Duration::from_secs(30), || async {
        let scrape = scrape(issuer_ops).await;
        match value_of(&scrape, "tether_leases_live", &[]) {
            1.0 => Ok(()),
            other => Err(other),
        }
    })
    .await
    .unwrap();
    issuer
        .client()
        .revoke_lease(session.request(RevokeLeaseRequest {
            lease_id: lease.lease_id.clone(),
            reason: "done".into(),
        }))
        .await
        .unwrap();
    let after = eventually(Duration::from_secs(30), || async {
        let scrape = scrape(issuer_ops).await;
        if value_of(&scrape, "tether_leases_live", &[]) == 0.0
            && moved(&before, &scrape, "tether_leases_revoked_total", &[]) >= 1.0
        {
            Ok(scrape)
        } else {
            Err(scrape)
        }
    })
    .await
    .unwrap();
    // Both ops ports render the one registry of this process.
    let from_pdp = scrape(pdp_ops).await;

    for after in [&after, &from_pdp] {
        // Decisions by outcome and policy version.
        let decided = |outcome: &str| {
            moved(
                &before,
                after,
                "tether_policy_decisions_total",
                &[("outcome", outcome), ("policy_version", &version)],
            )
        };
        assert_eq!(decided("allow"), 1.0, "{after}");
        assert_eq!(decided("deny"), 1.0, "{after}");
        assert_eq!(decided("error"), 1.0, "{after}");
        assert_eq!(decided("approval_required"), 0.0, "{after}");

        // Calls by RPC and status, the caller table's refusal included.
        assert_eq!(rpc_moved(&before, after, PDP, "Check", "OK"), 2.0);
        assert_eq!(
            rpc_moved(&before, after, PDP, "Check", "INVALID_ARGUMENT"),
            1.0
        );
        assert_eq!(
            rpc_moved(&before, after, PDP, "Check", "PERMISSION_DENIED"),
            1.0
        );
        assert_eq!(
            moved(
                &before,
                after,
                "tether_rpc_refused_total",
                &[("reason", "permission_denied")]
            ),
            1.0
        );
        assert_eq!(rpc_moved(&before, after, ISSUER, "Issue", "OK"), 1.0);
        assert_eq!(rpc_moved(&before, after, ISSUER, "RevokeLease", "OK"), 1.0);
        assert_eq!(rpc_moved(&before, after, IDENTITY, "Exchange", "OK"), 1.0);
        assert_eq!(
            rpc_moved(&before, after, IDENTITY, "Exchange", "UNAUTHENTICATED"),
            1.0
        );

        // Exchanges by outcome, over both transports.
        let exchanged = |outcome: &str| {
            moved(
                &before,
                after,
                "tether_identity_exchanges_total",
                &[("outcome", outcome)],
            )
        };
        assert_eq!(exchanged("minted"), 1.0, "{after}");
        assert_eq!(exchanged("unsupported_grant_type"), 1.0, "{after}");
        assert_eq!(exchanged("invalid_client"), 1.0, "{after}");
        assert_eq!(
            moved(
                &before,
                after,
                "http_server_request_duration_seconds_count",
                &[
                    ("http_request_method", "POST"),
                    ("http_route", "/token"),
                    ("http_response_status_code", "400")
                ]
            ),
            1.0,
            "{after}"
        );

        // Leases: one issued, one revoked, none failed.
        assert_eq!(
            moved(&before, after, "tether_credentials_issued_total", &[]),
            1.0
        );
        assert_eq!(
            moved(&before, after, "tether_leases_revoked_total", &[]),
            1.0
        );
        assert_eq!(
            moved(
                &before,
                after,
                "tether_credential_issue_failures_total",
                &[]
            ),
            0.0
        );
        assert_eq!(
            moved(
                &before,
                after,
                "tether_lease_revocation_failures_total",
                &[]
            ),
            0.0
        );

        // The keys of the IdP and of the identity exchange were fetched.
        assert!(
            value_of(after, "tether_jwks_fetches_total", &[("outcome", "ok")]) >= 2.0,
            "{after}"
        );
        assert!(
            after.contains("# TYPE tether_jwks_staleness_seconds gauge"),
            "{after}"
        );
        assert!(value_of(after, "tether_jwks_staleness_seconds", &[]) < 600.0);

        // Nothing secret or personal is a label or a value.
        for secret in [
            auth.user_token(),
            session.token.as_str(),
            session.sid(),
            junk_actor,
            lease.lease_id.as_str(),
            lease.vault_lease_id.as_str(),
            username.as_str(),
            password.as_str(),
            "alice",
            "hr-assistant",
            r#"Employee::"1042""#,
        ] {
            assert!(!secret.is_empty());
            assert!(
                !after.contains(secret),
                "the scrape contains `{secret}`:\n{after}"
            );
        }
    }
    assert_eq!(
        value_of(
            &after,
            "tether_lease_revocation_oldest_pending_age_seconds",
            &[]
        ),
        0.0
    );

    // The ops ports speak plaintext gRPC health; the main ports do not.
    assert_eq!(health(issuer_ops).await.unwrap(), ServingStatus::Serving);
    assert_eq!(health(pdp_ops).await.unwrap(), ServingStatus::Serving);
    assert!(
        health(issuer.addr()).await.is_err(),
        "the main port answered plaintext"
    );

    // Nothing else on an ops port: another path is 404, a service's RPC
    // and reflection are UNIMPLEMENTED.
    let http = reqwest::Client::new();
    for path in ["/", "/metrics/x", "/token", "/.well-known/jwks.json"] {
        let response = http
            .get(format!("http://{pdp_ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let check_on_ops = tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient::new(
        plaintext(pdp_ops),
    )
    .check(hr_request("read", &hr_context(10, None)))
    .await
    .unwrap_err();
    assert_eq!(check_on_ops.code(), tonic::Code::Unimplemented);
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(plaintext(
            pdp_ops,
        ));
    let listed = reflection
        .server_reflection_info(futures::stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await;
    // A streaming call may only fail at its first message.
    let listed = match listed {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(listed.code(), tonic::Code::Unimplemented, "{listed:?}");

    // The ops port stops with its server.
    pdp.shutdown().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(pdp_ops).await.is_err(),
        "the ops port outlived its server"
    );
    assert_eq!(health(issuer_ops).await.unwrap(), ServingStatus::Serving);
}

/// The services as one binary (see `src/bin/tether-services.rs`).
const BIN: &str = env!("CARGO_BIN_EXE_tether-services");

/// A service process, killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The OTLP path: a real service process (the policy decision point, its
/// binary's own `main`) with `OTEL_EXPORTER_OTLP_ENDPOINT` set pushes its
/// metrics to the in-test receiver, and serves the same counts on its ops
/// port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_process_pushes_its_metrics_over_otlp_and_serves_them_on_its_ops_port() {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    use tether_integration_tests::otlp::{Collector, attribute};

    let (collector, endpoint) = Collector::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    tether_integration_tests::copy_dir(
        &tether_integration_tests::workspace_root().join("examples/hr"),
        &pack,
    )
    .unwrap();
    let link = dir.path().join("tether-policy-decision");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let ops = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = dir.path().join("pdp.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nops_listen = \"{ops}\"\nshutdown_delay_secs = 0\n\
             drain_timeout_secs = 2\n[server.tls]\ninsecure_plaintext = true\n\
             [policy]\ndir = {:?}\nwatch = false\n",
            pack.display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("pdp.log");
    let mut command = std::process::Command::new(&link);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            command.env_remove(name);
        }
    }
    let _pdp = Proc(
        command
            .arg("--config")
            .arg(&config)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
            .env_remove("OTEL_SERVICE_NAME")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let serving = eventually(Duration::from_secs(30), || async {
        match health(ops).await {
            Ok(ServingStatus::Serving) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        serving.is_ok(),
        "{serving:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let allow = tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient::new(
        plaintext(listen),
    )
    .check(hr_request("read", &hr_context(10, None)))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(allow.decision(), Decision::Allow);

    // Over OTLP, from the service's own resource: one allow.
    let allows = || {
        collector
            .metrics()
            .into_iter()
            .filter(|m| {
                m.service == "tether-policy-decision" && m.metric.name == "tether.policy.decisions"
            })
            .filter_map(|m| match m.metric.data {
                Some(Data::Sum(sum)) => Some(sum.data_points),
                _ => None,
            })
            .flatten()
            .filter(|point| {
                attribute(&point.attributes, "outcome").as_deref() == Some("allow")
                    && attribute(&point.attributes, "policy_version").as_deref()
                        == Some(allow.policy_version.as_str())
            })
            .filter_map(|point| match point.value {
                Some(Value::AsInt(n)) => Some(n),
                _ => None,
            })
            .max()
    };
    let exported = eventually(Duration::from_secs(30), || async {
        allows().filter(|n| *n >= 1).ok_or(())
    })
    .await;
    assert_eq!(
        exported,
        Ok(1),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The call itself, too.
    assert!(
        collector
            .metrics()
            .iter()
            .any(|m| m.metric.name == "rpc.server.call.duration"),
        "no RPC duration exported"
    );

    // The same count on the ops port.
    let scraped = scrape(ops).await;
    assert_eq!(
        value_of(
            &scraped,
            "tether_policy_decisions_total",
            &[("outcome", "allow")]
        ),
        1.0,
        "{scraped}"
    );
    assert!(
        scraped.contains("service_name=\"tether-policy-decision\""),
        "{scraped}"
    );
}
