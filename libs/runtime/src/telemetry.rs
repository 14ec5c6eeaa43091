//! Logs and traces.
//!
//! Logs go to stderr: human-readable by default (values escaped so no
//! caller-supplied text can start a line of its own, see
//! [`crate::log_format`]), one JSON object per line with
//! `TETHER_LOG_FORMAT=json`; the filter comes from `TETHER_LOG` (or
//! `RUST_LOG`), default `info`. Spans (and metrics, [`crate::metrics`]) are
//! exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (Jaeger accepts OTLP directly); otherwise nothing leaves the process.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and stops the exporter when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        crate::metrics::shutdown();
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: trace exporter shutdown failed: {e}");
        }
    }
}

/// Installs the global subscriber. Call once, inside the Tokio runtime.
pub fn init(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Before anything creates an instrument (an instrument is bound to the
    // provider installed when it is created), and before the subscriber,
    // which would print the SDK's own INFO line about it on every start.
    crate::metrics::init(service)?;
    let filter = std::env::var("TETHER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter =
        EnvFilter::try_new(&filter).with_context(|| format!("invalid log filter `{filter}`"))?;
    let json = std::env::var("TETHER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        text_layer(std::io::stderr, std::io::stderr().is_terminal()).boxed()
    };

    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service)?),
        _ => None,
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// The human-readable format: tracing-subscriber's default layout, with
/// every field value and message escaped by
/// [`crate::log_format::EscapingFields`], so caller-supplied text cannot
/// forge a log line. Public so tests capture exactly what services write.
pub fn text_layer<S, W>(
    writer: W,
    ansi: bool,
) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .fmt_fields(crate::log_format::EscapingFields)
        .with_writer(writer)
}

fn otlp_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other standard
    // OTEL_* variables) itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("building the OTLP span exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
