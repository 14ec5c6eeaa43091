//! The one mapping from domain errors to gRPC status codes.
//!
//! Every service error enum implements [`ServiceError`]; handlers return
//! `Result<_, E>` and convert at the edge with [`into_status`]. The code says
//! what happened; the message helps the caller; the `google.rpc.ErrorInfo`
//! detail (domain `tether`) names the reason for programs, and a
//! `google.rpc.RetryInfo` says when trying again can succeed; internal detail
//! is logged and never returned.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `google.rpc.ErrorInfo` domain of every Tether error.
pub const ERROR_DOMAIN: &str = "tether";

/// What kind of failure an error is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorCode {
    /// The request is malformed; retrying it unchanged will fail again.
    InvalidArgument,
    /// No valid credentials.
    Unauthenticated,
    /// Authenticated, and refused.
    PermissionDenied,
    /// The system is not in a state that allows this (e.g. session ended).
    FailedPrecondition,
    NotFound,
    /// Over a size, count or rate limit.
    ResourceExhausted,
    /// A dependency is unreachable or not ready; retry later.
    Unavailable,
    DeadlineExceeded,
    /// A bug or an unexpected state; details are logged, not returned.
    Internal,
}

impl ServiceErrorCode {
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::NotFound => Code::NotFound,
            Self::ResourceExhausted => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
        }
    }
}

/// Implemented by every error that can reach a gRPC caller.
pub trait ServiceError: std::error::Error {
    fn error_code(&self) -> ServiceErrorCode;

    /// The message returned to the caller. Defaults to the `Display` text;
    /// override it when that text carries internal detail.
    fn public_message(&self) -> String {
        self.to_string()
    }

    /// The `google.rpc.ErrorInfo` reason (UPPER_SNAKE_CASE), when the error
    /// has one a program should branch on.
    fn reason(&self) -> Option<String> {
        None
    }

    /// `google.rpc.ErrorInfo` metadata (never a secret).
    fn error_metadata(&self) -> HashMap<String, String> {
        HashMap::new()
    }

    /// How long to wait before trying again (`google.rpc.RetryInfo`).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// The code and message a caller is told for `err`: internal detail becomes
/// "internal error" (and is logged by [`into_status`], not here).
pub fn public_parts<E: ServiceError + ?Sized>(err: &E) -> (Code, String) {
    let code = err.error_code();
    let message = if code == ServiceErrorCode::Internal {
        "internal error".to_owned()
    } else {
        err.public_message()
    };
    (code.grpc_code(), message)
}

/// Converts a domain error to a `Status`, logging what the caller is not told.
///
/// Every status carries a `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`]):
/// its reason is the error's own [`ServiceError::reason`] or, when it has
/// none, the code's name (`INVALID_ARGUMENT`, `INTERNAL`, …), so a program
/// can always branch on the detail without parsing the message.
pub fn into_status<E: ServiceError>(err: E) -> Status {
    let code = err.error_code();
    if code == ServiceErrorCode::Internal {
        tracing::error!(error = %err, "internal error");
    } else {
        tracing::debug!(code = ?code, error = %err, "request refused");
    }
    let (grpc_code, message) = public_parts(&err);
    let mut details = ErrorDetails::new();
    let (reason, metadata) = match err.reason() {
        Some(reason) => (reason, err.error_metadata()),
        // The metadata belongs to a reason; an internal error says nothing more.
        None => (code_reason(grpc_code).to_owned(), HashMap::new()),
    };
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    if let Some(delay) = err.retry_after() {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(grpc_code, message, details)
}

/// The default `ErrorInfo` reason: the gRPC code's canonical name.
fn code_reason(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::NotFound => "NOT_FOUND",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("context must be a JSON object")]
        Bad,
        #[error("database at postgres://admin:hunter2@db failed")]
        Boom,
    }

    impl ServiceError for E {
        fn error_code(&self) -> ServiceErrorCode {
            match self {
                Self::Bad => ServiceErrorCode::InvalidArgument,
                Self::Boom => ServiceErrorCode::Internal,
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("over the limit")]
    struct Limited;

    impl ServiceError for Limited {
        fn error_code(&self) -> ServiceErrorCode {
            ServiceErrorCode::ResourceExhausted
        }
        fn reason(&self) -> Option<String> {
            Some("APPROVAL_RATE_LIMITED".into())
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(42))
        }
    }

    #[test]
    fn reason_and_retry_become_status_details() {
        let s = into_status(Limited);
        assert_eq!(s.code(), Code::ResourceExhausted);
        let details = s.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "APPROVAL_RATE_LIMITED");
        assert_eq!(info.domain, "tether");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(42))
        );
        let bad = into_status(E::Bad).get_error_details();
        let info = bad.error_info().unwrap();
        assert_eq!(
            info.reason, "INVALID_ARGUMENT",
            "the code names a reason-less error"
        );
        assert_eq!(info.domain, "tether");
        assert!(bad.retry_info().is_none());
    }

    #[test]
    fn maps_code_and_hides_internal_detail() {
        let s = into_status(E::Bad);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "context must be a JSON object");
        let s = into_status(E::Boom);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "internal error");
        let details = s.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "INTERNAL");
        assert!(info.metadata.is_empty());
        assert!(
            !format!("{s:?}").contains("hunter2"),
            "no detail in any part"
        );
    }
}
