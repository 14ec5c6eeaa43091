//! The SPIFFE trust bundle that verifies JWT-SVIDs, kept current.
//!
//! SPIRE rotates its JWT signing keys, and the SPIRE agent or
//! `spiffe-helper` rewrites the bundle file (a JWKS) when it does. Read
//! once at start-up, the bundle would refuse every agent whose SVID is
//! signed by the new key until a restart, and keep accepting the withdrawn
//! key. [`BundleKeys`] looks at the file again on the first lookup after
//! `http.jwks_min_refresh_secs` (the interval that limits `JwksCache`
//! refreshes), so a flood of SVIDs, with random `kid`s or not, is at most
//! one read of a small local file per interval. A new version (compared by
//! content, not by modification time, which a quick rewrite may not move)
//! replaces the keys.
//!
//! A file that cannot be read, does not parse, or holds no usable JWT
//! signing key keeps the last good keys serving and is logged at WARN once:
//! known keys keep verifying, an unknown `kid` is refused (never open).
//! Keys marked `"use": "x509-svid"` (X.509 authorities in a SPIFFE bundle)
//! never verify a JWT.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tether_token::{Algorithm, DecodingKey, JwkSet, KeySource, StaticKeys, TokenError};

/// Largest bundle file read.
const MAX_BUNDLE_BYTES: u64 = 512 * 1024;

#[derive(Debug)]
struct Loaded {
    keys: Arc<StaticKeys>,
    /// The content last read, good or bad (`None`: unreadable), so each
    /// version is parsed and reported once.
    seen: Option<Vec<u8>>,
    /// The last look at the file: the rate limit.
    checked_at: Instant,
}

/// A JWT-SVID trust bundle read from a file and re-read when it changes
/// (see the module documentation).
#[derive(Debug)]
pub struct BundleKeys {
    path: PathBuf,
    min_refresh_interval: Duration,
    state: RwLock<Loaded>,
}

/// Parses a bundle: its JWT authorities, refusing a set with none.
fn parse(text: &[u8]) -> Result<StaticKeys, String> {
    let mut bundle: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(keys) = bundle
        .get_mut("keys")
        .and_then(serde_json::Value::as_array_mut)
    {
        keys.retain(|jwk| jwk.get("use").and_then(serde_json::Value::as_str) != Some("x509-svid"));
    }
    let set: JwkSet = serde_json::from_value(bundle).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys = StaticKeys::new(&set);
    if keys.is_empty() {
        return Err("no usable public JWT signing key".into());
    }
    Ok(keys)
}

/// The file's content, at most [`MAX_BUNDLE_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BUNDLE_BYTES + 1).read_to_end(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!("larger than {MAX_BUNDLE_BYTES} bytes"));
    }
    Ok(text)
}

/// The file's content and its keys, or why it cannot be used.
fn load(path: &Path) -> Result<(StaticKeys, Vec<u8>), String> {
    read(path)
        .and_then(|text| Ok((parse(&text)?, text)))
        .map_err(|e| format!("spiffe.bundle_path `{}`: {e}", path.display()))
}

/// Configuration validation: whether start-up can use the bundle at `path`.
pub fn check_bundle(path: &Path) -> Result<(), String> {
    load(path).map(drop)
}

impl BundleKeys {
    /// Loads `path`; start-up fails on a bundle that cannot be used.
    pub fn open(path: &Path, min_refresh_interval: Duration) -> anyhow::Result<Self> {
        let (keys, text) = load(path).map_err(anyhow::Error::msg)?;
        Ok(Self {
            path: path.to_owned(),
            min_refresh_interval,
            state: RwLock::new(Loaded {
                keys: Arc::new(keys),
                seen: Some(text),
                checked_at: Instant::now(),
            }),
        })
    }

