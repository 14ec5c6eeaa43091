//! Storage bootstrap shared by Tether services (sqlx).
//!
//! A service names its store with one URL: `sqlite://<path>` (the embedded
//! default, one file per service under its data directory) or
//! `postgres://…` (replicated deployments). [`open`] returns an
//! [`sqlx::AnyPool`] for either, and [`migrate`] runs the service's embedded
//! migrations. Each service owns its tables and migrations; on PostgreSQL each
//! service also gets its own schema (its `namespace`), so two services can
//! share one database without their tables or `_sqlx_migrations` colliding.
//!
//! Queries written against the pool use `$1, $2, …` placeholders, which both
//! backends accept, and portable types: `TEXT`, `BIGINT` (store times as Unix
//! milliseconds and booleans as 0/1).
//!
//! ```no_run
//! // In a service: `static MIGRATOR: Migrator = sqlx::migrate!("./migrations");`
//! # async fn example(migrator: &sqlx::migrate::Migrator) -> Result<(), tether_store::StoreError> {
//! let pool = tether_store::open(
//!     "sqlite:///var/lib/tether/credential-issuer/leases.db",
//!     "credential_issuer",
//!     &tether_store::PoolSettings::default(),
//! )
//! .await?;
//! tether_store::migrate(&pool, migrator).await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyQueryResult};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor as _};

mod pruning;

pub use pruning::{MIN_RETENTION_MS, PruningConfig};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a store URL names, or `None` for any other scheme.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Why the store could not be opened or migrated. Messages never contain the
/// URL's password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store url `{0}` is neither `sqlite:` nor `postgres://`")]
    UnsupportedUrl(String),
    #[error("namespace `{0}` must be 1-63 characters of a-z, 0-9 and `_`, starting with a letter")]
    BadNamespace(String),
    #[error("creating the directory `{path}`: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("connecting to `{url}`: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a query waits for a free connection (and a new connection
    /// for the server) before failing.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A service's store (`[store]`): one URL, or the default SQLite file under
/// `data_dir` (one replica only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:…` or `postgres://…` (each service uses its own schema).
    /// Unset: SQLite at `<data_dir>/<service file>`.
    pub url: Option<String>,
    /// Directory of the default SQLite file.
    pub data_dir: std::path::PathBuf,
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: std::path::PathBuf::from("data"),
            max_connections: 8,
        }
    }
}

impl StoreConfig {
    /// The store URL actually used: `url`, or SQLite at
    /// `<data_dir>/<default_file>`.
    pub fn effective_url(&self, default_file: &str) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir.join(default_file)))
    }

    /// The settings `open` takes.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.max_connections,
            ..PoolSettings::default()
        }
    }

    /// Checks the `[store]` table; the message never shows a password.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url
            && Backend::of(url).is_none()
        {
            return Err(format!(
                "store.url `{}` must be sqlite:… or postgres://…",
                redact_url(url)
            ));
        }
        if self.max_connections == 0 {
            return Err("store.max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// `sqlite://<path>?mode=rwc` for a database file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns.starts_with(|c: char| c.is_ascii_lowercase())
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Opens a pool for `url`. For SQLite the file (and its directory) is
/// created if missing and WAL journaling with `synchronous = NORMAL` is
/// enabled (a commit survives a process crash; the last commits before a
/// power loss may not — services whose guarantees need more use PostgreSQL
/// or, like the credential issuer, have a second line of defence); for PostgreSQL the
/// schema `namespace` is created if missing and every connection uses it.
pub async fn open(
    url: &str,
    namespace: &str,
    settings: &PoolSettings,
) -> Result<AnyPool, StoreError> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);

    let shown = redact_url(url);
    let backend = Backend::of(url).ok_or_else(|| StoreError::UnsupportedUrl(shown.clone()))?;
    if !valid_namespace(namespace) {
        return Err(StoreError::BadNamespace(namespace.to_owned()));
    }
    let options = AnyPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout);
    let connect_err = |source| StoreError::Connect {
        url: shown.clone(),
        source,
    };
    match backend {
        Backend::Sqlite => {
            if let Some(parent) = sqlite_file(url).and_then(Path::parent)
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            let pool = options
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 5000;",
                        )
                        .await
                        .map(|_: AnyQueryResult| ())
                    })
                })
                .connect(url)
                .await
                .map_err(connect_err)?;
            Ok(pool)
        }
        Backend::Postgres => {
            // INVARIANT: `namespace` was validated above, so it is safe to
            // splice into SQL (identifiers cannot be bound as parameters).
            let setup =
                format!("CREATE SCHEMA IF NOT EXISTS {namespace}; SET search_path TO {namespace};");
            let pool = options
                .after_connect(move |conn, _| {
                    let setup = sqlx::AssertSqlSafe(setup.clone());
                    Box::pin(async move {
                        sqlx::raw_sql(setup).execute(&mut *conn).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await
                .map_err(connect_err)?;
            Ok(pool)
        }
    }
}

fn sqlite_file(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

/// Runs `migrator` (a service's `sqlx::migrate!()`) on the pool.
pub async fn migrate(pool: &AnyPool, migrator: &Migrator) -> Result<(), StoreError> {
    migrator.run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://tether:hunter2@db:5432/tether?sslmode=disable"),
            "postgres://tether:***@db:5432/tether?sslmode=disable"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact_url("postgres://db/tether"), "postgres://db/tether");
    }

    #[test]
    fn backends_and_namespaces() {
        assert_eq!(Backend::of("sqlite:///a.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgresql://h/d"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://h/d"), None);
        assert!(valid_namespace("credential_issuer"));
        assert!(!valid_namespace("x; DROP TABLE y"));
        assert!(!valid_namespace("1abc"));
    }

    #[tokio::test]
    async fn sqlite_file_is_created_and_refuses_bad_urls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/s.db");
        let pool = open(&sqlite_url(&path), "svc", &PoolSettings::default())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (a BIGINT)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (a) VALUES ($1)")
            .bind(7_i64)
            .execute(&pool)
            .await
            .unwrap();
        let (a,): (i64,) = sqlx::query_as("SELECT a FROM t WHERE a = $1")
            .bind(7_i64)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(a, 7);
        assert!(path.exists());
        let err = open("mysql://u:pw@h/d", "svc", &PoolSettings::default())
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}
