//! Identity exchange end to end: the real test IdP (oidc-provider), the
//! real service on loopback (gRPC and HTTP), SQLite, and `libs/token`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tether_integration_tests::eventually;
use tether_integration_tests::identity::{
    CLIENT_ASSERTION_TYPE, FACADE_AUDIENCE, IdentitySandbox, TestAgent,
};
use tether_integration_tests::idp::{API_RESOURCE, Idp};
use tether_proto::identity::v1::{
    ExchangeRequest, ExchangeResponse, IntrospectRequest, RevokeSessionRequest,
};
use tether_token::{
    DelegatedTokenVerifier, GrpcRevocationFeed, JwksCache, RevocationList, SigningKey, TokenError,
};
use tonic::Code;

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const ID: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const INTENT: &str =
    r#"[{"type":"hr_record_access","actions":["read"],"identifier":"employee/1042"}]"#;

struct Stack {
    idp: Idp,
    identity: IdentitySandbox,
    agent: TestAgent,
    sub_agent: TestAgent,
    third_agent: TestAgent,
}

async fn stack_with(
    configure: impl FnOnce(
        tether_integration_tests::identity::IdentitySandboxBuilder,
    ) -> tether_integration_tests::identity::IdentitySandboxBuilder,
) -> Stack {
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let sub_agent = TestAgent::new("report-writer").unwrap();
    let third_agent = TestAgent::new("formatter").unwrap();
    let builder = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read", "hr:offboard"], &["hr"])
        .agent(&sub_agent, &["hr:read"], &["hr"])
        .agent(&third_agent, &["hr:read"], &["hr"])
        .may_delegate("hr-assistant", "report-writer");
    let identity = configure(builder).start().await.unwrap();
    Stack {
        idp,
        identity,
        agent,
        sub_agent,
        third_agent,
    }
}

async fn stack() -> Stack {
    stack_with(|b| b).await
}

/// A user access token for alice (in group `hr`), from the real IdP.
async fn alice_token(idp: &Idp) -> String {
    idp.login("alice", &["openid", "profile", "email", "hr:read"])
        .await
        .unwrap()
        .access_token
}

