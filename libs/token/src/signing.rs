//! Signing keys for delegated tokens: ES256, generated or loaded, rotated
//! with overlap, published as a JWKS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use crate::error::TokenError;
use crate::jwks::KeySource;
use serde::Serialize;
use tether_runtime::clock::unix_now_ms as now_ms;

/// Why a key could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("`{path}` is not a PKCS#8 P-256 private key in PEM form")]
    Invalid { path: String },
    #[error("key file `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no signing key is loaded")]
    Empty,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// One ES256 key pair. The private half never leaves this struct except to
/// its own key file.
pub struct SigningKey {
    kid: String,
    /// Creation time, Unix milliseconds.
    created_ms: i64,
    /// From when a ring signs with it (Unix milliseconds); before that it
    /// is published only (see [`KeyRing::reload`]).
    active_from_ms: i64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Jwk,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref()).ok_or(KeyError::Generate)
    }

    fn from_pkcs8(der: &[u8]) -> Option<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).ok()?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
        if point.len() != 65 || point[0] != 4 {
            return None;
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = thumbprint(&x, &y);
        let public = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::ES256),
                key_id: Some(kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x,
                y,
            }),
        };
        let decoding = DecodingKey::from_jwk(&public).ok()?;
        Some(Self {
            kid,
            created_ms: now_ms(),
            active_from_ms: 0,
            encoding: EncodingKey::from_ec_der(der),
            decoding,
            public,
            pkcs8: der.to_vec(),
        })
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let mut key = STANDARD
            .decode(body.trim())
            .ok()
            .and_then(|der| Self::from_pkcs8(&der))
            .ok_or_else(|| KeyError::Invalid {
                path: path.display().to_string(),
            })?;
        // Files written by a ring are named `<created ms>-<kid>.pem`.
        if let Some(created) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|n| n.parse::<i64>().ok())
        {
            key.created_ms = created;
        }
        Ok(key)
    }

    /// When the key was created (Unix milliseconds).
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// Writes the key as PKCS#8 PEM, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let b64 = STANDARD.encode(&self.pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write as _;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            options.mode(0o600);
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(pem.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// Signs `claims` as an ES256 JWT with `typ`.
    pub fn sign<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

impl SigningKey {
    /// Signs an arbitrary header and payload with this key (ES256). For test
    /// tooling that must craft hostile tokens with a trusted key; production
    /// code uses [`SigningKey::sign`].
    pub fn sign_raw(
        &self,
        header: &serde_json::Value,
        payload: &serde_json::Value,
    ) -> Result<String, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8)
            .map_err(|_| KeyError::Sign("invalid key".into()))?;
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let sig = pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| KeyError::Sign("signing failed".into()))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// The key pair as a private JWK (`kty`, `crv`, `x`, `y`, `d`, `kid`,
    /// `alg`), for handing a known key to a test IdP. Never publish this.
    pub fn private_jwk(&self) -> Result<serde_json::Value, KeyError> {
        use aws_lc_rs::encoding::{AsBigEndian as _, EcPrivateKeyBin};
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8)
            .map_err(|_| KeyError::Sign("invalid key".into()))?;
        let d: EcPrivateKeyBin<'_> = pair
            .private_key()
            .as_be_bytes()
            .map_err(|_| KeyError::Sign("cannot export the private scalar".into()))?;
        let mut jwk =
            serde_json::to_value(&self.public).map_err(|e| KeyError::Sign(e.to_string()))?;
        jwk["d"] = serde_json::Value::String(URL_SAFE_NO_PAD.encode(d.as_ref()));
        Ok(jwk)
    }

    /// The public key as a JWKS with this one key.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public.clone()],
        }
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url).
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The keys a token service signs with: the newest signs, all published
/// ones verify. Rotation adds a key; retiring removes one once no token it
/// signed can still be valid.
///
/// Replicas share one key directory. A key that appears in it while a ring
/// runs ([`KeyRing::reload`]) is published at once but signs only
/// `activation` later, so that every replica publishes a key before any
/// replica signs with it: a verifier that fetches the JWKS from any replica
/// knows every `kid` it is shown.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// Newest first.
    keys: RwLock<Vec<Arc<SigningKey>>>,
    dir: Option<PathBuf>,
    /// How long a key found in the directory is published before it signs
    /// (milliseconds).
    activation_ms: i64,
}

