//! Client authentication at the IdP: `private_key_jwt` (RFC 7523 assertions,
//! ES256) or `client_secret_basic`.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tether_runtime::clock::unix_now;

use super::config::ClientAuthConfig;
use super::error::CibaError;

/// Lifetime of a client assertion.
const ASSERTION_LIFETIME_SECS: i64 = 60;

/// RFC 7523 §2.2.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A secret that never shows in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Loaded client credentials.
pub(crate) enum ClientAuth {
    PrivateKeyJwt { key: EcdsaKeyPair, kid: String },
    ClientSecretBasic { secret: Secret },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("ClientAuth");
        out.field("method", &self.method());
        match self {
            Self::PrivateKeyJwt { kid, .. } => out.field("kid", kid).finish_non_exhaustive(),
            Self::ClientSecretBasic { secret } => out.field("secret", secret).finish(),
        }
    }
}

/// What a request to the IdP carries to authenticate the client.
pub(crate) struct Credentials {
    /// Form parameters to add.
    pub(crate) form: Vec<(&'static str, String)>,
    /// An `Authorization` header value.
    pub(crate) authorization: Option<Secret>,
}

impl ClientAuth {
    /// Reads the key or secret file named by the configuration.
    pub(crate) fn load(config: &ClientAuthConfig) -> Result<Self, CibaError> {
        match config {
            ClientAuthConfig::PrivateKeyJwt { key_file, key_id } => {
                let (key, jwk_kid) = load_key(key_file)?;
                let kid = match (key_id.clone(), jwk_kid) {
                    (Some(kid), _) | (None, Some(kid)) => kid,
                    (None, None) => thumbprint(&key)?,
                };
                Ok(Self::PrivateKeyJwt { key, kid })
            }
            ClientAuthConfig::ClientSecretBasic { secret_file } => {
                let text = std::fs::read_to_string(secret_file).map_err(|e| {
                    CibaError::Config(format!(
                        "cannot read client_auth.secret_file `{}`: {e}",
                        secret_file.display()
                    ))
                })?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(CibaError::Config(format!(
                        "client_auth.secret_file `{}` is empty",
                        secret_file.display()
                    )));
                }
                Ok(Self::ClientSecretBasic {
                    secret: Secret(secret.to_owned()),
                })
            }
        }
    }

    /// The method's registered name.
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
            Self::ClientSecretBasic { .. } => "client_secret_basic",
        }
    }

    /// Credentials for one request. `audience` is the IdP's issuer
    /// identifier; each assertion has a fresh `jti`, so it is good for one
    /// request only.
    pub(crate) fn credentials(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<Credentials, CibaError> {
        match self {
            Self::PrivateKeyJwt { key, kid } => {
                let assertion = sign_assertion(key, kid, client_id, audience, unix_now())?;
                Ok(Credentials {
                    form: vec![
                        ("client_id", client_id.to_owned()),
                        ("client_assertion_type", ASSERTION_TYPE.to_owned()),
                        ("client_assertion", assertion.0),
                    ],
                    authorization: None,
                })
            }
            Self::ClientSecretBasic { secret } => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Base64.
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", encode(client_id), encode(secret.expose()));
                Ok(Credentials {
                    form: Vec::new(),
                    authorization: Some(Secret(format!("Basic {}", STANDARD.encode(pair)))),
                })
            }
        }
    }
}

/// Signs an RFC 7523 client assertion.
fn sign_assertion(
    key: &EcdsaKeyPair,
    kid: &str,
    client_id: &str,
    audience: &str,
    now: i64,
) -> Result<Secret, CibaError> {
    let header = json!({ "alg": "ES256", "typ": "JWT", "kid": kid });
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| CibaError::Internal("signing the client assertion failed".into()))?;
    Ok(Secret(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )))
}

fn key_error(path: &Path, why: &str) -> CibaError {
    CibaError::Config(format!("client_auth.key_file `{}` {why}", path.display()))
}

/// Reads a P-256 private key (PEM or JWK) and the JWK's `kid`, if any.
fn load_key(path: &Path) -> Result<(EcdsaKeyPair, Option<String>), CibaError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_error(path, &format!("cannot be read: {e}")))?;
    let text = text.trim();
    let unusable =
        "is not an unencrypted P-256 private key (PKCS#8 or SEC1 PEM, or an EC P-256 JWK with `d`)";
    if text.starts_with('{') {
        let jwk: Value = serde_json::from_str(text).map_err(|_| key_error(path, unusable))?;
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        if field("kty") != Some("EC") || field("crv") != Some("P-256") {
            return Err(key_error(path, unusable));
        }
        if field("alg").is_some_and(|alg| alg != "ES256") {
            return Err(key_error(path, "declares an `alg` other than ES256"));
        }
        let decode = |name: &str| {
            field(name)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .ok_or_else(|| key_error(path, unusable))
        };
        let (d, x, y) = (decode("d")?, decode("x")?, decode("y")?);
        let mut public = Vec::with_capacity(65);
        public.push(4);
        public.extend_from_slice(&x);
        public.extend_from_slice(&y);
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &d,
            &public,
        )
        .map_err(|_| key_error(path, unusable))?;
        Ok((key, field("kid").map(str::to_owned)))
    } else if text.starts_with("-----BEGIN ENCRYPTED") {
        Err(key_error(
            path,
            "is an encrypted PEM; give an unencrypted key (protect the file instead)",
        ))
    } else if text.starts_with("-----BEGIN") {
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD
            .decode(body.trim())
            .map_err(|_| key_error(path, unusable))?;
        let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| key_error(path, unusable))?;
        Ok((key, None))
    } else {
        Err(key_error(path, unusable))
    }
}

