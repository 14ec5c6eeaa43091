//! The deployment files, with no helm binary, no cluster and no Docker
//! engine: the Helm chart (`deploy/helm/tether`), the compose stack
//! (`deploy/compose`) and the Dockerfile (`deploy/docker`). The checks are
//! `deploy/tests/check.py`, one per test here so that a failure names what
//! broke; the configuration checks run the real service binaries with
//! `--validate-only` on what the chart and the compose file give them.
//!
//! The checks' Python (helm-python-sdk, kubernetes-validate, PyYAML, pinned
//! in `deploy/requirements.txt`) is installed by `integration-tests/run.sh
//! test` into `.tools/deploy-venv` and named by `DEPLOY_CHECKS_PY` (not a
//! `TETHER_*` name: the services read those as configuration). Without it
//! the tests fail; they never skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;
use tether_integration_tests::workspace_root;

/// The service binaries under the names the chart's images and the
/// compose file run: links to this crate's `tether-services` dispatcher,
/// which runs exactly what each binary's `main` runs.
const BINARIES: [&str; 5] = [
    "tether-identity-exchange",
    "tether-policy-decision",
    "tether-credential-issuer",
    "tether-ciba-orchestrator",
    "tether-agent-facade",
];

/// The virtualenv's Python (`DEPLOY_CHECKS_PY`, which
/// `integration-tests/run.sh test` sets, or the place it installs to).
fn python() -> PathBuf {
    let python = std::env::var_os("DEPLOY_CHECKS_PY").map_or_else(
        || workspace_root().join(".tools/deploy-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "the deployment checks' Python is not installed (no {}): run `integration-tests/run.sh test`, \
         whose ensure_deploy_tools step creates .tools/deploy-venv from deploy/requirements.txt \
         and sets DEPLOY_CHECKS_PY",
        python.display()
    );
    python
}

fn bin_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = PathBuf::from(env!("CARGO_BIN_EXE_tether-services"));
    for name in BINARIES {
        std::os::unix::fs::symlink(&dispatcher, dir.path().join(name)).unwrap();
    }
    dir
}

/// Runs one check of `deploy/tests/check.py`; fails with everything it
/// found.
fn check(name: &str, with_binaries: bool) {
    let bins = with_binaries.then(bin_dir);
    let mut command = Command::new(python());
    command
        .arg(workspace_root().join("deploy/tests/check.py"))
        .arg(name)
        .current_dir(workspace_root());
    if let Some(dir) = &bins {
        command.arg("--bin-dir").arg(dir.path());
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run deploy/tests/check.py: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy check `{name}` failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.trim_end().ends_with(&format!("{name}: ok")),
        "deploy check `{name}` did not report ok:\n{stdout}{stderr}"
    );
}

#[test]
fn chart_renders_the_default_and_ha_profiles() {
    check("chart-render", false);
}

#[test]
fn chart_objects_are_valid_kubernetes_objects_strictly() {
    check("chart-validate", false);
}

#[test]
fn chart_passes_helm_lint_strict() {
    check("chart-lint", false);
}

#[test]
fn chart_containers_have_probes_hardening_and_resources() {
    check("chart-containers", false);
}

#[test]
fn chart_network_policies_let_only_agents_reach_the_facade() {
    check("chart-network-policies", false);
}

#[test]
fn chart_renders_no_plaintext_secret() {
    check("chart-no-plaintext-secrets", false);
}

#[test]
fn chart_schema_refuses_replicas_on_sqlite() {
    check("chart-schema-refuses-sqlite-replicas", false);
}

#[test]
fn chart_schema_refuses_bad_values() {
    check("chart-schema-refuses-bad-values", false);
}

#[test]
fn chart_configurations_pass_the_services_validate_only() {
    check("chart-service-configs", true);
}

#[test]
fn compose_file_parses_with_health_checks_and_consistent_mounts() {
    check("compose-static", false);
}

#[test]
fn compose_configurations_pass_the_services_validate_only() {
    check("compose-service-configs", true);
}

#[test]
fn dockerfile_builds_distroless_non_root_images_per_binary() {
    check("dockerfile", false);
}
