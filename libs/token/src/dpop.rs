//! DPoP proofs (RFC 9449): proof that the caller holds the private key a
//! sender-constrained token is bound to (its `cnf.jkt`).
//!
//! A proof is a JWT the client signs with that key, carrying the public key
//! in its header. Unlike every other token here, its verification key comes
//! from the token itself: what makes that safe is the last step, comparing
//! the key's thumbprint with the `jkt` the bound token was issued for.

use std::collections::HashSet;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::error::TokenError;
use crate::verify::clip;

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";

/// Largest accepted proof, in bytes (a proof carries one public key).
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Asymmetric algorithms only (RFC 9449 §4.2: never `none` or a MAC).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// JWK members that only a private key has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What the request a proof arrived with must match.
#[derive(Debug, Clone)]
pub struct DpopRequest<'a> {
    /// The HTTP method (`POST`).
    pub htm: &'a str,
    /// The request URL, without query and fragment.
    pub htu: &'a str,
    /// The token presented with the proof: when the proof carries `ath`,
    /// it must be this token's hash.
    pub token: &'a str,
    /// How old a proof may be.
    pub max_age: Duration,
    /// Tolerated clock skew.
    pub leeway: Duration,
}

/// A proof that passed every check but replay (the caller keeps `jti`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
}

/// Verifies a DPoP proof for `request` (RFC 9449 §4.3, except the replay
/// check on `jti`, which needs the caller's store).
pub fn verify_dpop_proof(proof: &str, request: &DpopRequest<'_>) -> Result<DpopProof, TokenError> {
    let bad = |m: &str| TokenError::InvalidDpopProof(m.to_owned());
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(bad("the proof must be one JWT of at most 8 KiB"));
    }
    let header_b64 = proof.split('.').next().unwrap_or_default();
    let header: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| bad("the header is not base64url JSON"))?;
    if header.get("typ").and_then(Value::as_str) != Some(DPOP_TYP) {
        return Err(bad("`typ` must be `dpop+jwt`"));
    }
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = ALGORITHMS
        .iter()
        .copied()
        .find(|a| format!("{a:?}") == alg_name)
        .ok_or_else(|| {
            TokenError::InvalidDpopProof(format!(
                "algorithm `{}` is not an accepted asymmetric algorithm",
                clip(alg_name)
            ))
        })?;
    let jwk_value = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the header must carry the public key as `jwk`"))?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk_value.contains_key(*m)) {
        return Err(bad("`jwk` must be a public key (it has private members)"));
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk_value.clone()))
        .map_err(|_| bad("`jwk` is not a supported public key"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| bad("`jwk` is not a usable public key"))?;

    let mut validation = Validation::new(alg);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(proof, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                bad("the signature does not verify with `jwk`")
            }
            _ => bad("the proof is not a JWT signed with `jwk` by `alg`"),
        })?
        .claims;

    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| bad("a `jti` of 1 to 256 bytes is required"))?;
    if claims.get("htm").and_then(Value::as_str) != Some(request.htm) {
        return Err(TokenError::InvalidDpopProof(format!(
            "`htm` must be `{}`",
            request.htm
        )));
    }
    let htu = claims.get("htu").and_then(Value::as_str).unwrap_or("");
    if without_query(htu) != without_query(request.htu) {
        return Err(TokenError::InvalidDpopProof(format!(
            "`htu` must be `{}`",
            request.htu
        )));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("an integer `iat` is required"))?;
    let now = crate::unix_now();
    let leeway = i64::try_from(request.leeway.as_secs()).unwrap_or(i64::MAX);
    let max_age = i64::try_from(request.max_age.as_secs()).unwrap_or(i64::MAX);
    if iat > now.saturating_add(leeway) {
        return Err(bad("`iat` is in the future"));
    }
    if iat < now.saturating_sub(max_age).saturating_sub(leeway) {
        return Err(bad("the proof is too old (`iat`)"));
    }
    if let Some(ath) = claims.get("ath")
        && ath.as_str() != Some(token_hash(request.token).as_str())
    {
        return Err(bad("`ath` is not the hash of the presented token"));
    }
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| bad("`jwk` has no RFC 7638 thumbprint"))?;
    Ok(DpopProof {
        jkt,
        jti: jti.to_owned(),
        iat,
    })
}

/// base64url(SHA-256(token)): RFC 9449's `ath`.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
#[path = "dpop_tests.rs"]
mod tests;
