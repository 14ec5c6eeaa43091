//! A throwaway certificate authority for tests and the local demo: it
//! issues X.509 certificates shaped like SPIFFE X.509-SVIDs (one
//! `spiffe://` URI SAN, client and server auth) and writes them where
//! `[server.tls]` reads them. Never for production: the CA key lives in
//! memory and in the demo's temporary directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::config::TlsConfig;
use crate::tls::resolve_identity;

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing `{path}`: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long an issued certificate is valid, relative to now.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From an hour ago to a day from now.
    Current,
    /// Expired an hour ago.
    Expired,
}

/// A throwaway CA for one trust domain.
#[derive(Debug)]
pub struct DevCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl DevCa {
    pub fn new(trust_domain: &str) -> Result<Self, DevPkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Tether dev CA ({trust_domain})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate (the trust bundle), PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate for `identity` (a Tether service name or a full
    /// `spiffe://` URI), also valid for `localhost` and 127.0.0.1.
    pub fn issue(&self, identity: &str, validity: Validity) -> Result<IssuedCert, DevPkiError> {
        let uri = resolve_identity(&self.trust_domain, identity);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, &uri);
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into()?));
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        let (from, until) = match validity {
            Validity::Current => (
                now - time::Duration::hours(1),
                now + time::Duration::days(1),
            ),
            Validity::Expired => (
                now - time::Duration::days(2),
                now - time::Duration::hours(1),
            ),
        };
        params.not_before = from;
        params.not_after = until;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `<name>.crt` and `<name>.key` into `dir` for
    /// `identity` and returns the `[server.tls]` that reads them.
    pub fn write(&self, dir: &Path, identity: &str) -> Result<TlsConfig, DevPkiError> {
        self.write_with(dir, identity, Validity::Current)
    }

    /// Like [`DevCa::write`], with a chosen validity.
    pub fn write_with(
        &self,
        dir: &Path,
        identity: &str,
        validity: Validity,
    ) -> Result<TlsConfig, DevPkiError> {
        let issued = self.issue(identity, validity)?;
        let name = file_stem(identity);
        let ca_file = write_file(dir, "ca.pem", &self.ca_pem)?;
        let cert_file = write_file(dir, &format!("{name}.crt"), &issued.cert_pem)?;
        let key_file = write_file(dir, &format!("{name}.key"), &issued.key_pem)?;
        Ok(TlsConfig {
            insecure_plaintext: false,
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            ca_file: Some(ca_file),
            trust_domain: self.trust_domain.clone(),
            reload_interval_ms: 200,
        })
    }
}

/// The file name (without extension) [`DevCa::write`] uses for `identity`.
pub fn file_stem(identity: &str) -> String {
    identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `contents` atomically (a rename), as cert-manager and kubelet do,
/// so a reader never sees half a file.
fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, DevPkiError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| DevPkiError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Private keys are for this user only.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(contents.as_bytes()).map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(path)
}
