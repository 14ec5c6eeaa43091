//! Errors of the agent facade and their gRPC codes (the contract's
//! `ErrorReason` names in `google.rpc.ErrorInfo`).
//!
//! A downstream failure becomes one of these through [`downstream`]; the
//! downstream message is logged, never returned (it may describe internals).

use std::collections::HashMap;
use std::time::Duration;

use tether_runtime::{ServiceError, ServiceErrorCode};
use tether_token::{SessionError, TokenError};
use tonic::Code;
use tonic_types::StatusExt as _;

/// The internal services, as named in `ErrorInfo.metadata.dependency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Identity,
    Policy,
    Credentials,
    Approval,
    /// The audit log's store.
    Audit,
    /// The risk monitoring's store.
    Monitoring,
    /// The user's IdP (behind the approval service).
    Idp,
    /// Vault/OpenBao (behind the credential issuer).
    Vault,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Policy => "policy",
            Self::Credentials => "credentials",
            Self::Approval => "approval",
            Self::Audit => "audit",
            Self::Monitoring => "monitoring",
            Self::Idp => "idp",
            Self::Vault => "vault",
        }
    }

    /// The dependency a downstream service's own DEPENDENCY_UNAVAILABLE
    /// names, in the contract's terms: the IdP behind the approval service,
    /// Vault behind the issuer, the identity exchange behind either (it
    /// could not check the token); anything else is the service itself.
    fn behind(self, named: Option<&str>) -> Self {
        match named {
            Some("idp") => Self::Idp,
            Some("vault") => Self::Vault,
            Some("identity-exchange") => Self::Identity,
            _ => self,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FacadeError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    TokenMissing(&'static str),
    #[error("the delegated token was refused: {0}")]
    Token(TokenError),
    /// A downstream service refused the token the facade had accepted
    /// (it expired or was revoked in between).
    #[error("the delegated token was refused by {0}")]
    TokenRefused(&'static str),
    #[error("the session has ended; start a new session if the user still wants the work done")]
    SessionEnded,
    #[error("the user token was refused: {0}")]
    UserTokenInvalid(String),
    #[error("the agent assertion was refused: {0}")]
    AgentAssertionInvalid(String),
    #[error("delegation not allowed: {0}")]
    DelegationNotAllowed(String),
    #[error("denied by policy{}", describe(.reasons))]
    PolicyDenied {
        policy_ids: Vec<String>,
        policy_version: String,
        decision_id: String,
        reasons: Vec<String>,
    },
    #[error("no credential profile `{0}`")]
    UnknownProfile(String),
    #[error("profile `{profile}` does not serve `{action}` on `{resource_type}`")]
    ProfileNotAllowed {
        profile: String,
        action: String,
        resource_type: String,
    },
    /// Over a limit downstream (approval rate limit, cool-down, lease
    /// limit): passed through with its reason and retry delay.
    #[error("{message}")]
    Limited {
        reason: String,
        message: String,
        retry_after: Option<Duration>,
        metadata: HashMap<String, String>,
    },
    #[error("no approval ticket `{0}` in this session")]
    TicketNotFound(String),
    /// Session administration: no session with this (well-formed) id.
    #[error("no session `{0}`")]
    SessionNotFound(String),
    /// Session administration without an operator's client certificate
    /// (or on a plaintext server, where nobody has an identity).
    #[error("session administration needs an operator's client certificate (mTLS)")]
    OperatorUnauthenticated,
    /// The agent is quarantined by the monitoring (StartSession).
    #[error(
        "agent `{agent}` is quarantined until {until_ms} (Unix ms) by rule `{rule}`; an operator can lift it (`tether quarantine lift {quarantine_id}`)"
    )]
    AgentQuarantined {
        agent: String,
        quarantine_id: String,
        rule: String,
        until_ms: i64,
    },
    /// Quarantine administration: no quarantine with this (well-formed) id.
    #[error("no quarantine `{0}`")]
    QuarantineNotFound(String),
    /// Quarantine administration on a facade whose monitoring is off.
    #[error(
        "monitoring is not enabled on this facade (`[monitoring] enabled = false`): there are no quarantines"
    )]
    MonitoringDisabled,
    #[error("{dependency:?} is unavailable: {detail}")]
    Dependency {
        dependency: Dependency,
        detail: String,
    },
    #[error("the deadline passed before {0} answered; nothing was allowed")]
    DeadlineExceeded(&'static str),
    #[error("{0}")]
    Internal(String),
}

