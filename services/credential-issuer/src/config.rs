//! Configuration of the credential issuer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tether_runtime::{ConfigError, ServerConfig, ServiceConfig};
pub use tether_store::PruningConfig;
pub use tether_token::SessionsConfig;

/// `credential-issuer.toml`:
///
/// ```toml
/// [server]
/// listen = "0.0.0.0:7003"
/// shutdown_delay_secs = 5        # SIGTERM: NOT_SERVING, still serving this long
/// drain_timeout_secs = 20        # the whole stop, then exit anyway
///
/// # gRPC health is NOT_SERVING while the last Vault login failed.
/// [vault]
/// address = "https://vault.internal:8200"
/// request_timeout_ms = 5000
/// [vault.auth]
/// method = "approle"          # token | approle | kubernetes
/// role_id = "…"
/// secret_id_file = "/run/secrets/tether-secret-id"
///
/// [store]
/// url = "postgres://tether@db/tether"   # default: SQLite under data_dir
///
/// [sessions]                  # Issue and Renew need the agent's delegated token
/// token_issuer = "https://tether.example.com"
/// audience = "https://tether.example.com/facade"
/// jwks_url = "https://identity-exchange.tether:7002/.well-known/jwks.json"
/// identity_exchange = "https://identity-exchange.tether:7002"
///
/// [profiles.hr-read]
/// vault_path = "database/creds/hr-readonly"
/// max_ttl_secs = 600
/// [profiles.hr-read.database_sweep]        # optional: roles without a lease
/// admin_url_file = "/run/secrets/hr-db-admin-url"
/// username_prefix = "v-approle-hr-reado-"
/// grace_secs = 300
///
/// [pruning]                   # revoked/expired lease rows and ended sessions
/// retention_secs = 604800     # kept this long after they ended (at least 3600)
/// interval_secs = 600         # how often every replica prunes
/// batch_size = 1000           # rows per DELETE
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub vault: VaultConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// How Issue and Renew learn which session they act for: the agent's
    /// delegated token, verified against the identity exchange.
    pub sessions: SessionsConfig,
    /// Credential profiles by name. A caller names a profile, never a path.
    pub profiles: BTreeMap<String, Profile>,
    #[serde(default)]
    pub revocation: RevocationConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Pruning (`[pruning]`): lease rows that were revoked or expired, and
    /// sessions that ended or expired with no live lease left, are deleted
    /// `retention_secs` after that (`Registry::prune`); a live lease's row
    /// never is.
    #[serde(default)]
    pub pruning: PruningConfig,
    /// Fail points for tests. Refused at start-up unless the binary was
    /// built with the `test-hooks` feature (never in a release).
    #[serde(default)]
    pub test_hooks: TestHooks,
}

/// Test-only fail points (`[test_hooks]`, e.g.
/// `TETHER_TEST_HOOKS__PAUSE_AFTER_VAULT_ISSUE_MS=60000`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestHooks {
    /// Sleep this long after Vault issued a secret and before the registry
    /// records it (to SIGKILL the issuer there).
    pub pause_after_vault_issue_ms: u64,
}

/// One credential profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The Vault path read to mint a credential, e.g.
    /// `database/creds/hr-readonly`. Its prefix is also what the orphan sweep
    /// lists, so the path must be used by Tether only.
    pub vault_path: String,
    /// The longest a credential of this profile lives (before the session
    /// cap).
    pub max_ttl_secs: u64,
    /// The database-side sweep of this profile's roles (optional): drops
    /// login roles OpenBao created without registering a lease.
    #[serde(default)]
    pub database_sweep: Option<DatabaseSweepConfig>,
}

