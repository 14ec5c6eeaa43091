//! The agent facade's refusals, against the whole real stack: every hostile
//! or malformed input gets the status code and `ErrorInfo` reason the
//! contract (`proto/tether/facade/v1/facade.proto`) documents, and nothing
//! is decided, minted, issued or asked because of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_integration_tests::identity::TestAgent;
use tether_proto::facade::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

/// Asserts `status` is `code` with ErrorInfo `reason` (domain `tether`),
/// and that its message echoes none of `secrets`.
fn refused(case: &str, status: &tonic::Status, code: Code, reason: &str, secrets: &[&str]) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{case}: no ErrorInfo: {status:?}"));
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("tether", reason),
        "{case}: {status:?}"
    );
    // (Only secrets long enough that finding them is not a coincidence.)
    for secret in secrets.iter().filter(|s| s.len() >= 16) {
        assert!(
            !status.message().contains(secret),
            "{case}: the refusal echoes a secret"
        );
    }
}

fn authorize(action: &str, context_json: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        action: uid("Action", action),
        resource: uid("Employee", "1042"),
        context_json: context_json.into(),
    }
}

fn acquire(action: &str, profile: &str, context_json: &str) -> pb::AcquireCredentialRequest {
    pb::AcquireCredentialRequest {
        action: uid("Action", action),
        resource: uid("Employee", "1042"),
        context_json: context_json.into(),
        profile: profile.into(),
        requested_ttl: None,
    }
}

