//! `tether`: command-line tools for people running Tether.
//!
//! ```text
//! tether policy validate DIR          strict-validate a policy pack
//! tether policy test DIR CASES.yaml   run policy test cases, exit 1 on a mismatch
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(PolicyCommand::Validate { dir }) => policy::validate(&dir),
        Command::Policy(PolicyCommand::Test { dir, cases }) => policy::test(&dir, &cases),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
