//! Configuration: a TOML file plus `TETHER_*` environment overrides.
//!
//! An override names a key path with `__` between levels:
//! `TETHER_SERVER__LISTEN=0.0.0.0:7001` sets `[server] listen`. Its value is
//! read as a TOML value when it parses as one (`8`, `true`, `["a"]`,
//! `"quoted string"`) and as a plain string otherwise. Unknown keys are
//! errors, so a typo in a file or a variable is caught before start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Variables with the `TETHER_` prefix that are not configuration overrides.
pub const RESERVED_VARS: &[&str] = &["TETHER_CONFIG", "TETHER_LOG", "TETHER_LOG_FORMAT"];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}` is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable `{var}` does not name a configuration key")]
    BadOverride { var: String },
    #[error("{0}")]
    Invalid(String),
}

/// Implemented by each service's `Config`.
pub trait ServiceConfig: DeserializeOwned + Send + 'static {
    /// The listener and transport settings.
    fn server(&self) -> &ServerConfig;
    /// Checks beyond what deserialization already enforces.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server().validate()
    }
}

/// Settings every gRPC server shares (`[server]` in each service's file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// After SIGTERM/SIGINT, how long health reports NOT_SERVING while the
    /// server still accepts and serves, before it starts draining: time for
    /// Kubernetes to take the pod out of its endpoints, so no new request
    /// is sent to a closed port. Part of `drain_timeout_secs`.
    pub shutdown_delay_secs: u64,
    /// The whole stop, counted from SIGTERM/SIGINT: the shutdown delay,
    /// draining in-flight requests and stopping background tasks. When it
    /// passes the process exits anyway (what is in flight is cut off).
    pub drain_timeout_secs: u64,
    /// Per-request deadline enforced by the server.
    pub request_timeout_secs: u64,
    /// This service's certificate, key and trusted CA (`[server.tls]`):
    /// used to serve and to call the other services.
    pub tls: TlsConfig,
    /// Per-RPC caller allow-list overrides (`[server.authorization]`):
    /// `"pkg.Service/Method"` or `"pkg.Service/*"` → caller identities
    /// (a Tether service name such as `agent-facade`, `admin`, or a full
    /// `spiffe://` URI). Keys replace the service's built-in defaults.
    pub authorization: BTreeMap<String, Vec<String>>,
    /// How many replicas of this service run on the same store. The Helm
    /// chart sets it from the Deployment's replica count
    /// (`TETHER_SERVER__REPLICAS`); more than one needs a shared store
    /// (PostgreSQL): see [`ServerConfig::require_shared_store`].
    pub replicas: u32,
    /// The operations port (`TETHER_SERVER__OPS_LISTEN`): plaintext
    /// HTTP/1.1 and h2c serving gRPC health (the main port's statuses) and
    /// `GET /metrics`, nothing else, for Kubernetes' gRPC probes and
    /// Prometheus, which present no client certificate. Unset: no such port.
    pub ops_listen: Option<SocketAddr>,
}

