//! The issuer's own instruments (the RPC counts and durations come from
//! [`tether_runtime::metrics::RpcMetricsLayer`]):
//!
//! - the lease counters of [`Metrics`] (issued, failed, revoked, failed
//!   revocation attempts, orphans revoked), read when metrics are
//!   collected;
//! - from the registry, so they are right across restarts and replicas:
//!   live leases, leases waiting for revocation, and the age of the oldest
//!   lease that should be revoked and is not yet. The registry is read
//!   every [`REFRESH`] by [`refresh`], not inside the collection
//!   (collection callbacks cannot wait on the database).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use sqlx::Row as _;

use crate::registry::{Registry, Status};
use crate::revoker::Metrics;

/// How often the registry gauges are read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The registry's answer, as of its last read; `-1` until the first one.
#[derive(Debug)]
struct RegistryGauges {
    live: AtomicI64,
    pending: AtomicI64,
    /// Seconds; 0 when nothing is overdue.
    oldest_pending_age_secs: AtomicI64,
}

static GAUGES: LazyLock<Arc<RegistryGauges>> = LazyLock::new(|| {
    let gauges = Arc::new(RegistryGauges {
        live: AtomicI64::new(-1),
        pending: AtomicI64::new(-1),
        oldest_pending_age_secs: AtomicI64::new(-1),
    });
    let meter = tether_runtime::metrics::meter();
    for (name, description, unit, read) in [
        (
            "tether.leases.live",
            "Leases handed out and not yet revoked or expired (ACTIVE in the registry).",
            "{lease}",
            (|g: &RegistryGauges| &g.live) as fn(&RegistryGauges) -> &AtomicI64,
        ),
        (
            "tether.leases.pending_revocation",
            "Leases whose revocation is under way or being retried (REVOKING, REVOCATION_FAILED).",
            "{lease}",
            |g: &RegistryGauges| &g.pending,
        ),
        (
            "tether.lease.revocation.oldest_pending_age",
            "Age of the oldest lease that should be revoked and is not yet: since its expiry, its session's end or expiry, its revocation request, or its issuing deadline (0: none).",
            "s",
            |g: &RegistryGauges| &g.oldest_pending_age_secs,
        ),
    ] {
        let gauges = Arc::clone(&gauges);
        meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |observer| {
                let value = read(&gauges).load(Ordering::Relaxed);
                // Not read yet: no value rather than a false zero.
                if value >= 0 {
                    observer.observe(value, &[]);
                }
            })
            .build();
    }
    gauges
});

/// Registers the lease counters of one issuer's [`Metrics`]. The callbacks
/// hold it weakly: a stopped issuer stops reporting.
pub fn register(metrics: &Arc<Metrics>) {
    let meter = tether_runtime::metrics::meter();
    for (name, description, unit, read) in [
        (
            "tether.credentials.issued",
            "Credentials handed out.",
            "{credential}",
            (|m: &Metrics| &m.issued) as fn(&Metrics) -> &AtomicU64,
        ),
        (
            "tether.credential.issue_failures",
            "Issuances that failed (nothing handed out).",
            "{issuance}",
            |m: &Metrics| &m.issue_failures,
        ),
        (
            "tether.leases.revoked",
            "Leases revoked (or found already gone) at Vault.",
            "{lease}",
            |m: &Metrics| &m.revoked,
        ),
        (
            "tether.lease.revocation_failures",
            "Failed revocation attempts (each is retried).",
            "{attempt}",
            |m: &Metrics| &m.revocation_failures,
        ),
        (
            "tether.orphan_leases.revoked",
            "Vault leases no live session owned, revoked by the orphan sweep.",
            "{lease}",
            |m: &Metrics| &m.orphans_revoked,
        ),
    ] {
        let metrics: Weak<Metrics> = Arc::downgrade(metrics);
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |observer| {
                if let Some(metrics) = metrics.upgrade() {
                    observer.observe(Metrics::get(read(&metrics)), &[]);
                }
            })
            .build();
    }
}

