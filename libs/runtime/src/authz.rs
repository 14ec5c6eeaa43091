//! Per-RPC authorization by caller identity, and the inbound deadline.
//!
//! Every gRPC method of every Tether service has an entry in [`DEFAULTS`]:
//! the identities allowed to call it. A service's `[server.authorization]`
//! may replace entries of its own services; nothing else. The layer runs
//! before any handler:
//! - gRPC health is open to everyone (probes carry no certificate);
//! - the HTTP paths in [`SELF_AUTHENTICATING_PATHS`] authenticate their
//!   callers themselves (OAuth client authentication, public JWKS);
//! - the HTTP paths in [`HTTP_BINDINGS`] are another binding of a gRPC
//!   method and follow that method's row; their refusals are HTTP 401/403
//!   with a JSON body instead of a gRPC status;
//! - everything else needs a verified client certificate (else
//!   UNAUTHENTICATED) whose SPIFFE ID the table allows for that method
//!   (else PERMISSION_DENIED); a method the table does not name is refused.
//!
//! With `insecure_plaintext = true` there are no identities and the table
//! is not enforced; the server says so at WARN when it starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::config::ConfigError;
use crate::error::{ServiceError, ServiceErrorCode};
use crate::tls::{PeerInfo, resolve_identity};

/// Who may call what, by default. Names are Tether services
/// (`spiffe://<trust-domain>/tether/<name>`); `admin` is the operators'
/// identity (the `tether` CLI). Documented in `docs/design/004`.
pub const DEFAULTS: &[(&str, &[&str])] = &[
    // The policy decision point believes the context it is given: only the
    // facade builds that context (and the CLI runs policy tests).
    (
        "tether.policy.v1.PolicyDecision/Check",
        &["agent-facade", "admin"],
    ),
    (
        "tether.policy.v1.PolicyDecision/BatchCheck",
        &["agent-facade", "admin"],
    ),
    (
        "tether.policy.v1.PolicyDecision/GetPolicySet",
        &["agent-facade", "admin"],
    ),
    // Credentials: only the facade, and Issue/Renew also need the agent's
    // delegated token.
    (
        "tether.credentials.v1.CredentialIssuer/Issue",
        &["agent-facade"],
    ),
    (
        "tether.credentials.v1.CredentialIssuer/Renew",
        &["agent-facade"],
    ),
    (
        "tether.credentials.v1.CredentialIssuer/RevokeSession",
        &["agent-facade"],
    ),
    (
        "tether.credentials.v1.CredentialIssuer/RevokeLease",
        &["agent-facade"],
    ),
    (
        "tether.credentials.v1.CredentialIssuer/ListLeases",
        &["agent-facade", "admin"],
    ),
    // Identity: the facade starts and ends sessions; operators may end one.
    (
        "tether.identity.v1.IdentityExchange/Exchange",
        &["agent-facade"],
    ),
    (
        "tether.identity.v1.IdentityExchange/Introspect",
        &["agent-facade", "admin"],
    ),
    (
        "tether.identity.v1.IdentityExchange/RevokeSession",
        &["agent-facade", "admin"],
    ),
    // Session facts for operators: through the facade's SessionAdmin, or
    // directly with the `admin` identity.
    (
        "tether.identity.v1.IdentityExchange/ListSessions",
        &["agent-facade", "admin"],
    ),
    (
        "tether.identity.v1.IdentityExchange/GetSession",
        &["agent-facade", "admin"],
    ),
    (
        "tether.identity.v1.IdentityExchange/ListRevokedSessions",
        &[
            "agent-facade",
            "credential-issuer",
            "ciba-orchestrator",
            "policy-decision",
        ],
    ),
    // Approvals: only the facade.
    (
        "tether.approval.v1.ApprovalOrchestrator/*",
        &["agent-facade"],
    ),
    // The facade's session administration: operators only (agents reach
    // the facade without a certificate; this service is not for them).
    ("tether.facade.v1.SessionAdmin/*", &["admin"]),
    // Reflection describes the API: operators only.
    ("grpc.reflection.v1.ServerReflection/*", &["admin"]),
    ("grpc.reflection.v1alpha.ServerReflection/*", &["admin"]),
];

