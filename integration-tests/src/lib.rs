//! Test harness: starts the real Tether services (their `run` functions) on
//! loopback port 0, with their real dependencies, and tears them down.
//!
//! Modelled on quickwit's `ClusterSandboxBuilder`: a builder that owns its
//! `TempDir`s, hands out connected clients, and an [`eventually`] helper
//! instead of sleeps.

pub mod approvals;
pub mod bench;
pub mod cerbos;
pub mod demo;
pub mod facade;
pub mod identity;
pub mod idp;
pub mod issuer;
pub mod logs;
pub mod openbao;
pub mod otlp;
pub mod pdp;
pub mod pki;
pub mod postgres;
pub mod processes;
pub mod waterfall;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The workspace root (for `examples/`, `integration-tests/peers/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Polls `check` until it returns `Ok`, or fails with its last error once
/// `timeout` has passed.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// A service started by a sandbox on a Tokio task: [`Running::stop`]
/// signals its shutdown future and waits for `run` to return; dropping it
/// signals and aborts.
#[derive(Debug)]
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The shutdown future handed to a service's `run`.
pub type ShutdownSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl Running {
    /// Spawns `run(shutdown)`.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(ShutdownSignal) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until the service answers gRPC health on `channel`; if `run`
    /// returns first, its error (the reason it did not start) is returned.
    pub async fn wait_serving(
        &mut self,
        channel: tether_runtime::client::InternalChannel,
    ) -> anyhow::Result<()> {
        let health = tonic_health::pb::health_client::HealthClient::new(channel);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .task
                .as_ref()
                .is_some_and(tokio::task::JoinHandle::is_finished)
            {
                let result = match self.task.take() {
                    Some(task) => task.await?,
                    None => Ok(()),
                };
                result?;
                anyhow::bail!("the service stopped during start-up");
            }
            let checked = health
                .clone()
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            match checked {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("the service did not answer its health check within 10 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Signals shutdown and waits for the service to return.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Copies every file of `from` (recursively) into `to`.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
