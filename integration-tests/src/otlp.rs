//! An OTLP/gRPC trace and metrics receiver on loopback: what the services export to when
//! a test or the demo sets `OTEL_EXPORTER_OTLP_ENDPOINT` to
//! [`Collector::start`]'s endpoint. No Jaeger or OpenTelemetry Collector can
//! be installed here, so this small `TraceService` stands in for one; it keeps
//! every export as it arrived (the wire bytes too, so a test can search them
//! for secrets) and hands out the spans of one trace.
//!
//! Only `opentelemetry-proto`'s generated server: a span exported here is
//! exactly what Jaeger would have received.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::Running;

/// How many spans the receiver keeps before it refuses further exports
/// (RESOURCE_EXHAUSTED): a demo or a test produces a few hundred; anything
/// on loopback can reach the port, so memory stays bounded.
pub const MAX_SPANS: usize = 100_000;

/// How many metric exports the receiver keeps before it refuses further
/// ones (RESOURCE_EXHAUSTED), for the same reason.
pub const MAX_METRIC_EXPORTS: usize = 10_000;

/// How long [`Collector::trace`] waits for the first span of a trace.
pub const FIRST_SPAN_WAIT: Duration = Duration::from_secs(20);

/// The `service.name` given to spans whose resource names no service.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// One exported span and the service (resource `service.name`) that
/// exported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    pub service: String,
    pub span: Span,
}

impl Exported {
    /// The value of attribute `key` as text (strings as they are, numbers
    /// and booleans formatted, arrays joined with `,`).
    pub fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    pub fn kind(&self) -> SpanKind {
        self.span.kind()
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id in lowercase hex (as in `traceparent`).
    pub fn trace_id(&self) -> String {
        to_hex(&self.span.trace_id)
    }

    /// The span id in lowercase hex.
    pub fn span_id(&self) -> String {
        to_hex(&self.span.span_id)
    }
}

/// The value of attribute `key` in `attributes`, as text.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    any_value_text(value.value.as_ref()?)
}

/// An attribute value as text; `None` for bytes and key-value lists, which
/// no Tether span carries.
pub fn any_value_text(value: &AnyValue) -> Option<String> {
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        AnyValue::ArrayValue(items) => items
            .values
            .iter()
            .filter_map(|v| v.value.as_ref().and_then(any_value_text))
            .collect::<Vec<_>>()
            .join(","),
        AnyValue::KvlistValue(_) | AnyValue::BytesValue(_) | AnyValue::StringValueStrindex(_) => {
            return None;
        }
    })
}

/// `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A trace or span id from its hex form (`traceparent`'s); `None` unless
/// `text` is an even number of hex digits.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a `+` sign.
    if text.is_empty()
        || !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// A trace the collector holds: its first root span (a span without a