/// An exchange of `subject` by `actor` for the facade, scope `hr:read`,
/// with the standard intent.
fn exchange_request(subject: &str, subject_type: &str, actor: String) -> ExchangeRequest {
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

impl Stack {
    fn request(&self, subject: &str, subject_type: &str, actor: String) -> ExchangeRequest {
        exchange_request(subject, subject_type, actor)
    }

    fn assertion(&self, agent: &TestAgent) -> String {
        agent.assertion(&self.identity.token_endpoint()).unwrap()
    }

    async fn alice(&self) -> String {
        alice_token(&self.idp).await
    }

    async fn exchange(&self, req: ExchangeRequest) -> Result<ExchangeResponse, tonic::Status> {
        self.identity
            .client()
            .exchange(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// `fields` plus `agent`'s client authentication (a fresh
    /// `private_key_jwt` assertion for the endpoint `path`).
    fn authenticated(
        &self,
        agent: &TestAgent,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let audience = format!("{}{path}", self.identity.issuer());
        agent
            .client_auth(&audience)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(
                fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
            .collect()
    }

    /// POSTs `form` to the endpoint `path`.
    async fn post<F: serde::Serialize + ?Sized>(&self, path: &str, form: &F) -> reqwest::Response {
        self.identity
            .http()
            .post(format!("{}{path}", self.identity.issuer()))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// `agent` introspects `token` over HTTP (RFC 7662); the answer is 200.
    async fn introspect_as(&self, agent: &TestAgent, token: &str) -> Value {
        let response = self
            .post(
                "/introspect",
                &self.authenticated(agent, "/introspect", &[("token", token)]),
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        response.json().await.unwrap()
    }

    /// When the session `sid` was revoked, per the store.
    async fn revoked_at(&self, sid: &str) -> Option<i64> {
        let url = tether_store::sqlite_url(&self.identity.store_path());
        let pool = tether_store::open(
            &url,
            "identity_exchange",
            &tether_store::PoolSettings::default(),
        )
        .await
        .unwrap();
        let row: (Option<i64>,) = sqlx::query_as("SELECT revoked_at FROM sessions WHERE sid = ?")
            .bind(sid)
            .fetch_one(&pool)
            .await
            .unwrap();
        row.0
    }

    async fn sessions(&self) -> i64 {
        self.identity.session_count().await.unwrap()
    }

    /// A `libs/token` verifier as another service would hold it.
    async fn verifier(
        &self,
    ) -> (
        DelegatedTokenVerifier<JwksCache, Arc<RevocationList>>,
        Arc<RevocationList>,
    ) {
        let http = self.identity.http();
        let keys = JwksCache::new(
            format!("{}/.well-known/jwks.json", self.identity.issuer()),
            http,
        );
        let list = Arc::new(RevocationList::new(Duration::from_secs(30)));
        self.sync(&list).await;
        let verifier = DelegatedTokenVerifier::new(
            self.identity.issuer().into(),
            FACADE_AUDIENCE.into(),
            keys,
            Arc::clone(&list),
        );
        (verifier, list)
    }

    /// One sync through the feed every service uses (`libs/token`).
    async fn sync(&self, list: &RevocationList) {
        list.sync_from(&GrpcRevocationFeed::new(self.identity.client()))
            .await
            .unwrap();
    }
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn login_exchange_and_verify_with_libs_token() {
    let s = stack().await;
    let login = s
        .idp
        .login("alice", &["openid", "profile", "email", "hr:read"])
        .await
        .unwrap();
    assert_eq!(login.subject, "alice");

    let resp = s
        .exchange(s.request(&login.access_token, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    assert_eq!(resp.token_type, "Bearer");
    assert_eq!(resp.issued_token_type, ACCESS);
    assert_eq!(resp.scope, "hr:read");
    assert_eq!(resp.audience, FACADE_AUDIENCE);
    assert!(
        resp.expires_in > 0 && resp.expires_in <= 900,
        "{}",
        resp.expires_in
    );
    assert!(resp.sid.starts_with("s_"));
    assert_eq!(header_of(&resp.access_token)["typ"], "at+jwt");
    assert_eq!(header_of(&resp.access_token)["alg"], "ES256");

    let (verifier, _) = s.verifier().await;
    let claims = verifier.verify(&resp.access_token).await.unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.act.sub, "hr-assistant");
    assert!(claims.act.act.is_none());
    assert_eq!(claims.sid, resp.sid);
    assert_eq!(claims.aud, FACADE_AUDIENCE);
    assert_eq!(claims.user["groups"], json!(["hr"]));
    assert_eq!(claims.user["department"], "people");
    assert_eq!(
        claims.user["idp"],
        s.idp.issuer(),
        "the user is named with their IdP"
    );
    assert_eq!(
        claims.authorization_details,
        Some(serde_json::from_str::<Value>(INTENT).unwrap())
    );

    let intro = s
        .identity
        .client()
        .introspect(IntrospectRequest {
            token: resp.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(intro.active);
    assert_eq!(intro.sid, resp.sid);
    assert_eq!(intro.act.unwrap().sub, "hr-assistant");
    assert_eq!(intro.iss, s.identity.issuer());

    // An ID token works as subject too (its audience is the CLI's client id).
    let resp = s
        .exchange(ExchangeRequest {
            scope: String::new(),
            ..s.request(&login.id_token, ID, s.assertion(&s.agent))
        })
        .await
        .unwrap();
    assert_eq!(
        verifier.verify(&resp.access_token).await.unwrap().sub,
        "alice"
    );
    assert_eq!(s.sessions().await, 2);

    // The same exchange over HTTP, as a standard OAuth client would do it.
    let http = s.identity.http();
    let body: Value = http
        .post(format!("{}/token", s.identity.issuer()))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", login.access_token.as_str()),
            ("subject_token_type", ACCESS),
            ("actor_token", s.assertion(&s.agent).as_str()),
            ("actor_token_type", JWT),
            ("audience", FACADE_AUDIENCE),
            ("scope", "hr:read"),
            ("authorization_details", INTENT),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["issued_token_type"], ACCESS);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(verifier.verify(token).await.unwrap().sub, "alice");
    let meta: Value = http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            s.identity.issuer()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], s.identity.issuer());
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/token", s.identity.issuer())
    );
    for field in [
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ] {
        assert_eq!(
            meta[field],
            json!(["private_key_jwt", "tls_client_auth"]),
            "{field}"
        );
    }
    let intro: Value = http
        .post(format!("{}/introspect", s.identity.issuer()))
        .form(&s.authenticated(&s.agent, "/introspect", &[("token", token)]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intro["active"], true);
    assert_eq!(intro["act"]["sub"], "hr-assistant");
}

#[tokio::test]
async fn re_exchange_for_a_sub_agent_nests_act_and_keeps_the_session() {
    let s = stack_with(|b| {
        b.max_delegation_depth(2)
            .may_delegate("report-writer", "formatter")
    })
    .await;
    let user = s.alice().await;
    let parent = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();

    let child_req = ExchangeRequest {
        authorization_details: String::new(),
        ..s.request(&parent.access_token, ACCESS, s.assertion(&s.sub_agent))
    };
    let child = s.exchange(child_req).await.unwrap();
    assert_eq!(child.sid, parent.sid);
    let (verifier, _) = s.verifier().await;
    let claims = verifier.verify(&child.access_token).await.unwrap();
    assert_eq!(claims.act.chain(), ["report-writer", "hr-assistant"]);
    assert_eq!(claims.sub, "alice");
    assert!(claims.exp <= parent.expires_at.unwrap().seconds);
    assert_eq!(
        claims.authorization_details,
        Some(serde_json::from_str::<Value>(INTENT).unwrap())
    );

    // The intent cannot be replaced on re-exchange.
    let err = s
        .exchange(s.request(&parent.access_token, ACCESS, s.assertion(&s.sub_agent)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A third hop exceeds the depth limit of 2.
    let third = ExchangeRequest {
        authorization_details: String::new(),
        ..s.request(&child.access_token, ACCESS, s.assertion(&s.third_agent))
    };
    let err = s.exchange(third).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("delegation chain would be 3 deep, the limit is 2"),
        "{}",
        err.message()
    );
    assert_eq!(s.sessions().await, 1);
}

#[tokio::test]
async fn key_rotation_keeps_tokens_signed_by_the_old_key_valid() {
    let s = stack_with(|b| b.rotate_after_secs(2)).await;
    let user = s.alice().await;
    let old = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let old_kid = header_of(&old.access_token)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let stack = &s;
    let new = eventually(Duration::from_secs(15), || {
        let req = stack.request(&user, ACCESS, stack.assertion(&stack.agent));
        let old_kid = old_kid.clone();
        async move {
            let resp = stack.exchange(req).await.map_err(|e| e.to_string())?;
            if header_of(&resp.access_token)["kid"] == old_kid.as_str() {
                Err("not rotated yet".to_string())
            } else {
                Ok(resp)
            }
        }
    })
    .await
    .unwrap();
    let (verifier, _) = s.verifier().await;
    assert_eq!(
        verifier.verify(&new.access_token).await.unwrap().sub,
        "alice"
    );
    assert_eq!(
        verifier.verify(&old.access_token).await.unwrap().sub,
        "alice"
    );
    let jwks: Value = s
        .identity
        .http()
        .get(format!("{}/.well-known/jwks.json", s.identity.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(jwks["keys"].as_array().unwrap().len() >= 2);
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none()),
        "no private key is published"
    );
}

#[tokio::test]
async fn revoking_a_session_deactivates_its_tokens_everywhere() {
    let s = stack().await;
    let user = s.alice().await;
    let resp = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let (verifier, list) = s.verifier().await;
    assert!(verifier.verify(&resp.access_token).await.is_ok());

    let mut client = s.identity.client();
    let revoked = client
        .revoke_session(RevokeSessionRequest {
            sid: resp.sid.clone(),
            reason: "session ended by agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.already_revoked);
    let again = client
        .revoke_session(RevokeSessionRequest {
            sid: resp.sid.clone(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_revoked);
    assert_eq!(again.revoked_at, revoked.revoked_at);

    let intro = client
        .introspect(IntrospectRequest {
            token: resp.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!intro.active);
    assert!(
        intro.sid.is_empty() && intro.sub.is_empty(),
        "an inactive answer discloses nothing"
    );

    s.sync(&list).await;
    assert_eq!(
        verifier.verify(&resp.access_token).await.unwrap_err(),
        TokenError::SessionRevoked
    );

    // A revoked session cannot be extended to a sub-agent.
    let err = s
        .exchange(ExchangeRequest {
            authorization_details: String::new(),
            ..s.request(&resp.access_token, ACCESS, s.assertion(&s.sub_agent))
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let err = client
        .revoke_session(RevokeSessionRequest {
            sid: "s_never_minted".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // RFC 7009 over HTTP ends the session of the token presented.
    let second = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let status = s
        .identity
        .http()
        .post(format!("{}/revoke", s.identity.issuer()))
        .form(&s.authenticated(
            &s.agent,
            "/revoke",
            &[("token", second.access_token.as_str())],
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    s.sync(&list).await;
    assert_eq!(
        verifier.verify(&second.access_token).await.unwrap_err(),
        TokenError::SessionRevoked
    );
}

/// Asserts a 401 `invalid_client` answer (RFC 6749 §5.2) and returns its
/// description.
async fn assert_invalid_client(response: reqwest::Response, case: &str) -> String {
    assert_eq!(response.status(), 401, "{case}");
    assert_eq!(response.headers()["cache-control"], "no-store", "{case}");
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="tether", error="invalid_client""#,
        "{case}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{case}: {body}");
    assert!(body.get("active").is_none(), "{case}: nothing revealed");
    body["error_description"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn introspect_and_revoke_refuse_unauthenticated_clients() {
    // Failed attempts share one budget per address: room for every case.
    let s = stack_with(|b| b.oauth_rate_limit(60, 100)).await;
    let user = s.alice().await;
    let minted = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let token = minted.access_token.as_str();
    let now = tether_token::unix_now();
    let endpoint = |path: &str| format!("{}{path}", s.identity.issuer());
    let signed = |agent: &TestAgent, claims: Value| {
        agent
            .key
            .sign_raw(
                &json!({"alg": "ES256", "typ": "JWT", "kid": agent.key.kid()}),
                &claims,
            )
            .unwrap()
    };
    let impostor = TestAgent {
        id: s.agent.id.clone(),
        key: SigningKey::generate().unwrap(),
    };
    let ghost = TestAgent::new("ghost-agent").unwrap();

    for path in ["/introspect", "/revoke"] {
        // A replayed assertion: its first use succeeds.
        let used = s.agent.assertion(&endpoint(path)).unwrap();
        let first = s
            .post(
                path,
                &[
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", used.as_str()),
                    ("token", "not-a-token"),
                ],
            )
            .await;
        assert_eq!(first.status(), 200, "{path}: the premise");

        let assertion = |a: String| {
            vec![
                ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
                ("client_assertion", a),
                ("token", token.to_owned()),
            ]
        };
        // (case, form fields, what the description says)
        type Case = (&'static str, Vec<(&'static str, String)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "no client authentication",
                vec![("token", token.to_owned())],
                "client authentication is required",
            ),
            (
                "a `client_id` alone",
                vec![
                    ("client_id", s.agent.id.clone()),
                    ("token", token.to_owned()),
                ],
                "client authentication is required",
            ),
            (
                "assertion signed by an unregistered key",
                assertion(impostor.assertion(&endpoint(path)).unwrap()),
                "signing key",
            ),
            (
                "assertion with a forged signature",
                assertion({
                    let good = s.agent.assertion(&endpoint(path)).unwrap();
                    let (head, _) = good.rsplit_once('.').unwrap();
                    let other = s.sub_agent.assertion(&endpoint(path)).unwrap();
                    format!("{head}.{}", other.rsplit_once('.').unwrap().1)
                }),
                "signature is invalid",
            ),
            (
                "unknown agent",
                assertion(ghost.assertion(&endpoint(path)).unwrap()),
                "agent `ghost-agent` is not registered",
            ),
            (
                "replayed assertion",
                assertion(used.clone()),
                "already used",
            ),
            (
                "expired assertion",
                assertion(signed(
                    &s.agent,
                    json!({
                        "iss": s.agent.id, "sub": s.agent.id, "aud": endpoint(path),
                        "iat": now - 200, "exp": now - 100, "jti": uuid::Uuid::new_v4().to_string(),
                    }),
                )),
                "expired",
            ),
            (
                "assertion without a `jti`",
                assertion(signed(
                    &s.agent,
                    json!({
                        "iss": s.agent.id, "sub": s.agent.id, "aud": endpoint(path),
                        "iat": now, "exp": now + 60,
                    }),
                )),
                "single-use `jti`",
            ),
            (
                "assertion for another audience",
                assertion(
                    s.agent
                        .assertion("https://other.example/introspect")
                        .unwrap(),
                ),
                "audience",
            ),
            (
                "`client_id` naming another agent",
                vec![
                    ("client_id", s.sub_agent.id.clone()),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
                    (
                        "client_assertion",
                        s.agent.assertion(&endpoint(path)).unwrap(),
                    ),
                    ("token", token.to_owned()),
                ],
                "`client_id` `report-writer` is not the assertion's `iss`",
            ),
            (
                "unsupported `client_assertion_type`",
                vec![
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".to_owned(),
                    ),
                    (
                        "client_assertion",
                        s.agent.assertion(&endpoint(path)).unwrap(),
                    ),
                    ("token", token.to_owned()),
                ],
                "`client_assertion_type` must be",
            ),
            (
                "a user's token as the assertion",
                assertion(user.clone()),
                "not registered",
            ),
        ];
        for (case, form, expected) in cases {
            let description = assert_invalid_client(s.post(path, &form).await, case).await;
            assert!(
                description.contains(expected),
                "{path}, {case}: {description}"
            );
            for secret in [token, user.as_str()] {
                assert!(!description.contains(&secret[secret.len() - 24..]));
            }
        }
    }

    // Nothing was revoked: the session stands, for its agent and in the store.
    assert_eq!(s.revoked_at(&minted.sid).await, None);
    let intro = s.introspect_as(&s.agent, token).await;
    assert_eq!(intro["active"], true);
    assert_eq!(intro["sid"], minted.sid.as_str());
}

#[tokio::test]
async fn an_agent_introspects_only_its_own_tokens() {
    let s = stack().await;
    let user = s.alice().await;
    let minted = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let token = minted.access_token.as_str();

    let intro = s.introspect_as(&s.agent, token).await;
    assert_eq!(intro["active"], true);
    assert_eq!(intro["sub"], "alice");
    assert_eq!(intro["act"]["sub"], "hr-assistant");
    assert_eq!(intro["client_id"], "hr-assistant");
    assert_eq!(intro["sid"], minted.sid.as_str());
    assert_eq!(intro["aud"], FACADE_AUDIENCE);
    assert_eq!(intro["scope"], "hr:read");
    assert_eq!(intro["iss"], s.identity.issuer());
    assert!(intro["exp"].as_i64().unwrap() > tether_token::unix_now());
    assert_eq!(
        intro["authorization_details"],
        serde_json::from_str::<Value>(INTENT).unwrap()
    );

    // Another registered agent learns nothing, not even that it exists.
    let other = s.introspect_as(&s.sub_agent, token).await;
    assert_eq!(other, json!({"active": false}));
    assert_eq!(
        s.introspect_as(&s.sub_agent, "not-a-token").await,
        other,
        "indistinguishable from garbage"
    );

    // `aud` may name the issuer or its token endpoint too, and `client_id`
    // may repeat the agent's id.
    for audience in [s.identity.issuer().to_owned(), s.identity.token_endpoint()] {
        let mut form: Vec<(&str, String)> = s.agent.client_auth(&audience).unwrap().into();
        form.push(("client_id", s.agent.id.clone()));
        form.push(("token", token.to_owned()));
        let body: Value = s.post("/introspect", &form).await.json().await.unwrap();
        assert_eq!(body["active"], true, "aud {audience}: {body}");
    }

    // A sub-agent's token is the sub-agent's: the parent is no longer its
    // current actor.
    let child = s
        .exchange(ExchangeRequest {
            authorization_details: String::new(),
            ..s.request(token, ACCESS, s.assertion(&s.sub_agent))
        })
        .await
        .unwrap();
    let intro = s.introspect_as(&s.sub_agent, &child.access_token).await;
    assert_eq!(intro["active"], true);
    assert_eq!(intro["act"]["sub"], "report-writer");
    assert_eq!(intro["act"]["act"]["sub"], "hr-assistant");
    assert_eq!(
        s.introspect_as(&s.agent, &child.access_token).await,
        json!({"active": false})
    );

    // A missing `token` is the caller's error, after authentication.
    let response = s
        .post(
            "/introspect",
            &s.authenticated(&s.agent, "/introspect", &[]),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn an_agent_revokes_only_its_own_tokens() {
    let s = stack().await;
    let user = s.alice().await;
    let minted = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let token = minted.access_token.as_str();
    let (verifier, list) = s.verifier().await;

    // RFC 7009 §2.2: 200 for another agent's token, and nothing revoked.
    let response = s
        .post(
            "/revoke",
            &s.authenticated(&s.third_agent, "/revoke", &[("token", token)]),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(s.revoked_at(&minted.sid).await, None, "nothing was revoked");
    assert_eq!(s.introspect_as(&s.agent, token).await["active"], true);
    s.sync(&list).await;
    assert!(verifier.verify(token).await.is_ok());

    // Garbage and unknown tokens are 200 too.
    let response = s
        .post(
            "/revoke",
            &s.authenticated(&s.third_agent, "/revoke", &[("token", "not-a-token")]),
        )
        .await;
    assert_eq!(response.status(), 200);

    // Its own agent ends it.
    let response = s
        .post(
            "/revoke",
            &s.authenticated(&s.agent, "/revoke", &[("token", token)]),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(s.revoked_at(&minted.sid).await.is_some());
    assert_eq!(
        s.introspect_as(&s.agent, token).await,
        json!({"active": false})
    );
    s.sync(&list).await;
    assert_eq!(
        verifier.verify(token).await.unwrap_err(),
        TokenError::SessionRevoked
    );
}

#[tokio::test]
async fn introspect_and_revoke_are_rate_limited_per_client() {
    let s = stack_with(|b| b.oauth_rate_limit(1, 2)).await;
    let user = s.alice().await;
    let minted = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let token = minted.access_token.as_str();

    // A burst of 2, then one a minute.
    assert_eq!(s.introspect_as(&s.agent, token).await["active"], true);
    assert_eq!(s.introspect_as(&s.agent, token).await["active"], true);
    let limited = s
        .post(
            "/revoke",
            &s.authenticated(&s.agent, "/revoke", &[("token", token)]),
        )
        .await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["cache-control"], "no-store");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "slow_down", "{body}");
    assert_eq!(s.revoked_at(&minted.sid).await, None, "nothing was revoked");

    // Another client has a budget of its own.
    assert_eq!(
        s.introspect_as(&s.sub_agent, token).await,
        json!({"active": false})
    );

    // Failed authentication is limited too (per source address).
    for _ in 0..2 {
        assert_invalid_client(s.post("/introspect", &[("token", token)]).await, "no auth").await;
    }
    let limited = s.post("/revoke", &[("token", token)]).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "slow_down", "{body}");
    assert_eq!(s.revoked_at(&minted.sid).await, None);
}

#[tokio::test]
async fn an_unreachable_idp_is_unavailable_and_nothing_is_minted() {
    let mut s = stack().await;
    let user = s.alice().await;
    s.idp.stop().await.unwrap();
    let err = s
        .exchange(s.request(&user, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains(&user[..20]));
    let status = s
        .identity
        .http()
        .post(format!("{}/token", s.identity.issuer()))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", user.as_str()),
            ("subject_token_type", ACCESS),
            ("actor_token", s.assertion(&s.agent).as_str()),
            ("actor_token_type", JWT),
            ("audience", FACADE_AUDIENCE),
            ("authorization_details", INTENT),
        ])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
    assert_eq!(s.sessions().await, 0);
}

/// A subject token signed with `key`, from `claims` merged over a valid
/// access token's claims, with `header` merged over a valid header.
fn forge(key: &SigningKey, idp: &Idp, header: Value, claims: Value) -> String {
    let now = tether_token::unix_now();
    let mut h = json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid()});
    let mut c = json!({
        "iss": idp.issuer(), "sub": "alice", "aud": API_RESOURCE, "iat": now, "exp": now + 600,
        "scope": "openid hr:read", "groups": ["hr"], "client_id": "tether-cli", "jti": uuid::Uuid::new_v4().to_string(),
    });
    for (k, v) in header.as_object().unwrap() {
        if v.is_null() {
            h.as_object_mut().unwrap().remove(k);
        } else {
            h[k] = v.clone();
        }
    }
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    key.sign_raw(&h, &c).unwrap()
}

#[tokio::test]
async fn every_bad_input_is_refused_over_grpc_and_http_and_nothing_is_minted() {
    let s = stack().await;
    let idp_key = s.idp.key();
    let attacker = SigningKey::generate().unwrap();
    let now = tether_token::unix_now();
    let good = forge(idp_key, &s.idp, json!({}), json!({}));
    // Premise: the forged-but-valid token is accepted (so each case below
    // fails for its own reason only).
    let ok = s
        .exchange(s.request(&good, ACCESS, s.assertion(&s.agent)))
        .await
        .unwrap();
    let baseline = s.sessions().await;
    assert_eq!(baseline, 1);
    drop(ok);

    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "at+jwt"})),
        good.split('.').nth(1).unwrap()
    );
    let public_jwk = serde_json::to_string(idp_key.public_jwk()).unwrap();
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(idp_key.kid().into());
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(good.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(public_jwk.as_bytes()),
        )
        .unwrap()
    };
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = "carol".into();
        parts[1] = b64(claims);
        parts.join(".")
    };
    let bob = s
        .idp
        .login("bob", &["openid", "profile", "hr:read"])
        .await
        .unwrap()
        .access_token;
    let alice = s.alice().await;

    // (name, subject token, subject type, audience, scope, intent, gRPC code, OAuth error, HTTP status)
    struct Case {
        name: &'static str,
        subject: String,
        subject_type: &'static str,
        audience: &'static str,
        scope: &'static str,
        intent: &'static str,
        actor: Option<String>,
        code: Code,
        error: &'static str,
        http: u16,
    }
    let case = |name, subject: String, code, error: &'static str| Case {
        name,
        subject,
        subject_type: ACCESS,
        audience: FACADE_AUDIENCE,
        scope: "hr:read",
        intent: INTENT,
        actor: None,
        code,
        error,
        http: if error == "invalid_client" { 401 } else { 400 },
    };
    let grant = |name, subject| case(name, subject, Code::Unauthenticated, "invalid_grant");
    let mut cases = vec![
        grant("alg none", alg_none),
        grant("HS256 signed with the IdP's public key", hs256),
        grant("tampered payload", tampered),
        grant(
            "expired",
            forge(
                idp_key,
                &s.idp,
                json!({}),
                json!({"exp": now - 120, "iat": now - 700}),
            ),
        ),
        grant(
            "nbf in the future",
            forge(idp_key, &s.idp, json!({}), json!({"nbf": now + 600})),
        ),
        grant(
            "empty sub",
            forge(idp_key, &s.idp, json!({}), json!({"sub": ""})),
        ),
        grant(
            "an aud array that also names an untrusted audience",
            forge(
                idp_key,
                &s.idp,
                json!({}),
                json!({"aud": [API_RESOURCE, "https://payments.example"]}),
            ),
        ),
        grant(
            "wrong iss",
            forge(
                idp_key,
                &s.idp,
                json!({}),
                json!({"iss": "https://evil.example"}),
            ),
        ),
        grant(
            "wrong aud",
            forge(
                idp_key,
                &s.idp,
                json!({}),
                json!({"aud": "https://other.example"}),
            ),
        ),
        grant(
            "wrong typ",
            forge(idp_key, &s.idp, json!({"typ": "JWT"}), json!({})),
        ),
        grant(
            "unknown kid",
            forge(&attacker, &s.idp, json!({"kid": "attacker-kid"}), json!({})),
        ),
        grant(
            "jku header",
            forge(
                &attacker,
                &s.idp,
                json!({"kid": attacker.kid(), "jku": "http://127.0.0.1:9/jwks"}),
                json!({}),
            ),
        ),
        grant(
            "x5u header",
            forge(
                &attacker,
                &s.idp,
                json!({"kid": attacker.kid(), "x5u": "http://127.0.0.1:9/cert"}),
                json!({}),
            ),
        ),
        grant(
            "embedded jwk",
            forge(
                &attacker,
                &s.idp,
                json!({"kid": attacker.kid(), "jwk": serde_json::to_value(attacker.public_jwk()).unwrap()}),
                json!({}),
            ),
        ),
        grant(
            "unknown crit",
            forge(
                idp_key,
                &s.idp,
                json!({"crit": ["exp-v2"], "exp-v2": 1}),
                json!({}),
            ),
        ),
        grant(
            "untrusted issuer",
            forge(
                &attacker,
                &s.idp,
                json!({}),
                json!({"iss": "https://untrusted.example"}),
            ),
        ),
        case(
            "oversized token",
            "a".repeat(20 * 1024),
            Code::InvalidArgument,
            "invalid_request",
        ),
        case(
            "empty subject token with a valid actor",
            String::new(),
            Code::InvalidArgument,
            "invalid_request",
        ),
        Case {
            scope: "hr:offboard",
            ..case(
                "scope wider than the user's",
                alice.clone(),
                Code::PermissionDenied,
                "invalid_scope",
            )
        },
        Case {
            audience: "https://payroll.example",
            ..case(
                "audience the agent may not get",
                alice.clone(),
                Code::PermissionDenied,
                "invalid_target",
            )
        },
        case(
            "a user the agent may not act for",
            bob,
            Code::PermissionDenied,
            "unauthorized_client",
        ),
        Case {
            intent: "",
            ..case(
                "no declared intent",
                alice.clone(),
                Code::InvalidArgument,
                "invalid_request",
            )
        },
        Case {
            intent: "{\"type\":\"x\"}",
            ..case(
                "intent not an RFC 9396 array",
                alice.clone(),
                Code::InvalidArgument,
                "invalid_request",
            )
        },
        Case {
            subject_type: "urn:ietf:params:oauth:token-type:saml2",
            ..case(
                "unsupported subject token type",
                alice.clone(),
                Code::InvalidArgument,
                "invalid_request",
            )
        },
        Case {
            actor: Some(
                TestAgent {
                    id: "hr-assistant".into(),
                    key: SigningKey::generate().unwrap(),
                }
                .assertion(&s.identity.token_endpoint())
                .unwrap(),
            ),
            ..case(
                "actor assertion signed by an unregistered key",
                alice.clone(),
                Code::Unauthenticated,
                "invalid_client",
            )
        },
        Case {
            actor: Some(
                TestAgent::new("ghost-agent")
                    .unwrap()
                    .assertion(&s.identity.token_endpoint())
                    .unwrap(),
            ),
            ..case(
                "unknown agent",
                alice.clone(),
                Code::Unauthenticated,
                "invalid_client",
            )
        },
        Case {
            actor: Some(s.agent.assertion("https://other.example/token").unwrap()),
            ..case(
                "actor assertion for another audience",
                alice.clone(),
                Code::Unauthenticated,
                "invalid_client",
            )
        },
    ];

    // A replayed assertion: first used by a (failing) exchange, then again.
    let used = s.assertion(&s.agent);
    let first = s
        .exchange(ExchangeRequest {
            subject_token: "not.a.token".into(),
            ..s.request(&alice, ACCESS, used.clone())
        })
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::Unauthenticated);
    cases.push(Case {
        actor: Some(used),
        ..case(
            "replayed actor assertion",
            alice.clone(),
            Code::Unauthenticated,
            "invalid_client",
        )
    });

    let http = s.identity.http();
    for c in &cases {
        let actor = c.actor.clone().unwrap_or_else(|| s.assertion(&s.agent));
        let req = ExchangeRequest {
            subject_token: c.subject.clone(),
            subject_token_type: c.subject_type.into(),
            actor_token: actor,
            actor_token_type: JWT.into(),
            audience: c.audience.into(),
            scope: c.scope.into(),
            requested_token_type: String::new(),
            authorization_details: c.intent.into(),
        };
        let err = s.exchange(req).await.expect_err(c.name);
        assert_eq!(err.code(), c.code, "{}: {}", c.name, err.message());
        let details = tonic_types::StatusExt::get_details_error_info(&err).expect(c.name);
        assert_eq!(details.reason, c.error.to_ascii_uppercase(), "{}", c.name);
        if c.subject.len() > 30 {
            assert!(
                !err.message().contains(&c.subject[..30]),
                "{}: token echoed",
                c.name
            );
        }

        // Same request over HTTP (a fresh assertion unless the case is about the actor).
        let actor = match &c.actor {
            Some(a) => a.clone(),
            None => s.assertion(&s.agent),
        };
        let response = http
            .post(format!("{}/token", s.identity.issuer()))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", c.subject.as_str()),
                ("subject_token_type", c.subject_type),
                ("actor_token", actor.as_str()),
                ("actor_token_type", JWT),
                ("audience", c.audience),
                ("scope", c.scope),
                ("authorization_details", c.intent),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{}",
            c.name
        );
        let body: Value = response.json().await.unwrap();
        let expected_error = if c.name == "replayed actor assertion" || c.actor.is_some() {
            "invalid_client"
        } else {
            c.error
        };
        assert_eq!(body["error"], expected_error, "{}: {body}", c.name);
        assert_eq!(
            status,
            if expected_error == "invalid_client" {
                401
            } else {
                c.http
            },
            "{}",
            c.name
        );
        assert!(body.get("access_token").is_none());
    }
    assert_eq!(
        s.sessions().await,
        baseline,
        "nothing was minted by any bad request"
    );
}

#[tokio::test]
async fn the_replay_cache_survives_a_restart() {
    let Stack {
        idp,
        identity,
        agent,
        ..
    } = stack().await;
    let user = alice_token(&idp).await;
    let assertion = agent
        .assertion_valid_for(&identity.token_endpoint(), 120)
        .unwrap();
    let request = exchange_request(&user, ACCESS, assertion.clone());
    identity.client().exchange(request.clone()).await.unwrap();
    let identity = identity.restart().await.unwrap();
    let err = identity
        .client()
        .exchange(request.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("already used"), "{}", err.message());
    // A fresh assertion still works after the restart (same keys, same store).
    let fresh = ExchangeRequest {
        actor_token: agent.assertion(&identity.token_endpoint()).unwrap(),
        ..request
    };
    identity.client().exchange(fresh).await.unwrap();
}

#[tokio::test]
async fn a_spiffe_jwt_svid_is_an_actor_token_when_a_bundle_is_configured() {
    let idp = Idp::start().await.unwrap();
    let bundle = SigningKey::generate().unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .spiffe_bundle("example.org", &bundle)
        .spiffe_agent(
            "summarizer",
            "spiffe://example.org/agents/summarizer",
            &["hr:read"],
            &["hr"],
        )
        .start()
        .await
        .unwrap();
    let user = alice_token(&idp).await;
    let now = tether_token::unix_now();
    let svid = |key: &SigningKey, sub: &str| {
        key.sign_raw(
            &json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()}),
            &json!({"iss": "https://spire.example.org", "sub": sub, "aud": [identity.token_endpoint()], "iat": now, "exp": now + 120}),
        )
        .unwrap()
    };
    let request = |actor: String| exchange_request(&user, ACCESS, actor);
    let mut client = identity.client();
    let resp = client
        .exchange(request(svid(
            &bundle,
            "spiffe://example.org/agents/summarizer",
        )))
        .await
        .unwrap()
        .into_inner();
    let intro = client
        .introspect(IntrospectRequest {
            token: resp.access_token,
            token_type_hint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        intro.act.unwrap().sub,
        "spiffe://example.org/agents/summarizer"
    );

    let attacker = SigningKey::generate().unwrap();
    for (name, actor) in [
        (
            "signed outside the bundle",
            svid(&attacker, "spiffe://example.org/agents/summarizer"),
        ),
        (
            "another trust domain",
            svid(&bundle, "spiffe://evil.org/agents/summarizer"),
        ),
        (
            "an unregistered workload",
            svid(&bundle, "spiffe://example.org/agents/unknown"),
        ),
    ] {
        let err = client.exchange(request(actor)).await.expect_err(name);
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{name}: {}",
            err.message()
        );
    }
}

#[tokio::test]
async fn sessions_and_replay_cache_live_in_postgresql_when_configured() {
    let pg = tether_integration_tests::postgres::PgCluster::start()
        .await
        .unwrap();
    pg.create_database("tether").await.unwrap();
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .store_url(pg.admin_url("tether"))
        .start()
        .await
        .unwrap();
    let user = alice_token(&idp).await;
    let assertion = agent.assertion(&identity.token_endpoint()).unwrap();
    let request = exchange_request(&user, ACCESS, assertion);
    let resp = identity
        .client()
        .exchange(request.clone())
        .await
        .unwrap()
        .into_inner();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect_with(
        &pg.options(
            tether_integration_tests::postgres::ADMIN_USER,
            pg.admin_password(),
        )
        .database("tether"),
    )
    .await
    .unwrap();
    let (sub, agent_id): (String, String) =
        sqlx::query_as("SELECT sub, agent FROM identity_exchange.sessions WHERE sid = $1")
            .bind(&resp.sid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!((sub.as_str(), agent_id.as_str()), ("alice", "hr-assistant"));
    identity
        .client()
        .revoke_session(RevokeSessionRequest {
            sid: resp.sid.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let (revoked,): (Option<i64>,) =
        sqlx::query_as("SELECT revoked_at FROM identity_exchange.sessions WHERE sid = $1")
            .bind(&resp.sid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(revoked.is_some());
    let err = identity.client().exchange(request).await.unwrap_err();
    assert!(err.message().contains("already used"), "{}", err.message());
}

#[tokio::test]
async fn a_repeated_form_parameter_is_invalid_request_and_nothing_is_minted() {
    let s = stack().await;
    let user = alice_token(&s.idp).await;
    let http = s.identity.http();
    let baseline = s.sessions().await;
    let params = [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "audience",
        "scope",
        "authorization_details",
    ];
    for repeated in params {
        // A good exchange (a fresh assertion each time), with one parameter
        // sent twice with the same value: "last one wins" would mint.
        let assertion = s.assertion(&s.agent);
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", user.as_str()),
            ("subject_token_type", ACCESS),
            ("actor_token", assertion.as_str()),
            ("actor_token_type", JWT),
            ("audience", FACADE_AUDIENCE),
            ("scope", "hr:read"),
            ("authorization_details", INTENT),
        ];
        let mut body: Vec<(&str, &str)> = form.to_vec();
        let again = form.iter().find(|(name, _)| *name == repeated).unwrap();
        body.push(*again);
        let response = http
            .post(format!("{}/token", s.identity.issuer()))
            .form(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{repeated}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request", "{repeated}: {answer}");
        assert_eq!(
            answer["error_description"],
            format!("`{repeated}` is given more than once"),
        );
        assert!(answer.get("access_token").is_none());
        assert!(!answer.to_string().contains(&user[..30]), "token echoed");
    }
    assert_eq!(s.sessions().await, baseline, "nothing was minted");

    // Introspection and revocation read `token` the same way.
    for endpoint in ["introspect", "revoke"] {
        let response = http
            .post(format!("{}/{endpoint}", s.identity.issuer()))
            .form(&[("token", "a"), ("token", "b")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{endpoint}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request", "{endpoint}: {answer}");
    }
}
