//! Typed answers of the facade, converted from the generated messages.
//!
//! Anything the contract says must not happen (an unspecified decision, an
//! ALLOW without its credential) becomes [`Error::Protocol`]: the caller
//! never has to interpret a half-filled message, and never mistakes one for
//! an allow. Credentials redact themselves in `Debug` and have no
//! `Display`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tether_proto::facade::v1 as pb;

use crate::error::Error;

/// A Cedar entity: its type as declared in the policy schema and its id,
/// e.g. `Entity::new("Employee", "1042")` or `Entity::new("Action", "read")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entity {
    pub entity_type: String,
    pub id: String,
}

impl Entity {
    pub fn new(entity_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            entity_type: entity_type.into(),
            id: id.into(),
        }
    }

    pub(crate) fn to_pb(&self) -> pb::EntityUid {
        pb::EntityUid {
            r#type: self.entity_type.clone(),
            id: self.id.clone(),
        }
    }

    fn from_pb(uid: Option<pb::EntityUid>) -> Option<Self> {
        uid.map(|uid| Self::new(uid.r#type, uid.id))
    }
}

/// Cedar's form: `Employee::"1042"`.
impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{:?}", self.entity_type, self.id)
    }
}

/// The policy decision. DECISION_UNSPECIFIED never reaches the caller: it
/// is an [`Error::Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Not allowed until the user approves the attached ticket and the
    /// request is made again.
    ApprovalRequired,
}

impl Decision {
    /// The contract's name (`ALLOW`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::ApprovalRequired => "APPROVAL_REQUIRED",
        }
    }

    fn from_pb(value: i32) -> Result<Self, Error> {
        match pb::Decision::try_from(value) {
            Ok(pb::Decision::Allow) => Ok(Self::Allow),
            Ok(pb::Decision::Deny) => Ok(Self::Deny),
            Ok(pb::Decision::ApprovalRequired) => Ok(Self::ApprovalRequired),
            _ => Err(Error::Protocol(format!(
                "decision `{value}` is not one of ALLOW, DENY, APPROVAL_REQUIRED"
            ))),
        }
    }
}

/// The answer to an authorization question (Authorize), or the decision
/// behind an AcquireCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub decision: Decision,
    /// The policies that determined the decision (empty for a default deny).
    pub policy_ids: Vec<String>,
    /// Human-readable reasons, safe to show to the developer.
    pub reasons: Vec<String>,
    /// The policy set's version (`sha256:<hex>`).
    pub policy_version: String,
    /// This decision's id in Tether's audit log.
    pub decision_id: String,
    /// With [`Decision::ApprovalRequired`]: the ticket asking the user.
    pub approval: Option<ApprovalRequired>,
    /// With [`Decision::Allow`] when it relied on an earlier approval: the
    /// grant that was used (one use consumed).
    pub grant: Option<ApprovalGrant>,
}

impl Authorization {
    /// Whether the action is allowed now.
    pub fn is_allowed(&self) -> bool {
        self.decision == Decision::Allow
    }

    pub(crate) fn from_authorize(response: pb::AuthorizeResponse) -> Result<Self, Error> {
        let decision = Decision::from_pb(response.decision)?;
        Self::new(
            decision,
            response.policy_ids,
            response.reasons,
            response.policy_version,
            response.decision_id,
            response.approval_required,
            response.approval_grant,
        )
    }

    fn new(
        decision: Decision,
        policy_ids: Vec<String>,
        reasons: Vec<String>,
        policy_version: String,
        decision_id: String,
        approval: Option<pb::ApprovalRequired>,
        grant: Option<pb::ApprovalGrant>,
    ) -> Result<Self, Error> {
        let approval = match (decision, approval) {
            (Decision::ApprovalRequired, Some(required)) => {
                Some(ApprovalRequired::from_pb(required)?)
            }
            (Decision::ApprovalRequired, None) => {
                return Err(Error::Protocol(
                    "APPROVAL_REQUIRED without its ticket".into(),
                ));
            }
            // Only meaningful with APPROVAL_REQUIRED; ignored otherwise.
            (_, _) => None,
        };
        let grant = match decision {
            Decision::Allow => grant.map(ApprovalGrant::from_pb),
            _ => None,
        };
        Ok(Self {
            decision,
            policy_ids,
            reasons,
            policy_version,
            decision_id,
            approval,
            grant,
        })
    }
}