/// `[profiles.<name>.database_sweep]`: when the connection to Vault drops
/// while `database/creds/…` runs, OpenBao may run the creation statements
/// and register no lease. Such a role is invisible to the orphan sweep
/// (which lists leases); this sweep finds it in `pg_roles` and drops it.
///
/// It drops only roles whose name starts with `username_prefix`, whose
/// `VALID UNTIL` passed more than `grace_secs` ago (by the database's
/// clock), and that no live lease of the registry owns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSweepConfig {
    /// A file holding the admin connection string
    /// (`postgresql://admin:…@db:5432/hr`), e.g. a mounted Secret; read on
    /// every sweep, never logged. The database must be the one the roles'
    /// grants are in (`DROP OWNED BY` acts on the current database).
    pub admin_url_file: PathBuf,
    /// What every role of this profile's Vault role starts with, as the
    /// role's `username_template` makes it. OpenBao's default template is
    /// `v-{{display name, 8}}-{{role name, 8}}-{{random 20}}-{{unix time}}`,
    /// so a role `hr-readonly` read by an AppRole login gives
    /// `v-approle-hr-reado-`. It must not match roles anything else
    /// creates.
    pub username_prefix: String,
    /// How long after its `VALID UNTIL` a role is left alone (default 300).
    #[serde(default = "default_sweep_grace_secs")]
    pub grace_secs: u64,
}

impl DatabaseSweepConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

fn default_sweep_grace_secs() -> u64 {
    300
}

/// The shortest username prefix a database sweep accepts: `v-` alone would
/// match every role of every Vault role.
const MIN_SWEEP_PREFIX: usize = 4;

fn valid_sweep_prefix(prefix: &str) -> bool {
    (MIN_SWEEP_PREFIX..=63).contains(&prefix.len())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Profile {
    pub fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.max_ttl_secs)
    }
}

/// Where Vault/OpenBao is and how the issuer logs in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `http(s)://host:port`.
    pub address: String,
    pub auth: VaultAuth,
    /// Every Vault request is abandoned after this long (fail closed:
    /// UNAVAILABLE).
    #[serde(default = "default_vault_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long the read that creates a credential may run at Vault. An
    /// Issue call waits `request_timeout_ms` for it and then answers
    /// UNAVAILABLE, but the read is not cut off: dropping the connection
    /// mid-creation can leave a database role without a lease. It finishes
    /// in the background and whatever it made is revoked. At least
    /// `request_timeout_ms`.
    #[serde(default = "default_vault_creation_timeout_ms")]
    pub creation_timeout_ms: u64,
    /// PEM bundle of CAs to trust for `https` addresses (default: the
    /// platform's web PKI roots).
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
}

impl VaultConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn creation_timeout(&self) -> Duration {
        Duration::from_millis(self.creation_timeout_ms.max(self.request_timeout_ms))
    }
}

/// How the issuer authenticates to Vault. Secrets are redacted from `Debug`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaultAuth {
    /// A static token (development). Renewed while it is renewable.
    Token {
        #[serde(default)]
        token: Option<Secret>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// AppRole: `role_id` plus a `secret_id` (inline or from a file).
    Approle {
        #[serde(default = "default_approle_mount")]
        mount: String,
        role_id: String,
        #[serde(default)]
        secret_id: Option<Secret>,
        #[serde(default)]
        secret_id_file: Option<PathBuf>,
    },
    /// Kubernetes: the pod's service-account token, exchanged at
    /// `auth/<mount>/login` for the Vault `role`.
    Kubernetes {
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
        role: String,
        #[serde(default = "default_jwt_path")]
        jwt_path: PathBuf,
    },
}

/// A secret configuration value: never printed by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The durable lease registry (`[store]`): SQLite at
/// `<data_dir>/credential-issuer.db` unless `url` says otherwise.
pub use tether_store::StoreConfig;

/// The default SQLite file of the lease registry.
pub const STORE_FILE: &str = "credential-issuer.db";