#[tokio::test]
async fn agent_supplied_context_targets_profiles_and_ttls_are_refused_and_nothing_is_decided() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    // Another session's ticket, for WatchApproval below.
    let other = stack.session().await.unwrap().delegated_token;
    let others_ticket = match stack
        .client()
        .authorize(bearer(authorize("offboard", ""), &other))
        .await
        .unwrap()
        .into_inner()
        .approval_required
    {
        Some(required) => required.ticket.unwrap().ticket_id,
        None => panic!("no ticket for the other session"),
    };
    let before = stack.footprint().await.unwrap();

    // Context: the keys Tether sets are refused by the facade, a duplicate
    // key or a non-object is malformed, and a key the policy schema does not
    // declare is refused by the PDP's schema validation — all before any
    // decision. Asked about `offboard` (a decision would ask the user) and
    // `read` through `hr-read` (a decision would issue).
    let approval = r#"{"approval":{"granted":true,"ticket":"t-1","approver":"alice"}}"#;
    let contexts = [
        ("approval", approval.to_owned()),
        (
            "session",
            r#"{"session":{"id":"s","age_seconds":0,"intent":""}}"#.into(),
        ),
        (
            "network",
            r#"{"network":{"ip":"10.0.0.1","trusted":true,"zone":"corp"}}"#.into(),
        ),
        ("now", r#"{"now":{"hour":10,"weekday":2,"unix":0}}"#.into()),
        ("risk", r#"{"risk":{"score":0}}"#.into()),
        (
            "reserved among others",
            r#"{"purpose":"x","approval":{"granted":true}}"#.into(),
        ),
        ("duplicate key", r#"{"purpose":"a","purpose":"b"}"#.into()),
        (
            "duplicate reserved key",
            r#"{"approval":{"granted":false},"approval":{"granted":true}}"#.into(),
        ),
        ("nested duplicate", r#"{"purpose":{"a":1,"a":2}}"#.into()),
        ("unknown key (schema)", r#"{"ticket_ref":"x"}"#.into()),
        (
            "reserved key in another case (schema)",
            r#"{"Approval":{"granted":true}}"#.into(),
        ),
        ("array", "[]".into()),
        ("string", r#""approval""#.into()),
        ("not JSON", "{approval: true}".into()),
        (
            "over 8 KiB",
            format!(r#"{{"purpose":"{}"}}"#, "x".repeat(8 * 1024)),
        ),
    ];
    for (case, context) in &contexts {
        let status = stack
            .client()
            .authorize(bearer(authorize("offboard", context), &token))
            .await
            .unwrap_err();
        refused(
            &format!("Authorize, context {case}"),
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
            &[&token],
        );
        let status = stack
            .client()
            .acquire_credential(bearer(acquire("read", "hr-read", context), &token))
            .await
            .unwrap_err();
        refused(
            &format!("AcquireCredential, context {case}"),
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
            &[&token],
        );
    }

    // Targets: malformed uids, and types or actions the schema does not
    // declare.
    let target =
        |action: Option<pb::EntityUid>, resource: Option<pb::EntityUid>| pb::AuthorizeRequest {
            action,
            resource,
            context_json: String::new(),
        };
    let targets = [
        ("no action", target(None, uid("Employee", "1042"))),
        ("no resource", target(uid("Action", "read"), None)),
        (
            "empty type",
            target(uid("", "read"), uid("Employee", "1042")),
        ),
        (
            "quote in a type",
            target(uid("Action", "read"), uid("Employee\"", "1042")),
        ),
        (
            "empty id",
            target(uid("Action", "read"), uid("Employee", "")),
        ),
        (
            "newline in an id",
            target(uid("Action", "read"), uid("Employee", "10\n42")),
        ),
        (
            "id over 512 bytes",
            target(uid("Action", "read"), uid("Employee", &"1".repeat(513))),
        ),
        (
            "type over 256 bytes",
            target(uid("Action", "read"), uid(&"E".repeat(257), "1042")),
        ),
        (
            "unknown action",
            target(uid("Action", "delete"), uid("Employee", "1042")),
        ),
        (
            "unknown entity type",
            target(uid("Action", "read"), uid("Hr::Nope", "1042")),
        ),
    ];
    for (case, request) in targets {
        let status = stack
            .client()
            .authorize(bearer(request, &token))
            .await
            .unwrap_err();
        refused(
            case,
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
            &[&token],
        );
    }

    // Profiles and TTLs.
    let profiles = [
        (
            "unknown profile",
            acquire("read", "hr-admin", ""),
            Code::InvalidArgument,
            "UNKNOWN_PROFILE",
        ),
        (
            "empty profile",
            acquire("read", "", ""),
            Code::InvalidArgument,
            "INVALID_REQUEST",
        ),
        (
            "profile over 128 bytes",
            acquire("read", &"p".repeat(129), ""),
            Code::InvalidArgument,
            "INVALID_REQUEST",
        ),
        (
            "hr-read for offboard",
            acquire("offboard", "hr-read", ""),
            Code::PermissionDenied,
            "PROFILE_NOT_ALLOWED",
        ),
        (
            "hr-write for read",
            acquire("read", "hr-write", ""),
            Code::PermissionDenied,
            "PROFILE_NOT_ALLOWED",
        ),
    ];
    for (case, request, code, reason) in profiles {
        let status = stack
            .client()
            .acquire_credential(bearer(request, &token))
            .await
            .unwrap_err();
        refused(case, &status, code, reason, &[&token]);
    }
    for (seconds, nanos) in [(0, 0), (-1, 0), (0, -1), (-600, 0)] {
        let request = pb::AcquireCredentialRequest {
            requested_ttl: Some(prost_types::Duration { seconds, nanos }),
            ..acquire("read", "hr-read", "")
        };
        let status = stack
            .client()
            .acquire_credential(bearer(request, &token))
            .await
            .unwrap_err();
        refused(
            &format!("requested_ttl {seconds} s {nanos} ns"),
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
            &[&token],
        );
    }

    // WatchApproval: a malformed id, an unknown one, another session's.
    for (case, ticket_id, code, reason) in [
        (
            "empty ticket id",
            String::new(),
            Code::InvalidArgument,
            "INVALID_REQUEST",
        ),
        (
            "ticket id over 128 bytes",
            "t".repeat(129),
            Code::InvalidArgument,
            "INVALID_REQUEST",
        ),
        (
            "unknown ticket",
            "tkt_00000000000000000000000000000000".into(),
            Code::NotFound,
            "TICKET_NOT_FOUND",
        ),
        (
            "another session's ticket",
            others_ticket.clone(),
            Code::NotFound,
            "TICKET_NOT_FOUND",
        ),
    ] {
        let status = stack
            .client()
            .watch_approval(bearer(pb::WatchApprovalRequest { ticket_id }, &token))
            .await
            .map(|_| ())
            .unwrap_err();
        refused(case, &status, code, reason, &[&token]);
    }

    // EndSession with a reason over 256 bytes ends nothing.
    let status = stack
        .client()
        .end_session(bearer(
            pb::EndSessionRequest {
                reason: "r".repeat(257),
            },
            &token,
        ))
        .await
        .unwrap_err();
    refused(
        "reason over 256 bytes",
        &status,
        Code::InvalidArgument,
        "INVALID_REQUEST",
        &[&token],
    );

    // Nothing was decided on any of it: no ticket, no grant, no prompt, no
    // lease, no role; and the session still works.
    assert_eq!(stack.footprint().await.unwrap(), before);
    let still = stack
        .client()
        .authorize(bearer(authorize("read", r#""#), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.decision(), pb::Decision::Allow);
}

#[tokio::test]
async fn bearer_tokens_that_are_missing_forged_expired_or_foreign_are_refused() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.authority.session().await.unwrap();
    let authority = &stack.authority;
    let now = tether_token::unix_now();
    let before = stack.footprint().await.unwrap();

    // (case, `authorization` value or none, reason)
    let forged = |edit: fn(&mut tether_token::DelegatedClaims, i64)| {
        authority.forge(&session, |c| edit(c, now)).unwrap()
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no metadata", None, "TOKEN_MISSING"),
        (
            "not Bearer",
            Some(format!("Basic {}", session.token)),
            "TOKEN_MISSING",
        ),
        ("empty Bearer", Some("Bearer ".into()), "TOKEN_MISSING"),
        (
            "two words",
            Some(format!("Bearer {} x", session.token)),
            "TOKEN_MISSING",
        ),
        (
            "not a JWT",
            Some("Bearer not-a-jwt".into()),
            "TOKEN_INVALID",
        ),
        (
            "unknown signing key",
            Some(format!(
                "Bearer {}",
                authority.forge_with_unknown_key(&session).unwrap()
            )),
            "TOKEN_INVALID",
        ),
        (
            "another audience",
            Some(format!(
                "Bearer {}",
                forged(|c, _| c.aud = "https://elsewhere.example/api".into())
            )),
            "TOKEN_INVALID",
        ),
        (
            "another issuer",
            Some(format!(
                "Bearer {}",
                forged(|c, _| c.iss = "https://evil.example".into())
            )),
            "TOKEN_INVALID",
        ),
        (
            "tampered claims",
            Some(format!("Bearer {}", {
                let mut parts: Vec<String> = session.token.split('.').map(str::to_owned).collect();
                let mut claims: Value =
                    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
                claims["sub"] = "carol".into();
                parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
                parts.join(".")
            })),
            "TOKEN_INVALID",
        ),
        (
            "the user's IdP token",
            Some(format!("Bearer {}", authority.user_token())),
            "TOKEN_INVALID",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                forged(|c, now| {
                    c.iat = now - 1_000;
                    c.exp = now - 600;
                })
            )),
            "TOKEN_EXPIRED",
        ),
    ];
    for (case, value, reason) in &cases {
        let with = |mut request: tonic::Request<()>| {
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            request
        };
        let statuses = [
            (
                "Authorize",
                stack
                    .client()
                    .authorize(with(tonic::Request::new(())).map(|()| authorize("read", "")))
                    .await
                    .map(|_| ()),
            ),
            (
                "AcquireCredential",
                stack
                    .client()
                    .acquire_credential(
                        with(tonic::Request::new(())).map(|()| acquire("read", "hr-read", "")),
                    )
                    .await
                    .map(|_| ()),
            ),
            (
                "WatchApproval",
                stack
                    .client()
                    .watch_approval(with(tonic::Request::new(())).map(|()| {
                        pb::WatchApprovalRequest {
                            ticket_id: "tkt_1".into(),
                        }
                    }))
                    .await
                    .map(|_| ()),
            ),
            (
                "GetSession",
                stack
                    .client()
                    .get_session(with(tonic::Request::new(())).map(|()| pb::GetSessionRequest {}))
                    .await
                    .map(|_| ()),
            ),
            (
                "EndSession",
                stack
                    .client()
                    .end_session(
                        with(tonic::Request::new(())).map(|()| pb::EndSessionRequest::default()),
                    )
                    .await
                    .map(|_| ()),
            ),
        ];
        for (rpc, result) in statuses {
            let status = result.unwrap_err();
            refused(
                &format!("{rpc}, {case}"),
                &status,
                Code::Unauthenticated,
                reason,
                &[&session.token],
            );
        }
    }

    // None of it decided, issued or ended anything: the real token still
    // works and its session is ACTIVE.
    assert_eq!(stack.footprint().await.unwrap(), before);
    let described = stack
        .client()
        .get_session(bearer(pb::GetSessionRequest {}, &session.token))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(described.state(), pb::SessionState::Active);
    assert!(described.leases.is_empty());
}

/// alice's IdP access token with its claims changed by `edit`, re-signed
/// with the IdP's own key (so only the edited claim is wrong).
fn resign_user_token(stack: &FacadeStack, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = stack.authority.user_token().split('.').collect();
    let decode = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let header = decode(parts[0]);
    let mut claims = decode(parts[1]);
    edit(&mut claims);
    stack
        .authority
        .idp()
        .key()
        .sign_raw(&header, &claims)
        .unwrap()
}

#[tokio::test]
async fn start_session_refusals_mint_nothing() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let now = tether_token::unix_now();
    // Premise: a token re-signed unchanged is accepted, so each re-signed
    // case below fails for its edited claim alone.
    let resigned = resign_user_token(&stack, |_| {});
    let ok = stack
        .client()
        .start_session(pb::StartSessionRequest {
            user_token: resigned,
            ..stack.start_request().unwrap()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.user_subject, "alice");
    // A replayed assertion: the first use opens a session, the second is
    // refused.
    let assertion = stack.authority.agent_assertion().unwrap();
    stack
        .client()
        .start_session(pb::StartSessionRequest {
            agent_assertion: assertion.clone(),
            ..stack.start_request().unwrap()
        })
        .await
        .unwrap();
    let bob = stack
        .authority
        .idp()
        .login("bob", &["openid", "profile", "hr:read"])
        .await
        .unwrap()
        .access_token;
    let before = stack.footprint().await.unwrap();
    assert_eq!(before.sessions, 2);

    let intruder = TestAgent::new("hr-assistant").unwrap();
    let endpoint = stack.authority.identity().token_endpoint();
    let expired = resign_user_token(&stack, |c| {
        c["iat"] = json!(now - 7_200);
        c["exp"] = json!(now - 3_600);
    });
    let elsewhere = resign_user_token(&stack, |c| c["aud"] = json!("https://elsewhere.example"));
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": stack.authority.idp().key().kid()});
    let foreign_key = intruder
        .key
        .sign_raw(&header, &json!({"sub": "alice"}))
        .unwrap();
    let id_token = "urn:ietf:params:oauth:token-type:id_token";
    let with = |edit: &dyn Fn(&mut pb::StartSessionRequest)| {
        let mut request = stack.start_request().unwrap();
        edit(&mut request);
        request
    };
    let user = "USER_TOKEN_INVALID";
    let agent = "AGENT_ASSERTION_INVALID";
    let delegation = "DELEGATION_NOT_ALLOWED";
    let invalid = "INVALID_REQUEST";
    let cases: Vec<(&str, pb::StartSessionRequest, Code, &str)> = vec![
        // The user's token.
        (
            "user token not a JWT",
            with(&|r| r.user_token = "not.a.jwt".into()),
            Code::Unauthenticated,
            user,
        ),
        (
            "user token expired",
            with(&|r| r.user_token.clone_from(&expired)),
            Code::Unauthenticated,
            user,
        ),
        (
            "user token for another audience",
            with(&|r| r.user_token.clone_from(&elsewhere)),
            Code::Unauthenticated,
            user,
        ),
        (
            "user token signed by another key",
            with(&|r| r.user_token.clone_from(&foreign_key)),
            Code::Unauthenticated,
            user,
        ),
        (
            "a delegated token presented as an ID token",
            with(&|r| {
                r.user_token.clone_from(&ok.delegated_token);
                r.user_token_type = id_token.into();
            }),
            Code::InvalidArgument,
            invalid,
        ),
        // The agent's assertion.
        (
            "assertion not a JWT",
            with(&|r| r.agent_assertion = "not.a.jwt".into()),
            Code::Unauthenticated,
            agent,
        ),
        (
            "assertion signed by an unregistered key",
            with(&|r| r.agent_assertion = intruder.assertion(&endpoint).unwrap()),
            Code::Unauthenticated,
            agent,
        ),
        (
            "assertion replayed",
            with(&|r| r.agent_assertion.clone_from(&assertion)),
            Code::Unauthenticated,
            agent,
        ),
        // Delegation.
        (
            "scope wider than the user's",
            with(&|r| r.scope = "hr:write".into()),
            Code::PermissionDenied,
            delegation,
        ),
        (
            "scope wider among others",
            with(&|r| r.scope = "hr:read hr:admin".into()),
            Code::PermissionDenied,
            delegation,
        ),
        (
            "a user the agent may not act for",
            with(&|r| r.user_token.clone_from(&bob)),
            Code::PermissionDenied,
            delegation,
        ),
        // Malformed requests.
        (
            "empty user token",
            with(&|r| r.user_token.clear()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "user token over 16 KiB",
            with(&|r| r.user_token = "a".repeat(16 * 1024 + 1)),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "no token type",
            with(&|r| r.user_token_type.clear()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "unsupported token type",
            with(&|r| r.user_token_type = "urn:ietf:params:oauth:token-type:saml2".into()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "empty assertion",
            with(&|r| r.agent_assertion.clear()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "assertion over 16 KiB",
            with(&|r| r.agent_assertion = "a".repeat(16 * 1024 + 1)),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "unsupported assertion type",
            with(&|r| {
                r.agent_assertion_type =
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into();
            }),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "empty intent",
            with(&|r| r.intent.clear()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "intent not an array",
            with(&|r| r.intent = r#"{"type":"hr_lookup"}"#.into()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "intent an empty array",
            with(&|r| r.intent = "[]".into()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "intent without a type",
            with(&|r| r.intent = r#"[{"actions":["read"]}]"#.into()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "intent with a duplicate key",
            with(&|r| r.intent = r#"[{"type":"a","type":"b"}]"#.into()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "intent not JSON",
            with(&|r| r.intent = "hr lookup".into()),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "intent over 8 KiB",
            with(&|r| r.intent = format!(r#"[{{"type":"{}"}}]"#, "t".repeat(8 * 1024))),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "scope over 64 values",
            with(&|r| r.scope = vec!["hr:read"; 65].join(" ")),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "scope over 1 KiB",
            with(&|r| r.scope = "s".repeat(1025)),
            Code::InvalidArgument,
            invalid,
        ),
        (
            "scope with a newline",
            with(&|r| r.scope = "hr:read\nhr:write".into()),
            Code::InvalidArgument,
            invalid,
        ),
    ];
    for (case, request, code, reason) in cases {
        let secrets = [request.user_token.clone(), request.agent_assertion.clone()];
        let status = stack.client().start_session(request).await.unwrap_err();
        refused(
            case,
            &status,
            code,
            reason,
            &[secrets[0].as_str(), secrets[1].as_str()],
        );
    }
    assert_eq!(
        stack.footprint().await.unwrap(),
        before,
        "a session was minted"
    );
}

#[tokio::test]
async fn the_network_is_the_peer_or_a_trusted_proxy_never_the_agent() {
    // The agent connects from 127.0.0.1, configured as a trusted proxy
    // (a load balancer) whose `x-forwarded-for` is believed; only
    // 10.0.0.0/8 is the trusted corporate zone, and reading needs it.
    let stack = FacadeStack::builder()
        .configure(|config| {
            config.network.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            config.network.client_address_header = Some("x-forwarded-for".into());
            config.network.zones = vec![tether_agent_facade::Zone {
                name: "corp".into(),
                cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                trusted: true,
            }];
        })
        .start()
        .await
        .unwrap();
    let token = stack.session().await.unwrap().delegated_token;
    let decide = |forwarded: &'static [&'static str]| {
        let mut request = bearer(authorize("read", ""), &token);
        for value in forwarded {
            request
                .metadata_mut()
                .append("x-forwarded-for", value.parse().unwrap());
        }
        let mut client = stack.client();
        async move { client.authorize(request).await.unwrap().into_inner() }
    };
    for (case, forwarded, expected) in [
        (
            "from the corporate network",
            &["10.1.2.3"][..],
            pb::Decision::Allow,
        ),
        ("the proxy itself", &[][..], pb::Decision::Deny),
        ("from outside", &["203.0.113.9"][..], pb::Decision::Deny),
        // The agent prepends a corporate address; the proxy appends the
        // one it saw.
        (
            "a spoofed first hop",
            &["10.1.2.3, 203.0.113.9"][..],
            pb::Decision::Deny,
        ),
        (
            "two headers",
            &["10.1.2.3", "10.1.2.4"][..],
            pb::Decision::Deny,
        ),
        (
            "not an address",
            &["10.1.2.3, corp"][..],
            pb::Decision::Deny,
        ),
    ] {
        let answer = decide(forwarded).await;
        assert_eq!(answer.decision(), expected, "{case}: {answer:?}");
    }
    // A context key cannot say otherwise.
    let status = stack
        .client()
        .authorize(bearer(
            authorize(
                "read",
                r#"{"network":{"ip":"10.1.2.3","trusted":true,"zone":"corp"}}"#,
            ),
            &token,
        ))
        .await
        .unwrap_err();
    refused(
        "network context",
        &status,
        Code::InvalidArgument,
        "INVALID_REQUEST",
        &[&token],
    );
}
