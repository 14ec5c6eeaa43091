//! The gRPC handlers: translate, evaluate, translate back.

use std::sync::Arc;

use prost::Message as _;
use tether_policy::{Decision, Outcome, PolicyPack, Query};
use tether_proto::policy::v1 as pb;
use tether_runtime::into_status;
use tonic::{Request, Response, Status};

use crate::config::RequestLimits;
use crate::error::PdpError;
use crate::store::PolicyStore;

const MAX_REQUEST_ID_BYTES: usize = 128;

/// `tether.policy.v1.PolicyDecision`.
#[derive(Debug, Clone)]
pub struct PolicyDecisionService {
    store: Arc<PolicyStore>,
    limits: RequestLimits,
}

impl PolicyDecisionService {
    pub fn new(store: Arc<PolicyStore>, limits: RequestLimits) -> Self {
        Self { store, limits }
    }

    pub(crate) fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    pub(crate) fn pack(&self) -> Result<Arc<PolicyPack>, PdpError> {
        self.store.current().ok_or(PdpError::NoPolicySet)
    }

    /// Validates and evaluates one request: what gRPC Check, each BatchCheck
    /// item and each AuthZEN evaluation go through (and where decisions are
    /// counted).
    pub(crate) fn check_one(
        &self,
        pack: &PolicyPack,
        req: &pb::CheckRequest,
    ) -> Result<pb::CheckResponse, PdpError> {
        let result = self.evaluate_one(pack, req);
        crate::metrics::decision(&result, pack.version());
        result
    }

