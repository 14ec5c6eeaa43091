//! Guaranteed revocation: the start-up reconciler, the periodic sweeper, the
//! orphan sweep, and the retry schedule they share.
//!
//! Nothing here gives up: a failed revocation is recorded
//! (REVOCATION_FAILED, `last_error`, `revocation_attempts`), logged at WARN,
//! counted in [`Metrics::revocation_failures`], and attempted again after an
//! exponential backoff capped at `backoff_max_ms`, for as long as it takes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::Notify;

use crate::config::RevocationConfig;
use crate::dbsweep::DatabaseSweep;
use crate::registry::{LeaseRow, Registry, Status};
use crate::vault::Vault;

pub use tether_runtime::clock::unix_now_ms as now_ms;

/// Counters exported in logs (`tether_credential_*` fields), readable in
/// process, and on `/metrics` through [`crate::metrics`].
#[derive(Debug, Default)]
pub struct Metrics {
    pub issued: AtomicU64,
    pub issue_failures: AtomicU64,
    pub revoked: AtomicU64,
    pub revocation_failures: AtomicU64,
    pub orphans_revoked: AtomicU64,
}

impl Metrics {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn inc(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What one orphan sweep of a path did.
#[derive(Debug, Default)]
struct Swept {
    revoked: u64,
    /// The issue times (Unix seconds) of the orphans that could not be
    /// revoked this time; `None` when even that is unknown.
    unrevoked: Vec<Option<i64>>,
}

/// Revokes leases and keeps retrying.
#[derive(Debug)]
pub struct Revoker {
    registry: Registry,
    vault: Arc<Vault>,
    config: RevocationConfig,
    /// Longest an Issue may take from writing its row to claiming its
    /// Vault lease (`issuing_deadline - created_at`).
    issuing_window: Duration,
    /// Longest a Vault read that creates a credential may run
    /// (`vault.creation_timeout_ms`): an interrupted issuance is settled
    /// only after its creation can no longer be running anywhere.
    creation_timeout: Duration,
    paths: Vec<String>,
    /// The profiles' database sweeps (roles created without a lease).
    db_sweeps: Vec<DatabaseSweep>,
    metrics: Arc<Metrics>,
    wake: Notify,
    last_orphan_sweep: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Revoker {
    #[expect(clippy::too_many_arguments, reason = "wired once, in `Issuer::start`")]
    pub fn new(
        registry: Registry,
        vault: Arc<Vault>,
        config: RevocationConfig,
        issuing_window: Duration,
        creation_timeout: Duration,
        paths: BTreeSet<String>,
        db_sweeps: Vec<DatabaseSweep>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            vault,
            config,
            issuing_window,
            creation_timeout,
            paths: paths.into_iter().collect(),
            db_sweeps,
            metrics,
            wake: Notify::new(),
            last_orphan_sweep: tokio::sync::Mutex::new(None),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Asks the background loop to look at the registry now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        let delay = self
            .config
            .backoff_initial_ms
            .saturating_mul(1u64 << exp.min(20));
        Duration::from_millis(delay.min(self.config.backoff_max_ms))
    }

    /// How long after an issuing deadline the orphan sweep can be sure an
    /// unclaimed lease is abandoned.
    fn orphan_grace(&self) -> i64 {
        ms(self.issuing_window) + i64::try_from(self.config.clock_skew_ms).unwrap_or(i64::MAX)
    }

    /// The least time after a role's `VALID UNTIL` the database sweep
    /// waits: an issuance records its login at most the creation timeout
    /// plus the issuing window after the role was created.
    fn db_sweep_min_grace(&self) -> Duration {
        self.creation_timeout
            + self.issuing_window
            + Duration::from_millis(self.config.clock_skew_ms)
    }

    /// What an interrupted issuance's row says once the orphan sweep
    /// covered it: true whatever Vault did.
    fn abandoned_note(&self, row: &LeaseRow) -> &'static str {
        if self
            .db_sweeps
            .iter()
            .any(|s| s.vault_path == row.vault_path)
        {
            "abandoned: creation outcome unknown, nothing was handed out; no lease of it is left at Vault (orphan sweep), and a role created without a lease is dropped by the database sweep after its VALID UNTIL"
        } else {
            "abandoned: creation outcome unknown, nothing was handed out; no lease of it is left at Vault (orphan sweep), but a role created without a lease stays until its VALID UNTIL (no database sweep for this profile)"
        }
    }

    /// One attempt at revoking one lease that has a Vault lease id. Returns
    /// true when it is gone.
    pub async fn revoke_one(&self, row: &LeaseRow) -> bool {
        let Some(vault_lease_id) = row.vault_lease_id.as_deref() else {
            return false;
        };
        match self.vault.revoke(vault_lease_id).await {
            Ok(()) => {
                let now = now_ms();
                let status = if row.expires_at.is_some_and(|e| e <= now) {
                    Status::Expired
                } else {
                    Status::Revoked
                };
                let total = Metrics::inc(&self.metrics.revoked);
                tracing::info!(
                    lease_id = %row.id,
                    session_id = %row.session_id,
                    profile = %row.profile,
                    status = status.as_str(),
                    tether_credential_revoked_total = total,
                    "lease revoked"
                );
                if let Err(e) = self.registry.mark_done(&row.id, status, now).await {
                    // Vault has revoked it; the next sweep revokes it again
                    // (idempotent) and records it then.
                    tracing::warn!(lease_id = %row.id, error = %e, "recording a revocation failed");
                }
                true
            }
            Err(e) => {
                self.failed(row, &e.to_string()).await;
                false
            }
        }
    }

    async fn failed(&self, row: &LeaseRow, error: &str) {
        let attempt = row.revocation_attempts + 1;
        let delay = self.backoff(row.revocation_attempts);
        let total = Metrics::inc(&self.metrics.revocation_failures);
        tracing::warn!(
            lease_id = %row.id,
            session_id = %row.session_id,
            attempt,
            retry_in_ms = ms(delay),
            error,
            tether_credential_revocation_failures_total = total,
            "revocation failed; will retry"
        );
        if let Err(e) = self
            .registry
            .mark_failed(&row.id, now_ms() + ms(delay), error)
            .await
        {
            tracing::warn!(lease_id = %row.id, error = %e, "recording a failed revocation failed");
        }
        self.wake();
    }

    /// Revokes `rows` concurrently (at most `concurrency` at once).
    pub async fn revoke_many(&self, rows: Vec<LeaseRow>) {
        futures::stream::iter(rows)
            .for_each_concurrent(self.config.concurrency, |row| async move {
                self.revoke_one(&row).await;
            })
            .await;
    }

    /// One pass: mark what is due, revoke it, settle interrupted issuances,
    /// and run the orphan sweep when its interval has passed (or `force`).
    pub async fn sweep(&self, force_orphans: bool) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let marked = self.registry.mark_due(now).await?;
        if marked > 0 {
            tracing::info!(
                leases = marked,
                "leases of ended or expired sessions marked for revocation"
            );
        }
        let due = self.registry.due(now, 1000).await?;
        let (with_id, interrupted): (Vec<_>, Vec<_>) =
            due.into_iter().partition(|r| r.vault_lease_id.is_some());
        self.revoke_many(with_id).await;

        let grace = self.orphan_grace();
        let skew = i64::try_from(self.config.clock_skew_ms).unwrap_or(i64::MAX);
        let mut sweep_paths = BTreeSet::new();
        for row in &interrupted {
            // A creation finishing in the background (up to the creation
            // timeout) records its lease itself: the row waits for it.
            let settle_after = (row.issuing_deadline + grace)
                .max(row.created_at + ms(self.creation_timeout) + skew);
            if settle_after < now {
                sweep_paths.insert(row.vault_path.clone());
            } else {
                self.registry.postpone(&row.id, settle_after + 1).await?;
            }
        }
        let orphan_due = {
            let last = self.last_orphan_sweep.lock().await;
            force_orphans
                || last.is_none_or(|t| {
                    t.elapsed() >= Duration::from_millis(self.config.orphan_sweep_interval_ms)
                })
        };
        if orphan_due && self.config.orphan_sweep {
            sweep_paths.extend(self.paths.iter().cloned());
        }
        if orphan_due {
            *self.last_orphan_sweep.lock().await = Some(tokio::time::Instant::now());
        }
        for path in sweep_paths {
            self.orphan_sweep(&path, &interrupted).await?;
        }
        if orphan_due {
            self.database_sweeps().await;
        }
        Ok(())
    }

    /// Every profile's database sweep, one after the other; a failing one
    /// is logged and tried again on the next pass.
    async fn database_sweeps(&self) {
        let min_grace = self.db_sweep_min_grace();
        for sweep in &self.db_sweeps {
            match sweep.run(&self.registry, min_grace).await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(
                    profile = %sweep.profile,
                    roles = dropped,
                    "database sweep dropped roles created without a lease"
                ),
                Err(e) => {
                    tracing::warn!(profile = %sweep.profile, error = %e, "database sweep failed; will retry");
                }
            }
        }
    }

