//! Which session a call acts for: the agent's delegated token, carried in the
//! call's `authorization: Bearer <token>` metadata and verified locally
//! against the identity exchange's keys and session revocation list. Every
//! service whose RPCs act for a session (credential issuer, approval
//! orchestrator) uses this one piece.
//!
//! The session id, user, agent and expiry come from the verified token,
//! never from request fields. The token itself is never logged, put in a
//! span or returned in an error: it is read here, handed to the verifier,
//! and dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_runtime::client::ClientError;
use tether_runtime::{ConfigError, TlsConfig};
use tonic::metadata::MetadataMap;

use crate::{
    DelegatedClaims, DelegatedTokenVerifier, GrpcRevocationFeed, JwksCache, RevocationCheck as _,
    RevocationList, TokenError, spawn_revocation_sync,
};

/// Verifying the agents' delegated tokens (`[sessions]`). Calls that act
/// for a session take the session, user, agent and expiry from the token in the call's
/// `authorization: Bearer` metadata, checked against the identity
/// exchange's keys and session revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// The `iss` of delegated tokens: the identity exchange's issuer URL.
    pub token_issuer: String,
    /// The `aud` delegated tokens carry (the agent facade's audience).
    pub audience: String,
    /// The identity exchange's key set, e.g.
    /// `https://identity-exchange:7002/.well-known/jwks.json`.
    pub jwks_url: String,
    /// The identity exchange's gRPC endpoint, for `ListRevokedSessions`.
    pub identity_exchange: String,
    /// How often the session revocation list is pulled.
    #[serde(default = "default_revocation_poll_ms")]
    pub revocation_poll_ms: u64,
    /// How old the local copy of the revocation list may get (when the
    /// identity exchange cannot be reached) before every token is refused
    /// with UNAVAILABLE.
    #[serde(default = "default_revocation_max_staleness_ms")]
    pub revocation_max_staleness_ms: u64,
}

impl SessionsConfig {
    pub fn revocation_poll(&self) -> Duration {
        Duration::from_millis(self.revocation_poll_ms)
    }

    pub fn revocation_max_staleness(&self) -> Duration {
        Duration::from_millis(self.revocation_max_staleness_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (key, value) in [
            ("token_issuer", &self.token_issuer),
            ("jwks_url", &self.jwks_url),
            ("identity_exchange", &self.identity_exchange),
        ] {
            if !(value.starts_with("https://") || value.starts_with("http://"))
                || value.len() <= "https://".len()
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return invalid(format!(
                    "sessions.{key} `{value}` must be an http:// or https:// URL"
                ));
            }
        }
        if self.audience.trim().is_empty() || self.audience.trim() != self.audience {
            return invalid(
                "sessions.audience must name the audience delegated tokens carry (the agent facade's), without surrounding whitespace".into(),
            );
        }
        if self.revocation_poll_ms < 100 {
            return invalid(format!(
                "sessions.revocation_poll_ms must be at least 100, got {}",
                self.revocation_poll_ms
            ));
        }
        if self.revocation_max_staleness_ms < self.revocation_poll_ms.saturating_mul(2) {
            return invalid(format!(
                "sessions.revocation_max_staleness_ms ({}) must be at least twice revocation_poll_ms ({}), or one slow poll denies every token",
                self.revocation_max_staleness_ms, self.revocation_poll_ms
            ));
        }
        Ok(())
    }
}

fn default_revocation_poll_ms() -> u64 {
    1_000
}

fn default_revocation_max_staleness_ms() -> u64 {
    10_000
}

/// Why a call does not prove a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No usable `authorization: Bearer <token>` metadata.
    #[error("{0}")]
    NoBearer(&'static str),
    /// The delegated token was refused, or could not be checked
    /// ([`TokenError::is_unavailable`]: fail closed).
    #[error("the delegated token was refused: {0}")]
    Token(#[from] TokenError),
}

/// How long start-up waits for the first key fetch and revocation sync
/// before serving anyway (requests then fail closed until they succeed).
const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// The session a verified delegated token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sid`.
    pub sid: String,
    /// `sub`: the user the agent acts for (at the IdP named by `idp`).
    pub user: String,
    /// `user.idp`: the issuer of the user's identity.
    pub idp: Option<String>,
    /// The current `act.sub`: the agent acting.
    pub agent: String,
    /// The token's `exp`, in Unix milliseconds: nothing issued for this
    /// call outlives it.
    pub expires_at_ms: i64,
    /// The session's declared intent (RFC 9396 `authorization_details`).
    pub intent: Option<serde_json::Value>,
}

/// Verifies the bearer token of a call.
#[derive(Debug)]
pub struct Sessions {
    verifier: DelegatedTokenVerifier<JwksCache, Arc<RevocationList>>,
    revocations: Arc<RevocationList>,
}

impl Sessions {
    /// Builds the identity exchange clients with the shared builder, makes
    /// a first attempt at fetching its keys and revocation list, and spawns
    /// the task that keeps the list current until `shutdown` resolves.
    pub async fn start(
        config: &SessionsConfig,
        tls: &TlsConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), ClientError> {
        let clients = tether_runtime::client::Clients::new(tls)?;
        let channel = clients.grpc(&config.identity_exchange, "identity-exchange")?;
        let http = clients.https("identity-exchange")?;
        let keys = JwksCache::new(config.jwks_url.clone(), http);
        let list = Arc::new(RevocationList::new(config.revocation_max_staleness()));
        let feed = GrpcRevocationFeed::new(IdentityExchangeClient::new(channel));

        let first = tokio::time::timeout(STARTUP_WAIT, async {
            tokio::join!(keys.refresh(), list.sync_from(&feed))
        })
        .await;
        match first {
            Ok((Ok(()), Ok(_))) => {
                tracing::info!(issuer = %config.token_issuer, "delegated token keys and session revocation list loaded");
            }
            Ok((keys, synced)) => {
                for e in [keys.err(), synced.err()].into_iter().flatten() {
                    tracing::warn!(error = %e, "identity exchange not reachable at start-up; calls acting for a session fail UNAVAILABLE until it is");
                }
            }
            Err(_) => {
                tracing::warn!(
                    wait_ms = STARTUP_WAIT.as_millis(),
                    "identity exchange did not answer at start-up; calls acting for a session fail UNAVAILABLE until it does"
                );
            }
        }
        let task =
            spawn_revocation_sync(Arc::clone(&list), feed, config.revocation_poll(), shutdown);
        let verifier = DelegatedTokenVerifier::new(
            config.token_issuer.clone(),
            config.audience.clone(),
            keys,
            Arc::clone(&list),
        );
        Ok((
            Self {
                verifier,
                revocations: list,
            },
            task,
        ))
    }

