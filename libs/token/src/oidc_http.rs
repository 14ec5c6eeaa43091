//! An HTTP client for the `openidconnect` crate over reqwest 0.13.
//!
//! `openidconnect` is built without its default features (they pull a second
//! reqwest and TLS stack); it accepts any async function from
//! `http::Request<Vec<u8>>` to `http::Response<Vec<u8>>`, which this is.
//! Redirects are not followed (OIDC discovery and token endpoints must not
//! redirect; following them invites SSRF).

use std::future::Future;

/// Why an HTTP exchange with the IdP failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// Largest response accepted from an IdP endpoint.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What the client function returns.
pub type ResponseFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<http::Response<Vec<u8>>, HttpError>> + Send>>;

/// Builds the client function. `http` should have redirects disabled and a
/// timeout set (see [`idp_http_client`]).
pub fn oidc_client(http: reqwest::Client) -> impl Fn(http::Request<Vec<u8>>) -> ResponseFuture {
    move |request: http::Request<Vec<u8>>| {
        let http = http.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut builder = http.request(parts.method, parts.uri.to_string()).body(body);
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let response = builder.send().await.map_err(|e| HttpError(e.to_string()))?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = read_capped(response, MAX_RESPONSE_BYTES).await?;
            let mut out = http::Response::builder().status(status);
            for (name, value) in &headers {
                out = out.header(name, value);
            }
            out.body(bytes).map_err(|e| HttpError(e.to_string()))
        })
    }
}

/// Reads a response body, refusing (without buffering the rest) one larger
/// than `limit` bytes, whatever its `Content-Length` claims.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, HttpError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpError(format!("response is over {limit} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError(e.to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(HttpError(format!("response is over {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long an idle connection to an IdP is kept for reuse. Servers close
/// idle keep-alive connections on their own clock (Node's default, which
/// node-oidc-provider inherits, is 5 s), and a POST sent on a connection the
/// server is closing fails with nothing to tell whether it arrived, so it
/// cannot be retried: a CIBA poll every 5 s or more would hit exactly that.
/// Below every common server timeout, a poll opens a fresh connection.
pub const IDP_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A reqwest client suitable for talking to an IdP: no redirects, bounded
/// time, and no connection reused after [`IDP_POOL_IDLE`] of silence.
pub fn idp_http_client(timeout: std::time::Duration) -> Result<reqwest::Client, HttpError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(IDP_POOL_IDLE)
        .build()
        .map_err(|e| HttpError(e.to_string()))
}
