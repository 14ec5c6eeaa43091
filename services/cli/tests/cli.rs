//! `tether policy validate|test` as a platform team's CI would run them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hr")
}

fn tether(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(example()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn validate_accepts_the_example_pack() {
    let out = tether(&["policy", "validate", example().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).starts_with(
        "ok: 7 policies (2 permit, 5 forbid, 2 step-up), 2 entities, version sha256:"
    ));
}

#[test]
fn validate_rejects_with_file_line_and_cedar_message() {
    let dir = copy_example();
    std::fs::write(
        dir.path().join("extra.cedar"),
        "// comment\n\n@id(\"bad\")\npermit (principal, action == Action::\"raed\", resource);\n",
    )
    .unwrap();
    let out = tether(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("error: extra.cedar:4: "), "{text}");
    assert!(text.contains("raed"), "{text}");
}

#[test]
fn test_runs_the_example_cases() {
    let out = tether(&[
        "policy",
        "test",
        example().to_str().unwrap(),
        example().join("cases.yaml").to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("policy cases: 18 passed, 0 failed"), "{text}");
}

#[test]
fn test_fails_on_a_mismatch() {
    let dir = copy_example();
    // Break the policy, not the cases: salaries become changeable.
    let hr = std::fs::read_to_string(dir.path().join("hr.cedar")).unwrap();
    let weakened = hr.replace(
        "action == Action::\"update_salary\"",
        "action == Action::\"offboard\"",
    );
    assert_ne!(hr, weakened);
    std::fs::write(dir.path().join("hr.cedar"), weakened).unwrap();
    let out = tether(&[
        "policy",
        "test",
        dir.path().to_str().unwrap(),
        dir.path().join("cases.yaml").to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  agents never change salaries"),
        "{text}"
    );
}

#[test]
fn malformed_cases_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, "casez: []\ncases: []\n").unwrap();
    let out = tether(&[
        "policy",
        "test",
        example().to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown top-level key `casez`"));
    std::fs::write(&cases, "cases:\n  - name: x\n    expect: allow\n").unwrap();
    let out = tether(&[
        "policy",
        "test",
        example().to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}
