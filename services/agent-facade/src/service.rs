//! The gRPC handlers of `tether.facade.v1.AgentGateway`: the policy
//! enforcement point. No policy or credential logic of its own: it asks the
//! identity exchange, the policy decision point, the approval orchestrator
//! and the credential issuer, and enforces their answers. Any failure on
//! the way is a deny.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tether_proto::approval::v1 as approval_pb;
use tether_proto::approval::v1::approval_orchestrator_client::ApprovalOrchestratorClient;
use tether_proto::credentials::v1 as credentials_pb;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::facade::v1 as pb;
use tether_proto::identity::v1 as identity_pb;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_proto::policy::v1 as policy_pb;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::client::InternalChannel;
use tether_runtime::clock::unix_now;
use tether_runtime::tls::PeerInfo;
use tether_runtime::{clip, into_status};
use tether_token::{DelegatedClaims, Sessions};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Request, Response, Status};

use crate::alerts::Alerts;
use crate::audit::{Audit, Story};
use crate::config::Config;
use crate::decision::{self, EntityData, Question, Uid};
use crate::error::{Dependency, FacadeError, downstream};
use crate::monitoring::{Events, Hit, Monitor, Quarantine, QuarantineKind, Risk};

const MAX_TOKEN_BYTES: usize = 16 * 1024;
const MAX_INTENT_BYTES: usize = 8 * 1024;
const MAX_SCOPE_BYTES: usize = 1024;
const MAX_SCOPE_TOKENS: usize = 64;
const MAX_PROFILE_BYTES: usize = 128;
const MAX_REASON_BYTES: usize = 256;
const MAX_TICKET_ID_BYTES: usize = 128;
const MAX_BINDING_CHARS: usize = 128;
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The four internal services, over the one client builder (mTLS,
/// deadlines, trace context).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub identity: IdentityExchangeClient<InternalChannel>,
    pub policy: PolicyDecisionClient<InternalChannel>,
    pub credentials: CredentialIssuerClient<InternalChannel>,
    pub approvals: ApprovalOrchestratorClient<InternalChannel>,
}

/// `tether.facade.v1.AgentGateway`, and the operators'
/// `tether.facade.v1.SessionAdmin` (in `admin.rs`) over the same state.
#[derive(Debug, Clone)]
pub struct FacadeService {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    config: Config,
    sessions: Sessions,
    pub(crate) upstreams: Upstreams,
    entities: EntityData,
    audit: Audit,
    pub(crate) monitor: Monitor,
    alerts: Alerts,
    ended: EndedSessions,
}

impl FacadeService {
    pub(crate) fn new(
        config: Config,
        sessions: Sessions,
        upstreams: Upstreams,
        entities: EntityData,
        audit: Audit,
        monitor: Monitor,
        alerts: Alerts,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                sessions,
                upstreams,
                entities,
                audit,
                monitor,
                alerts,
                ended: EndedSessions::default(),
            }),
        }
    }
}

/// The caller's bearer metadata value, forwarded unchanged to the services
/// that act for the session (they verify it themselves).
fn bearer_value(metadata: &MetadataMap) -> Option<AsciiMetadataValue> {
    metadata.get("authorization").cloned()
}

fn forward<T>(message: T, bearer: &AsciiMetadataValue) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

fn to_ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn check_len(field: &str, value: &str, limit: usize) -> Result<(), FacadeError> {
    if value.is_empty() {
        return Err(FacadeError::InvalidRequest(format!("missing `{field}`")));
    }
    if value.len() > limit {
        return Err(FacadeError::InvalidRequest(format!(
            "`{field}` is {} bytes, the limit is {limit}",
            value.len()
        )));
    }
    Ok(())
}

/// `intent`: a JSON array of objects, each with a string `type`.
fn check_intent(intent: &str) -> Result<(), FacadeError> {
    check_len("intent", intent, MAX_INTENT_BYTES)?;
    tether_policy::reject_duplicate_keys(intent)
        .map_err(|e| FacadeError::InvalidRequest(format!("`intent`: {e}")))?;
    let valid = match serde_json::from_str::<serde_json::Value>(intent) {
        Ok(serde_json::Value::Array(items)) => {
            !items.is_empty()
                && items.iter().all(|item| {
                    item.get("type")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|t| !t.is_empty())
                })
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(FacadeError::InvalidRequest(
            "`intent` must be RFC 9396 `authorization_details`: a JSON array of objects, each with a string `type`".into(),
        ))
    }
}

fn check_scope(scope: &str) -> Result<(), FacadeError> {
    if scope.len() > MAX_SCOPE_BYTES || scope.split_ascii_whitespace().count() > MAX_SCOPE_TOKENS {
        return Err(FacadeError::InvalidRequest(format!(
            "`scope` is limited to {MAX_SCOPE_TOKENS} values and {MAX_SCOPE_BYTES} bytes"
        )));
    }
    if scope
        .chars()
        .any(|c| c.is_control() || (!c.is_ascii_graphic() && c != ' '))
    {
        return Err(FacadeError::InvalidRequest(
            "`scope` must be space-separated printable ASCII (RFC 6749 §3.3)".into(),
        ));
    }
    Ok(())
}

/// How a decision came out, with what produced it.
#[derive(Debug)]
enum Decided {
    Allow {
        check: policy_pb::CheckResponse,
        grant: Option<Box<approval_pb::Grant>>,
    },
    Deny(policy_pb::CheckResponse),
    ApprovalRequired {
        check: policy_pb::CheckResponse,
        ticket: Box<approval_pb::Ticket>,
        /// A new ticket (the user is asked now), not one reused.
        created: bool,
    },
}

/// Sessions this facade ended, refused at once rather than after the next
/// sync of the session revocation list (which then knows them: an entry is
/// kept for the list's staleness limit, after which the list either has
/// synced past the revocation or refuses every token).
#[derive(Debug, Default)]
struct EndedSessions(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, i64)>>,
);

impl EndedSessions {
    fn insert(&self, sid: &str, keep: std::time::Duration) {
        let mut ended = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ended.retain(|_, (at, _)| at.elapsed() <= keep);
        ended.insert(sid.to_owned(), (std::time::Instant::now(), unix_now()));
    }

    fn contains(&self, sid: &str, keep: std::time::Duration) -> bool {
        self.ended_at(sid, keep).is_some()
    }

    /// When this facade ended `sid` (Unix seconds), while remembered.
    fn ended_at(&self, sid: &str, keep: std::time::Duration) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sid)
            .filter(|(at, _)| at.elapsed() <= keep)
            .map(|(_, unix)| *unix)
    }
}

/// Whose session is ended, for the records of its end: from its token
/// (the agent ending its own session) or from the identity exchange (an
/// operator naming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionOwner {
    pub sid: String,
    /// The agent that holds (or opened) the session.
    pub agent: String,
    /// The user's IdP (issuer URL), empty when not known.
    pub user_idp: String,
    pub user_sub: String,
}

