//! `tether policy validate` and `tether policy test`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tether_policy::{CaseFile, Limits, PolicyPack};

/// Exit 0 when the pack validates, 1 with one line per problem otherwise.
pub fn validate(dir: &Path) -> anyhow::Result<ExitCode> {
    match PolicyPack::load_dir(dir) {
        Ok(pack) => {
            let s = pack.stats();
            println!(
                "ok: {} policies ({} permit, {} forbid, {} step-up), {} entities, version {}",
                s.policies,
                s.permits,
                s.forbids,
                s.step_ups,
                s.entities,
                pack.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            for problem in &err.problems {
                println!("error: {problem}");
            }
            println!("policy pack `{}` is invalid", dir.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs every case; exit 0 when all pass, 1 when any fails or the pack is
/// invalid.
pub fn test(dir: &Path, cases_path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(cases_path)
        .with_context(|| format!("reading `{}`", cases_path.display()))?;
    let file: CaseFile = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("parsing `{}`", cases_path.display()))?;
    file.check_keys()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("parsing `{}`", cases_path.display()))?;
    if file.cases.is_empty() {
        anyhow::bail!("`{}` has no cases", cases_path.display());
    }
    let pack = match PolicyPack::load_dir(dir) {
        Ok(pack) => pack,
        Err(err) => {
            for problem in &err.problems {
                println!("error: {problem}");
            }
            println!(
                "policy pack `{}` is invalid; no case was run",
                dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let limits = Limits::default();
    let (mut passed, mut failed) = (0usize, 0usize);
    for case in &file.cases {
        let result = case.run(&pack, &limits);
        match &result.failure {
            None => {
                passed += 1;
                println!("ok    {}", result.name);
            }
            Some(why) => {
                failed += 1;
                println!("FAIL  {}: {why}", result.name);
            }
        }
    }
    println!(
        "policy cases: {passed} passed, {failed} failed (policy version {})",
        pack.version()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
