//! Transport security: TLS and mTLS for every server and client.
//!
//! - Certificate, key and CA bundle are files (cert-manager, Vault PKI and
//!   SPIRE write them there). [`TlsSource`] loads them and re-reads them
//!   every `reload_interval_ms`; a changed, valid set replaces the old one
//!   for every *new* connection, so nothing restarts and open connections
//!   keep going. A changed but broken set is logged and ignored: the last
//!   good one keeps serving.
//! - Servers verify client certificates against the CA bundle. A client
//!   without a certificate still completes the handshake (so health probes
//!   work), but has no identity; the per-RPC table (`authz`) refuses it
//!   everything except health. A certificate from another CA, an expired
//!   one, or one not valid for client authentication fails the handshake.
//! - A peer's identity is the SPIFFE ID in its certificate's URI SAN
//!   (`spiffe://<trust-domain>/tether/<service>`), exactly one as the X.509
//!   SVID specification requires. SPIRE-issued SVIDs work unchanged.
//! - Clients verify the server's chain against the same bundle and require
//!   the SPIFFE ID of the service they meant to call (not a DNS name).

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use crate::config::TlsConfig;

/// What a server knows about the caller of a request, from the connection.
/// Inserted into every request's extensions (gRPC and HTTP alike).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The caller's address on the TCP connection.
    pub remote_addr: Option<SocketAddr>,
    /// The SPIFFE ID of the caller's verified client certificate; `None`
    /// when it presented none (or the server runs in plaintext).
    pub identity: Option<Arc<str>>,
}

impl PeerInfo {
    /// The connection's peer info, from a request's extensions.
    pub fn from_extensions(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }
}

/// `spiffe://<trust_domain>/tether/<service>`: a Tether service's identity.
pub fn service_identity(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/tether/{service}")
}

/// A caller or callee named in configuration: a Tether service name
/// (`agent-facade`, `admin`) or a full `spiffe://` URI.
pub fn resolve_identity(trust_domain: &str, name: &str) -> String {
    if name.starts_with("spiffe://") {
        name.to_owned()
    } else {
        service_identity(trust_domain, name)
    }
}

/// Whether `name` is a SPIFFE trust domain name.
pub fn valid_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// The single SPIFFE ID in a certificate's URI SANs; `None` when there is
/// none, more than one, or the certificate does not parse.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = cert
        .valid_uri_names()
        .filter(|uri| uri.starts_with("spiffe://"));
    let first = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    Some(first.to_owned())
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("`{path}` holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("`{path}` holds no usable private key: {message}")]
    Key { path: String, message: String },
    #[error("the certificate in `{path}` carries no single SPIFFE ID (a `spiffe://` URI SAN)")]
    NoIdentity { path: String },
    #[error("TLS configuration: {0}")]
    Rustls(String),
    #[error("mTLS is off (`insecure_plaintext`) in this configuration")]
    Plaintext,
}

/// One consistent set of certificate, key and trust anchors.
#[derive(Debug)]
struct Loaded {
    /// The raw file contents, to notice changes.
    fingerprint: Vec<u8>,
    identity: String,
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    server: Arc<rustls::ServerConfig>,
}

/// This process's certificate, key and trusted CAs, reloaded from their
/// files when they change. Shared by the server and every client.
#[derive(Debug)]
pub struct TlsSource {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Loaded>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl TlsSource {
    /// Loads the files named in `config`, and starts re-reading them in the
    /// background (stopped when the last `Arc` is dropped).
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        if config.insecure_plaintext {
            return Err(TlsError::Plaintext);
        }
        let provider = provider();
        let loaded = Self::read_files(config, &provider)?;
        let source = Arc::new(Self {
            config: config.clone(),
            provider,
            current: ArcSwap::from_pointee(loaded),
        });
        spawn_reloader(Arc::downgrade(&source), config.reload_interval_ms);
        Ok(source)
    }

    /// This process's own SPIFFE ID, from its current certificate.
    pub fn identity(&self) -> String {
        self.current.load().identity.clone()
    }

    fn read_files(config: &TlsConfig, provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsError> {
        let (Some(cert_path), Some(key_path), Some(ca_path)) =
            (&config.cert_file, &config.key_file, &config.ca_file)
        else {
            return Err(TlsError::Rustls(
                "cert_file, key_file and ca_file must all be set".into(),
            ));
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let ca_pem = read(ca_path)?;
        let fingerprint = [cert_pem.as_slice(), &key_pem, &ca_pem].concat();

        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        let leaf = certs.first().ok_or_else(|| TlsError::NoCertificate {
            path: cert_path.display().to_string(),
        })?;
        let identity = spiffe_id(leaf).ok_or_else(|| TlsError::NoIdentity {
            path: cert_path.display().to_string(),
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
            path: key_path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca_pem).filter_map(Result::ok) {
            roots
                .add(ca)
                .map_err(|e| TlsError::Rustls(format!("CA bundle: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificate {
                path: ca_path.display().to_string(),
            });
        }
        let roots = Arc::new(roots);
        let certified = Arc::new(
            CertifiedKey::from_der(certs.clone(), key.clone_key(), provider).map_err(|e| {
                TlsError::Key {
                    path: key_path.display().to_string(),
                    message: e.to_string(),
                }
            })?,
        );

        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Loaded {
            fingerprint,
            identity,
            certified,
            roots,
            server: Arc::new(server),
        })
    }

    /// Re-reads the files; swaps them in when they changed and are valid.
    /// Returns whether anything was swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let loaded = Self::read_files(&self.config, &self.provider)?;
        if loaded.fingerprint == self.current.load().fingerprint {
            return Ok(false);
        }
        tracing::info!(identity = %loaded.identity, "TLS certificate, key or CA bundle changed; new connections use them");
        self.current.store(Arc::new(loaded));
        Ok(true)
    }

    /// The server configuration for the next accepted connection.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.load().server)
    }

    /// A client configuration that presents this process's certificate and
    /// accepts only a server proving `expected` (a SPIFFE ID).
    pub fn client_config(
        self: &Arc<Self>,
        expected: String,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = Arc::new(SpiffeServerVerifier {
            source: Arc::clone(self),
            expected,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentClientCert(Arc::clone(self))));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Re-reads the files every `interval_ms` until the source is dropped.
fn spawn_reloader(source: std::sync::Weak<TlsSource>, interval_ms: u64) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no async runtime: TLS files will not be reloaded");
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(source) = source.upgrade() else {
                return;
            };
            if let Err(e) = source.reload() {
                // A half-written rotation looks like this for a moment; the
                // last good set keeps serving until the files are whole.
                tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones");
            }
        }
    });
}

