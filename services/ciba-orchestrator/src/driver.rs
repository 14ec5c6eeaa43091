//! Drives PENDING tickets to their terminal state: one task per ticket,
//! polling the IdP's token endpoint (poll mode) or waiting for a ping
//! (ping mode), and one claim loop per replica that keeps ownership, takes
//! over the tickets of a replica that stopped, and picks up pings another
//! replica received.
//!
//! Only the owning replica asks the token endpoint for a ticket, so one
//! `auth_req_id` is never fetched twice at once (the IdP consumes it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;

use crate::ciba::{
    AuthReqId, CibaClient, DeliveryMode, Due, ExpiredBy, Outcome, PendingRequest, PollState,
};
use crate::config::{GrantsConfig, TicketsConfig};
use crate::store::{Finish, Sent, State, Store, TicketRow};

pub use tether_runtime::clock::{unix_ms, unix_now_ms as now_ms};

/// Retry delay when the store fails while a ticket is driven.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// How many ticket ids a slow watcher may fall behind before it re-reads.
const CHANGES_CAPACITY: usize = 4096;

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The ticket drivers of this replica.
#[derive(Debug, Clone)]
pub struct Drivers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    ciba: CibaClient,
    grants: GrantsConfig,
    tickets: TicketsConfig,
    /// This replica's owner id (random per process).
    owner: String,
    /// Unix ms until which every ticket this replica drives is its own:
    /// the `owner_until` of the last claim round that renewed all of them
    /// (0 before the first).
    lease_until: AtomicI64,
    /// Tickets changed by this replica (ids), for watchers.
    changes: broadcast::Sender<String>,
    /// The local driver of each ticket, woken by pings and cancellations.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    tasks: Mutex<JoinSet<()>>,
    stop: watch::Receiver<bool>,
}

