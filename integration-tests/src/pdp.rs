//! A policy decision point on loopback, serving a copy of a policy pack.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tempfile::TempDir;
use tether_policy_decision::{Config, PolicyConfig, RequestLimits};
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::ServerConfig;
use tonic::transport::Channel;

use crate::Running;

/// Builds a [`PdpSandbox`].
#[derive(Debug)]
pub struct PdpSandboxBuilder {
    pack: PathBuf,
    limits: RequestLimits,
    server: ServerConfig,
    watch: bool,
}

impl Default for PdpSandboxBuilder {
    fn default() -> Self {
        Self {
            pack: crate::workspace_root().join("examples/hr"),
            limits: RequestLimits::default(),
            server: ServerConfig::default(),
            watch: true,
        }
    }
}

impl PdpSandboxBuilder {
    /// The pack to copy into the sandbox (default: `examples/hr`).
    pub fn pack(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pack = dir.into();
        self
    }

    pub fn limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Copies the pack into a fresh directory and starts the PDP's `run` on
    /// 127.0.0.1:0.
    pub async fn start(self) -> anyhow::Result<PdpSandbox> {
        let dir = tempfile::tempdir().context("creating the pack directory")?;
        crate::copy_dir(&self.pack, dir.path()).context("copying the pack")?;
        let config = Config {
            server: self.server,
            policy: PolicyConfig {
                dir: dir.path().to_path_buf(),
                watch: self.watch,
                reload_debounce_ms: 100,
            },
            limits: self.limits,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let running =
            Running::spawn(|shutdown| tether_policy_decision::run(config, listener, shutdown));
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("connecting to the PDP")?;
        Ok(PdpSandbox {
            dir,
            addr,
            channel,
            running,
        })
    }
}

/// A running PDP. Stops when dropped.
#[derive(Debug)]
pub struct PdpSandbox {
    dir: TempDir,
    addr: SocketAddr,
    channel: Channel,
    running: Running,
}

impl PdpSandbox {
    pub fn builder() -> PdpSandboxBuilder {
        PdpSandboxBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn client(&self) -> PolicyDecisionClient<Channel> {
        PolicyDecisionClient::new(self.channel.clone())
    }

    /// The live pack directory: writing here triggers a hot reload.
    pub fn pack_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}
