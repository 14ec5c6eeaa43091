//! The five Tether services in one binary, for tests that run them as
//! separate processes: this crate's tests know where its own binaries are
//! (`CARGO_BIN_EXE_tether-services`), not where the services' are. Called
//! through a link named after a service's binary (`tether-policy-decision`,
//! …), it runs exactly what that binary's `main` runs.

use std::path::Path;
use std::process::ExitCode;

use tether_runtime::process::main as service_main;

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match name {
        "tether-agent-facade" => service_main("tether-agent-facade", tether_agent_facade::run),
        "tether-ciba-orchestrator" => {
            service_main("tether-ciba-orchestrator", tether_ciba_orchestrator::run)
        }
        "tether-credential-issuer" => {
            service_main("tether-credential-issuer", tether_credential_issuer::run)
        }
        "tether-identity-exchange" => {
            service_main("tether-identity-exchange", tether_identity_exchange::run)
        }
        "tether-policy-decision" => {
            service_main("tether-policy-decision", tether_policy_decision::run)
        }
        other => {
            eprintln!(
                "error: run through a link named after a service binary (`tether-policy-decision`, …), not `{other}`"
            );
            ExitCode::from(2)
        }
    }
}