impl SessionOwner {
    pub(crate) fn of_token(claims: &DelegatedClaims) -> Self {
        Self {
            sid: claims.sid.clone(),
            agent: claims.act.sub.clone(),
            user_idp: claims
                .user
                .get("idp")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            user_sub: claims.sub.clone(),
        }
    }
}

/// Who ends a session: named in its audit records and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndedBy {
    /// The session's agent, with its own token (EndSession).
    Agent,
    /// An operator, by the SPIFFE ID of their client certificate
    /// (SessionAdmin.EndSession).
    Operator(String),
    /// The monitoring, by the quarantine rule that fired.
    Monitoring(String),
}

impl EndedBy {
    /// `agent`, or the operator's SPIFFE ID.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Agent => "agent",
            Self::Operator(id) | Self::Monitoring(id) => id,
        }
    }
}

/// One agent call that acts for a session.
struct Call {
    claims: DelegatedClaims,
    bearer: AsciiMetadataValue,
    caller: Option<IpAddr>,
}

fn approval_state(state: approval_pb::TicketState) -> pb::ApprovalState {
    match state {
        approval_pb::TicketState::Pending => pb::ApprovalState::Pending,
        approval_pb::TicketState::Approved => pb::ApprovalState::Approved,
        approval_pb::TicketState::Denied => pb::ApprovalState::Denied,
        approval_pb::TicketState::Expired => pb::ApprovalState::Expired,
        approval_pb::TicketState::Cancelled => pb::ApprovalState::Cancelled,
        approval_pb::TicketState::Failed => pb::ApprovalState::Failed,
        approval_pb::TicketState::Unspecified => pb::ApprovalState::Unspecified,
    }
}

/// `Type::"id"` back into an entity uid (for tickets, which store the
/// Cedar form).
fn parse_cedar_uid(text: &str) -> Option<pb::EntityUid> {
    let at = text.find("::\"")?;
    let id: String = serde_json::from_str(&text[at + 2..]).ok()?;
    Some(pb::EntityUid {
        r#type: text[..at].to_owned(),
        id,
    })
}

fn ticket_pb(ticket: &approval_pb::Ticket) -> pb::ApprovalTicket {
    let mut message = ticket.binding_message.clone();
    if !ticket.confirmation_code.is_empty() && !message.contains(&ticket.confirmation_code) {
        message = format!("{message} Code: {}", ticket.confirmation_code);
    }
    pb::ApprovalTicket {
        ticket_id: ticket.ticket_id.clone(),
        state: approval_state(ticket.state()).into(),
        action: parse_cedar_uid(&ticket.action),
        resource: parse_cedar_uid(&ticket.resource),
        binding_message: message,
        created_at: ticket.created_at,
        expires_at: ticket.expires_at,
        decided_at: ticket.decided_at,
        state_reason: ticket.state_reason.clone(),
    }
}

fn grant_pb(grant: &approval_pb::Grant) -> pb::ApprovalGrant {
    pb::ApprovalGrant {
        grant_id: grant.grant_id.clone(),
        ticket_id: grant.ticket_id.clone(),
        expires_at: grant.expires_at,
        remaining_uses: grant.remaining_uses,
    }
}

fn lease_status(status: credentials_pb::LeaseStatus) -> pb::LeaseStatus {
    use credentials_pb::LeaseStatus as S;
    match status {
        S::Issuing => pb::LeaseStatus::Issuing,
        S::Active => pb::LeaseStatus::Active,
        S::Revoking => pb::LeaseStatus::Revoking,
        S::Revoked => pb::LeaseStatus::Revoked,
        S::Expired => pb::LeaseStatus::Expired,
        S::RevocationFailed => pb::LeaseStatus::RevocationFailed,
        S::Abandoned => pb::LeaseStatus::Abandoned,
        S::Unspecified => pb::LeaseStatus::Unspecified,
    }
}

pub(crate) fn lease_pb(lease: &credentials_pb::Lease) -> pb::Lease {
    pb::Lease {
        lease_id: lease.lease_id.clone(),
        profile: lease.profile.clone(),
        granted_ttl: lease.granted_ttl,
        issued_at: lease.issued_at,
        expires_at: lease.expires_at,
        status: lease_status(lease.status()).into(),
        revoked_at: lease.revoked_at,
    }
}

fn credential_pb(credential: credentials_pb::Credential) -> pb::Credential {
    use credentials_pb::credential::Kind;
    pb::Credential {
        kind: credential.kind.map(|kind| match kind {
            Kind::Database(db) => pb::credential::Kind::Database(pb::DatabaseCredential {
                username: db.username,
                password: db.password,
            }),
            Kind::Generic(generic) => {
                pb::credential::Kind::Generic(pb::GenericCredential { data: generic.data })
            }
        }),
    }
}

impl Inner {
    /// The verified claims of the call's bearer token (session live).
    async fn call(
        &self,
        metadata: &MetadataMap,
        peer: Option<IpAddr>,
    ) -> Result<Call, FacadeError> {
        let claims = self.sessions.claims(metadata).await?;
        if self
            .ended
            .contains(&claims.sid, self.config.sessions.revocation_max_staleness())
        {
            return Err(FacadeError::SessionEnded);
        }
        let bearer = bearer_value(metadata).ok_or(FacadeError::TokenMissing(
            "missing `authorization` metadata",
        ))?;
        let span = tracing::Span::current();
        span.record("session_id", claims.sid.as_str());
        span.record("agent", claims.act.sub.as_str());
        span.record("user", claims.sub.as_str());
        Ok(Call {
            caller: decision::caller_address(&self.config.network, peer, metadata),
            claims,
            bearer,
        })
    }

    async fn check(
        &self,
        question: &Question<'_>,
        decision_id: &str,
    ) -> Result<policy_pb::CheckResponse, FacadeError> {
        let request = question.check_request(
            &self.config.policy,
            &self.config.network,
            self.config.clock,
            &self.entities,
            decision_id,
        );
        self.upstreams
            .policy
            .clone()
            .check(request)
            .await
            .map(Response::into_inner)
            .map_err(|status| downstream(Dependency::Policy, &status))
    }

    /// The session's fresh risk and the policy's first answer on it.
    ///
    /// When the monitoring must read its store for the risk, the policy is
    /// asked with the risk this session was last assessed at while the
    /// store is read, at the same time; the answer is kept only when the
    /// fresh risk is that same risk, and the policy is asked again with
    /// the fresh one otherwise. So every answer rests on the fresh risk, a
    /// store that cannot answer denies, and the store's read costs no wait
    /// of its own when the risk has not moved.
    async fn assess_and_check(
        &self,
        question: &Question<'_>,
        call: &Call,
        decision_id: &str,
    ) -> Result<(Risk, policy_pb::CheckResponse), FacadeError> {
        if !self.monitor.enabled() || self.monitor.knows(&call.claims.sid, &call.claims.act.sub) {
            let risk = self.assess(call).await?;
            let check = self
                .check(
                    &Question {
                        risk: &risk,
                        ..*question
                    },
                    decision_id,
                )
                .await;
            return Ok((risk, check?));
        }
        let guess = self.monitor.guess(&call.claims.sid);
        let guessed = Question {
            risk: &guess,
            ..*question
        };
        let (fresh, guessed) = tokio::join!(self.assess(call), self.check(&guessed, decision_id));
        let fresh = fresh?;
        if fresh == guess {
            return Ok((fresh, guessed?));
        }
        let check = self
            .check(
                &Question {
                    risk: &fresh,
                    ..*question
                },
                decision_id,
            )
            .await;
        Ok((fresh, check?))
    }