    /// Reads the file again when the last look is older than the interval,
    /// and takes its keys when its content changed and is usable.
    fn maybe_reload(&self) {
        let due = |state: &Loaded| state.checked_at.elapsed() >= self.min_refresh_interval;
        if !due(&self.state.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have looked while this one waited.
        if !due(&state) {
            return;
        }
        state.checked_at = Instant::now();
        let (parsed, seen) = match read(&self.path) {
            Ok(text) if state.seen.as_ref() == Some(&text) => return,
            Ok(text) => (parse(&text), Some(text)),
            Err(_) if state.seen.is_none() => return,
            Err(e) => (Err(e), None),
        };
        state.seen = seen;
        match parsed {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), "SPIFFE trust bundle reloaded");
                state.keys = Arc::new(keys);
            }
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "SPIFFE trust bundle not reloaded; the last good keys keep serving"
            ),
        }
    }
}

impl KeySource for BundleKeys {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        // The file is small and local (a few KiB on a tmpfs or a mounted
        // volume) and read at most once per interval, so it is read in
        // place rather than on a blocking thread.
        self.maybe_reload();
        let keys = Arc::clone(
            &self
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys,
        );
        keys.key(kid, alg).await
    }
}

#[cfg(test)]
mod tests {
    use tether_token::SigningKey;

    use super::*;

    fn jwks(keys: &[&SigningKey]) -> String {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::to_value(k.jwks()).unwrap()["keys"][0].clone())
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    async fn known(bundle: &BundleKeys, key: &SigningKey) -> Result<(), TokenError> {
        bundle
            .key(Some(key.kid()), Algorithm::ES256)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn a_rewritten_bundle_replaces_the_keys_and_a_bad_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        let (a, b, c) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        write(&path, &jwks(&[&a]));
        let bundle = BundleKeys::open(&path, Duration::ZERO).unwrap();
        known(&bundle, &a).await.unwrap();
        assert!(matches!(
            known(&bundle, &b).await,
            Err(TokenError::UnknownKey(_))
        ));

        write(&path, &jwks(&[&b]));
        known(&bundle, &b).await.unwrap();
        assert!(matches!(
            known(&bundle, &a).await,
            Err(TokenError::UnknownKey(_))
        ));

        let mut b_as_x509 = serde_json::to_value(b.jwks()).unwrap()["keys"][0].clone();
        b_as_x509["use"] = "x509-svid".into();
        for bad in [
            "{\"keys\": [".to_owned(),
            "{\"keys\": []}".to_owned(),
            serde_json::json!({ "keys": [b_as_x509] }).to_string(),
        ] {
            write(&path, &bad);
            known(&bundle, &b).await.unwrap();
            assert!(matches!(
                known(&bundle, &c).await,
                Err(TokenError::UnknownKey(_))
            ));
        }
        std::fs::remove_file(&path).unwrap();
        known(&bundle, &b).await.unwrap();
        assert!(matches!(
            known(&bundle, &c).await,
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn the_file_is_looked_at_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        let (a, b) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        write(&path, &jwks(&[&a]));
        let bundle = BundleKeys::open(&path, Duration::from_secs(3600)).unwrap();
        write(&path, &jwks(&[&b]));
        // Within the interval the file is not read, whatever is asked.
        assert!(matches!(
            known(&bundle, &b).await,
            Err(TokenError::UnknownKey(_))
        ));
        known(&bundle, &a).await.unwrap();
    }

    #[test]
    fn start_up_refuses_a_bundle_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        assert!(BundleKeys::open(&path, Duration::ZERO).is_err(), "missing");
        for bad in [
            "",
            "[]",
            "{\"keys\": []}",
            "{\"keys\": [{\"kty\": \"oct\", \"k\": \"AA\"}]}",
        ] {
            write(&path, bad);
            let err = BundleKeys::open(&path, Duration::ZERO).unwrap_err();
            assert!(
                err.to_string().contains("spiffe.bundle_path"),
                "{bad}: {err}"
            );
        }
    }
}