    /// Revokes every Vault lease under `path` that no live row owns and that
    /// is older than the issuing window plus clock skew, then settles the
    /// interrupted issuances this sweep covered.
    ///
    /// A lease that cannot be revoked (e.g. its revocation statement fails
    /// on a role an administrator dropped) is retried on every pass and
    /// holds back only the interrupted issuances that may have created it
    /// (those whose window contains its issue time): it never stops the
    /// sweep, the other leases, or the other issuances.
    async fn orphan_sweep(&self, path: &str, interrupted: &[LeaseRow]) -> Result<(), sqlx::Error> {
        let started = now_ms();
        let grace = self.orphan_grace();
        let swept = match self.orphans_of(path, started, grace).await {
            Ok(swept) => swept,
            Err(e) => {
                tracing::warn!(vault_path = path, error = %e, "orphan sweep failed; will retry");
                for row in interrupted.iter().filter(|r| r.vault_path == path) {
                    self.failed(row, &format!("orphan sweep: {e}")).await;
                }
                return Ok(());
            }
        };
        if swept.revoked > 0 {
            tracing::info!(
                vault_path = path,
                leases = swept.revoked,
                "orphan sweep revoked leases"
            );
        }
        if !swept.unrevoked.is_empty() {
            tracing::warn!(
                vault_path = path,
                leases = swept.unrevoked.len(),
                "orphan leases could not be revoked; will retry"
            );
        }
        let skew = i64::try_from(self.config.clock_skew_ms).unwrap_or(i64::MAX);
        let cutoff = started - grace;
        let creation = ms(self.creation_timeout);
        let mut settled = 0u64;
        for row in interrupted
            .iter()
            .filter(|r| r.vault_path == path && r.issuing_deadline < cutoff)
        {
            // INVARIANT: a lease an interrupted issuance created was issued
            // after its row was written and before its deadline, or its
            // creation timeout for a read finishing in the background (±
            // clock skew, + 1 s for Vault's whole-second issue time); only
            // an unrevoked lease from that window can be it.
            let blocked = swept.unrevoked.iter().any(|issued| {
                issued.is_none_or(|secs| {
                    let ms = secs.saturating_mul(1000);
                    let last = row.issuing_deadline.max(row.created_at + creation);
                    row.created_at - skew - 1000 <= ms && ms <= last + skew
                })
            });
            if blocked {
                self.failed(
                    row,
                    "orphan sweep: a lease from the time of this issuance could not be revoked",
                )
                .await;
                continue;
            }
            if self
                .registry
                .settle_interrupted(&row.id, cutoff, now_ms(), self.abandoned_note(row))
                .await?
            {
                settled += 1;
            }
        }
        if settled > 0 {
            tracing::info!(
                vault_path = path,
                leases = settled,
                "interrupted issuances settled by the orphan sweep"
            );
        }
        Ok(())
    }