    /// Decides `action` on `resource` for the session at its fresh risk,
    /// asking the user when a step-up policy says so, and re-deciding with
    /// the approval in context before anything is allowed on it.
    async fn decide(
        &self,
        call: &Call,
        action: &Uid,
        resource: &Uid,
        agent_context: &serde_json::Map<String, serde_json::Value>,
        decision_id: &str,
    ) -> Result<(Risk, Decided), FacadeError> {
        let asked = Question {
            claims: &call.claims,
            action,
            resource,
            agent_context,
            caller: call.caller,
            // Replaced by the assessed risk before the policy is asked.
            risk: self.monitor.baseline(),
            approval: None,
        };
        let (risk, check) = self.assess_and_check(&asked, call, decision_id).await?;
        let decided = self
            .decide_on(
                call,
                &Question {
                    risk: &risk,
                    ..asked
                },
                check,
                decision_id,
            )
            .await?;
        Ok((risk, decided))
    }

    /// [`FacadeService::decide`] from the policy's first answer on.
    async fn decide_on(
        &self,
        call: &Call,
        question: &Question<'_>,
        check: policy_pb::CheckResponse,
        decision_id: &str,
    ) -> Result<Decided, FacadeError> {
        let (action, resource) = (question.action, question.resource);
        let question = *question;
        match check.decision() {
            policy_pb::Decision::Allow => {
                return Ok(Decided::Allow { check, grant: None });
            }
            policy_pb::Decision::ApprovalRequired => {}
            // DENY, and anything unknown, is a deny.
            _ => return Ok(Decided::Deny(check)),
        }
        let step_up = check.step_up.clone().unwrap_or_default();
        let message = if step_up.binding_message.trim().is_empty() {
            format!(
                "Allow {} to {} {} {}?",
                call.claims.act.sub, action.id, resource.r#type, resource.id
            )
        } else {
            step_up.binding_message.clone()
        };
        let message: String = tether_policy::sanitize_binding_message(&message)
            .chars()
            .take(MAX_BINDING_CHARS)
            .collect();
        let approval = self
            .upstreams
            .approvals
            .clone()
            .request_approval(forward(
                approval_pb::RequestApprovalRequest {
                    session_id: call.claims.sid.clone(),
                    user_subject: call.claims.sub.clone(),
                    agent_id: call.claims.act.sub.clone(),
                    action: action.cedar(),
                    resource: resource.cedar(),
                    intent: call
                        .claims
                        .authorization_details
                        .as_ref()
                        .map(serde_json::Value::to_string)
                        .unwrap_or_default(),
                    binding_message: message,
                    delivery_mode: approval_pb::DeliveryMode::Unspecified.into(),
                    requested_expiry: None,
                    session_expires_at: Some(to_ts(call.claims.exp)),
                    policy_ids: step_up.policy_ids.clone(),
                    policy_version: check.policy_version.clone(),
                },
                &call.bearer,
            ))
            .await
            .map_err(|status| match status.code() {
                Code::PermissionDenied => FacadeError::Dependency {
                    dependency: Dependency::Approval,
                    detail: "the IdP refused to ask the user".into(),
                },
                _ => downstream(Dependency::Approval, &status),
            })?
            .into_inner();
        match approval.outcome() {
            approval_pb::RequestOutcome::GrantUsed => {
                let grant = approval
                    .grant
                    .ok_or_else(|| FacadeError::Internal("GRANT_USED without a grant".into()))?;
                record_approval(pb::ApprovalState::Approved, &grant.ticket_id);
                // INVARIANT: an approval never bypasses the policy: decide
                // again with it in context; only a step-up forbid yields.
                let approved = Question {
                    approval: Some((&grant.ticket_id, &grant.approver)),
                    ..question
                };
                let again = self.check(&approved, decision_id).await?;
                if again.decision() == policy_pb::Decision::Allow {
                    Ok(Decided::Allow {
                        check: again,
                        grant: Some(Box::new(grant)),
                    })
                } else {
                    Ok(Decided::Deny(again))
                }
            }
            approval_pb::RequestOutcome::TicketCreated
            | approval_pb::RequestOutcome::TicketReused => {
                let created = approval.outcome() == approval_pb::RequestOutcome::TicketCreated;
                let ticket = approval.ticket.ok_or_else(|| {
                    FacadeError::Internal("a ticket outcome without a ticket".into())
                })?;
                record_approval(approval_state(ticket.state()), &ticket.ticket_id);
                Ok(Decided::ApprovalRequired {
                    check,
                    ticket: Box::new(ticket),
                    created,
                })
            }
            approval_pb::RequestOutcome::Unspecified => Err(FacadeError::Dependency {
                dependency: Dependency::Approval,
                detail: "the approval service gave no outcome".into(),
            }),
        }
    }

    /// The risk of the call's next decision (the monitoring's, or the
    /// baseline when it is off). A monitoring store that cannot answer is
    /// a deny (DEPENDENCY_UNAVAILABLE), never a score of 0.
    async fn assess(&self, call: &Call) -> Result<Risk, FacadeError> {
        let risk = self
            .monitor
            .assess(&call.claims.sid, &call.claims.act.sub)
            .await?;
        let span = tracing::Span::current();
        span.record("risk_score", risk.score);
        span.record("risk_level", risk.level);
        Ok(risk)
    }

    /// Counts `events` for `owner`'s session and agent and enforces the
    /// rules that fire. `true` when `owner`'s session was quarantined by
    /// them (it has ended).
    pub(crate) async fn observe(
        &self,
        owner: &SessionOwner,
        events: &Events,
        risk: Option<&Risk>,
    ) -> Result<bool, FacadeError> {
        let hits = self
            .monitor
            .record(&owner.sid, &owner.agent, events)
            .await?;
        let mut ended = false;
        for hit in hits {
            self.enforce(owner, &hit, risk).await?;
            ended = true;
        }
        Ok(ended)
    }