impl Drivers {
    pub fn new(
        store: Store,
        ciba: CibaClient,
        grants: GrantsConfig,
        tickets: TicketsConfig,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                store,
                ciba,
                grants,
                tickets,
                owner: format!("orchestrator-{}", uuid::Uuid::new_v4().simple()),
                lease_until: AtomicI64::new(0),
                changes,
                wakers: Mutex::new(HashMap::new()),
                tasks: Mutex::new(JoinSet::new()),
                stop,
            }),
        }
    }

    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// When a ticket reserved now stops being this replica's.
    pub fn owner_until(&self) -> i64 {
        now_ms()
            .saturating_add(i64::try_from(self.inner.tickets.owner_lease_ms).unwrap_or(i64::MAX))
    }

    /// Whether this replica's lease on the tickets it drives holds for at
    /// least half a lease more: then no other replica can have taken one
    /// over, and a due token request needs no store read first. (A ticket
    /// that ended elsewhere meanwhile is let go at the next claim round; an
    /// answer fetched for it changes nothing, the terminal write is
    /// conditional.)
    fn lease_holds(&self) -> bool {
        let margin = i64::try_from(self.inner.tickets.owner_lease_ms / 2).unwrap_or(i64::MAX);
        now_ms().saturating_add(margin) < self.inner.lease_until.load(Ordering::Acquire)
    }

    pub fn ciba(&self) -> &CibaClient {
        &self.inner.ciba
    }

    /// Tells this replica's watchers that ticket `id` changed.
    pub fn changed(&self, id: &str) {
        let _no_watchers = self.inner.changes.send(id.to_owned());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    /// Wakes the local driver of `id`; `false` when this replica does not
    /// drive it.
    pub fn wake(&self, id: &str) -> bool {
        let waker = self.lock_wakers().get(id).cloned();
        match waker {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock_wakers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // A poisoned map only means a driver panicked while holding it; the
        // map itself is still consistent.
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts driving a ticket the IdP just accepted. In ping mode the
    /// first fetch waits for the ping.
    pub fn drive(&self, id: &str, pending: PendingRequest) {
        let fetch_now = self.inner.ciba.delivery_mode() == DeliveryMode::Poll;
        self.spawn(id, pending, fetch_now);
    }

    /// Resumes a ticket after a restart or a takeover: the next token
    /// request is one interval from now (when the last one was sent is not
    /// known), in ping mode too, since a ping may have been lost meanwhile.
    fn resume(&self, row: &TicketRow) {
        let (Some(auth_req_id), Some(interval_ms), Some(deadline)) =
            (&row.auth_req_id, row.poll_interval_ms, row.deadline)
        else {
            return;
        };
        let interval = Duration::from_millis(u64::try_from(interval_ms).unwrap_or(0));
        let deadline = from_ms(deadline.min(row.expires_at));
        let pending = PendingRequest {
            auth_req_id: AuthReqId::new(auth_req_id.clone()),
            user: row.user_subject.clone(),
            state: PollState {
                interval,
                next_poll_at: (SystemTime::now() + interval).min(deadline),
                deadline,
            },
        };
        tracing::info!(ticket = %row.id, "resuming a pending approval ticket");
        self.spawn(&row.id, pending, true);
    }

    fn spawn(&self, id: &str, pending: PendingRequest, fetch_now: bool) {
        let notify = Arc::new(Notify::new());
        {
            let mut wakers = self.lock_wakers();
            if wakers.contains_key(id) {
                return;
            }
            wakers.insert(id.to_owned(), Arc::clone(&notify));
        }
        let this = self.clone();
        let id = id.to_owned();
        self.lock_tasks().spawn(async move {
            this.run_ticket(&id, pending, notify, fetch_now).await;
            this.lock_wakers().remove(&id);
        });
    }

    async fn run_ticket(
        &self,
        id: &str,
        mut pending: PendingRequest,
        notify: Arc<Notify>,
        mut fetch_wanted: bool,
    ) {
        let ping_mode = self.inner.ciba.delivery_mode() == DeliveryMode::Ping;
        // Ping mode: a ping can be lost (the IdP's delivery failed, or it
        // raced the recording of the request); asking anyway after a while
        // bounds how late the user's answer is seen then.
        let every = self.inner.tickets.ping_fallback();
        let fallback =
            |pending: &PendingRequest| SystemTime::now() + every.max(pending.state.interval);
        let mut fallback_at = fallback(&pending);
        let mut stop = self.inner.stop.clone();
        let mut recheck = false;
        loop {
            if *stop.borrow() {
                return;
            }
            // A due token request re-reads the ticket first unless the
            // lease holds (one store read per poll was most of the cost of
            // a pending ticket).
            if recheck
                || fetch_wanted
                    && pending.state.due(SystemTime::now()) == Due::Now
                    && !self.lease_holds()
            {
                recheck = false;
                match self.inner.store.ticket(id).await {
                    // INVARIANT: only the owning replica asks the token
                    // endpoint; a ticket taken over elsewhere is let go.
                    Ok(Some(row))
                        if row.state == State::Pending
                            && row.owner.as_deref() == Some(self.inner.owner.as_str()) => {}
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(ticket = %id, error = %e, "ticket store unavailable while driving a ticket; retrying");
                        tokio::time::sleep(STORE_RETRY).await;
                        recheck = true;
                        continue;
                    }
                }
            }
            let now = SystemTime::now();
            match pending.state.due(now) {
                Due::Expired => {
                    self.finish(id, Outcome::Expired(ExpiredBy::Deadline)).await;
                    return;
                }
                Due::Now if fetch_wanted => {
                    let interval = pending.state.interval;
                    match self.inner.ciba.poll_once(&mut pending).await {
                        Ok(Some(outcome)) => {
                            self.finish(id, outcome).await;
                            return;
                        }
                        Ok(None) => {
                            fetch_wanted = !ping_mode;
                            fallback_at = fallback(&pending);
                        }
                        Err(e) => {
                            tracing::warn!(ticket = %id, error = %e, "CIBA token request failed; retrying at the interval");
                        }
                    }
                    if pending.state.interval != interval
                        && let Err(e) = self
                            .inner
                            .store
                            .save_interval(id, pending.state.interval)
                            .await
                    {
                        tracing::warn!(ticket = %id, error = %e, "could not record the raised poll interval");
                    }
                    continue;
                }
                _ => {}
            }
            let wake_at = match pending.state.due(now) {
                Due::At(at) if fetch_wanted => at,
                _ if ping_mode && !fetch_wanted => fallback_at.min(pending.state.deadline),
                _ => pending.state.deadline,
            };
            let sleep = wake_at.duration_since(now).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(sleep) => {
                    if ping_mode && !fetch_wanted && SystemTime::now() >= fallback_at {
                        // No ping for a while: ask once, in case it was lost.
                        fetch_wanted = true;
                        recheck = true;
                    }
                }
                () = notify.notified() => {
                    // A ping (ping mode) asks for a fetch; a cancellation or a
                    // lost ownership shows in the re-read.
                    fetch_wanted |= ping_mode;
                    recheck = true;
                }
                _ = stop.changed() => {}
            }
        }
    }

    /// Writes the terminal state (retrying while the store is down, until
    /// the replica stops: then the ticket stays PENDING and is resumed, and
    /// an approval the IdP already handed out ends `invalid_grant`, never
    /// approved).
    async fn finish(&self, id: &str, outcome: Outcome) {
        let reason = outcome.reason();
        let (state, approver, grant) = match &outcome {
            Outcome::Approved(approval) => (
                State::Approved,
                approval.approver.as_str(),
                Some((self.inner.grants.ttl(), self.inner.grants.uses)),
            ),
            Outcome::ApprovedByOtherUser { approver } => {
                tracing::warn!(
                    ticket = %id,
                    approver = %tether_runtime::clip(approver),
                    "an approval was given with another account than the ticket's user; recorded as FAILED"
                );
                (State::Failed, "", None)
            }
            Outcome::Denied { .. } => (State::Denied, "", None),
            Outcome::Expired(_) => (State::Expired, "", None),
            Outcome::Failed(_) => (State::Failed, "", None),
        };
        let how = Finish {
            state,
            reason: &reason,
            approver,
            grant,
        };
        loop {
            match self.inner.store.finish(id, &how, now_ms()).await {
                Ok(won) => {
                    if won {
                        tracing::info!(ticket = %id, state = state.as_str(), reason = %reason, "approval ticket decided");
                    } else {
                        tracing::info!(ticket = %id, outcome = state.as_str(), "the ticket had already ended; this outcome changes nothing");
                    }
                    self.changed(id);
                    return;
                }
                Err(e) => {
                    tracing::warn!(ticket = %id, error = %e, "ticket store unavailable while recording an outcome; retrying");
                    if *self.inner.stop.borrow() {
                        return;
                    }
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
    }

    /// One round of the claim loop: renew this replica's tickets, stop
    /// drivers of tickets that ended elsewhere, wake drivers pinged through
    /// another replica, and take over orphans (`all` PENDING tickets at
    /// start-up with SQLite, where only one replica may run).
    pub async fn claim(&self, all: bool) -> Result<(), sqlx::Error> {
        let store = &self.inner.store;
        let until = self.owner_until();
        let owned: HashSet<String> = store
            .renew(&self.inner.owner, until)
            .await?
            .into_iter()
            .collect();
        let local: Vec<String> = self.lock_wakers().keys().cloned().collect();
        let mut all_renewed = true;
        for id in local.iter().filter(|id| !owned.contains(*id)) {
            all_renewed = false;
            self.wake(id);
        }
        // INVARIANT: the lease is extended only when every local driver's
        // ticket was renewed, so a driver whose ticket moved elsewhere
        // re-reads the store (and lets go) before any further token request.
        if all_renewed {
            self.inner.lease_until.store(until, Ordering::Release);
        }
        for id in store.take_pings(&self.inner.owner).await? {
            self.wake(&id);
        }
        let now = now_ms();
        for row in store
            .claim_orphans(&self.inner.owner, self.owner_until(), now, all)
            .await?
        {
            if row.sent == Sent::Accepted as i64 {
                self.resume(&row);
            } else if store
                .mark_not_sent(
                    &row.id,
                    Sent::Unknown,
                    "failed: the orchestrator stopped before the IdP accepted the request",
                    now,
                )
                .await?
            {
                self.changed(&row.id);
            }
        }
        let mut tasks = self.lock_tasks();
        while tasks.try_join_next().is_some() {}
        Ok(())
    }

    /// The claim loop, until the replica stops.
    pub async fn run_claims(self) {
        let mut stop = self.inner.stop.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.inner.tickets.claim_interval()) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.claim(false).await {
                tracing::warn!(error = %e, "ticket store unavailable for the claim loop; retrying");
            }
        }
    }

    /// Waits for every driver to return (they return at once once `stop`
    /// is set, except one in a token request, bounded by the HTTP timeout).
    pub async fn join(&self, deadline: Duration) {
        let mut tasks = std::mem::take(&mut *self.lock_tasks());
        if tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("ticket drivers did not stop in time; aborting them");
            tasks.abort_all();
        }
    }

    /// How many tickets this replica drives now.
    pub fn driving(&self) -> usize {
        self.lock_wakers().len()
    }
}