    async fn orphans_of(&self, path: &str, started: i64, grace: i64) -> Result<Swept, String> {
        let listed = self
            .vault
            .list_leases(path)
            .await
            .map_err(|e| e.to_string())?;
        let claimed = self
            .registry
            .claimed(path)
            .await
            .map_err(|e| e.to_string())?;
        let mut swept = Swept::default();
        for lease in listed.iter().filter(|l| !claimed.contains(*l)) {
            let info = match self.vault.lookup(lease).await {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(vault_lease_id = lease.as_str(), error = %e, "looking up an orphan lease failed; will retry");
                    swept.unrevoked.push(None);
                    continue;
                }
            };
            // INVARIANT: a Vault lease can be claimed as ACTIVE only before
            // its row's issuing deadline, which is at most `issuing_window`
            // after Vault issued it. Older than that (plus clock skew) and
            // unclaimed, it never will be: revoking it cannot take a
            // credential away from a caller who got it.
            if info.issue_time * 1000 + grace >= started {
                continue;
            }
            match self.registry.is_claimed(lease).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(vault_lease_id = lease.as_str(), error = %e, "checking an orphan lease's owner failed; will retry");
                    swept.unrevoked.push(Some(info.issue_time));
                    continue;
                }
            }
            match self.vault.revoke(lease).await {
                Ok(()) => {
                    swept.revoked += 1;
                    let total = Metrics::inc(&self.metrics.orphans_revoked);
                    tracing::info!(
                        vault_lease_id = lease.as_str(),
                        tether_credential_orphans_revoked_total = total,
                        "orphan lease revoked"
                    );
                }
                Err(e) => {
                    let total = Metrics::inc(&self.metrics.revocation_failures);
                    tracing::warn!(
                        vault_lease_id = lease.as_str(),
                        error = %e,
                        tether_credential_revocation_failures_total = total,
                        "revoking an orphan lease failed; will retry"
                    );
                    swept.unrevoked.push(Some(info.issue_time));
                }
            }
        }
        Ok(swept)
    }

    /// The reconciler (one forced pass at start-up) and then the sweeper,
    /// until `stop` flips.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.sweep_interval_ms);
        let mut force = true;
        loop {
            if let Err(e) = self.sweep(force).await {
                tracing::warn!(error = %e, "lease sweep failed (registry unavailable?); will retry");
            } else {
                force = false;
            }
            let wait = match self.registry.next_due().await {
                Ok(Some(t)) => {
                    let until = u64::try_from((t - now_ms()).max(0)).unwrap_or(0);
                    interval.min(Duration::from_millis(until))
                }
                _ => interval,
            };
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
                () = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}