    /// Quarantines what `hit`'s rule names. The quarantine is recorded
    /// once (the first facade to insert it raises the alert and writes its
    /// audit record); the session is ended every time (idempotent), through
    /// the one path EndSession takes. An agent quarantine also ends the
    /// agent's other live sessions.
    async fn enforce(
        &self,
        owner: &SessionOwner,
        hit: &Hit,
        risk: Option<&Risk>,
    ) -> Result<(), FacadeError> {
        let rule = &hit.rule;
        let now = tether_runtime::clock::unix_now_ms();
        let reason = format!(
            "quarantined: {} {} within {} s (rule `{}`: {} or more)",
            hit.count, rule.signal, rule.window_secs, rule.name, rule.count
        );
        let quarantine = Quarantine {
            id: format!("q_{}", uuid::Uuid::new_v4().simple()),
            kind: rule.quarantine,
            subject: match rule.quarantine {
                QuarantineKind::Session => owner.sid.clone(),
                QuarantineKind::Agent => owner.agent.clone(),
            },
            rule: rule.name.clone(),
            reason: reason.clone(),
            session_id: owner.sid.clone(),
            agent: owner.agent.clone(),
            user_sub: owner.user_sub.clone(),
            created_at_ms: now,
            until_ms: rule
                .duration_secs
                .map(|d| now.saturating_add(i64::try_from(d).unwrap_or(i64::MAX / 2000) * 1000)),
            lifted_at_ms: None,
            lifted_by: String::new(),
            lift_reason: String::new(),
        };
        let created = self.monitor.quarantine(quarantine).await?;
        // INVARIANT: only the facade that created the quarantine records
        // and alerts it, so neither may be skipped once it exists: a
        // failure of one does not stop the other, nor the session's end.
        let recorded = match &created {
            Some(q) => self.audit.quarantine(q, risk, None).await,
            None => Ok(()),
        };
        if let Some(q) = &created {
            self.alerts.quarantined(q, risk.map(|r| r.score));
        }
        let by = EndedBy::Monitoring(format!("monitoring:{}", rule.name));
        self.end_session_everywhere(owner, &reason, &by).await?;
        if rule.quarantine == QuarantineKind::Agent {
            self.end_agent_sessions(&owner.agent, &reason, &by).await?;
        }
        recorded
    }

    /// Ends every live session of `agent` (an agent quarantine), page by
    /// page of the identity exchange's list.
    async fn end_agent_sessions(
        &self,
        agent: &str,
        reason: &str,
        by: &EndedBy,
    ) -> Result<(), FacadeError> {
        let mut page_token = String::new();
        loop {
            let page = self
                .upstreams
                .identity
                .clone()
                .list_sessions(identity_pb::ListSessionsRequest {
                    user_subject: String::new(),
                    agent_id: agent.to_owned(),
                    active_only: true,
                    page_size: 1000,
                    page_token: std::mem::take(&mut page_token),
                })
                .await
                .map_err(|status| downstream(Dependency::Identity, &status))?
                .into_inner();
            for session in page.sessions {
                let owner = SessionOwner {
                    sid: session.sid,
                    agent: session.agent_id,
                    user_idp: session.user_issuer,
                    user_sub: session.user_subject,
                };
                self.end_session_everywhere(&owner, reason, by).await?;
            }
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = page.next_page_token;
        }
    }

    /// Denies at once while the audit log cannot take writes.
    pub(crate) fn audit_ready(&self) -> Result<(), FacadeError> {
        self.audit.ready()
    }

    /// An operator's lift of `q`, durable in the audit log.
    pub(crate) async fn record_lift(
        &self,
        q: &Quarantine,
        operator: &str,
    ) -> Result<(), FacadeError> {
        self.audit.quarantine(q, None, Some(operator)).await
    }

    /// Refuses an agent the monitoring has quarantined.
    async fn refuse_quarantined_agent(&self, agent: &str) -> Result<(), FacadeError> {
        match self.monitor.agent_quarantine(agent).await? {
            Some(q) => Err(FacadeError::AgentQuarantined {
                agent: clip(agent),
                quarantine_id: q.id,
                rule: q.rule,
                until_ms: q.until_ms.unwrap_or_default(),
            }),
            None => Ok(()),
        }
    }

    /// A call refused because its session has ended, with a token this
    /// facade can still attribute (its signature verifies): a token failure
    /// of that session and agent. Best effort: the call is refused anyway.
    async fn token_failure(&self, metadata: &MetadataMap) {
        if !self.monitor.enabled() {
            return;
        }
        let Ok(claims) = self.sessions.claims_of_any_session(metadata).await else {
            return;
        };
        let mut events = Events::default();
        events.add("token_failures", 1);
        if let Err(e) = self
            .observe(&SessionOwner::of_token(&claims), &events, None)
            .await
        {
            tracing::warn!(error = %e, "a token failure could not be counted");
        }
    }

    /// An approval's outcome the agent watched: a denial or an expiry
    /// (ignored) counts once per ticket, however often it is watched.
    async fn approval_outcome(&self, owner: &SessionOwner, ticket: &approval_pb::Ticket) {
        let signal = match ticket.state() {
            approval_pb::TicketState::Denied => "approvals_denied",
            approval_pb::TicketState::Expired => "approvals_ignored",
            _ => return,
        };
        let mut events = Events {
            once: Some(format!("ticket:{}:{signal}", clip(&ticket.ticket_id))),
            ..Events::default()
        };
        events.add(signal, 1);
        if let Err(e) = self.observe(owner, &events, None).await {
            tracing::error!(error = %e, ticket_id = %ticket.ticket_id, signal, "an approval outcome could not be counted");
        }
    }

    fn retry_after(&self) -> prost_types::Duration {
        prost_types::Duration {
            seconds: i64::try_from(self.config.approvals.retry_after_secs).unwrap_or(2),
            nanos: 0,
        }
    }

    async fn start_session(
        &self,
        req: pb::StartSessionRequest,
    ) -> Result<pb::StartSessionResponse, FacadeError> {
        check_len("user_token", &req.user_token, MAX_TOKEN_BYTES)?;
        if req.user_token_type != ACCESS_TOKEN_TYPE && req.user_token_type != ID_TOKEN_TYPE {
            return Err(FacadeError::InvalidRequest(format!(
                "`user_token_type` must be `{ACCESS_TOKEN_TYPE}` or `{ID_TOKEN_TYPE}`"
            )));
        }
        check_len("agent_assertion", &req.agent_assertion, MAX_TOKEN_BYTES)?;
        if !req.agent_assertion_type.is_empty() && req.agent_assertion_type != JWT_TYPE {
            return Err(FacadeError::InvalidRequest(format!(
                "`agent_assertion_type` must be empty or `{JWT_TYPE}`"
            )));
        }
        check_intent(&req.intent)?;
        check_scope(&req.scope)?;
        // A quarantined agent is refused before anything is minted. The
        // assertion is not verified yet: the id is only looked up, and the
        // verified one is checked again below.
        if let Some(agent) = unverified_agent(&req.agent_assertion) {
            self.refuse_quarantined_agent(&agent).await?;
        }
        let exchanged = self
            .upstreams
            .identity
            .clone()
            .exchange(identity_pb::ExchangeRequest {
                subject_token: req.user_token,
                subject_token_type: req.user_token_type,
                actor_token: req.agent_assertion,
                actor_token_type: JWT_TYPE.into(),
                audience: self.config.sessions.audience.clone(),
                scope: req.scope,
                requested_token_type: String::new(),
                authorization_details: req.intent,
            })
            .await
            .map_err(|status| exchange_error(&status))?
            .into_inner();
        // The token is checked like every later call will check it, so a
        // session that cannot be used is never handed out.
        let claims = self
            .sessions
            .verify(&exchanged.access_token)
            .await
            .map_err(|e| {
                FacadeError::Internal(format!(
                    "the identity exchange minted a token this facade refuses: {e}"
                ))
            })?;
        tracing::Span::current().record("session_id", claims.sid.as_str());
        if let Err(e) = self.refuse_quarantined_agent(&claims.act.sub).await {
            // The assertion named someone else than the agent it proved:
            // the session just minted ends at once.
            let reason = "the agent is quarantined";
            self.end_session_everywhere(
                &SessionOwner::of_token(&claims),
                reason,
                &EndedBy::Monitoring("monitoring".into()),
            )
            .await?;
            return Err(e);
        }
        tracing::info!(agent = %claims.act.sub, user = %claims.sub, "session started");
        Ok(pb::StartSessionResponse {
            session_id: claims.sid.clone(),
            delegated_token: exchanged.access_token,
            token_type: "Bearer".into(),
            expires_at: Some(to_ts(claims.exp)),
            session_expires_at: exchanged.session_expires_at.or(Some(to_ts(claims.exp))),
            scope: claims.scope.clone(),
            user_subject: claims.sub.clone(),
            agent_id: claims.act.sub.clone(),
        })
    }

