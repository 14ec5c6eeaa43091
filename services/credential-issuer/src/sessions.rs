//! Which session a call acts for: the agent's delegated token, carried in the
//! call's `authorization: Bearer <token>` metadata and verified locally
//! against the identity exchange's keys and session revocation list.
//!
//! The session id, user, agent and expiry come from the verified token,
//! never from request fields. The token itself is never logged, put in a
//! span or returned in an error: it is read here, handed to the verifier,
//! and dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_runtime::TlsConfig;
use tether_token::{
    DelegatedTokenVerifier, GrpcRevocationFeed, JwksCache, RevocationList, spawn_revocation_sync,
};
use tonic::metadata::MetadataMap;

use crate::config::SessionsConfig;
use crate::error::IssuerError;

/// How long start-up waits for the first key fetch and revocation sync
/// before serving anyway (requests then fail closed until they succeed).
const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// The session a verified delegated token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// `sid`.
    pub sid: String,
    /// `sub`: the user the agent acts for.
    pub user: String,
    /// The current `act.sub`: the agent acting.
    pub agent: String,
    /// The token's `exp`, in Unix milliseconds: nothing issued for this
    /// call outlives it.
    pub expires_at_ms: i64,
}

/// Verifies the bearer token of a call.
#[derive(Debug)]
pub(crate) struct Sessions {
    verifier: DelegatedTokenVerifier<JwksCache, Arc<RevocationList>>,
}

impl Sessions {
    /// Builds the identity exchange clients with the shared builder, makes
    /// a first attempt at fetching its keys and revocation list, and spawns
    /// the task that keeps the list current until `shutdown` resolves.
    pub(crate) async fn start(
        config: &SessionsConfig,
        tls: &TlsConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let clients = tether_runtime::client::Clients::new(tls)
            .context("building the identity exchange clients")?;
        let channel = clients
            .grpc(&config.identity_exchange, "identity-exchange")
            .context("building the identity exchange gRPC client")?;
        let http = clients
            .https("identity-exchange")
            .context("building the identity exchange HTTPS client")?;
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
                    tracing::warn!(error = %e, "identity exchange not reachable at start-up; Issue and Renew fail UNAVAILABLE until it is");
                }
            }
            Err(_) => {
                tracing::warn!(
                    wait_ms = STARTUP_WAIT.as_millis(),
                    "identity exchange did not answer at start-up; Issue and Renew fail UNAVAILABLE until it does"
                );
            }
        }
        let task =
            spawn_revocation_sync(Arc::clone(&list), feed, config.revocation_poll(), shutdown);
        let verifier = DelegatedTokenVerifier::new(
            config.token_issuer.clone(),
            config.audience.clone(),
            keys,
            list,
        );
        Ok((Self { verifier }, task))
    }

    /// The session the call's bearer token proves: signature, `iss`, `aud`,
    /// `exp` and `typ` checked, and the session not revoked.
    pub(crate) async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, IssuerError> {
        let token = bearer(metadata)?;
        let claims = self.verifier.verify(token).await?;
        Ok(Caller {
            sid: claims.sid,
            user: claims.sub,
            agent: claims.act.sub,
            expires_at_ms: claims.exp.saturating_mul(1000),
        })
    }
}

/// The token of the single `authorization: Bearer <token>` metadata entry.
fn bearer(metadata: &MetadataMap) -> Result<&str, IssuerError> {
    const MALFORMED: IssuerError =
        IssuerError::NoBearer("`authorization` metadata is not one `Bearer <token>`");
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or(IssuerError::NoBearer(
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
            assert!(matches!(err, IssuerError::NoBearer(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let err = bearer(&with(&["Basic s3cr3t-token"])).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
