//! `tether-ciba-orchestrator`: asks the user out of band before a
//! high-risk action.

use std::process::ExitCode;

fn main() -> ExitCode {
    tether_runtime::process::main("tether-ciba-orchestrator", tether_ciba_orchestrator::run)
}
