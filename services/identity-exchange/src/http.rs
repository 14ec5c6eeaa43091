//! The OAuth HTTP endpoints, for standard clients: RFC 8693 `/token`,
//! RFC 7517 JWKS, RFC 8414 metadata, RFC 7662 `/introspect`, RFC 7009
//! `/revoke`. Same semantics (and the same code) as the gRPC service.
//!
//! `/introspect` and `/revoke` require client authentication: a registered
//! agent's `private_key_jwt` assertion (RFC 7523; its own tokens only), or
//! the mTLS certificate of an allowed Tether service (RFC 8705
//! `tls_client_auth`; any token). Both are rate-limited per client, and
//! failed attempts per source address.
//!
//! `/token` takes no client authentication; transport-level refusals
//! (size, content type, method) are OAuth errors too: see
//! [`crate::http_refusals`].

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tether_runtime::clip;
use tether_runtime::tls::PeerInfo;

use crate::config::OAuthConfig;
use crate::error::{ExchangeError, OAuthCode};
use crate::exchange::{
    ExchangeInput, Exchanger, GRANT_TYPE_TOKEN_EXCHANGE, OAuthClient, TOKEN_TYPE_ACCESS,
    TOKEN_TYPE_ID, TOKEN_TYPE_JWT,
};

/// Largest form body accepted on any endpoint.
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;

/// RFC 7523 §2.2 `client_assertion_type`.
const CLIENT_ASSERTION_TYPE_JWT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client authentication methods of `/introspect` and `/revoke`
/// (RFC 8414 / RFC 8705 names).
const CLIENT_AUTH_METHODS: [&str; 2] = ["private_key_jwt", "tls_client_auth"];

/// Idle rate-limit buckets are dropped every this many checks, so
/// addresses seen once do not accumulate.
const SWEEP_EVERY: u64 = 4096;

/// The challenge sent with every 401. Neither `private_key_jwt` nor
/// `tls_client_auth` is an HTTP authentication scheme, but RFC 6749 §5.2
/// requires a `WWW-Authenticate` with `invalid_client`: the Bearer scheme
/// (RFC 6750 §3) with the RFC 6749 error code, which challenge parsers
/// understand; the JSON body carries the description.
const CHALLENGE: &str = r#"Bearer realm="tether", error="invalid_client""#;

/// What the handlers share.
struct HttpState {
    exchanger: Arc<Exchanger>,
    services: ServiceClients,
    limiter: DefaultKeyedRateLimiter<RateKey>,
    checks: AtomicU64,
}

pub fn router(
    exchanger: Arc<Exchanger>,
    oauth: &OAuthConfig,
    trust_domain: &str,
) -> anyhow::Result<Router> {
    let per_minute = NonZeroU32::new(oauth.per_client_per_minute)
        .context("oauth.per_client_per_minute must be at least 1")?;
    let burst = NonZeroU32::new(oauth.burst).context("oauth.burst must be at least 1")?;
    let state = Arc::new(HttpState {
        exchanger,
        services: ServiceClients::new(oauth, trust_domain),
        limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
        checks: AtomicU64::new(0),
    });
    Ok(Router::new()
        .route("/token", post(token))
        .route("/introspect", post(introspect))
        .route("/revoke", post(revoke))
        // Only the OAuth endpoints above: their 405 is an OAuth error.
        .route_layer(axum::middleware::map_response(
            crate::http_refusals::method_refusal,
        ))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state))
}

/// What the connection tells about the caller: its verified mTLS identity
/// and its address.
#[derive(Debug)]
struct Connection {
    identity: Option<Arc<str>>,
    ip: Option<IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Connection {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        // Every connection the runtime accepts (TLS or plaintext) carries it.
        let peer = PeerInfo::from_extensions(&parts.extensions);
        Ok(Self {
            identity: peer.and_then(|p| p.identity.clone()),
            ip: peer.and_then(|p| p.remote_addr).map(|a| a.ip()),
        })
    }
}

/// A form body in which every parameter appears at most once. RFC 6749
/// §3.2: parameters "MUST NOT be included more than once"; a repeated one
/// is `invalid_request`, never "last one wins" — a proxy in front that
/// read the first value while Tether reads another is parameter pollution.
/// A body that is not a form is refused as axum's `Form` refuses it.
#[derive(Debug)]
struct OAuthForm(HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for OAuthForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(request, state)
            .await
            .map_err(|e| crate::http_refusals::form_refusal(&e))?;
        let mut form = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if form.contains_key(&name) {
                return Err(error(&ExchangeError::oauth(
                    OAuthCode::InvalidRequest,
                    format!("`{}` is given more than once", clip(&name)),
                )));
            }
            form.insert(name, value);
        }
        Ok(Self(form))
    }
}

