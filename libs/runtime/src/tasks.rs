//! Background tasks: the one way a service runs and stops what it spawns.
//!
//! A service keeps its periodic loops and long-running workers in one
//! [`Tasks`]. Each task is given a [`StopSignal`] (or is a periodic pass
//! started by [`Tasks::every`], which watches the signal itself). To stop,
//! the service calls [`Tasks::stop`]: the signal flips, and every task gets
//! one shared deadline to finish; a task stuck in a network call past it is
//! aborted and named in a WARN line, so nothing holds the process past its
//! drain. Dropping a [`Tasks`] (start-up failed half-way, a test ended)
//! signals and aborts whatever still runs.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a service's [`Tasks::stop`] waits, by default: enough for a
/// pass that is writing to finish, short of any sensible drain deadline
/// (`server.drain_timeout_secs`, which cuts the process off regardless).
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Resolves once its [`Tasks`] is stopped or dropped. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Waits until the tasks are told to stop.
    pub async fn stopped(&mut self) {
        // An error means the sender is gone: the tasks were dropped.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Whether the tasks were told to stop.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Waits, owning the signal: for APIs that take a `'static` shutdown
    /// future.
    pub async fn wait(mut self) {
        self.stopped().await;
    }

    /// The underlying channel, for loops that `select!` on `changed()`.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

/// The background tasks of one service.
#[derive(Debug)]
pub struct Tasks {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            running: Vec::new(),
        }
    }

    /// A signal for a task that watches for the stop itself.
    pub fn signal(&self) -> StopSignal {
        StopSignal(self.stop.subscribe())
    }

    /// Runs `task`, which should return soon after [`Tasks::signal`] fires
    /// (it is aborted at the stop deadline otherwise).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.running.push((name, tokio::spawn(task)));
    }

    /// Keeps a task spawned elsewhere (one that takes its own shutdown
    /// future, given [`StopSignal::into_future`]).
    pub fn adopt(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.running.push((name, task));
    }

    /// Runs `pass` every `period` (the first right away; a pass that runs
    /// long delays the next instead of bunching them) until the stop. A pass
    /// in flight when the stop comes may finish within the deadline.
    pub fn every<F, Fut>(&mut self, name: &'static str, period: Duration, mut pass: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let mut stop = self.signal();
        self.spawn(name, async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = stop.stopped() => return,
                    _ = tick.tick() => {}
                }
                pass().await;
            }
        });
    }

    /// Raises the stop signal now, without waiting (for what watches the
    /// same signal and must be joined first); [`Tasks::stop`] still joins.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Signals every task to stop and waits for them, all within one
    /// `deadline`; the late ones are aborted and named.
    pub async fn stop(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in self.running.drain(..) {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                tracing::warn!(
                    task = name,
                    deadline_ms = deadline.as_millis(),
                    "a background task did not stop in time; aborting it"
                );
                task.abort();
            }
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for (_, task) in &self.running {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_stops_is_joined_and_a_stuck_one_is_aborted() {
        let mut tasks = Tasks::new();
        let mut signal = tasks.signal();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn("quick", async move {
            signal.stopped().await;
            let _ = done_tx.send(());
        });
        let stuck = tokio::spawn(std::future::pending::<()>());
        let stuck_handle = stuck.abort_handle();
        tasks.adopt("stuck", stuck);
        tasks.stop(Duration::from_millis(50)).await;
        assert!(
            done_rx.await.is_ok(),
            "the quick task saw the signal and ran to its end"
        );
        tokio::task::yield_now().await;
        assert!(stuck_handle.is_finished(), "the stuck task was aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_shared_not_per_task() {
        let mut tasks = Tasks::new();
        for _ in 0..5 {
            tasks.spawn("stuck", std::future::pending::<()>());
        }
        let began = tokio::time::Instant::now();
        tasks.stop(Duration::from_secs(10)).await;
        assert_eq!(
            began.elapsed().as_secs(),
            10,
            "five stuck tasks cost one deadline, not five"
        );
    }

    #[tokio::test]
    async fn a_periodic_pass_runs_until_the_stop_and_never_after() {
        let mut tasks = Tasks::new();
        let passes = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&passes);
        tasks.every("count", Duration::from_millis(1), move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        while passes.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tasks.stop(Duration::from_secs(5)).await;
        let at_stop = passes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            passes.load(Ordering::SeqCst),
            at_stop,
            "no pass after the stop"
        );
    }

    #[tokio::test]
    async fn dropping_the_tasks_signals_and_aborts_them() {
        let mut tasks = Tasks::new();
        let signal = tasks.signal();
        let stuck = tokio::spawn(std::future::pending::<()>());
        let handle = stuck.abort_handle();
        tasks.adopt("stuck", stuck);
        drop(tasks);
        tokio::task::yield_now().await;
        assert!(signal.is_stopped());
        assert!(handle.is_finished());
    }
}
