//! Keeping a [`RevocationList`] current: the identity service's revocation
//! feed ([`RevocationFeed`], over gRPC with [`GrpcRevocationFeed`]) pulled
//! on an interval by a background task ([`spawn_revocation_sync`]).
//!
//! Every service that verifies delegated tokens runs one of these next to
//! its [`crate::DelegatedTokenVerifier`]. The task never decides anything:
//! when it cannot sync, the list goes stale and the verifier denies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::identity::v1::ListRevokedSessionsRequest;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tonic::codegen::{Body, Bytes, StdError};

use crate::delegated::{RevocationList, RevocationPage, RevokedSession};
use crate::error::TokenError;

/// One page of the identity service's session revocation list
/// (`ListRevokedSessions`).
pub trait RevocationFeed: Send + Sync {
    /// The revocations numbered after `after_sequence` (0: all). `Err`
    /// carries why the page could not be read, in one line without any
    /// token in it.
    fn page(
        &self,
        after_sequence: i64,
    ) -> impl Future<Output = Result<RevocationPage, String>> + Send;
}

/// [`RevocationFeed`] over `tether.identity.v1.IdentityExchange`'s
/// `ListRevokedSessions`, on any gRPC transport (a plain `Channel`, or the
/// shared internal client channel with its interceptor).
#[derive(Debug, Clone)]
pub struct GrpcRevocationFeed<T> {
    client: IdentityExchangeClient<T>,
}

impl<T> GrpcRevocationFeed<T> {
    pub fn new(client: IdentityExchangeClient<T>) -> Self {
        Self { client }
    }
}

impl<T> RevocationFeed for GrpcRevocationFeed<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    async fn page(&self, after_sequence: i64) -> Result<RevocationPage, String> {
        let mut client = self.client.clone();
        let response = client
            .list_revoked_sessions(ListRevokedSessionsRequest {
                // 0: the server's maximum page.
                page_size: 0,
                after_sequence,
                ..ListRevokedSessionsRequest::default()
            })
            .await
            .map_err(|status| {
                format!(
                    "ListRevokedSessions failed: {:?}: {}",
                    status.code(),
                    crate::verify::clip(status.message())
                )
            })?
            .into_inner();
        Ok(RevocationPage {
            entries: response
                .sessions
                .into_iter()
                .map(|s| RevokedSession {
                    sid: s.sid,
                    revoked_at_ms: s.revoked_at_unix_ms,
                    expires_at_ms: s.session_expires_at_unix_ms,
                })
                .collect(),
            server_time_ms: response.server_time_unix_ms,
            more: response.more,
            next_after_sequence: response.next_after_sequence,
        })
    }
}

impl RevocationList {
    /// One complete sync from `feed` (see [`RevocationList::sync`]).
    pub async fn sync_from<F: RevocationFeed + ?Sized>(
        &self,
        feed: &F,
    ) -> Result<usize, TokenError> {
        self.sync(|after| feed.page(after)).await
    }
}

/// Consecutive failed syncs between two WARN lines while the feed stays
/// down (the first failure is always logged).
const WARN_EVERY: u32 = 60;

