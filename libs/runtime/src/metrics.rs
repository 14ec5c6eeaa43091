//! Metrics: one OpenTelemetry meter provider per process, read two ways.
//!
//! - `GET /metrics` on the ops port (`server.ops_listen`, see
//!   [`crate::server`]) renders every instrument in the Prometheus text
//!   format, through `opentelemetry-prometheus`'s reader.
//! - When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, a periodic reader also pushes
//!   them over OTLP/gRPC (every `OTEL_METRIC_EXPORT_INTERVAL` ms, 60 s by
//!   default), beside the span exporter of [`crate::telemetry`].
//!
//! The provider is the global one: any crate creates its instruments with
//! [`meter`] (or `opentelemetry::global::meter("tether")` once the provider
//! is installed). [`crate::telemetry::init`] installs it first thing in every
//! binary; anything that asks for a meter before that (a test that starts a
//! service's `run` directly) gets the same provider without OTLP export.
//!
//! Every server counts its own calls with [`RpcMetricsLayer`]: duration by
//! gRPC service, method and status (`rpc.server.call.duration`), or, for the
//! plain HTTP endpoints, by verb, route and HTTP status
//! (`http.server.request.duration`). Labels stay bounded and say nothing
//! about who called: a method or route this process does not serve is
//! `_OTHER`, never the caller's text. The full list, with what to alert on,
//! is `docs/metrics.md`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prost::Message as _;
use tonic::codegen::Bytes;

pub use opentelemetry::KeyValue;
pub use opentelemetry::metrics::Counter;

/// The instrumentation scope every Tether instrument is created in.
pub const SCOPE: &str = "tether";

/// The bucket boundaries of every duration histogram, in seconds (the
/// OpenTelemetry RPC and HTTP conventions' advice).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label value for a method or route this process does not serve (the
/// OpenTelemetry conventions' spelling).
pub const OTHER: &str = "_OTHER";

/// The Prometheus text exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug)]
struct Installed {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    otlp: bool,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the global meter provider with OTLP export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Called by [`crate::telemetry::init`]
/// inside the Tokio runtime (the OTLP client lives on it); a second call
/// changes nothing.
pub(crate) fn init(service: &'static str) -> anyhow::Result<()> {
    let otlp = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(
            // Reads OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* variables.
            opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .context("building the OTLP metric exporter")?,
        ),
        _ => None,
    };
    let wanted_otlp = otlp.is_some();
    let installed = INSTALLED.get_or_init(|| build(Some(service), otlp));
    if wanted_otlp && !installed.otlp {
        tracing::warn!(
            "metrics were in use before start-up installed them: not exported over OTLP"
        );
    }
    Ok(())
}

/// Flushes the OTLP export (if any) and stops the provider; at exit only.
pub(crate) fn shutdown() {
    if let Some(installed) = INSTALLED.get()
        && installed.otlp
        && let Err(e) = installed.provider.shutdown()
    {
        eprintln!("warning: metric exporter shutdown failed: {e}");
    }
}

fn installed() -> &'static Installed {
    INSTALLED.get_or_init(|| build(None, None))
}

fn build(
    service: Option<&'static str>,
    otlp: Option<opentelemetry_otlp::MetricExporter>,
) -> Installed {
    let registry = prometheus::Registry::new();
    let mut resource = Resource::builder();
    if let Some(service) = service {
        resource = resource.with_service_name(service);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource.build());
    // Without scope labels: every instrument is in the one `tether` scope,
    // and the series keep the names and labels docs/metrics.md lists.
    match opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
    {
        Ok(reader) => builder = builder.with_reader(reader),
        // Only a name clash inside a fresh registry could cause this.
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Prometheus reader; /metrics will be empty")
        }
    }
    let exporting = otlp.is_some();
    if let Some(exporter) = otlp {
        builder = builder.with_periodic_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let installed = Installed {
        provider,
        registry,
        otlp: exporting,
    };
    register_transport_counters();
    installed
}

