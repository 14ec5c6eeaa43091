//! `[pruning]`: how long a service keeps rows that no longer matter, and
//! how it deletes them. What "no longer matters" means is each store's
//! own (`Store::prune` in the identity exchange, `Registry::prune` in the
//! credential issuer); this is the part they share.

use std::time::Duration;

use serde::Deserialize;

/// Nothing is pruned sooner than this after it stopped mattering, whatever
/// the configured retention: longer than any token or lease a row could
/// still vouch for, even from a replica whose clock is off.
pub const MIN_RETENTION_MS: i64 = 3_600_000;

/// Rows are deleted `retention_secs` after they stopped mattering, by every
/// replica every `interval_secs`, `batch_size` rows per statement (so a
/// pass never holds long locks, and replicas pruning at once share the
/// work).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruningConfig {
    pub retention_secs: u64,
    pub interval_secs: u64,
    pub batch_size: u32,
}

impl Default for PruningConfig {
    fn default() -> Self {
        Self {
            retention_secs: 7 * 24 * 3600,
            interval_secs: 600,
            batch_size: 1000,
        }
    }
}

impl PruningConfig {
    /// The retention in milliseconds.
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// The settings' problem, if any; `why` says what the minimum
    /// retention protects in this service.
    pub fn problem(&self, why: &str) -> Option<String> {
        let min_secs = u64::try_from(MIN_RETENTION_MS / 1000).unwrap_or(u64::MAX);
        if self.retention_secs < min_secs {
            return Some(format!(
                "pruning.retention_secs must be at least {min_secs} ({why})"
            ));
        }
        if self.interval_secs == 0 || !(1..=100_000).contains(&self.batch_size) {
            return Some(
                "pruning.interval_secs must be positive and pruning.batch_size 1-100000".into(),
            );
        }
        None
    }
}
