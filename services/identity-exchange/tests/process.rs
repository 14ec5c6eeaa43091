//! The real binary: configuration errors exit 64 with one clear line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tether-identity-exchange");

fn config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "issuer = \"https://tether.example\"\n{}[store]\nurl = \"sqlite://{}/id.db\"\n[tokens]\nkeys_dir = \"{}/keys\"\n{extra}",
        tls_section(dir),
        dir.display(),
        dir.display()
    )
}

/// `[server.tls]` with a throwaway CA's certificate for the service.
fn tls_section(dir: &std::path::Path) -> String {
    let ca = tether_runtime::dev_pki::DevCa::new("tether.test").unwrap();
    ca.write(&dir.join("pki"), "identity-exchange")
        .unwrap()
        .to_toml_section()
}

#[test]
fn validate_only_and_invalid_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.toml");
    std::fs::write(&path, config(dir.path(), "")).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--validate-only")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cases = [
        (
            "max_lifetime_secs = 3600\n",
            "tokens.max_lifetime_secs must be between 1 and 900",
        ),
        (
            "[[trusted_issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n",
            "algorithm `HS256` is not accepted",
        ),
        (
            "[[trusted_issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\n",
            "algorithm `none` is not accepted",
        ),
        (
            "[[agents]]\nid = \"a\"\naudiences = [\"x\"]\n",
            "agent `a` needs `jwks`, `jwks_uri` or `spiffe_id`",
        ),
        (
            "[[trusted_issuers]]\nissuer = \"https://a\"\naudiences = [\"x\"]\nclients = [\"*\"]\n[[trusted_issuers]]\nissuer = \"https://b\"\naudiences = [\"x\"]\nclients = [\"*\"]\n[[agents]]\nid = \"a\"\naudiences = [\"x\"]\njwks_uri = \"https://a/jwks\"\n",
            "`may_act_for.issuer` is required when more than one issuer is trusted",
        ),
        (
            "[[trusted_issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\n",
            "`clients` must list the IdP clients whose tokens are accepted",
        ),
        (
            "[[trusted_issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nclients = [\"c\"]\nscope_claim = \"roles\"\n",
            "`scope_claim` must be `scope` or `scp`",
        ),
        (
            "[[agents]]\nid = \"a\"\naudiences = [\"x\"]\njwks_uri = \"https://a/jwks\"\nmay_delegate_to = [\"ghost\"]\n",
            "`may_delegate_to` names `ghost`, which is not a registered agent",
        ),
        (
            "[[agents]]\nid = \"a\"\naudiences = [\"x\"]\njwks = { keys = [{ kty = \"oct\", k = \"c2VjcmV0\" }] }\n",
            "no usable public signing key",
        ),
    ];
    let no_tls = config(dir.path(), "").replace(&tls_section(dir.path()), "");
    let mut bodies: Vec<(String, &str)> = cases
        .into_iter()
        .map(|(extra, expect)| {
            // `max_lifetime_secs` belongs under [tokens], the rest stand alone.
            let body = if extra.starts_with("max_") {
                config(dir.path(), "").replace("[tokens]\n", &format!("[tokens]\n{extra}"))
            } else {
                config(dir.path(), extra)
            };
            (body, expect)
        })
        .collect();
    bodies.push((
        no_tls,
        "mTLS is required unless `server.tls.insecure_plaintext = true`",
    ));
    for (body, expect) in bodies {
        std::fs::write(&path, body).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--validate-only")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{expect}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "`{stderr}` lacks `{expect}`");
    }
}

/// `--validate-only` of `path` with `vars` set: exit code and stderr.
fn validate_with(path: &std::path::Path, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("--validate-only")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Helm chart tells every replica how many there are
/// (`TETHER_SERVER__REPLICAS`): more than one on SQLite (a file on one
/// machine: each replica would have its own sessions, replay cache and
/// revocation feed) is refused before anything starts, and so is a
/// replica that would rotate the shared signing keys on its own.
#[test]
fn replicas_refuse_sqlite_and_their_own_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.toml");
    std::fs::write(&path, config(dir.path(), "")).unwrap();

    // One replica (the default, or said explicitly) on SQLite is fine.
    assert_eq!(validate_with(&path, &[]).0, Some(0));
    assert_eq!(
        validate_with(&path, &[("TETHER_SERVER__REPLICAS", "1")]).0,
        Some(0)
    );

    let (code, stderr) = validate_with(
        &path,
        &[
            ("TETHER_SERVER__REPLICAS", "2"),
            ("TETHER_TOKENS__ROTATE_AFTER_SECS", "0"),
        ],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("server.replicas = 2") && stderr.contains("SQLite"),
        "{stderr}"
    );

    let (code, stderr) = validate_with(&path, &[("TETHER_SERVER__REPLICAS", "0")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("server.replicas must be at least 1"),
        "{stderr}"
    );

    // On PostgreSQL, two replicas are accepted once keys rotate outside
    // the service (validation does not connect).
    let pg = config(dir.path(), "").replace(
        &format!("url = \"sqlite://{}/id.db\"", dir.path().display()),
        "url = \"postgres://tether@db.example/tether\"",
    );
    std::fs::write(&path, pg).unwrap();
    let (code, stderr) = validate_with(
        &path,
        &[
            ("TETHER_SERVER__REPLICAS", "2"),
            ("TETHER_TOKENS__ROTATE_AFTER_SECS", "0"),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = validate_with(&path, &[("TETHER_SERVER__REPLICAS", "2")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("tokens.rotate_after_secs must be 0"),
        "{stderr}"
    );
}