/// Whose budget a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    Client(OAuthClient),
    /// Requests that failed authentication, per source address (IPv6 per
    /// /64, what one host usually holds).
    Address(IpAddr),
    /// Failed requests whose address is unknown.
    Anonymous,
}

impl RateKey {
    fn failed(ip: Option<IpAddr>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V6(v6)) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Self::Address(IpAddr::V6(prefix.into()))
            }
            Some(v4) => Self::Address(v4),
            None => Self::Anonymous,
        }
    }
}

impl std::fmt::Display for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(client) => client.fmt(f),
            Self::Address(ip) => write!(f, "address:{ip}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// The Tether services that may introspect and revoke any token, by the
/// SPIFFE ID of their mTLS certificate.
#[derive(Debug)]
struct ServiceClients {
    trust_domain: String,
    allowed: HashSet<String>,
}

impl ServiceClients {
    fn new(oauth: &OAuthConfig, trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            allowed: oauth.service_identities(trust_domain).into_iter().collect(),
        }
    }

    /// `tls_client_auth` (RFC 8705 §2): the connection's verified identity
    /// is an allowed service; a `client_id`, when given, names it (its
    /// SPIFFE ID or Tether service name).
    fn authenticate(
        &self,
        identity: Option<&Arc<str>>,
        client_id: Option<&str>,
    ) -> Result<OAuthClient, ExchangeError> {
        let refuse = |m: String| ExchangeError::oauth(OAuthCode::InvalidClient, m);
        let Some(identity) = identity else {
            return Err(refuse(
                "client authentication is required: a `private_key_jwt` assertion (RFC 7523) or the client certificate of an allowed service".into(),
            ));
        };
        if !self.allowed.contains(identity.as_ref()) {
            return Err(refuse(format!(
                "client certificate identity `{}` is not an allowed service client",
                clip(identity)
            )));
        }
        if let Some(client_id) = client_id
            && tether_runtime::tls::resolve_identity(&self.trust_domain, client_id)
                != identity.as_ref()
        {
            return Err(refuse(format!(
                "`client_id` `{}` does not name the client certificate's identity",
                clip(client_id)
            )));
        }
        Ok(OAuthClient::Service(Arc::clone(identity)))
    }
}

impl HttpState {
    /// The authenticated client of a call to `path`, charged to its rate
    /// limit; failed attempts are charged to the caller's address, so
    /// guessing is limited too.
    async fn client(
        &self,
        form: &HashMap<String, String>,
        connection: &Connection,
        path: &str,
    ) -> Result<OAuthClient, ExchangeError> {
        match self.authenticate(form, connection, path).await {
            Ok(client) => {
                self.charge(&RateKey::Client(client.clone()))?;
                Ok(client)
            }
            Err(e) => {
                self.charge(&RateKey::failed(connection.ip))?;
                tracing::info!(error = %e, endpoint = path, "client authentication refused");
                Err(e)
            }
        }
    }

    async fn authenticate(
        &self,
        form: &HashMap<String, String>,
        connection: &Connection,
        path: &str,
    ) -> Result<OAuthClient, ExchangeError> {
        let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let client_id = field("client_id");
        // An assertion is the method the client chose; the certificate is
        // the connection's and applies only when no assertion is sent.
        match (field("client_assertion_type"), field("client_assertion")) {
            (None, None) => self
                .services
                .authenticate(connection.identity.as_ref(), client_id),
            (Some(CLIENT_ASSERTION_TYPE_JWT), Some(assertion)) => {
                self.exchanger
                    .authenticate_agent(assertion, client_id, path)
                    .await
            }
            (_, Some(_)) => Err(ExchangeError::oauth(
                OAuthCode::InvalidClient,
                format!("`client_assertion_type` must be `{CLIENT_ASSERTION_TYPE_JWT}`"),
            )),
            (Some(_), None) => Err(ExchangeError::oauth(
                OAuthCode::InvalidClient,
                "`client_assertion` is required with `client_assertion_type`",
            )),
        }
    }