/// The outcome of AcquireCredential. A DENY is an error
/// (PERMISSION_DENIED, reason `POLICY_DENIED`), never this.
#[derive(Debug)]
pub enum Acquired {
    /// Allowed: the credential and its lease.
    Issued(Box<IssuedCredential>),
    /// The user must approve first; `approval` in the authorization holds
    /// the ticket. (With `wait_for_approval`, returned only if the request
    /// made again after the approval needed another one.)
    ApprovalRequired(Box<Authorization>),
}

impl Acquired {
    /// The credential, if one was issued.
    pub fn issued(self) -> Option<IssuedCredential> {
        match self {
            Self::Issued(issued) => Some(*issued),
            Self::ApprovalRequired(_) => None,
        }
    }

    pub(crate) fn from_pb(response: pb::AcquireCredentialResponse) -> Result<Self, Error> {
        let decision = Decision::from_pb(response.decision)?;
        use pb::acquire_credential_response::Outcome;
        match (decision, response.outcome) {
            (Decision::Allow, Some(Outcome::Issued(issued))) => {
                let authorization = Authorization::new(
                    decision,
                    response.policy_ids,
                    response.reasons,
                    response.policy_version,
                    response.decision_id,
                    None,
                    response.approval_grant,
                )?;
                let credential = Credential::from_pb(issued.credential)?;
                let lease = Lease::from_pb(
                    issued
                        .lease
                        .ok_or_else(|| Error::Protocol("a credential without its lease".into()))?,
                );
                Ok(Self::Issued(Box::new(IssuedCredential {
                    credential,
                    lease,
                    authorization,
                })))
            }
            (Decision::ApprovalRequired, Some(Outcome::ApprovalRequired(required))) => {
                Ok(Self::ApprovalRequired(Box::new(Authorization::new(
                    decision,
                    response.policy_ids,
                    response.reasons,
                    response.policy_version,
                    response.decision_id,
                    Some(required),
                    None,
                )?)))
            }
            (decision, _) => Err(Error::Protocol(format!(
                "AcquireCredential answered {decision:?} without the matching outcome"
            ))),
        }
    }
}

/// A credential issued for this session, and the lease that bounds it.
#[derive(Debug)]
pub struct IssuedCredential {
    /// SECRET. Use it, never log it (its `Debug` is redacted).
    pub credential: Credential,
    pub lease: Lease,
    /// The decision that allowed it (policy ids, decision id, grant used).
    pub authorization: Authorization,
}

/// SECRET: a just-in-time credential. It stops working when its lease ends
/// or the session ends. `Debug` shows only its kind.
#[non_exhaustive]
pub enum Credential {
    /// A database login (Vault's database secrets engine).
    Database(DatabaseCredential),
    /// Any other dynamic secret: key/value data.
    Generic(GenericCredential),
}

impl Credential {
    fn from_pb(credential: Option<pb::Credential>) -> Result<Self, Error> {
        match credential.and_then(|c| c.kind) {
            Some(pb::credential::Kind::Database(db)) => Ok(Self::Database(DatabaseCredential {
                username: db.username,
                password: db.password,
            })),
            Some(pb::credential::Kind::Generic(generic)) => Ok(Self::Generic(GenericCredential {
                data: generic.data.into_iter().collect(),
            })),
            None => Err(Error::Protocol("an ALLOW without a credential".into())),
        }
    }

    /// The database login, for a database profile.
    pub fn database(&self) -> Option<&DatabaseCredential> {
        match self {
            Self::Database(db) => Some(db),
            Self::Generic(_) => None,
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Database(db) => f.debug_tuple("Database").field(db).finish(),
            Self::Generic(generic) => f.debug_tuple("Generic").field(generic).finish(),
        }
    }
}

/// SECRET: a generated database user and password.
pub struct DatabaseCredential {
    username: String,
    password: String,
}

impl DatabaseCredential {
    /// A database login (for an agent's own tests; the facade's come from
    /// [`crate::Session::acquire_credential`]).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// SECRET: the generated user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// SECRET: the generated password.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for DatabaseCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseCredential")
            .field("username", &format_args!("<redacted>"))
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// SECRET: key/value secret data.
pub struct GenericCredential {
    data: BTreeMap<String, String>,
}

impl GenericCredential {
    /// SECRET: one value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// SECRET: all of it.
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.data
    }
}

