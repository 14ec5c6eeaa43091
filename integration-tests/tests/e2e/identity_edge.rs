//! The identity exchange at its edges: what reaches the text logs, what
//! the transports refuse before a handler runs, what `/token` advertises
//! and refuses, and a SPIRE key rotation without a restart. The real
//! service on loopback (HTTP and gRPC over mTLS), the test IdP, SQLite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tether_integration_tests::eventually;
use tether_integration_tests::identity::{
    CLIENT_ASSERTION_TYPE, FACADE_AUDIENCE, IdentitySandbox, TestAgent,
};
use tether_integration_tests::idp::Idp;
use tether_proto::identity::v1::ExchangeRequest;
use tether_token::SigningKey;
use tonic::Code;

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const INTENT: &str = r#"[{"type":"hr_record_access","actions":["read"]}]"#;

/// A log line an attacker would like to see: it looks like the service's.
const FORGED: &str = "2026-12-06T05:00:00.000000Z  INFO tether: forged: admin session approved";

/// The line breaks a log reader may split on: LF, CR, NEL, LINE SEPARATOR,
/// PARAGRAPH SEPARATOR, and the vertical tab and form feed.
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{b}' | '\u{c}'
    )
}

async fn alice(idp: &Idp) -> String {
    idp.login("alice", &["openid", "profile", "hr:read"])
        .await
        .unwrap()
        .access_token
}

/// A token-exchange form of `subject` by `actor` for the facade.
fn exchange_form(subject: &str, actor: &str) -> Vec<(String, String)> {
    [
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS),
        ("actor_token", actor),
        ("actor_token_type", JWT),
        ("audience", FACADE_AUDIENCE),
        ("scope", "hr:read"),
        ("authorization_details", INTENT),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn exchange_request(subject: &str, actor: String) -> ExchangeRequest {
    ExchangeRequest {
        subject_token: subject.into(),
        subject_token_type: ACCESS.into(),
        actor_token: actor,
        actor_token_type: JWT.into(),
        audience: FACADE_AUDIENCE.into(),
        scope: "hr:read".into(),
        authorization_details: INTENT.into(),
        ..ExchangeRequest::default()
    }
}

/// Checks an RFC 6749 §5.2 error body and its headers.
async fn assert_oauth_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "{response:?}");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    let description = body["error_description"].as_str().unwrap().to_owned();
    assert!(!description.is_empty(), "{body}");
    description
}

#[tokio::test]
async fn caller_text_cannot_forge_a_line_in_the_text_logs() {
    let capture = tether_integration_tests::logs::capture_text();
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .start()
        .await
        .unwrap();
    let user = alice(&idp).await;
    let actor = agent.assertion(&identity.token_endpoint()).unwrap();

    // Over HTTP: a `subject_token_type` the refusal echoes, with each
    // break a log reader might split on, followed by a line that looks
    // like the service's.
    for br in ["\u{2028}", "\n", "\r", "\u{85}", "\x1b[2K\r", "\u{2029}"] {
        let mut form = exchange_form(&user, &actor);
        form[2].1 = format!("x{br}{FORGED}");
        let response = identity
            .http()
            .post(identity.token_endpoint())
            .form(&form)
            .send()
            .await
            .unwrap();
        let description = assert_oauth_error(response, 400, "invalid_request").await;
        assert!(description.contains("subject_token_type"), "{description}");
    }

    // Over gRPC: a subject token whose `iss` the refusal echoes.
    let hostile = format!("x\u{2028}{FORGED}");
    let forged_issuer = SigningKey::generate().unwrap();
    let subject = forged_issuer
        .sign_raw(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": forged_issuer.kid()}),
            &json!({"iss": hostile, "sub": "alice", "aud": "x", "exp": 4_000_000_000_u64}),
        )
        .unwrap();
    let err = identity
        .client()
        .exchange(exchange_request(&subject, actor))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(
        err.message().contains("is not trusted"),
        "{}",
        err.message()
    );

    let logs = capture.text();
    assert!(
        logs.matches("exchange refused").count() >= 7,
        "every refusal was logged: {logs}"
    );
    // The values reached the log, escaped …
    assert!(logs.contains(r"x\u{2028}2026-12-06T05:00:00"), "{logs}");
    // … and no line, whatever a reader splits on, is the forged one.
    for line in logs.split(is_line_break) {
        assert!(
            !line.starts_with("2026-12-06T05:00:00.000000Z"),
            "a forged line: {line:?}"
        );
        assert!(!line.contains('\x1b'), "a terminal escape: {line:?}");
    }
}