/// HTTP endpoints that authenticate their callers themselves (or are
/// public by nature); the table does not apply to them.
pub const SELF_AUTHENTICATING_PATHS: &[&str] = &[
    "/token",
    "/introspect",
    "/revoke",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/metrics",
    // CIBA pings: the bearer `client_notification_token` authenticates the
    // IdP (which has no client certificate); a ping only wakes a fetch.
    "/ciba/notify",
];

/// HTTP endpoints that are another binding of a gRPC method: a caller may
/// use the path exactly when that method's row (the default, or the
/// service's `[server.authorization]` override) lets it call the method, so
/// the HTTP form never opens what the gRPC form keeps closed. The policy
/// decision point's OpenID AuthZEN Authorization API is Check, BatchCheck
/// and GetPolicySet over HTTP (`docs/design/007-authzen.md`).
pub const HTTP_BINDINGS: &[(&str, &str)] = &[
    (
        "/access/v1/evaluation",
        "tether.policy.v1.PolicyDecision/Check",
    ),
    (
        "/access/v1/evaluations",
        "tether.policy.v1.PolicyDecision/BatchCheck",
    ),
    (
        "/.well-known/authzen-configuration",
        "tether.policy.v1.PolicyDecision/GetPolicySet",
    ),
];

/// Open to every caller, certificate or not.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The agent-facing API: agents have no client certificate; every call
/// authenticates with the agent's delegated token (StartSession with the
/// user's token and the agent's signed assertion), checked by the handler.
pub const TOKEN_AUTHENTICATED_SERVICES: &[&str] = &["/tether.facade.v1.AgentGateway/"];

