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
        Self::launch(None).await
    }

    /// Like [`Idp::start`], with a configuration file: each top-level key of
    /// `config` replaces the default configuration's key (`clients` replaces
    /// all clients: extend [`Idp::default_clients`]), see the IdP's README.
    pub async fn start_with_config(config: serde_json::Value) -> anyhow::Result<Self> {
        Self::launch(Some(config)).await
    }

    /// The clients of `default-config.json`.
    pub fn default_clients() -> anyhow::Result<Vec<serde_json::Value>> {
        let path = idp_dir().join("default-config.json");
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        match config.get("clients") {
            Some(serde_json::Value::Array(clients)) => Ok(clients.clone()),
            _ => bail!("{} has no `clients` list", path.display()),
        }
    }

    async fn launch(config: Option<serde_json::Value>) -> anyhow::Result<Self> {
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
        let mut command = Command::new("node");
        command.arg("server.js");
        if let Some(config) = config {
            let config_file = tmp.path().join("idp-config.json");
            std::fs::write(&config_file, config.to_string())?;
            command.arg(&config_file);
        }
        let mut child = command
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

    /// Its JWKS URL, from its OIDC discovery document.
    pub async fn jwks_uri(&self) -> anyhow::Result<String> {
        let discovery: serde_json::Value =
            reqwest::get(format!("{}/.well-known/openid-configuration", self.issuer))
                .await?
                .error_for_status()?
                .json()
                .await?;
        discovery["jwks_uri"]
            .as_str()
            .map(str::to_owned)
            .context("the discovery document has no `jwks_uri`")
    }

    /// The device page where a person plays `user`'s phone (pending CIBA
    /// requests with Approve and Deny buttons; the IdP's README).
    pub fn device_url(&self, user: &str) -> anyhow::Result<String> {
        let mut url = reqwest::Url::parse(&self.issuer)?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the issuer URL has no path"))?
            .pop_if_empty()
            .push("device");
        url.query_pairs_mut().append_pair("user", user);
        Ok(url.into())
    }

    /// The CIBA request the test device holds for `auth_req_id`
    /// (`GET /test/ciba/:id`: status, binding message, `polls`...).
    pub async fn ciba_request(&self, auth_req_id: &str) -> anyhow::Result<serde_json::Value> {
        self.test_call(
            reqwest::Method::GET,
            auth_req_id,
            "",
            serde_json::Value::Null,
        )
        .await
    }

    /// Plays the user's device: `POST /test/ciba/:id/<action>` (`approve`,
    /// `deny`, `slow-down`) with a JSON body.
    pub async fn ciba_device(
        &self,
        auth_req_id: &str,
        action: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.test_call(reqwest::Method::POST, auth_req_id, action, body)
            .await
    }

    async fn test_call(
        &self,
        method: reqwest::Method,
        auth_req_id: &str,
        action: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = reqwest::Url::parse(&self.issuer)?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the issuer URL has no path"))?
            .pop_if_empty()
            .extend(["test", "ciba", auth_req_id])
            .extend((!action.is_empty()).then_some(action));
        let mut request = reqwest::Client::new().request(method, url.clone());
        if !body.is_null() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        let json: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("{url} answered {status}: {json}");
        }
        Ok(json)
    }

    /// Where the IdP sends the pings of the ping-mode client `client_id`
    /// (`POST /test/clients/:id/notification-endpoint`): the registered
    /// endpoint stays, the test IdP delivers to `url` instead (it may be
    /// plain HTTP on loopback).
    pub async fn set_ping_target(&self, client_id: &str, url: &str) -> anyhow::Result<()> {
        let mut target = reqwest::Url::parse(&self.issuer)?;
        target
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the issuer URL has no path"))?
            .pop_if_empty()
            .extend(["test", "clients", client_id, "notification-endpoint"]);
        let response = reqwest::Client::new()
            .post(target)
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("setting the ping target answered {}", response.status());
        }
        Ok(())
    }

    /// The CIBA requests the test device has seen (`GET
    /// /test/ciba/pending` with `query`, e.g. `[("status", "pending")]`).
    pub async fn ciba_requests(
        &self,
        query: &[(&str, &str)],
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut url = reqwest::Url::parse(&self.issuer)?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the issuer URL has no path"))?
            .pop_if_empty()
            .extend(["test", "ciba", "pending"]);
        url.query_pairs_mut().extend_pairs(query);
        let response = reqwest::Client::new().get(url).send().await?;
        if !response.status().is_success() {
            bail!("listing CIBA requests answered {}", response.status());
        }
        Ok(response.json().await?)
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