    fn evaluate_one(
        &self,
        pack: &PolicyPack,
        req: &pb::CheckRequest,
    ) -> Result<pb::CheckResponse, PdpError> {
        let size = req.encoded_len();
        if size > self.limits.max_request_bytes {
            return Err(PdpError::RequestTooLarge {
                size,
                limit: self.limits.max_request_bytes,
            });
        }
        check_request_id(&req.request_id)?;
        let principal = req
            .principal
            .as_ref()
            .ok_or(PdpError::Missing("principal"))?;
        let action = req.action.as_ref().ok_or(PdpError::Missing("action"))?;
        let resource = req.resource.as_ref().ok_or(PdpError::Missing("resource"))?;
        // Cedar takes any string as an id; a control character in one is
        // never legitimate and would reach log lines and binding messages.
        for (what, uid) in [
            ("principal", principal),
            ("action", action),
            ("resource", resource),
        ] {
            if uid.r#type.chars().any(char::is_control) || uid.id.chars().any(char::is_control) {
                return Err(PdpError::ControlCharacter(what));
            }
        }
        let query = Query {
            principal: (&principal.r#type, &principal.id),
            action: (&action.r#type, &action.id),
            resource: (&resource.r#type, &resource.id),
            context_json: &req.context_json,
            entities_json: &req.entities_json,
        };
        let decision = pack.evaluate(&query, &self.limits.evaluation)?;
        Ok(to_response(decision, pack, &req.request_id))
    }
}

/// A caller's request id: at most 128 bytes, no control characters.
pub(crate) fn check_request_id(id: &str) -> Result<(), PdpError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(PdpError::RequestIdTooLong(id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err(PdpError::ControlCharacter("request_id"));
    }
    Ok(())
}

fn to_response(decision: Decision, pack: &PolicyPack, request_id: &str) -> pb::CheckResponse {
    let (kind, step_up) = match decision.outcome {
        Outcome::Allow => (pb::Decision::Allow, None),
        Outcome::Deny => (pb::Decision::Deny, None),
        Outcome::ApprovalRequired(s) => (
            pb::Decision::ApprovalRequired,
            Some(pb::StepUp {
                method: s.method,
                binding_message: s.binding_message,
                policy_ids: s.policy_ids,
            }),
        ),
    };
    pb::CheckResponse {
        decision: kind.into(),
        signals: pack.signals(&decision.policy_ids),
        policy_ids: decision.policy_ids,
        reasons: decision.reasons,
        errors: decision
            .errors
            .into_iter()
            .map(|e| pb::EvaluationError {
                policy_id: e.policy_id,
                message: e.message,
            })
            .collect(),
        step_up,
        policy_version: pack.version().to_owned(),
        request_id: request_id.to_owned(),
    }
}

pub(crate) fn record(span: &tracing::Span, resp: &pb::CheckResponse) {
    span.record("decision", resp.decision().as_str_name());
    span.record("policy_ids", resp.policy_ids.join(",").as_str());
    span.record("policy_version", resp.policy_version.as_str());
}

#[tonic::async_trait]
impl pb::policy_decision_server::PolicyDecision for PolicyDecisionService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "pdp.check",
            request_id = %req.request_id,
            action = req.action.as_ref().map(|a| a.id.as_str()).unwrap_or_default(),
            decision = tracing::field::Empty,
            policy_ids = tracing::field::Empty,
            policy_version = tracing::field::Empty,
        );
        let _enter = span.enter();
        let pack = self.pack().map_err(into_status)?;
        match self.check_one(&pack, &req) {
            Ok(resp) => {
                record(&span, &resp);
                if !resp.errors.is_empty() {
                    tracing::warn!(
                        errors = resp.errors.len(),
                        "policy evaluation errors, denied"
                    );
                }
                Ok(Response::new(resp))
            }
            Err(e) => {
                span.record("decision", "REJECTED");
                Err(into_status(e))
            }
        }
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let req = request.into_inner();
        let _span = tracing::info_span!("pdp.batch_check", items = req.requests.len()).entered();
        if req.requests.len() > self.limits.max_batch_size {
            return Err(into_status(PdpError::BatchTooLarge {
                size: req.requests.len(),
                limit: self.limits.max_batch_size,
            }));
        }
        let pack = self.pack().map_err(into_status)?;
        let responses = req
            .requests
            .iter()
            .map(|item| match self.check_one(&pack, item) {
                Ok(resp) => resp,
                Err(e) => rejected_item(&e, pack.version(), &item.request_id),
            })
            .collect();
        Ok(Response::new(pb::BatchCheckResponse {
            responses,
            policy_version: pack.version().to_owned(),
        }))
    }

    async fn get_policy_set(
        &self,
        _request: Request<pb::GetPolicySetRequest>,
    ) -> Result<Response<pb::GetPolicySetResponse>, Status> {
        let pack = self.pack().map_err(into_status)?;
        let status = self.store.status();
        let stats = pack.stats();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::GetPolicySetResponse {
            version: pack.version().to_owned(),
            policy_count: count(stats.policies),
            permit_count: count(stats.permits),
            forbid_count: count(stats.forbids),
            step_up_count: count(stats.step_ups),
            entity_count: count(stats.entities),
            source: pack.source().to_owned(),
            loaded_at_unix: status.loaded_at_unix,
            last_load_status: if status.ok {
                pb::LoadStatus::Ok
            } else {
                pb::LoadStatus::Rejected
            }
            .into(),
            last_load_error: status.error,
            last_load_attempt_unix: status.attempted_at_unix,
        }))
    }
}

/// A batch item that could not be evaluated: a DENY that says why.
fn rejected_item(err: &PdpError, version: &str, request_id: &str) -> pb::CheckResponse {
    let (code, message) = tether_runtime::error::public_parts(err);
    pb::CheckResponse {
        decision: pb::Decision::Deny.into(),
        policy_ids: Vec::new(),
        reasons: vec![format!("request rejected ({code:?}): {message}")],
        errors: vec![pb::EvaluationError {
            policy_id: String::new(),
            message,
        }],
        step_up: None,
        policy_version: version.to_owned(),
        request_id: request_id.chars().take(MAX_REQUEST_ID_BYTES).collect(),
        signals: Vec::new(),
    }
}
