//! The gRPC handlers of `tether.approval.v1.ApprovalOrchestrator`.
//!
//! Every call but CancelSession proves its session with the agent's
//! delegated token; the request's session, user and agent must be the
//! token's. A new prompt is created and sent on a task of its own, so a
//! caller that goes away mid-call never leaves a ticket half-sent.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tether_proto::approval::v1 as pb;
use tether_runtime::{clip, into_status};
use tether_token::{Caller, Sessions};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Request, Response, Status};

use crate::ciba::{AuthenticationRequest, Sentence};
use crate::config::FatigueLimits;
use crate::driver::{Drivers, now_ms, unix_ms};
use crate::error::ApprovalError;
use crate::store::{GrantRow, NewTicket, Reserved, Sent, State, Store, TicketRow, scope_key};

const MAX_SESSION_BYTES: usize = 128;
const MAX_SUBJECT_BYTES: usize = 256;
const MAX_UID_BYTES: usize = 512;
const MAX_INTENT_BYTES: usize = 8 * 1024;
const MAX_BINDING_CHARS: usize = 128;
const MAX_REASON_BYTES: usize = 256;
const MAX_POLICY_IDS: usize = 64;
const MAX_POLICY_ID_BYTES: usize = 256;
const MAX_TICKET_ID_BYTES: usize = 128;

/// What a PENDING ticket tells a caller that polls with GetApproval.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// `tether.approval.v1.ApprovalOrchestrator`.
#[derive(Debug, Clone)]
pub struct ApprovalService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sessions: Sessions,
    store: Store,
    drivers: Drivers,
    limits: FatigueLimits,
    keepalive: Duration,
    watch_poll: Duration,
    stop: watch::Receiver<bool>,
}

impl ApprovalService {
    pub(crate) fn new(
        sessions: Sessions,
        store: Store,
        drivers: Drivers,
        limits: FatigueLimits,
        keepalive: Duration,
        watch_poll: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions,
                store,
                drivers,
                limits,
                keepalive,
                watch_poll,
                stop,
            }),
        }
    }
}

