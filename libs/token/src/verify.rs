//! Strict JWT verification.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::TokenError;
use crate::jwks::KeySource;

/// Headers that would let a token choose its own verification key.
const KEY_HEADERS: &[&str] = &["jku", "x5u", "x5c", "jwk"];

/// What the `typ` header must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypRule {
    /// `at+jwt` or `application/at+jwt` (RFC 9068 access tokens).
    AccessToken,
    /// Absent or `JWT` (ID tokens, client assertions, JWT-SVIDs).
    JwtOrAbsent,
    /// Exactly one of these (case-insensitive).
    OneOf(Vec<String>),
}

impl TypRule {
    fn check(&self, typ: Option<&str>) -> Result<(), TokenError> {
        let found = typ.unwrap_or("");
        let lower = found.to_ascii_lowercase();
        let (ok, expected) = match self {
            Self::AccessToken => (
                lower == "at+jwt" || lower == "application/at+jwt",
                "`at+jwt`".to_owned(),
            ),
            Self::JwtOrAbsent => (
                lower.is_empty() || lower == "jwt",
                "`JWT` or none".to_owned(),
            ),
            Self::OneOf(list) => (
                list.iter().any(|t| t.eq_ignore_ascii_case(found)),
                list.iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(TokenError::WrongType {
                found: clip(if found.is_empty() { "none" } else { found }),
                expected,
            })
        }
    }
}

/// How one class of tokens is verified. Everything comes from
/// configuration; nothing is taken from the token.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (the token must name at least one).
    pub audiences: Vec<String>,
    /// Accepted signing algorithms.
    pub algorithms: Vec<Algorithm>,
    pub typ: TypRule,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Largest accepted token, in bytes.
    pub max_token_bytes: usize,
    /// Require `iat`.
    pub require_iat: bool,
    /// Longest accepted `exp - iat` (e.g. for short-lived client assertions).
    pub max_lifetime: Option<Duration>,
    /// `aud` must be one value (a string, or an array of one): assertions
    /// naming this server alongside others could be replayed here by any
    /// of the others (draft-ietf-oauth-rfc7523bis audience injection).
    pub single_audience: bool,
}

impl VerifyPolicy {
    pub fn new(issuers: Vec<String>, audiences: Vec<String>, algorithms: Vec<Algorithm>) -> Self {
        Self {
            issuers,
            audiences,
            algorithms,
            typ: TypRule::JwtOrAbsent,
            leeway: Duration::from_secs(30),
            max_token_bytes: 16 * 1024,
            require_iat: true,
            max_lifetime: None,
            single_audience: false,
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified<C> {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub claims: C,
}

/// The parts of a JWT before verification. Nothing here is trusted.
struct Unverified {
    header: Map<String, Value>,
    payload: Map<String, Value>,
}

fn split(token: &str, limit: usize) -> Result<Unverified, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > limit {
        return Err(TokenError::Oversized {
            size: token.len(),
            limit,
        });
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Malformed(format!(
            "expected 3 dot-separated parts, found {}",
            parts.len()
        )));
    }
    let object = |part: &str, what: &str| -> Result<Map<String, Value>, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed(format!("{what} is not base64url")))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(TokenError::Malformed(format!(
                "{what} is not a JSON object"
            ))),
        }
    };
    let header = object(parts[0], "header")?;
    let payload = object(parts[1], "payload")?;
    Ok(Unverified { header, payload })
}

/// The `iss` of a token, unverified: only for choosing which issuer's
/// configuration (and keys) to verify it with.
pub fn peek_issuer(token: &str, max_token_bytes: usize) -> Result<String, TokenError> {
    let parts = split(token, max_token_bytes)?;
    match parts.payload.get("iss") {
        Some(Value::String(iss)) => Ok(iss.clone()),
        _ => Err(TokenError::MissingClaim("iss".into())),
    }
}

/// Verifies `token` against `policy` with keys from `keys`, and
/// deserializes its claims.
pub async fn verify<C: DeserializeOwned, K: KeySource + ?Sized>(
    token: &str,
    policy: &VerifyPolicy,
    keys: &K,
) -> Result<Verified<C>, TokenError> {
    let parts = split(token, policy.max_token_bytes)?;
    let header = &parts.header;

    let alg_name = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        _ => return Err(TokenError::Malformed("header has no `alg`".into())),
    };
    let alg = policy
        .algorithms
        .iter()
        .copied()
        .find(|a| format!("{a:?}") == alg_name)
        .ok_or_else(|| TokenError::DisallowedAlgorithm(clip(alg_name)))?;
    if let Some(name) = KEY_HEADERS.iter().find(|h| header.contains_key(**h)) {
        return Err(TokenError::ForbiddenHeader(name));
    }
    if let Some(crit) = header.get("crit") {
        let first = crit
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("?");
        return Err(TokenError::UnknownCritical(clip(first)));
    }
    policy
        .typ
        .check(header.get("typ").and_then(Value::as_str))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed("`kid` is not a string".into())),
    };

    let key = keys.key(kid.as_deref(), alg).await?;

    let mut validation = Validation::new(alg);
    validation.leeway = policy.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&policy.issuers);
    validation.set_audience(&policy.audiences);
    validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
        .into_iter()
        .map(str::to_owned)
        .collect::<HashSet<_>>();
    let data =
        jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::UntrustedIssuer(clip(
                parts
                    .payload
                    .get("iss")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )),
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => TokenError::KeyMismatch,
            other => TokenError::Malformed(format!("{other:?}")),
        })?;

    // INVARIANT: `sub` names someone. jsonwebtoken counts any `sub`, `""`
    // included, as present: a token for nobody would act for nobody in
    // particular, and an empty id matches too much downstream.
    match data.claims.get("sub") {
        Some(Value::String(sub)) if !sub.trim().is_empty() => {}
        _ => return Err(TokenError::MissingClaim("sub".into())),
    }
    if policy.single_audience
        && let Some(Value::Array(values)) = data.claims.get("aud")
        && values.len() != 1
    {
        return Err(TokenError::MultipleAudiences);
    }
    let now = crate::unix_now();
    let leeway = i64::try_from(policy.leeway.as_secs()).unwrap_or(i64::MAX);
    let iat = data.claims.get("iat").and_then(Value::as_i64);
    match iat {
        None if policy.require_iat => return Err(TokenError::MissingClaim("iat".into())),
        Some(iat) if iat > now.saturating_add(leeway) => return Err(TokenError::IssuedInFuture),
        _ => {}
    }
    if let Some(max) = policy.max_lifetime {
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX);
        let start = iat.unwrap_or(now);
        let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        if exp.saturating_sub(start) > max.saturating_add(leeway) {
            return Err(TokenError::MissingClaim(format!(
                "exp (lifetime over the {max} s limit)"
            )));
        }
    }
    let claims = serde_json::from_value(data.claims)
        .map_err(|e| TokenError::MissingClaim(clip(&e.to_string())))?;
    Ok(Verified { kid, alg, claims })
}

/// Caller-supplied text echoed in an error message: the one `clip` of the
/// workspace (64 characters, control characters escaped).
pub use tether_runtime::clip;

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