/// Spawns the task that keeps `list` current: a sync right away, then one
/// every `interval`, until `shutdown` resolves (a sync in flight is
/// abandoned then). Join the handle with a deadline when stopping.
///
/// A failed sync is logged (WARN on the first failure and then every
/// [`WARN_EVERY`] failures, INFO when it recovers) and retried at the next
/// tick; meanwhile the list ages and, past its staleness limit, every check
/// against it is a deny.
pub fn spawn_revocation_sync<F>(
    list: Arc<RevocationList>,
    feed: F,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    F: RevocationFeed + 'static,
{
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let synced = tokio::select! {
                biased;
                () = &mut shutdown => return,
                synced = list.sync_from(&feed) => synced,
            };
            match synced {
                Ok(entries) => {
                    if failures > 0 {
                        tracing::info!(
                            failed_syncs = failures,
                            "session revocation list is current again"
                        );
                    }
                    failures = 0;
                    tracing::trace!(entries, "session revocation list synced");
                }
                Err(e) => {
                    if failures.is_multiple_of(WARN_EVERY) {
                        tracing::warn!(
                            error = %e,
                            failed_syncs = failures + 1,
                            "session revocation list sync failed; tokens are denied once it is stale"
                        );
                    } else {
                        tracing::debug!(error = %e, "session revocation list sync failed");
                    }
                    failures = failures.saturating_add(1);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::delegated::RevocationCheck as _;

    /// A feed a test controls: a revocation list and an on/off switch (a
    /// fault the real service cannot be made to produce on cue).
    #[derive(Default)]
    struct Feed {
        revoked: Mutex<Vec<RevokedSession>>,
        down: AtomicBool,
        calls: AtomicUsize,
    }

    impl RevocationFeed for Arc<Feed> {
        async fn page(&self, after: i64) -> Result<RevocationPage, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            // Every entry is numbered by its position, as the database does.
            let revoked = self.revoked.lock().unwrap().clone();
            let next_after_sequence = i64::try_from(revoked.len()).unwrap();
            Ok(RevocationPage {
                entries: revoked
                    .into_iter()
                    .skip(usize::try_from(after).unwrap())
                    .collect(),
                server_time_ms: crate::unix_now() * 1000,
                more: false,
                next_after_sequence,
            })
        }
    }

    fn revoked(sid: &str) -> RevokedSession {
        RevokedSession {
            sid: sid.into(),
            revoked_at_ms: crate::unix_now() * 1000,
            expires_at_ms: (crate::unix_now() + 600) * 1000,
        }
    }

    async fn until(mut check: impl FnMut() -> bool) {
        for _ in 0..400 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached within 2 s");
    }

    #[tokio::test]
    async fn syncs_at_once_then_on_every_tick_and_stops_on_shutdown() {
        let feed = Arc::new(Feed::default());
        let list = Arc::new(RevocationList::new(Duration::from_secs(5)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = spawn_revocation_sync(
            Arc::clone(&list),
            Arc::clone(&feed),
            Duration::from_millis(20),
            async move {
                let _ = stopped.await;
            },
        );
        until(|| feed.calls.load(Ordering::SeqCst) >= 1).await;
        assert_eq!(list.is_revoked("s-1").await, Ok(false));

        feed.revoked.lock().unwrap().push(revoked("s-1"));
        let list_ref = Arc::clone(&list);
        until(move || list_ref.len() == 1).await;
        assert_eq!(list.is_revoked("s-1").await, Ok(true));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the task stops promptly")
            .unwrap();
        let calls = feed.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            feed.calls.load(Ordering::SeqCst),
            calls,
            "no sync after stop"
        );
    }

    #[tokio::test]
    async fn a_feed_that_is_down_makes_the_list_stale_and_it_recovers() {
        let feed = Arc::new(Feed::default());
        let list = Arc::new(RevocationList::new(Duration::from_millis(100)));
        let task = spawn_revocation_sync(
            Arc::clone(&list),
            Arc::clone(&feed),
            Duration::from_millis(10),
            std::future::pending(),
        );
        until(|| feed.calls.load(Ordering::SeqCst) >= 1).await;
        assert_eq!(list.is_revoked("s-1").await, Ok(false));

        feed.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let stale = list.is_revoked("s-1").await;
        assert!(
            matches!(&stale, Err(e) if e.is_unavailable()),
            "a stale list denies: {stale:?}"
        );

        feed.down.store(false, Ordering::SeqCst);
        let mut current = false;
        for _ in 0..200 {
            if list.is_revoked("s-1").await == Ok(false) {
                current = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(current, "the list is current again once the feed is back");
        task.abort();
    }
}
