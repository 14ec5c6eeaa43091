//! `tether-agent-facade`: the one API an agent calls.

use std::process::ExitCode;

fn main() -> ExitCode {
    tether_runtime::process::main("tether-agent-facade", tether_agent_facade::run)
}
