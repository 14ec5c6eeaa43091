//! The agent's own key, and the RFC 7523 assertions it signs.
//!
//! An agent proves who it is with a `private_key_jwt` assertion: `iss` =
//! `sub` = its agent id, `aud` = Tether's token endpoint, `iat` now, `exp`
//! one minute later, a fresh random `jti`, signed with the key registered
//! for it. The identity exchange consumes each `jti` once, so the client
//! signs a new assertion for every StartSession attempt.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use crate::error::Error;

/// How long an assertion is valid: long enough for one call, short enough
/// that a captured one is useless soon (the identity exchange accepts at
/// most five minutes).
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// The agent's private key and id. Signs one assertion per session attempt.
///
/// Loaded from a PEM (`PRIVATE KEY` PKCS#8, `EC PRIVATE KEY`, `RSA PRIVATE
/// KEY`) or a private JWK (EC P-256/P-384 or OKP Ed25519, with `d`).
/// Algorithms: ES256, ES384, EdDSA (Ed25519), RS256. The key id (`kid`) is
/// the JWK's `kid`, else the RFC 7638 thumbprint of an EC or OKP key (what
/// Tether's own keys use), else none; [`AgentKey::with_kid`] overrides it.
/// `Debug` shows the agent id, algorithm and key id, never key material.
pub struct AgentKey {
    agent_id: String,
    kid: Option<String>,
    signer: Signer,
}