/// One refresh of the registry gauges (every [`REFRESH`], on every
/// replica: each reads the shared registry, so all report the same).
pub async fn refresh(registry: Registry) {
    match read(&registry, crate::revoker::now_ms()).await {
        Ok((live, pending, oldest)) => {
            GAUGES.live.store(live, Ordering::Relaxed);
            GAUGES.pending.store(pending, Ordering::Relaxed);
            GAUGES
                .oldest_pending_age_secs
                .store(oldest, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "reading the lease registry for metrics failed"),
    }
}

/// (live, pending revocation, oldest overdue age in seconds) at `now_ms`.
async fn read(registry: &Registry, now_ms: i64) -> Result<(i64, i64, i64), sqlx::Error> {
    let live = registry.count(Status::Active).await?;
    let pending =
        registry.count(Status::Revoking).await? + registry.count(Status::RevocationFailed).await?;
    let due_since: Option<i64> = sqlx::query(OLDEST_DUE)
        .bind(now_ms)
        .fetch_one(registry.pool())
        .await?
        .try_get("t")?;
    let age = due_since.map_or(0, |t| (now_ms.saturating_sub(t)).max(0) / 1000);
    Ok((live, pending, age))
}

/// Since when the oldest unrevoked lease has been due for revocation: the
/// earliest of its own expiry, its session's end or expiry, the moment a
/// revocation was asked for it alone (REVOKING, not yet attempted), and an
/// unfinished issuance's deadline. A lease asked for alone whose attempts
/// have all failed counts from its expiry or its session's (the registry
/// keeps no earlier time for it); `tether_lease_revocation_failures_total`
/// shows those failures as they happen.
const OLDEST_DUE: &str = "SELECT MIN(t) AS t FROM ( \
    SELECT expires_at AS t FROM credential_leases \
      WHERE status IN ('ACTIVE', 'REVOKING', 'REVOCATION_FAILED') AND expires_at <= $1 \
    UNION ALL SELECT s.ended_at AS t FROM credential_leases l \
      JOIN credential_sessions s ON s.session_id = l.session_id \
      WHERE l.status IN ('ACTIVE', 'REVOKING', 'REVOCATION_FAILED') AND s.ended_at IS NOT NULL \
    UNION ALL SELECT s.expires_at AS t FROM credential_leases l \
      JOIN credential_sessions s ON s.session_id = l.session_id \
      WHERE l.status IN ('ACTIVE', 'REVOKING', 'REVOCATION_FAILED') AND s.expires_at <= $1 \
    UNION ALL SELECT next_attempt_at AS t FROM credential_leases \
      WHERE status = 'REVOKING' AND revocation_attempts = 0 AND next_attempt_at <= $1 \
    UNION ALL SELECT issuing_deadline AS t FROM credential_leases \
      WHERE status = 'ISSUING' AND issuing_deadline <= $1 \
    ) due";

#[cfg(test)]
mod tests {
    use super::*;

    async fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let url = tether_store::sqlite_url(&dir.path().join("leases.db"));
        let registry = Registry::open(&url, &tether_store::PoolSettings::default())
            .await
            .unwrap();
        (dir, registry)
    }

    async fn lease(
        registry: &Registry,
        id: &str,
        session: &str,
        status: &str,
        expires_at: i64,
        next_attempt_at: Option<i64>,
        attempts: i64,
    ) {
        sqlx::query(
            "INSERT INTO credential_leases (id, session_id, profile, vault_path, status, created_at, \
             issuing_deadline, expires_at, next_attempt_at, revocation_attempts) \
             VALUES ($1, $2, 'p', 'database/creds/p', $3, 0, 0, $4, $5, $6)",
        )
        .bind(id)
        .bind(session)
        .bind(status)
        .bind(expires_at)
        .bind(next_attempt_at)
        .bind(attempts)
        .execute(registry.pool())
        .await
        .unwrap();
    }

    async fn session(registry: &Registry, id: &str, expires_at: i64, ended_at: Option<i64>) {
        sqlx::query(
            "INSERT INTO credential_sessions (session_id, expires_at, ended_at, created_at) VALUES ($1, $2, $3, 0)",
        )
        .bind(id)
        .bind(expires_at)
        .bind(ended_at)
        .execute(registry.pool())
        .await
        .unwrap();
    }

    const NOW: i64 = 10_000_000;

    #[tokio::test]
    async fn the_oldest_overdue_lease_sets_the_age() {
        let (_dir, registry) = registry().await;
        // Nothing overdue: live leases of a live session, a revoked one.
        session(&registry, "s-live", NOW + 600_000, None).await;
        lease(&registry, "a", "s-live", "ACTIVE", NOW + 60_000, None, 0).await;
        lease(&registry, "b", "s-live", "REVOKED", NOW - 900_000, None, 0).await;
        assert_eq!(read(&registry, NOW).await.unwrap(), (1, 0, 0));

        // An ACTIVE lease past its own expiry (the sweeper has not run).
        lease(&registry, "c", "s-live", "ACTIVE", NOW - 30_000, None, 0).await;
        assert_eq!(read(&registry, NOW).await.unwrap(), (2, 0, 30));

        // A lease of a session that ended 5 minutes ago, failing: older.
        session(&registry, "s-ended", NOW + 600_000, Some(NOW - 300_000)).await;
        lease(
            &registry,
            "d",
            "s-ended",
            "REVOCATION_FAILED",
            NOW + 60_000,
            Some(NOW + 5_000),
            4,
        )
        .await;
        assert_eq!(read(&registry, NOW).await.unwrap(), (2, 1, 300));

        // Revoked alone 10 minutes ago and not yet attempted: older still.
        lease(
            &registry,
            "e",
            "s-live",
            "REVOKING",
            NOW + 60_000,
            Some(NOW - 600_000),
            0,
        )
        .await;
        assert_eq!(read(&registry, NOW).await.unwrap(), (2, 2, 600));

        // Once they are revoked, nothing is overdue but the expired ACTIVE one.
        sqlx::query("UPDATE credential_leases SET status = 'REVOKED' WHERE id IN ('d', 'e')")
            .execute(registry.pool())
            .await
            .unwrap();
        assert_eq!(read(&registry, NOW).await.unwrap(), (2, 0, 30));
    }

    #[tokio::test]
    async fn the_gauges_are_rendered_once_read() {
        let (_dir, registry) = registry().await;
        // A refresh reads at the real clock.
        let now = crate::revoker::now_ms();
        session(&registry, "s", now + 600_000, None).await;
        lease(&registry, "a", "s", "ACTIVE", i64::MAX, None, 0).await;
        refresh(registry.clone()).await;
        let scrape = tether_runtime::metrics::render();
        assert_eq!(
            tether_runtime::metrics::value_of(&scrape, "tether_leases_live", &[]),
            1.0,
            "{scrape}"
        );
        assert!(
            scrape.contains("tether_lease_revocation_oldest_pending_age_seconds 0"),
            "{scrape}"
        );
    }
}