    /// The session the call's bearer token proves: signature, `iss`, `aud`,
    /// `exp` and `typ` checked, and the session not revoked.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, SessionError> {
        let token = bearer(metadata)?;
        let claims = self.verifier.verify(token).await?;
        Ok(Caller::from(claims))
    }

    /// The verified claims of the call's bearer token, session not
    /// revoked (what the agent facade builds a decision from).
    pub async fn claims(&self, metadata: &MetadataMap) -> Result<DelegatedClaims, SessionError> {
        Ok(self.verifier.verify(bearer(metadata)?).await?)
    }

    /// Verifies a delegated token given directly (e.g. one just minted):
    /// signature, claims, and the session not revoked.
    pub async fn verify(&self, token: &str) -> Result<DelegatedClaims, TokenError> {
        self.verifier.verify(token).await
    }

    /// Like [`Sessions::claims`] for a session that may have ended already
    /// (signature, `iss`, `aud`, `exp` and `typ` still checked): ending or
    /// describing a session must work after it was revoked.
    pub async fn claims_of_any_session(
        &self,
        metadata: &MetadataMap,
    ) -> Result<DelegatedClaims, SessionError> {
        Ok(self
            .verifier
            .verify_ignoring_revocation(bearer(metadata)?)
            .await?)
    }

    /// When the identity exchange revoked `sid` (Unix ms), `None` while it
    /// is live; an error when the local copy of the list is stale.
    pub fn revoked_at(&self, sid: &str) -> Result<Option<i64>, TokenError> {
        self.revocations.revoked_at(sid)
    }

    /// Whether `sid` is revoked by the identity exchange now; an error when
    /// the local copy of the list is stale (fail closed).
    pub async fn is_revoked(&self, sid: &str) -> Result<bool, TokenError> {
        self.revocations.is_revoked(sid).await
    }
}

impl From<DelegatedClaims> for Caller {
    fn from(claims: DelegatedClaims) -> Self {
        Self {
            idp: claims
                .user
                .get("idp")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            sid: claims.sid,
            user: claims.sub,
            agent: claims.act.sub,
            expires_at_ms: claims.exp.saturating_mul(1000),
            intent: claims.authorization_details,
        }
    }
}

/// The token of the single `authorization: Bearer <token>` metadata entry.
fn bearer(metadata: &MetadataMap) -> Result<&str, SessionError> {
    const MALFORMED: SessionError =
        SessionError::NoBearer("`authorization` metadata is not one `Bearer <token>`");
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or(SessionError::NoBearer(
        "missing `authorization` metadata: the call must carry the agent's delegated token as `Bearer <token>`",
    ))?;
    if values.next().is_some() {
        return Err(MALFORMED);
    }
    let (scheme, token) = value
        .to_str()
        .ok()
        .and_then(|text| text.split_once(' '))
        .ok_or(MALFORMED)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(MALFORMED);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn sessions() -> SessionsConfig {
        SessionsConfig {
            token_issuer: "https://tether.example.com".into(),
            audience: "https://tether.example.com/facade".into(),
            jwks_url: "https://identity:7002/.well-known/jwks.json".into(),
            identity_exchange: "https://identity:7002".into(),
            revocation_poll_ms: 1_000,
            revocation_max_staleness_ms: 10_000,
        }
    }

    #[test]
    fn sessions_are_validated() {
        assert!(sessions().validate().is_ok());
        let bad = [
            SessionsConfig {
                jwks_url: "identity/jwks.json".into(),
                ..sessions()
            },
            SessionsConfig {
                identity_exchange: "https://".into(),
                ..sessions()
            },
            SessionsConfig {
                token_issuer: "https://tether .example.com".into(),
                ..sessions()
            },
            SessionsConfig {
                audience: String::new(),
                ..sessions()
            },
            SessionsConfig {
                revocation_poll_ms: 10,
                ..sessions()
            },
            SessionsConfig {
                revocation_max_staleness_ms: 1_500,
                ..sessions()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    fn with(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append("authorization", MetadataValue::try_from(*v).unwrap());
        }
        m
    }

    #[test]
    fn bearer_metadata_is_parsed_strictly() {
        assert_eq!(bearer(&with(&["Bearer a.b.c"])).unwrap(), "a.b.c");
        assert_eq!(bearer(&with(&["bearer a.b.c"])).unwrap(), "a.b.c");
        for bad in [
            &[][..],
            &["a.b.c"],
            &["Basic dXNlcjpwdw=="],
            &["Bearer "],
            &["Bearer a.b.c extra"],
            &["Bearer  a.b.c"],
            &["Bearer a.b.c", "Bearer d.e.f"],
        ] {
            let err = bearer(&with(bad)).unwrap_err();
            assert!(matches!(err, SessionError::NoBearer(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let err = bearer(&with(&["Basic s3cr3t-token"])).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