#[tokio::test]
async fn transport_refusals_at_the_oauth_endpoints_are_oauth_errors() {
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .start()
        .await
        .unwrap();
    let user = alice(&idp).await;
    let http = identity.http();
    let url = |path: &str| format!("{}{path}", identity.issuer());
    // One assertion for every refused request: refusals consume nothing.
    let actor = agent.assertion(&identity.token_endpoint()).unwrap();
    let form = exchange_form(&user, &actor);
    let encoded = serde_urlencoded_form(&form);

    for path in ["/token", "/introspect", "/revoke"] {
        // A body over 64 KiB: 413, whether the form is otherwise valid.
        let oversized = format!("{encoded}&pad={}", "a".repeat(64 * 1024));
        let response = http
            .post(url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(oversized)
            .send()
            .await
            .unwrap();
        let description = assert_oauth_error(response, 413, "invalid_request").await;
        assert!(description.contains("65536 bytes"), "{path}: {description}");

        // The same form as JSON, and with no content type: 415.
        for content_type in [Some("application/json"), Some("text/plain"), None] {
            let mut request = http.post(url(path)).body(encoded.clone());
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.unwrap();
            let description = assert_oauth_error(response, 415, "invalid_request").await;
            assert!(
                description.contains("application/x-www-form-urlencoded"),
                "{path} {content_type:?}: {description}"
            );
        }

        // Another method: 405, `Allow: POST`.
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let response = http
                .request(method.clone(), format!("{}?{encoded}", url(path)))
                .send()
                .await
                .unwrap();
            let allow = response.headers()["allow"].to_str().unwrap().to_owned();
            assert!(allow.contains("POST"), "{path} {method}: {allow}");
            let description = assert_oauth_error(response, 405, "invalid_request").await;
            assert_eq!(description, format!("`{path}` accepts only POST"));
        }
    }
    // The endpoints that are not OAuth's keep their own answers.
    let metadata = http
        .get(url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200);

    // gRPC: a request message over `server.max_message_bytes` (4 MiB).
    let mut client = identity.client();
    let mut huge = exchange_request(&user, actor.clone());
    huge.authorization_details = "x".repeat(4 * 1024 * 1024 + 1);
    let err = client.exchange(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("the limit is 4194304 bytes"),
        "{}",
        err.message()
    );

    // Nothing was minted, and the assertion was never consumed: the
    // same one works now, over each transport once.
    assert_eq!(identity.session_count().await.unwrap(), 0);
    let response = http.post(url("/token")).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let minted = client
        .exchange(exchange_request(
            &user,
            agent.assertion(&identity.token_endpoint()).unwrap(),
        ))
        .await;
    assert!(minted.is_ok(), "{minted:?}");
    assert_eq!(identity.session_count().await.unwrap(), 2);
}

/// `application/x-www-form-urlencoded` for `form` (what reqwest's `.form`
/// sends), to build bodies by hand.
fn serde_urlencoded_form(form: &[(String, String)]) -> String {
    reqwest::Url::parse_with_params("http://x/", form)
        .unwrap()
        .query()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn token_advertises_and_accepts_no_client_authentication() {
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .start()
        .await
        .unwrap();
    let http = identity.http();
    let metadata: Value = http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            identity.issuer()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert!(
        metadata
            .get("token_endpoint_auth_signing_alg_values_supported")
            .is_none(),
        "{metadata}"
    );
    for endpoint in ["introspection", "revocation"] {
        assert_eq!(
            metadata[format!("{endpoint}_endpoint_auth_methods_supported")],
            json!(["private_key_jwt", "tls_client_auth"])
        );
    }

    let user = alice(&idp).await;
    let actor = agent.assertion(&identity.token_endpoint()).unwrap();
    let form = exchange_form(&user, &actor);
    let with = |extra: &[(&str, String)]| {
        let mut form = form.clone();
        form.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        form
    };
    // The agent's own valid assertion as `client_assertion`, the way a
    // `private_key_jwt` client would send it; and the other methods.
    let assertion = agent.assertion(&identity.token_endpoint()).unwrap();
    let refused: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "`client_assertion`",
            http.post(identity.token_endpoint()).form(&with(&[
                ("client_assertion_type", CLIENT_ASSERTION_TYPE.into()),
                ("client_assertion", assertion.clone()),
            ])),
        ),
        (
            "`client_assertion_type`",
            http.post(identity.token_endpoint()).form(&with(&[(
                "client_assertion_type",
                CLIENT_ASSERTION_TYPE.into(),
            )])),
        ),
        (
            "`client_assertion`",
            http.post(identity.token_endpoint())
                .form(&with(&[("client_assertion", assertion.clone())])),
        ),
        (
            "`client_secret`",
            http.post(identity.token_endpoint())
                .form(&with(&[("client_secret", "s3cret".into())])),
        ),
        (
            "an `Authorization` header",
            http.post(identity.token_endpoint())
                .basic_auth("hr-assistant", Some("s3cret"))
                .form(&form),
        ),
    ];
    for (what, request) in refused {
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="tether", error="invalid_client""#
        );
        let description = assert_oauth_error(response, 401, "invalid_client").await;
        assert!(
            description.contains(&format!("({what} given)")),
            "{what}: {description}"
        );
    }
    // Nothing minted, nothing consumed: the same actor token works now.
    assert_eq!(identity.session_count().await.unwrap(), 0);
    let response = http
        .post(identity.token_endpoint())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(identity.session_count().await.unwrap(), 1);
}

