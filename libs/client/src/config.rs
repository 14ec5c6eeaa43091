//! Where the facade is and how to reach it: endpoint, trust, optional
//! client certificate, timeouts, retries.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
use crate::retry::RetryPolicy;

/// How the client reaches the facade. Built with [`ClientConfig::builder`];
/// every file is read and checked by [`ClientConfigBuilder::build`], so a
/// bad path or PEM fails there, not on the first call.
///
/// `Debug` never shows the client key.
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) endpoint: String,
    pub(crate) token_endpoint: String,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) ca_count: usize,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) server_name: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("token_endpoint", &self.token_endpoint)
            .field("ca_certificates", &self.ca_count)
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl ClientConfig {
    /// A configuration for the facade at `endpoint` (`https://host:port`).
    pub fn builder(endpoint: impl Into<String>) -> ClientConfigBuilder {
        ClientConfigBuilder {
            endpoint: endpoint.into(),
            token_endpoint: None,
            ca: None,
            identity: None,
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            insecure_plaintext: false,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `aud` of the agent's assertions.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The deadline of each call (each attempt, when retried).
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }
}

enum Source {
    File(std::path::PathBuf),
    Pem(Vec<u8>),
}

impl Source {
    fn read(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Self::Pem(pem) => Ok(pem.clone()),
            Self::File(path) => std::fs::read(path).map_err(|e| {
                Error::Invalid(format!("reading the {what} `{}`: {e}", path.display()))
            }),
        }
    }
}

/// Builds a [`ClientConfig`].
pub struct ClientConfigBuilder {
    endpoint: String,
    token_endpoint: Option<String>,
    ca: Option<Source>,
    identity: Option<(Source, Source)>,
    server_name: Option<String>,
    connect_timeout: Duration,
    call_timeout: Duration,
    retry: RetryPolicy,
    insecure_plaintext: bool,
}

impl std::fmt::Debug for ClientConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfigBuilder")
            .field("endpoint", &self.endpoint)
            .field("token_endpoint", &self.token_endpoint)
            .finish_non_exhaustive()
    }
}

impl ClientConfigBuilder {
    /// Tether's token endpoint URL (the identity exchange's
    /// `{issuer}/token`): the `aud` of the agent's assertions. Required.
    pub fn token_endpoint(mut self, url: impl Into<String>) -> Self {
        self.token_endpoint = Some(url.into());
        self
    }

