//! The client, the session it opens, and the requests a session makes.
//!
//! One channel per [`Client`] (lazily connected, so a facade that is not up
//! yet is an UNAVAILABLE the retry policy deals with), wrapped the way
//! every Tether service wraps its channels (`tether_runtime`'s
//! `TracedClient` and `ClientInterceptor`): a client span per call, W3C
//! trace context in the metadata, a deadline on every call.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient;
use tether_runtime::client::ClientInterceptor;
use tether_runtime::propagation::TracedClient;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::agent_key::AgentKey;
use crate::config::ClientConfig;
use crate::error::{Error, RpcError, code_name};
use crate::retry::{Rpc, random, retryable};
use crate::types::{
    Acquired, ApprovalState, ApprovalTicket, Authorization, Entity, SessionDetails, SessionInfo,
    SessionReceipt,
};

/// RFC 8693 token type of the user's access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The longest a raw [`Session::watch_approval`] stream lives: a delegated
/// token (and so its session and tickets) lives at most 15 minutes.
const MAX_WATCH: Duration = Duration::from_secs(15 * 60);

/// While a ticket is PENDING the facade re-sends it at least every 30 s; a
/// stream silent for longer is taken as broken and opened again.
const WATCH_IDLE: Duration = Duration::from_secs(45);

/// Largest ticket id the contract allows.
const MAX_TICKET_ID_BYTES: usize = 128;

type Channel = TracedClient<InterceptedService<tonic::transport::Channel, Interceptor>>;

/// A caller-chosen `traceparent`, carried to the interceptor in the
/// request's extensions.
#[derive(Clone)]
struct ExplicitTraceparent(MetadataValue<Ascii>);

/// Tether's client interceptor (trace context from the current span,
/// deadline), then the caller's explicit `traceparent` if it set one (it
/// wins: the caller asked for it), else W3C trace context from the current
/// OpenTelemetry span even when the application installed no global
/// propagator.
#[derive(Debug, Clone, Copy)]
struct Interceptor(ClientInterceptor);

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

impl tonic::service::Interceptor for Interceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let explicit = request.extensions().get::<ExplicitTraceparent>().cloned();
        let mut request = self.0.call(request)?;
        let metadata = request.metadata_mut();
        match explicit {
            Some(ExplicitTraceparent(traceparent)) => {
                metadata.insert("traceparent", traceparent);
                // A tracestate belongs to the trace it came with.
                metadata.remove("tracestate");
            }
            None if metadata.get("traceparent").is_none() => {
                let cx = tracing::Span::current().context();
                if cx.span().span_context().is_valid() {
                    opentelemetry_sdk::propagation::TraceContextPropagator::new()
                        .inject_context(&cx, &mut MetadataInjector(metadata));
                }
            }
            None => {}
        }
        Ok(request)
    }
}