/// RFC 7638 thumbprint of the public key (the default `kid`).
fn thumbprint(key: &EcdsaKeyPair) -> Result<String, CibaError> {
    let point = key.public_key().as_ref();
    if point.len() != 65 || point.first() != Some(&4) {
        return Err(CibaError::Internal(
            "unexpected P-256 public key form".into(),
        ));
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn decode_part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pem_key(dir: &tempfile::TempDir) -> PathBuf {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(doc.as_ref())
        );
        write(dir, "key.pem", &pem)
    }

    #[test]
    fn assertion_is_rfc_7523_with_a_fresh_jti_and_a_60_second_life() {
        let dir = tempfile::tempdir().unwrap();
        let auth = ClientAuth::load(&ClientAuthConfig::PrivateKeyJwt {
            key_file: pem_key(&dir),
            key_id: None,
        })
        .unwrap();
        let first = auth.credentials("tether", "https://idp.example").unwrap();
        let second = auth.credentials("tether", "https://idp.example").unwrap();
        assert!(first.authorization.is_none());
        let assertion = |c: &Credentials| {
            c.form
                .iter()
                .find(|(k, _)| *k == "client_assertion")
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let (a, b) = (assertion(&first), assertion(&second));
        let header = decode_part(&a, 0);
        assert_eq!(header["alg"], "ES256");
        let ClientAuth::PrivateKeyJwt { kid, .. } = &auth else {
            unreachable!()
        };
        assert_eq!(header["kid"], kid.as_str(), "the RFC 7638 thumbprint");
        let claims = decode_part(&a, 1);
        assert_eq!(claims["iss"], "tether");
        assert_eq!(claims["sub"], "tether");
        assert_eq!(claims["aud"], "https://idp.example");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            60
        );
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        assert_ne!(claims["jti"], decode_part(&b, 1)["jti"], "fresh jti");
    }

    #[test]
    fn a_jwk_key_keeps_its_kid_and_a_configured_kid_wins() {
        let dir = tempfile::tempdir().unwrap();
        let key = tether_token::SigningKey::generate().unwrap();
        let jwk = key.private_jwk().unwrap();
        let path = write(&dir, "key.json", &jwk.to_string());
        let auth = ClientAuth::load(&ClientAuthConfig::PrivateKeyJwt {
            key_file: path.clone(),
            key_id: None,
        })
        .unwrap();
        assert!(format!("{auth:?}").contains(key.kid()));
        let auth = ClientAuth::load(&ClientAuthConfig::PrivateKeyJwt {
            key_file: path,
            key_id: Some("mine".into()),
        })
        .unwrap();
        let c = auth.credentials("tether", "https://idp.example").unwrap();
        assert_eq!(decode_part(&c.form[2].1, 0)["kid"], "mine");
    }

    #[test]
    fn unusable_key_files_are_refused_without_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "rsa.json",
                r#"{"kty":"RSA","n":"secret-n","e":"AQAB","d":"secret-d"}"#,
            ),
            (
                "bad.pem",
                "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWQ=\n-----END PRIVATE KEY-----",
            ),
            (
                "enc.pem",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nc2VjcmV0LWQ=\n-----END ENCRYPTED PRIVATE KEY-----",
            ),
            ("plain.txt", "secret-d"),
        ] {
            let e = ClientAuth::load(&ClientAuthConfig::PrivateKeyJwt {
                key_file: write(&dir, name, text),
                key_id: None,
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(name), "{e}");
            assert!(!e.contains("secret-d") && !e.contains("c2VjcmV0"), "{e}");
        }
    }

    #[test]
    fn basic_credentials_encode_the_secret_and_never_show_it() {
        let dir = tempfile::tempdir().unwrap();
        let auth = ClientAuth::load(&ClientAuthConfig::ClientSecretBasic {
            secret_file: write(&dir, "secret", "s3cr:t+x\n"),
        })
        .unwrap();
        let c = auth
            .credentials("my client", "https://idp.example")
            .unwrap();
        let header = c.authorization.unwrap();
        assert_eq!(
            header.expose(),
            format!("Basic {}", STANDARD.encode("my+client:s3cr%3At%2Bx"))
        );
        assert_eq!(format!("{header:?}"), "***");
        assert!(!format!("{auth:?}").contains("s3cr"));
        let empty = ClientAuth::load(&ClientAuthConfig::ClientSecretBasic {
            secret_file: write(&dir, "empty", " \n"),
        });
        assert!(empty.unwrap_err().to_string().contains("is empty"));
    }
}