enum Signer {
    Ecdsa {
        pair: EcdsaKeyPair,
        alg: &'static str,
    },
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("agent_id", &self.agent_id)
            .field("algorithm", &self.algorithm())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn invalid(what: &str) -> Error {
    Error::Invalid(format!("agent key: {what}"))
}

impl AgentKey {
    /// A key from PEM text.
    pub fn from_pem(agent_id: impl Into<String>, pem: &[u8]) -> Result<Self, Error> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| invalid("no unencrypted private key in the PEM text"))?;
        let signer = match &der {
            PrivateKeyDer::Pkcs8(der) => Signer::from_pkcs8(der.secret_pkcs8_der())?,
            PrivateKeyDer::Sec1(der) => Signer::from_sec1(der.secret_sec1_der())?,
            PrivateKeyDer::Pkcs1(der) => Signer::Rsa(
                RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map_err(|_| invalid("not a usable RSA private key"))?,
            ),
            _ => return Err(invalid("unsupported private key format")),
        };
        Self::new(agent_id.into(), None, signer)
    }

    /// A key from a private JWK (JSON text).
    pub fn from_jwk(agent_id: impl Into<String>, jwk: &[u8]) -> Result<Self, Error> {
        let jwk: Value = serde_json::from_slice(jwk).map_err(|_| invalid("the JWK is not JSON"))?;
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let bytes = |name: &str| -> Result<Vec<u8>, Error> {
            let text = field(name).ok_or_else(|| invalid(&format!("the JWK has no `{name}`")))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| invalid(&format!("the JWK's `{name}` is not base64url")))
        };
        let signer = match (field("kty"), field("crv")) {
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let (alg, name) = ec_algorithm(crv);
                let mut point = vec![4u8];
                point.extend(bytes("x")?);
                point.extend(bytes("y")?);
                let pair = EcdsaKeyPair::from_private_key_and_public_key(alg, &bytes("d")?, &point)
                    .map_err(|_| invalid("the JWK's EC key does not fit together"))?;
                Signer::Ecdsa { pair, alg: name }
            }
            (Some("OKP"), Some("Ed25519")) => Signer::Ed25519(
                Ed25519KeyPair::from_seed_and_public_key(&bytes("d")?, &bytes("x")?)
                    .map_err(|_| invalid("the JWK's Ed25519 key does not fit together"))?,
            ),
            _ => {
                return Err(invalid(
                    "only EC (P-256, P-384) and OKP (Ed25519) private JWKs are supported; use a PEM file for RSA",
                ));
            }
        };
        if let Some(alg) = field("alg")
            && alg != signer.algorithm()
        {
            return Err(invalid(&format!(
                "the JWK says `alg` `{}` but the key signs {}",
                tether_runtime::clip(alg),
                signer.algorithm()
            )));
        }
        let kid = field("kid").map(str::to_owned);
        Self::new(agent_id.into(), kid, signer)
    }

    /// A key from a file: a private JWK when it holds a JSON object, PEM
    /// otherwise.
    pub fn from_file(agent_id: impl Into<String>, path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Invalid(format!("reading agent key `{}`: {e}", path.display())))?;
        if bytes.trim_ascii_start().starts_with(b"{") {
            Self::from_jwk(agent_id, &bytes)
        } else {
            Self::from_pem(agent_id, &bytes)
        }
    }

    fn new(agent_id: String, kid: Option<String>, signer: Signer) -> Result<Self, Error> {
        if agent_id.is_empty() || agent_id.len() > 256 || agent_id.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "the agent id must be 1 to 256 bytes without control characters".into(),
            ));
        }
        let kid = kid.or_else(|| signer.thumbprint());
        Ok(Self {
            agent_id,
            kid,
            signer,
        })
    }

    /// Sets the key id (`kid` header) the identity exchange knows the key
    /// by.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The JWS algorithm it signs with (`ES256`, `ES384`, `EdDSA`, `RS256`).
    pub fn algorithm(&self) -> &'static str {
        self.signer.algorithm()
    }

    /// The public half as a JWK, to register the agent with the identity
    /// exchange (`agents[].jwks`). `None` for RSA keys.
    pub fn public_jwk(&self) -> Option<Value> {
        let mut jwk = self.signer.public_jwk()?;
        jwk["alg"] = json!(self.algorithm());
        jwk["use"] = json!("sig");
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        Some(jwk)
    }

    /// SECRET: a fresh RFC 7523 assertion for `audience` (Tether's token
    /// endpoint), valid for one minute, with a new random `jti`.
    pub(crate) fn assertion(&self, audience: &str) -> Result<String, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| invalid("the system clock is before 1970"))?
            .as_secs();
        let mut header = json!({"alg": self.algorithm(), "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.agent_id,
            "sub": self.agent_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signer.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

fn ec_algorithm(crv: &str) -> (&'static EcdsaSigningAlgorithm, &'static str) {
    if crv == "P-384" {
        (&ECDSA_P384_SHA384_FIXED_SIGNING, "ES384")
    } else {
        (&ECDSA_P256_SHA256_FIXED_SIGNING, "ES256")
    }
}

impl Signer {
    fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        for crv in ["P-256", "P-384"] {
            let (alg, name) = ec_algorithm(crv);
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der) {
                return Ok(Self::Ecdsa { pair, alg: name });
            }
        }
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            return Ok(Self::Ed25519(pair));
        }
        if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
            return Ok(Self::Rsa(pair));
        }
        Err(invalid("not an EC P-256/P-384, Ed25519 or RSA private key"))
    }

    fn from_sec1(der: &[u8]) -> Result<Self, Error> {
        for crv in ["P-256", "P-384"] {
            let (alg, name) = ec_algorithm(crv);
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(alg, der) {
                return Ok(Self::Ecdsa { pair, alg: name });
            }
        }
        Err(invalid("not an EC P-256 or P-384 private key"))
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Self::Ecdsa { alg, .. } => alg,
            Self::Ed25519(_) => "EdDSA",
            Self::Rsa(_) => "RS256",
        }
    }

    /// The public key as a JWK without `kid`/`alg` (EC and OKP only).
    fn public_jwk(&self) -> Option<Value> {
        match self {
            Self::Ecdsa { pair, alg } => {
                let point = pair.public_key().as_ref();
                let half = point.len().checked_sub(1)? / 2;
                let crv = if *alg == "ES384" { "P-384" } else { "P-256" };
                Some(json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": URL_SAFE_NO_PAD.encode(point.get(1..=half)?),
                    "y": URL_SAFE_NO_PAD.encode(point.get(half + 1..)?),
                }))
            }
            Self::Ed25519(pair) => Some(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            })),
            Self::Rsa(_) => None,
        }
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order.
    fn thumbprint(&self) -> Option<String> {
        let jwk = self.public_jwk()?;
        let member = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
        let canonical = match member("kty") {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                member("crv"),
                member("x"),
                member("y")
            ),
            _ => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                member("crv"),
                member("x")
            ),
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        Some(URL_SAFE_NO_PAD.encode(digest.as_ref()))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let failed = || invalid("signing the assertion failed");
        let rng = SystemRandom::new();
        match self {
            Self::Ecdsa { pair, .. } => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| failed()),
            Self::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Self::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| failed())?;
                Ok(signature)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::KeyPair as _;
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            body.join("\n")
        )
    }

    fn p256_pem() -> String {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        pem("PRIVATE KEY", doc.as_ref())
    }

    /// Verifies `assertion` with `key`'s public JWK, as the identity
    /// exchange does, and returns its claims.
    fn verify(key: &AgentKey, assertion: &str, alg: Algorithm) -> Value {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(key.public_jwk().unwrap()).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_audience(&["https://tether.example/token"]);
        validation.set_issuer(&[key.agent_id()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        assert_eq!(header.kid.as_deref(), key.kid());
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        jsonwebtoken::decode::<Value>(
            assertion,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap()
        .claims
    }

    #[test]
    fn assertions_follow_rfc_7523_with_a_fresh_jti_each_time() {
        let key = AgentKey::from_pem("hr-assistant", p256_pem().as_bytes()).unwrap();
        assert_eq!(key.algorithm(), "ES256");
        let first = key.assertion("https://tether.example/token").unwrap();
        let second = key.assertion("https://tether.example/token").unwrap();
        let (a, b) = (
            verify(&key, &first, Algorithm::ES256),
            verify(&key, &second, Algorithm::ES256),
        );
        for claims in [&a, &b] {
            assert_eq!(claims["iss"], "hr-assistant");
            assert_eq!(claims["sub"], "hr-assistant");
            assert_eq!(claims["aud"], "https://tether.example/token");
            let (iat, exp) = (
                claims["iat"].as_u64().unwrap(),
                claims["exp"].as_u64().unwrap(),
            );
            assert_eq!(exp - iat, ASSERTION_LIFETIME_SECS);
        }
        assert_ne!(a["jti"], b["jti"]);
        assert!(!a["jti"].as_str().unwrap().is_empty());
    }

    #[test]
    fn jwk_and_pem_of_one_key_are_the_same_key_with_the_thumbprint_kid() {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let from_pem =
            AgentKey::from_pem("a", pem("PRIVATE KEY", doc.as_ref()).as_bytes()).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        use aws_lc_rs::encoding::{AsBigEndian as _, EcPrivateKeyBin};
        let d: EcPrivateKeyBin<'_> = pair.private_key().as_be_bytes().unwrap();
        let mut jwk = from_pem.public_jwk().unwrap();
        jwk["d"] = json!(URL_SAFE_NO_PAD.encode(d.as_ref()));
        let from_jwk = AgentKey::from_jwk("a", jwk.to_string().as_bytes()).unwrap();
        assert_eq!(from_pem.kid(), from_jwk.kid());
        assert_eq!(from_pem.public_jwk(), from_jwk.public_jwk());
        // The thumbprint is RFC 7638's: 43 base64url characters of SHA-256.
        assert_eq!(from_pem.kid().unwrap().len(), 43);
        // Signed by one, verified with the other's public key.
        let assertion = from_jwk.assertion("https://tether.example/token").unwrap();
        verify(&from_pem, &assertion, Algorithm::ES256);
        // An explicit kid wins.
        let renamed = from_pem.with_kid("agent-key-2");
        assert_eq!(renamed.kid(), Some("agent-key-2"));
    }

    #[test]
    fn ed25519_p384_and_sec1_keys_sign_with_their_algorithm() {
        let ed = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = AgentKey::from_pem("a", pem("PRIVATE KEY", ed.as_ref()).as_bytes()).unwrap();
        assert_eq!(key.algorithm(), "EdDSA");
        verify(
            &key,
            &key.assertion("https://tether.example/token").unwrap(),
            Algorithm::EdDSA,
        );

        let p384 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let key = AgentKey::from_pem("a", pem("PRIVATE KEY", p384.as_ref()).as_bytes()).unwrap();
        assert_eq!(key.algorithm(), "ES384");
        verify(
            &key,
            &key.assertion("https://tether.example/token").unwrap(),
            Algorithm::ES384,
        );

        // SEC1 (`EC PRIVATE KEY`), as `openssl ecparam -genkey` writes it.
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        use aws_lc_rs::encoding::{AsDer as _, EcPrivateKeyRfc5915Der};
        let sec1: EcPrivateKeyRfc5915Der<'_> = pair.private_key().as_der().unwrap();
        let key = AgentKey::from_pem("a", pem("EC PRIVATE KEY", sec1.as_ref()).as_bytes()).unwrap();
        assert_eq!(key.algorithm(), "ES256");
        assert_eq!(
            key.public_jwk().unwrap()["x"],
            json!(URL_SAFE_NO_PAD.encode(&pair.public_key().as_ref()[1..33]))
        );
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let secret_d = "c2VjcmV0LXNjYWxhci12YWx1ZS10aGF0LWlzLW5vdC1hLWtleQ";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("not pem", b"hello".to_vec()),
            ("certificate", pem("CERTIFICATE", b"not a key").into_bytes()),
            ("garbage pkcs8", pem("PRIVATE KEY", b"garbage").into_bytes()),
        ];
        for (name, bytes) in cases {
            let err = AgentKey::from_pem("a", &bytes).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        }
        for jwk in [
            json!({"kty": "oct", "k": secret_d}),
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": secret_d}),
            json!({"kty": "EC", "crv": "P-521", "d": secret_d}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": secret_d}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": secret_d}),
        ] {
            let err = AgentKey::from_jwk("a", jwk.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{jwk}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains(secret_d), "{text}");
        }
        // A JWK that says another algorithm than its key signs.
        let key = AgentKey::from_pem("a", p256_pem().as_bytes()).unwrap();
        let mut jwk = key.public_jwk().unwrap();
        jwk["d"] = json!(secret_d);
        jwk["alg"] = json!("RS256");
        assert!(AgentKey::from_jwk("a", jwk.to_string().as_bytes()).is_err());
        // Agent ids: empty, control characters, oversized.
        for id in ["", "hr\nassistant", &"x".repeat(257)] {
            assert!(AgentKey::from_pem(id, p256_pem().as_bytes()).is_err());
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let text = p256_pem();
        let key = AgentKey::from_pem("hr-assistant", text.as_bytes()).unwrap();
        let debug = format!("{key:?}");
        assert!(
            debug.contains("hr-assistant") && debug.contains("ES256"),
            "{debug}"
        );
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        for chunk in body.as_bytes().chunks(16) {
            assert!(
                !debug.contains(std::str::from_utf8(chunk).unwrap()),
                "{debug}"
            );
        }
    }
}
