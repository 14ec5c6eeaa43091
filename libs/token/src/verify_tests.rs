use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;
use crate::jwks::StaticKeys;
use crate::signing::SigningKey;

const ISS: &str = "https://idp.example";
const AUD: &str = "https://tether.local/api";

fn policy() -> VerifyPolicy {
    let mut p = VerifyPolicy::new(vec![ISS.into()], vec![AUD.into()], vec![Algorithm::ES256]);
    p.typ = TypRule::AccessToken;
    p.leeway = Duration::from_secs(5);
    p
}

fn claims() -> Value {
    let now = crate::unix_now();
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300})
}

fn header(key: &SigningKey) -> Value {
    json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid()})
}

async fn check(token: &str, key: &SigningKey) -> Result<Value, TokenError> {
    verify::<Value, _>(token, &policy(), &StaticKeys::new(&key.jwks()))
        .await
        .map(|v| v.claims)
}

#[tokio::test]
async fn a_good_token_verifies() {
    let key = SigningKey::generate().unwrap();
    let token = key.sign_raw(&header(&key), &claims()).unwrap();
    assert_eq!(check(&token, &key).await.unwrap()["sub"], "alice");
    // And via the typed signer.
    let token = key.sign("at+jwt", &claims()).unwrap();
    assert!(check(&token, &key).await.is_ok());
}

fn with(mut value: Value, key: &str, v: Value) -> Value {
    value[key] = v;
    value
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_reason() {
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let now = crate::unix_now();
    let h = header(&key);
    let c = claims();
    let good = key.sign_raw(&h, &c).unwrap();

    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        URL_SAFE_NO_PAD.encode(c.to_string())
    );
    // HS256 "signed" with the public key as the HMAC secret (key confusion).
    let public_pem = serde_json::to_string(key.public_jwk()).unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(with(c.clone(), "sub", json!("mallory")).to_string());
    let tampered = parts.join(".");

    let cases: Vec<(&str, String, TokenError)> = vec![
        ("empty", String::new(), TokenError::Empty),
        (
            "alg none",
            alg_none,
            TokenError::DisallowedAlgorithm("none".into()),
        ),
        (
            "HS256 with the public key",
            hs256,
            TokenError::DisallowedAlgorithm("HS256".into()),
        ),
        ("tampered payload", tampered, TokenError::BadSignature),
        (
            "signed by another key with our kid",
            other.sign_raw(&h, &c).unwrap(),
            TokenError::BadSignature,
        ),
        (
            "expired",
            key.sign_raw(&h, &with(c.clone(), "exp", json!(now - 60)))
                .unwrap(),
            TokenError::Expired,
        ),
        (
            "nbf in the future",
            key.sign_raw(&h, &with(c.clone(), "nbf", json!(now + 600)))
                .unwrap(),
            TokenError::NotYetValid,
        ),
        (
            "iat in the future",
            key.sign_raw(&h, &with(c.clone(), "iat", json!(now + 600)))
                .unwrap(),
            TokenError::IssuedInFuture,
        ),
        (
            "empty sub",
            key.sign_raw(&h, &with(c.clone(), "sub", json!("")))
                .unwrap(),
            TokenError::MissingClaim("sub".into()),
        ),
        (
            "blank sub",
            key.sign_raw(&h, &with(c.clone(), "sub", json!("  ")))
                .unwrap(),
            TokenError::MissingClaim("sub".into()),
        ),
        (
            "sub not a string",
            key.sign_raw(&h, &with(c.clone(), "sub", json!(42)))
                .unwrap(),
            TokenError::MissingClaim("sub".into()),
        ),
        (
            "wrong iss",
            key.sign_raw(&h, &with(c.clone(), "iss", json!("https://evil.example")))
                .unwrap(),
            TokenError::UntrustedIssuer("https://evil.example".into()),
        ),
        (
            "wrong aud",
            key.sign_raw(&h, &with(c.clone(), "aud", json!("https://other.example")))
                .unwrap(),
            TokenError::WrongAudience,
        ),
        (
            "wrong typ",
            key.sign_raw(&with(h.clone(), "typ", json!("JWT")), &c)
                .unwrap(),
            TokenError::WrongType {
                found: "JWT".into(),
                expected: "`at+jwt`".into(),
            },
        ),
        (
            "unknown kid",
            key.sign_raw(&with(h.clone(), "kid", json!("nope")), &c)
                .unwrap(),
            TokenError::UnknownKey("nope".into()),
        ),
        (
            "jku header",
            key.sign_raw(
                &with(h.clone(), "jku", json!("https://evil.example/jwks")),
                &c,
            )
            .unwrap(),
            TokenError::ForbiddenHeader("jku"),
        ),
        (
            "x5u header",
            key.sign_raw(
                &with(h.clone(), "x5u", json!("https://evil.example/cert")),
                &c,
            )
            .unwrap(),
            TokenError::ForbiddenHeader("x5u"),
        ),
        (
            "embedded jwk",
            other
                .sign_raw(
                    &with(
                        h.clone(),
                        "jwk",
                        serde_json::to_value(other.public_jwk()).unwrap(),
                    ),
                    &c,
                )
                .unwrap(),
            TokenError::ForbiddenHeader("jwk"),
        ),
        (
            "unknown crit",
            key.sign_raw(&with(h.clone(), "crit", json!(["exp-v2"])), &c)
                .unwrap(),
            TokenError::UnknownCritical("exp-v2".into()),
        ),
        (
            "oversized",
            "a".repeat(20_000),
            TokenError::Oversized {
                size: 20_000,
                limit: 16_384,
            },
        ),
        (
            "missing sub",
            key.sign_raw(
                &h,
                &json!({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 60}),
            )
            .unwrap(),
            TokenError::MissingClaim("sub".into()),
        ),
        (
            "two parts",
            "a.b".into(),
            TokenError::Malformed("expected 3 dot-separated parts, found 2".into()),
        ),
    ];
    for (name, token, expected) in cases {
        let err = check(&token, &key).await.expect_err(name);
        assert_eq!(err, expected, "{name}");
        // No error message ever carries the token.
        if token.len() > 20 {
            assert!(!err.to_string().contains(&token[..20]), "{name}: {err}");
        }
    }
}