fn describe(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

impl From<SessionError> for FacadeError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NoBearer(why) => Self::TokenMissing(why),
            SessionError::Token(TokenError::SessionRevoked) => Self::SessionEnded,
            SessionError::Token(e) => Self::Token(e),
        }
    }
}

/// Interprets a downstream call's failure. Callers handle the codes whose
/// meaning depends on the call (PERMISSION_DENIED of Exchange, NOT_FOUND of
/// an approval) before falling back to this.
pub fn downstream(dependency: Dependency, status: &tonic::Status) -> FacadeError {
    let info = status.get_details_error_info();
    let reason = info.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
    tracing::debug!(
        dependency = dependency.as_str(),
        code = ?status.code(),
        reason = %reason,
        message = %tether_runtime::clip(status.message()),
        "downstream call failed"
    );
    match status.code() {
        Code::DeadlineExceeded => FacadeError::DeadlineExceeded(dependency.as_str()),
        Code::ResourceExhausted => FacadeError::Limited {
            reason: match (reason.is_empty(), dependency) {
                (false, _) => reason,
                // The issuer's only RESOURCE_EXHAUSTED: the session's lease
                // limit.
                (true, Dependency::Credentials) => "LEASE_LIMIT".into(),
                (true, _) => "DEPENDENCY_UNAVAILABLE".into(),
            },
            message: tether_runtime::clip(status.message()),
            retry_after: status.get_details_retry_info().and_then(|r| r.retry_delay),
            metadata: info.map(|i| i.metadata).unwrap_or_default(),
        },
        Code::Unauthenticated if reason == "SESSION_REVOKED" => FacadeError::SessionEnded,
        Code::Unauthenticated => FacadeError::TokenRefused(dependency.as_str()),
        Code::InvalidArgument => {
            FacadeError::InvalidRequest(tether_runtime::clip(status.message()))
        }
        Code::FailedPrecondition => FacadeError::SessionEnded,
        _ => FacadeError::Dependency {
            dependency: if reason == "DEPENDENCY_UNAVAILABLE" {
                dependency.behind(
                    info.as_ref()
                        .and_then(|i| i.metadata.get("dependency"))
                        .map(String::as_str),
                )
            } else {
                dependency
            },
            detail: format!(
                "{:?}: {}",
                status.code(),
                tether_runtime::clip(status.message())
            ),
        },
    }
}

