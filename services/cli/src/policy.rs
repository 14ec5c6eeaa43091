//! `tether policy validate` and `tether policy test`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tether_policy::{CaseFile, CaseResult, Expected, Limits, PolicyPack, TestCase};
use tether_proto::policy::v1 as pb;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;

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

/// Runs every case in process; exit 0 when all pass, 1 when any fails or
/// the pack is invalid.
pub fn test(dir: &Path, cases_path: &Path) -> anyhow::Result<ExitCode> {
    let file = read_cases(cases_path)?;
    let Some(pack) = load_or_report(dir) else {
        return Ok(ExitCode::FAILURE);
    };
    let limits = Limits::default();
    let results = file.cases.iter().map(|case| case.run(&pack, &limits));
    Ok(report(results, pack.version()))
}

/// Runs every case against a PDP over gRPC, presenting the certificate in
/// `tls` (the operators' `admin` identity) unless it says plaintext.
pub fn test_remote(
    dir: &Path,
    cases_path: &Path,
    endpoint: &str,
    tls: &tether_runtime::TlsConfig,
) -> anyhow::Result<ExitCode> {
    let file = read_cases(cases_path)?;
    let Some(pack) = load_or_report(dir) else {
        return Ok(ExitCode::FAILURE);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let channel = tether_runtime::client::Clients::new(tls)
            .context("loading the TLS certificate")?
            .grpc(endpoint, "policy-decision")?;
        let mut client = PolicyDecisionClient::new(channel);
        let served = client
            .get_policy_set(pb::GetPolicySetRequest {})
            .await
            .with_context(|| format!("asking `{endpoint}` for its policy set"))?
            .into_inner();
        if served.version != pack.version() {
            println!(
                "FAIL  `{endpoint}` serves policy version {}, `{}` is {}",
                served.version,
                dir.display(),
                pack.version()
            );
            return Ok(ExitCode::FAILURE);
        }
        let mut results = Vec::with_capacity(file.cases.len());
        for case in &file.cases {
            results.push(run_remote(&mut client, case).await);
        }
        Ok(report(results.into_iter(), &served.version))
    })
}

async fn run_remote(
    client: &mut PolicyDecisionClient<tether_runtime::client::InternalChannel>,
    case: &TestCase,
) -> CaseResult {
    let (context_json, entities_json) = case.json();
    let uid = |u: &tether_policy::Uid| {
        Some(pb::EntityUid {
            r#type: u.type_name.clone(),
            id: u.id.clone(),
        })
    };
    let request = pb::CheckRequest {
        principal: uid(&case.principal),
        action: uid(&case.action),
        resource: uid(&case.resource),
        context_json,
        entities_json,
        request_id: String::new(),
    };
    match client.check(request).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            let observed = match resp.decision() {
                pb::Decision::Allow => Expected::Allow,
                pb::Decision::ApprovalRequired => Expected::ApprovalRequired,
                pb::Decision::Deny | pb::Decision::Unspecified => Expected::Deny,
            };
            let message = resp.step_up.map(|s| s.binding_message).unwrap_or_default();
            case.check(observed, &resp.policy_ids, &message)
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            case.check(Expected::Rejected, &[], "")
        }
        Err(status) => CaseResult {
            name: case.name.clone(),
            failure: Some(format!("{:?}: {}", status.code(), status.message())),
            detail: None,
        },
    }
}

fn read_cases(path: &Path) -> anyhow::Result<CaseFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let file: CaseFile =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing `{}`", path.display()))?;
    file.check_keys()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("parsing `{}`", path.display()))?;
    if file.cases.is_empty() {
        anyhow::bail!("`{}` has no cases", path.display());
    }
    Ok(file)
}

fn load_or_report(dir: &Path) -> Option<PolicyPack> {
    match PolicyPack::load_dir(dir) {
        Ok(pack) => Some(pack),
        Err(err) => {
            for problem in &err.problems {
                println!("error: {problem}");
            }
            println!(
                "policy pack `{}` is invalid; no case was run",
                dir.display()
            );
            None
        }
    }
}

fn report(results: impl Iterator<Item = CaseResult>, version: &str) -> ExitCode {
    let (mut passed, mut failed) = (0usize, 0usize);
    for result in results {
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
    println!("policy cases: {passed} passed, {failed} failed (policy version {version})");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
