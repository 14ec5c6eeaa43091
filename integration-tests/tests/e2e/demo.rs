//! README command one's story, as a test: the stack as separate processes,
//! the scripted agent through the facade with the Rust client, every step
//! as the story says (each step checks itself and fails the run when the
//! product does otherwise), the offboarding request's trace across the
//! services, and an audit log that verifies.

#![allow(clippy::unwrap_used, reason = "test")]

use std::path::PathBuf;

use tether_integration_tests::demo::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_story_runs_through_the_facade_and_leaves_a_verifiable_log() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        services_bin: PathBuf::from(env!("CARGO_BIN_EXE_tether-services")),
        tether_bin: tether_bin(),
        out_dir: out.path().to_owned(),
        verbose: false,
    };
    let (story, stack) = demo::run(&options, None).await.unwrap();

    let outcomes: Vec<(&str, &str)> = story
        .steps
        .iter()
        .map(|s| {
            (
                s.outcome.as_str(),
                s.policy_ids.first().map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("logged in", ""),
            ("session", ""),
            ("ALLOW", "hr-read-business-hours"),
            ("DENY", "no-agent-salary-changes"),
            ("APPROVAL_REQUIRED", "offboard-needs-approval"),
            ("approved", ""),
            ("ALLOW", "hr-offboard"),
            ("ALLOW", "hr-offboard"),
            ("DENY", "outside-declared-intent"),
            ("ended", ""),
        ]
    );
    // Every request step names its own trace; the leases their TTL.
    for step in &story.steps[1..] {
        if step.what != "WatchApproval" {
            assert_eq!(step.trace_id.len(), 32, "{step:?}");
        }
    }
    assert!(story.steps.iter().filter(|s| s.lease_ttl.is_some()).count() == 3);
    assert!(
        story.audit_verify.starts_with("ok: "),
        "{}",
        story.audit_verify
    );

    // The waterfall spans the four services the approved offboarding
    // crossed, as text and as a picture; no token or password in either.
    let (text, svg) = story.waterfall.as_ref().unwrap();
    for service in [
        "agent-facade",
        "policy-decision",
        "ciba-orchestrator",
        "credential-issuer",
    ] {
        assert!(text.contains(service), "{service} missing:\n{text}");
    }
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    let timeline = story.timeline();
    for shown in [text.as_str(), svg.as_str(), timeline.as_str()] {
        assert!(!shown.contains("eyJ"), "a JWT is shown");
        assert!(
            !shown.to_lowercase().contains("password"),
            "a password is shown"
        );
    }
    stack.shutdown();
}

/// The `tether` CLI, built by this workspace next to this test's binaries.
fn tether_bin() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let debug = deps.parent().unwrap().parent().unwrap();
    let bin = debug.join("tether");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tether-cli` (run.sh test does)",
        bin.display()
    );
    bin
}
