//! `tether-credential-issuer`: just-in-time, session-bound credentials.

use std::process::ExitCode;

fn main() -> ExitCode {
    tether_runtime::process::main("tether-credential-issuer", tether_credential_issuer::run)
}