    async fn authorize(
        &self,
        call: &Call,
        req: pb::AuthorizeRequest,
    ) -> Result<pb::AuthorizeResponse, FacadeError> {
        let action = decision::uid("action", req.action.as_ref())?;
        let resource = decision::uid("resource", req.resource.as_ref())?;
        let context = decision::agent_context(&req.context_json)?;
        let decision_id = format!("dec_{}", uuid::Uuid::new_v4().simple());
        let (risk, decided) = self
            .decide(call, &action, &resource, &context, &decision_id)
            .await?;
        let mut created = false;
        let (decision, check, approval_required, grant) = match decided {
            Decided::Allow { check, grant } => (pb::Decision::Allow, check, None, grant),
            Decided::Deny(check) => (pb::Decision::Deny, check, None, None),
            Decided::ApprovalRequired {
                check,
                ticket,
                created: new,
            } => {
                created = new;
                (
                    pb::Decision::ApprovalRequired,
                    check,
                    Some(pb::ApprovalRequired {
                        ticket: Some(ticket_pb(&ticket)),
                        retry_after: Some(self.retry_after()),
                    }),
                    None,
                )
            }
        };
        record_decision(decision, &check);
        let story = Story::decision(&call.claims, &decision_id, &action, &resource, &risk);
        let ticket_id = approval_required
            .as_ref()
            .and_then(|a| a.ticket.as_ref())
            .map(|t| t.ticket_id.as_str());
        self.audit
            .decided(&story, decision, &check, ticket_id, grant.as_deref(), false)
            .await?;
        let events = Events::decision(
            decision_label(decision),
            &check.signals,
            resource.cedar(),
            false,
            created,
        );
        let quarantined = self
            .observe(&SessionOwner::of_token(&call.claims), &events, Some(&risk))
            .await?;
        if quarantined && decision != pb::Decision::Deny {
            // INVARIANT: nothing is allowed to a session this very request
            // got quarantined.
            return Err(FacadeError::SessionEnded);
        }
        Ok(pb::AuthorizeResponse {
            decision: decision.into(),
            policy_ids: check.policy_ids,
            reasons: check.reasons,
            policy_version: check.policy_version,
            decision_id,
            approval_required,
            approval_grant: grant.as_deref().map(grant_pb),
        })
    }

    async fn acquire_credential(
        &self,
        call: &Call,
        req: pb::AcquireCredentialRequest,
    ) -> Result<pb::AcquireCredentialResponse, FacadeError> {
        let action = decision::uid("action", req.action.as_ref())?;
        let resource = decision::uid("resource", req.resource.as_ref())?;
        let context = decision::agent_context(&req.context_json)?;
        check_len("profile", &req.profile, MAX_PROFILE_BYTES)?;
        let requested_ttl = match req.requested_ttl {
            Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
                return Err(FacadeError::InvalidRequest(
                    "`requested_ttl` must be positive".into(),
                ));
            }
            other => other,
        };
        let profile = self
            .config
            .profiles
            .get(&req.profile)
            .ok_or_else(|| FacadeError::UnknownProfile(clip(&req.profile)))?;
        if !profile.actions.contains(&action.cedar())
            || !profile.resource_types.contains(&resource.r#type)
        {
            return Err(FacadeError::ProfileNotAllowed {
                profile: req.profile.clone(),
                action: action.cedar(),
                resource_type: resource.r#type.clone(),
            });
        }
        let decision_id = format!("dec_{}", uuid::Uuid::new_v4().simple());
        let (risk, decided) = self
            .decide(call, &action, &resource, &context, &decision_id)
            .await?;
        let story = Story::decision(&call.claims, &decision_id, &action, &resource, &risk);
        let owner = SessionOwner::of_token(&call.claims);
        let (check, grant) = match decided {
            Decided::Allow { check, grant } => (check, grant),
            Decided::Deny(check) => {
                record_decision(pb::Decision::Deny, &check);
                self.audit
                    .decided(&story, pb::Decision::Deny, &check, None, None, false)
                    .await?;
                let events =
                    Events::decision("deny", &check.signals, resource.cedar(), true, false);
                self.observe(&owner, &events, Some(&risk)).await?;
                return Err(FacadeError::PolicyDenied {
                    policy_ids: check.policy_ids,
                    policy_version: check.policy_version,
                    decision_id,
                    reasons: check.reasons,
                });
            }
            Decided::ApprovalRequired {
                check,
                ticket,
                created,
            } => {
                record_decision(pb::Decision::ApprovalRequired, &check);
                let ticket_id = Some(ticket.ticket_id.as_str());
                self.audit
                    .decided(
                        &story,
                        pb::Decision::ApprovalRequired,
                        &check,
                        ticket_id,
                        None,
                        false,
                    )
                    .await?;
                let events = Events::decision(
                    "approval_required",
                    &check.signals,
                    resource.cedar(),
                    true,
                    created,
                );
                if self.observe(&owner, &events, Some(&risk)).await? {
                    return Err(FacadeError::SessionEnded);
                }
                return Ok(pb::AcquireCredentialResponse {
                    decision: pb::Decision::ApprovalRequired.into(),
                    outcome: Some(pb::acquire_credential_response::Outcome::ApprovalRequired(
                        pb::ApprovalRequired {
                            ticket: Some(ticket_pb(&ticket)),
                            retry_after: Some(self.retry_after()),
                        },
                    )),
                    policy_ids: check.policy_ids,
                    reasons: check.reasons,
                    policy_version: check.policy_version,
                    decision_id,
                    approval_grant: None,
                });
            }
        };
        record_decision(pb::Decision::Allow, &check);
        // INVARIANT: nothing is issued unless its decision is on record.
        self.audit
            .decided(
                &story,
                pb::Decision::Allow,
                &check,
                None,
                grant.as_deref(),
                true,
            )
            .await?;
        let events = Events::decision("allow", &check.signals, resource.cedar(), true, false);
        if self.observe(&owner, &events, Some(&risk)).await? {
            // INVARIANT: nothing is issued to a session this very request
            // got quarantined.
            return Err(FacadeError::SessionEnded);
        }
        let issue = forward(
            credentials_pb::IssueRequest {
                profile: req.profile.clone(),
                requested_ttl,
                intent: call
                    .claims
                    .authorization_details
                    .as_ref()
                    .map(serde_json::Value::to_string)
                    .unwrap_or_default(),
                action: action.cedar(),
                resource: resource.cedar(),
                policy_version: check.policy_version.clone(),
                decision_id: decision_id.clone(),
                policy_ids: check.policy_ids.clone(),
                approval_ticket_id: grant
                    .as_ref()
                    .map(|g| g.ticket_id.clone())
                    .unwrap_or_default(),
                ..Default::default()
            },
            &call.bearer,
        );
        let issued = self
            .issue_or_revoke(issue, call.bearer.clone())
            .await
            .map_err(|status| downstream(Dependency::Credentials, &status))?;
        let lease = issued
            .lease
            .ok_or_else(|| FacadeError::Internal("the issuer returned no lease".into()))?;
        let credential = issued
            .credential
            .ok_or_else(|| FacadeError::Internal("the issuer returned no credential".into()))?;
        let span = tracing::Span::current();
        span.record("lease_id", lease.lease_id.as_str());
        if let Some(ttl) = &lease.granted_ttl {
            span.record("granted_ttl_secs", ttl.seconds);
        }
        // The issuance is on record before the credential leaves, or the
        // lease is revoked and the credential never delivered.
        self.audit
            .issued(
                &story,
                &check,
                &lease,
                &req.profile,
                grant.as_ref().map(|g| g.ticket_id.as_str()),
                self.upstreams.credentials.clone(),
                call.bearer.clone(),
            )
            .await?;
        Ok(pb::AcquireCredentialResponse {
            decision: pb::Decision::Allow.into(),
            outcome: Some(pb::acquire_credential_response::Outcome::Issued(
                pb::IssuedCredential {
                    credential: Some(credential_pb(credential)),
                    lease: Some(lease_pb(&lease)),
                },
            )),
            policy_ids: check.policy_ids,
            reasons: check.reasons,
            policy_version: check.policy_version,
            decision_id,
            approval_grant: grant.as_deref().map(grant_pb),
        })
    }