/// A required text field: present, within `limit` bytes, no control
/// characters, no surrounding whitespace.
fn check_text(field: &str, value: &str, limit: usize) -> Result<(), ApprovalError> {
    if value.is_empty() {
        return Err(ApprovalError::InvalidArgument(format!("missing `{field}`")));
    }
    if value.len() > limit {
        return Err(ApprovalError::InvalidArgument(format!(
            "`{field}` is {} bytes, the limit is {limit}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) || value.trim() != value {
        return Err(ApprovalError::InvalidArgument(format!(
            "`{field}` contains control characters or surrounding whitespace"
        )));
    }
    Ok(())
}

fn check_intent(intent: &str) -> Result<(), ApprovalError> {
    if intent.is_empty() {
        return Err(ApprovalError::InvalidArgument("missing `intent`".into()));
    }
    if intent.len() > MAX_INTENT_BYTES {
        return Err(ApprovalError::InvalidArgument(format!(
            "`intent` is {} bytes, the limit is {MAX_INTENT_BYTES}",
            intent.len()
        )));
    }
    match serde_json::from_str::<serde_json::Value>(intent) {
        Ok(serde_json::Value::Array(_)) => Ok(()),
        _ => Err(ApprovalError::InvalidArgument(
            "`intent` must be the session's `authorization_details` JSON array".into(),
        )),
    }
}

fn check_binding_message(text: &str) -> Result<(), ApprovalError> {
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_BINDING_CHARS {
        return Err(ApprovalError::InvalidArgument(format!(
            "`binding_message` must be 1 to {MAX_BINDING_CHARS} characters, got {chars}"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApprovalError::InvalidArgument(
            "`binding_message` contains control characters".into(),
        ));
    }
    if text.trim().is_empty() {
        return Err(ApprovalError::InvalidArgument(
            "`binding_message` is blank".into(),
        ));
    }
    Ok(())
}

fn check_policy_ids(ids: &[String], version: &str) -> Result<(), ApprovalError> {
    if ids.len() > MAX_POLICY_IDS {
        return Err(ApprovalError::InvalidArgument(format!(
            "`policy_ids` has {} entries, the limit is {MAX_POLICY_IDS}",
            ids.len()
        )));
    }
    for id in ids {
        check_text("policy_ids[]", id, MAX_POLICY_ID_BYTES)?;
    }
    if !version.is_empty() {
        check_text("policy_version", version, MAX_POLICY_ID_BYTES)?;
    }
    Ok(())
}

/// A protobuf duration of at least one second; `None` when unset.
fn requested_expiry(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, ApprovalError> {
    let Some(d) = d else { return Ok(None) };
    // CIBA counts whole seconds: under one is no time to answer, and would
    // otherwise reach the store as a ticket that fails at once.
    if d.seconds < 1 || d.nanos < 0 {
        return Err(ApprovalError::InvalidArgument(
            "`requested_expiry` must be at least one second".into(),
        ));
    }
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Ok(Some(Duration::new(secs, nanos.min(999_999_999))))
}

/// `session_expires_at` in Unix milliseconds; must be in the future.
fn session_expiry(ts: Option<&prost_types::Timestamp>, now: i64) -> Result<i64, ApprovalError> {
    let Some(ts) = ts else {
        return Err(ApprovalError::InvalidArgument(
            "missing `session_expires_at`".into(),
        ));
    };
    if !(0..=999_999_999).contains(&ts.nanos) {
        return Err(ApprovalError::InvalidArgument(
            "`session_expires_at` is not a valid timestamp".into(),
        ));
    }
    let at = ts
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000));
    if at <= now {
        return Err(ApprovalError::FailedPrecondition(
            "`session_expires_at` is not in the future: the session has ended".into(),
        ));
    }
    Ok(at)
}

/// The request's session, user and agent must be the token's, and the
/// user must come from the IdP that approvals ask.
fn check_caller(
    caller: &Caller,
    session: &str,
    user: Option<&str>,
    agent: Option<&str>,
    idp: &str,
) -> Result<(), ApprovalError> {
    if caller.sid != session {
        return Err(ApprovalError::NotTheCaller("session"));
    }
    if user.is_some_and(|u| u != caller.user) {
        return Err(ApprovalError::NotTheCaller("user"));
    }
    if agent.is_some_and(|a| a != caller.agent) {
        return Err(ApprovalError::NotTheCaller("agent"));
    }
    if user.is_some() && caller.idp.as_deref() != Some(idp) {
        return Err(ApprovalError::FailedPrecondition(
            "the session's user does not come from the IdP approvals are configured for; they cannot be asked".into(),
        ));
    }
    Ok(())
}

fn to_ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn to_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn state_pb(state: State) -> pb::TicketState {
    match state {
        State::Pending => pb::TicketState::Pending,
        State::Approved => pb::TicketState::Approved,
        State::Denied => pb::TicketState::Denied,
        State::Expired => pb::TicketState::Expired,
        State::Cancelled => pb::TicketState::Cancelled,
        State::Failed => pb::TicketState::Failed,
    }
}

fn mode_pb(mode: &str) -> pb::DeliveryMode {
    match mode {
        "ping" => pb::DeliveryMode::Ping,
        "poll" => pb::DeliveryMode::Poll,
        _ => pb::DeliveryMode::Unspecified,
    }
}

fn grant_pb(row: &GrantRow) -> pb::Grant {
    pb::Grant {
        grant_id: row.id.clone(),
        ticket_id: row.ticket_id.clone(),
        session_id: row.session_id.clone(),
        action: row.action.clone(),
        resource: row.resource.clone(),
        intent: row.intent.clone(),
        approver: row.approver.clone(),
        granted_at: Some(to_ts(row.granted_at)),
        expires_at: Some(to_ts(row.expires_at)),
        remaining_uses: u32::try_from(row.remaining_uses.max(0)).unwrap_or(0),
        initial_uses: u32::try_from(row.initial_uses.max(0)).unwrap_or(0),
    }
}

impl Inner {
    async fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, ApprovalError> {
        let caller = self.sessions.caller(metadata).await?;
        tracing::Span::current().record("session_id", caller.sid.as_str());
        Ok(caller)
    }

    /// The full ticket as the contract shows it (with its grant when
    /// APPROVED).
    async fn ticket_pb(&self, row: &TicketRow) -> Result<pb::Ticket, ApprovalError> {
        let grant = match (&row.grant_id, row.state) {
            (Some(id), State::Approved) => self.store.grant(id).await?.as_ref().map(grant_pb),
            _ => None,
        };
        let pending = row.state == State::Pending;
        Ok(pb::Ticket {
            ticket_id: row.id.clone(),
            session_id: row.session_id.clone(),
            state: state_pb(row.state).into(),
            user_subject: row.user_subject.clone(),
            agent_id: row.agent_id.clone(),
            action: row.action.clone(),
            resource: row.resource.clone(),
            intent: row.intent.clone(),
            binding_message: row.binding_message.clone(),
            delivery_mode: mode_pb(&row.delivery_mode).into(),
            created_at: Some(to_ts(row.created_at)),
            expires_at: Some(to_ts(row.expires_at)),
            decided_at: row.decided_at.map(to_ts),
            approver: row.approver.clone(),
            grant,
            state_reason: row.state_reason.clone(),
            retry_after: pending.then(|| {
                to_duration(
                    row.poll_interval_ms
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map_or(DEFAULT_RETRY_AFTER, Duration::from_millis)
                        .min(Duration::from_secs(5)),
                )
            }),
            confirmation_code: row.confirmation_code.clone(),
        })
    }

    async fn request_approval(
        self: Arc<Self>,
        caller: Caller,
        req: pb::RequestApprovalRequest,
    ) -> Result<pb::RequestApprovalResponse, ApprovalError> {
        check_text("session_id", &req.session_id, MAX_SESSION_BYTES)?;
        check_text("user_subject", &req.user_subject, MAX_SUBJECT_BYTES)?;
        check_text("agent_id", &req.agent_id, MAX_SUBJECT_BYTES)?;
        check_text("action", &req.action, MAX_UID_BYTES)?;
        check_text("resource", &req.resource, MAX_UID_BYTES)?;
        check_intent(&req.intent)?;
        check_binding_message(&req.binding_message)?;
        check_policy_ids(&req.policy_ids, &req.policy_version)?;
        if pb::DeliveryMode::try_from(req.delivery_mode).is_err() {
            return Err(ApprovalError::InvalidArgument(format!(
                "unknown `delivery_mode` {}",
                req.delivery_mode
            )));
        }
        let expiry = requested_expiry(req.requested_expiry.as_ref())?;
        let now = now_ms();
        let session_expires_at = session_expiry(req.session_expires_at.as_ref(), now)?;
        check_caller(
            &caller,
            &req.session_id,
            Some(&req.user_subject),
            Some(&req.agent_id),
            self.drivers.ciba().issuer(),
        )?;
        // The intent is part of the grant's scope: it must be the one the
        // session declared, so an approval never covers another purpose.
        let declared = serde_json::from_str::<serde_json::Value>(&req.intent).ok();
        if caller.intent.is_none() || declared != caller.intent {
            return Err(ApprovalError::NotTheCaller("intent"));
        }
        if self.store.is_cancelled(&req.session_id).await? {
            return Err(ApprovalError::FailedPrecondition(format!(
                "session `{}` has ended; no approval can be asked for it",
                clip(&req.session_id)
            )));
        }

        let scope = scope_key(&req.session_id, &req.action, &req.resource, &req.intent);
        if let Some(grant) = self.store.use_grant(&scope, now).await? {
            tracing::info!(
                grant_id = %grant.id,
                remaining_uses = grant.remaining_uses,
                "a live grant covers the request; one use consumed"
            );
            return Ok(pb::RequestApprovalResponse {
                outcome: pb::RequestOutcome::GrantUsed.into(),
                ticket: None,
                grant: Some(grant_pb(&grant)),
            });
        }

        // Sanitized as the PDP sanitizes, with a fresh confirmation code.
        let message = self
            .drivers
            .ciba()
            .binding_message(Sentence::Policy(&req.binding_message))?;
        let ciba = self.drivers.ciba();
        let max_expiry = ciba.requested_expiry(expiry);
        let expires_at = now
            .saturating_add(i64::try_from(max_expiry.as_millis()).unwrap_or(i64::MAX))
            .min(session_expires_at);
        // Refused before anything is stored; `create` checks again after
        // the reservation.
        if expires_at.saturating_sub(now) < 1000 {
            return Err(ApprovalError::FailedPrecondition(
                "the session ends in less than a second; there is no time to ask the user".into(),
            ));
        }
        let ticket = NewTicket {
            id: format!("tkt_{}", uuid::Uuid::new_v4().simple()),
            session_id: req.session_id.clone(),
            scope_key: scope,
            user_subject: req.user_subject.clone(),
            agent_id: req.agent_id.clone(),
            action: req.action.clone(),
            resource: req.resource.clone(),
            intent: req.intent.clone(),
            binding_message: message.text().to_owned(),
            confirmation_code: message.code().as_str().to_owned(),
            delivery_mode: ciba.delivery_mode().as_str(),
            expires_at,
            session_expires_at,
            policy_ids: req.policy_ids.clone(),
            policy_version: req.policy_version.clone(),
        };
        // INVARIANT: the reservation and the request to the IdP run to the
        // end on their own task, so a caller that goes away mid-call never
        // leaves a ticket reserved and unsent.
        let this = Arc::clone(&self);
        let created = tokio::spawn(async move { this.create(ticket, message).await })
            .await
            .map_err(|e| ApprovalError::Internal(format!("ticket creation task failed: {e}")))??;
        let (outcome, row) = created;
        Ok(pb::RequestApprovalResponse {
            outcome: outcome.into(),
            ticket: Some(self.ticket_pb(&row).await?),
            grant: None,
        })
    }

    /// Reserves the ticket (or finds the pending one, or a limit) and
    /// sends the new request to the IdP.
    async fn create(
        &self,
        ticket: NewTicket,
        message: crate::ciba::BindingMessage,
    ) -> Result<(pb::RequestOutcome, TicketRow), ApprovalError> {
        let now = now_ms();
        let owner = self.drivers.owner().to_owned();
        let row = match self
            .store
            .reserve(
                &ticket,
                &self.limits,
                &owner,
                self.drivers.owner_until(),
                now,
            )
            .await?
        {
            Reserved::Existing(row) => {
                tracing::info!(ticket = %row.id, "a pending ticket covers the request; the user is not asked again");
                return Ok((pb::RequestOutcome::TicketReused, row));
            }
            Reserved::Limited(limited) => {
                tracing::warn!(
                    user = %clip(&ticket.user_subject),
                    agent = %clip(&ticket.agent_id),
                    action = %clip(&ticket.action),
                    limit = ?limited,
                    "approval prompt refused by the anti-fatigue limits; the IdP was not contacted"
                );
                return Err(ApprovalError::Limited(limited));
            }
            Reserved::Created(row) => row,
        };
        let remaining =
            Duration::from_millis(u64::try_from(row.expires_at.saturating_sub(now)).unwrap_or(0));
        // Requests and sessions under a second were refused before anything
        // was stored; this only catches a clock that moved on meanwhile.
        if remaining.is_zero() {
            self.not_sent(
                &row.id,
                Sent::Refused,
                "failed: the session ended before the user could be asked",
            )
            .await;
            return Err(ApprovalError::FailedPrecondition(
                "the session ended before the user could be asked".into(),
            ));
        }
        // The IdP counts whole seconds: round up, or the user loses most of
        // a second (2 s asked, 1 s given); the ticket's own deadline below
        // still ends it at `expires_at`.
        let requested = Duration::from_secs(
            remaining
                .as_millis()
                .div_ceil(1000)
                .try_into()
                .unwrap_or(u64::MAX),
        );
        let started = self
            .drivers
            .ciba()
            .start(&AuthenticationRequest {
                user: &row.user_subject,
                binding_message: &message,
                requested_expiry: Some(requested),
            })
            .await;
        let mut started = match started {
            Ok(started) => started,
            Err(e) => {
                let error = ApprovalError::from(e);
                let (sent, reason) = match &error {
                    ApprovalError::IdpRefused(code) => (
                        Sent::Refused,
                        format!("failed: the IdP refused the request (`{code}`)"),
                    ),
                    ApprovalError::IdpUnavailable(_) => {
                        (Sent::Unknown, "failed: the IdP was unavailable".to_owned())
                    }
                    _ => (
                        Sent::Refused,
                        "failed: the request could not be sent".to_owned(),
                    ),
                };
                self.not_sent(&row.id, sent, &reason).await;
                return Err(error);
            }
        };
        let deadline = unix_ms(started.pending.state.deadline).min(row.expires_at);
        // INVARIANT: the driver's deadline is the stored one, never later.
        started.pending.state.deadline = std::time::SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(deadline).unwrap_or(0));
        let hash = started
            .notification_token
            .as_ref()
            .map(|t| t.hash().to_hex());
        let sent = self
            .store
            .mark_sent(
                &row.id,
                started.pending.auth_req_id.as_str(),
                started.pending.state.interval,
                deadline,
                hash.as_deref(),
                deadline,
            )
            .await?;
        if sent {
            tracing::info!(
                ticket = %row.id,
                mode = self.drivers.ciba().delivery_mode().as_str(),
                expires_in_ms = deadline.saturating_sub(now_ms()),
                "the user is being asked to approve"
            );
            self.drivers.drive(&row.id, started.pending);
        }
        self.drivers.changed(&row.id);
        let row = self
            .store
            .ticket(&row.id)
            .await?
            .ok_or_else(|| ApprovalError::Internal("a reserved ticket disappeared".into()))?;
        Ok((pb::RequestOutcome::TicketCreated, row))
    }

    async fn not_sent(&self, id: &str, sent: Sent, reason: &str) {
        match self.store.mark_not_sent(id, sent, reason, now_ms()).await {
            Ok(_) => self.drivers.changed(id),
            // The claim loop ends it: a reserved, unsent ticket whose owner
            // is gone is marked FAILED when it is claimed.
            Err(e) => tracing::warn!(ticket = %id, error = %e, "could not record an unsent ticket"),
        }
    }

    /// The ticket `id` of the caller's session.
    async fn owned_ticket(
        &self,
        caller: &Caller,
        ticket_id: &str,
        session_id: &str,
    ) -> Result<TicketRow, ApprovalError> {
        check_text("ticket_id", ticket_id, MAX_TICKET_ID_BYTES)?;
        check_text("session_id", session_id, MAX_SESSION_BYTES)?;
        check_caller(caller, session_id, None, None, "")?;
        match self.store.ticket(ticket_id).await? {
            Some(row) if row.session_id == session_id => Ok(row),
            // A ticket of another session is reported as missing.
            _ => Err(ApprovalError::NotFound(clip(ticket_id))),
        }
    }

    async fn cancel_session(
        &self,
        req: pb::CancelSessionRequest,
    ) -> Result<pb::CancelSessionResponse, ApprovalError> {
        check_text("session_id", &req.session_id, MAX_SESSION_BYTES)?;
        if req.reason.len() > MAX_REASON_BYTES {
            return Err(ApprovalError::InvalidArgument(format!(
                "`reason` is {} bytes, the limit is {MAX_REASON_BYTES}",
                req.reason.len()
            )));
        }
        let reason = if req.reason.is_empty() {
            "session ended".to_owned()
        } else {
            clip(&req.reason)
        };
        let done = self
            .store
            .cancel_session(&req.session_id, &reason, now_ms())
            .await?;
        for id in &done.cancelled_tickets {
            self.drivers.wake(id);
            self.drivers.changed(id);
        }
        tracing::info!(
            cancelled_tickets = done.cancelled_tickets.len(),
            revoked_grants = done.revoked_grants.len(),
            already_cancelled = done.already_cancelled,
            "session ended for approvals"
        );
        Ok(pb::CancelSessionResponse {
            cancelled_ticket_ids: done.cancelled_tickets,
            revoked_grant_ids: done.revoked_grants,
            cancelled_at: Some(to_ts(done.cancelled_at)),
            already_cancelled: done.already_cancelled,
        })
    }

    /// Sends snapshots of `row`'s ticket to `tx` until it is terminal, the
    /// watcher goes away, or the server stops.
    async fn watch(
        self: Arc<Self>,
        mut row: TicketRow,
        tx: mpsc::Sender<Result<pb::WatchApprovalResponse, Status>>,
    ) {
        let mut changes = self.drivers.subscribe();
        let mut stop = self.stop.clone();
        let mut last_sent = tokio::time::Instant::now();
        let mut first = true;
        let mut last_state = None;
        loop {
            if first || Some(row.state) != last_state || last_sent.elapsed() >= self.keepalive {
                let ticket = match self.ticket_pb(&row).await {
                    Ok(ticket) => ticket,
                    Err(e) => {
                        let _ = tx.send(Err(into_status(e))).await;
                        return;
                    }
                };
                if tx
                    .send(Ok(pb::WatchApprovalResponse {
                        ticket: Some(ticket),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                first = false;
                last_state = Some(row.state);
                last_sent = tokio::time::Instant::now();
            }
            if row.state.is_terminal() {
                return;
            }
            let keepalive_in = self.keepalive.saturating_sub(last_sent.elapsed());
            tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(id) if id != row.id => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(self.watch_poll.min(keepalive_in)) => {}
                () = tx.closed() => return,
                _ = stop.changed() => {
                    let _ = tx
                        .send(Err(into_status(ApprovalError::ShuttingDown)))
                        .await;
                    return;
                }
            }
            match self.store.ticket(&row.id).await {
                Ok(Some(fresh)) => row = fresh,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(into_status(ApprovalError::from(e)))).await;
                    return;
                }
            }
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchApprovalResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::approval_orchestrator_server::ApprovalOrchestrator for ApprovalService {
    async fn request_approval(
        &self,
        request: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::RequestApprovalResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "approval.request",
            session_id = tracing::field::Empty,
            action = %clip(&req.action),
            resource = %clip(&req.resource),
            outcome = tracing::field::Empty,
            ticket = tracing::field::Empty,
            approval_state = tracing::field::Empty,
        );
        let inner = Arc::clone(&self.inner);
        let result = tracing::Instrument::instrument(
            async move {
                let caller = inner.caller(&metadata).await?;
                inner.request_approval(caller, req).await
            },
            span.clone(),
        )
        .await;
        match result {
            Ok(resp) => {
                span.record("outcome", resp.outcome().as_str_name());
                if let Some(ticket) = &resp.ticket {
                    span.record("ticket", ticket.ticket_id.as_str());
                    span.record("approval_state", ticket.state().as_str_name());
                }
                if let Some(grant) = &resp.grant {
                    span.record("ticket", grant.ticket_id.as_str());
                    span.record("approval_state", pb::TicketState::Approved.as_str_name());
                }
                Ok(Response::new(resp))
            }
            Err(e) => Err(span.in_scope(|| into_status(e))),
        }
    }

    async fn get_approval(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "approval.get",
            session_id = tracing::field::Empty,
            ticket = %clip(&req.ticket_id),
        );
        let inner = Arc::clone(&self.inner);
        tracing::Instrument::instrument(
            async move {
                let caller = inner.caller(&metadata).await?;
                let row = inner
                    .owned_ticket(&caller, &req.ticket_id, &req.session_id)
                    .await?;
                Ok(pb::GetApprovalResponse {
                    ticket: Some(inner.ticket_pb(&row).await?),
                })
            },
            span.clone(),
        )
        .await
        .map(Response::new)
        .map_err(|e: ApprovalError| span.in_scope(|| into_status(e)))
    }

    type WatchApprovalStream = WatchStream;

    async fn watch_approval(
        &self,
        request: Request<pb::WatchApprovalRequest>,
    ) -> Result<Response<Self::WatchApprovalStream>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "approval.watch",
            session_id = tracing::field::Empty,
            ticket = %clip(&req.ticket_id),
        );
        let inner = Arc::clone(&self.inner);
        let row = tracing::Instrument::instrument(
            async {
                let caller = inner.caller(&metadata).await?;
                inner
                    .owned_ticket(&caller, &req.ticket_id, &req.session_id)
                    .await
            },
            span.clone(),
        )
        .await
        .map_err(|e| span.in_scope(|| into_status(e)))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(tracing::Instrument::instrument(inner.watch(row, tx), span));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_session(
        &self,
        request: Request<pb::CancelSessionRequest>,
    ) -> Result<Response<pb::CancelSessionResponse>, Status> {
        let req = request.into_inner();
        let span =
            tracing::info_span!("approval.cancel_session", session_id = %clip(&req.session_id));
        let inner = Arc::clone(&self.inner);
        tracing::Instrument::instrument(
            async move { inner.cancel_session(req).await },
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
    fn text_fields_are_checked() {
        assert!(check_text("f", "", 10).is_err());
        assert!(check_text("f", "a\nb", 10).is_err());
        assert!(check_text("f", " a", 10).is_err());
        assert!(check_text("f", "abcdefghijk", 10).is_err());
        assert!(check_text("f", "abc", 10).is_ok());
    }

    #[test]
    fn binding_messages_are_checked() {
        assert!(check_binding_message("").is_err());
        assert!(check_binding_message("   ").is_err());
        assert!(check_binding_message("Offboard\u{7}?").is_err());
        assert!(check_binding_message(&"x".repeat(129)).is_err());
        assert!(check_binding_message(&"é".repeat(128)).is_ok());
    }

    #[test]
    fn expiry_and_session_end_are_checked() {
        let zero = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        assert!(requested_expiry(Some(&zero)).is_err());
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(requested_expiry(Some(&negative)).is_err());
        let half = prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        };
        assert!(requested_expiry(Some(&half)).is_err());
        assert_eq!(requested_expiry(None).unwrap(), None);
        let past = prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        };
        assert!(matches!(
            session_expiry(Some(&past), 10_000),
            Err(ApprovalError::FailedPrecondition(_))
        ));
        assert!(matches!(
            session_expiry(None, 10_000),
            Err(ApprovalError::InvalidArgument(_))
        ));
    }

    #[test]
    fn intent_must_be_a_json_array() {
        assert!(check_intent("[]").is_ok());
        assert!(check_intent("{}").is_err());
        assert!(check_intent("not json").is_err());
        assert!(check_intent(&format!("[\"{}\"]", "x".repeat(9000))).is_err());
    }
}
