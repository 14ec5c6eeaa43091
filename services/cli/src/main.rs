//! `tether`: command-line tools for people running Tether.
//!
//! ```text
//! tether policy validate DIR          strict-validate a policy pack
//! tether policy test DIR CASES.yaml   run policy test cases, exit 1 on a mismatch
//! tether policy test DIR CASES.yaml --endpoint https://pdp:7002 \
//!     --tls-cert admin.crt --tls-key admin.key --tls-ca ca.pem
//!                                     the same cases against a running PDP
//! tether dev-certs --out DIR NAME...  a throwaway CA and SPIFFE certificates
//!                                     for a local stack (never production)
//! tether audit verify --store URL --key-file VKEY [--checkpoint FILE]
//!                                     recompute the audit log, check its signed
//!                                     checkpoint and consistency with a saved one
//! tether audit checkpoint --store URL [--out FILE]
//!                                     save the latest signed checkpoint
//! tether audit proof --store URL --record ID    an inclusion proof
//! tether audit tail --store URL --session SID   one session's story
//! tether session list|show SID|end SID --endpoint https://facade:7000 \
//!     --tls-cert admin.crt --tls-key admin.key --tls-ca ca.pem [--json]
//!                                     operators: sessions, their facts and leases;
//!                                     end one (same path as the agent's EndSession)
//! tether leases list --session SID --endpoint … [--json]
//!                                     one session's leases (never credentials)
//! tether quarantine list [--active] | lift QID [--reason …] --endpoint … [--json]
//!                                     operators: what the facade's risk monitoring
//!                                     quarantined; lift one
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tether_cli::{audit, login, policy, quarantine, session};

#[derive(Debug, Parser)]
#[command(name = "tether", version, about = "Runtime security for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in to an OIDC provider (Authorization Code + PKCE, loopback
    /// redirect) and print the tokens as JSON on stdout.
    Login {
        /// The provider's issuer URL.
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value = "tether-cli")]
        client_id: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "openid profile email")]
        scope: String,
        /// RFC 8707 resource the access token is for.
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        login_hint: Option<String>,
    },
    /// Work with Cedar policy packs.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Audit the agent facade's audit log (a transparency log) from its
    /// store, with the log's verifier key only.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Operators: list, show and end agent sessions through the agent
    /// facade's SessionAdmin API (mTLS with the `admin` identity).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Operators: a session's credential leases (never the credentials).
    #[command(subcommand)]
    Leases(LeasesCommand),
    /// Operators: sessions and agents the facade's risk monitoring
    /// quarantined, and lifting a quarantine (SessionAdmin, `admin`
    /// identity).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Write a throwaway CA (`ca.pem`) and, for each NAME, a certificate
    /// `NAME.crt` + `NAME.key` whose SPIFFE ID is
    /// `spiffe://<trust-domain>/tether/<NAME>`. For local stacks and
    /// demos only: production certificates come from cert-manager, Vault
    /// PKI or SPIRE.
    DevCerts {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "tether.local")]
        trust_domain: String,
        /// Service names (`policy-decision`, `agent-facade`, `admin`, ...).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// How to reach a Tether service: mTLS with an operator certificate.
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// Client certificate (PEM) carrying the operators' SPIFFE ID
    /// (`spiffe://<trust-domain>/tether/admin`).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) the service's certificate chains to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// The SPIFFE trust domain of the service called.
    #[arg(long, default_value = "tether.local")]
    trust_domain: String,
    /// Call without TLS: only for a service started with
    /// `insecure_plaintext = true`.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"])]
    insecure_plaintext: bool,
}

impl TlsArgs {
    fn config(self) -> anyhow::Result<tether_runtime::TlsConfig> {
        if self.insecure_plaintext {
            return Ok(tether_runtime::TlsConfig::plaintext());
        }
        if self.tls_cert.is_none() {
            anyhow::bail!(
                "--endpoint needs --tls-cert, --tls-key and --tls-ca (or --insecure-plaintext for a plaintext service)"
            );
        }
        Ok(tether_runtime::TlsConfig {
            cert_file: self.tls_cert,
            key_file: self.tls_key,
            ca_file: self.tls_ca,
            trust_domain: self.trust_domain,
            ..tether_runtime::TlsConfig::default()
        })
    }
}