/// The meter every Tether instrument is created with (installing the
/// provider first if nothing has yet).
pub fn meter() -> Meter {
    installed();
    opentelemetry::global::meter(SCOPE)
}

/// Every instrument of this process in the Prometheus text format.
pub fn render() -> String {
    let families = installed().registry.gather();
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::warn!(error = %e, "rendering metrics failed");
    }
    out
}

/// The transport's refusal and handshake counters
/// ([`crate::authz::METRICS`]), read when metrics are collected.
fn register_transport_counters() {
    let meter = opentelemetry::global::meter(SCOPE);
    meter
        .u64_observable_counter("tether.rpc.refused")
        .with_description("Calls refused by the per-RPC caller table, by reason.")
        .with_unit("{call}")
        .with_callback(|observer| {
            let (unauthenticated, denied, _) = crate::authz::METRICS.snapshot();
            observer.observe(
                unauthenticated,
                &[KeyValue::new("reason", "unauthenticated")],
            );
            observer.observe(denied, &[KeyValue::new("reason", "permission_denied")]);
        })
        .build();
    meter
        .u64_observable_counter("tether.tls.handshake_failures")
        .with_description("TLS handshakes refused or timed out.")
        .with_unit("{handshake}")
        .with_callback(|observer| {
            let (_, _, handshakes) = crate::authz::METRICS.snapshot();
            observer.observe(handshakes, &[]);
        })
        .build();
}

/// The name of a gRPC status code, as in the gRPC specification
/// (`PERMISSION_DENIED`); `UNKNOWN` for a number outside it.
pub fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Every `/package.Service/Method` some Tether process serves: the Tether
/// API, gRPC health and reflection. Read once from the descriptor sets the
/// servers are built from.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut known: HashSet<String> = [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for encoded in [
        tether_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let set = match prost_types::FileDescriptorSet::decode(encoded) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a descriptor set; its methods are labelled _OTHER");
                continue;
            }
        };
        for file in &set.file {
            for service in &file.service {
                let full = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    known.insert(format!("/{full}/{}", method.name()));
                }
            }
        }
    }
    known
});

/// HTTP routes that Tether serves next to gRPC (fixed paths only).
fn known_route(path: &str) -> Option<&'static str> {
    crate::authz::SELF_AUTHENTICATING_PATHS
        .iter()
        .copied()
        .chain(crate::authz::HTTP_BINDINGS.iter().map(|(p, _)| *p))
        .find(|known| *known == path)
}

/// The labels of one call, fixed before the call runs.
#[derive(Debug, Clone)]
enum Call {
    Grpc {
        service: &'static str,
        method: &'static str,
    },
    Http {
        verb: &'static str,
        route: &'static str,
    },
}

impl Call {
    fn of<B>(request: &http::Request<B>) -> Self {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let path = request.uri().path();
        if grpc {
            return match KNOWN_METHODS
                .get(path)
                .and_then(|p| p.strip_prefix('/').and_then(|rest| rest.split_once('/')))
            {
                Some((service, method)) => Self::Grpc { service, method },
                None => Self::Grpc {
                    service: OTHER,
                    method: OTHER,
                },
            };
        }
        let verb = match *request.method() {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::HEAD => "HEAD",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::OPTIONS => "OPTIONS",
            _ => OTHER,
        };
        Self::Http {
            verb,
            route: known_route(path).unwrap_or(OTHER),
        }
    }
}

/// The two duration histograms, created once per process.
#[derive(Debug)]
struct RpcInstruments {
    grpc: Histogram<f64>,
    http: Histogram<f64>,
}

static RPC_INSTRUMENTS: LazyLock<RpcInstruments> = LazyLock::new(|| {
    let meter = meter();
    RpcInstruments {
        grpc: meter
            .f64_histogram("rpc.server.call.duration")
            .with_description(
                "Duration of gRPC calls served, by service, method and status code (the count is the number of calls).",
            )
            .with_unit("s")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        http: meter
            .f64_histogram("http.server.request.duration")
            .with_description(
                "Duration of plain HTTP requests served, by verb, route and status (the count is the number of requests).",
            )
            .with_unit("s")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
    }
});