#[tokio::test]
async fn max_lifetime_is_enforced() {
    let key = SigningKey::generate().unwrap();
    let mut p = policy();
    p.max_lifetime = Some(Duration::from_secs(60));
    let token = key.sign_raw(&header(&key), &claims()).unwrap();
    let err = verify::<Value, _>(&token, &p, &StaticKeys::new(&key.jwks()))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::MissingClaim(m) if m.contains("lifetime")));
}

#[test]
fn key_files_round_trip_and_rings_rotate() {
    let dir = std::env::temp_dir().join(format!("tether-token-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ring = crate::KeyRing::open_dir(&dir).unwrap();
    let first = ring.current().unwrap().kid().to_owned();
    let second = ring.rotate().unwrap().kid().to_owned();
    assert_ne!(first, second);
    assert_eq!(ring.jwks().keys.len(), 2);
    drop(ring);
    let reopened = crate::KeyRing::open_dir(&dir).unwrap();
    assert_eq!(reopened.jwks().keys.len(), 2);
    assert!(reopened.retire(&first).unwrap());
    let current = reopened.current().unwrap();
    assert!(!reopened.retire(current.kid()).unwrap());
    assert_eq!(reopened.jwks().keys.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn revocation_list_fails_closed_when_stale() {
    use crate::delegated::{RevocationCheck as _, RevocationList, RevocationPage, RevokedSession};
    let list = RevocationList::new(Duration::from_millis(200));
    // Never synced: deny.
    assert!(list.is_revoked("s1").await.is_err());
    let now_ms = crate::unix_now() * 1000;
    list.sync(|after| async move {
        assert_eq!(after, 0);
        Ok(RevocationPage {
            entries: vec![RevokedSession {
                sid: "s1".into(),
                revoked_at_ms: now_ms,
                expires_at_ms: now_ms + 60_000,
            }],
            server_time_ms: now_ms,
            more: false,
            next_after_sequence: 1,
        })
    })
    .await
    .unwrap();
    assert!(list.is_revoked("s1").await.unwrap());
    assert!(!list.is_revoked("s2").await.unwrap());
    // A failed sync keeps the copy but not its freshness.
    assert!(
        list.sync(|_| async { Err("down".to_string()) })
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(list.is_revoked("s2").await.is_err());
}

#[tokio::test]
async fn revocation_sync_reads_every_page_before_it_counts_as_current() {
    use crate::delegated::{RevocationCheck as _, RevocationList, RevocationPage, RevokedSession};
    let now_ms = crate::unix_now() * 1000;
    // 2,500 revocations at the same instant, numbered 1..=2,500, served
    // 1,000 per page after a sequence cursor, as the identity service does.
    let all: Vec<RevokedSession> = (0..2_500)
        .map(|i| RevokedSession {
            sid: format!("s{i:05}"),
            revoked_at_ms: now_ms,
            expires_at_ms: now_ms + 60_000,
        })
        .collect();
    let serve = |after: i64| {
        let skip = usize::try_from(after).unwrap();
        let page: Vec<RevokedSession> = all.iter().skip(skip).take(1_001).cloned().collect();
        let more = page.len() > 1_000;
        let entries: Vec<RevokedSession> = page.into_iter().take(1_000).collect();
        let next_after_sequence = after + i64::try_from(entries.len()).unwrap();
        async move {
            Ok(RevocationPage {
                entries,
                server_time_ms: now_ms,
                more,
                next_after_sequence,
            })
        }
    };
    let list = RevocationList::new(Duration::from_secs(30));
    assert_eq!(list.sync(serve).await.unwrap(), 2_500);
    assert!(list.is_revoked("s02499").await.unwrap());

    // A sync cut short after a page with `more` set is not current.
    let cut = RevocationList::new(Duration::from_secs(30));
    let mut calls = 0;
    let result = cut
        .sync(|after| {
            calls += 1;
            let fail = calls > 1;
            let page = serve(after);
            async move {
                if fail {
                    Err("connection reset".to_string())
                } else {
                    page.await
                }
            }
        })
        .await;
    assert!(result.is_err());
    assert!(
        cut.is_revoked("s00000").await.is_err(),
        "a partial copy never counts as current"
    );
}

#[tokio::test]
async fn unknown_kids_refresh_the_jwks_at_a_bounded_rate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let key = SigningKey::generate().unwrap();
    let body = serde_json::to_string(&key.jwks()).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_hits = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            server_hits.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = socket.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    let cache = crate::JwksCache::new(format!("http://{addr}/jwks"), reqwest::Client::new())
        .with_min_refresh_interval(Duration::from_millis(400));
    let good = key.sign_raw(&header(&key), &claims()).unwrap();
    verify::<Value, _>(&good, &policy(), &cache).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A flood of random kids right after: no fetch at all.
    for i in 0..50 {
        let token = key
            .sign_raw(
                &with(header(&key), "kid", json!(format!("random-{i}"))),
                &claims(),
            )
            .unwrap();
        assert!(matches!(
            verify::<Value, _>(&token, &policy(), &cache).await,
            Err(TokenError::UnknownKey(_))
        ));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // After the interval, one more unknown kid refreshes once; the rest don't.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for i in 0..50 {
        let token = key
            .sign_raw(
                &with(header(&key), "kid", json!(format!("again-{i}"))),
                &claims(),
            )
            .unwrap();
        let _ = verify::<Value, _>(&token, &policy(), &cache).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Known keys keep verifying without fetching.
    verify::<Value, _>(&good, &policy(), &cache).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_oversized_jwks_is_refused_without_buffering_it() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 2048];
        let _ = socket.read(&mut buf).await;
        // No Content-Length: the size is only known by reading.
        let _ = socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            )
            .await;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..64 {
            if socket.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let cache = crate::JwksCache::new(format!("http://{addr}/jwks"), reqwest::Client::new());
    let err = cache.refresh().await.unwrap_err();
    assert!(
        matches!(&err, TokenError::KeysUnavailable(m) if m.contains("over")),
        "{err:?}"
    );
}

/// Two replicas' rings on one key directory: a key another writes there is
/// published on the next reload but signs only once active; a removed key
/// stops being published; a bad file changes nothing.
#[test]
fn rings_sharing_a_directory_publish_new_keys_before_signing_with_them() {
    let dir = std::env::temp_dir().join(format!("tether-token-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hour = Duration::from_secs(3600);
    let a = crate::KeyRing::open_dir_with_activation(&dir, hour).unwrap();
    let b = crate::KeyRing::open_dir_with_activation(&dir, hour).unwrap();
    let old = a.current().unwrap().kid().to_owned();
    assert_eq!(b.current().unwrap().kid(), old, "one key, found by both");
    assert!(!b.reload().unwrap(), "nothing changed");

    // An operator (here: another ring on the directory) adds a key.
    let new = crate::KeyRing::open_dir(&dir)
        .unwrap()
        .rotate()
        .unwrap()
        .kid()
        .to_owned();
    assert_eq!(a.jwks().keys.len(), 1, "not seen before a reload");
    for ring in [&a, &b] {
        assert!(ring.reload().unwrap());
        let kids: Vec<_> = ring
            .jwks()
            .keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect();
        assert_eq!(kids, [new.clone(), old.clone()]);
        assert_eq!(
            ring.current().unwrap().kid(),
            old,
            "published, not signing yet"
        );
        assert!(
            !ring.retire(&old).unwrap(),
            "the key that signs is never retired"
        );
    }
    // Without an activation delay a reloaded key signs at once.
    let c = crate::KeyRing::open_dir_with_activation(&dir, Duration::ZERO).unwrap();
    assert_eq!(c.current().unwrap().kid(), new);

    // A file that is not a key: the last good keys keep serving.
    std::fs::write(dir.join("999999999999999-broken.pem"), "not a key").unwrap();
    assert!(a.reload().is_err());
    assert_eq!(a.jwks().keys.len(), 2);
    std::fs::remove_file(dir.join("999999999999999-broken.pem")).unwrap();

    // The old key's file is removed after its tokens expired.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(&format!("-{old}.pem")) {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(a.reload().unwrap());
    assert_eq!(a.jwks().keys.len(), 1);
    assert_eq!(
        a.current().unwrap().kid(),
        new,
        "the only key signs, active or not"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
