//! `tether.facade.v1.SessionAdmin`: the operators' view of sessions
//! (`tether session list|show|end`, `tether leases list`).
//!
//! Who may call it is decided twice: the per-RPC caller table allows only
//! the `admin` identity (`tether.facade.v1.SessionAdmin/*` in
//! `tether_runtime::authz::DEFAULTS`), and every handler also needs the
//! caller's certificate identity, which it names in the logs and in the
//! audit record of a session it ends. A plaintext facade, where the table is
//! not enforced, therefore refuses this service rather than serve it to
//! anyone who can reach the agent port.
//!
//! Facts come from the identity exchange (`ListSessions`, `GetSession`),
//! leases from the credential issuer (`ListLeases`). Approval tickets are
//! not shown: the approval orchestrator has no RPC that lists a session's
//! tickets. Ending a session goes through
//! `Inner::end_session_everywhere`, the same path as the agent's
//! EndSession.

use tether_proto::credentials::v1 as credentials_pb;
use tether_proto::facade::v1 as pb;
use tether_proto::identity::v1 as identity_pb;
use tether_runtime::clock::unix_now;
use tether_runtime::into_status;
use tether_runtime::tls::PeerInfo;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use crate::error::{Dependency, FacadeError, downstream};
use crate::monitoring::{Quarantine, QuarantineKind};
use crate::service::{EndedBy, FacadeService, SessionOwner, lease_pb};

/// The longest `reason` an operator may give (what the services downstream
/// accept).
const MAX_REASON_BYTES: usize = 256;
/// The longest user subject or agent id a filter may name.
const MAX_FILTER_BYTES: usize = 256;
/// Sessions per page at most.
const MAX_PAGE_SIZE: u32 = 1000;
/// Leases shown with a session (one page of the issuer's list).
const MAX_LEASES: u32 = 1000;
/// What the records and the session's revocation say when the operator
/// gave no reason.
const DEFAULT_REASON: &str = "session ended by an operator";

/// The operator calling: the SPIFFE ID of their verified client
/// certificate.
fn operator<T>(request: &Request<T>) -> Result<String, FacadeError> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.identity.as_deref())
        .map(str::to_owned)
        .ok_or(FacadeError::OperatorUnauthenticated)
}

fn check_session_id(sid: &str) -> Result<(), FacadeError> {
    tether_token::check_session_id(sid)
        .map_err(|e| FacadeError::InvalidRequest(format!("`session_id`: {e}")))
}

fn check_text(field: &str, value: &str, limit: usize) -> Result<(), FacadeError> {
    if value.len() > limit {
        return Err(FacadeError::InvalidRequest(format!(
            "`{field}` is {} bytes, the limit is {limit}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(FacadeError::InvalidRequest(format!(
            "`{field}` contains control characters"
        )));
    }
    Ok(())
}

fn check_list(req: &pb::AdminListSessionsRequest) -> Result<(), FacadeError> {
    check_text("user_subject", &req.user_subject, MAX_FILTER_BYTES)?;
    check_text("agent_id", &req.agent_id, MAX_FILTER_BYTES)?;
    if req.page_size > MAX_PAGE_SIZE {
        return Err(FacadeError::InvalidRequest(format!(
            "`page_size` is at most {MAX_PAGE_SIZE}"
        )));
    }
    // The identity exchange checks the token itself; this only keeps an
    // absurd one from travelling there.
    check_text("page_token", &req.page_token, 4096)
}

/// The status of a session with these facts at `now` (Unix seconds).
fn status(session: &identity_pb::Session, now: i64) -> pb::SessionStatus {
    if session.revoked_at.is_some() {
        pb::SessionStatus::Revoked
    } else if session.expires_at.is_none_or(|at| at.seconds <= now) {
        pb::SessionStatus::Expired
    } else {
        pb::SessionStatus::Active
    }
}

fn summary(session: identity_pb::Session, now: i64) -> pb::SessionSummary {
    pb::SessionSummary {
        status: status(&session, now).into(),
        session_id: session.sid,
        user_issuer: session.user_issuer,
        user_subject: session.user_subject,
        agent_id: session.agent_id,
        intent: session.intent,
        scope: session.scope,
        started_at: session.started_at,
        expires_at: session.expires_at,
        revoked_at: session.revoked_at,
        revoke_reason: session.revoke_reason,
    }
}

