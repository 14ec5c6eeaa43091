//! Errors of the credential issuer and their gRPC codes.
//!
//! Public messages never carry a secret, a Vault token, a store URL or a
//! Vault response body; the internal detail is logged by `into_status`.
//! No message ever carries the caller's bearer token: `TokenError` never
//! includes it, and the token is never formatted anywhere else.

use tether_runtime::{ServiceError, ServiceErrorCode};
use tether_token::TokenError;

use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// No usable `authorization: Bearer <token>` metadata.
    #[error("{0}")]
    NoBearer(&'static str),
    /// The delegated token was refused, or could not be checked
    /// (`TokenError::is_unavailable`: fail closed).
    #[error("the delegated token was refused: {0}")]
    Token(#[from] TokenError),
    /// The request names a session other than the token's.
    #[error("the bearer token is for another session")]
    OtherSession,
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

impl From<tether_token::SessionError> for IssuerError {
    fn from(e: tether_token::SessionError) -> Self {
        match e {
            tether_token::SessionError::NoBearer(why) => Self::NoBearer(why),
            tether_token::SessionError::Token(e) => Self::Token(e),
        }
    }
}

impl ServiceError for IssuerError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::NoBearer(_) => ServiceErrorCode::Unauthenticated,
            Self::Token(e) if e.is_unavailable() => ServiceErrorCode::Unavailable,
            Self::Token(_) => ServiceErrorCode::Unauthenticated,
            Self::OtherSession => ServiceErrorCode::PermissionDenied,
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
            Self::Token(TokenError::SessionRevoked) => "session revoked".into(),
            // The detail (which URL, what failed) is logged, not returned.
            Self::Token(e) if e.is_unavailable() => "cannot check the delegated token now (the identity exchange's keys or session revocation list are unavailable); nothing was done".into(),
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

    /// The reasons the facade acts on: a revoked session, the session's
    /// lease limit, and which dependency is unavailable (the approval
    /// orchestrator's convention).
    fn reason(&self) -> Option<String> {
        Some(
            match self {
                Self::Token(TokenError::SessionRevoked) => "SESSION_REVOKED",
                Self::Token(e) if e.is_unavailable() => "DEPENDENCY_UNAVAILABLE",
                Self::Vault(_)
                | Self::VaultNoAnswer(_)
                | Self::VaultRenew(_)
                | Self::Registry(_) => "DEPENDENCY_UNAVAILABLE",
                Self::TooManyLeases { .. } => "LEASE_LIMIT",
                _ => return None,
            }
            .to_owned(),
        )
    }

    fn error_metadata(&self) -> std::collections::HashMap<String, String> {
        let dependency = match self {
            Self::Token(e) if e.is_unavailable() => "identity-exchange",
            Self::Vault(_) | Self::VaultNoAnswer(_) | Self::VaultRenew(_) => "vault",
            Self::Registry(_) => "lease-registry",
            _ => return std::collections::HashMap::new(),
        };
        std::collections::HashMap::from([("dependency".to_owned(), dependency.to_owned())])
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
