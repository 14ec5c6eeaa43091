use std::collections::HashMap;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use opentelemetry::trace::TracerProvider as _;
use tonic::service::Interceptor as _;
use tonic_types::{ErrorDetails, StatusExt as _};
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;
use crate::RetryPolicy;

const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

fn agent() -> AgentKey {
    let doc = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    AgentKey::from_pem("hr-assistant", pem.as_bytes()).unwrap()
}

/// A plaintext client for `addr` (nothing listens there in these tests).
fn client(addr: std::net::SocketAddr, retry: RetryPolicy) -> Client {
    let config = ClientConfig::builder(format!("http://{addr}"))
        .insecure_plaintext(true)
        .token_endpoint("https://tether.example/token")
        .call_timeout(Duration::from_secs(3))
        .retry(retry)
        .build()
        .unwrap();
    Client::new(config, agent()).unwrap()
}

/// A loopback port nobody listens on.
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn a_status_keeps_code_reason_metadata_and_retry_info() {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "POLICY_DENIED",
        "tether",
        HashMap::from([
            (
                "policy_ids".to_owned(),
                r#"["no-agent-salary-changes"]"#.to_owned(),
            ),
            ("decision_id".to_owned(), "d-1".to_owned()),
        ]),
    );
    details.set_retry_info(Some(Duration::from_secs(7)));
    let status = tonic::Status::with_error_details(
        Code::PermissionDenied,
        "denied by `no-agent-salary-changes`",
        details,
    );
    let error = Error::from(RpcError::from_status(&status, &[], false));
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(error.reason(), Some("POLICY_DENIED"));
    assert_eq!(error.policy_ids(), ["no-agent-salary-changes"]);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(error.rpc().unwrap().attempts(), 1);
    assert_eq!(
        error
            .rpc()
            .unwrap()
            .metadata()
            .get("decision_id")
            .map(String::as_str),
        Some("d-1")
    );
    assert_eq!(
        error.to_string(),
        "PERMISSION_DENIED (POLICY_DENIED): denied by `no-agent-salary-changes`"
    );
}

#[test]
fn only_tethers_error_info_counts_and_a_missing_one_is_no_reason() {
    let mut details = ErrorDetails::new();
    details.set_error_info("POLICY_DENIED", "example.com", HashMap::new());
    let foreign = tonic::Status::with_error_details(Code::PermissionDenied, "no", details);
    let error = RpcError::from_status(&foreign, &[], false);
    assert_eq!(error.reason(), None);
    assert!(error.metadata().is_empty());
    let bare = RpcError::from_status(
        &tonic::Status::unavailable("connection refused"),
        &[],
        false,
    );
    assert_eq!(
        (bare.code(), bare.reason(), bare.retry_after()),
        (Code::Unavailable, None, None)
    );
    assert_eq!(Error::from(bare).policy_ids(), Vec::<String>::new());
}

#[test]
fn a_client_side_timeout_is_a_deadline_exceeded() {
    // tonic reports its own timer as CANCELLED ("Timeout expired").
    let status = tonic::Status::cancelled("Timeout expired");
    assert_eq!(
        RpcError::from_status(&status, &[], true).code(),
        Code::DeadlineExceeded
    );
    // A cancellation before the deadline stays what it is (and is not
    // retried).
    assert_eq!(
        RpcError::from_status(&status, &[], false).code(),
        Code::Cancelled
    );
}

#[test]
fn messages_never_carry_tokens_or_known_secrets() {
    let secret = "opaque-user-token-1234";
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "TOKEN_INVALID",
        "tether",
        HashMap::from([("echo".to_owned(), format!("Bearer {JWT}"))]),
    );
    let status = tonic::Status::with_error_details(
        Code::Unauthenticated,
        format!("token `{JWT}` and `{secret}` rejected\r\ninjected: line"),
        details,
    );
    let error = Error::from(RpcError::from_status(&status, &[secret], false));
    for text in [
        error.to_string(),
        format!("{error:?}"),
        format!("{error:#?}"),
    ] {
        assert!(!text.contains(JWT), "{text}");
        assert!(!text.contains("eyJ"), "{text}");
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
    // Control characters are escaped: no line of its own in a log.
    let message = error.rpc().unwrap().message();
    assert!(
        !message.contains('\n') && !message.contains('\r'),
        "{message}"
    );
    assert!(!error.to_string().contains('\n'), "{error}");
    // Oversized messages are clipped.
    let long = RpcError::from_status(&tonic::Status::internal("x".repeat(10_000)), &[], false);
    assert!(
        long.message().chars().count() <= 513,
        "{}",
        long.message().len()
    );
}