/// One call being measured: recorded exactly once, when its status is
/// known, or as CANCELLED when it is dropped first (the caller went away,
/// or the server's deadline cut it off).
#[derive(Debug)]
struct Measured {
    call: Option<Call>,
    start: Instant,
}

impl Measured {
    fn grpc(&mut self, code: i32) {
        if let Some(Call::Grpc { service, method }) = self.call.take() {
            RPC_INSTRUMENTS.grpc.record(
                self.start.elapsed().as_secs_f64(),
                &[
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", grpc_code_name(code)),
                ],
            );
        }
    }

    fn http(&mut self, status: http::StatusCode) {
        if let Some(Call::Http { verb, route }) = self.call.take() {
            RPC_INSTRUMENTS.http.record(
                self.start.elapsed().as_secs_f64(),
                &[
                    KeyValue::new("http.request.method", verb),
                    KeyValue::new("http.route", route),
                    KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
                ],
            );
        }
    }

    fn is_grpc(&self) -> bool {
        matches!(self.call, Some(Call::Grpc { .. }))
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        match self.call {
            Some(Call::Grpc { .. }) => self.grpc(tonic::Code::Cancelled as i32),
            // No response: the client closed the connection (499 in nginx's
            // spelling would be a made-up status; count it as 408).
            Some(Call::Http { .. }) => self.http(http::StatusCode::REQUEST_TIMEOUT),
            None => {}
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that records its call when the gRPC status arrives in
/// the trailers (or the stream ends or is dropped without one).
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    measured: Option<Measured>,
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(mut measured) = this.measured.take()
                {
                    measured.grpc(code);
                }
            }
            // The body failed: what the client sees is a reset stream.
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut measured) = this.measured.take() {
                    measured.grpc(tonic::Code::Internal as i32);
                }
            }
            // Ended without trailers: a gRPC call without a status.
            Poll::Ready(None) => {
                if let Some(mut measured) = this.measured.take() {
                    measured.grpc(tonic::Code::Unknown as i32);
                }
            }
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The tower layer that measures every call a server answers; the
/// outermost layer of [`crate::server`], so calls refused by the caller
/// table or the message limit are counted with their status too.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut measured = Measured {
            call: Some(Call::of(&request)),
            start: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = match future.await {
                Ok(response) => response,
                Err(e) => {
                    // The server turns an error into a response itself;
                    // nothing the handler chose.
                    if measured.is_grpc() {
                        measured.grpc(tonic::Code::Unknown as i32);
                    } else {
                        measured.http(http::StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    return Err(e);
                }
            };
            let (parts, inner) = response.into_parts();
            let measured = if measured.is_grpc() {
                match grpc_status(&parts.headers) {
                    // Trailers-only: a refusal before any message.
                    Some(code) => {
                        measured.grpc(code);
                        None
                    }
                    None if parts.status == http::StatusCode::OK => Some(measured),
                    // An HTTP-level answer to a gRPC call (404 from an
                    // unknown path on a plain router): UNIMPLEMENTED, as the
                    // client sees it.
                    None => {
                        measured.grpc(tonic::Code::Unimplemented as i32);
                        None
                    }
                }
            } else {
                measured.http(parts.status);
                None
            };
            Ok(http::Response::from_parts(
                parts,
                MeteredBody { inner, measured },
            ))
        })
    }
}

/// A series of [`render`]'s output by name and labels in any order:
/// `value_of(scrape, "tether_decisions_total", &[("outcome", "allow")])`
/// sums every series of that name whose labels include all of `labels`.
pub fn value_of(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let present: Vec<(&str, &str)> = split_labels(label_text);
            labels
                .iter()
                .all(|want| present.contains(want))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `a="x",b="y"` → `[("a","x"), ("b","y")]` (values as written, escapes
/// kept; Tether's label values never contain `",`).
fn split_labels(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        out.push((key.trim_start_matches(','), value));
        rest = tail;
    }
    out
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
