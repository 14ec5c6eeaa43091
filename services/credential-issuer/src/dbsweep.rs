//! The database-side sweep: drops database roles that OpenBao created
//! without registering a lease.
//!
//! When the connection to OpenBao drops while `database/creds/…` runs
//! (the issuer is killed, or a proxy gives up), OpenBao can commit the
//! role's creation statements and then fail to register the lease. Such a
//! role logs in until its `VALID UNTIL`, and the orphan sweep, which lists
//! leases, never sees it. This sweep looks at `pg_roles` instead.
//!
//! It drops a role only when all of these hold:
//! - its name starts with the profile's `username_prefix`, and it is not a
//!   superuser;
//! - its `VALID UNTIL` passed more than the grace ago, by the database's
//!   clock (the grace is at least the longest an issuance can take to
//!   record its lease, plus clock skew, so a role of an issuance in flight
//!   is never a candidate);
//! - no live lease row of the registry records it as its login (checked
//!   again right before the drop), and no live row of the profile's path
//!   has a lease whose login is unrecorded (then the sweep cannot tell and
//!   does nothing).
//!
//! Every replica runs it on the sweeper's schedule: the statements are
//! guarded (a role another replica dropped first is just gone), so two
//! sweeps at once only share the work.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::config::DatabaseSweepConfig;
use crate::registry::Registry;

/// Candidates one pass looks at, at most.
const MAX_ROLES_PER_PASS: i64 = 1000;

/// The longest one profile's pass may take (it runs inside the sweeper's
/// loop, so an unreachable database must not hold revocations back).
pub const PASS_BUDGET: Duration = Duration::from_secs(15);

/// Per statement, and for a lock (`DROP ROLE` takes catalog locks).
const STATEMENT_TIMEOUT: &str = "5s";

/// PostgreSQL's `undefined_object`: the role is already gone.
const UNDEFINED_OBJECT: &str = "42704";

/// The database sweep of one profile.
#[derive(Debug, Clone)]
pub struct DatabaseSweep {
    pub profile: String,
    pub vault_path: String,
    config: DatabaseSweepConfig,
}

/// Why a pass did not run (one line, never the connection string).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("reading the admin connection string from `{0}` failed: {1}")]
    ReadUrl(String, std::io::Error),
    #[error("the admin connection string in `{0}` is not a valid PostgreSQL URL")]
    BadUrl(String),
    #[error("the database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the lease registry: {0}")]
    Registry(sqlx::Error),
    #[error("the pass took longer than {} s", PASS_BUDGET.as_secs())]
    Timeout,
}

impl DatabaseSweep {
    pub fn new(profile: String, vault_path: String, config: DatabaseSweepConfig) -> Self {
        Self {
            profile,
            vault_path,
            config,
        }
    }

    /// One pass; `min_grace` is the least time after `VALID UNTIL` the
    /// caller allows (the issuing and creation windows plus clock skew).
    /// Returns how many roles it dropped.
    pub async fn run(&self, registry: &Registry, min_grace: Duration) -> Result<u64, SweepError> {
        tokio::time::timeout(PASS_BUDGET, self.pass(registry, min_grace))
            .await
            .map_err(|_| SweepError::Timeout)?
    }

    async fn pass(&self, registry: &Registry, min_grace: Duration) -> Result<u64, SweepError> {
        let unknown = registry
            .unknown_owners(&self.vault_path)
            .await
            .map_err(SweepError::Registry)?;
        if unknown > 0 {
            tracing::warn!(
                profile = %self.profile,
                leases = unknown,
                "database sweep skipped: live leases of this profile have no recorded login (issued before the upgrade?)"
            );
            return Ok(0);
        }
        let mut conn = self.connect().await?;
        let grace = self.config.grace().max(min_grace);
        let candidates: Vec<(String,)> = sqlx::query_as(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) AND NOT rolsuper \
             AND rolvaliduntil IS NOT NULL \
             AND rolvaliduntil < now() - make_interval(secs => $2) \
             ORDER BY rolvaliduntil LIMIT $3",
        )
        .bind(&self.config.username_prefix)
        .bind(grace.as_secs_f64())
        .bind(MAX_ROLES_PER_PASS)
        .fetch_all(&mut conn)
        .await?;
        let mut dropped = 0;
        for (role,) in candidates {
            // INVARIANT: a role a live lease records as its login is never
            // dropped, whatever its VALID UNTIL says.
            match registry.owns_db_username(&role).await {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => return Err(SweepError::Registry(e)),
            }
            match drop_role(&mut conn, &role).await {
                Ok(true) => {
                    dropped += 1;
                    tracing::info!(
                        profile = %self.profile,
                        role = %role,
                        "database sweep dropped a role no live lease owns (created without a lease, past its VALID UNTIL)"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    // One role that cannot be dropped (e.g. privileges in
                    // another database) holds back no other.
                    tracing::warn!(profile = %self.profile, role = %role, error = %e, "database sweep could not drop a role; will retry");
                }
            }
        }
        let _ = conn.close().await;
        Ok(dropped)
    }

    async fn connect(&self) -> Result<PgConnection, SweepError> {
        let path = &self.config.admin_url_file;
        let shown = || path.display().to_string();
        let url = tokio::fs::read_to_string(Path::new(path))
            .await
            .map_err(|e| SweepError::ReadUrl(shown(), e))?;
        // The parser's message may quote the string: it is not passed on.
        let options = PgConnectOptions::from_str(url.trim())
            .map_err(|_| SweepError::BadUrl(shown()))?
            .options([
                ("statement_timeout", STATEMENT_TIMEOUT),
                ("lock_timeout", STATEMENT_TIMEOUT),
            ]);
        Ok(PgConnection::connect_with(&options).await?)
    }
}

/// Drops `role` and everything it holds in this database, if it still
/// exists. `Ok(false)`: it was already gone.
async fn drop_role(conn: &mut PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    // PostgreSQL quotes the name itself (`%I`): nothing is spliced by hand.
    let statements: Option<(String, String)> = sqlx::query_as(
        "SELECT format('DROP OWNED BY %I', rolname), format('DROP ROLE IF EXISTS %I', rolname) \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((drop_owned, drop_role)) = statements else {
        return Ok(false);
    };
    let mut tx = conn.begin().await?;
    // Revokes its grants (and drops objects it owns) in this database;
    // DROP ROLE fails while any remain.
    match sqlx::raw_sql(sqlx::AssertSqlSafe(drop_owned))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_OBJECT) => {
            // Another replica (or the lease's revocation) dropped it.
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop_role))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}
