//! The CIBA client of the approval orchestrator against the real test IdP
//! (`integration-tests/idp`, oidc-provider), which plays the user's device
//! through its test endpoints.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine as _;
use serde_json::{Value, json};
use tether_ciba_orchestrator::ciba::{
    AuthenticationRequest, CibaClient, CibaConfig, CibaError, DeliveryMode, ExpiredBy,
    NotificationTokenHash, Outcome, PendingRequest, Sentence, Started, bearer_token,
};
use tether_integration_tests::eventually;
use tether_integration_tests::idp::Idp;
use tether_token::SigningKey;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";

/// A test IdP that sends `interval: 1` (so polling tests take seconds), with
/// the default clients plus `extra`.
async fn fast_idp(extra: Vec<Value>) -> Idp {
    let mut clients = Idp::default_clients().unwrap();
    clients.extend(extra);
    Idp::start_with_config(json!({ "cibaInterval": 1, "clients": clients }))
        .await
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(idp: &Idp, client_id: &str, client_auth: Value, extra: Value) -> CibaConfig {
    let mut config = json!({
        "issuer": idp.issuer(),
        "client_id": client_id,
        "client_auth": client_auth,
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    serde_json::from_value(config).unwrap()
}

fn secret_auth(dir: &Path, secret: &str) -> Value {
    let file = write(dir, &format!("secret-{}", uuid::Uuid::new_v4()), secret);
    json!({ "method": "client_secret_basic", "secret_file": file })
}

/// The poll client `tether-ciba` with its secret.
fn poll_client(idp: &Idp, dir: &Path, extra: Value) -> CibaClient {
    let auth = secret_auth(dir, "tether-ciba-secret\n");
    CibaClient::new(&config(idp, "tether-ciba", auth, extra)).unwrap()
}

/// A `private_key_jwt` client registration for `keys`.
fn jwt_client_metadata(client_id: &str, keys: &[&SigningKey]) -> Value {
    let jwks: Vec<Value> = keys
        .iter()
        .map(|k| serde_json::to_value(k.public_jwk()).unwrap())
        .collect();
    json!({
        "client_id": client_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks": { "keys": jwks },
        "grant_types": [CIBA_GRANT],
        "response_types": [],
        "redirect_uris": [],
        "backchannel_token_delivery_mode": "poll",
    })
}

async fn start(client: &CibaClient, user: &str, sentence: &str, expiry: Option<u64>) -> Started {
    let message = client.binding_message(Sentence::Policy(sentence)).unwrap();
    client
        .start(&AuthenticationRequest {
            user,
            binding_message: &message,
            requested_expiry: expiry.map(Duration::from_secs),
        })
        .await
        .unwrap()
}

/// The IdP's record of how a request was polled: `(at_ms, result)`.
async fn polls(idp: &Idp, pending: &PendingRequest) -> Vec<(i64, String)> {
    let record = idp
        .ciba_request(pending.auth_req_id.as_str())
        .await
        .unwrap();
    record["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["at_ms"].as_i64().unwrap(),
                p["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until the IdP has seen `n` polls of the request.
async fn polled(idp: &Idp, pending: &PendingRequest, n: usize) {
    eventually(Duration::from_secs(20), || async {
        let seen = polls(idp, pending).await.len();
        if seen >= n {
            Ok(())
        } else {
            bail!("{seen} polls so far")
        }
    })
    .await
    .unwrap();
}

/// Gaps between consecutive polls, in ms. The IdP stamps arrivals with
/// `Date.now()` (whole ms), hence the 1 ms allowance where they are checked.
fn gaps(polls: &[(i64, String)]) -> Vec<i64> {
    polls.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[tokio::test]
async fn approves_by_poll_with_client_secret_basic() {
    let idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    assert_eq!(client.delivery_mode(), DeliveryMode::Poll);
    let message = client
        .binding_message(Sentence::Policy("Offboard employee 1042?"))
        .unwrap();
    let started = client
        .start(&AuthenticationRequest {
            user: "alice",
            binding_message: &message,
            requested_expiry: None,
        })
        .await
        .unwrap();
    assert!(started.notification_token.is_none(), "poll mode");
    assert_eq!(started.pending.state.interval, Duration::from_secs(1));
    assert_eq!(started.expires_in, Duration::from_secs(300), "the default");

    // The device shows exactly the message, with the code the agent shows.
    let id = started.pending.auth_req_id.as_str().to_owned();
    let device = idp.ciba_request(&id).await.unwrap();
    assert_eq!(device["binding_message"], message.text());
    assert_eq!(
        message.text(),
        format!("Offboard employee 1042? Code: {}", message.code())
    );
    assert_eq!(device["login_hint"], "alice");
    assert_eq!(device["scope"], "openid");
    assert_eq!(device["client_id"], "tether-ciba");

    let pending = started.pending.clone();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait(started.pending).await }
    });
    polled(&idp, &pending, 2).await;
    idp.ciba_device(&id, "approve", json!({})).await.unwrap();
    let outcome = waiting.await.unwrap();
    assert!(outcome.is_approved(), "{outcome:?}");
    assert_eq!(outcome.approver(), Some("alice"));

    let polls = polls(&idp, &pending).await;
    assert_eq!(polls.last().unwrap().1, "tokens");
    assert!(
        polls[..polls.len() - 1]
            .iter()
            .all(|(_, r)| r == "authorization_pending")
    );
    assert!(
        gaps(&polls).iter().all(|g| *g >= 1000 - 1),
        "never faster than the 1 s interval: {polls:?}"
    );
}

#[tokio::test]
async fn private_key_jwt_works_with_pem_and_jwk_keys() {
    let pem_key = SigningKey::generate().unwrap();
    let jwk_key = SigningKey::generate().unwrap();
    let idp = fast_idp(vec![jwt_client_metadata(
        "tether-ciba-jwt",
        &[&pem_key, &jwk_key],
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pem_file = dir.path().join("client.pem");
    pem_key.save(&pem_file).unwrap();
    let jwk_file = write(
        dir.path(),
        "client.jwk.json",
        &jwk_key.private_jwk().unwrap().to_string(),
    );

    for (key_file, user) in [(&pem_file, "alice"), (&jwk_file, "carol")] {
        let auth = json!({ "method": "private_key_jwt", "key_file": key_file });
        let client = CibaClient::new(&config(&idp, "tether-ciba-jwt", auth, Value::Null)).unwrap();
        // Two requests: each assertion has a fresh `jti` (the IdP refuses a
        // replayed one).
        let first = start(&client, user, "Export the Q3 payroll?", None).await;
        let second = start(&client, user, "Export the Q4 payroll?", None).await;
        idp.ciba_device(first.pending.auth_req_id.as_str(), "approve", json!({}))
            .await
            .unwrap();
        let outcome = client.wait(first.pending).await;
        assert_eq!(outcome.approver(), Some(user), "{outcome:?}");
        idp.ciba_device(second.pending.auth_req_id.as_str(), "deny", json!({}))
            .await
            .unwrap();
        assert!(matches!(
            client.wait(second.pending).await,
            Outcome::Denied { .. }
        ));
    }

    // A key the IdP does not know for this client is refused, not retried.
    let stranger = SigningKey::generate().unwrap();
    let stranger_file = dir.path().join("stranger.pem");
    stranger.save(&stranger_file).unwrap();
    let auth = json!({ "method": "private_key_jwt", "key_file": stranger_file });
    let client = CibaClient::new(&config(&idp, "tether-ciba-jwt", auth, Value::Null)).unwrap();
    let message = client.binding_message(Sentence::Policy("x")).unwrap();
    let error = client
        .start(&AuthenticationRequest {
            user: "alice",
            binding_message: &message,
            requested_expiry: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CibaError::Refused { error, .. } if error == "invalid_client"),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn denial_is_terminal_with_the_users_reason() {
    let idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    let started = start(&client, "alice", "Delete payroll for March?", None).await;
    let pending = started.pending.clone();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait(started.pending).await }
    });
    polled(&idp, &pending, 1).await;
    idp.ciba_device(
        pending.auth_req_id.as_str(),
        "deny",
        json!({ "error_description": "Alice said no" }),
    )
    .await
    .unwrap();
    let outcome = waiting.await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Denied {
            description: Some("Alice said no".into())
        }
    );
    assert!(!outcome.is_approved());
    let polls = polls(&idp, &pending).await;
    assert_eq!(
        polls.last().unwrap().1,
        "access_denied",
        "no poll after the terminal answer"
    );
}

#[tokio::test]
async fn no_answer_expires_on_the_own_deadline() {
    // No `interval` from this IdP: the client waits the spec's 5 s before
    // its first poll, longer than the 2 s the user was given. The deadline
    // ends the request without the IdP ever saying so.
    let idp = Idp::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    let started = start(
        &client,
        "alice",
        "Rotate the HR database password?",
        Some(2),
    )
    .await;
    assert_eq!(started.expires_in, Duration::from_secs(2));
    assert_eq!(started.pending.state.interval, Duration::from_secs(5));
    let mut pending = started.pending;
    let began = Instant::now();
    let outcome = client.wait(pending.clone()).await;
    assert_eq!(outcome, Outcome::Expired(ExpiredBy::Deadline));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "ended at the deadline, before the first poll was due"
    );
    assert!(
        polls(&idp, &pending).await.is_empty(),
        "the IdP was never asked"
    );
    // Resuming an expired request does not contact the IdP either.
    assert_eq!(
        client.poll_once(&mut pending).await.unwrap(),
        Some(Outcome::Expired(ExpiredBy::Deadline))
    );
    assert!(polls(&idp, &pending).await.is_empty());
}

#[tokio::test]
async fn slow_down_adds_five_seconds_for_the_rest_of_the_request() {
    let idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    let started = start(&client, "alice", "Offboard employee 1042?", None).await;
    let mut pending = started.pending;
    let id = pending.auth_req_id.as_str().to_owned();
    idp.ciba_device(&id, "slow-down", json!({ "count": 1 }))
        .await
        .unwrap();

    assert_eq!(client.poll_once(&mut pending).await.unwrap(), None);
    assert_eq!(pending.state.interval, Duration::from_secs(6), "1 s + 5 s");
    assert_eq!(client.poll_once(&mut pending).await.unwrap(), None);
    assert_eq!(pending.state.interval, Duration::from_secs(6), "kept");
    idp.ciba_device(&id, "approve", json!({})).await.unwrap();
    let outcome = client.poll_once(&mut pending).await.unwrap().unwrap();
    assert_eq!(outcome.approver(), Some("alice"));

    let polls = polls(&idp, &pending).await;
    let results: Vec<&str> = polls.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(results, ["slow_down", "authorization_pending", "tokens"]);
    let gaps = gaps(&polls);
    assert!(
        gaps.iter().all(|g| *g >= 6000 - 1),
        "6 s between polls after slow_down, to the end: {gaps:?}"
    );
}

#[tokio::test]
async fn approval_with_another_account_is_not_an_approval() {
    let idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    let started = start(&client, "alice", "Offboard employee 1042?", None).await;
    let device = idp
        .ciba_device(
            started.pending.auth_req_id.as_str(),
            "approve",
            json!({ "account": "bob" }),
        )
        .await
        .unwrap();
    assert_eq!(device["approved_by"], "bob");
    let outcome = client.wait(started.pending).await;
    assert_eq!(
        outcome,
        Outcome::ApprovedByOtherUser {
            approver: "bob".into()
        }
    );
    assert!(!outcome.is_approved());
    assert_eq!(outcome.approver(), None);
}

#[tokio::test]
async fn unreachable_idp_is_a_retryable_error_never_an_approval() {
    // Down before discovery.
    let mut idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    idp.stop().await.unwrap();
    let message = client.binding_message(Sentence::Policy("x")).unwrap();
    let error = client
        .start(&AuthenticationRequest {
            user: "alice",
            binding_message: &message,
            requested_expiry: None,
        })
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(matches!(error, CibaError::Unavailable(_)));

    // Down while a request is pending.
    let mut idp = fast_idp(vec![]).await;
    let client = poll_client(&idp, dir.path(), Value::Null);
    let started = start(&client, "alice", "Offboard employee 1042?", Some(3)).await;
    let mut pending = started.pending;
    idp.stop().await.unwrap();
    let before = pending.state;
    let error = client.poll_once(&mut pending).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(pending.state.next_poll_at > before.next_poll_at, "moved on");
    assert_eq!(pending.state.interval, before.interval);
    // Retried at the interval until the deadline: expired, never approved.
    assert_eq!(
        client.wait(pending).await,
        Outcome::Expired(ExpiredBy::Deadline)
    );
}

#[tokio::test]
async fn idp_refusals_are_not_retryable_and_nothing_reaches_the_device() {
    let idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = poll_client(&idp, dir.path(), Value::Null);
    let message = client.binding_message(Sentence::Policy("x")).unwrap();
    let request = |user| AuthenticationRequest {
        user,
        binding_message: &message,
        requested_expiry: None,
    };
    let error = client.start(&request("mallory")).await.unwrap_err();
    assert!(
        matches!(&error, CibaError::Refused { error, .. } if error == "unknown_user_id"),
        "{error:?}"
    );
    assert!(!error.is_retryable());

    let wrong = CibaClient::new(&config(
        &idp,
        "tether-ciba",
        secret_auth(dir.path(), "not-the-secret"),
        Value::Null,
    ))
    .unwrap();
    let error = wrong.start(&request("alice")).await.unwrap_err();
    assert!(
        matches!(&error, CibaError::Refused { error, .. } if error == "invalid_client"),
        "{error:?}"
    );

    let error = client.start(&request("")).await.unwrap_err();
    assert!(matches!(error, CibaError::InvalidRequest(_)));
    let error = client
        .start(&AuthenticationRequest {
            requested_expiry: Some(Duration::from_millis(500)),
            ..request("alice")
        })
        .await
        .unwrap_err();
    assert!(matches!(error, CibaError::InvalidRequest(_)));

    let pending: Vec<Value> = reqwest::get(format!("{}/test/ciba/pending?all=1", idp.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        pending.is_empty(),
        "no request reached the device: {pending:?}"
    );
}

#[tokio::test]
async fn push_mode_and_scope_without_openid_are_refused_at_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let auth = secret_auth(dir.path(), "s");
    let base =
        json!({ "issuer": "http://127.0.0.1:1", "client_id": "tether-ciba", "client_auth": auth });
    let refused = |extra: Value| {
        let mut config = base.clone();
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let config: CibaConfig = serde_json::from_value(config).unwrap();
        let validated = config.validate().unwrap_err().to_string();
        let error = CibaClient::new(&config).unwrap_err();
        assert!(matches!(error, CibaError::Config(_)));
        assert_eq!(error.to_string(), validated);
        validated
    };
    let push = refused(json!({ "delivery_mode": "push" }));
    assert!(
        push.contains("`push` is not supported") && push.contains("FAPI-CIBA forbids push mode"),
        "{push}"
    );
    let scope = refused(json!({ "scope": "profile hr:offboard" }));
    assert!(scope.contains("must contain `openid`"), "{scope}");
    let ping = refused(json!({ "delivery_mode": "ping" }));
    assert!(ping.contains("notification_endpoint"), "{ping}");
    let missing = CibaClient::new(&config_without_idp(json!({
        "method": "client_secret_basic",
        "secret_file": dir.path().join("absent"),
    })))
    .unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}

fn config_without_idp(auth: Value) -> CibaConfig {
    serde_json::from_value(json!({
        "issuer": "http://127.0.0.1:1",
        "client_id": "tether-ciba",
        "client_auth": auth,
    }))
    .unwrap()
}

/// A one-shot HTTP listener standing in for the orchestrator's ping
/// endpoint: returns the `Authorization` header and body of the first
/// request.
async fn ping_listener() -> (String, tokio::task::JoinHandle<(String, String)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ciba/notify", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body) = loop {
            let n = socket.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break (head.to_owned(), body.to_owned());
                }
            }
            assert!(n > 0, "connection closed early");
        };
        socket
            .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let authorization = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("authorization")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        (authorization, body)
    });
    (url, task)
}