/// Transport security (`[server.tls]`). TLS with client-certificate
/// verification is the default; plaintext needs `insecure_plaintext = true`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve and call without TLS. Every caller is then trusted: for local
    /// experiments only, logged at WARN on every start.
    pub insecure_plaintext: bool,
    /// PEM certificate chain (leaf first) carrying this service's SPIFFE ID
    /// as a URI SAN.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of the CAs whose certificates are trusted, for clients
    /// calling in and for servers called.
    pub ca_file: Option<PathBuf>,
    /// The SPIFFE trust domain: services are
    /// `spiffe://<trust_domain>/tether/<service>`.
    pub trust_domain: String,
    /// How often the three files are checked for changes (rotation by
    /// cert-manager, Vault PKI or SPIRE), in milliseconds.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            insecure_plaintext: false,
            cert_file: None,
            key_file: None,
            ca_file: None,
            trust_domain: "tether.local".into(),
            reload_interval_ms: 5_000,
        }
    }
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.insecure_plaintext {
            return Ok(());
        }
        let missing: Vec<&str> = [
            ("cert_file", self.cert_file.is_none()),
            ("key_file", self.key_file.is_none()),
            ("ca_file", self.ca_file.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "server.tls: {} not set; mTLS is required unless `server.tls.insecure_plaintext = true`",
                missing.join(", ")
            )));
        }
        if !crate::tls::valid_trust_domain(&self.trust_domain) {
            return Err(ConfigError::Invalid(format!(
                "server.tls.trust_domain `{}` is not a SPIFFE trust domain (lowercase letters, digits, `.`, `-`, `_`)",
                self.trust_domain
            )));
        }
        if self.reload_interval_ms < 100 {
            return Err(ConfigError::Invalid(
                "server.tls.reload_interval_ms must be at least 100".into(),
            ));
        }
        Ok(())
    }

    /// This configuration as a `[server.tls]` TOML section (for generated
    /// configuration files: the demo, process tests).
    pub fn to_toml_section(&self) -> String {
        let table = toml::Table::try_from(self).unwrap_or_default();
        let mut root = toml::Table::new();
        root.insert(
            "server".into(),
            toml::Value::Table(toml::Table::from_iter([(
                "tls".to_owned(),
                toml::Value::Table(table),
            )])),
        );
        toml::to_string(&root).unwrap_or_default()
    }

    /// A plaintext configuration, for tests that do not cover transport.
    pub fn plaintext() -> Self {
        Self {
            insecure_plaintext: true,
            ..Self::default()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_delay_secs: 5,
            drain_timeout_secs: 20,
            request_timeout_secs: 30,
            tls: TlsConfig::default(),
            authorization: BTreeMap::new(),
            replicas: 1,
            ops_listen: None,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 1024 || self.max_message_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid(format!(
                "server.max_message_bytes must be between 1024 and 67108864, got {}",
                self.max_message_bytes
            )));
        }
        if self.request_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "server.request_timeout_secs must be at least 1".into(),
            ));
        }
        if self.shutdown_delay_secs > 0 && self.shutdown_delay_secs >= self.drain_timeout_secs {
            return Err(ConfigError::Invalid(format!(
                "server.shutdown_delay_secs ({}) must be less than server.drain_timeout_secs ({}): the delay is part of the drain deadline",
                self.shutdown_delay_secs, self.drain_timeout_secs
            )));
        }
        if self.replicas == 0 {
            return Err(ConfigError::Invalid(
                "server.replicas must be at least 1".into(),
            ));
        }
        if let Some(ops) = self.ops_listen
            && ops.port() != 0
            && ops == self.listen
        {
            return Err(ConfigError::Invalid(format!(
                "server.ops_listen `{ops}` is server.listen: the ops port needs a port of its own"
            )));
        }
        self.tls.validate()?;
        crate::authz::validate_overrides(&self.authorization, &self.tls.trust_domain)?;
        Ok(())
    }

    /// Refuses SQLite when more than one replica runs: a SQLite file lives
    /// on one machine, so each replica would keep its own sessions, replay
    /// cache, leases and revocations, and none would see the others'.
    /// Every service with a store calls this from its `validate`.
    pub fn require_shared_store(&self, store_url: &str) -> Result<(), ConfigError> {
        if self.replicas > 1 && store_url.starts_with("sqlite:") {
            return Err(ConfigError::Invalid(format!(
                "server.replicas = {} needs a store every replica shares: set `store.url` to a `postgres://` URL (SQLite is a file on one machine)",
                self.replicas
            )));
        }
        Ok(())
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// Reads `path` (if any), applies the `TETHER_*` overrides from `vars`,
/// deserializes and validates.
pub fn load<C: ServiceConfig>(
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let name = path.map_or_else(|| "<defaults>".to_owned(), |p| p.display().to_string());
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: name.clone(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: name.clone(),
                    message: e.message().to_owned(),
                })?
        }
        None => toml::Table::new(),
    };
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("TETHER_") && !RESERVED_VARS.contains(&k.as_str()))
        .collect();
    overrides.sort();
    for (var, raw) in overrides {
        apply_override(&mut table, &var, &raw)?;
    }
    // Re-read the merged table as text so that errors carry the key path.
    let merged =
        toml::to_string(&table).map_err(|e| ConfigError::Invalid(format!("in `{name}`: {e}")))?;
    let de = toml::de::Deserializer::parse(&merged).map_err(|e| ConfigError::Parse {
        path: name.clone(),
        message: e.message().to_owned(),
    })?;
    let config: C = serde_path_to_error::deserialize(de).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            let message = e.into_inner().message().to_owned();
            if path == "." {
                ConfigError::Invalid(format!("in `{name}`: {message}"))
            } else {
                ConfigError::Invalid(format!("in `{name}`: `{path}`: {message}"))
            }
        },
    )?;
    config.validate()?;
    Ok(config)
}

