//! The identity exchange with customers' IdPs and the stricter exchange:
//! tokens shaped like Keycloak's, Entra ID's and Okta's (signed by the test
//! IdP's keys, served from its JWKS), client-credentials and ID tokens as
//! subjects, `act` chains from the IdP, sub-agent delegation, DPoP-bound
//! subject tokens, and the agent assertion's single audience. Every refusal
//! is checked over gRPC and HTTP where both apply, with nothing minted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tether_identity_exchange::TrustedIssuer;
use tether_integration_tests::identity::{
    FACADE_AUDIENCE, IdentitySandbox, IdentitySandboxBuilder, TestAgent,
};
use tether_integration_tests::idp::{API_RESOURCE, Idp};
use tether_proto::identity::v1::{ExchangeRequest, ExchangeResponse};
use tether_token::{SigningKey, token_hash};
use tonic::Code;

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const ID: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const INTENT: &str =
    r#"[{"type":"hr_record_access","actions":["read"],"identifier":"employee/1042"}]"#;

struct Stack {
    idp: Idp,
    identity: IdentitySandbox,
    agent: TestAgent,
    sub_agent: TestAgent,
    bystander: TestAgent,
}

/// The test IdP, and an identity exchange trusting it as `configure` says
/// (the IdP's name and shape included), with three agents for group `hr`.
async fn stack_with(
    configure: impl FnOnce(IdentitySandboxBuilder, &str) -> IdentitySandboxBuilder,
) -> Stack {
    let idp = Idp::start().await.unwrap();
    let jwks_uri = idp.jwks_uri().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let sub_agent = TestAgent::new("report-writer").unwrap();
    let bystander = TestAgent::new("formatter").unwrap();
    let builder = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read", "hr:offboard"], &["hr"])
        .agent(&sub_agent, &["hr:read"], &["hr"])
        .agent(&bystander, &["hr:read"], &["hr"]);
    let identity = configure(builder, &jwks_uri).start().await.unwrap();
    Stack {
        idp,
        identity,
        agent,
        sub_agent,
        bystander,
    }
}

impl Stack {
    fn request(&self, subject: &str, subject_type: &str, actor: String) -> ExchangeRequest {
        ExchangeRequest {
            subject_token: subject.into(),
            subject_token_type: subject_type.into(),
            actor_token: actor,
            actor_token_type: JWT.into(),
            audience: FACADE_AUDIENCE.into(),
            scope: "hr:read".into(),
            requested_token_type: String::new(),
            authorization_details: INTENT.into(),
        }
    }

    fn assertion(&self, agent: &TestAgent) -> String {
        agent.assertion(&self.identity.token_endpoint()).unwrap()
    }

    async fn exchange(&self, req: ExchangeRequest) -> Result<ExchangeResponse, tonic::Status> {
        self.identity
            .client()
            .exchange(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The same exchange at `/token`, with `dpop` as the DPoP header.
    async fn exchange_http(&self, req: &ExchangeRequest, dpop: Option<&str>) -> (u16, Value) {
        let mut post = self
            .identity
            .http()
            .post(self.identity.token_endpoint())
            .form(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &req.subject_token),
                ("subject_token_type", &req.subject_token_type),
                ("actor_token", &req.actor_token),
                ("actor_token_type", &req.actor_token_type),
                ("audience", &req.audience),
                ("scope", &req.scope),
                ("authorization_details", &req.authorization_details),
            ]);
        if let Some(proof) = dpop {
            post = post.header("DPoP", proof);
        }
        let response = post.send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(response.headers()["cache-control"], "no-store");
        (status, response.json().await.unwrap())
    }