impl FacadeService {
    /// The identity exchange's facts of `sid` (NOT_FOUND when it never
    /// existed).
    async fn session_facts(&self, sid: &str) -> Result<identity_pb::Session, FacadeError> {
        self.inner
            .upstreams
            .identity
            .clone()
            .get_session(identity_pb::GetSessionRequest { sid: sid.into() })
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => FacadeError::SessionNotFound(sid.to_owned()),
                _ => downstream(Dependency::Identity, &status),
            })?
            .into_inner()
            .session
            .ok_or_else(|| FacadeError::Internal("GetSession returned no session".into()))
    }

    async fn admin_list(
        &self,
        req: pb::AdminListSessionsRequest,
    ) -> Result<pb::AdminListSessionsResponse, FacadeError> {
        check_list(&req)?;
        let page = self
            .inner
            .upstreams
            .identity
            .clone()
            .list_sessions(identity_pb::ListSessionsRequest {
                user_subject: req.user_subject,
                agent_id: req.agent_id,
                active_only: req.active_only,
                page_size: req.page_size,
                page_token: req.page_token,
            })
            .await
            .map_err(|status| downstream(Dependency::Identity, &status))?
            .into_inner();
        let now = unix_now();
        Ok(pb::AdminListSessionsResponse {
            sessions: page.sessions.into_iter().map(|s| summary(s, now)).collect(),
            next_page_token: page.next_page_token,
        })
    }

    async fn admin_get(
        &self,
        req: pb::AdminGetSessionRequest,
    ) -> Result<pb::AdminGetSessionResponse, FacadeError> {
        check_session_id(&req.session_id)?;
        let facts = self.session_facts(&req.session_id).await?;
        let leases = self
            .inner
            .upstreams
            .credentials
            .clone()
            .list_leases(credentials_pb::ListLeasesRequest {
                session_id: req.session_id.clone(),
                page_size: MAX_LEASES,
                page_token: String::new(),
            })
            .await
            .map_err(|status| downstream(Dependency::Credentials, &status))?
            .into_inner();
        Ok(pb::AdminGetSessionResponse {
            session: Some(summary(facts, unix_now())),
            leases: leases.leases.iter().map(lease_pb).collect(),
        })
    }

    async fn admin_end(
        &self,
        operator: String,
        req: pb::AdminEndSessionRequest,
    ) -> Result<pb::AdminEndSessionResponse, FacadeError> {
        check_session_id(&req.session_id)?;
        check_text("reason", &req.reason, MAX_REASON_BYTES)?;
        // Who the session belongs to, for its records; and NOT_FOUND
        // before anything is revoked anywhere. An identity exchange that
        // cannot answer must not stop an operator cutting a session off
        // (an incident is when it matters): the end goes ahead everywhere
        // it can, its records naming an owner not known then.
        let owner = match self.session_facts(&req.session_id).await {
            Ok(facts) => SessionOwner {
                sid: facts.sid,
                agent: facts.agent_id,
                user_idp: facts.user_issuer,
                user_sub: facts.user_subject,
            },
            Err(FacadeError::Dependency { dependency, detail }) => {
                tracing::warn!(
                    session_id = %req.session_id,
                    dependency = dependency.as_str(),
                    error = %detail,
                    "ending a session whose owner cannot be looked up now"
                );
                SessionOwner {
                    sid: req.session_id.clone(),
                    agent: String::new(),
                    user_idp: String::new(),
                    user_sub: String::new(),
                }
            }
            Err(e) => return Err(e),
        };
        let reason = if req.reason.trim().is_empty() {
            DEFAULT_REASON.to_owned()
        } else {
            req.reason
        };
        let receipt = self
            .inner
            .end_session_everywhere(&owner, &reason, &EndedBy::Operator(operator))
            .await?;
        Ok(pb::AdminEndSessionResponse {
            receipt: Some(receipt),
        })
    }
}

/// The longest quarantine id accepted (ids are `q_` + 32 hex digits).
const MAX_QUARANTINE_ID_BYTES: usize = 128;
/// Quarantines listed at most.
const MAX_QUARANTINES: u32 = 1000;

fn check_quarantine_id(id: &str) -> Result<(), FacadeError> {
    if id.is_empty()
        || id.len() > MAX_QUARANTINE_ID_BYTES
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(FacadeError::InvalidRequest(format!(
            "`quarantine_id` must be 1 to {MAX_QUARANTINE_ID_BYTES} ASCII letters, digits and `_`"
        )));
    }
    Ok(())
}

