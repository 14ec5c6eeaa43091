#![allow(clippy::unwrap_used, reason = "test")]

use serde_json::{Value, json};

use super::*;
use crate::SigningKey;

const HTU: &str = "https://tether.example/token";
const TOKEN: &str = "eyJ.subject.token";

fn request() -> DpopRequest<'static> {
    DpopRequest {
        htm: "POST",
        htu: HTU,
        token: TOKEN,
        max_age: Duration::from_secs(60),
        leeway: Duration::from_secs(5),
    }
}

/// A proof signed by `key`, with `header` and `claims` merged over a valid
/// one's (a `null` value removes the member).
fn proof(key: &SigningKey, header: Value, claims: Value) -> String {
    let mut h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk()});
    let mut c = json!({
        "jti": "proof-1", "htm": "POST", "htu": HTU, "iat": crate::unix_now(),
    });
    merge(&mut h, header);
    merge(&mut c, claims);
    key.sign_raw(&h, &c).unwrap()
}

fn merge(into: &mut Value, over: Value) {
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            into.as_object_mut().unwrap().remove(k);
        } else {
            into[k] = v.clone();
        }
    }
}

#[test]
fn a_valid_proof_names_the_thumbprint_of_its_key() {
    let key = SigningKey::generate().unwrap();
    let verified = verify_dpop_proof(&proof(&key, json!({}), json!({})), &request()).unwrap();
    assert_eq!(
        verified.jkt,
        key.public_jwk().thumbprint(ThumbprintHash::SHA256).unwrap()
    );
    assert_eq!(verified.jkt.len(), 43, "base64url of 32 bytes");
    let other = SigningKey::generate().unwrap();
    let theirs = verify_dpop_proof(&proof(&other, json!({}), json!({})), &request()).unwrap();
    assert_ne!(theirs.jkt, verified.jkt);
    // The query and fragment of `htu` are ignored (RFC 9449 §4.3).
    let with_query = proof(&key, json!({}), json!({"htu": format!("{HTU}?x=1#f")}));
    assert!(verify_dpop_proof(&with_query, &request()).is_ok());
    // `ath`, when present, binds the proof to the presented token.
    let bound = proof(&key, json!({}), json!({"ath": token_hash(TOKEN)}));
    assert!(verify_dpop_proof(&bound, &request()).is_ok());
}

#[test]
fn every_malformed_or_misdirected_proof_is_refused() {
    let key = SigningKey::generate().unwrap();
    let now = crate::unix_now();
    let mut private = key.private_jwk().unwrap();
    private["alg"] = "ES256".into();
    let cases = [
        ("no typ", proof(&key, json!({"typ": null}), json!({}))),
        ("typ JWT", proof(&key, json!({"typ": "JWT"}), json!({}))),
        ("no jwk", proof(&key, json!({"jwk": null}), json!({}))),
        (
            "a private jwk",
            proof(&key, json!({"jwk": private}), json!({})),
        ),
        (
            "signed by another key than jwk",
            proof(
                &key,
                json!({"jwk": SigningKey::generate().unwrap().public_jwk()}),
                json!({}),
            ),
        ),
        ("alg none", {
            let p = proof(&key, json!({"alg": "none"}), json!({}));
            let mut parts: Vec<&str> = p.split('.').collect();
            parts[2] = "";
            parts.join(".")
        }),
        ("alg HS256", proof(&key, json!({"alg": "HS256"}), json!({}))),
        ("no jti", proof(&key, json!({}), json!({"jti": null}))),
        ("empty jti", proof(&key, json!({}), json!({"jti": ""}))),
        ("htm GET", proof(&key, json!({}), json!({"htm": "GET"}))),
        (
            "htu of another endpoint",
            proof(
                &key,
                json!({}),
                json!({"htu": "https://tether.example/introspect"}),
            ),
        ),
        ("no htu", proof(&key, json!({}), json!({"htu": null}))),
        ("no iat", proof(&key, json!({}), json!({"iat": null}))),
        (
            "iat a string",
            proof(&key, json!({}), json!({"iat": "now"})),
        ),
        ("too old", proof(&key, json!({}), json!({"iat": now - 600}))),
        (
            "from the future",
            proof(&key, json!({}), json!({"iat": now + 600})),
        ),
        (
            "ath of another token",
            proof(&key, json!({}), json!({"ath": token_hash("another")})),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
        ("empty", String::new()),
        ("oversized", "a".repeat(MAX_PROOF_BYTES + 1)),
    ];
    for (name, proof) in cases {
        let err = verify_dpop_proof(&proof, &request()).unwrap_err();
        assert!(
            matches!(err, TokenError::InvalidDpopProof(_)),
            "{name}: {err:?}"
        );
        assert!(
            !err.to_string().contains(&proof) || proof.is_empty(),
            "{name}: the proof is not echoed"
        );
    }
}
