//! Cerbos 0.55 as a peer for side-by-side benchmarks: the generated gRPC
//! client (a minimal wire-compatible subset, see `peers/cerbos/README.md`)
//! and [`CerbosServer`], a running `cerbos server` that is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Generated from `peers/cerbos/proto`; the nesting mirrors the protobuf
/// packages so that the generated `super::` paths resolve.
#[expect(
    clippy::module_inception,
    reason = "mirrors the protobuf packages `cerbos.*.v1`"
)]
pub mod cerbos {
    pub mod svc {
        #[allow(
            clippy::all,
            clippy::allow_attributes_without_reason,
            reason = "generated code"
        )]
        pub mod v1 {
            tonic::include_proto!("cerbos.svc.v1");
        }
    }
    pub mod request {
        #[allow(
            clippy::all,
            clippy::allow_attributes_without_reason,
            reason = "generated code"
        )]
        pub mod v1 {
            tonic::include_proto!("cerbos.request.v1");
        }
    }
    pub mod response {
        #[allow(
            clippy::all,
            clippy::allow_attributes_without_reason,
            reason = "generated code"
        )]
        pub mod v1 {
            tonic::include_proto!("cerbos.response.v1");
        }
    }
    pub mod engine {
        #[allow(
            clippy::all,
            clippy::allow_attributes_without_reason,
            reason = "generated code"
        )]
        pub mod v1 {
            tonic::include_proto!("cerbos.engine.v1");
        }
    }
    pub mod effect {
        #[allow(
            clippy::all,
            clippy::allow_attributes_without_reason,
            reason = "generated code"
        )]
        pub mod v1 {
            tonic::include_proto!("cerbos.effect.v1");
        }
    }
}

/// How long Cerbos may take to compile its policies and report SERVING
/// (about 3 s for the 1,001-policy set on a 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `integration-tests/peers/cerbos`.
pub fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/cerbos")
}

/// The Cerbos policy equivalent to the Cedar HR pack.
pub fn hr_policy_dir() -> PathBuf {
    peer_dir().join("policies")
}

/// The Cerbos binary: `$CERBOS_BIN`, or the one `npm ci` installs in
/// `peers/cerbos`. `Err` says why there is none.
pub fn binary() -> Result<PathBuf, String> {
    let (path, origin) = match std::env::var_os("CERBOS_BIN") {
        Some(path) => (PathBuf::from(path), "CERBOS_BIN"),
        None => (
            peer_dir().join("node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64"),
            "the default location",
        ),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no Cerbos binary at `{}` ({origin}); run `npm ci` in `{}` or set CERBOS_BIN",
            path.display(),
            peer_dir().display()
        ))
    }
}

/// Writes `n` synthetic Cerbos resource policies plus the HR policy into
/// `out` with `peers/cerbos/gen_large.py`.
pub fn generate_large_policy_set(out: &Path, n: usize) -> anyhow::Result<()> {
    let script = peer_dir().join("gen_large.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(out)
        .arg(n.to_string())
        .output()
        .with_context(|| format!("running `python3 {}`", script.display()))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A running `cerbos server`, killed (and reaped) when dropped.
#[derive(Debug)]
pub struct CerbosServer {
    child: Child,
    grpc_addr: String,
    // Holds the rendered config and the log file until the process is gone.
    _dir: TempDir,
}

impl CerbosServer {
    /// Starts Cerbos with the binary from [`binary`], serving the policies
    /// in `policy_dir`, and waits until it reports SERVING.
    pub async fn start(policy_dir: &Path) -> anyhow::Result<Self> {
        let bin = binary().map_err(anyhow::Error::msg)?;
        let policy_dir = policy_dir
            .canonicalize()
            .with_context(|| format!("locating the policy dir `{}`", policy_dir.display()))?;
        let http_addr = free_loopback_addr()?;
        let grpc_addr = free_loopback_addr()?;

        let dir = TempDir::new().context("creating a temp dir for Cerbos")?;
        let template = std::fs::read_to_string(peer_dir().join("config.yaml.tmpl"))
            .context("reading the Cerbos config template")?;
        let config = template
            .replace("${HTTP_ADDR}", &http_addr)
            .replace("${GRPC_ADDR}", &grpc_addr)
            .replace("${POLICY_DIR}", &policy_dir.to_string_lossy());
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).context("writing the Cerbos config")?;
        let log_path = dir.path().join("cerbos.log");
        let log = std::fs::File::create(&log_path).context("creating the Cerbos log file")?;

        let child = Command::new(&bin)
            .arg("server")
            .arg(format!("--config={}", config_path.display()))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the Cerbos log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `{}`", bin.display()))?;
        // From here on, an early return kills the process.
        let mut server = Self {
            child,
            grpc_addr,
            _dir: dir,
        };
        if let Err(err) = server.wait_ready(&http_addr).await {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(err.context(format!("Cerbos did not start; its log: {}", log.trim())));
        }
        Ok(server)
    }

    /// `127.0.0.1:PORT` of the gRPC (h2c) listener.
    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    async fn wait_ready(&mut self, http_addr: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("polling the Cerbos process")?
            {
                bail!("Cerbos exited with {status}");
            }
            if health_is_serving(http_addr).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Cerbos was not SERVING at http://{http_addr}/_cerbos/health within {READY_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for CerbosServer {
    fn drop(&mut self) {
        // Errors are moot here: the process may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address that was free a moment ago: bind port 0, release it.
fn free_loopback_addr() -> anyhow::Result<String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.to_string())
}

/// `GET /_cerbos/health` over a bare HTTP/1.1 connection: true on 200 with
/// `SERVING` in the body.
async fn health_is_serving(http_addr: &str) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(http_addr).await?;
        let request = format!(
            "GET /_cerbos/health HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(response)) => {
            response.starts_with("HTTP/1.1 200") && response.contains("\"SERVING\"")
        }
        _ => false,
    }
}
