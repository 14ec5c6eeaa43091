//! W3C trace context (`traceparent`, `tracestate`) across gRPC hops, and a
//! span on each side of every hop.
//!
//! - Servers wrap their routes in [`ServerTraceLayer`] (as
//!   [`crate::server::serve`] does): every request gets a span of kind
//!   SERVER whose parent is the caller's context from the request headers.
//! - Clients wrap their channel in [`TracedClient`] (as
//!   [`crate::client::Clients::grpc`] does): every call gets a span of kind
//!   CLIENT, child of the current span, whose context travels in the call's
//!   metadata, so the callee's server span is its child.
//!
//! Both spans carry the OpenTelemetry RPC conventions (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`); never a header or
//! a body. Only W3C trace context is read: `baggage` is ignored, so nothing a
//! caller sends becomes an attribute. A caller without a verified client
//! certificate (an agent, an IdP) joins the trace with its trace id and
//! parent span id, but its `tracestate` is dropped and its sampled flag is
//! not obeyed: it cannot hide its own requests from the traces.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceState};
use tonic::codegen::Bytes;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::tls::PeerInfo;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`), for names a gRPC
/// service can have; anything else (an HTTP path, a caller's garbage) is
/// not treated as a gRPC method.
fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let name = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    (name(service, 128) && service.contains('.') && name(method, 64) && !method.contains('.'))
        .then_some((service, method))
}

/// The parent of a server span: the caller's W3C trace context. A caller
/// that proved no Tether identity keeps only its trace id and span id.
fn parent_context<B>(request: &http::Request<B>) -> opentelemetry::Context {
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let trusted =
        PeerInfo::from_extensions(request.extensions()).is_some_and(|peer| peer.identity.is_some());
    if trusted {
        return cx;
    }
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return opentelemetry::Context::new();
    }
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        remote.trace_id(),
        remote.span_id(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The span of one incoming request, child of the caller's trace. Carries
/// the method (or, for plain HTTP, the verb and path), never the body or
/// headers.
pub fn server_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let span = match grpc_method(path) {
        Some((service, method)) => tracing::info_span!(
            "grpc.server",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        ),
        None => tracing::info_span!(
            "http.server",
            otel.name = %format_args!("{} {}", request.method(), crate::clip(path)),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %request.method(),
            url.path = %crate::clip(path),
            http.response.status_code = tracing::field::Empty,
        ),
    };
    // No OpenTelemetry layer installed (export disabled): nothing to link.
    let _ = span.set_parent(parent_context(request));
    span
}

/// The span of one outgoing call, child of the current span.
pub fn client_span(path: &str) -> tracing::Span {
    let (service, method) = grpc_method(path).unwrap_or(("", path));
    tracing::info_span!(
        "grpc.client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %crate::clip(method),
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// Which end of a call a span is (what counts as an error differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// `rpc.grpc.status_code`, and the span status the conventions give it: a
/// client errs on any code but OK; a server only on the codes that mean it
/// failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS), not on a refusal of the caller's request.
fn record_grpc_status(span: &tracing::Span, code: i32, side: Side) {
    span.record("rpc.grpc.status_code", i64::from(code));
    let error = match side {
        Side::Client => code != 0,
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    if error {
        span.record("otel.status_code", "ERROR");
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that records the call's gRPC status from its trailers
/// and keeps the call's span open until the last frame.
#[derive(Debug)]
pub struct TracedBody {
    inner: tonic::body::Body,
    /// Until the status is known.
    span: Option<(tracing::Span, Side)>,
}

impl TracedBody {
    fn finish(&mut self, code: i32) {
        if let Some((span, side)) = self.span.take() {
            record_grpc_status(&span, code, side);
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code() as i32),
            Poll::Ready(None) => this.span = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Records what the response head says (a trailers-only gRPC answer, or
/// an HTTP status) and hands the rest to the body.
fn traced_response(
    response: http::Response<tonic::body::Body>,
    span: tracing::Span,
    side: Side,
) -> http::Response<TracedBody> {
    let (parts, inner) = response.into_parts();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let span = match grpc_status(&parts.headers) {
        Some(code) => {
            record_grpc_status(&span, code, side);
            None
        }
        None if grpc => Some((span, side)),
        None => {
            span.record("http.response.status_code", parts.status.as_u16());
            if parts.status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            None
        }
    };
    http::Response::from_parts(parts, TracedBody { inner, span })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The tower layer that gives every incoming request its server span.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// See [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<TracedBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = server_span(&request);
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            match result {
                Ok(response) => Ok(traced_response(response, span, Side::Server)),
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    Err(e)
                }
            }
        })
    }
}

/// A gRPC channel whose every call has its client span, and carries that
/// span's context to the callee (with the inner service's interceptor).
#[derive(Debug, Clone)]
pub struct TracedClient<S> {
    inner: S,
}

impl<S> TracedClient<S> {
    /// Traces the calls made on `inner`.
    pub fn wrap(inner: S) -> Self {
        Self { inner }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TracedClient<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<TracedBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = client_span(request.uri().path());
        // The interceptor inside injects the current span: this one.
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            match result {
                Ok(response) => Ok(traced_response(
                    response.map(tonic::body::Body::new),
                    span,
                    Side::Client,
                )),
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    Err(e)
                }
            }
        })
    }
}

/// Injects the current span's context into outgoing request metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tonic::service::Interceptor as _;
    use tower::Service as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        (provider, exporter)
    }

    fn finished(provider: &SdkTracerProvider, exporter: &InMemorySpanExporter) -> Vec<SpanData> {
        provider.force_flush().unwrap();
        exporter.get_finished_spans().unwrap()
    }

    fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn request(flags: &str, peer: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder()
            .uri("/tether.policy.v1.PolicyDecision/Check")
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-{flags}"))
            .header("tracestate", "agent=chosen-by-the-caller")
            .header("baggage", "decision=ALLOW,marker=baggage-marker")
            .header("authorization", "Bearer secret-token")
            .body(())
            .unwrap();
        request.extensions_mut().insert(PeerInfo {
            remote_addr: None,
            identity: peer.map(Arc::from),
        });
        request
    }

    #[test]
    fn server_span_continues_the_callers_trace_and_client_passes_it_on() {
        let (provider, exporter) = provider();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));

        let outgoing = tracing::subscriber::with_default(subscriber, || {
            let span = server_span(&request("01", None));
            let _entered = span.enter();
            // A downstream call made while handling the request.
            let out = TraceContextInterceptor
                .call(tonic::Request::new(()))
                .unwrap();
            let cx = span.context();
            assert_eq!(cx.span().span_context().trace_id().to_string(), TRACE_ID);
            out
        });
        let header = outgoing
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap()
            .to_owned();
        assert!(header.starts_with(&format!("00-{TRACE_ID}-")), "{header}");
        assert!(
            !header.contains(PARENT_ID),
            "the hop gets its own span id: {header}"
        );

        let spans = finished(&provider, &exporter);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
        assert_eq!(span.parent_span_id.to_string(), PARENT_ID);
        assert_eq!(span.name, "tether.policy.v1.PolicyDecision/Check");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(attr(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attr(span, "rpc.service").as_deref(),
            Some("tether.policy.v1.PolicyDecision")
        );
        assert_eq!(attr(span, "rpc.method").as_deref(), Some("Check"));
        // Headers (bearer tokens, baggage) never become span attributes.
        let attrs = format!("{:?}", span.attributes);
        for secret in ["secret-token", "baggage-marker", "chosen-by-the-caller"] {
            assert!(!attrs.contains(secret), "{attrs}");
        }
    }

    #[test]
    fn a_caller_without_an_identity_joins_the_trace_but_cannot_steer_it() {
        let (provider, exporter) = provider();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            // An agent asks not to be sampled: it is recorded anyway, and
            // its tracestate is not carried on.
            drop(server_span(&request("00", None)));
            // A Tether service's context is taken as it is.
            drop(server_span(&request(
                "01",
                Some("spiffe://t/tether/agent-facade"),
            )));
            drop(server_span(&request(
                "00",
                Some("spiffe://t/tether/agent-facade"),
            )));
        });
        let spans = finished(&provider, &exporter);
        assert_eq!(
            spans.len(),
            2,
            "the service's unsampled call stays unsampled"
        );
        let (agent, service) = (&spans[0], &spans[1]);
        for span in [agent, service] {
            assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
            assert_eq!(span.parent_span_id.to_string(), PARENT_ID);
        }
        assert_eq!(agent.span_context.trace_state().header(), "");
        assert_eq!(
            service.span_context.trace_state().header(),
            "agent=chosen-by-the-caller"
        );
    }

    /// A channel stand-in: remembers the request headers, answers `status`
    /// as a trailers-only gRPC response.
    #[derive(Clone)]
    struct Answer {
        status: tonic::Status,
        seen: Arc<Mutex<Option<http::HeaderMap>>>,
    }

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            // What the interceptor of a real channel sends.
            let request = TraceContextInterceptor
                .call(tonic::Request::new(()))
                .unwrap();
            *self.seen.lock().unwrap() = Some(request.metadata().clone().into_headers());
            std::future::ready(Ok(self.status.clone().into_http()))
        }
    }

    #[tokio::test]
    async fn every_call_has_a_client_span_with_its_status_and_the_callee_is_its_child() {
        let (provider, exporter) = provider();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        let seen = Arc::new(Mutex::new(None));
        let mut client = TracedClient::wrap(Answer {
            status: tonic::Status::permission_denied("no"),
            seen: Arc::clone(&seen),
        });
        let parent = tracing::info_span!("facade.acquire_credential");
        let request = http::Request::builder()
            .uri("/tether.credentials.v1.CredentialIssuer/Issue")
            .body(())
            .unwrap();
        // As a generated client does: the call is made inside the caller's
        // span.
        let response = async { client.call(request).await }
            .instrument(parent.clone())
            .await
            .unwrap();
        drop(response);
        drop(parent);

        let spans = finished(&provider, &exporter);
        assert_eq!(spans.len(), 2);
        let (call, parent) = (&spans[0], &spans[1]);
        assert_eq!(call.name, "tether.credentials.v1.CredentialIssuer/Issue");
        assert_eq!(call.span_kind, SpanKind::Client);
        assert_eq!(call.parent_span_id, parent.span_context.span_id());
        assert_eq!(call.status, Status::error(""));
        assert_eq!(attr(call, "rpc.grpc.status_code").as_deref(), Some("7"));
        assert_eq!(attr(call, "rpc.method").as_deref(), Some("Issue"));
        // The callee is told the client span, not its parent.
        let headers = seen.lock().unwrap().take().unwrap();
        let traceparent = headers.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            traceparent,
            format!(
                "00-{}-{}-01",
                call.span_context.trace_id(),
                call.span_context.span_id()
            )
        );
    }

    #[test]
    fn only_grpc_shaped_paths_are_methods() {
        assert_eq!(
            grpc_method("/tether.policy.v1.PolicyDecision/Check"),
            Some(("tether.policy.v1.PolicyDecision", "Check"))
        );
        for path in [
            "/token",
            "/.well-known/jwks.json",
            "/ciba/notify",
            "/a.B/C/D",
            "/a.B/\r\nx",
            "/",
        ] {
            assert_eq!(grpc_method(path), None, "{path}");
        }
    }
}