impl std::fmt::Debug for GenericCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericCredential")
            .field("entries", &self.data.len())
            .field("data", &format_args!("<redacted>"))
            .finish()
    }
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Never sent by a correct facade; treat the credential as not usable.
    Unspecified,
    Issuing,
    /// The credential works until the lease's `expires_at`.
    Active,
    /// Revocation requested, not yet confirmed: treat the credential as gone.
    Revoking,
    Revoked,
    Expired,
    /// Tether keeps retrying the revocation: treat the credential as gone.
    RevocationFailed,
    /// The issuance was interrupted; nothing was handed out.
    Abandoned,
}

impl LeaseStatus {
    fn from_pb(value: i32) -> Self {
        match pb::LeaseStatus::try_from(value) {
            Ok(pb::LeaseStatus::Issuing) => Self::Issuing,
            Ok(pb::LeaseStatus::Active) => Self::Active,
            Ok(pb::LeaseStatus::Revoking) => Self::Revoking,
            Ok(pb::LeaseStatus::Revoked) => Self::Revoked,
            Ok(pb::LeaseStatus::Expired) => Self::Expired,
            Ok(pb::LeaseStatus::RevocationFailed) => Self::RevocationFailed,
            Ok(pb::LeaseStatus::Abandoned) => Self::Abandoned,
            _ => Self::Unspecified,
        }
    }
}

/// A credential lease. Contains no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: String,
    pub profile: String,
    /// The TTL actually granted (never the requested one).
    pub granted_ttl: Option<Duration>,
    pub issued_at: Option<SystemTime>,
    /// When the credential stops working at the latest.
    pub expires_at: Option<SystemTime>,
    pub status: LeaseStatus,
    pub revoked_at: Option<SystemTime>,
}

impl Lease {
    fn from_pb(lease: pb::Lease) -> Self {
        Self {
            status: LeaseStatus::from_pb(lease.status),
            lease_id: lease.lease_id,
            profile: lease.profile,
            granted_ttl: duration(lease.granted_ttl),
            issued_at: time(lease.issued_at),
            expires_at: time(lease.expires_at),
            revoked_at: time(lease.revoked_at),
        }
    }
}

/// The life of an approval ticket. PENDING is the only non-terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
    /// The session ended first.
    Cancelled,
    /// The approval could not be completed or verified; it does not count.
    Failed,
}

impl ApprovalState {
    pub fn is_terminal(self) -> bool {
        self != Self::Pending
    }

    /// The contract's name (`APPROVED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Denied => "DENIED",
            Self::Expired => "EXPIRED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    fn from_pb(value: i32) -> Result<Self, Error> {
        match pb::ApprovalState::try_from(value) {
            Ok(pb::ApprovalState::Pending) => Ok(Self::Pending),
            Ok(pb::ApprovalState::Approved) => Ok(Self::Approved),
            Ok(pb::ApprovalState::Denied) => Ok(Self::Denied),
            Ok(pb::ApprovalState::Expired) => Ok(Self::Expired),
            Ok(pb::ApprovalState::Cancelled) => Ok(Self::Cancelled),
            Ok(pb::ApprovalState::Failed) => Ok(Self::Failed),
            _ => Err(Error::Protocol(format!(
                "approval state `{value}` is not a known state"
            ))),
        }
    }
}

/// One approval request to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTicket {
    pub ticket_id: String,
    pub state: ApprovalState,
    pub action: Option<Entity>,
    pub resource: Option<Entity>,
    /// The sentence shown on the user's device (with its confirmation
    /// code), e.g. "Offboard employee 1042?".
    pub binding_message: String,
    pub created_at: Option<SystemTime>,
    /// When a PENDING ticket expires.
    pub expires_at: Option<SystemTime>,
    pub decided_at: Option<SystemTime>,
    /// Why it is in its terminal state; empty while PENDING.
    pub state_reason: String,
}

impl ApprovalTicket {
    pub(crate) fn from_pb(ticket: pb::ApprovalTicket) -> Result<Self, Error> {
        if ticket.ticket_id.is_empty() {
            return Err(Error::Protocol("an approval ticket without an id".into()));
        }
        Ok(Self {
            state: ApprovalState::from_pb(ticket.state)?,
            ticket_id: ticket.ticket_id,
            action: Entity::from_pb(ticket.action),
            resource: Entity::from_pb(ticket.resource),
            binding_message: ticket.binding_message,
            created_at: time(ticket.created_at),
            expires_at: time(ticket.expires_at),
            decided_at: time(ticket.decided_at),
            state_reason: ticket.state_reason,
        })
    }
}