/// parent, or whose parent was not exported) and how much it holds.
#[derive(Debug, Clone)]
pub struct TraceSummary {
    /// Lowercase hex, as [`Collector::trace`] takes it.
    pub trace_id: String,
    /// The earliest-starting root span.
    pub root: Exported,
    pub spans: usize,
    pub services: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Received {
    exports: Vec<ExportTraceServiceRequest>,
    spans: usize,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<Received>>);

impl Receiver {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        // A panic elsewhere while holding the lock leaves a Vec that is
        // still whole: keep receiving.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let export = request.into_inner();
        let count: usize = export
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let mut received = self.lock();
        if received.spans.saturating_add(count) > MAX_SPANS {
            return Err(tonic::Status::resource_exhausted(format!(
                "the receiver holds its maximum of {MAX_SPANS} spans"
            )));
        }
        received.spans += count;
        received.exports.push(export);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut received = self.lock();
        if received.metrics.len() >= MAX_METRIC_EXPORTS {
            return Err(tonic::Status::resource_exhausted(format!(
                "the receiver holds its maximum of {MAX_METRIC_EXPORTS} metric exports"
            )));
        }
        received.metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// One exported metric: the service (resource `service.name`) that
/// exported it and the metric as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedMetric {
    pub service: String,
    pub metric: opentelemetry_proto::tonic::metrics::v1::Metric,
}

/// The receiver, serving until dropped.
#[derive(Debug)]
pub struct Collector {
    receiver: Receiver,
    addr: SocketAddr,
    _server: Running,
}

impl Collector {
    /// Binds `127.0.0.1:0` and serves OTLP/gRPC `TraceService/Export`
    /// there; returns the collector and the endpoint to give the services
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:PORT`).
    pub async fn start() -> anyhow::Result<(Self, String)> {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver on loopback")?;
        let addr = listener
            .local_addr()
            .context("reading the OTLP receiver's address")?;
        let service = TraceServiceServer::new(receiver.clone());
        let metrics = MetricsServiceServer::new(receiver.clone());
        let server = Running::spawn(|shutdown| async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(metrics)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown,
                )
                .await
                .context("serving OTLP")
        });
        let collector = Self {
            receiver,
            addr,
            _server: server,
        };
        let endpoint = collector.endpoint();
        Ok((collector, endpoint))
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Exported> {
        let received = self.receiver.lock();
        let mut out = Vec::new();
        for export in &received.exports {
            for resource_spans in &export.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| attribute(&r.attributes, "service.name"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        out.push(Exported {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every metric received so far, in arrival order (a metric is in
    /// every periodic export, so it repeats).
    pub fn metrics(&self) -> Vec<ExportedMetric> {
        let received = self.receiver.lock();
        let mut out = Vec::new();
        for export in &received.metrics {
            for resource_metrics in &export.resource_metrics {
                let service = resource_metrics
                    .resource
                    .as_ref()
                    .and_then(|r| attribute(&r.attributes, "service.name"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
                for scope in &resource_metrics.scope_metrics {
                    for metric in &scope.metrics {
                        out.push(ExportedMetric {
                            service: service.clone(),
                            metric: metric.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Everything received, as the bytes that went over the wire.
    pub fn bytes(&self) -> Vec<u8> {
        self.receiver
            .lock()
            .exports
            .iter()
            .flat_map(|e| e.encode_to_vec())
            .collect()
    }

    /// The spans of `trace_id` (hex) received so far.
    pub fn spans_of(&self, trace_id: &str) -> Vec<Exported> {
        let Some(id) = from_hex(trace_id) else {
            return Vec::new();
        };
        self.spans()
            .into_iter()
            .filter(|s| s.span.trace_id == id)
            .collect()
    }

    /// The spans of `trace_id` (hex) once they have stopped arriving: waits
    /// up to [`FIRST_SPAN_WAIT`] for the first one, then until no new span
    /// came for `settle`. The services export in batches
    /// (`OTEL_BSP_SCHEDULE_DELAY`, 5 s unless set), so `settle` should be
    /// a little over that delay. Empty if nothing came (or `trace_id` is
    /// not hex).
    pub async fn trace(&self, trace_id: &str, settle: Duration) -> Vec<Exported> {
        let step = Duration::from_millis(25);
        let first_deadline = tokio::time::Instant::now() + FIRST_SPAN_WAIT;
        let mut seen = 0;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let spans = self.spans_of(trace_id);
            let now = tokio::time::Instant::now();
            if spans.len() != seen {
                seen = spans.len();
                quiet_since = now;
            } else if seen > 0 && now.duration_since(quiet_since) >= settle {
                return spans;
            }
            if seen == 0 && now >= first_deadline {
                return spans;
            }
            tokio::time::sleep(step).await;
        }
    }

    /// The spans of `trace_id` (hex) as soon as `done` accepts them, or
    /// `done`'s last complaint once `timeout` has passed.
    pub async fn trace_until<F>(
        &self,
        trace_id: &str,
        timeout: Duration,
        mut done: F,
    ) -> Result<Vec<Exported>, String>
    where
        F: FnMut(&[Exported]) -> Result<(), String>,
    {
        crate::eventually(timeout, || {
            let spans = self.spans_of(trace_id);
            let verdict = done(&spans);
            async move { verdict.map(|()| spans) }
        })
        .await
    }

    /// Every trace received so far, the earliest-starting first, each with
    /// its root span, so a caller can pick one by the root's name (e.g.
    /// `tether.facade.v1.AgentGateway/AcquireCredential`) or look for a
    /// span inside with [`Collector::spans_of`].
    pub fn traces(&self) -> Vec<TraceSummary> {
        let mut by_trace: BTreeMap<Vec<u8>, Vec<Exported>> = BTreeMap::new();
        for span in self.spans() {
            by_trace
                .entry(span.span.trace_id.clone())
                .or_default()
                .push(span);
        }
        let mut out: Vec<TraceSummary> = by_trace
            .into_iter()
            .filter_map(|(id, spans)| {
                let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span.span_id.as_slice()).collect();
                let root = spans
                    .iter()
                    .filter(|s| !ids.contains(s.span.parent_span_id.as_slice()))
                    .min_by_key(|s| s.span.start_time_unix_nano)
                    .or_else(|| spans.iter().min_by_key(|s| s.span.start_time_unix_nano))?
                    .clone();
                Some(TraceSummary {
                    trace_id: to_hex(&id),
                    root,
                    spans: spans.len(),
                    services: spans.iter().map(|s| s.service.clone()).collect(),
                })
            })
            .collect();
        out.sort_by_key(|t| t.root.span.start_time_unix_nano);
        out
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::AnyValue as Any;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn export(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(Any {
                            value: Some(AnyValue::StringValue(service.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn span(trace: u8, id: u8, parent: Option<u8>, name: &str, start: u64) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            ..Default::default()
        }
    }

    #[test]
    fn hex_ids_round_trip_and_bad_hex_is_refused() {
        let id = from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(to_hex(&id), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in ["", "abc", "zz", "4bf92f35777", "é1", "+1+1", " 1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn exports_over_grpc_are_grouped_by_trace_with_their_service() {
        let (collector, endpoint) = Collector::start().await.unwrap();
        let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
        client
            .export(export(
                "tether-agent-facade",
                vec![
                    span(1, 1, Some(9), "facade root", 100),
                    span(2, 5, None, "other trace", 50),
                ],
            ))
            .await
            .unwrap();
        client
            .export(export(
                "tether-policy-decision",
                vec![span(1, 2, Some(1), "pdp.check", 120)],
            ))
            .await
            .unwrap();

        let trace = collector
            .trace(&to_hex(&[1; 16]), Duration::from_millis(100))
            .await;
        let mut names: Vec<(&str, &str)> = trace
            .iter()
            .map(|s| (s.service.as_str(), s.name()))
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                ("tether-agent-facade", "facade root"),
                ("tether-policy-decision", "pdp.check")
            ]
        );

        let traces = collector.traces();
        assert_eq!(traces.len(), 2);
        // The earliest first; the root is the span whose parent is absent.
        assert_eq!(traces[0].root.name(), "other trace");
        assert_eq!(traces[1].root.name(), "facade root");
        assert_eq!(traces[1].spans, 2);
        assert_eq!(traces[1].trace_id, to_hex(&[1; 16]));
        assert_eq!(traces[1].services.len(), 2);
        assert!(!collector.bytes().is_empty());
    }

    #[tokio::test]
    async fn an_unknown_trace_and_a_trace_id_that_is_not_hex_give_nothing() {
        let (collector, _) = Collector::start().await.unwrap();
        assert!(collector.spans_of("not hex").is_empty());
        let result = collector
            .trace_until(&to_hex(&[7; 16]), Duration::from_millis(50), |spans| {
                if spans.is_empty() {
                    Err("no span yet".to_owned())
                } else {
                    Ok(())
                }
            })
            .await;
        assert_eq!(result, Err("no span yet".to_owned()));
    }

    #[tokio::test]
    async fn the_receiver_refuses_exports_beyond_its_limit_and_keeps_what_it_has() {
        let receiver = Receiver::default();
        receiver.lock().spans = MAX_SPANS - 1;
        let two = export(
            "s",
            vec![span(1, 1, None, "a", 1), span(1, 2, None, "b", 2)],
        );
        let refused = TraceService::export(&receiver, tonic::Request::new(two))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(receiver.lock().exports.is_empty());
        let one = export("s", vec![span(1, 1, None, "a", 1)]);
        TraceService::export(&receiver, tonic::Request::new(one))
            .await
            .unwrap();
        assert_eq!(receiver.lock().spans, MAX_SPANS);
    }
}
