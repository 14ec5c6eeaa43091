//! Hot reload: watch the pack directory and reload after a quiet period.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tether_runtime::tasks::Tasks;
use tokio::sync::mpsc;

use crate::store::PolicyStore;

/// Watches the pack directory and reloads it, in a task of `tasks`, after
/// each burst of changes has been quiet for `debounce`. Events arrive only
/// while the returned watcher is held.
pub fn watch(
    store: Arc<PolicyStore>,
    debounce: Duration,
    tasks: &mut Tasks,
) -> anyhow::Result<notify::RecommendedWatcher> {
    // Capacity 1: a burst of file events collapses into one pending reload.
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => tracing::warn!(error = %e, "policy directory watch error"),
        })
        .context("creating the policy directory watcher")?;
    watcher
        .watch(store.dir(), RecursiveMode::Recursive)
        .with_context(|| format!("watching `{}`", store.dir().display()))?;

    let mut stop = tasks.signal();
    tasks.spawn("policy-reload", async move {
        loop {
            tokio::select! {
                biased;
                () = stop.stopped() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Wait for the writes to settle, then drop the events they caused.
            tokio::time::sleep(debounce).await;
            while rx.try_recv().is_ok() {}
            let store = Arc::clone(&store);
            if let Err(e) = tokio::task::spawn_blocking(move || store.reload()).await {
                tracing::error!(error = %e, "policy reload task failed");
            }
        }
    });
    Ok(watcher)
}
