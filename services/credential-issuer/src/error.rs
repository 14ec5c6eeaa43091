//! Errors of the credential issuer and their gRPC codes.
//!
//! Public messages never carry a secret, a Vault token, a store URL or a
//! Vault response body; the internal detail is logged by `into_status`.

use tether_runtime::{ServiceError, ServiceErrorCode};

use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("unknown credential profile `{0}`")]
    UnknownProfile(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("session `{session}` already holds {limit} live leases, the limit")]
    TooManyLeases { session: String, limit: u32 },
    #[error("no lease `{0}` in this session")]
    NotFound(String),
    #[error("vault/openbao is unavailable ({0}); no credential was issued")]
    Vault(VaultError),
    #[error(
        "vault/openbao did not answer in time; no credential was issued, and any lease it created will be revoked"
    )]
    VaultNoAnswer(VaultError),
    #[error("vault/openbao is unavailable ({0}); the lease keeps its current expiry")]
    VaultRenew(VaultError),
    #[error("the lease registry is unavailable: {0}")]
    Registry(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError for IssuerError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::InvalidArgument(_) | Self::UnknownProfile(_) => ServiceErrorCode::InvalidArgument,
            Self::FailedPrecondition(_) => ServiceErrorCode::FailedPrecondition,
            Self::TooManyLeases { .. } => ServiceErrorCode::ResourceExhausted,
            Self::NotFound(_) => ServiceErrorCode::NotFound,
            Self::Vault(_) | Self::VaultNoAnswer(_) | Self::VaultRenew(_) | Self::Registry(_) => {
                ServiceErrorCode::Unavailable
            }
            Self::Internal(_) => ServiceErrorCode::Internal,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Vault(e) => format!(
                "vault/openbao is unavailable ({}); no credential was issued",
                vault_kind(e)
            ),
            Self::VaultNoAnswer(_) => "vault/openbao did not answer in time; no credential was issued, and any lease it created will be revoked".into(),
            Self::VaultRenew(e) => format!(
                "vault/openbao is unavailable ({}); the lease keeps its current expiry",
                vault_kind(e)
            ),
            Self::Registry(_) => "the lease registry is unavailable; nothing was issued".into(),
            other => other.to_string(),
        }
    }
}

fn vault_kind(e: &VaultError) -> &'static str {
    match e {
        VaultError::Unreachable(_) => "unreachable",
        VaultError::NoAnswer(_) => "no answer",
        VaultError::Sealed => "sealed",
        VaultError::Status { .. } => "refused the request",
        VaultError::NotAuthenticated(_) => "not logged in",
        VaultError::Decode(_) => "unexpected response",
    }
}