impl ServiceError for FacadeError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::InvalidRequest(_) | Self::UnknownProfile(_) => ServiceErrorCode::InvalidArgument,
            Self::TokenMissing(_)
            | Self::SessionEnded
            | Self::TokenRefused(_)
            | Self::UserTokenInvalid(_)
            | Self::AgentAssertionInvalid(_)
            | Self::OperatorUnauthenticated => ServiceErrorCode::Unauthenticated,
            Self::Token(e) if e.is_unavailable() => ServiceErrorCode::Unavailable,
            Self::Token(_) => ServiceErrorCode::Unauthenticated,
            Self::DelegationNotAllowed(_)
            | Self::AgentQuarantined { .. }
            | Self::PolicyDenied { .. }
            | Self::ProfileNotAllowed { .. } => ServiceErrorCode::PermissionDenied,
            Self::Limited { .. } => ServiceErrorCode::ResourceExhausted,
            Self::TicketNotFound(_) | Self::SessionNotFound(_) | Self::QuarantineNotFound(_) => {
                ServiceErrorCode::NotFound
            }
            Self::MonitoringDisabled => ServiceErrorCode::FailedPrecondition,
            Self::Dependency { .. } => ServiceErrorCode::Unavailable,
            Self::DeadlineExceeded(_) => ServiceErrorCode::DeadlineExceeded,
            Self::Internal(_) => ServiceErrorCode::Internal,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Dependency { dependency, .. } => format!(
                "{} is unavailable; nothing was allowed. Retry with backoff",
                dependency.as_str()
            ),
            Self::Token(e) if e.is_unavailable() => "cannot check the delegated token now (the identity exchange's keys or session revocation list are unavailable); nothing was allowed".into(),
            Self::Token(TokenError::Expired) => {
                "the delegated token has expired, which ends the session; start a new session".into()
            }
            Self::Token(_) => "the delegated token is not valid".into(),
            other => other.to_string(),
        }
    }

    fn reason(&self) -> Option<String> {
        Some(
            match self {
                Self::InvalidRequest(_) => "INVALID_REQUEST",
                Self::TokenMissing(_) => "TOKEN_MISSING",
                Self::Token(e) if e.is_unavailable() => "DEPENDENCY_UNAVAILABLE",
                Self::Token(TokenError::Expired) => "TOKEN_EXPIRED",
                Self::Token(_) | Self::TokenRefused(_) => "TOKEN_INVALID",
                Self::SessionEnded => "SESSION_ENDED",
                Self::UserTokenInvalid(_) => "USER_TOKEN_INVALID",
                Self::AgentAssertionInvalid(_) => "AGENT_ASSERTION_INVALID",
                Self::DelegationNotAllowed(_) => "DELEGATION_NOT_ALLOWED",
                Self::PolicyDenied { .. } => "POLICY_DENIED",
                Self::UnknownProfile(_) => "UNKNOWN_PROFILE",
                Self::ProfileNotAllowed { .. } => "PROFILE_NOT_ALLOWED",
                Self::Limited { reason, .. } => return Some(reason.clone()),
                Self::TicketNotFound(_) => "TICKET_NOT_FOUND",
                Self::SessionNotFound(_) => "SESSION_NOT_FOUND",
                Self::AgentQuarantined { .. } => "AGENT_QUARANTINED",
                Self::QuarantineNotFound(_) => "QUARANTINE_NOT_FOUND",
                Self::MonitoringDisabled => "MONITORING_DISABLED",
                // The caller table's reason for the same refusal.
                Self::OperatorUnauthenticated => "PEER_UNAUTHENTICATED",
                Self::Dependency { .. } => "DEPENDENCY_UNAVAILABLE",
                Self::DeadlineExceeded(_) | Self::Internal(_) => return None,
            }
            .to_owned(),
        )
    }

    fn error_metadata(&self) -> HashMap<String, String> {
        match self {
            Self::PolicyDenied {
                policy_ids,
                policy_version,
                decision_id,
                ..
            } => HashMap::from([
                (
                    "policy_ids".to_owned(),
                    serde_json::to_string(policy_ids).unwrap_or_else(|_| "[]".into()),
                ),
                ("policy_version".to_owned(), policy_version.clone()),
                ("decision_id".to_owned(), decision_id.clone()),
            ]),
            Self::Dependency { dependency, .. } => {
                HashMap::from([("dependency".to_owned(), dependency.as_str().to_owned())])
            }
            Self::Token(e) if e.is_unavailable() => {
                HashMap::from([("dependency".to_owned(), "identity".to_owned())])
            }
            Self::Limited { metadata, .. } => metadata.clone(),
            Self::AgentQuarantined {
                quarantine_id,
                rule,
                until_ms,
                ..
            } => HashMap::from([
                ("quarantine_id".to_owned(), quarantine_id.clone()),
                ("rule".to_owned(), rule.clone()),
                ("until_ms".to_owned(), until_ms.to_string()),
            ]),
            _ => HashMap::new(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
