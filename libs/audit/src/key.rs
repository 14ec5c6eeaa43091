//! The audit log's own Ed25519 checkpoint key (never a token-signing key).

use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

/// Why a key could not be created, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#8 Ed25519 private key in PEM form")]
    Invalid,
    #[error("not an Ed25519 public key in PEM form (`-----BEGIN PUBLIC KEY-----`)")]
    InvalidPublic,
    #[error("`{path}` is not a PKCS#8 Ed25519 private key in PEM form")]
    InvalidFile { path: String },
    #[error("key file `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The Ed25519 key that signs the log's checkpoints. Its verifier key
/// ([`AuditKey::verifier_key`]) is what auditors keep.
#[derive(Clone)]
pub struct AuditKey {
    key: SigningKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey").finish_non_exhaustive()
    }
}

impl AuditKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|_| KeyError::Invalid)
    }

    /// Reads a PKCS#8 PEM file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = || path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: shown(),
            source,
        })?;
        Self::from_pkcs8_pem(&pem).map_err(|_| KeyError::InvalidFile { path: shown() })
    }

    /// Writes the key as a PKCS#8 PEM file readable by its owner only
    /// (through a temporary file, so a crash never leaves half a key).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write as _;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt as _;

        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Invalid)?;
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The public half in the signed-note verifier key format,
    /// `<name>+<key id>+<base64 key>`, for a log whose origin is `name`.
    pub fn verifier_key(&self, name: &str) -> String {
        signed_note::new_ed25519_verifier_key(name, &self.key.verifying_key())
    }

    /// The public half as a PEM public key (`-----BEGIN PUBLIC KEY-----`);
    /// with the log's origin it gives the verifier key
    /// ([`verifier_key_from_public_pem`]).
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    pub(crate) fn note_signer(&self, name: &str) -> NoteSigner {
        // The signed-note key id covers the algorithm byte and public key.
        let mut public = vec![ALG_ED25519];
        public.extend_from_slice(self.key.verifying_key().as_bytes());
        NoteSigner {
            name: name.to_owned(),
            id: signed_note::key_id(name, &public),
            key: self.key.clone(),
        }
    }
}

/// The signed-note verifier key (`<name>+<key id>+<base64 key>`) of the
/// log named `name` whose public key is `pem` (`-----BEGIN PUBLIC KEY-----`,
/// as [`AuditKey::public_key_pem`] writes it).
pub fn verifier_key_from_public_pem(pem: &str, name: &str) -> Result<String, KeyError> {
    let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| KeyError::InvalidPublic)?;
    Ok(signed_note::new_ed25519_verifier_key(name, &key))
}

/// The signed-note algorithm identifier for Ed25519.
const ALG_ED25519: u8 = 1;

/// Signs checkpoints as the log named `name`.
#[derive(Clone)]
pub(crate) struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl signed_note::Signer for NoteSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.key.sign(msg).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_key_loads_with_the_same_verifier_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.pem");
        let key = AuditKey::generate();
        key.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = AuditKey::load(&path).unwrap();
        assert_eq!(loaded.verifier_key("log"), key.verifier_key("log"));
        assert_ne!(
            AuditKey::generate().verifier_key("log"),
            key.verifier_key("log")
        );
        // The verifier key is the signed-note format and names the log.
        let vkey = key.verifier_key("audit.example");
        assert!(vkey.starts_with("audit.example+"), "{vkey}");
        signed_note::StandardVerifier::new(&vkey).unwrap();
        // The PEM public key gives the same verifier key.
        let pem = key.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(
            verifier_key_from_public_pem(&pem, "audit.example").unwrap(),
            vkey
        );
        assert!(matches!(
            verifier_key_from_public_pem(&text, "audit.example"),
            Err(KeyError::InvalidPublic)
        ));
    }

    #[test]
    fn refuses_what_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            AuditKey::load(&path),
            Err(KeyError::InvalidFile { .. })
        ));
        assert!(matches!(
            AuditKey::load(&dir.path().join("missing.pem")),
            Err(KeyError::Io { .. })
        ));
        assert!(format!("{:?}", AuditKey::generate()).starts_with("AuditKey"));
    }
}