/// Sweeper, reconciler and retry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevocationConfig {
    /// How often the sweeper looks for leases to revoke.
    pub sweep_interval_ms: u64,
    /// How often (at most) the orphan sweep lists the managed Vault paths.
    pub orphan_sweep_interval_ms: u64,
    /// Whether to revoke Vault leases under managed paths that no live lease
    /// of the registry owns. Needs `list` + `sudo` on `sys/leases/lookup/<path>`.
    pub orphan_sweep: bool,
    /// First retry delay after a failed revocation; doubles per attempt.
    pub backoff_initial_ms: u64,
    /// Longest delay between two attempts. Attempts never stop.
    pub backoff_max_ms: u64,
    /// How long RevokeSession waits for revocations before reporting the rest
    /// as `pending` (they go on in the background).
    pub revoke_call_budget_ms: u64,
    /// Revocations in flight at once.
    pub concurrency: usize,
    /// Allowed difference between this host's clock and Vault's, used by the
    /// orphan sweep before it calls a lease abandoned.
    pub clock_skew_ms: u64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            sweep_interval_ms: 10_000,
            orphan_sweep_interval_ms: 60_000,
            orphan_sweep: true,
            backoff_initial_ms: 250,
            backoff_max_ms: 60_000,
            revoke_call_budget_ms: 5_000,
            concurrency: 16,
            clock_skew_ms: 5_000,
        }
    }
}

/// Per-request limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Live (ISSUING, ACTIVE, REVOKING, REVOCATION_FAILED) leases one session
    /// may hold.
    pub max_leases_per_session: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_leases_per_session: 64,
        }
    }
}

fn default_vault_timeout_ms() -> u64 {
    5_000
}

fn default_vault_creation_timeout_ms() -> u64 {
    60_000
}

