//! The test OpenID Provider (`integration-tests/idp`, npm `oidc-provider`),
//! started on a free port with a signing key the test knows, so tests can
//! also craft hostile tokens signed by the IdP's real key.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tempfile::TempDir;
use tether_token::SigningKey;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The resource (audience) the IdP issues JWT access tokens for.
pub const API_RESOURCE: &str = "https://tether.local/api";

#[derive(Debug, Deserialize)]
struct Ready {
    issuer: String,
}

/// A running IdP; killed on drop.
#[derive(Debug)]
pub struct Idp {
    child: Child,
    issuer: String,
    key: SigningKey,
    _dir: TempDir,
}

fn idp_dir() -> PathBuf {
    crate::workspace_root().join("integration-tests/idp")
}

impl Idp {
    /// Starts `node server.js` with a fresh ES256 key. Requires
    /// `npm ci` in `integration-tests/idp` (the README's test command does it).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = idp_dir();
        if !dir.join("node_modules/oidc-provider").exists() {
            bail!(
                "the test IdP is not installed: run `integration-tests/run.sh test` (or `npm ci` in {})",
                dir.display()
            );
        }
        let key = SigningKey::generate()?;
        let tmp = tempfile::tempdir()?;
        let keys_file = tmp.path().join("idp-keys.json");
        let mut jwk = key.private_jwk()?;
        jwk["alg"] = "ES256".into();
        std::fs::write(&keys_file, serde_json::json!({ "keys": [jwk] }).to_string())?;
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("IDP_PORT", "0")
            .env("IDP_EXIT_WITH_PARENT", "1")
            .env("IDP_KEYS_FILE", &keys_file)
            .env("IDP_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("the IdP did not become ready within 20 s")??;
        let ready: Ready = serde_json::from_str(line.trim())
            .with_context(|| format!("the IdP failed to start (stdout: {line:?})"))?;
        Ok(Self {
            child,
            issuer: ready.issuer,
            key,
            _dir: tmp,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The IdP's signing key (to forge tokens in hostile-input tests).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Stops the IdP (to test an unreachable IdP).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Logs `user` in with Authorization Code + PKCE through `tether login`'s
    /// code, driving the IdP's non-interactive test login with a cookie-keeping
    /// HTTP client in place of a browser.
    pub async fn login(
        &self,
        user: &str,
        scopes: &[&str],
    ) -> anyhow::Result<tether_cli::login::LoginTokens> {
        let options = tether_cli::login::LoginOptions {
            issuer: self.issuer.clone(),
            client_id: "tether-cli".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            resource: Some(API_RESOURCE.into()),
            login_hint: Some(user.into()),
            timeout: Duration::from_secs(20),
        };
        tether_cli::login::login(&options, |url| async move {
            let browser = reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::limited(20))
                .build()?;
            let response = browser.get(url).send().await?;
            if !response.status().is_success() {
                bail!("login ended with HTTP {}", response.status());
            }
            Ok(())
        })
        .await
    }
}