fn ts_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn quarantine_pb(q: &Quarantine, now_ms: i64) -> pb::Quarantine {
    pb::Quarantine {
        quarantine_id: q.id.clone(),
        kind: match q.kind {
            QuarantineKind::Session => pb::QuarantineKind::Session,
            QuarantineKind::Agent => pb::QuarantineKind::Agent,
        }
        .into(),
        subject: q.subject.clone(),
        rule: q.rule.clone(),
        reason: q.reason.clone(),
        session_id: q.session_id.clone(),
        agent_id: q.agent.clone(),
        user_subject: q.user_sub.clone(),
        created_at: Some(ts_ms(q.created_at_ms)),
        until: q.until_ms.map(ts_ms),
        lifted_at: q.lifted_at_ms.map(ts_ms),
        lifted_by: q.lifted_by.clone(),
        lift_reason: q.lift_reason.clone(),
        active: q.active(now_ms),
    }
}

impl FacadeService {
    async fn admin_list_quarantines(
        &self,
        req: pb::ListQuarantinesRequest,
    ) -> Result<pb::ListQuarantinesResponse, FacadeError> {
        if req.limit > MAX_QUARANTINES {
            return Err(FacadeError::InvalidRequest(format!(
                "`limit` is at most {MAX_QUARANTINES}"
            )));
        }
        let limit = if req.limit == 0 { 100 } else { req.limit };
        let found = self.inner.monitor.list(req.active_only, limit).await?;
        let now = tether_runtime::clock::unix_now_ms();
        Ok(pb::ListQuarantinesResponse {
            quarantines: found.iter().map(|q| quarantine_pb(q, now)).collect(),
        })
    }

    async fn admin_lift(
        &self,
        operator: &str,
        req: pb::LiftQuarantineRequest,
    ) -> Result<pb::LiftQuarantineResponse, FacadeError> {
        check_quarantine_id(&req.quarantine_id)?;
        check_text("reason", &req.reason, MAX_REASON_BYTES)?;
        let reason = if req.reason.trim().is_empty() {
            "lifted by an operator".to_owned()
        } else {
            req.reason
        };
        // The audit log must take the lift: refused while it cannot.
        self.inner.audit_ready()?;
        let (q, lifted) = self
            .inner
            .monitor
            .lift(&req.quarantine_id, operator, &reason)
            .await?;
        if lifted {
            self.inner.record_lift(&q, operator).await?;
            tracing::info!(quarantine_id = %q.id, kind = q.kind.as_str(), subject = %q.subject, "quarantine lifted");
        }
        Ok(pb::LiftQuarantineResponse {
            quarantine: Some(quarantine_pb(&q, tether_runtime::clock::unix_now_ms())),
            lifted,
        })
    }
}

/// The span of one admin call: the operator and, once known, the session.
fn admin_span(name: &'static str, operator: &str) -> tracing::Span {
    tracing::info_span!(
        "facade.admin",
        rpc = name,
        operator = %operator,
        session_id = tracing::field::Empty,
    )
}