    /// Issues on a task of its own. If the agent is gone by the time the
    /// credential arrives (its deadline passed or it disconnected, and this
    /// handler was dropped), the lease is revoked at once instead of being
    /// left to its TTL.
    async fn issue_or_revoke(
        &self,
        issue: Request<credentials_pb::IssueRequest>,
        bearer: AsciiMetadataValue,
    ) -> Result<credentials_pb::IssueResponse, Status> {
        let (deliver, delivered) = tokio::sync::oneshot::channel();
        let mut credentials = self.upstreams.credentials.clone();
        let task = async move {
            let result = credentials.issue(issue).await.map(Response::into_inner);
            let Err(Ok(undelivered)) = deliver.send(result) else {
                return;
            };
            let Some(lease) = undelivered.lease else {
                return;
            };
            tracing::warn!(lease_id = %lease.lease_id, "credential issued after the agent went away; revoking it now");
            let revoked = credentials
                .revoke_lease(forward(
                    credentials_pb::RevokeLeaseRequest {
                        lease_id: lease.lease_id.clone(),
                        reason: "not delivered: the agent went away".into(),
                    },
                    &bearer,
                ))
                .await;
            match revoked {
                Ok(response) => {
                    let status = response
                        .into_inner()
                        .lease
                        .map(|l| l.status().as_str_name())
                        .unwrap_or_default();
                    tracing::info!(lease_id = %lease.lease_id, status, "undelivered credential revoked");
                }
                // The issuer's sweeper still ends it with the session.
                Err(e) => {
                    tracing::warn!(lease_id = %lease.lease_id, code = ?e.code(), "revoking an undelivered credential failed; it ends with its session")
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::Span::current(),
        ));
        delivered.await.unwrap_or_else(|_| {
            Err(into_status(FacadeError::Internal(
                "the issuance task stopped without an answer".into(),
            )))
        })
    }

    async fn end_session(
        &self,
        metadata: &MetadataMap,
        req: pb::EndSessionRequest,
    ) -> Result<pb::EndSessionResponse, FacadeError> {
        if req.reason.len() > MAX_REASON_BYTES {
            return Err(FacadeError::InvalidRequest(format!(
                "`reason` is {} bytes, the limit is {MAX_REASON_BYTES}",
                req.reason.len()
            )));
        }
        let claims = self.sessions.claims_of_any_session(metadata).await?;
        tracing::Span::current().record("session_id", claims.sid.as_str());
        let reason = if req.reason.is_empty() {
            "session ended by the agent".to_owned()
        } else {
            clip(&req.reason)
        };
        let receipt = self
            .end_session_everywhere(&SessionOwner::of_token(&claims), &reason, &EndedBy::Agent)
            .await?;
        Ok(pb::EndSessionResponse {
            receipt: Some(receipt),
        })
    }

    /// Ends `owner`'s session everywhere: the one path for the agent's
    /// EndSession, the operators' EndSession, and any later automatic end
    /// (quarantine). In order: the session is revoked at the identity
    /// exchange (from then on no service accepts its tokens, and this
    /// facade refuses them at once), its approval tickets are cancelled and
    /// grants revoked, its leases are revoked at Vault; then the receipt,
    /// naming `by`, is on record in the audit log before it is returned.
    /// Idempotent: a session already ended gives `already_ended` and the
    /// first revocation's time. `reason` is checked by the caller.
    pub(crate) async fn end_session_everywhere(
        &self,
        owner: &SessionOwner,
        reason: &str,
        by: &EndedBy,
    ) -> Result<pb::SessionReceipt, FacadeError> {
        let sid = owner.sid.clone();
        let reason = reason.to_owned();
        // INVARIANT: a step whose service is unreachable does not stop the
        // others (the contract: "the others were done"); the first failure
        // is returned once all three were tried, and the call is repeated.
        // 1. The session: from here on no service accepts its tokens.
        let revoked = self
            .upstreams
            .identity
            .clone()
            .revoke_session(identity_pb::RevokeSessionRequest {
                sid: sid.clone(),
                reason: reason.clone(),
            })
            .await
            .map(Response::into_inner)
            .map_err(|status| downstream(Dependency::Identity, &status));
        if revoked.is_ok() {
            self.ended
                .insert(&sid, self.config.sessions.revocation_max_staleness());
        }
        // 2. Approvals: pending tickets cancelled, grants revoked.
        let cancelled = self
            .upstreams
            .approvals
            .clone()
            .cancel_session(approval_pb::CancelSessionRequest {
                session_id: sid.clone(),
                reason: reason.clone(),
            })
            .await
            .map(Response::into_inner)
            .map_err(|status| downstream(Dependency::Approval, &status));
        // 3. Credentials: every lease revoked at Vault (or retried).
        let leases = self
            .upstreams
            .credentials
            .clone()
            .revoke_session(credentials_pb::RevokeSessionRequest {
                session_id: sid.clone(),
                reason: reason.clone(),
            })
            .await
            .map(Response::into_inner)
            .map_err(|status| downstream(Dependency::Credentials, &status));
        let (revoked, cancelled, leases) = (revoked?, cancelled?, leases?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        tracing::info!(
            session.id = %sid,
            ended_by = by.name(),
            revoked_leases = leases.revoked.len(),
            pending_leases = leases.pending.len(),
            cancelled_tickets = cancelled.cancelled_ticket_ids.len(),
            already_ended = revoked.already_revoked,
            "session ended"
        );
        let receipt = pb::SessionReceipt {
            session_id: sid,
            ended_at: Some(to_ts(now)),
            session_revoked_at: revoked.revoked_at,
            already_ended: revoked.already_revoked,
            revoked_leases: leases.revoked.iter().map(lease_pb).collect(),
            pending_leases: leases.pending.iter().map(lease_pb).collect(),
            cancelled_ticket_ids: cancelled.cancelled_ticket_ids,
            revoked_grant_ids: cancelled.revoked_grant_ids,
            receipt_id: format!("rcpt_{}", uuid::Uuid::new_v4().simple()),
        };
        // The receipt is on record before it is handed out.
        self.audit
            .session_ended(owner, by, &receipt, &reason)
            .await?;
        Ok(receipt)
    }

    async fn get_session(
        &self,
        metadata: &MetadataMap,
    ) -> Result<pb::GetSessionResponse, FacadeError> {
        let claims = self.sessions.claims_of_any_session(metadata).await?;
        tracing::Span::current().record("session_id", claims.sid.as_str());
        // When it ended: the identity exchange's revocation time, or (right
        // after this facade ended it, before the list has synced) this
        // facade's own record.
        let ended_at = match self
            .sessions
            .revoked_at(&claims.sid)
            .map_err(FacadeError::Token)?
        {
            Some(ms) => Some(ms.div_euclid(1000)),
            None => self
                .ended
                .ended_at(&claims.sid, self.config.sessions.revocation_max_staleness()),
        };
        let ended = ended_at.is_some();
        let leases = self
            .upstreams
            .credentials
            .clone()
            .list_leases(credentials_pb::ListLeasesRequest {
                session_id: claims.sid.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .map_err(|status| downstream(Dependency::Credentials, &status))?
            .into_inner();
        Ok(pb::GetSessionResponse {
            session: Some(pb::Session {
                session_id: claims.sid.clone(),
                state: if ended {
                    pb::SessionState::Ended
                } else {
                    pb::SessionState::Active
                }
                .into(),
                user_subject: claims.sub.clone(),
                actor_chain: claims.act.chain().into_iter().map(str::to_owned).collect(),
                scope: claims.scope.clone(),
                intent: claims
                    .authorization_details
                    .as_ref()
                    .map(serde_json::Value::to_string)
                    .unwrap_or_default(),
                token_issued_at: Some(to_ts(claims.iat)),
                token_expires_at: Some(to_ts(claims.exp)),
                session_expires_at: Some(to_ts(claims.exp)),
                ended_at: ended_at.map(to_ts),
                leases: leases.leases.iter().map(lease_pb).collect(),
            }),
        })
    }
}

/// `allow`, `deny` or `approval_required`, as the monitoring counts.
fn decision_label(decision: pb::Decision) -> &'static str {
    match decision {
        pb::Decision::Allow => "allow",
        pb::Decision::ApprovalRequired => "approval_required",
        pb::Decision::Deny | pb::Decision::Unspecified => "deny",
    }
}

/// The agent an assertion claims to be (`sub`, else `iss`), unverified:
/// only to refuse a quarantined agent before anything is minted.
fn unverified_agent(assertion: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = assertion.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("sub")
        .or_else(|| claims.get("iss"))
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 1024)
        .map(str::to_owned)
}

/// Exchange's refusals in the facade's terms.
fn exchange_error(status: &Status) -> FacadeError {
    use tonic_types::StatusExt as _;
    let reason = status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default();
    let message = clip(status.message());
    match (status.code(), reason.as_str()) {
        (Code::InvalidArgument, _) => FacadeError::InvalidRequest(message),
        (Code::Unauthenticated, "INVALID_CLIENT") => FacadeError::AgentAssertionInvalid(message),
        (Code::Unauthenticated, _) => FacadeError::UserTokenInvalid(message),
        (Code::PermissionDenied, _) => FacadeError::DelegationNotAllowed(message),
        _ => downstream(Dependency::Identity, status),
    }
}

/// The decision, its policies and version on the request's span.
fn record_decision(decision: pb::Decision, check: &policy_pb::CheckResponse) {
    let span = tracing::Span::current();
    span.record("decision", decision.as_str_name());
    span.record("policy_ids", check.policy_ids.join(",").as_str());
    span.record("policy_version", check.policy_version.as_str());
    tracing::info!(
        decision = decision.as_str_name(),
        policy_ids = ?check.policy_ids,
        policy_version = %check.policy_version,
        "decided"
    );
}

/// The approval a decision waits on or used, on the request's span.
fn record_approval(state: pb::ApprovalState, ticket_id: &str) {
    let span = tracing::Span::current();
    span.record("approval_state", state.as_str_name());
    span.record("approval_ticket", ticket_id);
}

fn peer_ip<T>(request: &Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.remote_addr)
        .or_else(|| request.remote_addr())
        .map(|a| a.ip())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchApprovalResponse, Status>> + Send>>;

macro_rules! request_span {
    ($name:literal) => {
        tracing::info_span!(
            $name,
            session_id = tracing::field::Empty,
            agent = tracing::field::Empty,
            user = tracing::field::Empty,
            action = tracing::field::Empty,
            resource = tracing::field::Empty,
            decision = tracing::field::Empty,
            policy_ids = tracing::field::Empty,
            policy_version = tracing::field::Empty,
            lease_id = tracing::field::Empty,
            granted_ttl_secs = tracing::field::Empty,
            approval_state = tracing::field::Empty,
            approval_ticket = tracing::field::Empty,
            risk_score = tracing::field::Empty,
            risk_level = tracing::field::Empty,
        )
    };
}

fn record_target(action: Option<&pb::EntityUid>, resource: Option<&pb::EntityUid>) {
    let span = tracing::Span::current();
    if let Some(a) = action {
        span.record("action", clip(&format!("{}::{}", a.r#type, a.id)).as_str());
    }
    if let Some(r) = resource {
        span.record(
            "resource",
            clip(&format!("{}::{}", r.r#type, r.id)).as_str(),
        );
    }
}

#[tonic::async_trait]
impl pb::agent_gateway_server::AgentGateway for FacadeService {
    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        let span = request_span!("facade.start_session");
        let inner = Arc::clone(&self.inner);
        let req = request.into_inner();
        tracing::Instrument::instrument(
            async move {
                inner
                    .start_session(req)
                    .await
                    .inspect_err(|e| inner.audit.refused(None, None, None, e))
            },
            span.clone(),
        )
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let span = request_span!("facade.authorize");
        let peer = peer_ip(&request);
        let (metadata, _, req) = request.into_parts();
        let inner = Arc::clone(&self.inner);
        tracing::Instrument::instrument(
            async move {
                record_target(req.action.as_ref(), req.resource.as_ref());
                let (action, resource) = (req.action.clone(), req.resource.clone());
                let refused = |claims, e: &FacadeError| {
                    inner
                        .audit
                        .refused(claims, action.as_ref(), resource.as_ref(), e);
                };
                let call = match inner.call(&metadata, peer).await {
                    Ok(call) => call,
                    Err(e) => {
                        refused(None, &e);
                        if matches!(e, FacadeError::SessionEnded) {
                            inner.token_failure(&metadata).await;
                        }
                        return Err(e);
                    }
                };
                inner.audit.ready()?;
                inner
                    .authorize(&call, req)
                    .await
                    .inspect_err(|e| refused(Some(&call.claims), e))
            },
            span.clone(),
        )
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn acquire_credential(
        &self,
        request: Request<pb::AcquireCredentialRequest>,
    ) -> Result<Response<pb::AcquireCredentialResponse>, Status> {
        let span = request_span!("facade.acquire_credential");
        let peer = peer_ip(&request);
        let (metadata, _, req) = request.into_parts();
        let inner = Arc::clone(&self.inner);
        tracing::Instrument::instrument(
            async move {
                record_target(req.action.as_ref(), req.resource.as_ref());
                let (action, resource) = (req.action.clone(), req.resource.clone());
                let refused = |claims, e: &FacadeError| {
                    inner
                        .audit
                        .refused(claims, action.as_ref(), resource.as_ref(), e);
                };
                let call = match inner.call(&metadata, peer).await {
                    Ok(call) => call,
                    Err(e) => {
                        refused(None, &e);
                        if matches!(e, FacadeError::SessionEnded) {
                            inner.token_failure(&metadata).await;
                        }
                        return Err(e);
                    }
                };
                inner.audit.ready()?;
                inner
                    .acquire_credential(&call, req)
                    .await
                    .inspect_err(|e| refused(Some(&call.claims), e))
            },
            span.clone(),
        )
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    type WatchApprovalStream = WatchStream;

    async fn watch_approval(
        &self,
        request: Request<pb::WatchApprovalRequest>,
    ) -> Result<Response<Self::WatchApprovalStream>, Status> {
        let span = request_span!("facade.watch_approval");
        let peer = peer_ip(&request);
        let (metadata, _, req) = request.into_parts();
        let inner = Arc::clone(&self.inner);
        let stream = tracing::Instrument::instrument(
            async move {
                if req.ticket_id.is_empty()
                    || req.ticket_id.len() > MAX_TICKET_ID_BYTES
                    || req.ticket_id.chars().any(char::is_control)
                {
                    return Err(FacadeError::InvalidRequest(format!(
                        "`ticket_id` must be 1 to {MAX_TICKET_ID_BYTES} bytes without control characters"
                    )));
                }
                let call = inner.call(&metadata, peer).await?;
                let ticket_id = req.ticket_id.clone();
                let owner = SessionOwner::of_token(&call.claims);
                inner
                    .upstreams
                    .approvals
                    .clone()
                    .watch_approval(forward(
                        approval_pb::WatchApprovalRequest {
                            ticket_id: req.ticket_id,
                            session_id: call.claims.sid.clone(),
                        },
                        &call.bearer,
                    ))
                    .await
                    .map(|response| (response.into_inner(), owner))
                    .map_err(|status| match status.code() {
                        Code::NotFound => FacadeError::TicketNotFound(clip(&ticket_id)),
                        _ => downstream(Dependency::Approval, &status),
                    })
            },
            span.clone(),
        )
        .await
        .map_err(|e| span.in_scope(|| into_status(e)))?;
        let (stream, owner) = stream;
        let inner = Arc::clone(&self.inner);
        let mapped = stream.then(move |item| {
            let (inner, owner) = (Arc::clone(&inner), owner.clone());
            async move {
                match item {
                    Ok(message) => {
                        if let Some(ticket) = &message.ticket {
                            inner.approval_outcome(&owner, ticket).await;
                        }
                        Ok(pb::WatchApprovalResponse {
                            ticket: message.ticket.as_ref().map(ticket_pb),
                        })
                    }
                    Err(status) => Err(into_status(match status.code() {
                        Code::NotFound => FacadeError::TicketNotFound(String::new()),
                        _ => downstream(Dependency::Approval, &status),
                    })),
                }
            }
        });
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let span = request_span!("facade.end_session");
        let (metadata, _, req) = request.into_parts();
        let inner = Arc::clone(&self.inner);
        tracing::Instrument::instrument(
            async move { inner.end_session(&metadata, req).await },
            span.clone(),
        )
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let span = request_span!("facade.get_session");
        let (metadata, _, _) = request.into_parts();
        let inner = Arc::clone(&self.inner);
        tracing::Instrument::instrument(
            async move { inner.get_session(&metadata).await },
            span.clone(),
        )
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_must_be_authorization_details() {
        assert!(check_intent(r#"[{"type":"hr_lookup","actions":["read"]}]"#).is_ok());
        for bad in [
            "",
            "[]",
            "{}",
            r#"[{"actions":[]}]"#,
            r#"[{"type":""}]"#,
            r#"[{"type":"a","type":"b"}]"#,
        ] {
            assert!(check_intent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_are_bounded() {
        assert!(check_scope("").is_ok());
        assert!(check_scope("hr:read hr:write").is_ok());
        assert!(check_scope(&"a ".repeat(65)).is_err());
        assert!(check_scope("hr:read\nhr:write").is_err());
    }

    #[test]
    fn the_agent_an_assertion_names_is_read_without_trusting_it() {
        use base64::Engine as _;
        let encode = |claims: &str| {
            format!(
                "e30.{}.sig",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
            )
        };
        assert_eq!(
            unverified_agent(&encode(r#"{"iss":"a","sub":"hr-assistant"}"#)).as_deref(),
            Some("hr-assistant")
        );
        assert_eq!(
            unverified_agent(&encode(r#"{"iss":"only-iss"}"#)).as_deref(),
            Some("only-iss")
        );
        for bad in [
            String::new(),
            "not-a-jwt".into(),
            "a.!!!.c".into(),
            encode("[]"),
            encode(r#"{"sub":""}"#),
            encode(r#"{"sub":42}"#),
        ] {
            assert_eq!(unverified_agent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn cedar_uids_round_trip() {
        let uid = parse_cedar_uid(r#"Hr::Employee::"10\"42""#).unwrap();
        assert_eq!(
            (uid.r#type.as_str(), uid.id.as_str()),
            ("Hr::Employee", "10\"42")
        );
        assert!(parse_cedar_uid("garbage").is_none());
    }
}
