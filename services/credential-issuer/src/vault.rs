//! The Vault/OpenBao client: the issuer's own login and token upkeep, and
//! the dynamic-secret and lease calls.
//!
//! Logins and token upkeep (`auth/<mount>/login`, `auth/token/renew-self`,
//! `auth/token/lookup-self`) go through `vaultrs`. The data-plane calls use
//! `reqwest` directly, because `vaultrs` 0.8 has no `sys/leases/*` API at all
//! (renew, revoke, lookup, list) and its typed secret reads (e.g.
//! `database::role::creds`) strip the response envelope, which is where
//! `lease_id`, `lease_duration` and `renewable` live.
//!
//! Nothing here logs or formats a token, a secret or a response body; errors
//! carry Vault's own error strings (which never contain secrets) and HTTP
//! status codes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::config::{Secret, VaultAuth, VaultConfig};

/// Why a Vault call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// The request never reached Vault (connection refused, DNS, TLS
    /// handshake): nothing happened there.
    #[error("vault is unreachable: {0}")]
    Unreachable(String),
    /// The request may have reached Vault but no answer came back in time
    /// (timeout, connection reset): Vault may or may not have acted.
    #[error("no answer from vault: {0}")]
    NoAnswer(String),
    #[error("vault is sealed")]
    Sealed,
    /// Vault answered with an error status; it did not perform the action.
    #[error("vault answered {code}: {message}")]
    Status { code: u16, message: String },
    #[error("not logged in to vault: {0}")]
    NotAuthenticated(String),
    #[error("unexpected vault response: {0}")]
    Decode(String),
}

impl VaultError {
    /// True when Vault certainly did not perform the request.
    ///
    /// A 502 or 504 comes from something in front of Vault (a load
    /// balancer, a proxy) that may have passed the request on and given up
    /// waiting: whether Vault acted is unknown.
    pub fn certainly_not_applied(&self) -> bool {
        match self {
            Self::Status { code, .. } => !matches!(code, 502 | 504),
            Self::Unreachable(_) | Self::Sealed | Self::NotAuthenticated(_) => true,
            Self::NoAnswer(_) | Self::Decode(_) => false,
        }
    }
}

/// A freshly minted dynamic secret. `Debug` never shows `data`.
pub struct IssuedSecret {
    pub lease_id: String,
    pub lease_duration: Duration,
    pub renewable: bool,
    /// SECRET: the secret's `data`.
    pub data: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for IssuedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSecret")
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("data", &"***")
            .finish()
    }
}

/// A Vault lease as `sys/leases/lookup` reports it.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    /// Unix seconds.
    pub issue_time: i64,
}

#[derive(Clone)]
struct Token {
    value: Secret,
    /// When the token stops working (None: never, e.g. a root token).
    expires: Option<Instant>,
    renewable: bool,
    /// Which login produced it (the `logins` count then): a caller whose
    /// token stopped working logs in again only if no other caller has
    /// since.
    generation: u64,
}

impl Token {
    fn is_current(&self) -> bool {
        self.expires.is_none_or(|e| e > Instant::now())
    }
}

/// Vault client shared by every request.
pub struct Vault {
    http: reqwest::Client,
    base: String,
    config: VaultConfig,
    token: RwLock<Option<Token>>,
    login_lock: Mutex<()>,
    logins: AtomicU64,
    renewals: AtomicU64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("address", &self.base)
            .finish()
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

fn vaultrs_error(e: vaultrs::error::ClientError) -> VaultError {
    use vaultrs::error::ClientError as C;
    match e {
        C::APIError { code: 503, .. } => VaultError::Sealed,
        C::APIError { code, errors } => VaultError::Status {
            code,
            message: errors.join("; "),
        },
        C::RestClientError { source } => VaultError::Unreachable(source.to_string()),
        other => VaultError::Decode(other.to_string()),
    }
}

impl Vault {
    /// Builds the client. Does not contact Vault.
    pub fn new(config: VaultConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .connect_timeout(config.request_timeout())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        if let Some(ca) = &config.ca_cert_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading vault.ca_cert_file `{}`", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing vault.ca_cert_file `{}`", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("building the vault HTTP client")?;
        Ok(Self {
            http,
            base: config.address.trim_end_matches('/').to_owned(),
            config,
            token: RwLock::new(None),
            login_lock: Mutex::new(()),
            logins: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
        })
    }

    fn vaultrs_client(&self, token: Option<&str>) -> Result<VaultClient, VaultError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(self.base.as_str())
            .timeout(Some(self.config.request_timeout()))
            .token(token.unwrap_or_default());
        if let Some(ca) = &self.config.ca_cert_file {
            settings.ca_certs(vec![ca.display().to_string()]);
        }
        let settings = settings
            .build()
            .map_err(|e| VaultError::Decode(format!("vault client settings: {e}")))?;
        VaultClient::new(settings).map_err(vaultrs_error)
    }

