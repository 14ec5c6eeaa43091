//! No token ever reaches a log line or span: every exchange path runs with
//! TRACE logging captured, and the capture is searched for the tokens.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use tether_integration_tests::identity::{FACADE_AUDIENCE, IdentitySandbox, TestAgent};
use tether_integration_tests::idp::Idp;
use tether_proto::identity::v1::{ExchangeRequest, IntrospectRequest, RevokeSessionRequest};

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let capture = tether_integration_tests::logs::capture_trace();

    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let other = TestAgent::new("report-writer").unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .agent(&other, &["hr:read"], &["hr"])
        .oauth_rate_limit(60, 6)
        .start()
        .await
        .unwrap();
    let login = idp
        .login("alice", &["openid", "profile", "hr:read"])
        .await
        .unwrap();
    let mut secrets = vec![login.access_token.clone(), login.id_token.clone()];
    let mut client = identity.client();
    let request = |subject: &str, actor: String, scope: &str| ExchangeRequest {
        subject_token: subject.into(),
        subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        actor_token: actor,
        actor_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
        audience: FACADE_AUDIENCE.into(),
        scope: scope.into(),
        requested_token_type: String::new(),
        authorization_details: r#"[{"type":"hr_record_access"}]"#.into(),
    };

    let actor = agent.assertion(&identity.token_endpoint()).unwrap();
    secrets.push(actor.clone());
    let minted = client
        .exchange(request(&login.access_token, actor, "hr:read"))
        .await
        .unwrap()
        .into_inner();
    secrets.push(minted.access_token.clone());

    // Failures of every kind, each carrying tokens.
    let replay = secrets[2].clone();
    let _ = client
        .exchange(request(&login.access_token, replay, "hr:read"))
        .await
        .unwrap_err();
    let actor = agent.assertion(&identity.token_endpoint()).unwrap();
    secrets.push(actor.clone());
    let _ = client
        .exchange(request(&login.access_token, actor, "hr:write"))
        .await
        .unwrap_err();
    let tampered = format!("{}x", login.access_token);
    let actor = agent.assertion(&identity.token_endpoint()).unwrap();
    secrets.push(actor.clone());
    let _ = client
        .exchange(request(&tampered, actor, "hr:read"))
        .await
        .unwrap_err();
    client
        .introspect(IntrospectRequest {
            token: minted.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();

    // The HTTP endpoints with client authentication: accepted, refused
    // (replay, another agent's token, no authentication) and rate-limited.
    let http = identity.http();
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        let request = http
            .post(format!("{}{path}", identity.issuer()))
            .form(&form);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let with_auth = |who: &TestAgent, path: &str, secrets: &mut Vec<String>| {
        let mut form: Vec<(&'static str, String)> = who
            .client_auth(&format!("{}{path}", identity.issuer()))
            .unwrap()
            .into();
        secrets.push(form[1].1.clone());
        form.push(("token", minted.access_token.clone()));
        form
    };
    let form = with_auth(&agent, "/introspect", &mut secrets);
    assert_eq!(post("/introspect", form.clone()).await, 200);
    assert_eq!(post("/introspect", form).await, 401, "replayed assertion");
    let form = with_auth(&other, "/introspect", &mut secrets);
    assert_eq!(post("/introspect", form).await, 200);
    let form = with_auth(&other, "/revoke", &mut secrets);
    assert_eq!(post("/revoke", form).await, 200);
    let anonymous = vec![("token", minted.access_token.clone())];
    for _ in 0..8 {
        let status = post("/revoke", anonymous.clone()).await;
        assert!(status == 401 || status == 429, "{status}");
    }
    assert_eq!(post("/revoke", anonymous).await, 429);

    client
        .revoke_session(RevokeSessionRequest {
            sid: minted.sid.clone(),
            reason: "done".into(),
        })
        .await
        .unwrap();

    let logs = capture.text();
    assert!(logs.contains("delegated token minted"), "the capture works");
    assert!(
        logs.contains("client authentication refused")
            && logs.contains("introspection of another agent's token answered inactive")
            && logs.contains("revocation of another agent's token refused")
            && logs.contains("rate limit reached"),
        "the new paths ran and logged"
    );
    assert!(logs.contains(&minted.sid), "session ids are logged");
    for secret in &secrets {
        // Any 24-character window of a token's signature or payload would do;
        // the last 24 characters are from its signature.
        let tail = &secret[secret.len() - 24..];
        assert!(
            !logs.contains(tail),
            "a token's signature appeared in the logs"
        );
        let payload = secret.split('.').nth(1).unwrap();
        assert!(
            !logs.contains(payload),
            "a token's payload appeared in the logs"
        );
    }
}