#[tokio::test]
async fn ping_mode_sends_a_fresh_notification_token_the_idp_presents_back() {
    let idp = fast_idp(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = ping_listener().await;
    let set: Value = reqwest::Client::new()
        .put(format!(
            "{}/test/clients/tether-ciba-ping/notification-endpoint",
            idp.issuer()
        ))
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set["url"], url.as_str());
    let client = CibaClient::new(&config(
        &idp,
        "tether-ciba-ping",
        secret_auth(dir.path(), "tether-ciba-ping-secret"),
        json!({ "delivery_mode": "ping", "notification_endpoint": url }),
    ))
    .unwrap();
    assert_eq!(client.delivery_mode(), DeliveryMode::Ping);
    let first = start(&client, "carol", "Approve the HR export for Q3?", None).await;
    let second = start(&client, "carol", "Approve the HR export for Q4?", None).await;
    let token = first.notification_token.as_ref().unwrap();
    assert_ne!(
        token.expose(),
        second.notification_token.as_ref().unwrap().expose(),
        "one token per request"
    );
    let stored = NotificationTokenHash::from_hex(&token.hash().to_hex()).unwrap();

    let mut pending = first.pending;
    idp.ciba_device(pending.auth_req_id.as_str(), "approve", json!({}))
        .await
        .unwrap();
    let (authorization, body) = received.await.unwrap();
    let presented = bearer_token(&authorization).unwrap();
    assert!(stored.matches(presented), "the IdP presents the token");
    assert!(
        !NotificationTokenHash::from_hex(&second.notification_token.unwrap().hash().to_hex())
            .unwrap()
            .matches(presented),
        "and it is not another request's token"
    );
    let ping: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["auth_req_id"], pending.auth_req_id.as_str());
    // The ping only wakes the fetch: the result comes from the token endpoint.
    let outcome = client.poll_once(&mut pending).await.unwrap().unwrap();
    assert_eq!(outcome.approver(), Some("carol"));
}