/// Writes `keys` as the bundle the way SPIRE's helpers do: a new file
/// renamed over the old one.
fn write_bundle(path: &Path, keys: &[&SigningKey]) {
    let jwks: Vec<Value> = keys
        .iter()
        .flat_map(|k| {
            serde_json::to_value(k.jwks()).unwrap()["keys"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    write_raw(
        path,
        &json!({"keys": jwks, "spiffe_sequence": 2}).to_string(),
    );
}

fn write_raw(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_spire_key_rotation_needs_no_restart() {
    let capture = tether_integration_tests::logs::capture_text();
    let idp = Idp::start().await.unwrap();
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .spiffe_bundle("example.org", &a)
        .spiffe_agent(
            "summarizer",
            "spiffe://example.org/agents/summarizer",
            &["hr:read"],
            &["hr"],
        )
        .start()
        .await
        .unwrap();
    let bundle = identity.spiffe_bundle_path().unwrap().to_owned();
    let user = alice(&idp).await;
    let now = tether_token::unix_now();
    let svid = |key: &SigningKey| {
        key.sign_raw(
            &json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()}),
            &json!({
                "iss": "https://spire.example.org",
                "sub": "spiffe://example.org/agents/summarizer",
                "aud": [identity.token_endpoint()],
                "iat": now, "exp": now + 300,
            }),
        )
        .unwrap()
    };
    let client = identity.client();
    let exchange = |actor: String| {
        let mut client = client.clone();
        let request = exchange_request(&user, actor);
        async move { client.exchange(request).await }
    };
    let refused = |result: Result<tonic::Response<_>, tonic::Status>, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{what}: {}",
            err.message()
        );
    };

    exchange(svid(&a)).await.unwrap();
    refused(exchange(svid(&b)).await, "B before the rotation");

    // SPIRE rotates: the bundle now holds B only. An SVID signed by B is
    // accepted without a restart …
    write_bundle(&bundle, &[&b]);
    eventually(Duration::from_secs(15), || exchange(svid(&b)))
        .await
        .expect("an SVID signed by the new key is accepted");
    // … and one signed by the withdrawn key A is refused.
    refused(exchange(svid(&a)).await, "A after the rotation");

    // A broken bundle keeps the last good keys (B) and is logged; an SVID
    // naming a key nobody published (C) makes the service look at the file
    // and is still refused.
    let c = SigningKey::generate().unwrap();
    write_raw(&bundle, "{\"keys\": [");
    eventually(Duration::from_secs(15), || {
        let attempt = exchange(svid(&c));
        let capture = capture.clone();
        async move {
            refused(attempt.await, "C, never published");
            if capture.text().contains("SPIFFE trust bundle not reloaded") {
                Ok(())
            } else {
                Err(())
            }
        }
    })
    .await
    .expect("the broken bundle was read and refused");
    exchange(svid(&b)).await.unwrap();
    refused(exchange(svid(&a)).await, "A with a broken bundle");
    // So does one without JWT authorities: the withdrawn key A published
    // as an X.509 authority verifies no JWT-SVID.
    let mut a_as_x509 = serde_json::to_value(a.jwks()).unwrap()["keys"][0].clone();
    a_as_x509["use"] = json!("x509-svid");
    write_raw(&bundle, &json!({"keys": [a_as_x509]}).to_string());
    let logs_before = capture
        .text()
        .matches("SPIFFE trust bundle not reloaded")
        .count();
    eventually(Duration::from_secs(15), || {
        let attempt = exchange(svid(&c));
        let capture = capture.clone();
        async move {
            refused(attempt.await, "C, never published");
            let now = capture
                .text()
                .matches("SPIFFE trust bundle not reloaded")
                .count();
            if now > logs_before { Ok(()) } else { Err(()) }
        }
    })
    .await
    .expect("the X.509-only bundle was read and refused");
    exchange(svid(&b)).await.unwrap();
    refused(exchange(svid(&a)).await, "A as an X.509 authority");
    assert!(
        capture.text().contains("SPIFFE trust bundle reloaded"),
        "the rotation was logged"
    );
}