/// Hands rustls the current client certificate on every handshake.
#[derive(Debug)]
struct CurrentClientCert(Arc<TlsSource>);

impl rustls::client::ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current.load().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a server's chain against the current CA bundle and requires
/// its SPIFFE ID to be the one the client meant to call. The DNS name in
/// the URL plays no part (SPIFFE authenticates workloads, not hosts).
#[derive(Debug)]
struct SpiffeServerVerifier {
    source: Arc<TlsSource>,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let roots = Arc::clone(&self.source.current.load().roots);
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.source.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "server identity `{id}` is not the expected `{}`",
                self.expected
            ))),
            None => Err(rustls::Error::General(
                "server certificate carries no single SPIFFE ID".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.source.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.source.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.source
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An accepted connection, TLS or (when configured) plaintext, that tells
/// tonic who is on the other end.
#[derive(Debug)]
pub enum PeerStream {
    Plain(TcpStream, PeerInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Self::Plain(_, info) | Self::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s, _) => s.is_write_vectored(),
            Self::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted but not yet handed to the server.
const ACCEPT_BACKLOG: usize = 256;

/// Accepts connections on `listener` and completes their TLS handshakes
/// concurrently (a slow client never holds up the others). Plaintext when
/// `tls` is `None`. The accept task stops when the returned stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsSource>>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Nagle + delayed ACKs would add ~40 ms to every reply.
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            match &tls {
                None => {
                    let info = PeerInfo {
                        remote_addr: Some(remote),
                        identity: None,
                    };
                    if tx.send(Ok(PeerStream::Plain(tcp, info))).await.is_err() {
                        return;
                    }
                }
                Some(source) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(source.server_config());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let identity = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|certs| certs.first())
                                    .and_then(spiffe_id)
                                    .map(Arc::<str>::from);
                                let info = PeerInfo {
                                    remote_addr: Some(remote),
                                    identity,
                                };
                                let _ = tx.send(Ok(PeerStream::Tls(Box::new(stream), info))).await;
                            }
                            Ok(Err(e)) => {
                                crate::authz::METRICS.count_handshake_failure();
                                tracing::warn!(peer = %remote, error = %e, "TLS handshake refused");
                            }
                            Err(_) => {
                                crate::authz::METRICS.count_handshake_failure();
                                tracing::warn!(peer = %remote, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_pki::{DevCa, Validity};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_identity_is_the_single_spiffe_uri_san() {
        let ca = DevCa::new("tether.test").unwrap();
        let cert = ca.issue("agent-facade", Validity::Current).unwrap();
        assert_eq!(
            spiffe_id(&der(&cert.cert_pem)).as_deref(),
            Some("spiffe://tether.test/tether/agent-facade")
        );
        // A CA certificate has no URI SAN at all.
        assert_eq!(spiffe_id(&der(ca.ca_pem())), None);
        // Two SPIFFE IDs in one certificate: which one is meant? Neither.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for uri in [
            "spiffe://tether.test/tether/admin",
            "spiffe://tether.test/tether/agent-facade",
        ] {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        let two = params.self_signed(&key).unwrap();
        assert_eq!(spiffe_id(two.der()), None);
        assert_eq!(spiffe_id(&CertificateDer::from(vec![0x30, 0x00])), None);
    }

    #[tokio::test]
    async fn a_broken_rotation_keeps_the_last_good_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("tether.test").unwrap();
        let config = ca.write(dir.path(), "policy-decision").unwrap();
        let source = TlsSource::load(&config).unwrap();
        assert_eq!(
            source.identity(),
            "spiffe://tether.test/tether/policy-decision"
        );
        assert!(!source.reload().unwrap(), "nothing changed");

        // Half a rotation: a key that does not parse.
        let key_file = config.key_file.clone().unwrap();
        let good_key = std::fs::read(&key_file).unwrap();
        std::fs::write(&key_file, b"-----BEGIN PRIVATE KEY-----\ngarbage").unwrap();
        assert!(source.reload().is_err());
        assert_eq!(
            source.identity(),
            "spiffe://tether.test/tether/policy-decision"
        );
        std::fs::write(&key_file, good_key).unwrap();

        // A whole rotation to another identity is picked up.
        ca.write(dir.path(), "policy-decision").unwrap();
        assert!(source.reload().unwrap());

        // A certificate without a SPIFFE ID is refused outright.
        std::fs::write(config.cert_file.as_ref().unwrap(), ca.ca_pem()).unwrap();
        assert!(matches!(source.reload(), Err(TlsError::NoIdentity { .. })));
        let mut plaintext = config.clone();
        plaintext.insecure_plaintext = true;
        assert!(matches!(
            TlsSource::load(&plaintext),
            Err(TlsError::Plaintext)
        ));
    }
}