impl KeyRing {
    /// A ring holding `keys` (newest first), not backed by files.
    pub fn from_keys(keys: Vec<SigningKey>) -> Self {
        Self {
            keys: RwLock::new(keys.into_iter().map(Arc::new).collect()),
            dir: None,
            activation_ms: 0,
        }
    }

    /// Loads every `*.pem` in `dir` (newest name first); generates and
    /// saves one when there is none. Every key signs as soon as it is the
    /// newest.
    pub fn open_dir(dir: &Path) -> Result<Self, KeyError> {
        Self::open_dir_with_activation(dir, std::time::Duration::ZERO)
    }

    /// [`KeyRing::open_dir`] for a directory replicas share: a key file
    /// written less than `activation` ago, and any key a later
    /// [`KeyRing::reload`] finds, is published but does not sign until
    /// `activation` has passed (unless no key is active yet: then the
    /// oldest signs).
    pub fn open_dir_with_activation(
        dir: &Path,
        activation: std::time::Duration,
    ) -> Result<Self, KeyError> {
        std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let activation_ms = i64::try_from(activation.as_millis()).unwrap_or(i64::MAX);
        let keys = Self::read_dir(dir, &[], activation_ms)?;
        let ring = Self {
            keys: RwLock::new(keys),
            dir: Some(dir.to_path_buf()),
            activation_ms,
        };
        if ring.is_empty() {
            ring.rotate()?;
        }
        Ok(ring)
    }

