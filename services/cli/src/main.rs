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
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tether_cli::{login, policy};

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
