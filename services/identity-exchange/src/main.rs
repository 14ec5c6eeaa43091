//! `tether-identity-exchange`: RFC 8693 token exchange.

use std::process::ExitCode;

fn main() -> ExitCode {
    tether_runtime::process::main("tether-identity-exchange", tether_identity_exchange::run)
}