/// The agent facade as operators reach it, and the output format.
#[derive(Debug, clap::Args)]
struct FacadeArgs {
    /// The agent facade, e.g. `https://facade.example:7000`.
    #[arg(long, env = "TETHER_FACADE_ENDPOINT")]
    endpoint: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

impl FacadeArgs {
    fn run_quarantine(self, call: quarantine::Call) -> anyhow::Result<ExitCode> {
        let format = if self.json {
            session::Format::Json
        } else {
            session::Format::Table
        };
        let target = session::Target {
            endpoint: self.endpoint,
            tls: self.tls.config()?,
        };
        quarantine::run(&target, call, format)
    }

    fn run(self, call: session::Call) -> anyhow::Result<ExitCode> {
        let format = if self.json {
            session::Format::Json
        } else {
            session::Format::Table
        };
        let target = session::Target {
            endpoint: self.endpoint,
            tls: self.tls.config()?,
        };
        session::run(&target, call, format)
    }
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// List sessions, newest first.
    List {
        /// Only this user's sessions (their `sub`).
        #[arg(long)]
        user: Option<String>,
        /// Only sessions this agent started.
        #[arg(long)]
        agent: Option<String>,
        /// Only sessions that can still act (not ended, not expired).
        #[arg(long)]
        active: bool,
        /// Show at most this many sessions.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        #[command(flatten)]
        facade: FacadeArgs,
    },
    /// One session: user, agent, intent, scope, times, and its leases.
    Show {
        #[arg(value_name = "SID")]
        session_id: String,
        #[command(flatten)]
        facade: FacadeArgs,
    },
    /// End a session as the agent's EndSession does: token revoked
    /// everywhere, approvals cancelled, leases revoked; prints the receipt.
    /// Idempotent.
    End {
        #[arg(value_name = "SID")]
        session_id: String,
        /// Why, for the audit log (at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        facade: FacadeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// Quarantines, newest first.
    List {
        /// Only those in force.
        #[arg(long)]
        active: bool,
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[command(flatten)]
        facade: FacadeArgs,
    },
    /// Lift a quarantine: the agent may start sessions again at once (a
    /// quarantined session stays ended). Recorded in the audit log.
    Lift {
        #[arg(value_name = "QUARANTINE_ID")]
        quarantine_id: String,
        /// Why, for the audit log (at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        facade: FacadeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LeasesCommand {
    /// A session's leases, newest first.
    List {
        #[arg(long, value_name = "SID")]
        session: String,
        #[command(flatten)]
        facade: FacadeArgs,
    },
}

/// `--store`: the audit log's store.
#[derive(Debug, clap::Args)]
struct StoreArg {
    /// `sqlite://…`, `postgres://…` (schema `audit`) or a SQLite file path.
    #[arg(long)]
    store: String,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the tree from every stored record, check the latest
    /// signed checkpoint and, with --checkpoint, prove the log consistent
    /// with a checkpoint saved earlier. Exits 1 on any failure.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        /// The log's verifier key (the facade's `audit-key.vkey`) or its PEM
        /// public key.
        #[arg(long)]
        key_file: PathBuf,
        /// A checkpoint saved earlier with `tether audit checkpoint --out`.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print or save (--out) the latest signed checkpoint, to verify
    /// against later.
    Checkpoint {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check its signature before saving it.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print a record's inclusion proof against the latest checkpoint.
    Proof {
        #[command(flatten)]
        store: StoreArg,
        /// The record's index, or the `decision_id` / `receipt_id` the
        /// agent was given (every record of that request).
        #[arg(long)]
        record: String,
        /// Check the checkpoint and the proof with this verifier key.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print one session's records in time order.
    Tail {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        session: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Parse and strictly validate a pack (schema, *.cedar, entities.json).
    Validate {
        /// The pack directory.
        dir: PathBuf,
    },
    /// Run test cases (YAML) against a pack; exits 1 if any case fails.
    Test {
        /// The pack directory.
        dir: PathBuf,
        /// The cases file.
        cases: PathBuf,
        /// Run the cases against a running policy decision point over gRPC
        /// (e.g. `https://127.0.0.1:7002`) instead of in process. The pack in
        /// DIR must be the one it serves: its version is compared.
        #[arg(long)]
        endpoint: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Login {
            issuer,
            client_id,
            scope,
            resource,
            login_hint,
        } => run_login(login::LoginOptions {
            issuer,
            client_id,
            scopes: scope.split_whitespace().map(str::to_owned).collect(),
            resource,
            login_hint,
            timeout: std::time::Duration::from_secs(300),
        }),
        Command::Policy(PolicyCommand::Validate { dir }) => policy::validate(&dir),
        Command::Policy(PolicyCommand::Test {
            dir,
            cases,
            endpoint: None,
            ..
        }) => policy::test(&dir, &cases),
        Command::Policy(PolicyCommand::Test {
            dir,
            cases,
            endpoint: Some(endpoint),
            tls,
        }) => tls
            .config()
            .and_then(|tls| policy::test_remote(&dir, &cases, &endpoint, &tls)),
        Command::DevCerts {
            out,
            trust_domain,
            names,
        } => dev_certs(&out, &trust_domain, &names),
        Command::Audit(command) => run_audit(command),
        Command::Session(SessionCommand::List {
            user,
            agent,
            active,
            limit,
            facade,
        }) => facade.run(session::Call::List(session::ListOptions {
            user,
            agent,
            active,
            limit,
        })),
        Command::Session(SessionCommand::Show { session_id, facade }) => {
            facade.run(session::Call::Show { session_id })
        }
        Command::Session(SessionCommand::End {
            session_id,
            reason,
            facade,
        }) => facade.run(session::Call::End { session_id, reason }),
        Command::Leases(LeasesCommand::List {
            session: session_id,
            facade,
        }) => facade.run(session::Call::Leases { session_id }),
        Command::Quarantine(QuarantineCommand::List {
            active,
            limit,
            facade,
        }) => facade.run_quarantine(quarantine::Call::List { active, limit }),
        Command::Quarantine(QuarantineCommand::Lift {
            quarantine_id,
            reason,
            facade,
        }) => facade.run_quarantine(quarantine::Call::Lift {
            id: quarantine_id,
            reason,
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dev_certs(
    out: &std::path::Path,
    trust_domain: &str,
    names: &[String],
) -> anyhow::Result<ExitCode> {
    let ca = tether_runtime::dev_pki::DevCa::new(trust_domain)?;
    for name in names {
        let tls = ca.write(out, name)?;
        println!(
            "{}: {} {}",
            tether_runtime::tls::resolve_identity(trust_domain, name),
            tls.cert_file.unwrap_or_default().display(),
            tls.key_file.unwrap_or_default().display()
        );
    }
    println!("CA bundle: {}", out.join("ca.pem").display());
    Ok(ExitCode::SUCCESS)
}

fn run_audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            AuditCommand::Verify {
                store,
                key_file,
                checkpoint,
            } => audit::verify(&store.store, &key_file, checkpoint.as_deref()).await,
            AuditCommand::Checkpoint {
                store,
                out,
                key_file,
            } => audit::checkpoint(&store.store, out.as_deref(), key_file.as_deref()).await,
            AuditCommand::Proof {
                store,
                record,
                key_file,
            } => audit::proof(&store.store, &record, key_file.as_deref()).await,
            AuditCommand::Tail { store, session } => audit::tail(&store.store, &session).await,
        }
    })
}

fn run_login(options: login::LoginOptions) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tokens = runtime.block_on(login::login(&options, |url| async move {
        eprintln!("Open this URL in your browser to log in:\n\n  {url}\n");
        // Best effort; the printed URL is the fallback.
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        Ok(())
    }))?;
    eprintln!("logged in as `{}`", tokens.subject);
    println!("{}", serde_json::to_string_pretty(&tokens)?);
    Ok(ExitCode::SUCCESS)
}