#[test]
fn traceparents_must_be_w3c() {
    assert!(traceparent_value("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok());
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
    ] {
        let err = traceparent_value(bad).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

/// What the interceptor chain makes of a request built by `core`.
fn intercepted(core: &Core, bearer: Option<&MetadataValue<Ascii>>) -> tonic::Request<()> {
    let request = core.request((), Duration::from_millis(1500), bearer);
    Interceptor(ClientInterceptor::new(MAX_WATCH))
        .call(request)
        .unwrap()
}

#[tokio::test]
async fn every_call_carries_its_deadline_the_bearer_and_an_explicit_traceparent() {
    let client = client(closed_port(), RetryPolicy::never());
    let mut bearer = MetadataValue::try_from(format!("Bearer {JWT}")).unwrap();
    bearer.set_sensitive(true);
    let out = intercepted(&client.core, Some(&bearer));
    let metadata = out.metadata();
    assert_eq!(metadata.get("grpc-timeout").unwrap(), "1500000u");
    let auth = metadata.get("authorization").unwrap();
    assert!(auth.is_sensitive());
    assert_eq!(auth.to_str().unwrap(), format!("Bearer {JWT}"));
    // Without an OpenTelemetry context and without an explicit one: none.
    assert!(metadata.get("traceparent").is_none());

    let traced = client
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .unwrap();
    let out = intercepted(&traced.core, None);
    assert_eq!(
        out.metadata().get("traceparent").unwrap(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(out.metadata().get("authorization").is_none());
}

#[tokio::test]
async fn the_current_opentelemetry_span_is_propagated_unless_one_is_given() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let client = client(closed_port(), RetryPolicy::never());

    let span = tracing::info_span!("agent.task");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    let out = span.in_scope(|| intercepted(&client.core, None));
    let header = out
        .metadata()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(header.starts_with(&format!("00-{trace_id}-")), "{header}");

    // The caller's explicit choice wins over the current span.
    let explicit = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = client.with_traceparent(explicit).unwrap();
    let out = span.in_scope(|| intercepted(&traced.core, None));
    assert_eq!(out.metadata().get("traceparent").unwrap(), explicit);
    assert!(out.metadata().get("tracestate").is_none());
}

#[tokio::test]
async fn an_unreachable_facade_is_retried_a_bounded_number_of_times() {
    let addr = closed_port();
    let retry = RetryPolicy::new(3, Duration::from_millis(1), Duration::from_millis(5));
    let err = client(addr, retry)
        .start_session("user-token", "[]", "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.rpc().unwrap().attempts(), 3, "{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");

    let err = client(addr, RetryPolicy::never())
        .start_session("user-token", "[]", "")
        .await
        .unwrap_err();
    assert_eq!(err.rpc().unwrap().attempts(), 1, "{err}");
}

#[tokio::test]
async fn bad_input_is_refused_before_any_call() {
    let client = client(closed_port(), RetryPolicy::never());
    let err = client.start_session("", "[]", "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.rpc().is_none(), "no call was made: {err:?}");
}

#[test]
fn a_client_needs_a_runtime_and_says_so() {
    let config = ClientConfig::builder("http://127.0.0.1:1")
        .insecure_plaintext(true)
        .token_endpoint("https://tether.example/token")
        .build()
        .unwrap();
    let err = Client::new(config, agent()).unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test]
async fn client_and_session_debug_show_no_secret() {
    let client = client(closed_port(), RetryPolicy::never());
    let session = Session::new(
        client.core.clone(),
        pb::StartSessionResponse {
            session_id: "sid-1".into(),
            delegated_token: JWT.into(),
            token_type: "Bearer".into(),
            user_subject: "alice".into(),
            agent_id: "hr-assistant".into(),
            ..Default::default()
        },
    )
    .unwrap();
    for text in [
        format!("{client:?}"),
        format!("{session:?}"),
        format!("{session:#?}"),
    ] {
        assert!(!text.contains("eyJ"), "{text}");
        assert!(!text.contains("BEGIN"), "{text}");
    }
    assert!(format!("{session:?}").contains("sid-1"));
    // A token that cannot be a header is refused, and not echoed.
    let err = Session::new(
        client.core.clone(),
        pb::StartSessionResponse {
            session_id: "sid-2".into(),
            delegated_token: "eyJ\nbad".into(),
            token_type: "Bearer".into(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(!err.to_string().contains("eyJ"), "{err}");
}