/// Checks a W3C `traceparent` (version 00) and makes it a metadata value.
fn traceparent_value(traceparent: &str) -> Result<MetadataValue<Ascii>, Error> {
    let bad = || {
        Error::Invalid(format!(
            "`{}` is not a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`)",
            tether_runtime::clip(traceparent)
        ))
    };
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    match parts.as_slice() {
        [version, trace, span, flags]
            if *version == "00"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && !zero(trace)
                && !zero(span) =>
        {
            MetadataValue::try_from(traceparent).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// What every call shares: the channel, the configuration, the agent's
/// key, and per-scope options (deadline, explicit trace parent).
#[derive(Clone)]
struct Core {
    grpc: AgentGatewayClient<Channel>,
    config: Arc<ClientConfig>,
    agent: Arc<AgentKey>,
    traceparent: Option<MetadataValue<Ascii>>,
    call_timeout: Duration,
}

impl Core {
    /// A request carrying `message`, the deadline `timeout`, the bearer
    /// token if any, and the explicit trace parent if any.
    fn request<T>(
        &self,
        message: T,
        timeout: Duration,
        bearer: Option<&MetadataValue<Ascii>>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        if let Some(bearer) = bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        if let Some(traceparent) = &self.traceparent {
            request
                .extensions_mut()
                .insert(ExplicitTraceparent(traceparent.clone()));
        }
        request
    }

    /// Makes a call, retrying what [`retryable`] allows, as the retry
    /// policy says. `attempt` builds each attempt afresh (a StartSession
    /// attempt signs a new assertion); it is given the deadline to send
    /// (`sent_timeout`, the call timeout unless a stream asks for longer).
    /// Each attempt must produce its response within the call timeout.
    async fn call<T, F, Fut>(
        &self,
        rpc: Rpc,
        secrets: &[&str],
        sent_timeout: Option<Duration>,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Duration) -> Result<Fut, Error>,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let policy = self.config.retry;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let deadline = Instant::now() + self.call_timeout;
            let future = attempt(sent_timeout.unwrap_or(self.call_timeout))?;
            let status = match tokio::time::timeout_at(deadline, future).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded("the call's deadline passed"),
            };
            let error = RpcError::from_status(&status, secrets, Instant::now() >= deadline)
                .with_attempts(attempts);
            let delay = retryable(rpc, error.code())
                .then(|| policy.next_delay(attempts, error.retry_after(), random()))
                .flatten();
            let Some(delay) = delay else {
                return Err(error.into());
            };
            tracing::debug!(
                rpc = rpc.name(),
                attempt = attempts,
                code = code_name(&error.code()),
                reason = error.reason().unwrap_or_default(),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "retrying a call the contract makes safe to retry"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// A client of the agent facade, for one agent (its key signs the
/// assertions). Cheap to clone; clones share the connection.
///
/// `Debug` shows the endpoint and agent id, never a key or token.
#[derive(Clone)]
pub struct Client {
    core: Core,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.core.config.endpoint)
            .field("agent", &self.core.agent)
            .field("call_timeout", &self.core.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`'s facade, signing as `agent`. Connects lazily,
    /// on the first call; must be called within a Tokio runtime.
    pub fn new(config: ClientConfig, agent: AgentKey) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Invalid(
                "a Client must be created within a Tokio runtime".into(),
            ));
        }
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|_| Error::Invalid("the endpoint is not a valid URL".into()))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if let Some(ca) = &config.ca_pem {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .timeout(config.connect_timeout);
            if let Some(name) = &config.server_name {
                tls = tls.domain_name(name.clone());
            }
            if let Some((cert, key)) = &config.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Invalid(format!("TLS configuration: {e}")))?;
        }
        // Every call sets its own deadline; this only caps it.
        let interceptor = Interceptor(ClientInterceptor::new(MAX_WATCH));
        let channel = TracedClient::wrap(InterceptedService::new(
            endpoint.connect_lazy(),
            interceptor,
        ));
        let call_timeout = config.call_timeout;
        Ok(Self {
            core: Core {
                grpc: AgentGatewayClient::new(channel),
                config: Arc::new(config),
                agent: Arc::new(agent),
                traceparent: None,
                call_timeout,
            },
        })
    }

    /// This client with an explicit W3C `traceparent` on every call (and
    /// on every call of the sessions it starts), instead of the current
    /// span's context.
    pub fn with_traceparent(mut self, traceparent: &str) -> Result<Self, Error> {
        self.core.traceparent = Some(traceparent_value(traceparent)?);
        Ok(self)
    }

    /// This client with another per-call deadline.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.core.call_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Opens a session: `user_token` is the user's access token from the
    /// company IdP (SECRET), `intent` the RFC 9396 `authorization_details`
    /// JSON array the session is bound to, `scope` the space-separated
    /// scope wanted (empty: everything allowed). The agent signs a fresh
    /// assertion for every attempt.
    pub async fn start_session(
        &self,
        user_token: &str,
        intent: &str,
        scope: &str,
    ) -> Result<Session, Error> {
        if user_token.is_empty() {
            return Err(Error::Invalid("the user token is empty".into()));
        }
        let core = &self.core;
        let response = core
            .call(Rpc::StartSession, &[user_token], None, |timeout| {
                // INVARIANT: an assertion is single-use; every attempt
                // signs a new one (new `jti`).
                let assertion = core.agent.assertion(&core.config.token_endpoint)?;
                let request = core.request(
                    pb::StartSessionRequest {
                        user_token: user_token.to_owned(),
                        user_token_type: ACCESS_TOKEN_TYPE.into(),
                        agent_assertion: assertion,
                        agent_assertion_type: String::new(),
                        intent: intent.to_owned(),
                        scope: scope.to_owned(),
                    },
                    timeout,
                    None,
                );
                let mut grpc = core.grpc.clone();
                Ok(async move {
                    grpc.start_session(request)
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .await?;
        Session::new(core.clone(), response)
    }
}

/// An open session: holds the delegated token (SECRET) and sends it as
/// `authorization: Bearer` metadata on every call. Cheap to clone.
///
/// `Debug` shows the session id, user and agent, never the token.
#[derive(Clone)]
pub struct Session {
    core: Core,
    token: Arc<str>,
    bearer: MetadataValue<Ascii>,
    info: SessionInfo,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("info", &self.info)
            .field("token", &format_args!("<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(core: Core, response: pb::StartSessionResponse) -> Result<Self, Error> {
        if response.delegated_token.is_empty() || response.session_id.is_empty() {
            return Err(Error::Protocol(
                "StartSession returned no session id or token".into(),
            ));
        }
        if !response.token_type.eq_ignore_ascii_case("bearer") {
            return Err(Error::Protocol(format!(
                "token type `{}` is not `Bearer`",
                tether_runtime::clip(&response.token_type)
            )));
        }
        let mut bearer = MetadataValue::try_from(format!("Bearer {}", response.delegated_token))
            .map_err(|_| Error::Protocol("the delegated token is not valid header text".into()))?;
        bearer.set_sensitive(true);
        let info = SessionInfo::from_pb(&response);
        Ok(Self {
            core,
            token: Arc::from(response.delegated_token),
            bearer,
            info,
        })
    }

    /// The session id (not secret).
    pub fn id(&self) -> &str {
        &self.info.session_id
    }

    /// What StartSession returned, without the token.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// This session with an explicit W3C `traceparent` on every call.
    pub fn with_traceparent(mut self, traceparent: &str) -> Result<Self, Error> {
        self.core.traceparent = Some(traceparent_value(traceparent)?);
        Ok(self)
    }

    /// This session with another per-call deadline.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.core.call_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    fn secrets(&self) -> [&str; 1] {
        [&self.token]
    }

    /// Asks whether the agent may perform the action now (Authorize). DENY
    /// is an answer, not an error. With
    /// [`AuthorizeRequest::wait_for_approval`], an APPROVAL_REQUIRED is
    /// waited out and the request made once more when approved.
    pub async fn authorize(&self, request: &AuthorizeRequest) -> Result<Authorization, Error> {
        let first = self.authorize_once(request).await?;
        let ticket_id = first.approval.as_ref().map(|a| a.ticket.ticket_id.clone());
        let (Some(max_wait), Some(ticket_id)) = (request.wait, ticket_id) else {
            return Ok(first);
        };
        self.wait_for_approval(&ticket_id, max_wait).await?;
        self.authorize_once(request).await
    }

    async fn authorize_once(&self, request: &AuthorizeRequest) -> Result<Authorization, Error> {
        let message = pb::AuthorizeRequest {
            action: Some(request.action.to_pb()),
            resource: Some(request.resource.to_pb()),
            context_json: request.context_json.clone(),
        };
        let response = self
            .core
            .call(Rpc::Authorize, &self.secrets(), None, |timeout| {
                let request = self
                    .core
                    .request(message.clone(), timeout, Some(&self.bearer));
                let mut grpc = self.core.grpc.clone();
                Ok(async move {
                    grpc.authorize(request)
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .await?;
        Authorization::from_authorize(response)
    }

    /// Authorizes the action and, when allowed, gets a just-in-time
    /// credential through the request's profile (AcquireCredential). A
    /// DENY is an error (PERMISSION_DENIED, reason `POLICY_DENIED`, with
    /// [`Error::policy_ids`]).
    ///
    /// With [`CredentialRequest::wait_for_approval`], an APPROVAL_REQUIRED
    /// is followed with WatchApproval until the ticket is terminal; once
    /// APPROVED the same request is made once more and its answer
    /// returned. A ticket DENIED, EXPIRED, CANCELLED or FAILED is
    /// [`Error::ApprovalNotGranted`]; still pending at the limit,
    /// [`Error::ApprovalTimedOut`].
    ///
    /// Retried only on UNAVAILABLE: after DEADLINE_EXCEEDED a credential
    /// may have been issued, and a retry would issue another.
    pub async fn acquire_credential(&self, request: &CredentialRequest) -> Result<Acquired, Error> {
        let first = self.acquire_once(request).await?;
        let ticket_id = match &first {
            Acquired::ApprovalRequired(decision) => decision
                .approval
                .as_ref()
                .map(|a| a.ticket.ticket_id.clone()),
            Acquired::Issued(_) => None,
        };
        let (Some(max_wait), Some(ticket_id)) = (request.wait, ticket_id) else {
            return Ok(first);
        };
        self.wait_for_approval(&ticket_id, max_wait).await?;
        self.acquire_once(request).await
    }

    async fn acquire_once(&self, request: &CredentialRequest) -> Result<Acquired, Error> {
        let message = pb::AcquireCredentialRequest {
            action: Some(request.action.to_pb()),
            resource: Some(request.resource.to_pb()),
            context_json: request.context_json.clone(),
            profile: request.profile.clone(),
            requested_ttl: request.ttl.map(|ttl| prost_types::Duration {
                seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(ttl.subsec_nanos()).unwrap_or(0),
            }),
        };
        let response = self
            .core
            .call(Rpc::AcquireCredential, &self.secrets(), None, |timeout| {
                let request = self
                    .core
                    .request(message.clone(), timeout, Some(&self.bearer));
                let mut grpc = self.core.grpc.clone();
                Ok(async move {
                    grpc.acquire_credential(request)
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .await?;
        Acquired::from_pb(response)
    }

    /// Follows an approval ticket of this session (WatchApproval): every
    /// message is a full snapshot, the last one terminal. Opening is
    /// retried as the contract allows; the stream lives at most 15 minutes.
    pub async fn watch_approval(&self, ticket_id: &str) -> Result<ApprovalWatch, Error> {
        self.open_watch(ticket_id, Instant::now() + MAX_WATCH, true)
            .await
    }

    async fn open_watch(
        &self,
        ticket_id: &str,
        until: Instant,
        retry: bool,
    ) -> Result<ApprovalWatch, Error> {
        if ticket_id.is_empty()
            || ticket_id.len() > MAX_TICKET_ID_BYTES
            || ticket_id.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "a ticket id is 1 to {MAX_TICKET_ID_BYTES} bytes without control characters"
            )));
        }
        let life = until.saturating_duration_since(Instant::now());
        if life.is_zero() {
            return Err(RpcError::local(
                Code::DeadlineExceeded,
                "no time left to watch the approval",
            )
            .into());
        }
        let message = pb::WatchApprovalRequest {
            ticket_id: ticket_id.to_owned(),
        };
        let mut core = self.core.clone();
        if !retry {
            let mut config = (*core.config).clone();
            config.retry = crate::RetryPolicy::never();
            core.config = Arc::new(config);
        }
        // The stream's deadline is its whole life; opening it must still
        // happen within the call timeout.
        let stream = core
            .call(Rpc::WatchApproval, &self.secrets(), Some(life), |timeout| {
                let request = core.request(message.clone(), timeout, Some(&self.bearer));
                let mut grpc = core.grpc.clone();
                Ok(async move {
                    grpc.watch_approval(request)
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .await?;
        Ok(ApprovalWatch {
            stream,
            ticket_id: ticket_id.to_owned(),
            until,
            token: Arc::clone(&self.token),
        })
    }

    /// Waits until the ticket is terminal, at most `max_wait`, watching it
    /// again when a stream breaks (UNAVAILABLE, DEADLINE_EXCEEDED, silence
    /// past the keepalive), within the retry policy. Returns the APPROVED
    /// ticket; any other terminal state is [`Error::ApprovalNotGranted`],
    /// still pending at `max_wait` is [`Error::ApprovalTimedOut`].
    pub async fn wait_for_approval(
        &self,
        ticket_id: &str,
        max_wait: Duration,
    ) -> Result<ApprovalTicket, Error> {
        let started = Instant::now();
        let until = started + max_wait;
        let policy = self.core.config.retry;
        let mut failures = 0u32;
        loop {
            let mut delivered = false;
            let error = match self.watch_to_end(ticket_id, until, &mut delivered).await {
                Ok(ticket) if ticket.state == ApprovalState::Approved => return Ok(ticket),
                Ok(ticket) => {
                    return Err(Error::ApprovalNotGranted {
                        ticket: Box::new(ticket),
                    });
                }
                Err(Error::Rpc(e)) if retryable(Rpc::WatchApproval, e.code()) => e,
                Err(e) => return Err(e),
            };
            if Instant::now() >= until {
                return Err(Error::ApprovalTimedOut {
                    ticket_id: ticket_id.to_owned(),
                    waited: started.elapsed(),
                });
            }
            // A stream that delivered snapshots was working (it ended at
            // a server's deadline, say): watch again without counting it.
            // Only failures in a row count against the retry policy.
            let delay = if delivered {
                failures = 0;
                policy.ceiling(1)
            } else {
                failures += 1;
                match policy.next_delay(failures, error.retry_after(), random()) {
                    Some(delay) => delay,
                    None => return Err(error.with_attempts(failures).into()),
                }
            };
            tracing::debug!(
                ticket_id = %tether_runtime::clip(ticket_id),
                code = code_name(&error.code()),
                failures,
                "watching the approval again"
            );
            tokio::time::sleep(delay.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// One stream, read until a terminal snapshot; any other end is an
    /// error (retryable when the contract says to watch again).
    async fn watch_to_end(
        &self,
        ticket_id: &str,
        until: Instant,
        delivered: &mut bool,
    ) -> Result<ApprovalTicket, Error> {
        let mut watch = self.open_watch(ticket_id, until, false).await?;
        loop {
            let next = tokio::time::timeout(WATCH_IDLE, watch.next()).await;
            match next {
                Err(_) => {
                    return Err(RpcError::local(
                        Code::Unavailable,
                        "no approval snapshot within the keepalive interval",
                    )
                    .into());
                }
                Ok(Ok(Some(ticket))) => {
                    *delivered = true;
                    if ticket.state.is_terminal() {
                        return Ok(ticket);
                    }
                }
                Ok(Ok(None)) => {
                    return Err(RpcError::local(
                        Code::Unavailable,
                        "the approval stream ended before a terminal state",
                    )
                    .into());
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Describes the session and its leases (GetSession). Works after the
    /// session ended.
    pub async fn get(&self) -> Result<SessionDetails, Error> {
        let response = self
            .core
            .call(Rpc::GetSession, &self.secrets(), None, |timeout| {
                let request = self.core.request(
                    pb::GetSessionRequest::default(),
                    timeout,
                    Some(&self.bearer),
                );
                let mut grpc = self.core.grpc.clone();
                Ok(async move {
                    grpc.get_session(request)
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .await?;
        SessionDetails::from_pb(response.session)
    }

    /// Ends the session everywhere (EndSession): its tokens stop working,
    /// its approvals are cancelled, its credentials revoked. Idempotent;
    /// `reason` (no secrets, at most 256 bytes) goes to the audit log.
    pub async fn end(&self, reason: &str) -> Result<SessionReceipt, Error> {
        let message = pb::EndSessionRequest {
            reason: reason.to_owned(),
        };
        let response = self
            .core
            .call(Rpc::EndSession, &self.secrets(), None, |timeout| {
                let request = self
                    .core
                    .request(message.clone(), timeout, Some(&self.bearer));
                let mut grpc = self.core.grpc.clone();
                Ok(async move {
                    grpc.end_session(request)
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .await?;
        SessionReceipt::from_pb(response.receipt)
    }
}

/// A WatchApproval stream: snapshots of one ticket until it is terminal.
pub struct ApprovalWatch {
    stream: tonic::Streaming<pb::WatchApprovalResponse>,
    ticket_id: String,
    until: Instant,
    token: Arc<str>,
}

impl std::fmt::Debug for ApprovalWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalWatch")
            .field("ticket_id", &self.ticket_id)
            .finish_non_exhaustive()
    }
}

impl ApprovalWatch {
    /// The next snapshot; `None` once the stream has ended (after the
    /// terminal snapshot).
    pub async fn next(&mut self) -> Result<Option<ApprovalTicket>, Error> {
        let message = match tokio::time::timeout_at(self.until, self.stream.message()).await {
            Err(_) => {
                return Err(
                    RpcError::local(Code::DeadlineExceeded, "the watch's deadline passed").into(),
                );
            }
            Ok(Err(status)) => {
                return Err(RpcError::from_status(
                    &status,
                    &[&self.token],
                    Instant::now() >= self.until,
                )
                .into());
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(message))) => message,
        };
        let ticket = message
            .ticket
            .ok_or_else(|| Error::Protocol("an approval snapshot without its ticket".into()))?;
        let ticket = ApprovalTicket::from_pb(ticket)?;
        if ticket.ticket_id != self.ticket_id {
            return Err(Error::Protocol(
                "an approval snapshot of another ticket".into(),
            ));
        }
        Ok(Some(ticket))
    }
}

/// An Authorize question: may the agent do `action` on `resource` now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    action: Entity,
    resource: Entity,
    context_json: String,
    wait: Option<Duration>,
}

impl AuthorizeRequest {
    pub fn new(action: Entity, resource: Entity) -> Self {
        Self {
            action,
            resource,
            context_json: String::new(),
            wait: None,
        }
    }

    /// Extra context (a JSON object in Cedar's JSON value format, checked
    /// against the policy schema). It can narrow what policies allow, never
    /// widen it; `now`, `network`, `session`, `risk` and `approval` are
    /// Tether's.
    pub fn context(mut self, context: &serde_json::Value) -> Self {
        self.context_json = context.to_string();
        self
    }

    /// On APPROVAL_REQUIRED, wait up to `max_wait` for the user's answer,
    /// then ask again once.
    pub fn wait_for_approval(mut self, max_wait: Duration) -> Self {
        self.wait = Some(max_wait);
        self
    }
}

/// An AcquireCredential request: `action` on `resource`, with a credential
/// through `profile` (e.g. `hr-read`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    action: Entity,
    resource: Entity,
    profile: String,
    context_json: String,
    ttl: Option<Duration>,
    wait: Option<Duration>,
}

impl CredentialRequest {
    pub fn new(action: Entity, resource: Entity, profile: impl Into<String>) -> Self {
        Self {
            action,
            resource,
            profile: profile.into(),
            context_json: String::new(),
            ttl: None,
            wait: None,
        }
    }

    /// Extra context, as [`AuthorizeRequest::context`].
    pub fn context(mut self, context: &serde_json::Value) -> Self {
        self.context_json = context.to_string();
        self
    }

    /// A TTL wish (capped by the profile and the session, never refused for
    /// being long; must be positive).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// On APPROVAL_REQUIRED, wait up to `max_wait` for the user's answer,
    /// then make the request once more.
    pub fn wait_for_approval(mut self, max_wait: Duration) -> Self {
        self.wait = Some(max_wait);
        self
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
