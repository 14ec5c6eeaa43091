//! The one client builder every internal caller uses: mTLS with this
//! process's certificate, the callee's SPIFFE ID checked, connect and
//! request timeouts, W3C trace propagation, and the inbound call's deadline
//! carried on to every downstream call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::TlsConfig;
use crate::propagation::TracedClient;
use crate::tls::{TlsError, TlsSource, resolve_identity};

/// A channel to an internal service with Tether's interceptor and a client
/// span per call; every generated client takes it
/// (`FooClient::new(channel)`).
pub type InternalChannel = TracedClient<InterceptedService<Channel, ClientInterceptor>>;

impl InternalChannel {
    /// `channel` with the trace context and deadline interceptor, for a
    /// channel built elsewhere (a test's own TLS client, say).
    pub fn new(channel: Channel, interceptor: ClientInterceptor) -> Self {
        TracedClient::wrap(InterceptedService::new(channel, interceptor))
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("endpoint `{0}` is not a valid `https://host:port` URL")]
    BadEndpoint(String),
    #[error("endpoint `{endpoint}` must use {expected}")]
    Scheme {
        endpoint: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("building the HTTP client: {0}")]
    Http(String),
}

/// Builds internal clients from one `[server.tls]` configuration.
#[derive(Debug, Clone)]
pub struct Clients {
    tls: Option<Arc<TlsSource>>,
    trust_domain: String,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Clients {
    /// Clients that present this process's certificate (or plaintext when
    /// the configuration says `insecure_plaintext = true`).
    pub fn new(tls: &TlsConfig) -> Result<Self, ClientError> {
        let source = if tls.insecure_plaintext {
            None
        } else {
            Some(TlsSource::load(tls)?)
        };
        Ok(Self::with_source(source, tls.trust_domain.clone()))
    }

    /// Clients sharing an already loaded [`TlsSource`] (one reloader for a
    /// process that serves and calls).
    pub fn with_source(tls: Option<Arc<TlsSource>>, trust_domain: String) -> Self {
        Self {
            tls,
            trust_domain,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the connect and per-request timeouts (defaults 5 s and 10 s).
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// A lazily connecting channel to `endpoint` (`https://host:port`, or
    /// `http://host:port` in plaintext mode) whose server must prove the
    /// identity `peer` (a Tether service name such as `identity-exchange`,
    /// or a full `spiffe://` URI).
    pub fn grpc(&self, endpoint: &str, peer: &str) -> Result<InternalChannel, ClientError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| ClientError::BadEndpoint(endpoint.to_owned()))?;
        let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
            return Err(ClientError::BadEndpoint(endpoint.to_owned()));
        };
        let expected_scheme = if self.tls.is_some() { "https" } else { "http" };
        if uri.scheme_str() != Some(expected_scheme) {
            return Err(ClientError::Scheme {
                endpoint: endpoint.to_owned(),
                expected: if self.tls.is_some() {
                    "`https://` (mTLS is on)"
                } else {
                    "`http://` (`insecure_plaintext = true`)"
                },
            });
        }
        // tonic must not do TLS itself: it sees `http://`, and the
        // connector below does the handshake with our configuration.
        let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|_| ClientError::BadEndpoint(endpoint.to_owned()))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true);
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(source) => {
                let config = source.client_config(resolve_identity(&self.trust_domain, peer))?;
                endpoint.connect_with_connector_lazy(TlsConnector {
                    config: Arc::new(config),
                })
            }
        };
        Ok(InternalChannel::new(
            channel,
            ClientInterceptor {
                request_timeout: self.request_timeout,
            },
        ))
    }

    /// An HTTP client for a Tether service's HTTP endpoints (JWKS, OAuth):
    /// it presents this process's certificate and requires the server to
    /// prove `peer`. Never follows redirects.
    pub fn https(&self, peer: &str) -> Result<reqwest::Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(source) = &self.tls {
            let mut config = source.client_config(resolve_identity(&self.trust_domain, peer))?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            builder = builder.use_preconfigured_tls(config);
        }
        builder
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))
    }
}

/// Connects over TCP and completes a TLS handshake with the current
/// certificate (a rotation applies to the next connection).
#[derive(Debug, Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        Box::pin(async move {
            let host = uri.host().ok_or("endpoint without a host")?;
            let port = uri.port_u16().ok_or("endpoint without a port")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            // Only SNI: the verifier checks the SPIFFE ID, not this name.
            let name = ServerName::try_from(host.to_owned())?;
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Adds the trace context and the deadline to every outgoing call: the
/// configured request timeout, or less when the inbound call this one
/// serves has less time left.
#[derive(Debug, Clone, Copy)]
pub struct ClientInterceptor {
    request_timeout: Duration,
}

impl ClientInterceptor {
    /// An interceptor for a channel built elsewhere (a test's own TLS
    /// client, say), with the given per-request timeout.
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout }
    }
}

impl tonic::service::Interceptor for ClientInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = crate::propagation::TraceContextInterceptor.call(request)?;
        let timeout = match crate::authz::remaining() {
            Some(left) if left.is_zero() => {
                return Err(tonic::Status::deadline_exceeded(
                    "the inbound call's deadline passed before this call was made",
                ));
            }
            Some(left) => left.min(self.request_timeout),
            None => self.request_timeout,
        };
        // A caller that set a shorter deadline on this request keeps it.
        let asked = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::authz::parse_grpc_timeout);
        let timeout = asked.map_or(timeout, |asked| asked.min(timeout));
        request.set_timeout(timeout);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;
    use crate::authz::{INBOUND_DEADLINE, parse_grpc_timeout};

    fn timeout_of(request: &tonic::Request<()>) -> Duration {
        request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap()
    }

    #[test]
    fn a_shorter_deadline_set_by_the_caller_is_kept() {
        let mut interceptor = ClientInterceptor::new(Duration::from_secs(10));
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_millis(300));
        let out = interceptor.call(request).unwrap();
        assert_eq!(timeout_of(&out), Duration::from_millis(300));
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_secs(60));
        let out = interceptor.call(request).unwrap();
        assert_eq!(timeout_of(&out), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn downstream_calls_never_get_more_time_than_the_inbound_call_has_left() {
        let mut interceptor = ClientInterceptor::new(Duration::from_secs(10));
        // Outside any inbound call: the configured request timeout.
        let out = interceptor.call(tonic::Request::new(())).unwrap();
        assert_eq!(timeout_of(&out), Duration::from_secs(10));

        // Serving a call with 200 ms left: at most 200 ms downstream.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        let out = INBOUND_DEADLINE
            .scope(deadline, async {
                interceptor.call(tonic::Request::new(()))
            })
            .await
            .unwrap();
        assert!(timeout_of(&out) <= Duration::from_millis(200));
        assert!(timeout_of(&out) > Duration::from_millis(100));

        // Nothing left: the downstream call is not made at all.
        let passed = tokio::time::Instant::now();
        let err = INBOUND_DEADLINE
            .scope(passed, async { interceptor.call(tonic::Request::new(())) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn endpoints_must_match_the_transport() {
        let plain = Clients::new(&TlsConfig::plaintext()).unwrap();
        assert!(matches!(
            plain.grpc("https://127.0.0.1:1", "policy-decision"),
            Err(ClientError::Scheme { .. })
        ));
        for bad in ["127.0.0.1:1", "http://", "not a url", "http://host"] {
            assert!(plain.grpc(bad, "policy-decision").is_err(), "{bad}");
        }
    }
}
