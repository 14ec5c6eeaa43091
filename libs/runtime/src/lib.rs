//! What every Tether service shares.
//!
//! - [`config`]: one TOML file per service plus `TETHER_*` environment
//!   overrides, validated before any port is bound.
//! - [`telemetry`]: structured logs, and OTLP/gRPC trace export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (nothing is exported otherwise).
//! - [`propagation`]: W3C trace context across every gRPC hop.
//! - [`server`]: serving on a pre-bound listener with health, reflection,
//!   message-size limits and a bounded graceful drain.
//! - [`error`]: the one mapping from domain errors to `tonic::Status`.
//! - [`process`]: the `main` every service binary shares (exit code 64 on
//!   invalid configuration, `--validate-only`).

pub mod config;
pub mod error;
pub mod process;
pub mod propagation;
pub mod server;
pub mod telemetry;

pub use config::{ConfigError, ServerConfig, ServiceConfig};
pub use error::{ServiceError, ServiceErrorCode, into_status};
pub use server::{ServeError, serve};
