//! What every Tether service shares.
//!
//! - [`config`]: one TOML file per service plus `TETHER_*` environment
//!   overrides, validated before any port is bound.
//! - [`telemetry`]: structured logs, and OTLP/gRPC trace export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (nothing is exported otherwise).
//! - [`propagation`]: W3C trace context across every gRPC hop.
//! - [`server`]: serving on a pre-bound listener with health, reflection,
//!   message-size limits (over the limit: RESOURCE_EXHAUSTED, see
//!   [`message_limit`]) and a bounded graceful drain.
//! - [`metrics`]: OpenTelemetry metrics, rendered for Prometheus on the
//!   ops port (`server.ops_listen`) and exported over OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`health`]: readiness checks behind gRPC health (NOT_SERVING while a
//!   check fails, and from the first moment of shutdown).
//! - [`log_format`]: the text log format, escaped so values cannot forge
//!   lines.
//! - [`error`]: the one mapping from domain errors to `tonic::Status`.
//! - [`process`]: the `main` every service binary shares (exit code 64 on
//!   invalid configuration, `--validate-only`).
//! - [`tasks`]: the one way to stop background tasks (signal, then join
//!   each with a deadline).

pub mod authz;
pub mod client;
pub mod clock;
pub mod config;
#[cfg(any(test, feature = "dev-pki"))]
pub mod dev_pki;
pub mod error;
pub mod health;
pub mod log_format;
pub mod message_limit;
pub mod metrics;
pub mod process;
pub mod propagation;
pub mod server;
pub mod tasks;
pub mod telemetry;
pub mod tls;

/// Caller-supplied text echoed in a log line or an error message: cut to
/// 64 characters, with control characters (CR, LF, ...) escaped.
pub fn clip(text: &str) -> String {
    clip_to(text, 64)
}

/// [`clip`] to `max` characters (then `…`).
pub fn clip_to(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

pub use config::{ConfigError, ServerConfig, ServiceConfig, TlsConfig};
pub use error::{ServiceError, ServiceErrorCode, into_status};
pub use health::Readiness;
pub use server::{ServeError, serve};