    /// Logs in with the configured method (or reads the static token) and
    /// stores the token.
    pub async fn login(&self) -> Result<(), VaultError> {
        let _guard = self.login_lock.lock().await;
        self.login_locked().await
    }

    /// Logs in again because the token of generation `stale` (`None`: no
    /// usable token) stopped working, unless another caller already did
    /// while this one waited for the lock: any number of requests that
    /// find the token expired or refused at once cause one login.
    async fn relogin(&self, stale: Option<u64>) -> Result<(), VaultError> {
        let _guard = self.login_lock.lock().await;
        if let Some(token) = self.token.read().await.as_ref()
            && token.is_current()
            && Some(token.generation) != stale
        {
            return Ok(());
        }
        self.login_locked().await
    }

    /// The login itself; the caller holds `login_lock`.
    async fn login_locked(&self) -> Result<(), VaultError> {
        let mut token = match &self.config.auth {
            VaultAuth::Token { token, token_file } => {
                let value = match (token, token_file) {
                    (Some(t), _) => t.clone(),
                    (None, Some(path)) => Secret::new(
                        tokio::fs::read_to_string(path)
                            .await
                            .map_err(|e| {
                                VaultError::NotAuthenticated(format!(
                                    "reading `{}`: {e}",
                                    path.display()
                                ))
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    (None, None) => {
                        return Err(VaultError::NotAuthenticated("no token configured".into()));
                    }
                };
                let client = self.vaultrs_client(Some(value.expose()))?;
                let info = vaultrs::token::lookup_self(&client)
                    .await
                    .map_err(vaultrs_error)?;
                Token {
                    value,
                    expires: (info.ttl > 0).then(|| Instant::now() + Duration::from_secs(info.ttl)),
                    renewable: info.renewable.unwrap_or(false),
                    generation: 0,
                }
            }
            VaultAuth::Approle {
                mount,
                role_id,
                secret_id,
                secret_id_file,
            } => {
                let secret = match (secret_id, secret_id_file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(path)) => Secret::new(
                        tokio::fs::read_to_string(path)
                            .await
                            .map_err(|e| {
                                VaultError::NotAuthenticated(format!(
                                    "reading `{}`: {e}",
                                    path.display()
                                ))
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    (None, None) => {
                        return Err(VaultError::NotAuthenticated(
                            "no secret_id configured".into(),
                        ));
                    }
                };
                let client = self.vaultrs_client(None)?;
                let info = vaultrs::auth::approle::login(&client, mount, role_id, secret.expose())
                    .await
                    .map_err(vaultrs_error)?;
                auth_token(&info)
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let jwt = tokio::fs::read_to_string(jwt_path).await.map_err(|e| {
                    VaultError::NotAuthenticated(format!(
                        "reading the service-account token `{}`: {e}",
                        jwt_path.display()
                    ))
                })?;
                let client = self.vaultrs_client(None)?;
                let info = vaultrs::auth::kubernetes::login(&client, mount, role, jwt.trim())
                    .await
                    .map_err(vaultrs_error)?;
                auth_token(&info)
            }
        };
        tracing::info!(
            method = self.method_name(),
            ttl_secs = token
                .expires
                .map(|e| e.saturating_duration_since(Instant::now()).as_secs()),
            renewable = token.renewable,
            "logged in to vault"
        );
        token.generation = self.logins.fetch_add(1, Ordering::Relaxed) + 1;
        *self.token.write().await = Some(token);
        Ok(())
    }

    /// Successful logins (or static-token lookups) so far.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Successful renewals of the issuer's own token so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    fn method_name(&self) -> &'static str {
        match self.config.auth {
            VaultAuth::Token { .. } => "token",
            VaultAuth::Approle { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Renews the issuer's own token; logs in again when it cannot be
    /// renewed (not renewable, at its max TTL, or revoked).
    async fn refresh(&self) -> Result<(), VaultError> {
        let current = self.token.read().await.clone();
        if let Some(tok) = current
            && tok.renewable
        {
            let client = self.vaultrs_client(Some(tok.value.expose()))?;
            match vaultrs::token::renew_self(&client, None).await {
                Ok(info) => {
                    let before = tok
                        .expires
                        .map(|e| e.saturating_duration_since(Instant::now()));
                    let after = Duration::from_secs(info.lease_duration);
                    // A renewal that no longer extends the token means it is
                    // at its max TTL: log in again rather than let it lapse.
                    if before.is_none_or(|b| after > b + Duration::from_secs(1)) {
                        let mut guard = self.token.write().await;
                        *guard = Some(Token {
                            value: tok.value,
                            expires: (info.lease_duration > 0).then(|| Instant::now() + after),
                            renewable: info.renewable,
                            generation: tok.generation,
                        });
                        self.renewals.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(ttl_secs = info.lease_duration, "renewed the vault token");
                        return Ok(());
                    }
                    tracing::info!("vault token reached its max TTL; logging in again");
                }
                Err(e) => {
                    let e = vaultrs_error(e);
                    tracing::warn!(error = %e, "renewing the vault token failed; logging in again");
                }
            }
        }
        self.login().await
    }

    /// Keeps the issuer's token alive until `stop` resolves: renews at two
    /// thirds of its TTL, logs in again when renewal is impossible, and
    /// retries a failed login with backoff.
    pub async fn maintain_token(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            let wait = {
                let token = self.token.read().await.clone();
                match token {
                    None => backoff(failures),
                    Some(Token { expires: None, .. }) => Duration::from_secs(300),
                    Some(Token {
                        expires: Some(exp), ..
                    }) => exp
                        .saturating_duration_since(Instant::now())
                        .mul_f64(2.0 / 3.0),
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(100))) => {}
                _ = stop.changed() => return,
            }
            let needs = {
                let token = self.token.read().await.clone();
                match token {
                    None => true,
                    Some(Token { expires: None, .. }) => false,
                    Some(_) => true,
                }
            };
            if !needs {
                continue;
            }
            match self.refresh().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, attempt = failures, "vault login failed; retrying with backoff");
                    *self.token.write().await = None;
                }
            }
        }
    }

    /// The token to call with, and its generation.
    async fn current_token(&self) -> Result<(Secret, u64), VaultError> {
        let seen = self.token.read().await.clone();
        if let Some(t) = &seen
            && t.is_current()
        {
            return Ok((t.value.clone(), t.generation));
        }
        self.relogin(seen.map(|t| t.generation)).await?;
        self.token
            .read()
            .await
            .as_ref()
            .map(|t| (t.value.clone(), t.generation))
            .ok_or_else(|| VaultError::NotAuthenticated("login gave no token".into()))
    }

    /// One API call; on 403 (token expired or revoked) logs in again and
    /// retries once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), VaultError> {
        let mut retried = false;
        loop {
            let (token, generation) = self.current_token().await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}/v1/{path}", self.base))
                .header("X-Vault-Token", token.expose());
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| {
                if e.is_connect() {
                    VaultError::Unreachable(describe_reqwest(&e))
                } else {
                    VaultError::NoAnswer(describe_reqwest(&e))
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| VaultError::NoAnswer(describe_reqwest(&e)))?;
            let value: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|_| VaultError::Decode(format!("{status}: body is not JSON")))?
            };
            if status.is_success() {
                return Ok((status, value));
            }
            if status == StatusCode::FORBIDDEN && !retried {
                retried = true;
                tracing::info!(path, "vault refused the token; logging in again");
                self.relogin(Some(generation)).await?;
                continue;
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                return Err(VaultError::Sealed);
            }
            return Err(VaultError::Status {
                code: status.as_u16(),
                message: errors_of(&value),
            });
        }
    }

    /// Reads a dynamic secret (`GET /v1/<path>`).
    pub async fn issue(&self, path: &str) -> Result<IssuedSecret, VaultError> {
        let (_, v) = self.call(Method::GET, path, None).await?;
        let lease_id = v
            .get("lease_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| VaultError::Decode("the secret has no lease".into()))?
            .to_owned();
        let lease_duration = Duration::from_secs(
            v.get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or_default(),
        );
        let renewable = v.get("renewable").and_then(Value::as_bool).unwrap_or(false);
        let data = match v.get("data") {
            Some(Value::Object(map)) => map.clone(),
            _ => serde_json::Map::new(),
        };
        Ok(IssuedSecret {
            lease_id,
            lease_duration,
            renewable,
            data,
        })
    }

    /// Renews a lease to `increment` from now. Returns the granted TTL and
    /// whether it stays renewable.
    pub async fn renew(
        &self,
        lease_id: &str,
        increment: Duration,
    ) -> Result<(Duration, bool), VaultError> {
        let body = serde_json::json!({ "lease_id": lease_id, "increment": increment.as_secs() });
        let (_, v) = self
            .call(Method::PUT, "sys/leases/renew", Some(&body))
            .await?;
        let ttl = v
            .get("lease_duration")
            .and_then(Value::as_u64)
            .ok_or_else(|| VaultError::Decode("renewal without lease_duration".into()))?;
        Ok((
            Duration::from_secs(ttl),
            v.get("renewable").and_then(Value::as_bool).unwrap_or(false),
        ))
    }

    /// Revokes a lease, synchronously (the backend's revocation has run when
    /// this returns). A lease Vault does not know counts as revoked.
    pub async fn revoke(&self, lease_id: &str) -> Result<(), VaultError> {
        let body = serde_json::json!({ "lease_id": lease_id, "sync": true });
        match self
            .call(Method::PUT, "sys/leases/revoke", Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(VaultError::Status { code: 400, message }) if is_invalid_lease(&message) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Looks a lease up. `None`: Vault does not know it (revoked or expired).
    pub async fn lookup(&self, lease_id: &str) -> Result<Option<LeaseInfo>, VaultError> {
        let body = serde_json::json!({ "lease_id": lease_id });
        match self
            .call(Method::PUT, "sys/leases/lookup", Some(&body))
            .await
        {
            Ok((_, v)) => {
                let issue = v
                    .pointer("/data/issue_time")
                    .and_then(Value::as_str)
                    .ok_or_else(|| VaultError::Decode("lease lookup without issue_time".into()))?;
                Ok(Some(LeaseInfo {
                    issue_time: parse_rfc3339_secs(issue).ok_or_else(|| {
                        VaultError::Decode(format!("issue_time `{issue}` is not RFC 3339"))
                    })?,
                }))
            }
            Err(VaultError::Status { code: 400, message }) if is_invalid_lease(&message) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The full ids of every lease Vault holds under `prefix`
    /// (`LIST sys/leases/lookup/<prefix>/`).
    pub async fn list_leases(&self, prefix: &str) -> Result<Vec<String>, VaultError> {
        let list = Method::from_bytes(b"LIST")
            .map_err(|e| VaultError::Decode(format!("LIST method: {e}")))?;
        match self
            .call(list, &format!("sys/leases/lookup/{prefix}/"), None)
            .await
        {
            Ok((_, v)) => Ok(v
                .pointer("/data/keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        // Sub-folders end with `/`; dynamic leases do not.
                        .filter(|k| !k.ends_with('/'))
                        .map(|k| format!("{prefix}/{k}"))
                        .collect()
                })
                .unwrap_or_default()),
            Err(VaultError::Status { code: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn auth_token(info: &vaultrs::api::AuthInfo) -> Token {
    Token {
        value: Secret::new(info.client_token.clone()),
        expires: (info.lease_duration > 0)
            .then(|| Instant::now() + Duration::from_secs(info.lease_duration)),
        renewable: info.renewable,
        generation: 0,
    }
}

fn is_invalid_lease(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("invalid lease") || m.contains("lease not found") || m.contains("lease is not found")
}

fn errors_of(v: &Value) -> String {
    v.get("errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .filter_map(Value::as_str)
                .map(|s| s.lines().next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// First retry delay 1 s, doubling, at most 60 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp such as
/// `2026-05-01T10:00:00.123456Z` or `…+02:00`.
pub fn parse_rfc3339_secs(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let da: i64 = d.next()?.parse().ok()?;
    let time_end = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    let offset = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z.get(1..)?.split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "sub-second part dropped on purpose"
    )]
    let whole = sec as i64;
    Some(days * 86_400 + h * 3600 + mi * 60 + whole - offset)
}

/// Converts a secret's `data` into the proto credential: a database login
/// when it has string `username` and `password`, otherwise every field.
pub fn to_credential(
    data: &serde_json::Map<String, Value>,
) -> tether_proto::credentials::v1::Credential {
    use tether_proto::credentials::v1 as pb;
    let kind = match (
        data.get("username").and_then(Value::as_str),
        data.get("password").and_then(Value::as_str),
    ) {
        (Some(u), Some(p)) if data.len() == 2 => {
            pb::credential::Kind::Database(pb::DatabaseCredential {
                username: u.to_owned(),
                password: p.to_owned(),
            })
        }
        _ => pb::credential::Kind::Generic(pb::GenericCredential {
            data: data
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        }),
    };
    pb::Credential { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_secs("2026-05-01T10:00:00.123456789Z"),
            Some(1_777_629_600)
        );
        assert_eq!(
            parse_rfc3339_secs("2026-05-01T12:00:00+02:00"),
            Some(1_777_629_600)
        );
        assert_eq!(parse_rfc3339_secs("garbage"), None);
    }

    #[test]
    fn issued_secret_debug_hides_data() {
        let mut data = serde_json::Map::new();
        data.insert("password".into(), Value::String("hunter2-xyz".into()));
        let s = IssuedSecret {
            lease_id: "database/creds/x/1".into(),
            lease_duration: Duration::from_secs(60),
            renewable: true,
            data,
        };
        assert!(!format!("{s:?}").contains("hunter2-xyz"));
    }
}