    /// One request against `key`'s budget.
    fn charge(&self, key: &RateKey) -> Result<(), ExchangeError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let retry_after_secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            tracing::debug!(client = %key, retry_after_secs, "rate limit reached");
            ExchangeError::RateLimited { retry_after_secs }
        })
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn error(err: &ExchangeError) -> Response {
    let description = tether_runtime::ServiceError::public_message(err);
    let mut response = (
        err.http_status(),
        Json(json!({"error": err.rfc_code(), "error_description": description})),
    )
        .into_response();
    if err.http_status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    if let ExchangeError::RateLimited { retry_after_secs } = err {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    no_store(response)
}

/// A `/token` request refused before the exchange itself ran (client
/// authentication sent, a bad DPoP header, grant type or target): counted
/// like a refused exchange, then answered.
fn refused(err: &ExchangeError) -> Response {
    crate::metrics::refused(err);
    error(err)
}

async fn token(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    OAuthForm(form): OAuthForm,
) -> Response {
    let ex = &state.exchanger;
    if let Err(e) = crate::http_refusals::no_client_authentication(&form, &headers) {
        tracing::info!(error = %e, "exchange refused");
        return refused(&e);
    }
    // RFC 9449 §4.3: exactly one `DPoP` header, when there is one.
    let mut proofs = headers.get_all("dpop").iter();
    let dpop_proof = match (proofs.next(), proofs.next()) {
        (None, _) => None,
        (Some(proof), None) => match proof.to_str() {
            Ok(proof) => Some(proof.to_owned()),
            Err(_) => {
                return refused(&ExchangeError::oauth(
                    OAuthCode::InvalidDpopProof,
                    "DPoP proof rejected: the header is not ASCII",
                ));
            }
        },
        (Some(_), Some(_)) => {
            return refused(&ExchangeError::oauth(
                OAuthCode::InvalidDpopProof,
                "DPoP proof rejected: send exactly one `DPoP` header",
            ));
        }
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("grant_type") != GRANT_TYPE_TOKEN_EXCHANGE {
        return refused(&ExchangeError::oauth(
            OAuthCode::UnsupportedGrantType,
            format!("`grant_type` must be `{GRANT_TYPE_TOKEN_EXCHANGE}`"),
        ));
    }
    // RFC 8693 allows `resource` and `audience`; Tether issues for exactly one.
    let audience = match (form.get("audience"), form.get("resource")) {
        (Some(a), None) | (None, Some(a)) => a.clone(),
        (Some(a), Some(r)) if a == r => a.clone(),
        (None, None) => String::new(),
        _ => {
            return refused(&ExchangeError::oauth(
                OAuthCode::InvalidTarget,
                "give exactly one target: `audience` or `resource`",
            ));
        }
    };
    let input = ExchangeInput {
        subject_token: field("subject_token"),
        subject_token_type: field("subject_token_type"),
        actor_token: field("actor_token"),
        actor_token_type: field("actor_token_type"),
        audience,
        scope: field("scope"),
        requested_token_type: field("requested_token_type"),
        authorization_details: field("authorization_details"),
        dpop_proof,
    };
    match ex.exchange(&input).await {
        Ok(minted) => {
            let c = &minted.claims;
            no_store(
                Json(json!({
                    "access_token": minted.access_token,
                    "issued_token_type": TOKEN_TYPE_ACCESS,
                    "token_type": "Bearer",
                    "expires_in": c.exp - c.iat,
                    "scope": c.scope,
                }))
                .into_response(),
            )
        }
        Err(e) => {
            tracing::info!(error = %e, "exchange refused");
            error(&e)
        }
    }
}

/// The `token` form field (RFC 7662 / RFC 7009), or the error to answer.
fn required_token(form: &HashMap<String, String>) -> Result<String, ExchangeError> {
    match form.get("token") {
        Some(token) if !token.is_empty() => Ok(token.clone()),
        _ => Err(ExchangeError::oauth(
            OAuthCode::InvalidRequest,
            "`token` is required",
        )),
    }
}

async fn introspect(
    State(state): State<Arc<HttpState>>,
    connection: Connection,
    OAuthForm(form): OAuthForm,
) -> Response {
    let client = match state.client(&form, &connection, "/introspect").await {
        Ok(client) => client,
        Err(e) => return error(&e),
    };
    let token = match required_token(&form) {
        Ok(token) => token,
        Err(e) => return error(&e),
    };
    match state.exchanger.introspect_for(&client, &token).await {
        Ok(Some(i)) => {
            let c = i.claims;
            let mut body = json!({
                "active": true,
                "iss": c.iss,
                "sub": c.sub,
                "aud": c.aud,
                "scope": c.scope,
                "client_id": c.client_id,
                "token_type": "Bearer",
                "exp": c.exp,
                "iat": c.iat,
                "jti": c.jti,
                "sid": c.sid,
                "act": c.act,
            });
            if let Some(details) = c.authorization_details {
                body["authorization_details"] = details;
            }
            no_store(Json(body).into_response())
        }
        Ok(None) => no_store(Json(json!({"active": false})).into_response()),
        Err(e) => error(&e),
    }
}

async fn revoke(
    State(state): State<Arc<HttpState>>,
    connection: Connection,
    OAuthForm(form): OAuthForm,
) -> Response {
    let client = match state.client(&form, &connection, "/revoke").await {
        Ok(client) => client,
        Err(e) => return error(&e),
    };
    let token = match required_token(&form) {
        Ok(token) => token,
        Err(e) => return error(&e),
    };
    match state.exchanger.revoke_token(&client, &token).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => error(&e),
    }
}

async fn jwks(State(state): State<Arc<HttpState>>) -> Response {
    let mut response = Json(state.exchanger.ring().jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

async fn metadata(State(state): State<Arc<HttpState>>) -> Response {
    let ex = &state.exchanger;
    let issuer = ex.issuer();
    Json(json!({
        "issuer": issuer,
        "token_endpoint": ex.token_endpoint(),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": crate::http_refusals::TOKEN_AUTH_METHODS,
        "subject_token_types_supported": [TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID],
        "actor_token_types_supported": [TOKEN_TYPE_JWT],
        "authorization_details_types_supported": ["*"],
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(clients: &[&str]) -> ServiceClients {
        let oauth = OAuthConfig {
            service_clients: clients.iter().map(|c| (*c).to_owned()).collect(),
            ..OAuthConfig::default()
        };
        ServiceClients::new(&oauth, "tether.local")
    }

    fn refused(result: Result<OAuthClient, ExchangeError>) -> String {
        match result {
            Err(ExchangeError::OAuth {
                code: OAuthCode::InvalidClient,
                description,
            }) => description,
            other => panic!("expected invalid_client, got {other:?}"),
        }
    }

    #[test]
    fn allowed_service_identities_authenticate_by_certificate() {
        let services = services(&["agent-facade", "spiffe://partner.example/ns/x/sa/auditor"]);
        let facade: Arc<str> = "spiffe://tether.local/tether/agent-facade".into();
        assert_eq!(
            services.authenticate(Some(&facade), None).unwrap(),
            OAuthClient::Service(Arc::clone(&facade))
        );
        let auditor: Arc<str> = "spiffe://partner.example/ns/x/sa/auditor".into();
        assert!(services.authenticate(Some(&auditor), None).is_ok());
        // A `client_id` may name the certificate's identity, in full or short.
        assert!(
            services
                .authenticate(Some(&facade), Some("agent-facade"))
                .is_ok()
        );
        assert!(services.authenticate(Some(&facade), Some(&facade)).is_ok());
        let err = refused(services.authenticate(Some(&facade), Some("admin")));
        assert!(err.contains("`client_id` `admin`"), "{err}");
    }

    #[test]
    fn other_identities_and_no_certificate_are_refused() {
        let services = services(&["agent-facade"]);
        for other in [
            "spiffe://tether.local/tether/admin",
            "spiffe://tether.local/tether/credential-issuer",
            "spiffe://evil.example/tether/agent-facade",
            "spiffe://tether.local/tether/agent-facade/x",
            "spiffe://tether.local/tether/agent-facadex",
        ] {
            let identity: Arc<str> = other.into();
            let err = refused(services.authenticate(Some(&identity), None));
            assert!(
                err.contains("is not an allowed service client"),
                "{other}: {err}"
            );
        }
        let err = refused(services.authenticate(None, None));
        assert!(err.contains("client authentication is required"), "{err}");
        let err = refused(services.authenticate(None, Some("agent-facade")));
        assert!(
            err.contains("client authentication is required"),
            "a `client_id` alone authenticates nobody: {err}"
        );
        let none = self::services(&[]);
        let facade: Arc<str> = "spiffe://tether.local/tether/agent-facade".into();
        refused(none.authenticate(Some(&facade), None));
    }

    #[test]
    fn failed_attempts_are_counted_per_address_and_ipv6_per_64() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(RateKey::failed(Some(v4)), RateKey::Address(v4));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(RateKey::failed(Some(mapped)), RateKey::Address(v4));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(RateKey::failed(Some(a)), RateKey::failed(Some(b)));
        assert_ne!(RateKey::failed(Some(a)), RateKey::failed(Some(c)));
        assert_eq!(RateKey::failed(None), RateKey::Anonymous);
    }
}