/// A pending approval: the ticket, and how long to wait before asking
/// again when not watching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequired {
    pub ticket: ApprovalTicket,
    pub retry_after: Option<Duration>,
}

impl ApprovalRequired {
    fn from_pb(required: pb::ApprovalRequired) -> Result<Self, Error> {
        let ticket = required
            .ticket
            .ok_or_else(|| Error::Protocol("APPROVAL_REQUIRED without its ticket".into()))?;
        Ok(Self {
            ticket: ApprovalTicket::from_pb(ticket)?,
            retry_after: duration(required.retry_after),
        })
    }
}

/// An approval that covers repeats of the same request (same session,
/// action, resource and intent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalGrant {
    pub grant_id: String,
    pub ticket_id: String,
    pub expires_at: Option<SystemTime>,
    /// Uses left after this one.
    pub remaining_uses: u32,
}

impl ApprovalGrant {
    fn from_pb(grant: pb::ApprovalGrant) -> Self {
        Self {
            grant_id: grant.grant_id,
            ticket_id: grant.ticket_id,
            expires_at: time(grant.expires_at),
            remaining_uses: grant.remaining_uses,
        }
    }
}

/// What StartSession returned, without the token (which stays inside the
/// [`crate::Session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id (`sid`): not secret, log it to correlate with
    /// Tether's audit log and traces.
    pub session_id: String,
    /// The user the agent acts for.
    pub user_subject: String,
    /// The agent id Tether recognised.
    pub agent_id: String,
    /// The scope granted, space-separated.
    pub scope: String,
    /// When the delegated token expires.
    pub expires_at: Option<SystemTime>,
    /// When the session ends at the latest.
    pub session_expires_at: Option<SystemTime>,
}

impl SessionInfo {
    pub(crate) fn from_pb(response: &pb::StartSessionResponse) -> Self {
        Self {
            session_id: response.session_id.clone(),
            user_subject: response.user_subject.clone(),
            agent_id: response.agent_id.clone(),
            scope: response.scope.clone(),
            expires_at: time(response.expires_at),
            session_expires_at: time(response.session_expires_at),
        }
    }
}

/// Whether a session can still act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    /// Ended (or reported as unspecified, which the contract says to treat
    /// as ended).
    Ended,
}

/// A session as GetSession describes it, with its leases (never their
/// credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetails {
    pub session_id: String,
    pub state: SessionState,
    pub user_subject: String,
    /// Current actor first.
    pub actor_chain: Vec<String>,
    pub scope: String,
    /// The declared intent (`authorization_details` JSON).
    pub intent: String,
    pub token_issued_at: Option<SystemTime>,
    pub token_expires_at: Option<SystemTime>,
    pub session_expires_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// Newest first.
    pub leases: Vec<Lease>,
}

impl SessionDetails {
    pub(crate) fn from_pb(session: Option<pb::Session>) -> Result<Self, Error> {
        let session =
            session.ok_or_else(|| Error::Protocol("GetSession without a session".into()))?;
        Ok(Self {
            state: match pb::SessionState::try_from(session.state) {
                Ok(pb::SessionState::Active) => SessionState::Active,
                _ => SessionState::Ended,
            },
            session_id: session.session_id,
            user_subject: session.user_subject,
            actor_chain: session.actor_chain,
            scope: session.scope,
            intent: session.intent,
            token_issued_at: time(session.token_issued_at),
            token_expires_at: time(session.token_expires_at),
            session_expires_at: time(session.session_expires_at),
            ended_at: time(session.ended_at),
            leases: session.leases.into_iter().map(Lease::from_pb).collect(),
        })
    }
}

/// Proof of what EndSession did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReceipt {
    pub session_id: String,
    pub ended_at: Option<SystemTime>,
    /// From then on none of the session's tokens is accepted anywhere.
    pub session_revoked_at: Option<SystemTime>,
    /// The session had already been ended before this call.
    pub already_ended: bool,
    /// Leases confirmed gone.
    pub revoked_leases: Vec<Lease>,
    /// Leases whose revocation Tether is still confirming.
    pub pending_leases: Vec<Lease>,
    pub cancelled_ticket_ids: Vec<String>,
    pub revoked_grant_ids: Vec<String>,
    /// This receipt's record in Tether's audit log.
    pub receipt_id: String,
}

