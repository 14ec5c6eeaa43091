//! `tether-policy-decision`: the Cedar policy decision point.

use std::process::ExitCode;

fn main() -> ExitCode {
    tether_runtime::process::main("tether-policy-decision", tether_policy_decision::run)
}