    /// The keys in `dir`, newest name first. A key already in `known`
    /// (by `kid`) is reused as it is; a new one becomes active
    /// `activation_ms` after the later of its file's modification and now
    /// (for the ring's first read: after its modification).
    fn read_dir(
        dir: &Path,
        known: &[Arc<SigningKey>],
        activation_ms: i64,
    ) -> Result<Vec<Arc<SigningKey>>, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "pem") {
                found.push(path);
            }
        }
        // Files are named `<created, ms since epoch, zero-padded>-<kid>.pem`:
        // name order is age order. Newest first.
        found.sort_by(|a, b| b.cmp(a));
        let first_read = known.is_empty();
        let now = now_ms();
        let mut keys = Vec::with_capacity(found.len());
        for path in found {
            let mut key = SigningKey::load(&path)?;
            if let Some(same) = known.iter().find(|k| k.kid() == key.kid()) {
                keys.push(Arc::clone(same));
                continue;
            }
            let written = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(now, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let seen = if first_read {
                written
            } else {
                written.max(now)
            };
            key.active_from_ms = seen.saturating_add(activation_ms);
            keys.push(Arc::new(key));
        }
        Ok(keys)
    }

    /// Reads the key directory again: keys added there (by an operator,
    /// or into a Secret every replica mounts) are published at once and
    /// sign once active; keys removed there stop being published. A
    /// directory that cannot be read, holds a file that is not a key, or
    /// holds no key at all changes nothing (the error says why): the last
    /// good ring keeps serving. Returns whether the set of keys changed.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let known: Vec<Arc<SigningKey>> = self.read().clone();
        let keys = Self::read_dir(dir, &known, self.activation_ms)?;
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let kids = |keys: &[Arc<SigningKey>]| -> Vec<String> {
            keys.iter().map(|k| k.kid().to_owned()).collect()
        };
        let changed = kids(&keys) != kids(&known);
        if changed {
            let added: Vec<String> = kids(&keys)
                .into_iter()
                .filter(|kid| !known.iter().any(|k| k.kid() == kid))
                .collect();
            *self
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
            tracing::info!(added = ?added, "signing keys reloaded from the key directory");
        }
        Ok(changed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<SigningKey>>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The key that signs new tokens: the newest active one, or the
    /// oldest when none is active yet.
    pub fn current(&self) -> Result<Arc<SigningKey>, KeyError> {
        let keys = self.read();
        let now = now_ms();
        keys.iter()
            .find(|k| k.active_from_ms <= now)
            .or_else(|| keys.last())
            .cloned()
            .ok_or(KeyError::Empty)
    }

    /// Generates a new signing key; the previous ones keep verifying.
    pub fn rotate(&self) -> Result<Arc<SigningKey>, KeyError> {
        let mut key = SigningKey::generate()?;
        // INVARIANT: a newer key has a strictly later creation time, so file
        // names (and so "which key signs") keep their order even when two
        // keys are made within the same millisecond.
        if let Some(newest) = self.read().first() {
            key.created_ms = key.created_ms.max(newest.created_ms + 1);
        }
        let key = Arc::new(key);
        if let Some(dir) = &self.dir {
            key.save(&dir.join(format!("{:015}-{}.pem", key.created_ms, key.kid())))?;
        }
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(0, Arc::clone(&key));
        tracing::info!(kid = %key.kid(), "signing key rotated");
        Ok(key)
    }

    /// Stops publishing `kid` (never the current key).
    pub fn retire(&self, kid: &str) -> Result<bool, KeyError> {
        let current = self.current()?;
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(pos) = keys
            .iter()
            .position(|k| k.kid() == kid && k.kid() != current.kid())
        else {
            return Ok(false);
        };
        keys.remove(pos);
        if let Some(dir) = &self.dir {
            let suffix = format!("-{kid}.pem");
            let entries = std::fs::read_dir(dir).map_err(|source| KeyError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            for path in entries.flatten().map(|e| e.path()) {
                if path.to_string_lossy().ends_with(&suffix) {
                    std::fs::remove_file(&path).map_err(|source| KeyError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
            }
        }
        Ok(true)
    }

    /// Rotates when the newest key is older than `rotate_after`, and retires
    /// previous keys older than `rotate_after + keep_after_rotation` (by then
    /// no token they signed can still be valid). Returns whether anything
    /// changed.
    pub fn maintain(
        &self,
        rotate_after_ms: i64,
        keep_after_rotation_ms: i64,
    ) -> Result<bool, KeyError> {
        let now = now_ms();
        let mut changed = false;
        // The newest key's age, not the signing one's: a newer key that is
        // not active yet is already the rotation.
        let newest = self.read().first().cloned().ok_or(KeyError::Empty)?;
        if newest.created_ms() + rotate_after_ms <= now {
            self.rotate()?;
            changed = true;
        }
        let current = self.current()?;
        let stale: Vec<String> = self
            .read()
            .iter()
            .filter(|k| k.kid() != current.kid())
            .filter(|k| k.created_ms() + rotate_after_ms + keep_after_rotation_ms <= now)
            .map(|k| k.kid().to_owned())
            .collect();
        for kid in stale {
            changed |= self.retire(&kid)?;
        }
        Ok(changed)
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.read().iter().map(|k| k.public_jwk().clone()).collect(),
        }
    }
}

/// A ring verifies what it signed: ES256, by `kid` (required).
impl KeySource for KeyRing {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        let kid = kid.ok_or_else(|| TokenError::UnknownKey("(no kid)".into()))?;
        if alg != Algorithm::ES256 {
            return Err(TokenError::KeyMismatch);
        }
        self.read()
            .iter()
            .find(|k| k.kid() == kid)
            .map(|k| k.decoding.clone())
            .ok_or_else(|| TokenError::UnknownKey(crate::verify::clip(kid)))
    }
}