#[tonic::async_trait]
impl pb::session_admin_server::SessionAdmin for FacadeService {
    async fn list_sessions(
        &self,
        request: Request<pb::AdminListSessionsRequest>,
    ) -> Result<Response<pb::AdminListSessionsResponse>, Status> {
        let operator = operator(&request).map_err(into_status)?;
        let span = admin_span("ListSessions", &operator);
        let this = self.clone();
        async move {
            let listed = this.admin_list(request.into_inner()).await;
            if let Ok(page) = &listed {
                tracing::info!(sessions = page.sessions.len(), "sessions listed");
            }
            listed
        }
        .instrument(span.clone())
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn get_session(
        &self,
        request: Request<pb::AdminGetSessionRequest>,
    ) -> Result<Response<pb::AdminGetSessionResponse>, Status> {
        let operator = operator(&request).map_err(into_status)?;
        let span = admin_span("GetSession", &operator);
        let this = self.clone();
        let req = request.into_inner();
        async move {
            if tether_token::check_session_id(&req.session_id).is_ok() {
                tracing::Span::current().record("session_id", req.session_id.as_str());
            }
            this.admin_get(req).await
        }
        .instrument(span.clone())
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn end_session(
        &self,
        request: Request<pb::AdminEndSessionRequest>,
    ) -> Result<Response<pb::AdminEndSessionResponse>, Status> {
        let operator = operator(&request).map_err(into_status)?;
        let span = admin_span("EndSession", &operator);
        let this = self.clone();
        let req = request.into_inner();
        async move {
            if tether_token::check_session_id(&req.session_id).is_ok() {
                tracing::Span::current().record("session_id", req.session_id.as_str());
            }
            let ended = this.admin_end(operator, req).await;
            if let Err(e) = &ended {
                tracing::warn!(error = %e, "an operator's end of a session failed");
            }
            ended
        }
        .instrument(span.clone())
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn list_quarantines(
        &self,
        request: Request<pb::ListQuarantinesRequest>,
    ) -> Result<Response<pb::ListQuarantinesResponse>, Status> {
        let operator = operator(&request).map_err(into_status)?;
        let span = admin_span("ListQuarantines", &operator);
        let this = self.clone();
        async move { this.admin_list_quarantines(request.into_inner()).await }
            .instrument(span.clone())
            .await
            .map(Response::new)
            .map_err(|e| span.in_scope(|| into_status(e)))
    }

    async fn lift_quarantine(
        &self,
        request: Request<pb::LiftQuarantineRequest>,
    ) -> Result<Response<pb::LiftQuarantineResponse>, Status> {
        let operator = operator(&request).map_err(into_status)?;
        let span = admin_span("LiftQuarantine", &operator);
        let this = self.clone();
        let req = request.into_inner();
        async move {
            let lifted = this.admin_lift(&operator, req).await;
            if let Err(e) = &lifted {
                tracing::warn!(error = %e, "an operator's lift of a quarantine failed");
            }
            lifted
        }
        .instrument(span.clone())
        .await
        .map(Response::new)
        .map_err(|e| span.in_scope(|| into_status(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(revoked: bool, expires_at: i64) -> identity_pb::Session {
        identity_pb::Session {
            sid: "s_1".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: expires_at,
                nanos: 0,
            }),
            revoked_at: revoked.then_some(prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn statuses_from_the_facts() {
        assert_eq!(status(&session(false, 100), 99), pb::SessionStatus::Active);
        assert_eq!(
            status(&session(false, 100), 100),
            pb::SessionStatus::Expired
        );
        assert_eq!(status(&session(true, 100), 99), pb::SessionStatus::Revoked);
        let no_end = identity_pb::Session::default();
        assert_eq!(status(&no_end, 0), pb::SessionStatus::Expired);
    }

    #[test]
    fn operator_input_is_bounded_and_free_of_control_characters() {
        check_session_id("s_0123456789abcdef").unwrap();
        for bad in ["", "s_1\n", "s 1", &"s".repeat(129), "s_\u{1b}"] {
            let e = check_session_id(bad).unwrap_err();
            assert!(matches!(e, FacadeError::InvalidRequest(_)), "{bad:?}");
        }
        check_text("reason", "suspected prompt injection", MAX_REASON_BYTES).unwrap();
        for bad in [
            "a\nb",
            "\u{7f}",
            "\u{9b}31m",
            &"r".repeat(MAX_REASON_BYTES + 1),
        ] {
            assert!(
                check_text("reason", bad, MAX_REASON_BYTES).is_err(),
                "{bad:?}"
            );
        }
        let mut list = pb::AdminListSessionsRequest {
            page_size: MAX_PAGE_SIZE,
            ..Default::default()
        };
        check_list(&list).unwrap();
        list.page_size = MAX_PAGE_SIZE + 1;
        assert!(check_list(&list).is_err());
        list.page_size = 0;
        list.user_subject = "alice\r\n".into();
        assert!(check_list(&list).is_err());
    }

    #[test]
    fn quarantine_ids_are_checked() {
        check_quarantine_id("q_0123456789abcdef0123456789abcdef").unwrap();
        for bad in [
            "",
            "q_1\n",
            "q 1",
            "q-1",
            "q_\u{1b}",
            &"q".repeat(MAX_QUARANTINE_ID_BYTES + 1),
        ] {
            assert!(
                matches!(
                    check_quarantine_id(bad),
                    Err(FacadeError::InvalidRequest(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_certificate_is_unauthenticated() {
        let request = Request::new(());
        assert!(matches!(
            operator(&request),
            Err(FacadeError::OperatorUnauthenticated)
        ));
        let mut request = Request::new(());
        request.extensions_mut().insert(PeerInfo {
            remote_addr: None,
            identity: Some("spiffe://tether.test/tether/admin".into()),
        });
        assert_eq!(
            operator(&request).unwrap(),
            "spiffe://tether.test/tether/admin"
        );
    }
}
