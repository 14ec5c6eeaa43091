//! `tether`: command-line tools for people running Tether.
//!
//! ```text
//! tether policy validate DIR          strict-validate a policy pack
//! tether policy test DIR CASES.yaml   run policy test cases, exit 1 on a mismatch
//! tether policy test DIR CASES.yaml --endpoint http://pdp:7002
//!                                     the same cases against a running PDP
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
        /// (e.g. `http://127.0.0.1:7002`) instead of in process. The pack in
        /// DIR must be the one it serves: its version is compared.
        #[arg(long)]
        endpoint: Option<String>,
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
        }) => policy::test(&dir, &cases),
        Command::Policy(PolicyCommand::Test {
            dir,
            cases,
            endpoint: Some(endpoint),
        }) => policy::test_remote(&dir, &cases, &endpoint),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
