//! Errors of the policy decision point and their gRPC codes.

use tether_policy::RequestError;
use tether_runtime::{ServiceError, ServiceErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum PdpError {
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("request_id is {0} bytes, the limit is 128")]
    RequestIdTooLong(usize),
    #[error("`{0}` contains a control character")]
    ControlCharacter(&'static str),
    /// An AuthZEN body that is not a well-formed request (not JSON, a
    /// repeated key, a required member missing or of the wrong type).
    #[error("{0}")]
    Malformed(String),
    #[error("the body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request is {size} bytes, the limit is {limit}")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("batch has {size} requests, the limit is {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("no valid policy set is loaded")]
    NoPolicySet,
}

impl ServiceError for PdpError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::Request(RequestError::Invalid(_))
            | Self::Missing(_)
            | Self::RequestIdTooLong(_)
            | Self::ControlCharacter(_)
            | Self::Malformed(_) => ServiceErrorCode::InvalidArgument,
            // INVARIANT: every RESOURCE_EXHAUSTED here is a size or a count,
            // never a rate: the HTTP binding answers them all with 413.
            Self::Request(RequestError::TooLarge(_))
            | Self::RequestTooLarge { .. }
            | Self::BatchTooLarge { .. }
            | Self::BodyTooLarge { .. } => ServiceErrorCode::ResourceExhausted,
            Self::NoPolicySet => ServiceErrorCode::Unavailable,
        }
    }
}
