//! The real `tether` binary's `session` and `leases` commands against the
//! whole stack on loopback (`FacadeStack`: real identity exchange, issuer
//! with OpenBao and PostgreSQL, approvals, facade, all mTLS), with the
//! operators' `admin` certificate: tables, `--json`, the end of a session,
//! and one clear line on stderr for every failure. Needs what
//! `integration-tests/run.sh test` installs; without it these tests fail,
//! they never skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::process::Output;
use std::time::Duration;

use sqlx::Connection as _;
use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_proto::facade::v1 as pb;
use tether_runtime::TlsConfig;

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// `tether ARGS --endpoint … --tls-* …` with `tls`'s files.
async fn tether(endpoint: &str, tls: &TlsConfig, args: &[&str]) -> Output {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().display().to_string();
    tokio::process::Command::new(BIN)
        .args(args)
        .args(["--endpoint", endpoint])
        .args(["--tls-cert", &path(&tls.cert_file)])
        .args(["--tls-key", &path(&tls.key_file)])
        .args(["--tls-ca", &path(&tls.ca_file)])
        .args(["--trust-domain", "tether.test"])
        .env_remove("TETHER_FACADE_ENDPOINT")
        .output()
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Exit 0, nothing on stderr; returns stdout.
fn ok(case: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{case}: {:?}\n{}",
        out.status,
        stderr(out)
    );
    stdout(out)
}

/// Exit `code`, nothing on stdout, exactly one line on stderr containing
/// `want`.
fn failed(case: &str, out: &Output, code: i32, want: &str) {
    assert_eq!(out.status.code(), Some(code), "{case}: {}", stderr(out));
    assert!(stdout(out).is_empty(), "{case}: {}", stdout(out));
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "{case}: {err}");
    assert!(err.contains(want), "{case}: {err}");
}

/// `2026-12-06T03:10:00Z`: RFC 3339, UTC, to the second.
fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
}

/// The table's rows split on runs of spaces (cells hold no double space).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Asserts each column of `table` starts at the same offset on every line.
fn aligned(table: &str) {
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[0];
    let starts: Vec<usize> = cells(header)
        .iter()
        .map(|c| header.find(c).unwrap())
        .collect();
    for line in &lines[1..] {
        for &start in &starts[1..] {
            assert_eq!(
                line.as_bytes().get(start - 2..start),
                Some(&b"  "[..]),
                "column at {start} not aligned in {line:?}\n{table}"
            );
            assert_ne!(line.as_bytes()[start], b' ', "{line:?}");
        }
    }
}

