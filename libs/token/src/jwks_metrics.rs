//! JWKS fetches by outcome, and how stale the stalest key set in this
//! process is: what tells an SRE that an IdP's (or an agent's) keys can no
//! longer be refreshed before tokens start failing.

use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Instant;

use tether_runtime::metrics::{Counter, KeyValue};

/// When one cache last fetched successfully (or, while it never has, when
/// it first tried); `None` until it tries.
pub(crate) type LastGood = Arc<Mutex<Option<Instant>>>;

/// Every live cache's [`LastGood`]; dead ones are dropped as new ones come.
static CACHES: Mutex<Vec<Weak<Mutex<Option<Instant>>>>> = Mutex::new(Vec::new());

static FETCHES: LazyLock<Counter<u64>> = LazyLock::new(|| {
    let meter = tether_runtime::metrics::meter();
    meter
        .f64_observable_gauge("tether.jwks.staleness")
        .with_description(
            "Seconds since the least recently refreshed JWKS in this process was last fetched successfully (0 before any fetch).",
        )
        .with_unit("s")
        .with_callback(|observer| observer.observe(staleness_secs(), &[]))
        .build();
    meter
        .u64_counter("tether.jwks.fetches")
        .with_description("JWKS fetches, by outcome (ok, error).")
        .with_unit("{fetch}")
        .build()
});

/// A new cache's [`LastGood`], watched by the staleness gauge.
pub(crate) fn register() -> LastGood {
    let last_good: LastGood = Arc::new(Mutex::new(None));
    let mut caches = CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    caches.retain(|cache| cache.strong_count() > 0);
    caches.push(Arc::downgrade(&last_good));
    drop(caches);
    LazyLock::force(&FETCHES);
    last_good
}

/// Counts one fetch and moves `last_good` on success (or on the first
/// attempt ever, so a cache that never succeeds grows stale from then).
pub(crate) fn fetched(last_good: &LastGood, ok: bool) {
    let now = Instant::now();
    {
        let mut at = last_good.lock().unwrap_or_else(PoisonError::into_inner);
        if ok || at.is_none() {
            *at = Some(now);
        }
    }
    FETCHES.add(
        1,
        &[KeyValue::new("outcome", if ok { "ok" } else { "error" })],
    );
}

fn staleness_secs() -> f64 {
    let caches = CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    caches
        .iter()
        .filter_map(Weak::upgrade)
        .filter_map(|cache| *cache.lock().unwrap_or_else(PoisonError::into_inner))
        .map(|at| at.elapsed().as_secs_f64())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn staleness_is_the_stalest_live_cache_since_its_last_success() {
        let fresh = register();
        let stale = register();
        fetched(&fresh, true);
        // Never succeeded: stale from its first attempt.
        {
            *stale.lock().unwrap() = Some(Instant::now() - Duration::from_secs(120));
        }
        fetched(&stale, false);
        let worst = staleness_secs();
        assert!((120.0..1000.0).contains(&worst), "{worst}");
        // A failed fetch does not refresh it; a successful one does.
        fetched(&stale, false);
        assert!(staleness_secs() >= 120.0);
        fetched(&stale, true);
        assert!(staleness_secs() < 120.0);
        // A dropped cache no longer counts.
        *stale.lock().unwrap() = Some(Instant::now() - Duration::from_secs(500));
        assert!(staleness_secs() >= 500.0);
        drop(stale);
        assert!(staleness_secs() < 500.0);

        let scrape = tether_runtime::metrics::render();
        assert!(
            tether_runtime::metrics::value_of(
                &scrape,
                "tether_jwks_fetches_total",
                &[("outcome", "error")]
            ) >= 2.0,
            "{scrape}"
        );
        assert!(scrape.contains("tether_jwks_staleness_seconds"), "{scrape}");
    }
}