/// Whether `text` holds anything shaped like a JWT (ID tokens, access
/// tokens, client assertions): a header starting with the base64url of
/// `{"`, a dot, more base64url.
fn contains_jwt(text: &str) -> bool {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").any(|(at, _)| {
        let rest = &text[at..];
        let header = rest.chars().take_while(|c| is_b64(*c)).count();
        header >= 10 && rest[header..].starts_with('.')
    })
}

#[tokio::test]
async fn secrets_never_reach_logs_or_debug_output() {
    // The process-wide subscriber (a thread-local one misses events whose
    // callsites other test threads registered first): it also captures the
    // other tests of this file, which only makes the search wider.
    let capture = tether_integration_tests::logs::capture_trace();

    let jwk_key = SigningKey::generate().unwrap();
    let idp = fast_idp(vec![jwt_client_metadata("tether-ciba-jwt", &[&jwk_key])]).await;
    let dir = tempfile::tempdir().unwrap();
    let private_jwk = jwk_key.private_jwk().unwrap();
    let jwk_file = write(dir.path(), "client.jwk.json", &private_jwk.to_string());
    let mut secrets: Vec<String> = vec![
        "tether-ciba-secret".into(),
        "tether-ciba-ping-secret".into(),
        "wrong-secret-value".into(),
        private_jwk["d"].as_str().unwrap().to_owned(),
    ];
    for (id, secret) in [
        ("tether-ciba", "tether-ciba-secret"),
        ("tether-ciba-ping", "tether-ciba-ping-secret"),
        ("tether-ciba", "wrong-secret-value"),
    ] {
        secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
    }
    let mut debug = Vec::new();

    // Basic auth: approval, approval with another account, denial.
    let client = poll_client(&idp, dir.path(), Value::Null);
    debug.push(format!("{client:?}"));
    for (account, decision) in [("alice", "approve"), ("bob", "approve"), ("alice", "deny")] {
        let started = start(&client, "alice", "Offboard employee 1042?", None).await;
        debug.push(format!("{started:?}"));
        idp.ciba_device(
            started.pending.auth_req_id.as_str(),
            decision,
            json!({ "account": account }),
        )
        .await
        .unwrap();
        let outcome = client.wait(started.pending).await;
        debug.push(format!("{outcome:?} {}", outcome.reason()));
    }

    // private_key_jwt (a JWK file): approval.
    let jwt = CibaClient::new(&config(
        &idp,
        "tether-ciba-jwt",
        json!({ "method": "private_key_jwt", "key_file": jwk_file }),
        Value::Null,
    ))
    .unwrap();
    debug.push(format!("{jwt:?}"));
    let started = start(&jwt, "carol", "Export the Q3 payroll?", None).await;
    idp.ciba_device(started.pending.auth_req_id.as_str(), "approve", json!({}))
        .await
        .unwrap();
    let outcome = jwt.wait(started.pending).await;
    assert!(outcome.is_approved());
    debug.push(format!("{outcome:?}"));

    // Ping: a notification token is sent.
    let ping = CibaClient::new(&config(
        &idp,
        "tether-ciba-ping",
        secret_auth(dir.path(), "tether-ciba-ping-secret"),
        json!({ "delivery_mode": "ping", "notification_endpoint": "http://127.0.0.1:9/ciba/notify" }),
    ))
    .unwrap();
    let started = start(&ping, "alice", "Offboard employee 1042?", None).await;
    let token = started.notification_token.as_ref().unwrap();
    secrets.push(token.expose().to_owned());
    debug.push(format!("{started:?} {:?}", token.hash()));

    // Refused: wrong secret.
    let wrong = CibaClient::new(&config(
        &idp,
        "tether-ciba",
        secret_auth(dir.path(), "wrong-secret-value"),
        Value::Null,
    ))
    .unwrap();
    debug.push(format!("{wrong:?}"));
    let message = wrong.binding_message(Sentence::Policy("x")).unwrap();
    let error = wrong
        .start(&AuthenticationRequest {
            user: "alice",
            binding_message: &message,
            requested_expiry: None,
        })
        .await
        .unwrap_err();
    debug.push(format!("{error:?} {error}"));

    let logs = capture.text();
    assert!(
        logs.contains("CIBA approval verified")
            && logs.contains("CIBA approval given with another account")
            && logs.contains("CIBA request ended without approval")
            && logs.contains("the IdP refused the CIBA authentication request"),
        "the capture works and every path logged"
    );
    let everything = format!("{logs}\n{}", debug.join("\n"));
    for secret in &secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret reached the logs or a Debug output"
        );
    }
    let sample = jwk_key.sign("JWT", &json!({ "sub": "x" })).unwrap();
    assert!(contains_jwt(&format!("token={sample}")), "the check works");
    assert!(
        !contains_jwt(&everything),
        "a JWT reached the logs or a Debug output"
    );
    let handle = started.pending.auth_req_id.as_str();
    assert!(
        !debug.join("\n").contains(handle),
        "an auth_req_id reached a Debug output"
    );
}
