//! The test PKI: one throwaway CA per sandbox, SPIFFE certificates for the
//! services and their callers, and clients that present them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tempfile::TempDir;
use tether_runtime::TlsConfig;
use tether_runtime::client::{Clients, InternalChannel};
use tether_runtime::dev_pki::{DevCa, Validity};

/// The trust domain of every test certificate.
pub const TRUST_DOMAIN: &str = "tether.test";

/// A throwaway CA and the directory its certificates are written to.
#[derive(Debug)]
pub struct TestPki {
    ca: DevCa,
    dir: TempDir,
}

impl TestPki {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            ca: DevCa::new(TRUST_DOMAIN)?,
            dir: tempfile::tempdir().context("creating the PKI directory")?,
        }))
    }

    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The CA bundle file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `[server.tls]` for `identity` (a service name or `spiffe://` URI),
    /// with a fresh certificate in its own directory.
    pub fn tls(&self, identity: &str) -> anyhow::Result<TlsConfig> {
        self.tls_with(identity, Validity::Current)
    }

    pub fn tls_with(&self, identity: &str, validity: Validity) -> anyhow::Result<TlsConfig> {
        let dir = self.dir_for(identity);
        let mut tls = self.ca.write_with(&dir, identity, validity)?;
        // Every holder of the CA reads the same bundle file.
        std::fs::copy(dir.join("ca.pem"), self.ca_file())?;
        tls.ca_file = Some(self.ca_file());
        Ok(tls)
    }

    /// Where [`TestPki::tls`] writes `identity`'s files (without writing).
    pub fn paths(&self, identity: &str) -> TlsConfig {
        let dir = self.dir_for(identity);
        let name = tether_runtime::dev_pki::file_stem(identity);
        TlsConfig {
            cert_file: Some(dir.join(format!("{name}.crt"))),
            key_file: Some(dir.join(format!("{name}.key"))),
            ca_file: Some(self.ca_file()),
            trust_domain: TRUST_DOMAIN.into(),
            reload_interval_ms: 200,
            ..TlsConfig::default()
        }
    }

    fn dir_for(&self, identity: &str) -> PathBuf {
        let name = tether_runtime::dev_pki::file_stem(identity);
        self.dir.path().join(name)
    }

    /// Clients presenting `identity`'s certificate.
    pub fn clients(&self, identity: &str) -> anyhow::Result<Clients> {
        Ok(Clients::new(&self.tls(identity)?)?)
    }

    /// A channel to the Tether service `service` at `addr`, as `identity`.
    pub fn channel(
        &self,
        identity: &str,
        addr: std::net::SocketAddr,
        service: &str,
    ) -> anyhow::Result<InternalChannel> {
        Ok(self
            .clients(identity)?
            .grpc(&format!("https://{addr}"), service)?)
    }

    /// A plain HTTPS client trusting this CA (no client certificate): what
    /// an agent or a browser uses for the OAuth endpoints.
    pub fn https_client(&self) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(self.ca.ca_pem().as_bytes())?;
        Ok(reqwest::Client::builder()
            .tls_certs_only([ca])
            .redirect(reqwest::redirect::Policy::none())
            .build()?)
    }

    /// A gRPC channel that trusts this CA but presents no client
    /// certificate (tonic's own TLS client, not Tether's builder).
    pub fn anonymous_channel(&self, addr: std::net::SocketAddr) -> anyhow::Result<InternalChannel> {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(self.ca.ca_pem()))
            .domain_name("localhost");
        let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_lazy();
        Ok(InternalChannel::new(
            channel,
            tether_runtime::client::ClientInterceptor::new(std::time::Duration::from_secs(10)),
        ))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
