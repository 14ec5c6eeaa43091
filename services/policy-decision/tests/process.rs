//! The real binary: configuration errors, `--validate-only`, SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether-policy-decision");

fn example_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hr")
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("pdp.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn run(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).args(extra);
    cmd.env_remove("TETHER_LOG_FORMAT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `[server.tls]` with a throwaway CA's certificate for the PDP.
fn tls_section(dir: &Path) -> String {
    let ca = tether_runtime::dev_pki::DevCa::new("tether.test").unwrap();
    ca.write(&dir.join("pki"), "policy-decision")
        .unwrap()
        .to_toml_section()
}

const PLAINTEXT: &str = "[server.tls]\ninsecure_plaintext = true\n";

fn good_config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}[policy]\ndir = \"{}\"\n",
            tls_section(dir),
            example_pack().display()
        ),
    )
}

#[test]
fn validate_only_accepts_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&good_config(dir.path()), &["--validate-only"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration is valid"
    );
}

#[test]
fn invalid_configuration_exits_64_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_pack = dir.path().join("pack");
    std::fs::create_dir(&bad_pack).unwrap();
    for entry in std::fs::read_dir(example_pack()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bad_pack.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        bad_pack.join("typo.cedar"),
        "\npermit (principal is Agnt, action, resource);\n",
    )
    .unwrap();

    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "[server]\nlisten = \"127.0.0.1:0\"\n".into(),
            vec![],
            "missing field `policy`",
        ),
        (
            format!(
                "[policy]\ndir = \"{}\"\nwatchh = true\n",
                example_pack().display()
            ),
            vec![],
            "unknown field `watchh`",
        ),
        (
            format!("[policy]\ndir = \"{}\"\n", bad_pack.display()),
            vec![],
            "typo.cedar:2",
        ),
        (
            format!("[policy]\ndir = \"{}\"\n", example_pack().display()),
            vec![("TETHER_SERVER__LISTEN", "not-an-address")],
            "listen",
        ),
        (
            format!(
                "[policy]\ndir = \"{}\"\n[limits]\nmax_batch_size = 0\n",
                example_pack().display()
            ),
            vec![],
            "max_batch_size",
        ),
        ("[policy\n".into(), vec![], "not valid TOML"),
    ];
    let mut cases: Vec<Case<'_>> = cases
        .into_iter()
        .map(|(body, env, expect)| (format!("{PLAINTEXT}{body}"), env, expect))
        .collect();
    // No certificate and no explicit plaintext: refused before binding.
    cases.push((
        format!("[policy]\ndir = \"{}\"\n", example_pack().display()),
        vec![],
        "mTLS is required unless `server.tls.insecure_plaintext = true`",
    ));
    cases.push((
        format!(
            "[server.tls]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/k\"\nca_file = \"/ca\"\ntrust_domain = \"Bad Domain\"\n[policy]\ndir = \"{}\"\n",
            example_pack().display()
        ),
        vec![],
        "trust_domain",
    ));
    for (body, env, expect) in cases {
        let config = write_config(dir.path(), &body);
        for extra in [&["--validate-only"][..], &[][..]] {
            let out = run(&config, extra, &env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{body}: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one line expected: {stderr}");
            assert!(
                lines[0].starts_with("error: invalid configuration: "),
                "{stderr}"
            );
            assert!(lines[0].contains(expect), "`{stderr}` lacks `{expect}`");
        }
    }
}

/// Starts the binary with `tls` (a `[server.tls]` section) on a free
/// port, waits until it listens, sends SIGTERM and returns its output.
fn start_then_sigterm(dir: &Path, tls: &str) -> Output {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(
        dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_delay_secs = 0\ndrain_timeout_secs = 5\n{tls}[policy]\ndir = \"{}\"\n",
            example_pack().display()
        ),
    );
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("TETHER_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_then_sigterm(dir.path(), &tls_section(dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("drained, stopped"), "{stderr}");
    assert!(stderr.contains("serving mTLS"), "{stderr}");
    assert!(
        stderr.contains("spiffe://tether.test/tether/policy-decision"),
        "{stderr}"
    );
    // Structured JSON logs: every line parses.
    for line in stderr.lines() {
        serde_json_line(line);
    }
}

fn serde_json_line(line: &str) {
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not a JSON log line: {line}"
    );
}

#[test]
fn plaintext_is_explicit_and_warned_on_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_then_sigterm(dir.path(), PLAINTEXT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("insecure_plaintext"))
        .unwrap_or_else(|| panic!("no plaintext warning in {stderr}"));
    assert!(warning.contains("\"WARN\""), "{warning}");
}
