use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Status;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::config::ServerConfig;
use crate::health::Readiness;

#[test]
fn status_codes_have_their_specification_names() {
    assert_eq!(grpc_code_name(0), "OK");
    assert_eq!(grpc_code_name(7), "PERMISSION_DENIED");
    assert_eq!(grpc_code_name(16), "UNAUTHENTICATED");
    assert_eq!(grpc_code_name(17), "UNKNOWN");
    assert_eq!(grpc_code_name(-1), "UNKNOWN");
}

#[test]
fn only_served_methods_and_routes_become_labels() {
    let grpc = |path: &str| {
        let request = http::Request::builder()
            .uri(path)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        match Call::of(&request) {
            Call::Grpc { service, method } => (service, method),
            Call::Http { .. } => panic!("not gRPC"),
        }
    };
    assert_eq!(
        grpc("/tether.policy.v1.PolicyDecision/Check"),
        ("tether.policy.v1.PolicyDecision", "Check")
    );
    assert_eq!(
        grpc("/grpc.health.v1.Health/Watch"),
        ("grpc.health.v1.Health", "Watch")
    );
    // A caller's invented names, in a served service or not: one label.
    for path in [
        "/tether.policy.v1.PolicyDecision/alice-secret",
        "/grpc.health.v1.Health/x",
        "/evil.Service/Method",
        "/",
    ] {
        assert_eq!(grpc(path), (OTHER, OTHER), "{path}");
    }
    let http = |method: &str, path: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        match Call::of(&request) {
            Call::Http { verb, route } => (verb, route),
            Call::Grpc { .. } => panic!("not HTTP"),
        }
    };
    assert_eq!(http("POST", "/token"), ("POST", "/token"));
    assert_eq!(http("GET", "/token?x=1"), ("GET", "/token"));
    assert_eq!(http("GET", "/users/alice"), ("GET", OTHER));
    assert_eq!(http("BREW", "/token"), (OTHER, "/token"));
}

#[test]
fn value_of_matches_name_and_labels_in_any_order() {
    let scrape = "# HELP x_total X.\n# TYPE x_total counter\n\
        x_total{a=\"1\",b=\"2\"} 3\n\
        x_total{a=\"1\",b=\"3\"} 4\n\
        x_total_other{a=\"1\"} 100\n\
        y 7\n";
    assert_eq!(value_of(scrape, "x_total", &[("b", "2"), ("a", "1")]), 3.0);
    assert_eq!(value_of(scrape, "x_total", &[("a", "1")]), 7.0);
    assert_eq!(value_of(scrape, "x_total", &[("a", "2")]), 0.0);
    assert_eq!(value_of(scrape, "y", &[]), 7.0);
}

#[test]
fn instruments_from_the_global_meter_are_rendered_for_prometheus() {
    // Another crate's way: the global meter, by scope name.
    let counter = meter()
        .u64_counter("tether.test.things")
        .with_description("Things.")
        .with_unit("{thing}")
        .build();
    let gauge = opentelemetry::global::meter(SCOPE)
        .f64_gauge("tether.test.age")
        .with_unit("s")
        .build();
    counter.add(2, &[KeyValue::new("outcome", "ok")]);
    counter.add(1, &[KeyValue::new("outcome", "ok")]);
    counter.add(5, &[KeyValue::new("outcome", "refused")]);
    gauge.record(1.5, &[]);
    let scrape = render();
    assert!(
        scrape.contains("# TYPE tether_test_things_total counter"),
        "{scrape}"
    );
    assert_eq!(
        value_of(&scrape, "tether_test_things_total", &[("outcome", "ok")]),
        3.0,
        "{scrape}"
    );
    assert_eq!(
        value_of(
            &scrape,
            "tether_test_things_total",
            &[("outcome", "refused")]
        ),
        5.0
    );
    assert_eq!(value_of(&scrape, "tether_test_age_seconds", &[]), 1.5);
    // The transport's counters are there from the start.
    assert!(scrape.contains("tether_rpc_refused_total"), "{scrape}");
    assert!(
        scrape.contains("tether_tls_handshake_failures_total"),
        "{scrape}"
    );
    // No scope labels: the series are exactly what docs/metrics.md names.
    assert!(!scrape.contains("otel_scope_name"), "{scrape}");
}