    /// The request `make` builds (each call with a fresh assertion) is
    /// refused over gRPC with `code` and over HTTP with `error` (400, or
    /// 401 for `invalid_client`); both messages name `why` and never the
    /// subject token.
    async fn assert_refused(
        &self,
        name: &str,
        make: impl Fn() -> ExchangeRequest,
        (code, error): (Code, &str),
        why: &str,
    ) {
        let req = make();
        let echo = &req.subject_token[..40];
        let status = self.exchange(req.clone()).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        let info = tonic_types::StatusExt::get_details_error_info(&status).expect(name);
        assert_eq!(info.reason, error.to_ascii_uppercase(), "{name}");
        assert!(
            status.message().contains(why),
            "{name}: {}",
            status.message()
        );
        assert!(!status.message().contains(echo), "{name}: token echoed");
        let (http, body) = self.exchange_http(&make(), None).await;
        let expected = if error == "invalid_client" { 401 } else { 400 };
        assert_eq!(
            (http, body["error"].as_str()),
            (expected, Some(error)),
            "{name}: {body}"
        );
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.contains(why), "{name}: {body}");
        assert!(!description.contains(echo), "{name}: token echoed");
        assert!(body.get("access_token").is_none(), "{name}");
    }

    async fn sessions(&self) -> i64 {
        self.identity.session_count().await.unwrap()
    }
}

/// A token signed by `key` (the test IdP's) with exactly this header and
/// these claims, `iat`/`exp` added.
fn sign(key: &SigningKey, mut header: Value, mut claims: Value) -> String {
    let now = tether_token::unix_now();
    header["kid"] = key.kid().into();
    header["alg"] = "ES256".into();
    if header["typ"].is_null() {
        header.as_object_mut().unwrap().remove("typ");
    }
    claims["iat"] = now.into();
    claims["exp"] = (now + 600).into();
    key.sign_raw(&header, &claims).unwrap()
}

/// The `user` and `act` claims of a minted delegated token (its payload,
/// read without verification: minting is what is under test here).
fn payload(token: &str) -> Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn claims_map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// One customer IdP: how it is configured, and a user token it would issue.
struct Shape {
    name: &'static str,
    configure: fn(&mut TrustedIssuer),
    header: Value,
    claims: Value,
    /// The `typ` its configuration does not accept.
    wrong_typ: Option<&'static str>,
    /// What the delegated token's `user` claim must then carry.
    user: Value,
}

fn shapes() -> Vec<Shape> {
    vec![
        Shape {
            name: "Keycloak",
            configure: |t| {
                t.issuer = "https://keycloak.test/realms/acme".into();
                t.audiences = vec!["tether".into()];
                t.clients = vec!["tether-console".into()];
                t.access_token_types = vec!["JWT".into()];
                t.claims = claims_map(&[
                    ("groups", "groups"),
                    ("roles", "realm_access.roles"),
                    ("department", "department"),
                ]);
            },
            header: json!({"typ": "JWT"}),
            claims: json!({
                "iss": "https://keycloak.test/realms/acme",
                "aud": "tether",
                "sub": "5c3e1d1c-1f3b-4d2e-9a51-7a0d4c6f2b11",
                "typ": "Bearer", "azp": "tether-console", "session_state": "abc",
                "preferred_username": "alice",
                "realm_access": {"roles": ["hr-admin", "offline_access"]},
                "resource_access": {"account": {"roles": ["view-profile"]}},
                "scope": "openid profile hr:read",
                "groups": ["hr"], "department": "People",
            }),
            wrong_typ: Some("at+jwt"),
            user: json!({
                "groups": ["hr"], "roles": ["hr-admin", "offline_access"],
                "department": "People", "idp": "https://keycloak.test/realms/acme",
            }),
        },
        Shape {
            name: "Entra ID",
            configure: |t| {
                t.issuer = "https://login.microsoftonline.test/72f988bf/v2.0".into();
                t.audiences = vec!["api://tether".into()];
                t.clients = vec!["a4b5c6d7-0000-1111-2222-333344445555".into()];
                t.access_token_types = vec!["JWT".into()];
                t.scope_claim = "scp".into();
                t.claims = claims_map(&[("groups", "roles"), ("email", "preferred_username")]);
            },
            header: json!({"typ": "JWT"}),
            claims: json!({
                "iss": "https://login.microsoftonline.test/72f988bf/v2.0",
                "aud": "api://tether", "ver": "2.0",
                "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
                "oid": "00000000-0000-0000-66f3-3332eca7ea81", "tid": "72f988bf",
                "azp": "a4b5c6d7-0000-1111-2222-333344445555", "idtyp": "user",
                "scp": "hr:read profile", "roles": ["hr"],
                "preferred_username": "alice@contoso.test",
            }),
            wrong_typ: Some("at+jwt"),
            user: json!({
                "groups": ["hr"], "email": "alice@contoso.test",
                "idp": "https://login.microsoftonline.test/72f988bf/v2.0",
            }),
        },
        Shape {
            name: "Okta",
            configure: |t| {
                t.issuer = "https://acme.okta.test/oauth2/default".into();
                t.audiences = vec!["api://default".into()];
                t.clients = vec!["0oa1b2c3d4TETHER".into()];
                t.access_token_types = vec!["none".into()];
                t.scope_claim = "scp".into();
                t.claims = claims_map(&[("groups", "groups"), ("department", "department")]);
            },
            header: json!({}),
            claims: json!({
                "iss": "https://acme.okta.test/oauth2/default", "ver": 1,
                "aud": "api://default", "jti": "AT.x", "cid": "0oa1b2c3d4TETHER",
                "uid": "00u1a2b3c4", "sub": "alice@acme.test",
                "scp": ["openid", "hr:read"], "groups": ["hr", "Everyone"],
                "department": "People",
            }),
            wrong_typ: Some("JWT"),
            user: json!({
                "groups": ["hr", "Everyone"], "department": "People",
                "idp": "https://acme.okta.test/oauth2/default",
            }),
        },
    ]
}

