//! The CIBA client: discovery, the backchannel authentication request, token
//! requests, ID-token verification, and the thin async driver around
//! [`PollState`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, IssuerUrl, ProviderMetadata};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether_runtime::clip;
use tether_token::{Algorithm, JwksCache, TypRule, VerifyPolicy};
use tokio::sync::{Mutex, OnceCell};

use super::auth::ClientAuth;
use super::binding::{BindingMessage, Sentence};
use super::config::{CibaConfig, DeliveryMode};
use super::error::CibaError;
use super::notification::NotificationToken;
use super::outcome::{Approval, Failure, Outcome};
use super::poll::{Due, PollState, TokenAnswer, Transition};

/// The CIBA grant type (CIBA Core §10.1).
const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";

/// How long a failed discovery is remembered before it is tried again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

/// Longest accepted `auth_req_id`.
const MAX_AUTH_REQ_ID_BYTES: usize = 1024;

/// Longest accepted user (`login_hint`).
const MAX_USER_BYTES: usize = 256;

/// The IdP's handle for one request. Redeemable only with this client's
/// credentials, but still kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthReqId(String);

impl AuthReqId {
    /// Wraps a stored `auth_req_id`.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthReqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthReqId(***)")
    }
}

/// An ID token from the token endpoint, not yet verified. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct IdToken(String);

impl IdToken {
    #[cfg(test)]
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for IdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdToken(***)")
    }
}

/// One question to one user.
#[derive(Debug, Clone, Copy)]
pub struct AuthenticationRequest<'a> {
    /// The user to ask: sent as `login_hint`; the approving ID token's
    /// `sub` must equal it.
    pub user: &'a str,
    /// What the device shows (from [`CibaClient::binding_message`]).
    pub binding_message: &'a BindingMessage,
    /// How long the user has to answer: `None` means the configured
    /// default; capped at the configured maximum; whole seconds, at least 1.
    pub requested_expiry: Option<Duration>,
}

/// A request the IdP accepted and that is waiting for the user. Everything
/// a ticket store needs to resume it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub auth_req_id: AuthReqId,
    /// The requested user: the approving ID token's `sub` must equal it.
    pub user: String,
    pub state: PollState,
}

/// What [`CibaClient::start`] returns.
#[derive(Debug)]
pub struct Started {
    pub pending: PendingRequest,
    /// `expires_in` as the IdP gave it (the deadline in `pending.state` may
    /// be earlier).
    pub expires_in: Duration,
    /// Ping mode: the bearer token the IdP will present in pings about this
    /// request. Store only its hash ([`NotificationToken::hash`]).
    pub notification_token: Option<NotificationToken>,
}

/// The CIBA fields of the IdP's discovery document.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct CibaMetadata {
    #[serde(default)]
    backchannel_authentication_endpoint: Option<String>,
    #[serde(default)]
    backchannel_token_delivery_modes_supported: Option<Vec<String>>,
}

impl AdditionalProviderMetadata for CibaMetadata {}

type CibaProviderMetadata = ProviderMetadata<
    CibaMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What discovery found.
#[derive(Debug)]
struct Endpoints {
    /// The issuer identifier, as the discovery document states it (equal to
    /// the configured one; `openidconnect` checks).
    issuer: String,
    backchannel: String,
    token: String,
    keys: JwksCache,
}

/// A CIBA client for one IdP and one client registration. Cheap to clone.
#[derive(Clone)]
pub struct CibaClient {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    client_id: String,
    auth: ClientAuth,
    mode: DeliveryMode,
    scope: String,
    default_expiry: Duration,
    max_expiry: Duration,
    binding_max_chars: usize,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    jwks_min_refresh: Duration,
    http: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
    /// The last failed discovery: when, and the error (Config or not).
    last_failure: Mutex<Option<(Instant, bool, String)>>,
}

impl std::fmt::Debug for CibaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CibaClient")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.inner.client_id)
            .field("auth", &self.inner.auth)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

