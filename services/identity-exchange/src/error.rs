//! Token exchange errors: RFC 6749 §5.2 / RFC 8693 codes, and their gRPC
//! status codes (one mapping for both transports).

use tether_runtime::{ServiceError, ServiceErrorCode};
use tether_token::TokenError;

/// The RFC error codes this service answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidGrant,
    InvalidClient,
    InvalidTarget,
    InvalidScope,
    UnauthorizedClient,
    UnsupportedGrantType,
    /// RFC 9449 §5: the DPoP proof is missing what this request needs.
    InvalidDpopProof,
}

impl OAuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidClient => "invalid_client",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidScope => "invalid_scope",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidDpopProof => "invalid_dpop_proof",
        }
    }
}

/// Why nothing was minted. `Clone`: one store failure refuses every
/// exchange of its group commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// Refused, with the RFC code and a description safe to return.
    #[error("{description}")]
    OAuth {
        code: OAuthCode,
        description: String,
    },
    /// The IdP's keys or the store cannot be reached: a deny, retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected state; logged, not returned.
    #[error("{0}")]
    Internal(String),
    /// The client is over its request rate; nothing was done.
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// What an operator named does not exist (session administration
    /// only; the OAuth endpoints never answer with it).
    #[error("{0}")]
    NotFound(String),
}

impl ExchangeError {
    pub fn oauth(code: OAuthCode, description: impl Into<String>) -> Self {
        Self::OAuth {
            code,
            description: description.into(),
        }
    }

    /// A subject token problem (`invalid_grant`), or UNAVAILABLE when the
    /// keys could not be fetched.
    pub fn subject(err: TokenError) -> Self {
        if err.is_unavailable() {
            return Self::Unavailable(format!("cannot verify the subject token: {err}"));
        }
        Self::oauth(
            OAuthCode::InvalidGrant,
            format!("subject token rejected: {err}"),
        )
    }

    /// An actor token problem (`invalid_client`), or UNAVAILABLE.
    pub fn actor(err: TokenError) -> Self {
        Self::assertion("actor token", err)
    }

    /// A problem with an agent's assertion presented as `what` (`actor
    /// token`, `client assertion`): `invalid_client`, or UNAVAILABLE.
    pub fn assertion(what: &str, err: TokenError) -> Self {
        if err.is_unavailable() {
            return Self::Unavailable(format!("cannot verify the {what}: {err}"));
        }
        Self::oauth(OAuthCode::InvalidClient, format!("{what} rejected: {err}"))
    }

    pub fn store(err: sqlx::Error) -> Self {
        Self::Unavailable(format!("session store unavailable: {err}"))
    }

    /// The RFC error code, for HTTP bodies and gRPC ErrorInfo.
    pub fn rfc_code(&self) -> &'static str {
        match self {
            Self::OAuth { code, .. } => code.as_str(),
            Self::Unavailable(_) => "temporarily_unavailable",
            Self::Internal(_) => "server_error",
            // RFC 8628 §3.5's code for "poll less often"; RFC 6749 has none.
            Self::RateLimited { .. } => "slow_down",
            // Not an OAuth error: only the gRPC session administration.
            Self::NotFound(_) => "not_found",
        }
    }

    /// The HTTP status of every OAuth endpoint.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Self::OAuth {
                code: OAuthCode::InvalidClient,
                ..
            } => http::StatusCode::UNAUTHORIZED,
            Self::OAuth { .. } => http::StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            Self::RateLimited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) => http::StatusCode::NOT_FOUND,
        }
    }

    /// The gRPC status (with the RFC code as its `ErrorInfo` reason).
    pub fn into_status(self) -> tonic::Status {
        tether_runtime::into_status(self)
    }
}

impl ServiceError for ExchangeError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::OAuth { code, .. } => match code {
                OAuthCode::InvalidRequest | OAuthCode::UnsupportedGrantType => {
                    ServiceErrorCode::InvalidArgument
                }
                OAuthCode::InvalidGrant
                | OAuthCode::InvalidClient
                | OAuthCode::InvalidDpopProof => ServiceErrorCode::Unauthenticated,
                OAuthCode::InvalidTarget
                | OAuthCode::InvalidScope
                | OAuthCode::UnauthorizedClient => ServiceErrorCode::PermissionDenied,
            },
            Self::Unavailable(_) => ServiceErrorCode::Unavailable,
            Self::Internal(_) => ServiceErrorCode::Internal,
            Self::RateLimited { .. } => ServiceErrorCode::ResourceExhausted,
            Self::NotFound(_) => ServiceErrorCode::NotFound,
        }
    }

    fn reason(&self) -> Option<String> {
        Some(self.rfc_code().to_ascii_uppercase())
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after_secs } => {
                Some(std::time::Duration::from_secs(*retry_after_secs))
            }
            _ => None,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => {
                "a dependency is unavailable; nothing was minted, retry later".into()
            }
            other => other.to_string(),
        }
    }
}
