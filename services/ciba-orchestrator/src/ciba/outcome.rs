//! How one CIBA request ended.

/// The terminal result of one request. Only [`Outcome::Approved`] approves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The user approved, and the ID token verified (signature, `iss`,
    /// `aud`, `exp`) with `sub` equal to the requested user.
    Approved(Approval),
    /// Someone approved with another account: the ID token verified, but
    /// its `sub` is not the requested user. Never an approval.
    ApprovedByOtherUser {
        /// The verified `sub` of the ID token.
        approver: String,
    },
    /// The user declined (`access_denied`).
    Denied {
        /// The IdP's `error_description`, clipped.
        description: Option<String>,
    },
    /// No answer in time.
    Expired(ExpiredBy),
    /// The request cannot complete: the IdP no longer knows it, or the
    /// answer could not be verified. Never an approval.
    Failed(Failure),
}

/// A verified approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The ID token's `sub` (equals the requested user).
    pub approver: String,
    /// `auth_time`, when the IdP gave it.
    pub auth_time: Option<i64>,
    /// `acr`, when the IdP gave it.
    pub acr: Option<String>,
    /// `amr`, when the IdP gave it.
    pub amr: Vec<String>,
}

/// Who noticed the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredBy {
    /// The token endpoint answered `expired_token`.
    Idp,
    /// The client's own deadline passed (the IdP need not say).
    Deadline,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token endpoint answered `invalid_grant` (unknown, already used,
    /// or long-expired `auth_req_id`).
    InvalidGrant,
    /// The ID token failed verification; the reason never contains the
    /// token.
    IdTokenRejected(String),
    /// The token endpoint answered success with something unusable (no ID
    /// token, not JSON).
    BadTokenResponse(String),
}

impl Outcome {
    /// True only for a verified approval by the requested user.
    pub fn is_approved(&self) -> bool {
        matches!(self, Self::Approved(_))
    }

    /// The verified approver of an approval by the requested user.
    pub fn approver(&self) -> Option<&str> {
        match self {
            Self::Approved(approval) => Some(&approval.approver),
            _ => None,
        }
    }

    /// One line on why the request ended, for a ticket's `state_reason`
    /// and logs. Never contains a token; caller-visible text is clipped.
    pub fn reason(&self) -> String {
        match self {
            Self::Approved(_) => "approved by the user".into(),
            // The other account is logged by the orchestrator, never shown
            // to the agent.
            Self::ApprovedByOtherUser { .. } => {
                "failed: ID token `sub` mismatch: approved with another account, not the requested user".into()
            }
            Self::Denied { description: None } => "denied by the user".into(),
            Self::Denied {
                description: Some(d),
            } => format!("denied by the user: {d}"),
            Self::Expired(ExpiredBy::Idp) => "expired: the IdP reported no answer in time".into(),
            Self::Expired(ExpiredBy::Deadline) => "expired: no answer before the deadline".into(),
            Self::Failed(Failure::InvalidGrant) => {
                "failed: the IdP no longer knows the request (`invalid_grant`)".into()
            }
            Self::Failed(Failure::IdTokenRejected(why)) => {
                format!("failed: the ID token was rejected: {why}")
            }
            Self::Failed(Failure::BadTokenResponse(why)) => {
                format!("failed: unusable token response: {why}")
            }
        }
    }
}