fn apply_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadOverride {
        var: var.to_owned(),
    };
    let path: Vec<String> = var
        .trim_start_matches("TETHER_")
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(bad());
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, parents) = path.split_last().ok_or_else(bad)?;
    let mut cursor = table;
    for key in parents {
        let entry = cursor
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(bad)?;
    }
    cursor.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[serde(default)]
        server: ServerConfig,
        name: String,
        #[serde(default)]
        retries: u32,
    }

    impl ServiceConfig for Example {
        fn server(&self) -> &ServerConfig {
            &self.server
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "name = \"pdp\"\n[server]\nlisten = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let c: Example = load(
            Some(&path),
            vars(&[
                ("TETHER_SERVER__LISTEN", "0.0.0.0:7001"),
                ("TETHER_RETRIES", "3"),
                ("TETHER_SERVER__TLS__INSECURE_PLAINTEXT", "true"),
                ("TETHER_LOG", "debug"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.name, "pdp");
        assert_eq!(c.retries, 3);
        assert_eq!(c.server.listen, "0.0.0.0:7001".parse().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = load::<Example>(None, vars(&[("TETHER_NAME", "x"), ("TETHER_NAMEE", "y")]))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `namee`"), "{err}");
        let err = load::<Example>(
            None,
            vars(&[("TETHER_NAME", "x"), ("TETHER_RETRIES", "many")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
        let err = load::<Example>(
            None,
            vars(&[("TETHER_NAME", "x"), ("TETHER_SERVER____X", "1")]),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::BadOverride { .. }), "{err}");
        let err = load::<Example>(
            None,
            vars(&[
                ("TETHER_NAME", "x"),
                ("TETHER_SERVER__MAX_MESSAGE_BYTES", "10"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_message_bytes"), "{err}");
    }

    #[test]
    fn the_shutdown_delay_fits_inside_the_drain_deadline() {
        let plain = ("TETHER_SERVER__TLS__INSECURE_PLAINTEXT", "true");
        let c: Example = load(None, vars(&[("TETHER_NAME", "x"), plain])).unwrap();
        assert_eq!(
            (c.server.shutdown_delay_secs, c.server.drain_timeout_secs),
            (5, 20)
        );
        for (delay, drain) in [("20", "20"), ("30", "20"), ("1", "0")] {
            let err = load::<Example>(
                None,
                vars(&[
                    ("TETHER_NAME", "x"),
                    plain,
                    ("TETHER_SERVER__SHUTDOWN_DELAY_SECS", delay),
                    ("TETHER_SERVER__DRAIN_TIMEOUT_SECS", drain),
                ]),
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("server.shutdown_delay_secs"),
                "{delay}/{drain}: {err}"
            );
        }
        let c: Example = load(
            None,
            vars(&[
                ("TETHER_NAME", "x"),
                plain,
                ("TETHER_SERVER__SHUTDOWN_DELAY_SECS", "0"),
                ("TETHER_SERVER__DRAIN_TIMEOUT_SECS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.shutdown_delay(), Duration::ZERO);
    }

    #[test]
    fn a_tls_section_reads_back_as_itself() {
        let tls = TlsConfig {
            cert_file: Some("/etc/tls/a \"b\".crt".into()),
            key_file: Some("/etc/tls/k".into()),
            ca_file: Some("/etc/tls/ca".into()),
            ..TlsConfig::default()
        };
        let text = format!("name = \"x\"\n{}", tls.to_toml_section());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let c: Example = load(Some(&path), vars(&[])).unwrap();
        assert_eq!(c.server.tls, tls);
    }

    #[test]
    fn unreadable_and_malformed_files_are_errors() {
        let err = load::<Example>(Some(Path::new("/nonexistent/c.toml")), vars(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = ").unwrap();
        let err = load::<Example>(Some(&path), vars(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        #[serde(default)]
        server: ServerConfig,
    }

    impl ServiceConfig for C {
        fn server(&self) -> &ServerConfig {
            &self.server
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            load::<C>(None, vec![("TETHER_SERVER__LISTEN".into(), "nope".into())]).unwrap_err();
        assert!(err.to_string().contains("`server.listen`"), "{err}");
    }
}
