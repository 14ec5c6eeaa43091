//! `tether login`: OIDC Authorization Code + PKCE with a loopback redirect
//! (RFC 8252), against any OIDC provider, for people trying Tether locally.
//!
//! The redirect listener binds `127.0.0.1` on a free port and accepts
//! exactly one request carrying the expected `state`; the code is exchanged
//! with the PKCE verifier, and the ID token's signature, issuer, audience
//! and nonce are verified before anything is returned.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, bail};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse as _,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse as _,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// What to log in to.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// RFC 8707 resource the access token is for (optional).
    pub resource: Option<String>,
    /// Passed to the IdP as `login_hint` (optional).
    pub login_hint: Option<String>,
    /// How long to wait for the browser to come back.
    pub timeout: Duration,
}

/// The tokens a login yields. SECRET: never log them.
#[derive(Clone, serde::Serialize)]
pub struct LoginTokens {
    pub access_token: String,
    pub id_token: String,
    pub expires_in: Option<u64>,
    pub subject: String,
}

impl std::fmt::Debug for LoginTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTokens")
            .field("subject", &self.subject)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Runs the flow. `open_browser` receives the authorization URL and must
/// get a user agent to it (the CLI prints it and tries `xdg-open`; tests
/// drive an HTTP client through the IdP's redirects).
pub async fn login<F, Fut>(options: &LoginOptions, open_browser: F) -> anyhow::Result<LoginTokens>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = tether_token::idp_http_client(Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client_fn = tether_token::oidc_client(http);
    let issuer = IssuerUrl::new(options.issuer.clone()).context("invalid issuer URL")?;
    let metadata = CoreProviderMetadata::discover_async(issuer, &client_fn)
        .await
        .map_err(|e| anyhow::anyhow!("OIDC discovery for `{}` failed: {e}", options.issuer))?;

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the loopback redirect listener")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(options.client_id.clone()),
        None,
    )
    .set_redirect_uri(RedirectUrl::new(redirect)?);

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in &options.scopes {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    if let Some(resource) = &options.resource {
        request = request.add_extra_param("resource", resource.clone());
    }
    if let Some(hint) = &options.login_hint {
        request = request.add_extra_param("login_hint", hint.clone());
    }
    let (url, state, nonce) = request.url();

    let browser = tokio::spawn(open_browser(url.to_string()));
    let code = tokio::time::timeout(options.timeout, receive_code(&listener, state.secret()))
        .await
        .context("timed out waiting for the browser to return")??;
    browser.await.context("browser task failed")??;

    let mut exchange = client
        .exchange_code(AuthorizationCode::new(code))
        .context("the provider has no token endpoint")?
        .set_pkce_verifier(verifier);
    if let Some(resource) = &options.resource {
        exchange = exchange.add_extra_param("resource", resource.clone());
    }
    let response = exchange
        .request_async(&client_fn)
        .await
        .map_err(|e| anyhow::anyhow!("code exchange failed: {e}"))?;
    let id_token = response
        .id_token()
        .context("the provider returned no ID token")?;
    let verifier = client.id_token_verifier().set_allowed_algs([
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        CoreJwsSigningAlgorithm::EcdsaP384Sha384,
        CoreJwsSigningAlgorithm::EdDsa,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    ]);
    let claims = id_token
        .claims(&verifier, &nonce)
        .map_err(|e| anyhow::anyhow!("ID token rejected: {e}"))?;
    Ok(LoginTokens {
        access_token: response.access_token().secret().clone(),
        id_token: id_token.to_string(),
        expires_in: response.expires_in().map(|d| d.as_secs()),
        subject: claims.subject().to_string(),
    })
}

/// Accepts redirects until one carries `state`; answers each.
async fn receive_code(listener: &TcpListener, expected_state: &str) -> anyhow::Result<String> {
    loop {
        let (mut socket, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let n = socket.read(&mut buf).await?;
        let head = String::from_utf8_lossy(&buf[..n]);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_owned();
        let url = url::Url::parse(&format!("http://127.0.0.1{target}"))?;
        if url.path() != "/callback" {
            respond(&mut socket, "404 Not Found", "not found").await;
            continue;
        }
        let param = |k: &str| {
            url.query_pairs()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.into_owned())
        };
        if param("state").as_deref() != Some(expected_state) {
            // A stray or forged redirect: ignore it, keep waiting.
            respond(&mut socket, "400 Bad Request", "state mismatch").await;
            continue;
        }
        if let Some(error) = param("error") {
            respond(
                &mut socket,
                "400 Bad Request",
                "login failed, see the terminal",
            )
            .await;
            bail!(
                "the provider refused the login: {error} {}",
                param("error_description").unwrap_or_default()
            );
        }
        let Some(code) = param("code") else {
            respond(&mut socket, "400 Bad Request", "no code").await;
            bail!("the provider redirected without a code");
        };
        respond(
            &mut socket,
            "200 OK",
            "Logged in to Tether. You can close this window.",
        )
        .await;
        return Ok(code);
    }
}

async fn respond(socket: &mut tokio::net::TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}
