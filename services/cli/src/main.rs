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

mod policy;

#[derive(Debug, Parser)]
#[command(name = "tether", version, about = "Runtime security for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