impl SessionReceipt {
    pub(crate) fn from_pb(receipt: Option<pb::SessionReceipt>) -> Result<Self, Error> {
        let receipt =
            receipt.ok_or_else(|| Error::Protocol("EndSession without a receipt".into()))?;
        Ok(Self {
            session_id: receipt.session_id,
            ended_at: time(receipt.ended_at),
            session_revoked_at: time(receipt.session_revoked_at),
            already_ended: receipt.already_ended,
            revoked_leases: receipt
                .revoked_leases
                .into_iter()
                .map(Lease::from_pb)
                .collect(),
            pending_leases: receipt
                .pending_leases
                .into_iter()
                .map(Lease::from_pb)
                .collect(),
            cancelled_ticket_ids: receipt.cancelled_ticket_ids,
            revoked_grant_ids: receipt.revoked_grant_ids,
            receipt_id: receipt.receipt_id,
        })
    }
}

/// A protobuf timestamp as a `SystemTime` (`None` when unset or before
/// 1970).
fn time(ts: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A protobuf duration as a `Duration` (`None` when unset or negative).
pub(crate) fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_never_shows_its_secret() {
        let db = Credential::Database(DatabaseCredential {
            username: "v-agent-hr-readonly-x1y2".into(),
            password: "A1a-very-secret-password".into(),
        });
        let generic = Credential::Generic(GenericCredential {
            data: BTreeMap::from([("api_key".to_owned(), "sk-live-secret-value".to_owned())]),
        });
        for text in [
            format!("{db:?}"),
            format!("{db:#?}"),
            format!("{generic:?}"),
        ] {
            for secret in [
                "v-agent-hr-readonly-x1y2",
                "A1a-very-secret-password",
                "sk-live-secret-value",
                "api_key",
            ] {
                assert!(!text.contains(secret), "{text}");
            }
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(
            db.database().map(DatabaseCredential::password),
            Some("A1a-very-secret-password")
        );
    }

    #[test]
    fn contract_violations_are_errors_never_allows() {
        for decision in [0, 4, -1] {
            let err = Authorization::from_authorize(pb::AuthorizeResponse {
                decision,
                ..Default::default()
            })
            .unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        }
        // APPROVAL_REQUIRED without a ticket.
        let err = Authorization::from_authorize(pb::AuthorizeResponse {
            decision: pb::Decision::ApprovalRequired as i32,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        // ALLOW without the credential, or with a ticket instead.
        for outcome in [
            None,
            Some(pb::acquire_credential_response::Outcome::ApprovalRequired(
                pb::ApprovalRequired::default(),
            )),
            Some(pb::acquire_credential_response::Outcome::Issued(
                pb::IssuedCredential {
                    credential: None,
                    lease: Some(pb::Lease::default()),
                },
            )),
        ] {
            let err = Acquired::from_pb(pb::AcquireCredentialResponse {
                decision: pb::Decision::Allow as i32,
                outcome,
                ..Default::default()
            })
            .unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        }
        // A DENY is never an OK AcquireCredential answer.
        let err = Acquired::from_pb(pb::AcquireCredentialResponse {
            decision: pb::Decision::Deny as i32,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        // An unspecified approval state is not "not yet decided".
        let err = ApprovalTicket::from_pb(pb::ApprovalTicket {
            ticket_id: "t-1".into(),
            state: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    }

    #[test]
    fn timestamps_and_durations_out_of_range_are_unset() {
        assert_eq!(time(None), None);
        assert_eq!(
            time(Some(prost_types::Timestamp {
                seconds: -1,
                nanos: 0
            })),
            None
        );
        assert_eq!(
            time(Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 2_000_000_000
            })),
            None
        );
        assert_eq!(
            time(Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 5
            })),
            UNIX_EPOCH.checked_add(Duration::new(10, 5))
        );
        assert_eq!(
            duration(Some(prost_types::Duration {
                seconds: -5,
                nanos: 0
            })),
            None
        );
        assert_eq!(
            duration(Some(prost_types::Duration {
                seconds: 90,
                nanos: 0
            })),
            Some(Duration::from_secs(90))
        );
    }
}
