//! Configuration of the policy decision point.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tether_policy::{Limits, PolicyPack};
use tether_runtime::{ConfigError, ServerConfig, ServiceConfig};

/// `policy-decision.toml`:
///
/// ```toml
/// [server]
/// listen = "0.0.0.0:7002"
/// shutdown_delay_secs = 5        # SIGTERM: NOT_SERVING, still serving this long
/// drain_timeout_secs = 20        # the whole stop, then exit anyway
///
/// # gRPC health is NOT_SERVING while no policy set is loaded.
/// [policy]
/// dir = "/etc/tether/policies"   # schema, *.cedar, entities.json
/// watch = true                   # hot reload on change
///
/// [limits]
/// max_entities = 256
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub limits: RequestLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory holding the policy pack.
    pub dir: PathBuf,
    /// Reload the pack when its files change.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Quiet period after the last change before reloading, so an editor's
    /// or a ConfigMap's multi-file update is read as one.
    #[serde(default = "default_debounce_ms")]
    pub reload_debounce_ms: u64,
}

impl PolicyConfig {
    pub fn reload_debounce(&self) -> Duration {
        Duration::from_millis(self.reload_debounce_ms)
    }
}

/// Bounds on one request, all checked before anything is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLimits {
    /// Encoded size of one `CheckRequest`, in bytes.
    pub max_request_bytes: usize,
    /// Items in one `BatchCheck`.
    pub max_batch_size: usize,
    #[serde(flatten)]
    pub evaluation: Limits,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 512 * 1024,
            max_batch_size: 64,
            evaluation: Limits::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_debounce_ms() -> u64 {
    200
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// Also loads the policy pack, so `--validate-only` checks policies too
    /// and a pack that does not validate stops start-up with exit code 64.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        let l = &self.limits;
        if l.max_batch_size == 0 || l.max_request_bytes == 0 || l.evaluation.max_entities == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_batch_size, limits.max_request_bytes and limits.max_entities must be positive".into(),
            ));
        }
        if l.max_request_bytes > self.server.max_message_bytes {
            return Err(ConfigError::Invalid(format!(
                "limits.max_request_bytes ({}) exceeds server.max_message_bytes ({})",
                l.max_request_bytes, self.server.max_message_bytes
            )));
        }
        PolicyPack::load_dir(&self.policy.dir)
            .map(|_| ())
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}