    /// The CA bundle (PEM file) that signed the facade's certificate.
    /// Required with `https://`: only these CAs are trusted, never the
    /// system's.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca = Some(Source::File(path.as_ref().to_path_buf()));
        self
    }

    /// The CA bundle as PEM text.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Source::Pem(pem.into()));
        self
    }

    /// A client certificate and key (PEM files) for mTLS.
    pub fn client_identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some((
            Source::File(cert.as_ref().to_path_buf()),
            Source::File(key.as_ref().to_path_buf()),
        ));
        self
    }

    /// A client certificate and key as PEM text.
    pub fn client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((Source::Pem(cert.into()), Source::Pem(key.into())));
        self
    }

    /// The name the facade's certificate must be valid for, when it is not
    /// the endpoint's host (e.g. `localhost` behind a port forward).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// How long to wait for a TCP connection and TLS handshake (default
    /// 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The deadline of every call, each attempt (default 10 s). Waiting for
    /// an approval has its own limit, given with the request.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Retries of failures the contract makes safe to retry (default: 4
    /// attempts, 100 ms to 5 s backoff).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Allows an `http://` endpoint: tokens and credentials then cross the
    /// network in clear text. For a local stack run with
    /// `insecure_plaintext = true` only.
    pub fn insecure_plaintext(mut self, allow: bool) -> Self {
        self.insecure_plaintext = allow;
        self
    }

    /// Checks everything and reads the files.
    pub fn build(self) -> Result<ClientConfig, Error> {
        let uri: tonic::transport::Uri = self.endpoint.parse().map_err(|_| {
            Error::Invalid(format!(
                "endpoint `{}` is not a URL",
                tether_runtime::clip(&self.endpoint)
            ))
        })?;
        if uri.host().is_none_or(str::is_empty) || uri.path().len() > 1 {
            return Err(Error::Invalid(format!(
                "endpoint `{}` must be `https://host:port`",
                tether_runtime::clip(&self.endpoint)
            )));
        }
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.insecure_plaintext => false,
            Some("http") => {
                return Err(Error::Invalid(
                    "endpoint is `http://`: tokens would travel in clear text; use `https://` (or `insecure_plaintext(true)` for a local plaintext stack)".into(),
                ));
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "endpoint `{}` must be `https://host:port`",
                    tether_runtime::clip(&self.endpoint)
                )));
            }
        };
        let token_endpoint = self
            .token_endpoint
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Invalid(
                    "the token endpoint (the `aud` of agent assertions) is required".into(),
                )
            })?;
        if token_endpoint.chars().any(char::is_control) || token_endpoint.len() > 2048 {
            return Err(Error::Invalid(
                "the token endpoint is not a valid URL".into(),
            ));
        }
        for (what, timeout) in [
            ("connect", self.connect_timeout),
            ("call", self.call_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Error::Invalid(format!(
                    "the {what} timeout must be positive"
                )));
            }
        }
        let (ca_pem, ca_count) = match (&self.ca, tls) {
            (Some(source), true) => {
                let pem = source.read("CA bundle")?;
                let count = CertificateDer::pem_slice_iter(&pem)
                    .filter(Result::is_ok)
                    .count();
                if count == 0 {
                    return Err(Error::Invalid(
                        "the CA bundle holds no PEM certificate".into(),
                    ));
                }
                (Some(pem), count)
            }
            (None, true) => {
                return Err(Error::Invalid(
                    "a CA bundle is required for `https://` (the CA that signed the facade's certificate)".into(),
                ));
            }
            (_, false) => (None, 0),
        };
        let identity = match (&self.identity, tls) {
            (Some((cert, key)), true) => {
                let cert = cert.read("client certificate")?;
                let key = key.read("client key")?;
                if CertificateDer::pem_slice_iter(&cert)
                    .next()
                    .is_none_or(|c| c.is_err())
                {
                    return Err(Error::Invalid(
                        "the client certificate holds no PEM certificate".into(),
                    ));
                }
                if PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(Error::Invalid(
                        "the client key holds no unencrypted PEM private key".into(),
                    ));
                }
                Some((cert, key))
            }
            (Some(_), false) => {
                return Err(Error::Invalid(
                    "a client certificate needs an `https://` endpoint".into(),
                ));
            }
            (None, _) => None,
        };
        Ok(ClientConfig {
            endpoint: self.endpoint,
            token_endpoint,
            ca_pem,
            ca_count,
            identity,
            server_name: self.server_name,
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
            retry: self.retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "https://tether.example/token";

    /// A well-formed PEM block: the checks here come before any
    /// certificate is parsed (rustls parses it at the handshake).
    fn ca() -> String {
        "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n".into()
    }

    #[test]
    fn endpoints_must_be_https_unless_plaintext_is_asked_for() {
        for bad in [
            "",
            "not a url",
            "ftp://host:1",
            "https://",
            "https://host:1/path/x",
        ] {
            let err = ClientConfig::builder(bad)
                .token_endpoint(TOKEN)
                .ca_pem(ca())
                .build()
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err}");
        }
        let err = ClientConfig::builder("http://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("clear text"), "{err}");
        let plain = ClientConfig::builder("http://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .insecure_plaintext(true)
            .build()
            .unwrap();
        assert_eq!(plain.endpoint(), "http://127.0.0.1:1");
    }

    #[test]
    fn trust_and_the_token_endpoint_are_required() {
        let no_ca = ClientConfig::builder("https://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .build()
            .unwrap_err();
        assert!(no_ca.to_string().contains("CA bundle"), "{no_ca}");
        let empty_ca = ClientConfig::builder("https://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .ca_pem("no certificate here")
            .build()
            .unwrap_err();
        assert!(
            empty_ca.to_string().contains("no PEM certificate"),
            "{empty_ca}"
        );
        let missing = ClientConfig::builder("https://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .ca_file("/nonexistent/ca.pem")
            .build()
            .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        let no_token = ClientConfig::builder("https://127.0.0.1:1")
            .ca_pem(ca())
            .build()
            .unwrap_err();
        assert!(
            no_token.to_string().contains("token endpoint"),
            "{no_token}"
        );
        let zero = ClientConfig::builder("https://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .ca_pem(ca())
            .call_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(zero.to_string().contains("timeout"), "{zero}");
    }

    #[test]
    fn debug_never_shows_the_client_key() {
        let key = "-----BEGIN PRIVATE KEY-----\nTUlJQ2VjcmV0a2V5bWF0ZXJpYWw=\n-----END PRIVATE KEY-----\n";
        let config = ClientConfig::builder("https://127.0.0.1:1")
            .token_endpoint(TOKEN)
            .ca_pem(ca())
            .client_identity_pem(ca(), key)
            .build()
            .unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("TUlJQ2VjcmV0a2V5bWF0ZXJpYWw"), "{text}");
        assert!(text.contains("client_certificate: true"), "{text}");
    }
}