#[tokio::test]
async fn keycloak_entra_and_okta_tokens_are_read_as_each_issuer_is_configured() {
    for shape in shapes() {
        let s = stack_with(|b, jwks| {
            b.idp(|t| {
                (shape.configure)(t);
                t.jwks_uri = Some(jwks.to_owned());
            })
        })
        .await;
        let key = s.idp.key();
        let token = sign(key, shape.header.clone(), shape.claims.clone());
        let minted = s
            .exchange(s.request(&token, ACCESS, s.assertion(&s.agent)))
            .await
            .unwrap_or_else(|e| panic!("{}: {}", shape.name, e.message()));
        let claims = payload(&minted.access_token);
        assert_eq!(claims["sub"], shape.claims["sub"], "{}", shape.name);
        assert_eq!(
            claims["scope"], "hr:read",
            "{}: scopes read from its claim",
            shape.name
        );
        assert_eq!(
            claims["user"], shape.user,
            "{}: user attributes",
            shape.name
        );

        // Over HTTP too.
        let req = s.request(&token, ACCESS, s.assertion(&s.agent));
        let (status, body) = s.exchange_http(&req, None).await;
        assert_eq!(status, 200, "{}: {body}", shape.name);

        let baseline = s.sessions().await;
        if let Some(typ) = shape.wrong_typ {
            let mut header = shape.header.clone();
            header["typ"] = typ.into();
            let wrong = sign(key, header, shape.claims.clone());
            s.assert_refused(
                &format!("{}: typ {typ}", shape.name),
                || s.request(&wrong, ACCESS, s.assertion(&s.agent)),
                (Code::Unauthenticated, "invalid_grant"),
                "token type",
            )
            .await;
        }
        // Scopes live only where configured: the other claim is not read.
        let mut moved = shape.claims.clone();
        let (from, to) = if moved.get("scp").is_some() {
            ("scp", "scope")
        } else {
            ("scope", "scp")
        };
        let value = moved.as_object_mut().unwrap().remove(from).unwrap();
        moved[to] = value;
        let moved = sign(key, shape.header.clone(), moved);
        s.assert_refused(
            &format!("{}: scopes in `{to}`", shape.name),
            || s.request(&moved, ACCESS, s.assertion(&s.agent)),
            (Code::PermissionDenied, "invalid_scope"),
            "wider than the user's",
        )
        .await;
        assert_eq!(
            s.sessions().await,
            baseline,
            "{}: nothing minted",
            shape.name
        );
    }
}

