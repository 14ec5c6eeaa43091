//! Errors of the approval orchestrator and their gRPC codes.
//!
//! Public messages never carry a token, a client secret, a store URL or an
//! IdP response body; the internal detail is logged by `into_status`.

use std::collections::HashMap;
use std::time::Duration;

use tether_runtime::{ServiceError, ServiceErrorCode};
use tether_token::TokenError;

use crate::ciba::CibaError;
use crate::store::Limited;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No usable `authorization: Bearer <token>` metadata.
    #[error("{0}")]
    NoBearer(&'static str),
    /// The delegated token was refused, or could not be checked
    /// (`TokenError::is_unavailable`: fail closed).
    #[error("the delegated token was refused: {0}")]
    Token(#[from] TokenError),
    /// The request names a session, user, agent or intent other than the
    /// token's.
    #[error("the bearer token is for another {0}")]
    NotTheCaller(&'static str),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("no ticket `{0}` in this session")]
    NotFound(String),
    #[error("{0}")]
    Limited(Limited),
    /// The IdP refused to start the authentication; nothing reached the
    /// phone.
    #[error("the IdP refused to ask the user: `{0}`; nothing was sent to the user's device")]
    IdpRefused(String),
    #[error("the IdP is unavailable ({0}); no approval was started")]
    IdpUnavailable(String),
    #[error("the ticket store is unavailable: {0}")]
    Store(#[from] sqlx::Error),
    /// This replica is stopping; the ticket is unaffected.
    #[error("the approval service is shutting down; the ticket is unaffected, watch again")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

impl From<tether_token::SessionError> for ApprovalError {
    fn from(e: tether_token::SessionError) -> Self {
        match e {
            tether_token::SessionError::NoBearer(why) => Self::NoBearer(why),
            tether_token::SessionError::Token(e) => Self::Token(e),
        }
    }
}

impl From<CibaError> for ApprovalError {
    fn from(e: CibaError) -> Self {
        match e {
            CibaError::Refused { error, .. } => Self::IdpRefused(error),
            CibaError::Unavailable(why) => Self::IdpUnavailable(why),
            CibaError::InvalidRequest(why) => Self::InvalidArgument(why),
            CibaError::Config(why) | CibaError::Internal(why) => Self::Internal(why),
        }
    }
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, after) = match self {
            Self::Rate { retry_after } => (
                "the user has had as many approval prompts as the rate limit allows",
                retry_after,
            ),
            Self::CoolDown { retry_after } => (
                "the user denied this action for this agent recently (cool-down)",
                retry_after,
            ),
            Self::Escalation { retry_after } => (
                "the user denied or ignored this agent's prompts too often; it may not prompt them again yet",
                retry_after,
            ),
        };
        write!(
            f,
            "{what}; nothing was sent to the user's device; retry in {} s",
            after.as_secs().max(1)
        )
    }
}

impl ServiceError for ApprovalError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::NoBearer(_) => ServiceErrorCode::Unauthenticated,
            Self::Token(e) if e.is_unavailable() => ServiceErrorCode::Unavailable,
            Self::Token(_) => ServiceErrorCode::Unauthenticated,
            Self::NotTheCaller(_) | Self::IdpRefused(_) => ServiceErrorCode::PermissionDenied,
            Self::InvalidArgument(_) => ServiceErrorCode::InvalidArgument,
            Self::FailedPrecondition(_) => ServiceErrorCode::FailedPrecondition,
            Self::NotFound(_) => ServiceErrorCode::NotFound,
            Self::Limited(_) => ServiceErrorCode::ResourceExhausted,
            Self::IdpUnavailable(_) | Self::Store(_) | Self::ShuttingDown => {
                ServiceErrorCode::Unavailable
            }
            Self::Internal(_) => ServiceErrorCode::Internal,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Token(TokenError::SessionRevoked) => "session revoked".into(),
            Self::Token(e) if e.is_unavailable() => "cannot check the delegated token now (the identity exchange's keys or session revocation list are unavailable); nothing was done".into(),
            Self::IdpUnavailable(_) => {
                "the IdP is unavailable; no approval was started. Retry with backoff".into()
            }
            Self::Store(_) => "the ticket store is unavailable; nothing was done".into(),
            other => other.to_string(),
        }
    }

    fn reason(&self) -> Option<String> {
        Some(
            match self {
                Self::Limited(Limited::Rate { .. }) => "APPROVAL_RATE_LIMITED",
                Self::Limited(Limited::CoolDown { .. } | Limited::Escalation { .. }) => {
                    "APPROVAL_COOL_DOWN"
                }
                Self::IdpUnavailable(_) | Self::Store(_) => "DEPENDENCY_UNAVAILABLE",
                Self::Token(e) if e.is_unavailable() => "DEPENDENCY_UNAVAILABLE",
                Self::IdpRefused(_) => "APPROVAL_REFUSED_BY_IDP",
                Self::ShuttingDown => "SHUTTING_DOWN",
                Self::Token(TokenError::SessionRevoked) => "SESSION_REVOKED",
                _ => return None,
            }
            .to_owned(),
        )
    }

    fn error_metadata(&self) -> HashMap<String, String> {
        let pair = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        match self {
            Self::IdpUnavailable(_) => pair("dependency", "idp"),
            Self::Store(_) => pair("dependency", "ticket-store"),
            Self::Token(e) if e.is_unavailable() => pair("dependency", "identity-exchange"),
            Self::Limited(Limited::Rate { .. }) => pair("rule", "prompts_per_user"),
            Self::Limited(Limited::CoolDown { .. }) => pair("rule", "cool_down"),
            Self::Limited(Limited::Escalation { .. }) => pair("rule", "escalation"),
            Self::IdpRefused(error) => pair("idp_error", error),
            _ => HashMap::new(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited(
                Limited::Rate { retry_after }
                | Limited::CoolDown { retry_after }
                | Limited::Escalation { retry_after },
            ) => Some(*retry_after),
            _ => None,
        }
    }
}