#[tokio::test]
async fn operators_list_show_and_end_sessions_with_the_tether_command() {
    let stack = FacadeStack::builder().start().await.unwrap();
    let session = stack.session().await.unwrap();
    let sid = session.session_id.clone();
    let issued = stack
        .client()
        .acquire_credential(bearer(
            pb::AcquireCredentialRequest {
                action: uid("Action", "read"),
                resource: uid("Employee", "1042"),
                profile: "hr-read".into(),
                ..Default::default()
            },
            &session.delegated_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::acquire_credential_response::Outcome::Issued(issued)) = issued.outcome else {
        panic!("no credential issued");
    };
    let lease_id = issued.lease.unwrap().lease_id;
    let Some(pb::credential::Kind::Database(db)) = issued.credential.and_then(|c| c.kind) else {
        panic!("not a database credential");
    };
    let secrets = [
        session.delegated_token.as_str(),
        db.password.as_str(),
        db.username.as_str(),
    ];
    let no_secret = |case: &str, text: &str| {
        for secret in secrets {
            assert!(!text.contains(secret), "{case} prints a secret");
        }
    };
    let endpoint = format!("https://{}", stack.addr());
    let admin = stack.pki().tls("admin").unwrap();

    // The list: an aligned table, times in RFC 3339 UTC.
    let table = ok(
        "session list",
        &tether(&endpoint, &admin, &["session", "list"]).await,
    );
    no_secret("session list", &table);
    aligned(&table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        cells(lines[0]),
        ["SESSION", "STATUS", "USER", "AGENT", "STARTED", "EXPIRES"]
    );
    assert_eq!(lines.len(), 2, "{table}");
    let row = cells(lines[1]);
    assert_eq!(&row[..4], [sid.as_str(), "active", "alice", "hr-assistant"]);
    assert!(is_rfc3339_utc(row[4]) && is_rfc3339_utc(row[5]), "{row:?}");

    // Filters reach the service.
    let none = ok(
        "session list --user nobody",
        &tether(&endpoint, &admin, &["session", "list", "--user", "nobody"]).await,
    );
    assert_eq!(none.lines().count(), 1, "{none}");

    // --json: one document.
    let json = ok(
        "session list --json",
        &tether(
            &endpoint,
            &admin,
            &["session", "list", "--active", "--json"],
        )
        .await,
    );
    no_secret("session list --json", &json);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["more"], false);
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["session_id"], sid.as_str());
    assert_eq!(sessions[0]["status"], "active");
    assert_eq!(sessions[0]["user_subject"], "alice");
    assert_eq!(sessions[0]["agent_id"], "hr-assistant");
    assert_eq!(sessions[0]["revoked_at"], serde_json::Value::Null);
    assert!(sessions[0]["started_at"].as_str().unwrap().ends_with('Z'));

    // One session: its facts, then its leases.
    let shown = ok(
        "session show",
        &tether(&endpoint, &admin, &["session", "show", &sid]).await,
    );
    no_secret("session show", &shown);
    let user_line = shown.lines().find(|l| l.starts_with("user")).unwrap();
    assert!(
        user_line.contains(&format!("alice at {}", stack.authority.idp().issuer())),
        "{shown}"
    );
    assert!(
        shown.lines().any(|l| cells(l) == ["status", "active"]),
        "{shown}"
    );
    assert!(
        shown.lines().any(|l| cells(l) == ["scope", "hr:read"]),
        "{shown}"
    );
    let leases_table: String = shown
        .lines()
        .skip_while(|l| !l.starts_with("LEASE"))
        .map(|l| format!("{l}\n"))
        .collect();
    aligned(&leases_table);
    let lease_row = cells(leases_table.lines().nth(1).unwrap());
    assert_eq!(&lease_row[..3], [lease_id.as_str(), "hr-read", "active"]);
    let shown_json: serde_json::Value = serde_json::from_str(&ok(
        "session show --json",
        &tether(&endpoint, &admin, &["session", "show", &sid, "--json"]).await,
    ))
    .unwrap();
    assert_eq!(shown_json["session"]["session_id"], sid.as_str());
    assert_eq!(shown_json["leases"][0]["lease_id"], lease_id.as_str());
    assert_eq!(shown_json["leases"][0]["status"], "active");

    // `tether leases list --session`.
    let leases = ok(
        "leases list",
        &tether(&endpoint, &admin, &["leases", "list", "--session", &sid]).await,
    );
    aligned(&leases);
    assert_eq!(
        cells(leases.lines().next().unwrap()),
        [
            "LEASE", "PROFILE", "STATUS", "TTL", "ISSUED", "EXPIRES", "REVOKED"
        ]
    );
    assert_eq!(cells(leases.lines().nth(1).unwrap())[0], lease_id);
    let leases_json: serde_json::Value = serde_json::from_str(&ok(
        "leases list --json",
        &tether(
            &endpoint,
            &admin,
            &["leases", "list", "--session", &sid, "--json"],
        )
        .await,
    ))
    .unwrap();
    assert_eq!(leases_json["leases"].as_array().unwrap().len(), 1);

    // End it: the receipt, and the credential stops working.
    let ended = ok(
        "session end --json",
        &tether(
            &endpoint,
            &admin,
            &[
                "session",
                "end",
                &sid,
                "--reason",
                "rotating credentials",
                "--json",
            ],
        )
        .await,
    );
    no_secret("session end", &ended);
    let receipt: serde_json::Value = serde_json::from_str(&ended).unwrap();
    assert_eq!(receipt["receipt"]["session_id"], sid.as_str());
    assert_eq!(receipt["receipt"]["already_ended"], false);
    let gone: Vec<&str> = ["revoked_leases", "pending_leases"]
        .iter()
        .flat_map(|k| receipt["receipt"][k].as_array().unwrap())
        .map(|l| l["lease_id"].as_str().unwrap())
        .collect();
    assert_eq!(gone, [lease_id.as_str()]);
    eventually(Duration::from_secs(20), || async {
        match sqlx::PgConnection::connect_with(&stack.deps.pg.options(&db.username, &db.password))
            .await
        {
            Ok(_) => Err("the credential still logs in"),
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();
    let again = ok(
        "session end again",
        &tether(&endpoint, &admin, &["session", "end", &sid]).await,
    );
    assert!(again.contains("(was already ended)"), "{again}");
    let shown = ok(
        "session show",
        &tether(&endpoint, &admin, &["session", "show", &sid]).await,
    );
    assert!(
        shown.lines().any(|l| cells(l) == ["status", "revoked"]),
        "{shown}"
    );
    assert!(shown.contains("(rotating credentials)"), "{shown}");

    // Failures: one line on stderr, a non-zero exit.
    failed(
        "an unknown session",
        &tether(
            &endpoint,
            &admin,
            &["session", "show", "s_00000000000000000000000000000000"],
        )
        .await,
        1,
        "no session `s_00000000000000000000000000000000`",
    );
    failed(
        "a malformed session id",
        &tether(&endpoint, &admin, &["session", "end", "s_1; DROP"]).await,
        2,
        "invalid session id",
    );
    failed(
        "a reason with a control character",
        &tether(
            &endpoint,
            &admin,
            &["session", "end", &sid, "--reason", "a\u{1b}[2J"],
        )
        .await,
        2,
        "--reason must not contain control characters",
    );
    let facade_cert = stack.pki().paths("agent-facade");
    failed(
        "not the admin identity",
        &tether(&endpoint, &facade_cert, &["session", "list"]).await,
        2,
        "permission denied",
    );
    let closed = format!(
        "https://127.0.0.1:{}",
        tether_integration_tests::postgres::free_port().unwrap()
    );
    failed(
        "an unreachable endpoint",
        &tether(&closed, &admin, &["session", "list"]).await,
        2,
        "cannot reach the agent facade",
    );
}