#[tokio::test]
async fn a_client_credentials_token_names_no_user_unless_its_issuer_allows_service_subjects() {
    // The real test IdP's client-credentials token, from any of its clients.
    let service_token = |s: &Stack| {
        let url = format!("{}/token", s.idp.issuer());
        async move {
            let body: Value = reqwest::Client::new()
                .post(url)
                .basic_auth("tether-agent-backend", Some("tether-agent-backend-secret"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "hr:read"),
                    ("resource", API_RESOURCE),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let s = stack_with(|b, _| b.idp(|t| t.clients = vec!["*".into()])).await;
    let token = service_token(&s).await;
    let key = s.idp.key();
    let iss = s.idp.issuer().to_owned();
    let at = json!({"typ": "at+jwt"});
    let base = |extra: Value| {
        let mut c = json!({"iss": iss, "aud": API_RESOURCE, "scope": "hr:read", "groups": ["hr"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let cases = [
        ("the test IdP's client-credentials token", token.clone()),
        (
            "RFC 9068: sub is the client_id",
            sign(
                key,
                at.clone(),
                base(json!({"sub": "batch-job", "client_id": "batch-job"})),
            ),
        ),
        (
            "Auth0: gty client-credentials",
            sign(
                key,
                at.clone(),
                base(
                    json!({"sub": "batch-job@clients", "azp": "batch-job", "gty": "client-credentials"}),
                ),
            ),
        ),
        (
            "Entra ID: idtyp app",
            sign(
                key,
                at.clone(),
                base(json!({"sub": "8f2d", "azp": "batch-job", "idtyp": "app"})),
            ),
        ),
        (
            "Keycloak: its service account",
            sign(
                key,
                at.clone(),
                base(
                    json!({"sub": "1b7e", "azp": "batch-job", "preferred_username": "service-account-batch-job"}),
                ),
            ),
        ),
    ];
    let baseline = s.sessions().await;
    for (name, subject) in &cases {
        s.assert_refused(
            name,
            || s.request(subject, ACCESS, s.assertion(&s.agent)),
            (Code::Unauthenticated, "invalid_grant"),
            "names no human user",
        )
        .await;
    }
    assert_eq!(s.sessions().await, baseline, "nothing minted");

    // Where the issuer's configuration allows service subjects, the same
    // token is one (an agent registered for that subject may act for it).
    let allowed = stack_with(|b, _| {
        b.idp(|t| {
            t.clients = vec!["*".into()];
            t.allow_service_subjects = true;
        })
    })
    .await;
    let synthetic = sign(
        allowed.idp.key(),
        at,
        json!({"iss": allowed.idp.issuer(), "aud": API_RESOURCE, "scope": "hr:read",
               "groups": ["hr"], "sub": "batch-job", "client_id": "batch-job"}),
    );
    let minted = allowed
        .exchange(allowed.request(&synthetic, ACCESS, allowed.assertion(&allowed.agent)))
        .await
        .unwrap();
    assert_eq!(payload(&minted.access_token)["sub"], "batch-job");
}

#[tokio::test]
async fn subject_tokens_come_only_from_configured_clients_and_id_tokens_only_where_allowed() {
    let s = stack_with(|b, _| b.idp(|t| t.allow_id_tokens = false)).await;
    let key = s.idp.key();
    let iss = s.idp.issuer().to_owned();
    let at = json!({"typ": "at+jwt"});
    let claims = |extra: Value| {
        let mut c = json!({"iss": iss, "aud": API_RESOURCE, "sub": "alice", "scope": "hr:read", "groups": ["hr"]});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    // Premise: the configured client's token is accepted.
    let good = sign(key, at.clone(), claims(json!({"client_id": "tether-cli"})));
    s.exchange(s.request(&good, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let baseline = s.sessions().await;
    let login = s
        .idp
        .login("alice", &["openid", "profile", "hr:read"])
        .await
        .unwrap();
    let cases = [
        (
            "another client's token",
            sign(
                key,
                at.clone(),
                claims(json!({"client_id": "intranet-portal"})),
            ),
            Code::Unauthenticated,
            "invalid_grant",
            "not in this issuer's `clients`",
        ),
        (
            "another client named by azp",
            sign(
                key,
                at.clone(),
                claims(json!({"client_id": "tether-cli", "azp": "intranet-portal"})),
            ),
            Code::Unauthenticated,
            "invalid_grant",
            "not in this issuer's `clients`",
        ),
        (
            "a token naming no client",
            sign(key, at.clone(), claims(json!({}))),
            Code::Unauthenticated,
            "invalid_grant",
            "names no client",
        ),
        (
            "an ID token presented as an access token",
            sign(
                key,
                at.clone(),
                claims(json!({"client_id": "tether-cli", "nonce": "n-0S6_WzA2Mj"})),
            ),
            Code::Unauthenticated,
            "invalid_grant",
            "is an ID token",
        ),
    ];
    for (name, subject, code, error, why) in &cases {
        s.assert_refused(
            name,
            || s.request(subject, ACCESS, s.assertion(&s.agent)),
            (*code, error),
            why,
        )
        .await;
    }
    // The IdP's real ID token, as an ID token, where they are not allowed.
    s.assert_refused(
        "an ID token where the issuer does not allow them",
        || ExchangeRequest {
            scope: String::new(),
            ..s.request(&login.id_token, ID, s.assertion(&s.agent))
        },
        (Code::InvalidArgument, "invalid_request"),
        "`allow_id_tokens` is off",
    )
    .await;
    assert_eq!(s.sessions().await, baseline, "nothing minted");
}

#[tokio::test]
async fn an_act_chain_from_the_idp_is_kept_under_the_agent_and_counted_whole() {
    let s = stack_with(|b, _| b.max_delegation_depth(2)).await;
    let key = s.idp.key();
    let iss = s.idp.issuer().to_owned();
    let with_act = |act: Value| {
        sign(
            key,
            json!({"typ": "at+jwt"}),
            json!({"iss": iss, "aud": API_RESOURCE, "sub": "alice", "client_id": "tether-cli",
                   "scope": "hr:read", "groups": ["hr"], "act": act}),
        )
    };
    let minted = s
        .exchange(s.request(
            &with_act(json!({"sub": "upstream-gateway", "iss": "https://gw.example"})),
            ACCESS,
            s.assertion(&s.agent),
        ))
        .await
        .unwrap();
    assert_eq!(
        payload(&minted.access_token)["act"],
        json!({"sub": "hr-assistant", "act": {"sub": "upstream-gateway"}}),
        "the agent is nested on top, the IdP's actor kept"
    );
    let baseline = s.sessions().await;
    let cases = [
        (
            "a chain that the agent would make 3 deep",
            with_act(json!({"sub": "gateway", "act": {"sub": "portal"}})),
            Code::PermissionDenied,
            "unauthorized_client",
            "delegation chain would be 3 deep, the limit is 2",
        ),
        (
            "act not an object",
            with_act(json!("upstream-gateway")),
            Code::Unauthenticated,
            "invalid_grant",
            "`act` claim is not a chain",
        ),
        (
            "act with an empty sub",
            with_act(json!({"sub": " "})),
            Code::Unauthenticated,
            "invalid_grant",
            "`act` claim is not a chain",
        ),
        (
            "a nested act without sub",
            with_act(json!({"sub": "gateway", "act": {"client_id": "x"}})),
            Code::Unauthenticated,
            "invalid_grant",
            "`act` claim is not a chain",
        ),
        (
            "an act chain 11 deep",
            {
                let mut act = json!({"sub": "a0"});
                for i in 1..11 {
                    act = json!({"sub": format!("a{i}"), "act": act});
                }
                with_act(act)
            },
            Code::Unauthenticated,
            "invalid_grant",
            "deeper than 10",
        ),
    ];
    for (name, subject, code, error, why) in &cases {
        s.assert_refused(
            name,
            || s.request(subject, ACCESS, s.assertion(&s.agent)),
            (*code, error),
            why,
        )
        .await;
    }
    assert_eq!(s.sessions().await, baseline, "nothing minted");
}

#[tokio::test]
async fn a_delegated_token_is_re_exchanged_only_by_an_agent_its_agent_may_delegate_to() {
    let s = stack_with(|b, _| b.may_delegate("hr-assistant", "report-writer")).await;
    let user = s
        .idp
        .login("alice", &["openid", "profile", "hr:read"])
        .await
        .unwrap()
        .access_token;
    let parent = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let re_exchange = |agent: &TestAgent| ExchangeRequest {
        authorization_details: String::new(),
        ..s.request(&parent.access_token, ACCESS, s.assertion(agent))
    };
    let child = s.exchange(re_exchange(&s.sub_agent)).await.unwrap();
    assert_eq!(
        payload(&child.access_token)["act"],
        json!({"sub": "report-writer", "act": {"sub": "hr-assistant"}})
    );
    let baseline = s.sessions().await;
    // `formatter` is registered and may act for alice, but hr-assistant
    // never chose to delegate to it.
    s.assert_refused(
        "a bystander agent",
        || re_exchange(&s.bystander),
        (Code::PermissionDenied, "unauthorized_client"),
        "agent `hr-assistant` may not delegate to agent `formatter`",
    )
    .await;
    // Nor may the sub-agent pass it on (it lists nobody).
    s.assert_refused(
        "the sub-agent delegating further",
        || ExchangeRequest {
            authorization_details: String::new(),
            ..s.request(&child.access_token, ACCESS, s.assertion(&s.bystander))
        },
        (Code::PermissionDenied, "unauthorized_client"),
        "agent `report-writer` may not delegate to agent `formatter`",
    )
    .await;
    // The chain's scope only shrinks: the sub-agent cannot widen it.
    s.assert_refused(
        "a wider scope on re-exchange",
        || ExchangeRequest {
            scope: "hr:offboard".into(),
            ..re_exchange(&s.sub_agent)
        },
        (Code::PermissionDenied, "invalid_scope"),
        "wider than the user's",
    )
    .await;
    assert_eq!(
        s.sessions().await,
        baseline,
        "nothing minted (a re-exchange shares the session)"
    );
}

/// A DPoP proof (RFC 9449) by `key` for the exchange at `htu`.
fn dpop_proof(key: &SigningKey, htu: &str, extra: Value) -> String {
    let mut claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(), "htm": "POST", "htu": htu,
        "iat": tether_token::unix_now(),
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    key.sign_raw(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk()}),
        &claims,
    )
    .unwrap()
}

#[tokio::test]
async fn a_sender_constrained_subject_token_needs_a_dpop_proof_of_its_key() {
    let s = stack_with(|b, _| b).await;
    let idp_key = s.idp.key();
    let holder = SigningKey::generate().unwrap();
    let thief = SigningKey::generate().unwrap();
    let jkt = holder
        .public_jwk()
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .unwrap();
    let bound_claims = |cnf: Value| {
        json!({"iss": s.idp.issuer(), "aud": API_RESOURCE, "sub": "alice", "client_id": "tether-cli",
               "scope": "hr:read", "groups": ["hr"], "cnf": cnf})
    };
    let at = json!({"typ": "at+jwt"});
    let bound = sign(idp_key, at.clone(), bound_claims(json!({"jkt": jkt})));
    let endpoint = s.identity.token_endpoint();
    let baseline = s.sessions().await;

    // Without a proof, the bound token is refused (a stolen bearer).
    s.assert_refused(
        "bound token, no proof",
        || s.request(&bound, ACCESS, s.assertion(&s.agent)),
        (Code::Unauthenticated, "invalid_grant"),
        "sender-constrained",
    )
    .await;
    for (name, cnf, why) in [
        (
            "certificate-bound",
            json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            "client certificate",
        ),
        (
            "unknown confirmation",
            json!({"kid": "k1"}),
            "no confirmation method",
        ),
        ("cnf not an object", json!("x"), "no confirmation method"),
    ] {
        let token = sign(idp_key, at.clone(), bound_claims(cnf));
        s.assert_refused(
            name,
            || s.request(&token, ACCESS, s.assertion(&s.agent)),
            (Code::Unauthenticated, "invalid_grant"),
            why,
        )
        .await;
    }
    // Proofs that do not prove possession of the bound key for this request.
    let bad_proofs = [
        (
            "the thief's key",
            dpop_proof(&thief, &endpoint, json!({})),
            "not the one the subject token is bound to",
        ),
        (
            "another endpoint",
            dpop_proof(
                &holder,
                &format!("{}/introspect", s.identity.issuer()),
                json!({}),
            ),
            "`htu`",
        ),
        (
            "GET",
            dpop_proof(&holder, &endpoint, json!({"htm": "GET"})),
            "`htm`",
        ),
        (
            "an hour old",
            dpop_proof(
                &holder,
                &endpoint,
                json!({"iat": tether_token::unix_now() - 3600}),
            ),
            "too old",
        ),
        (
            "ath of another token",
            dpop_proof(&holder, &endpoint, json!({"ath": token_hash("other")})),
            "`ath`",
        ),
        ("not a JWT", "garbage".to_owned(), "DPoP proof rejected"),
    ];
    for (name, proof, why) in &bad_proofs {
        let req = s.request(&bound, ACCESS, s.assertion(&s.agent));
        let (status, body) = s.exchange_http(&req, Some(proof)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{name}: {body}"
        );
        assert!(
            body["error_description"].as_str().unwrap().contains(why),
            "{name}: {body}"
        );
    }
    // Two DPoP headers.
    let response = s
        .identity
        .http()
        .post(&endpoint)
        .header("DPoP", dpop_proof(&holder, &endpoint, json!({})))
        .header("DPoP", dpop_proof(&holder, &endpoint, json!({})))
        .form(&[("grant_type", TOKEN_EXCHANGE)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
    assert_eq!(
        s.sessions().await,
        baseline,
        "nothing minted without a valid proof"
    );

    // The holder's proof: minted, once.
    let proof = dpop_proof(&holder, &endpoint, json!({"ath": token_hash(&bound)}));
    let req = s.request(&bound, ACCESS, s.assertion(&s.agent));
    let (status, body) = s.exchange_http(&req, Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sessions().await, baseline + 1);
    let again = s.request(&bound, ACCESS, s.assertion(&s.agent));
    let (status, body) = s.exchange_http(&again, Some(&proof)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    assert_eq!(
        s.sessions().await,
        baseline + 1,
        "a replayed proof mints nothing"
    );
}

#[tokio::test]
async fn an_agent_assertion_names_this_server_as_its_one_audience() {
    let s = stack_with(|b, _| b).await;
    let user = s
        .idp
        .login("alice", &["openid", "profile", "hr:read"])
        .await
        .unwrap()
        .access_token;
    let assertion = |aud: Value| {
        let now = tether_token::unix_now();
        s.agent
            .key
            .sign_raw(
                &json!({"alg": "ES256", "typ": "JWT", "kid": s.agent.key.kid()}),
                &json!({"iss": "hr-assistant", "sub": "hr-assistant", "aud": aud, "iat": now,
                        "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string()}),
            )
            .unwrap()
    };
    let issuer = s.identity.issuer().to_owned();
    let endpoint = s.identity.token_endpoint();
    // The issuer identifier (RFC 7523bis), the token endpoint (compatibility),
    // each alone or as an array of one.
    for aud in [json!(issuer), json!(endpoint), json!([issuer])] {
        s.exchange(s.request(&user, ACCESS, assertion(aud.clone())))
            .await
            .unwrap_or_else(|e| panic!("aud {aud}: {}", e.message()));
    }
    let baseline = s.sessions().await;
    for (name, aud) in [
        (
            "assertion aud: this server and another",
            json!([issuer, "https://other.example"]),
        ),
        (
            "assertion aud: another and this endpoint",
            json!(["https://other.example/token", endpoint]),
        ),
        (
            "assertion aud: both of this server's names",
            json!([issuer, endpoint]),
        ),
        ("assertion aud: an empty array", json!([])),
    ] {
        s.assert_refused(
            name,
            || s.request(&user, ACCESS, assertion(aud.clone())),
            (Code::Unauthenticated, "invalid_client"),
            "rejected",
        )
        .await;
    }
    assert_eq!(s.sessions().await, baseline, "nothing minted");
}
