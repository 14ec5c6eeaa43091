//! W3C trace context (`traceparent`, `tracestate`) across gRPC hops.
//!
//! Servers use [`server_span`] as tonic's `trace_fn`: every request gets a
//! span whose parent is the caller's context. Clients wrap their channel with
//! [`TraceContextInterceptor`] so the current span travels with each call.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

/// The span of one incoming gRPC request, child of the caller's trace.
/// Carries the method, never the body or headers.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %request.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %request.uri().path(),
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    // No OpenTelemetry layer installed (export disabled): nothing to link.
    let _ = span.set_parent(parent);
    span
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
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tonic::service::Interceptor as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    #[test]
    fn server_span_continues_the_callers_trace_and_client_passes_it_on() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));

        let outgoing = tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("/tether.policy.v1.PolicyDecision/Check")
                .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
                .header("authorization", "Bearer secret-token")
                .body(())
                .unwrap();
            let span = server_span(&request);
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

        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
        assert_eq!(span.parent_span_id.to_string(), PARENT_ID);
        assert_eq!(span.name, "/tether.policy.v1.PolicyDecision/Check");
        // Headers (and so bearer tokens) never become span attributes.
        let attrs = format!("{:?}", span.attributes);
        assert!(!attrs.contains("secret-token"), "{attrs}");
    }
}