/// An OAuth error body.
#[derive(Debug, Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl CibaClient {
    /// Validates the configuration and reads the key or secret file. The IdP
    /// is not contacted (discovery happens on first use, or with
    /// [`discover`](Self::discover)).
    pub fn new(config: &CibaConfig) -> Result<Self, CibaError> {
        let invalid = |e: tether_runtime::ConfigError| CibaError::Config(e.to_string());
        config.validate().map_err(invalid)?;
        let mode = config.mode().map_err(invalid)?;
        let algorithms = config.algorithms().map_err(invalid)?;
        let auth = ClientAuth::load(&config.client_auth)?;
        let http = tether_token::idp_http_client(Duration::from_secs(config.http.timeout_secs))
            .map_err(|e| CibaError::Config(format!("cannot build the HTTP client: {e}")))?;
        let (default_expiry, max_expiry) = config.expiries();
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: config.issuer.clone(),
                client_id: config.client_id.clone(),
                auth,
                mode,
                scope: config.scope.clone(),
                default_expiry,
                max_expiry,
                binding_max_chars: config.binding_message_max_chars,
                algorithms,
                leeway: Duration::from_secs(config.id_token_leeway_secs),
                jwks_min_refresh: Duration::from_secs(config.http.jwks_min_refresh_secs),
                http,
                endpoints: OnceCell::new(),
                last_failure: Mutex::new(None),
            }),
        })
    }

    /// The configured issuer: users of this client are (issuer, `sub`).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    pub fn delivery_mode(&self) -> DeliveryMode {
        self.inner.mode
    }

    /// How long the user is given to answer a request asking for
    /// `requested` (the configured default when `None`), capped at the
    /// configured maximum, in whole seconds as the IdP counts them.
    pub fn requested_expiry(&self, requested: Option<Duration>) -> Duration {
        let expiry = requested.map_or(self.inner.default_expiry, |d| d.min(self.inner.max_expiry));
        Duration::from_secs(expiry.as_secs())
    }

    /// Builds the binding message for the configured length limit.
    pub fn binding_message(&self, sentence: Sentence<'_>) -> Result<BindingMessage, CibaError> {
        BindingMessage::build(sentence, self.inner.binding_max_chars)
    }

    /// Fetches the IdP's discovery document and keys now (otherwise done on
    /// first use). Fails when the IdP is unreachable or does not offer CIBA
    /// as configured.
    pub async fn discover(&self) -> Result<(), CibaError> {
        self.endpoints().await.map(|_| ())
    }

    /// Sends the backchannel authentication request. On success the user's
    /// device has been asked; on any error it has not been (as far as this
    /// client can tell: a request lost after the IdP accepted it can still
    /// prompt, and then expires unanswered).
    pub async fn start(&self, request: &AuthenticationRequest<'_>) -> Result<Started, CibaError> {
        let user = request.user;
        if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
            return Err(CibaError::InvalidRequest(format!(
                "the user must be 1 to {MAX_USER_BYTES} bytes without control characters"
            )));
        }
        let expiry = match request.requested_expiry {
            None => self.inner.default_expiry,
            Some(d) if d.as_secs() == 0 => {
                return Err(CibaError::InvalidRequest(
                    "requested_expiry must be at least one second".into(),
                ));
            }
            Some(d) => Duration::from_secs(d.as_secs()).min(self.inner.max_expiry),
        };
        let endpoints = self.endpoints().await?;
        let notification_token = match self.inner.mode {
            DeliveryMode::Ping => Some(NotificationToken::generate()?),
            DeliveryMode::Poll => None,
        };
        let mut form = vec![
            ("scope", self.inner.scope.clone()),
            ("login_hint", user.to_owned()),
            ("binding_message", request.binding_message.text().to_owned()),
            ("requested_expiry", expiry.as_secs().to_string()),
        ];
        if let Some(token) = &notification_token {
            form.push(("client_notification_token", token.expose().to_owned()));
        }

        let sent_at = SystemTime::now();
        let (status, body) = self
            .post(
                endpoints,
                &endpoints.backchannel,
                form,
                "backchannel authentication endpoint",
            )
            .await?;
        let answered_at = SystemTime::now();

        if !status.is_success() {
            return Err(match oauth_error(status, &body) {
                Some(e)
                    if status.is_client_error()
                        && status != http::StatusCode::TOO_MANY_REQUESTS =>
                {
                    tracing::warn!(
                        user = %clip(user),
                        error = %clip(&e.error),
                        "the IdP refused the CIBA authentication request"
                    );
                    CibaError::Refused {
                        error: clip(&e.error),
                        description: e.error_description.as_deref().map(clip),
                    }
                }
                _ => CibaError::Unavailable(format!(
                    "the backchannel authentication endpoint answered HTTP {}",
                    status.as_u16()
                )),
            });
        }
        let accepted = parse_accepted(&body)?;
        let mut state = PollState::new(
            sent_at,
            answered_at,
            accepted.expires_in,
            accepted.interval,
            expiry,
        );
        if self.inner.mode == DeliveryMode::Ping {
            // Ping mode fetches only when a ping arrives, and the first ping
            // is the user's answer: fetch it at once. The interval holds
            // between any two fetches after that.
            state.next_poll_at = answered_at.min(state.deadline);
        }
        tracing::debug!(
            user = %clip(user),
            mode = self.inner.mode.as_str(),
            expires_in_secs = accepted.expires_in.as_secs(),
            interval_secs = state.interval.as_secs(),
            "CIBA authentication request accepted by the IdP"
        );
        Ok(Started {
            pending: PendingRequest {
                auth_req_id: accepted.auth_req_id,
                user: user.to_owned(),
                state,
            },
            expires_in: accepted.expires_in,
            notification_token,
        })
    }

    /// One step of the driver: waits until the request is due (never before
    /// `pending.state.next_poll_at`, so never faster than the current
    /// interval), asks the token endpoint once, and advances
    /// `pending.state`; persist it after every call.
    ///
    /// - `Ok(None)`: still pending.
    /// - `Ok(Some(outcome))`: terminal (an approval only if
    ///   [`Outcome::is_approved`]).
    /// - `Err(e)`: a retryable failure (IdP unreachable, 5xx, unexpected
    ///   error); the state moved one interval on, the request is still
    ///   pending until its deadline.
    ///
    /// In ping mode, call it when a ping arrives: a ping only wakes the
    /// fetch, it is never a result. Cancelling the call while the token
    /// request is in flight can lose an approval (the IdP consumed it): the
    /// request then ends `invalid_grant`, never approved.
    pub async fn poll_once(
        &self,
        pending: &mut PendingRequest,
    ) -> Result<Option<Outcome>, CibaError> {
        loop {
            let now = SystemTime::now();
            match pending.state.due(now) {
                Due::Expired => {
                    return Ok(Some(self.finish(
                        &pending.user,
                        Outcome::Expired(super::outcome::ExpiredBy::Deadline),
                    )));
                }
                Due::Now => break,
                Due::At(at) => {
                    tokio::time::sleep(at.duration_since(now).unwrap_or_default()).await;
                }
            }
        }
        let answer = self.token_request(&pending.auth_req_id).await;
        let now = SystemTime::now();
        let (answer, error) = match answer {
            Ok(answer) => (answer, None),
            Err(e) => (TokenAnswer::Unavailable, Some(e)),
        };
        match pending.state.on_answer(answer, now) {
            Transition::Continue(state) => {
                if state.interval > pending.state.interval {
                    tracing::debug!(
                        interval_secs = state.interval.as_secs(),
                        "the IdP asked to slow down; interval raised for the rest of the request"
                    );
                }
                pending.state = state;
                match error {
                    Some(e) => Err(e),
                    None => Ok(None),
                }
            }
            Transition::Verify(id_token) => {
                let outcome = self.verify_approval(&id_token, &pending.user).await;
                Ok(Some(self.finish(&pending.user, outcome)))
            }
            Transition::Done(outcome) => Ok(Some(self.finish(&pending.user, outcome))),
        }
    }

    /// Polls until the request ends. Retryable failures are retried at the
    /// current interval; the request's deadline bounds the whole wait, so
    /// an IdP that stays unreachable ends in [`Outcome::Expired`].
    pub async fn wait(&self, mut pending: PendingRequest) -> Outcome {
        loop {
            match self.poll_once(&mut pending).await {
                Ok(Some(outcome)) => return outcome,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "CIBA token request failed; retrying at the interval");
                }
            }
        }
    }

    /// Sends one token request (`grant_type` CIBA) and classifies the
    /// answer. `Err` only for a retryable failure. Private: only
    /// [`poll_once`](Self::poll_once) calls it, so the interval always holds.
    async fn token_request(&self, auth_req_id: &AuthReqId) -> Result<TokenAnswer, CibaError> {
        let endpoints = self.endpoints().await?;
        let form = vec![
            ("grant_type", CIBA_GRANT.to_owned()),
            ("auth_req_id", auth_req_id.as_str().to_owned()),
        ];
        let (status, body) = self
            .post(endpoints, &endpoints.token, form, "token endpoint")
            .await?;
        if status.is_success() {
            return Ok(match serde_json::from_slice::<Value>(&body) {
                Ok(json) => match json.get("id_token").and_then(Value::as_str) {
                    Some(token) if !token.is_empty() => {
                        TokenAnswer::Issued(IdToken(token.to_owned()))
                    }
                    _ => TokenAnswer::Unusable("the token response has no `id_token`".into()),
                },
                Err(_) => TokenAnswer::Unusable("the token response is not JSON".into()),
            });
        }
        let Some(error) = oauth_error(status, &body) else {
            return Err(CibaError::Unavailable(format!(
                "the token endpoint answered HTTP {}",
                status.as_u16()
            )));
        };
        tracing::trace!(error = %clip(&error.error), "CIBA token endpoint answer");
        Ok(match error.error.as_str() {
            "authorization_pending" => TokenAnswer::Pending,
            "slow_down" => TokenAnswer::SlowDown,
            "expired_token" => TokenAnswer::ExpiredToken,
            "access_denied" => TokenAnswer::AccessDenied {
                description: error.error_description.as_deref().map(clip),
            },
            "invalid_grant" => TokenAnswer::InvalidGrant,
            other => {
                return Err(CibaError::Unavailable(format!(
                    "the token endpoint answered HTTP {} `{}`{}",
                    status.as_u16(),
                    clip(other),
                    error
                        .error_description
                        .as_deref()
                        .map(|d| format!(" ({})", clip(d)))
                        .unwrap_or_default()
                )));
            }
        })
    }

    /// Verifies an ID token from the token endpoint for `user`: signature
    /// against the IdP's JWKS, `iss`, `aud` = this client (and `azp` when
    /// there are several audiences), `exp`, `iat`, then `sub` = `user`.
    async fn verify_approval(&self, id_token: &IdToken, user: &str) -> Outcome {
        let rejected = |why: String| Outcome::Failed(Failure::IdTokenRejected(why));
        let endpoints = match self.endpoints().await {
            Ok(endpoints) => endpoints,
            Err(e) => return rejected(format!("cannot be verified: {e}")),
        };
        let mut policy = VerifyPolicy::new(
            vec![endpoints.issuer.clone()],
            vec![self.inner.client_id.clone()],
            self.inner.algorithms.clone(),
        );
        policy.typ = TypRule::JwtOrAbsent;
        policy.leeway = self.inner.leeway;
        let verified =
            match tether_token::verify::<IdTokenClaims, _>(&id_token.0, &policy, &endpoints.keys)
                .await
            {
                Ok(verified) => verified,
                // TokenError messages never contain the token.
                Err(e) => return rejected(e.to_string()),
            };
        let claims = verified.claims;
        let audiences = match &claims.aud {
            Value::Array(list) => list.len(),
            _ => 1,
        };
        if audiences > 1 && claims.azp.as_deref() != Some(self.inner.client_id.as_str()) {
            return rejected("several audiences and `azp` is not this client".into());
        }
        if claims.sub != user {
            return Outcome::ApprovedByOtherUser {
                approver: claims.sub,
            };
        }
        Outcome::Approved(Approval {
            approver: claims.sub,
            auth_time: claims.auth_time,
            acr: claims.acr,
            amr: claims.amr.unwrap_or_default(),
        })
    }

    /// Logs how a request ended.
    fn finish(&self, user: &str, outcome: Outcome) -> Outcome {
        match &outcome {
            Outcome::Approved(_) => {
                tracing::info!(user = %clip(user), "CIBA approval verified");
            }
            Outcome::ApprovedByOtherUser { approver } => tracing::warn!(
                user = %clip(user),
                approver = %clip(approver),
                "CIBA approval given with another account: not an approval"
            ),
            Outcome::Failed(_) => tracing::warn!(
                user = %clip(user),
                reason = %outcome.reason(),
                "CIBA request failed"
            ),
            Outcome::Denied { .. } | Outcome::Expired(_) => tracing::info!(
                user = %clip(user),
                reason = %outcome.reason(),
                "CIBA request ended without approval"
            ),
        }
        outcome
    }

    /// POSTs a form with client authentication; returns status and body.
    async fn post(
        &self,
        endpoints: &Endpoints,
        url: &str,
        mut form: Vec<(&'static str, String)>,
        what: &str,
    ) -> Result<(http::StatusCode, Vec<u8>), CibaError> {
        let credentials = self
            .inner
            .auth
            .credentials(&self.inner.client_id, &endpoints.issuer)?;
        form.extend(credentials.form);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if let Some(authorization) = &credentials.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization.expose());
        }
        let request = request
            .body(body.into_bytes())
            .map_err(|_| CibaError::Config(format!("the IdP's {what} URL is not usable")))?;
        let response = tether_token::oidc_client(self.inner.http.clone())(request)
            .await
            .map_err(|e| CibaError::Unavailable(format!("cannot reach the IdP's {what}: {e}")))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(CibaError::Unavailable(format!(
                "the IdP's {what} answered HTTP {}",
                status.as_u16()
            )));
        }
        Ok((status, response.into_body()))
    }

    /// The IdP's endpoints and keys, discovered on first use; a failure is
    /// remembered for [`DISCOVERY_RETRY`] so an outage is not hammered.
    async fn endpoints(&self) -> Result<&Endpoints, CibaError> {
        if let Some(endpoints) = self.inner.endpoints.get() {
            return Ok(endpoints);
        }
        {
            let failure = self.inner.last_failure.lock().await;
            if let Some((at, config, message)) = failure.as_ref()
                && at.elapsed() < DISCOVERY_RETRY
            {
                return Err(if *config {
                    CibaError::Config(message.clone())
                } else {
                    CibaError::Unavailable(message.clone())
                });
            }
        }
        let result = self
            .inner
            .endpoints
            .get_or_try_init(|| self.discover_endpoints())
            .await;
        if let Err(e) = &result {
            tracing::warn!(issuer = %self.inner.issuer, error = %e, "CIBA IdP discovery failed");
            let config = matches!(e, CibaError::Config(_));
            *self.inner.last_failure.lock().await = Some((Instant::now(), config, e.to_string()));
        }
        result
    }

    async fn discover_endpoints(&self) -> Result<Endpoints, CibaError> {
        let issuer = &self.inner.issuer;
        let unavailable = |e: &dyn std::fmt::Display| {
            CibaError::Unavailable(format!("OIDC discovery for `{issuer}` failed: {e}"))
        };
        let unsuitable = |why: String| {
            CibaError::Config(format!(
                "the IdP `{issuer}` cannot serve this client: {why}"
            ))
        };
        let issuer_url = IssuerUrl::new(issuer.clone()).map_err(|e| unavailable(&e))?;
        let client = tether_token::oidc_client(self.inner.http.clone());
        let metadata = CibaProviderMetadata::discover_async(issuer_url, &client)
            .await
            .map_err(|e| unavailable(&e))?;
        let token = metadata
            .token_endpoint()
            .ok_or_else(|| unsuitable("its discovery document has no `token_endpoint`".into()))?
            .url()
            .to_string();
        let ciba = metadata.additional_metadata();
        let backchannel = ciba
            .backchannel_authentication_endpoint
            .clone()
            .ok_or_else(|| {
                unsuitable(
                    "it advertises no `backchannel_authentication_endpoint` (no CIBA support)"
                        .into(),
                )
            })?;
        if !url::Url::parse(&backchannel).is_ok_and(|u| matches!(u.scheme(), "https" | "http")) {
            return Err(unsuitable(
                "its `backchannel_authentication_endpoint` is not an http(s) URL".into(),
            ));
        }
        let mode = self.inner.mode.as_str();
        if let Some(modes) = &ciba.backchannel_token_delivery_modes_supported
            && !modes.iter().any(|m| m == mode)
        {
            return Err(unsuitable(format!(
                "it does not support CIBA delivery mode `{mode}`"
            )));
        }
        if let Some(grants) = metadata.grant_types_supported()
            && !grants.iter().any(|g| g.as_ref() == CIBA_GRANT)
        {
            return Err(unsuitable(format!(
                "it does not list the `{CIBA_GRANT}` grant"
            )));
        }
        let method = self.inner.auth.method();
        if let Some(methods) = metadata.token_endpoint_auth_methods_supported()
            && !methods.iter().any(|m| m.as_ref() == method)
        {
            return Err(unsuitable(format!(
                "it does not accept client authentication `{method}`"
            )));
        }
        if metadata.issuer().url().scheme() == "http"
            && !metadata.issuer().url().host_str().is_some_and(is_loopback)
        {
            tracing::warn!(issuer = %issuer, "the CIBA IdP is reached over plain http");
        }
        let keys = JwksCache::new(
            metadata.jwks_uri().url().to_string(),
            self.inner.http.clone(),
        )
        .with_min_refresh_interval(self.inner.jwks_min_refresh);
        // Warm the key cache so the first approval does not wait for it; a
        // failure here is retried when a key is needed.
        if let Err(e) = keys.refresh().await {
            tracing::warn!(issuer = %issuer, error = %e, "fetching the CIBA IdP's keys failed");
        }
        Ok(Endpoints {
            issuer: metadata.issuer().as_str().to_owned(),
            backchannel,
            token,
            keys,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The claims of a CIBA ID token this client reads.
#[derive(Debug, Deserialize)]
struct IdTokenClaims {
    sub: String,
    #[serde(default)]
    aud: Value,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    auth_time: Option<i64>,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    amr: Option<Vec<String>>,
}

fn oauth_error(status: http::StatusCode, body: &[u8]) -> Option<OAuthError> {
    if !status.is_client_error() {
        return None;
    }
    serde_json::from_slice::<OAuthError>(body)
        .ok()
        .filter(|e| !e.error.is_empty())
}

/// A successful backchannel authentication response (CIBA Core §7.3).
#[derive(Debug)]
struct Accepted {
    auth_req_id: AuthReqId,
    expires_in: Duration,
    interval: Option<Duration>,
}

fn parse_accepted(body: &[u8]) -> Result<Accepted, CibaError> {
    let malformed = |why: &str| {
        CibaError::Unavailable(format!(
            "the backchannel authentication response is malformed: {why}"
        ))
    };
    let json: Value = serde_json::from_slice(body).map_err(|_| malformed("not JSON"))?;
    let auth_req_id = match json.get("auth_req_id") {
        Some(Value::String(id))
            if !id.is_empty()
                && id.len() <= MAX_AUTH_REQ_ID_BYTES
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            AuthReqId(id.clone())
        }
        _ => return Err(malformed("no usable `auth_req_id`")),
    };
    let expires_in = match json.get("expires_in").and_then(Value::as_u64) {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => return Err(malformed("`expires_in` is not a positive integer")),
    };
    let interval = match json.get("interval") {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(Duration::from_secs(value.as_u64().ok_or_else(|| {
                malformed("`interval` is not a non-negative integer")
            })?))
        }
    };
    Ok(Accepted {
        auth_req_id,
        expires_in,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backchannel_response_parsing() {
        let a = parse_accepted(br#"{"auth_req_id":"abc","expires_in":120}"#).unwrap();
        assert_eq!(a.auth_req_id.as_str(), "abc");
        assert_eq!(a.expires_in, Duration::from_secs(120));
        assert_eq!(a.interval, None, "absent: the state machine uses 5 s");
        let a = parse_accepted(br#"{"auth_req_id":"abc","expires_in":120,"interval":2}"#).unwrap();
        assert_eq!(a.interval, Some(Duration::from_secs(2)));
        for bad in [
            &br#"{"expires_in":120}"#[..],
            br#"{"auth_req_id":"","expires_in":120}"#,
            br#"{"auth_req_id":"a b","expires_in":120}"#,
            br#"{"auth_req_id":"abc","expires_in":0}"#,
            br#"{"auth_req_id":"abc","expires_in":"120"}"#,
            br#"{"auth_req_id":"abc","expires_in":120,"interval":-1}"#,
            b"<html>",
        ] {
            let e = parse_accepted(bad).unwrap_err();
            assert!(e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn only_client_errors_carry_oauth_errors() {
        let body = br#"{"error":"slow_down"}"#;
        assert!(oauth_error(http::StatusCode::BAD_REQUEST, body).is_some());
        assert!(oauth_error(http::StatusCode::BAD_GATEWAY, body).is_none());
        assert!(oauth_error(http::StatusCode::BAD_REQUEST, b"{}").is_none());
    }

    #[test]
    fn handles_never_show_in_debug_output() {
        assert_eq!(
            format!("{:?}", AuthReqId::new("secret-id".into())),
            "AuthReqId(***)"
        );
        assert_eq!(
            format!("{:?}", IdToken::new("h.p.s".into())),
            "IdToken(***)"
        );
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("idp.example.com"));
    }
}
