//! A throwaway PostgreSQL 15 cluster: `initdb` with scram-sha-256, `fsync=off`
//! (or PostgreSQL's default durability, for benchmarks and drills), a free
//! loopback port, stopped (`pg_ctl stop -m immediate`) on drop.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, every
//! server command runs as the `postgres` user (`runuser -u postgres --`) in a
//! directory that user owns.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tempfile::TempDir;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The bootstrap superuser, also the account Vault's database engine uses.
pub const ADMIN_USER: &str = "vault_admin";

/// A running cluster. Stops when dropped.
#[derive(Debug)]
pub struct PgCluster {
    dir: TempDir,
    port: u16,
    password: String,
    as_postgres: bool,
    /// PostgreSQL's default durability (`fsync`, `synchronous_commit`).
    durable: bool,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A free loopback TCP port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgCluster {
    /// `initdb` + start, with an `hr` schema holding `hr.employees`; no
    /// fsync (tests do not survive power losses).
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch(false).await
    }

    /// Like [`PgCluster::start`], with PostgreSQL's default durability
    /// (every commit flushed): what benchmarks and drills measure.
    pub async fn start_durable() -> anyhow::Result<Self> {
        Self::launch(true).await
    }

    async fn launch(durable: bool) -> anyhow::Result<Self> {
        if !Path::new(BIN).join("initdb").exists() {
            bail!(
                "PostgreSQL 15 server binaries are missing from {BIN}: install Debian's postgresql-15 \
                 (integration-tests/run.sh test does)"
            );
        }
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("tether-pg-")
            .tempdir()
            .context("creating the cluster directory")?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of the cluster directory to postgres failed");
            }
        }
        let password = format!("pw-{}", uuid_like());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password)?;
        let mut cluster = Self {
            port: free_port()?,
            dir,
            password,
            as_postgres,
            durable,
        };
        if as_postgres {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status()?;
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "-U",
                ADMIN_USER,
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        std::fs::remove_file(&pwfile)?;
        // The port was free when picked, but another test may take it
        // before PostgreSQL binds it (its log then says "could not bind"):
        // start again on a new one, at most three times.
        let mut attempts = 1;
        while let Err(e) = cluster.start_again() {
            let log =
                std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default();
            if attempts == 3 {
                return Err(e.context(log));
            }
            attempts += 1;
            cluster.port = free_port()?;
        }
        let mut conn = cluster.admin().await?;
        sqlx::raw_sql(
            "CREATE SCHEMA hr; \
             CREATE TABLE hr.employees (id INT PRIMARY KEY, name TEXT NOT NULL, department TEXT NOT NULL); \
             INSERT INTO hr.employees VALUES (1042, 'Ada', 'sales'), (1043, 'Grace', 'people');",
        )
        .execute(&mut conn)
        .await
        .context("creating the hr schema")?;
        conn.close().await?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let bin = Path::new(BIN).join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (handed to Vault's database engine).
    pub fn admin_password(&self) -> &str {
        &self.password
    }

    /// `postgresql://vault_admin:…@127.0.0.1:PORT/<db>?sslmode=disable`.
    pub fn admin_url(&self, db: &str) -> String {
        format!(
            "postgresql://{ADMIN_USER}:{}@127.0.0.1:{}/{db}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Connection options for `user`/`password` on database `postgres`.
    pub fn options(&self, user: &str, password: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(user)
            .password(password)
            .database("postgres")
            .ssl_mode(sqlx::postgres::PgSslMode::Disable)
    }

    /// A superuser connection.
    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect_with(&self.options(ADMIN_USER, &self.password))
            .await
            .context("connecting as the superuser")
    }

    /// Roles whose name starts with `prefix` (Vault's generated roles start
    /// with `v-`).
    pub async fn roles_like(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = self.admin().await?;
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)")
                .bind(prefix)
                .fetch_all(&mut conn)
                .await?;
        conn.close().await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// Creates database `name` (e.g. for a PostgreSQL lease registry).
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = self.admin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    /// Stops the server (fast shutdown): connections fail until
    /// [`start_again`](Self::start_again).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
            ],
        )
    }

    /// Starts the server on the same port and data.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let durability = if self.durable {
            ""
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        };
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} {durability}-c unix_socket_directories={} \
             -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                &self.data().display().to_string(),
                "-w",
                "-t",
                "30",
                "-l",
                &self.dir.path().join("server.log").display().to_string(),
                "-o",
                &opts,
            ],
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "stop",
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
            ],
        );
    }
}

/// 32 hex characters from the OS RNG (no extra dependency).
pub fn uuid_like() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