/// Polls until `client` reports `want` (the first answers may come before
/// the health loop has run).
async fn until(client: &mut HealthClient<tonic::transport::Channel>, want: Status) {
    for _ in 0..400 {
        if let Ok(answer) = client.check(HealthCheckRequest::default()).await
            && Status::try_from(answer.into_inner().status) == Ok(want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("health never reported {want:?}");
}

async fn health_of(client: &mut HealthClient<tonic::transport::Channel>) -> Status {
    let answer = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    Status::try_from(answer.status).unwrap()
}

/// A plaintext server with an ops port; calls on the main port are
/// measured, the ops port serves health and `/metrics` only.
#[tokio::test]
async fn the_ops_port_serves_health_and_metrics_and_nothing_else() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ops_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config = ServerConfig {
        tls: crate::TlsConfig::plaintext(),
        ops_listen: Some(ops_addr),
        shutdown_delay_secs: 0,
        ..ServerConfig::default()
    };
    let readiness = Readiness::new();
    readiness.set("policy-set", false);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn({
        let readiness = readiness.clone();
        async move {
            crate::server::serve_with_http_and_readiness(
                listener,
                Routes::default(),
                &["tether.policy.v1.PolicyDecision"],
                &config,
                &readiness,
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        }
    });
    let channel = |addr: std::net::SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let mut main_health = HealthClient::new(channel(addr));
    let mut ops_health = HealthClient::new(channel(ops_addr));
    let before = render();
    let checks = |scrape: &str, code: &str| {
        value_of(
            scrape,
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_service", "grpc.health.v1.Health"),
                ("rpc_method", "Check"),
                ("rpc_grpc_status_code", code),
            ],
        )
    };
    // Same statuses on both ports.
    until(&mut ops_health, Status::NotServing).await;
    assert_eq!(health_of(&mut main_health).await, Status::NotServing);
    readiness.set("policy-set", true);
    until(&mut ops_health, Status::Serving).await;
    assert_eq!(health_of(&mut main_health).await, Status::Serving);

    // The main port's two Checks after `before` are counted; the ops
    // port's are not.
    let http = reqwest::Client::new();
    let scrape = http
        .get(format!("http://{ops_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert_eq!(
        scrape.headers()["content-type"].to_str().unwrap(),
        CONTENT_TYPE
    );
    let scrape = scrape.text().await.unwrap();
    assert_eq!(
        checks(&scrape, "OK") - checks(&before, "OK"),
        2.0,
        "{scrape}"
    );

    // An unknown method on the main port: UNIMPLEMENTED, labelled _OTHER.
    let mut grpc = tonic::client::Grpc::new(channel(addr));
    grpc.ready().await.unwrap();
    let refused = grpc
        .unary::<_, (), _>(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/tether.policy.v1.PolicyDecision/Nope"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    let scrape = render();
    assert_eq!(
        value_of(
            &scrape,
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_service", OTHER),
                ("rpc_method", OTHER),
                ("rpc_grpc_status_code", "UNIMPLEMENTED"),
            ],
        ) - value_of(
            &before,
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_service", OTHER),
                ("rpc_method", OTHER),
                ("rpc_grpc_status_code", "UNIMPLEMENTED"),
            ],
        ),
        1.0,
        "{scrape}"
    );
    assert!(!scrape.contains("Nope"), "{scrape}");

    // Nothing else on the ops port: another path is 404, a service RPC is
    // UNIMPLEMENTED, reflection is not there.
    for path in ["/", "/metricsx", "/token", "/.well-known/jwks.json"] {
        let response = http
            .get(format!("http://{ops_addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let mut ops_grpc = tonic::client::Grpc::new(channel(ops_addr));
    for path in [
        "/tether.policy.v1.PolicyDecision/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        ops_grpc.ready().await.unwrap();
        let refused = ops_grpc
            .unary::<_, (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_maybe_shared(path).unwrap(),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{path}");
    }

    // Draining: a call still open on the main port (a health Watch) keeps
    // the server draining; meanwhile the ops port answers NOT_SERVING.
    let mut watch = main_health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(Status::try_from(first.status), Ok(Status::Serving));
    stop.send(()).unwrap();
    until(&mut ops_health, Status::NotServing).await;
    assert!(!served.is_finished(), "the main server is still draining");
    // Once the last call ends, the server stops, and the ops port with it.
    drop(watch);
    served.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(ops_addr).await.is_err(),
        "the ops port still accepts after the server stopped"
    );
}

#[tokio::test]
async fn an_ops_port_that_cannot_be_bound_stops_the_server_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig {
        tls: crate::TlsConfig::plaintext(),
        ops_listen: Some(taken.local_addr().unwrap()),
        ..ServerConfig::default()
    };
    let err = crate::server::serve(listener, Routes::default(), &[], &config, async {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::server::ServeError::OpsBind { .. }),
        "{err}"
    );
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OnlyServer {
    #[serde(default)]
    server: ServerConfig,
}

impl crate::config::ServiceConfig for OnlyServer {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

#[test]
fn the_ops_port_is_optional_set_by_its_variable_and_never_the_main_port() {
    let load = |vars: &[(&str, &str)]| {
        crate::config::load::<OnlyServer>(
            None,
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain([(
                    "TETHER_SERVER__TLS__INSECURE_PLAINTEXT".to_owned(),
                    "true".to_owned(),
                )]),
        )
    };
    assert_eq!(load(&[]).unwrap().server.ops_listen, None);
    let set = load(&[("TETHER_SERVER__OPS_LISTEN", "0.0.0.0:9090")]).unwrap();
    assert_eq!(set.server.ops_listen, Some("0.0.0.0:9090".parse().unwrap()));
    let err = load(&[("TETHER_SERVER__OPS_LISTEN", "not an address")]).unwrap_err();
    assert!(err.to_string().contains("server.ops_listen"), "{err}");
    let err = load(&[
        ("TETHER_SERVER__LISTEN", "127.0.0.1:7000"),
        ("TETHER_SERVER__OPS_LISTEN", "127.0.0.1:7000"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("port of its own"), "{err}");
}
