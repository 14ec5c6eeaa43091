//! Background tasks: the one way a service stops what it spawned.
//!
//! A service spawns its tasks with a shutdown signal of its own (a
//! `watch` channel). To stop, it signals, then waits for each task here, at
//! most `deadline` each, aborting one that does not finish in time (a task
//! stuck in a network call must not hold the process past its drain).

use std::time::Duration;

use tokio::task::JoinHandle;

/// Waits for each of `tasks` at most `deadline`, aborting the late ones.
/// Call after signalling them to stop.
pub async fn join_all(tasks: impl IntoIterator<Item = JoinHandle<()>>, deadline: Duration) {
    for mut task in tasks {
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(
                deadline_ms = deadline.as_millis(),
                "a background task did not stop in time; aborting it"
            );
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_stops_is_joined_and_a_stuck_one_is_aborted() {
        let quick = tokio::spawn(async {});
        let stuck = tokio::spawn(std::future::pending::<()>());
        let stuck_handle = stuck.abort_handle();
        join_all([quick, stuck], Duration::from_millis(50)).await;
        tokio::task::yield_now().await;
        assert!(stuck_handle.is_finished(), "the stuck task was aborted");
    }
}
