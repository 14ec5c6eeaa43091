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