fn default_approle_mount() -> String {
    "approle".into()
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

fn default_jwt_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

fn valid_vault_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.ends_with('/')
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        && !path.starts_with("sys/")
        && !path.starts_with("auth/")
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(self.vault.address.starts_with("http://")
            || self.vault.address.starts_with("https://"))
        {
            return invalid(format!(
                "vault.address `{}` must start with http:// or https://",
                self.vault.address
            ));
        }
        if self.vault.request_timeout_ms == 0 {
            return invalid("vault.request_timeout_ms must be positive".into());
        }
        if self.vault.creation_timeout_ms < self.vault.request_timeout_ms {
            return invalid("vault.creation_timeout_ms is below request_timeout_ms".into());
        }
        match &self.vault.auth {
            VaultAuth::Token { token, token_file } => {
                if token.is_some() == token_file.is_some() {
                    return invalid(
                        "vault.auth (token): set exactly one of `token` and `token_file`".into(),
                    );
                }
            }
            VaultAuth::Approle {
                role_id,
                secret_id,
                secret_id_file,
                ..
            } => {
                if role_id.is_empty() {
                    return invalid("vault.auth (approle): `role_id` is empty".into());
                }
                if secret_id.is_some() == secret_id_file.is_some() {
                    return invalid(
                        "vault.auth (approle): set exactly one of `secret_id` and `secret_id_file`"
                            .into(),
                    );
                }
            }
            VaultAuth::Kubernetes { role, .. } => {
                if role.is_empty() {
                    return invalid("vault.auth (kubernetes): `role` is empty".into());
                }
            }
        }
        self.sessions.validate()?;
        if self.profiles.is_empty() {
            return invalid("no credential profiles: add at least one [profiles.<name>]".into());
        }
        for (name, p) in &self.profiles {
            if name.is_empty() || name.len() > 128 {
                return invalid(format!("profile name `{name}` must be 1-128 bytes"));
            }
            if !valid_vault_path(&p.vault_path) {
                return invalid(format!(
                    "profiles.{name}.vault_path `{}` is not a plain relative Vault path outside sys/ and auth/",
                    p.vault_path
                ));
            }
            if p.max_ttl_secs == 0 {
                return invalid(format!("profiles.{name}.max_ttl_secs must be positive"));
            }
            if let Some(sweep) = &p.database_sweep
                && !valid_sweep_prefix(&sweep.username_prefix)
            {
                return invalid(format!(
                    "profiles.{name}.database_sweep.username_prefix `{}` must be {MIN_SWEEP_PREFIX}-63 characters of A-Z, a-z, 0-9, `-`, `_` and `.`",
                    tether_runtime::clip(&sweep.username_prefix)
                ));
            }
            if let Some(sweep) = &p.database_sweep
                && sweep.admin_url_file.as_os_str().is_empty()
            {
                return invalid(format!(
                    "profiles.{name}.database_sweep.admin_url_file is empty"
                ));
            }
        }
        self.store.validate().map_err(ConfigError::Invalid)?;
        self.server
            .require_shared_store(&self.store.effective_url(STORE_FILE))?;
        let r = &self.revocation;
        if r.sweep_interval_ms == 0
            || r.orphan_sweep_interval_ms == 0
            || r.backoff_initial_ms == 0
            || r.concurrency == 0
            || r.revoke_call_budget_ms == 0
        {
            return invalid(
                "revocation: sweep_interval_ms, orphan_sweep_interval_ms, backoff_initial_ms, revoke_call_budget_ms and concurrency must be positive".into(),
            );
        }
        if r.backoff_max_ms < r.backoff_initial_ms {
            return invalid("revocation.backoff_max_ms is below backoff_initial_ms".into());
        }
        if cfg!(not(feature = "test-hooks")) && self.test_hooks != TestHooks::default() {
            return invalid(
                "test_hooks are set but this build has no test hooks (feature `test-hooks`)".into(),
            );
        }
        if self.limits.max_leases_per_session == 0 {
            return invalid("limits.max_leases_per_session must be positive".into());
        }
        if let Some(problem) = self
            .pruning
            .problem("an ended session's row outlives its tokens")
        {
            return Err(ConfigError::Invalid(problem));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_paths() {
        assert!(valid_vault_path("database/creds/hr-readonly"));
        assert!(!valid_vault_path("/database/creds/x"));
        assert!(!valid_vault_path("database/../sys/seal"));
        assert!(!valid_vault_path("sys/leases/revoke-prefix/x"));
        assert!(!valid_vault_path("database/creds/x?list=true"));
        assert!(!valid_vault_path("database//x"));
    }

    #[test]
    fn a_retention_shorter_than_an_hour_or_an_empty_batch_is_refused() {
        let check = |edit: fn(&mut PruningConfig)| {
            let mut p = PruningConfig::default();
            edit(&mut p);
            p.problem("test").map_or(Ok(()), Err)
        };
        assert!(check(|_| {}).is_ok());
        assert!(check(|p| p.retention_secs = 3600).is_ok());
        let err = check(|p| p.retention_secs = 3599).unwrap_err();
        assert!(err.contains("pruning.retention_secs"), "{err}");
        let err = check(|p| p.batch_size = 0).unwrap_err();
        assert!(err.contains("pruning.batch_size"), "{err}");
        let err = check(|p| p.interval_secs = 0).unwrap_err();
        assert!(err.contains("pruning.interval_secs"), "{err}");
    }

    #[test]
    fn sweep_prefixes() {
        assert!(valid_sweep_prefix("v-approle-hr-reado-"));
        assert!(valid_sweep_prefix("v-root-hr-reado-"));
        assert!(!valid_sweep_prefix(""));
        assert!(!valid_sweep_prefix("v-"));
        assert!(!valid_sweep_prefix("v-root%"));
        assert!(!valid_sweep_prefix("v-root\\"));
        assert!(!valid_sweep_prefix("v-root\n"));
        assert!(!valid_sweep_prefix("v-r\"oot"));
        assert!(!valid_sweep_prefix(&"v".repeat(64)));
    }

    #[test]
    fn secrets_are_redacted_from_debug() {
        let auth = VaultAuth::Approle {
            mount: "approle".into(),
            role_id: "r".into(),
            secret_id: Some(Secret::new("s3cr3t-id")),
            secret_id_file: None,
        };
        assert!(!format!("{auth:?}").contains("s3cr3t-id"));
    }
}
