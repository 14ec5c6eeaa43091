use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use jsonwebtoken::DecodingKey;
use serde_json::json;

use super::*;
use crate::jwks::{KeySource, StaticKeys};
use crate::signing::SigningKey;

const ISSUER: &str = "https://identity.test";
const AUDIENCE: &str = "https://facade.test";

/// Keys that count how often a signature had to be checked.
struct Counting {
    keys: StaticKeys,
    lookups: AtomicUsize,
}

impl KeySource for Counting {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.keys.key(kid, alg).await
    }
}

/// A revocation list with one switch.
#[derive(Default)]
struct Switch(AtomicBool);

impl RevocationCheck for &Switch {
    async fn is_revoked(&self, _sid: &str) -> Result<bool, TokenError> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

fn token(key: &SigningKey, exp_in: i64) -> String {
    let now = crate::unix_now();
    key.sign(
        "at+jwt",
        &json!({
            "iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + exp_in,
            "jti": "j-1", "sid": "s_1", "act": {"sub": "hr-assistant"}, "client_id": "hr-assistant",
        }),
    )
    .unwrap()
}

#[tokio::test]
async fn a_repeated_token_is_verified_once_and_still_checked_for_revocation() {
    let key = SigningKey::generate().unwrap();
    let keys = Counting {
        keys: StaticKeys::new(&key.jwks()),
        lookups: AtomicUsize::new(0),
    };
    let revoked = Switch::default();
    let verifier = DelegatedTokenVerifier::new(ISSUER.into(), AUDIENCE.into(), keys, &revoked);
    let good = token(&key, 600);

    let first = verifier.verify(&good).await.unwrap();
    let again = verifier.verify(&good).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(verifier.keys.lookups.load(Ordering::SeqCst), 1);

    // Another token (same claims, one signature byte changed) is its own
    // entry: verified, and refused.
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(verifier.verify(&tampered).await.is_err());
    assert_eq!(verifier.keys.lookups.load(Ordering::SeqCst), 2);
    assert!(
        verifier.verify(&tampered).await.is_err(),
        "failures are not remembered"
    );
    assert_eq!(verifier.keys.lookups.load(Ordering::SeqCst), 3);

    // Revocation is asked on every use, remembered or not.
    revoked.0.store(true, Ordering::SeqCst);
    assert!(matches!(
        verifier.verify(&good).await,
        Err(TokenError::SessionRevoked)
    ));
}

#[tokio::test]
async fn a_remembered_token_past_its_expiry_is_refused() {
    let key = SigningKey::generate().unwrap();
    let revoked = Switch::default();
    let mut verifier = DelegatedTokenVerifier::new(
        ISSUER.into(),
        AUDIENCE.into(),
        StaticKeys::new(&key.jwks()),
        &revoked,
    );
    verifier.policy_mut().leeway = Duration::ZERO;
    // Valid for one more second: verified and remembered now, expired in
    // two (checked against the remembered `exp`, not re-verified).
    let short = token(&key, 1);
    verifier.verify(&short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(verifier.verify(&short).await.is_err());
}
