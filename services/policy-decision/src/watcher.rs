//! Hot reload: watch the pack directory and reload after a quiet period.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::store::PolicyStore;

/// Keeps the watch alive; dropping it stops watching.
#[derive(Debug)]
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn watch(store: Arc<PolicyStore>, debounce: Duration) -> anyhow::Result<WatchGuard> {
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

    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait for the writes to settle, then drop the events they caused.
            tokio::time::sleep(debounce).await;
            while rx.try_recv().is_ok() {}
            let store = Arc::clone(&store);
            if let Err(e) = tokio::task::spawn_blocking(move || store.reload()).await {
                tracing::error!(error = %e, "policy reload task failed");
            }
        }
    });
    Ok(WatchGuard {
        _watcher: watcher,
        task,
    })
}
