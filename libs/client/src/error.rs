//! The one error type of the client, and how a gRPC status becomes one.
//!
//! A status keeps what a program branches on: the code, the contract's
//! `google.rpc.ErrorInfo` reason (domain `tether` only) and metadata, the
//! `google.rpc.RetryInfo` delay, and how many attempts were made. Its text
//! never carries a token or a credential: the facade never puts one there,
//! and the client scrubs anything shaped like a JWT and every secret it
//! knows of before keeping a message, in case a proxy on the way does.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

use crate::types::ApprovalTicket;

/// The `google.rpc.ErrorInfo` domain of Tether's errors.
pub const ERROR_DOMAIN: &str = "tether";

/// Longest status message kept (the facade's are one short sentence).
const MAX_MESSAGE_CHARS: usize = 512;

/// What a call to the facade, or the client's own checks, refused.
///
/// Every variant means the action did not happen (fail closed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The facade, or the transport to it, answered with a non-OK status.
    #[error(transparent)]
    Rpc(#[from] RpcError),

    /// An approval ended in a state other than APPROVED (the user denied
    /// it, it expired, the session ended, or it could not be verified).
    #[error(
        "approval `{}` was not granted: {}{}",
        .ticket.ticket_id,
        .ticket.state.as_str(),
        reason_suffix(&.ticket.state_reason)
    )]
    ApprovalNotGranted { ticket: Box<ApprovalTicket> },

    /// An approval was still pending when the caller's wait ran out. The
    /// ticket lives on; it can be watched again.
    #[error("approval `{ticket_id}` was still pending after {waited:?}")]
    ApprovalTimedOut { ticket_id: String, waited: Duration },

    /// Refused by the client before any call: configuration, key, or
    /// request.
    #[error("{0}")]
    Invalid(String),

    /// The facade answered something the contract does not allow (a
    /// missing field, an unspecified decision). Treated as a refusal.
    #[error("unexpected answer from the facade: {0}")]
    Protocol(String),
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

impl Error {
    /// The gRPC code of a status; for the client's own errors, the code
    /// that says the same: INVALID_ARGUMENT (refused locally),
    /// PERMISSION_DENIED (approval not granted), DEADLINE_EXCEEDED (still
    /// pending), INTERNAL (contract broken).
    pub fn code(&self) -> Code {
        match self {
            Self::Rpc(e) => e.code,
            Self::ApprovalNotGranted { .. } => Code::PermissionDenied,
            Self::ApprovalTimedOut { .. } => Code::DeadlineExceeded,
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Protocol(_) => Code::Internal,
        }
    }

    /// The contract's `ErrorInfo` reason (e.g. `POLICY_DENIED`), when the
    /// facade gave one.
    pub fn reason(&self) -> Option<&str> {
        self.rpc().and_then(RpcError::reason)
    }

    /// When trying again can succeed (`RetryInfo`), when the facade said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rpc().and_then(RpcError::retry_after)
    }

    /// The status, for a status error.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            Self::Rpc(e) => Some(e),
            _ => None,
        }
    }

    /// The policies that denied a POLICY_DENIED request (from the
    /// `ErrorInfo` metadata); empty otherwise or for a default deny.
    pub fn policy_ids(&self) -> Vec<String> {
        self.rpc()
            .and_then(|e| e.metadata().get("policy_ids"))
            .and_then(|ids| serde_json::from_str(ids).ok())
            .unwrap_or_default()
    }

    /// The ticket of an approval that was not granted.
    pub fn ticket(&self) -> Option<&ApprovalTicket> {
        match self {
            Self::ApprovalNotGranted { ticket } => Some(ticket),
            _ => None,
        }
    }
}

/// A non-OK gRPC status, as far as a program needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    code: Code,
    message: String,
    reason: Option<String>,
    metadata: BTreeMap<String, String>,
    retry_after: Option<Duration>,
    attempts: u32,
}

/// `UNAVAILABLE (DEPENDENCY_UNAVAILABLE): message (after 3 attempts)`.
impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(code_name(&self.code))?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        write!(f, ": {}", self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// Keeps what matters of `status`, scrubbed of `secrets`.
    /// `deadline_passed`: the call's own deadline had passed when it
    /// failed; tonic reports its client-side timer as CANCELLED, which is
    /// a DEADLINE_EXCEEDED as far as the contract is concerned.
    pub(crate) fn from_status(
        status: &tonic::Status,
        secrets: &[&str],
        deadline_passed: bool,
    ) -> Self {
        let code = match status.code() {
            Code::Cancelled if deadline_passed => Code::DeadlineExceeded,
            code => code,
        };
        let (reason, metadata) = match status.get_details_error_info() {
            Some(info) if info.domain == ERROR_DOMAIN => (
                Some(scrub(&info.reason, secrets)),
                info.metadata
                    .into_iter()
                    .map(|(k, v)| (scrub(&k, secrets), scrub(&v, secrets)))
                    .collect(),
            ),
            _ => (None, BTreeMap::new()),
        };
        let retry_after = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        Self {
            code,
            message: scrub(status.message(), secrets),
            reason,
            metadata,
            retry_after,
            attempts: 1,
        }
    }

    /// An error the client raises itself with a status code (its deadline
    /// passed while waiting for a message, say).
    pub(crate) fn local(code: Code, message: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
            reason: None,
            metadata: BTreeMap::new(),
            retry_after: None,
            attempts: 1,
        }
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    /// The status message: a short sentence for the developer.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `ErrorInfo` reason (domain `tether`), e.g. `SESSION_ENDED`.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The `ErrorInfo` metadata, e.g. `dependency`, `policy_ids`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The `RetryInfo` delay.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// How many attempts were made before giving up (1 when the status was
    /// not one the contract lets the client retry).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// The canonical name of a gRPC code (`UNAVAILABLE`).
pub fn code_name(code: &Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

const REDACTED: &str = "<redacted>";

/// `text` clipped, with control characters escaped, every known secret
/// and every JWT-shaped word replaced.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, REDACTED);
    }
    let mut unjwt = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |out: &mut String, word: &mut String| {
        out.push_str(if looks_like_jwt(word) { REDACTED } else { word });
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=') {
            word.push(c);
        } else {
            flush(&mut unjwt, &mut word);
            unjwt.push(c);
        }
    }
    flush(&mut unjwt, &mut word);
    tether_runtime::clip_to(&unjwt, MAX_MESSAGE_CHARS)
}

/// A compact JWS or JWE: a base64url JSON header (`eyJ`), then three or
/// five dot-separated parts.
fn looks_like_jwt(word: &str) -> bool {
    let parts = word.split('.').count();
    word.starts_with("eyJ") && (parts == 3 || parts == 5)
}