/// Checks `[server.authorization]` overrides: keys `pkg.Service/Method` or
/// `pkg.Service/*`, values Tether service names or `spiffe://` URIs.
pub fn validate_overrides(
    overrides: &BTreeMap<String, Vec<String>>,
    trust_domain: &str,
) -> Result<(), ConfigError> {
    for (key, callers) in overrides {
        let valid_key = key.split_once('/').is_some_and(|(service, method)| {
            service.contains('.')
                && !method.is_empty()
                && !method.contains('/')
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/*".contains(&b))
        });
        if !valid_key {
            return Err(ConfigError::Invalid(format!(
                "server.authorization: `{key}` is not `package.Service/Method` or `package.Service/*`"
            )));
        }
        for caller in callers {
            let resolved = resolve_identity(trust_domain, caller);
            let valid = !caller.is_empty()
                && resolved.len() <= 2048
                && !resolved
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
                && resolved
                    .strip_prefix("spiffe://")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(td, path)| {
                        crate::tls::valid_trust_domain(td) && !path.is_empty()
                    });
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "server.authorization.`{key}`: `{caller}` is not a service name or a `spiffe://` ID"
                )));
            }
        }
    }
    Ok(())
}

/// Refusals and handshake failures, read by [`crate::metrics`] for
/// `/metrics`.
#[derive(Debug, Default)]
pub struct AuthzMetrics {
    unauthenticated: AtomicU64,
    permission_denied: AtomicU64,
    handshake_failures: AtomicU64,
}

/// This process's counters.
pub static METRICS: AuthzMetrics = AuthzMetrics {
    unauthenticated: AtomicU64::new(0),
    permission_denied: AtomicU64::new(0),
    handshake_failures: AtomicU64::new(0),
};

impl AuthzMetrics {
    pub(crate) fn count_handshake_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// (unauthenticated, permission denied, TLS handshakes refused).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.unauthenticated.load(Ordering::Relaxed),
            self.permission_denied.load(Ordering::Relaxed),
            self.handshake_failures.load(Ordering::Relaxed),
        )
    }
}

/// Why a call was refused before reaching its handler.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("`{method}` needs a client certificate from a trusted CA")]
    Unauthenticated { method: String },
    #[error("`{caller}` may not call `{method}`")]
    NotAllowed { caller: String, method: String },
}

impl ServiceError for AuthzError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::Unauthenticated { .. } => ServiceErrorCode::Unauthenticated,
            Self::NotAllowed { .. } => ServiceErrorCode::PermissionDenied,
        }
    }

    fn reason(&self) -> Option<String> {
        Some(
            match self {
                Self::Unauthenticated { .. } => "PEER_UNAUTHENTICATED",
                Self::NotAllowed { .. } => "CALLER_NOT_ALLOWED",
            }
            .into(),
        )
    }
}

/// The caller table of one server.
#[derive(Debug)]
pub struct Authorizer {
    /// `/pkg.Service/Method` or `/pkg.Service/` (every method) → callers.
    rules: HashMap<String, HashSet<Arc<str>>>,
    enforce: bool,
}

impl Authorizer {
    /// The table for a server of `services` (fully qualified gRPC service
    /// names): the defaults for those services, then `overrides`.
    pub fn new(
        services: &[&str],
        overrides: &BTreeMap<String, Vec<String>>,
        trust_domain: &str,
        enforce: bool,
    ) -> Result<Self, ConfigError> {
        let ours = |pattern: &str| {
            pattern.split_once('/').is_some_and(|(service, _)| {
                services.contains(&service) || service.starts_with("grpc.reflection.")
            })
        };
        let mut rules = HashMap::new();
        let mut insert = |pattern: &str, callers: &mut dyn Iterator<Item = &str>| {
            let key = match pattern.strip_suffix("/*") {
                Some(service) => format!("/{service}/"),
                None => format!("/{pattern}"),
            };
            let callers = callers
                .map(|c| Arc::<str>::from(resolve_identity(trust_domain, c)))
                .collect();
            rules.insert(key, callers);
        };
        for (pattern, callers) in DEFAULTS.iter().filter(|(p, _)| ours(p)) {
            insert(pattern, &mut callers.iter().copied());
        }
        for (pattern, callers) in overrides {
            if !ours(pattern) {
                return Err(ConfigError::Invalid(format!(
                    "server.authorization: `{pattern}` is not a method of this service ({})",
                    services.join(", ")
                )));
            }
            insert(pattern, &mut callers.iter().map(String::as_str));
        }
        // An HTTP binding gets its method's callers, as finally configured;
        // a server that does not serve the method does not serve the path.
        for (path, method) in HTTP_BINDINGS {
            let service_wide = method
                .split_once('/')
                .map(|(service, _)| format!("/{service}/"))
                .unwrap_or_default();
            let callers = rules
                .get(&format!("/{method}"))
                .or_else(|| rules.get(&service_wide))
                .cloned();
            if let Some(callers) = callers {
                rules.insert((*path).to_owned(), callers);
            }
        }
        Ok(Self { rules, enforce })
    }

    /// Whether the table is enforced (false in plaintext mode).
    pub fn enforced(&self) -> bool {
        self.enforce
    }

    /// Decides one call to `path` by the connection's peer.
    pub fn check(&self, path: &str, peer: Option<&PeerInfo>) -> Result<(), AuthzError> {
        if path.starts_with(HEALTH_PREFIX)
            || SELF_AUTHENTICATING_PATHS.contains(&path)
            || TOKEN_AUTHENTICATED_SERVICES
                .iter()
                .any(|prefix| path.starts_with(prefix))
            || !self.enforce
        {
            return Ok(());
        }
        let method = path.trim_start_matches('/');
        let Some(caller) = peer.and_then(|p| p.identity.as_deref()) else {
            METRICS.unauthenticated.fetch_add(1, Ordering::Relaxed);
            let remote = peer.and_then(|p| p.remote_addr);
            tracing::warn!(method = %crate::clip(method), peer = ?remote, "call without a client certificate refused");
            return Err(AuthzError::Unauthenticated {
                method: crate::clip(method),
            });
        };
        let service_wide = path.rfind('/').map(|i| &path[..=i]).unwrap_or_default();
        let allowed = self
            .rules
            .get(path)
            .or_else(|| self.rules.get(service_wide))
            .is_some_and(|callers| callers.contains(caller));
        if allowed {
            return Ok(());
        }
        METRICS.permission_denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(caller = %caller, method = %crate::clip(method), "caller not allowed for this method");
        Err(AuthzError::NotAllowed {
            caller: caller.to_owned(),
            method: crate::clip(method),
        })
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A refusal for a plain HTTP caller (an AuthZEN client): 401 or 403 with
/// `{"error": {"status", "message"}}`, the shape AuthZEN uses for errors,
/// and the caller's `X-Request-ID` echoed as AuthZEN requires. No
/// `WWW-Authenticate`: no HTTP authentication scheme names a client
/// certificate.
fn http_refusal(
    refused: &AuthzError,
    headers: &http::HeaderMap,
) -> http::Response<tonic::body::Body> {
    let status = match refused {
        AuthzError::Unauthenticated { .. } => http::StatusCode::UNAUTHORIZED,
        AuthzError::NotAllowed { .. } => http::StatusCode::FORBIDDEN,
    };
    let body = serde_json::json!({
        "error": {"status": status.as_u16(), "message": refused.public_message()}
    })
    .to_string();
    let mut response = http::Response::new(tonic::body::Body::new(body));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    out.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    let mut ids = headers.get_all("x-request-id").iter();
    if let (Some(id), None) = (ids.next(), ids.next()) {
        out.insert("x-request-id", id.clone());
    }
    response
}

tokio::task_local! {
    /// When the inbound call being handled must be answered by.
    pub(crate) static INBOUND_DEADLINE: tokio::time::Instant;
}

/// Time left before the inbound call's deadline, when this code runs on
/// behalf of one.
pub fn remaining() -> Option<Duration> {
    INBOUND_DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
        .ok()
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, at most 8 digits).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The tower layer that applies an [`Authorizer`] and records the inbound
/// deadline for downstream calls.
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    authorizer: Arc<Authorizer>,
    max_timeout: Duration,
}

impl AuthzLayer {
    pub fn new(authorizer: Arc<Authorizer>, max_timeout: Duration) -> Self {
        Self {
            authorizer,
            max_timeout,
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthzService {
            inner,
            authorizer: Arc::clone(&self.authorizer),
            max_timeout: self.max_timeout,
        }
    }
}

/// See [`AuthzLayer`].
#[derive(Debug, Clone)]
pub struct AuthzService<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
    max_timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthzService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = PeerInfo::from_extensions(request.extensions());
        if let Err(refused) = self.authorizer.check(request.uri().path(), peer) {
            let response = if is_grpc(request.headers()) {
                crate::error::into_status(refused).into_http()
            } else {
                http_refusal(&refused, request.headers())
            };
            return Box::pin(async move { Ok(response) });
        }
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.max_timeout, |t| t.min(self.max_timeout));
        let deadline = tokio::time::Instant::now() + timeout;
        Box::pin(INBOUND_DEADLINE.scope(deadline, self.inner.call(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "tether.local";

    fn peer(id: Option<&str>) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            identity: id.map(Arc::from),
        }
    }

    fn issuer_table(overrides: &[(&str, &[&str])]) -> Authorizer {
        let overrides = overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        Authorizer::new(
            &["tether.credentials.v1.CredentialIssuer"],
            &overrides,
            TD,
            true,
        )
        .unwrap()
    }

    #[test]
    fn only_the_facade_may_issue() {
        let table = issuer_table(&[]);
        let issue = "/tether.credentials.v1.CredentialIssuer/Issue";
        let facade = peer(Some("spiffe://tether.local/tether/agent-facade"));
        table.check(issue, Some(&facade)).unwrap();
        let pdp = peer(Some("spiffe://tether.local/tether/policy-decision"));
        assert!(matches!(
            table.check(issue, Some(&pdp)),
            Err(AuthzError::NotAllowed { .. })
        ));
        // Another trust domain with the same path is another identity.
        let foreign = peer(Some("spiffe://evil.example/tether/agent-facade"));
        assert!(table.check(issue, Some(&foreign)).is_err());
        assert!(matches!(
            table.check(issue, Some(&peer(None))),
            Err(AuthzError::Unauthenticated { .. })
        ));
        assert!(matches!(
            table.check(issue, None),
            Err(AuthzError::Unauthenticated { .. })
        ));
    }

    #[test]
    fn health_and_self_authenticating_paths_are_open_and_unknown_methods_closed() {
        let table = issuer_table(&[]);
        table
            .check("/grpc.health.v1.Health/Check", Some(&peer(None)))
            .unwrap();
        table.check("/metrics", None).unwrap();
        let facade = peer(Some("spiffe://tether.local/tether/agent-facade"));
        assert!(
            table
                .check(
                    "/tether.credentials.v1.CredentialIssuer/Unknown",
                    Some(&facade)
                )
                .is_err()
        );
        // A method of another service is not served here, whoever asks.
        assert!(
            table
                .check("/tether.policy.v1.PolicyDecision/Check", Some(&facade))
                .is_err()
        );
        assert!(
            table
                .check(
                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                    Some(&facade)
                )
                .is_err()
        );
        let admin = peer(Some("spiffe://tether.local/tether/admin"));
        table
            .check(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Some(&admin),
            )
            .unwrap();
    }

    #[test]
    fn overrides_replace_entries_of_this_service_only() {
        let table = issuer_table(&[(
            "tether.credentials.v1.CredentialIssuer/Issue",
            &["spiffe://tether.local/ns/prod/sa/facade"],
        )]);
        let issue = "/tether.credentials.v1.CredentialIssuer/Issue";
        table
            .check(
                issue,
                Some(&peer(Some("spiffe://tether.local/ns/prod/sa/facade"))),
            )
            .unwrap();
        assert!(
            table
                .check(
                    issue,
                    Some(&peer(Some("spiffe://tether.local/tether/agent-facade")))
                )
                .is_err()
        );
        let overrides = BTreeMap::from([(
            "tether.policy.v1.PolicyDecision/Check".to_owned(),
            vec!["admin".to_owned()],
        )]);
        assert!(
            Authorizer::new(
                &["tether.credentials.v1.CredentialIssuer"],
                &overrides,
                TD,
                true
            )
            .is_err()
        );
    }

    #[test]
    fn http_bindings_follow_their_method_row() {
        const PDP: &str = "tether.policy.v1.PolicyDecision";
        let facade = peer(Some("spiffe://tether.local/tether/agent-facade"));
        let admin = peer(Some("spiffe://tether.local/tether/admin"));
        let issuer = peer(Some("spiffe://tether.local/tether/credential-issuer"));
        let pdp = Authorizer::new(&[PDP], &BTreeMap::new(), TD, true).unwrap();
        for (path, _) in HTTP_BINDINGS {
            pdp.check(path, Some(&facade)).unwrap();
            pdp.check(path, Some(&admin)).unwrap();
            assert!(matches!(
                pdp.check(path, Some(&issuer)),
                Err(AuthzError::NotAllowed { .. })
            ));
            assert!(matches!(
                pdp.check(path, Some(&peer(None))),
                Err(AuthzError::Unauthenticated { .. })
            ));
        }
        // Near misses are not the bound paths.
        for path in [
            "/access/v1/evaluation/",
            "/access/v1/",
            "/access/v1/search/subject",
        ] {
            assert!(pdp.check(path, Some(&facade)).is_err(), "{path}");
        }
        // An override of Check moves the HTTP evaluation endpoint with it.
        let overrides = BTreeMap::from([(
            format!("{PDP}/Check"),
            vec!["spiffe://tether.local/ns/edge/sa/gateway".to_owned()],
        )]);
        let pdp = Authorizer::new(&[PDP], &overrides, TD, true).unwrap();
        let gateway = peer(Some("spiffe://tether.local/ns/edge/sa/gateway"));
        pdp.check("/access/v1/evaluation", Some(&gateway)).unwrap();
        assert!(pdp.check("/access/v1/evaluation", Some(&facade)).is_err());
        assert!(pdp.check("/access/v1/evaluations", Some(&gateway)).is_err());
        // A server that does not serve the method does not serve its path.
        let issuer_server = issuer_table(&[]);
        assert!(
            issuer_server
                .check("/access/v1/evaluation", Some(&facade))
                .is_err()
        );
    }

    #[test]
    fn http_refusals_are_json_with_the_request_id() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("req-7"));
        let refused = AuthzError::NotAllowed {
            caller: "spiffe://tether.local/tether/credential-issuer".into(),
            method: "access/v1/evaluation".into(),
        };
        let response = http_refusal(&refused, &headers);
        assert_eq!(response.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-request-id"], "req-7");
        let unauthenticated = AuthzError::Unauthenticated {
            method: "access/v1/evaluation".into(),
        };
        headers.append("x-request-id", http::HeaderValue::from_static("req-8"));
        let response = http_refusal(&unauthenticated, &headers);
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        // Two ids: neither is "the" id, none is echoed.
        assert!(!response.headers().contains_key("x-request-id"));
        assert!(is_grpc(&http::HeaderMap::from_iter([(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc+proto"),
        )])));
        assert!(!is_grpc(&headers));
    }

    #[test]
    fn session_administration_is_for_operators_only() {
        let facade = Authorizer::new(
            &[
                "tether.facade.v1.AgentGateway",
                "tether.facade.v1.SessionAdmin",
            ],
            &BTreeMap::new(),
            TD,
            true,
        )
        .unwrap();
        let admin = peer(Some("spiffe://tether.local/tether/admin"));
        let own = peer(Some("spiffe://tether.local/tether/agent-facade"));
        for method in ["ListSessions", "GetSession", "EndSession"] {
            let path = format!("/tether.facade.v1.SessionAdmin/{method}");
            facade.check(&path, Some(&admin)).unwrap();
            assert!(matches!(
                facade.check(&path, Some(&own)),
                Err(AuthzError::NotAllowed { .. })
            ));
            // An agent: no certificate, whatever token it sends.
            assert!(matches!(
                facade.check(&path, Some(&peer(None))),
                Err(AuthzError::Unauthenticated { .. })
            ));
        }
        // The agents' API next to it stays token-authenticated.
        facade
            .check(
                "/tether.facade.v1.AgentGateway/EndSession",
                Some(&peer(None)),
            )
            .unwrap();

        let identity = Authorizer::new(
            &["tether.identity.v1.IdentityExchange"],
            &BTreeMap::new(),
            TD,
            true,
        )
        .unwrap();
        for method in ["ListSessions", "GetSession"] {
            let path = format!("/tether.identity.v1.IdentityExchange/{method}");
            identity.check(&path, Some(&admin)).unwrap();
            identity.check(&path, Some(&own)).unwrap();
            let issuer = peer(Some("spiffe://tether.local/tether/credential-issuer"));
            assert!(identity.check(&path, Some(&issuer)).is_err());
        }
    }

    #[test]
    fn plaintext_enforces_nothing() {
        let table = Authorizer::new(
            &["tether.credentials.v1.CredentialIssuer"],
            &BTreeMap::new(),
            TD,
            false,
        )
        .unwrap();
        table
            .check("/tether.credentials.v1.CredentialIssuer/Issue", None)
            .unwrap();
    }

    #[test]
    fn bad_overrides_are_configuration_errors() {
        for (key, caller) in [
            ("Issue", "agent-facade"),
            ("tether.credentials.v1.CredentialIssuer/", "agent-facade"),
            ("tether.credentials.v1.CredentialIssuer/Issue", ""),
            (
                "tether.credentials.v1.CredentialIssuer/Issue",
                "spiffe://UPPER/x",
            ),
            (
                "tether.credentials.v1.CredentialIssuer/Issue",
                "spiffe://td",
            ),
            (
                "tether.credentials.v1.CredentialIssuer/Issue",
                "agent facade",
            ),
        ] {
            let overrides = BTreeMap::from([(key.to_owned(), vec![caller.to_owned()])]);
            assert!(
                validate_overrides(&overrides, TD).is_err(),
                "{key} {caller}"
            );
        }
        let ok = BTreeMap::from([(
            "tether.credentials.v1.CredentialIssuer/*".to_owned(),
            vec![
                "agent-facade".to_owned(),
                "spiffe://other.td/x/y".to_owned(),
            ],
        )]);
        validate_overrides(&ok, TD).unwrap();
    }

    #[test]
    fn grpc_timeout_parsing() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
    }
}
