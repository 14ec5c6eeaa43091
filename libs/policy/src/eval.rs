//! Fail-closed evaluation of one request against a pack.

use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityId, EntityTypeName, EntityUid,
    PolicyId, PolicySet, Request, Response,
};
use serde_json::Value;

use crate::pack::PolicyPack;
use crate::step_up::{Fields, StepUpPolicy, prompt};

/// One authorization question, with context and entities in Cedar's JSON
/// formats (empty strings, or JSON whitespace only, mean `{}` and `[]`).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// `(entity type, id)` of the principal.
    pub principal: (&'a str, &'a str),
    /// `(entity type, id)` of the action, normally `("Action", "read")`.
    pub action: (&'a str, &'a str),
    /// `(entity type, id)` of the resource.
    pub resource: (&'a str, &'a str),
    pub context_json: &'a str,
    pub entities_json: &'a str,
}

/// Bounds on what one request may carry. Checked before anything is parsed
/// by Cedar or evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes of `context_json` + `entities_json` together.
    pub max_json_bytes: usize,
    /// Request entities per request.
    pub max_entities: usize,
    /// Nesting depth of the context JSON (an object inside an object is 2).
    pub max_context_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_json_bytes: 256 * 1024,
            max_entities: 256,
            max_context_depth: 8,
        }
    }
}

/// A request that cannot be evaluated at all. Nothing was evaluated.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A uid, the context or the entities are malformed or do not match the
    /// schema (unknown entity type, unknown action, wrong attribute type...).
    #[error("{0}")]
    Invalid(String),
    /// Over a size or count limit.
    #[error("{0}")]
    TooLarge(String),
}

/// The three answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    ApprovalRequired(StepUp),
}

/// What a step-up asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// `ciba`.
    pub method: String,
    /// The prompt for the one approval that lifts every policy in
    /// `policy_ids`: each one's filled `@binding_message` (its id when it
    /// has none), joined with ` + `; empty when none of them has one.
    pub binding_message: String,
    /// The step-up policies that denied.
    pub policy_ids: Vec<String>,
}

/// An evaluation error in one policy. Any of these makes the answer a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    pub policy_id: String,
    pub message: String,
}

/// The answer with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// Policies that determined the outcome.
    pub policy_ids: Vec<String>,
    /// Human-readable explanation.
    pub reasons: Vec<String>,
    /// Evaluation errors (non-empty implies [`Outcome::Deny`]).
    pub errors: Vec<EvalError>,
}

impl PolicyPack {
    /// Evaluates `query`. `Err` means the request was refused before any
    /// evaluation; every `Ok` that is not [`Outcome::Allow`] is a deny of some
    /// kind.
    pub fn evaluate(&self, query: &Query<'_>, limits: &Limits) -> Result<Decision, RequestError> {
        let (principal, action, resource) = self.checked_uids(query, limits)?;
        let uids = (&principal, &action, &resource);
        match self.evaluate_direct(query, limits, uids) {
            Some(decision) => Ok(decision),
            None => self.evaluate_general(query, limits, uids),
        }
    }

    /// What both paths take for granted: the size limit, and uids of a
    /// declared action and declared entity types.
    fn checked_uids(
        &self,
        query: &Query<'_>,
        limits: &Limits,
    ) -> Result<(EntityUid, EntityUid, EntityUid), RequestError> {
        let json_bytes = query.context_json.len() + query.entities_json.len();
        if json_bytes > limits.max_json_bytes {
            return Err(RequestError::TooLarge(format!(
                "context and entities are {json_bytes} bytes, the limit is {}",
                limits.max_json_bytes
            )));
        }
        let principal = self.uid("principal", query.principal)?;
        let action = self.uid("action", query.action)?;
        let resource = self.uid("resource", query.resource)?;
        if !self.actions.contains(&action) {
            return Err(RequestError::Invalid(format!(
                "unknown action `{}`, not declared in the schema",
                tether_runtime::clip(&action.to_string())
            )));
        }
        for (what, uid) in [("principal", &principal), ("resource", &resource)] {
            if !self.entity_types.contains(uid.type_name()) {
                return Err(RequestError::Invalid(format!(
                    "unknown {what} entity type `{}`, not declared in the schema",
                    tether_runtime::clip(&uid.type_name().to_string())
                )));
            }
        }
        Ok((principal, action, resource))
    }

    /// Cedar's own JSON parsers, every error reported, step-up handled.
    fn evaluate_general(
        &self,
        query: &Query<'_>,
        limits: &Limits,
        (principal, action, resource): (&EntityUid, &EntityUid, &EntityUid),
    ) -> Result<Decision, RequestError> {
        let context_value = parse_json(query.context_json, "context", || {
            Value::Object(serde_json::Map::new())
        })?;
        if !context_value.is_object() {
            return Err(RequestError::Invalid(
                "context must be a JSON object".into(),
            ));
        }
        let depth = json_depth(&context_value);
        if depth > limits.max_context_depth {
            return Err(RequestError::Invalid(format!(
                "context is nested {depth} levels deep, the limit is {}",
                limits.max_context_depth
            )));
        }
        let entities_value =
            parse_json(query.entities_json, "entities", || Value::Array(Vec::new()))?;
        let Some(items) = entities_value.as_array() else {
            return Err(RequestError::Invalid(
                "entities must be a JSON array".into(),
            ));
        };
        if items.len() > limits.max_entities {
            return Err(RequestError::TooLarge(format!(
                "{} request entities, the limit is {}",
                items.len(),
                limits.max_entities
            )));
        }
        let entities = self.request_entities(&entities_value, items)?;
        let policies = self.slices.get(action).unwrap_or(&self.policies);

        let request = self.request(principal, action, resource, &context_value)?;
        let response = Authorizer::new().is_authorized(&request, policies, &entities);
        let decision = self.interpret(&response);
        if decision.outcome != Outcome::Deny || !decision.errors.is_empty() {
            return Ok(decision);
        }
        Ok(self.step_up(
            decision,
            query,
            (principal, action, resource),
            context_value,
            (policies, &entities),
        ))
    }

    /// The hot path: JSON text straight to Cedar values, then evaluation.
    /// `None` hands the request to the general path, which parses the JSON
    /// with Cedar's own parser, reports any error, and owns step-up.
    fn evaluate_direct(
        &self,
        query: &Query<'_>,
        limits: &Limits,
        (principal, action, resource): (&EntityUid, &EntityUid, &EntityUid),
    ) -> Option<Decision> {
        let fields = crate::fast::context(
            query.context_json,
            limits.max_context_depth,
            &self.type_names,
        )?;
        let list =
            crate::fast::entities(query.entities_json, limits.max_entities, &self.type_names)?;
        let entities = if list.is_empty() {
            self.entities.clone()
        } else {
            self.entities
                .clone()
                .add_entities(list, Some(&self.schema))
                .ok()?
        };
        let context = Context::from_pairs(fields).ok()?;
        let request = Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            Some(&self.schema),
        )
        .ok()?;
        let policies = self.slices.get(action).unwrap_or(&self.policies);
        let decision =
            self.interpret(&Authorizer::new().is_authorized(&request, policies, &entities));
        let maybe_step_up = decision.outcome == Outcome::Deny
            && decision.errors.is_empty()
            && !decision.policy_ids.is_empty()
            && decision
                .policy_ids
                .iter()
                .all(|id| self.step_ups.contains_key(&PolicyId::new(id)));
        (!maybe_step_up).then_some(decision)
    }

    /// The static entities plus the request's, validated against the schema.
    fn request_entities(&self, json: &Value, items: &[Value]) -> Result<Entities, RequestError> {
        if items.is_empty() {
            return Ok(self.entities.clone());
        }
        self.entities
            .clone()
            .add_entities_from_json_value(json.clone(), Some(&self.schema))
            .map_err(|e| RequestError::Invalid(format!("invalid entities: {}", chain(&e))))
    }

    fn request(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: &Value,
    ) -> Result<Request, RequestError> {
        let build = |context: Context| {
            Request::new(
                principal.clone(),
                action.clone(),
                resource.clone(),
                context,
                Some(&self.schema),
            )
            .map_err(|e| RequestError::Invalid(format!("invalid request: {}", chain(&e))))
        };
        let context = Context::from_json_value(context.clone(), Some((&self.schema, action)))
            .map_err(|e| RequestError::Invalid(format!("invalid context: {}", chain(&e))))?;
        build(context)
    }

    fn interpret(&self, response: &Response) -> Decision {
        let diagnostics = response.diagnostics();
        let mut errors: Vec<EvalError> = diagnostics
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(inner) = e;
                EvalError {
                    policy_id: inner.policy_id().to_string(),
                    message: inner.inner().to_string(),
                }
            })
            .collect();
        errors.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
        // Cedar reports the determining policies as a set: sorted, so the
        // same question gets the same answer from any slice of the pack.
        let mut determining: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        determining.sort_unstable();
        if !errors.is_empty() {
            // INVARIANT: Cedar skips a policy that errors. A skipped forbid
            // must never let a permit through, so any error is a deny.
            let reasons = errors
                .iter()
                .map(|e| {
                    format!(
                        "policy `{}` failed to evaluate ({}); an evaluation error is a deny",
                        e.policy_id, e.message
                    )
                })
                .collect();
            return Decision {
                outcome: Outcome::Deny,
                policy_ids: errors.iter().map(|e| e.policy_id.clone()).collect(),
                reasons,
                errors,
            };
        }
        match response.decision() {
            CedarDecision::Allow => Decision {
                outcome: Outcome::Allow,
                reasons: determining
                    .iter()
                    .map(|id| format!("permitted by `{id}`"))
                    .collect(),
                policy_ids: determining,
                errors,
            },
            CedarDecision::Deny if determining.is_empty() => Decision {
                outcome: Outcome::Deny,
                policy_ids: Vec::new(),
                reasons: vec!["no policy permits this request (default deny)".into()],
                errors,
            },
            CedarDecision::Deny => Decision {
                outcome: Outcome::Deny,
                reasons: determining
                    .iter()
                    .map(|id| format!("forbidden by `{id}`"))
                    .collect(),
                policy_ids: determining,
                errors,
            },
        }
    }

    /// Turns a deny into APPROVAL_REQUIRED when only step-up forbids denied
    /// and the same request with `context.approval.granted = true` is
    /// allowed without errors. Anything else keeps the deny.
    fn step_up(
        &self,
        deny: Decision,
        query: &Query<'_>,
        (principal, action, resource): (&EntityUid, &EntityUid, &EntityUid),
        mut context: Value,
        (policies, entities): (&PolicySet, &Entities),
    ) -> Decision {
        if deny.policy_ids.is_empty() {
            return deny;
        }
        let mut step_ups = Vec::with_capacity(deny.policy_ids.len());
        for id in &deny.policy_ids {
            match self.step_ups.get(&PolicyId::new(id)) {
                Some(step_up) => step_ups.push((id, step_up)),
                None => return deny,
            }
        }
        let already_granted = context
            .pointer("/approval/granted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if already_granted {
            return deny;
        }
        if let Some(map) = context.as_object_mut() {
            let approval = map
                .entry("approval")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            match approval.as_object_mut() {
                Some(approval) => {
                    approval.insert("granted".into(), Value::Bool(true));
                }
                None => return deny,
            }
        }
        let Ok(request) = self.request(principal, action, resource, &context) else {
            return with_reason(
                deny,
                "step-up not offered: the context cannot carry `approval.granted`",
            );
        };
        let hypothetical =
            self.interpret(&Authorizer::new().is_authorized(&request, policies, entities));
        if hypothetical.outcome != Outcome::Allow {
            return deny;
        }
        let fields = Fields {
            principal: query.principal,
            action: query.action.1,
            resource: query.resource,
        };
        // INVARIANT: `deny.policy_ids` is sorted, so the prompt and the ids
        // are the same on every call.
        let method = step_ups
            .first()
            .map(|(_, s)| s.method.clone())
            .unwrap_or_default();
        let named: Vec<(&str, &StepUpPolicy)> =
            step_ups.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        let binding_message = prompt(&named, &fields);
        let policy_ids: Vec<String> = step_ups.iter().map(|(id, _)| (*id).clone()).collect();
        Decision {
            outcome: Outcome::ApprovalRequired(StepUp {
                method,
                binding_message,
                policy_ids: policy_ids.clone(),
            }),
            reasons: policy_ids
                .iter()
                .map(|id| format!("`{id}` requires the user's approval"))
                .collect(),
            policy_ids,
            errors: Vec::new(),
        }
    }
}

fn with_reason(mut decision: Decision, reason: &str) -> Decision {
    decision.reasons.push(reason.to_owned());
    decision
}

impl PolicyPack {
    /// Builds a uid; type names the schema declares are looked up, not
    /// parsed again.
    fn uid(&self, what: &str, (type_name, id): (&str, &str)) -> Result<EntityUid, RequestError> {
        if let Some(known) = self.type_names.get(type_name)
            && !id.is_empty()
        {
            return Ok(EntityUid::from_type_name_and_id(
                known.clone(),
                EntityId::new(id),
            ));
        }
        uid(what, (type_name, id))
    }
}

fn uid(what: &str, (type_name, id): (&str, &str)) -> Result<EntityUid, RequestError> {
    if type_name.is_empty() {
        return Err(RequestError::Invalid(format!("{what} type is required")));
    }
    if id.is_empty() {
        return Err(RequestError::Invalid(format!("{what} id is required")));
    }
    let type_name = EntityTypeName::from_str(type_name).map_err(|_| {
        RequestError::Invalid(format!(
            "{what} type `{}` is not a valid Cedar type name",
            tether_runtime::clip(type_name)
        ))
    })?;
    Ok(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

fn parse_json(
    text: &str,
    what: &str,
    empty: impl FnOnce() -> Value,
) -> Result<Value, RequestError> {
    if crate::fast::is_blank(text) {
        return Ok(empty());
    }
    crate::fast::reject_duplicate_keys(text)
        .map_err(|e| RequestError::Invalid(format!("{what} is not valid JSON: {e}")))?;
    serde_json::from_str(text)
        .map_err(|e| RequestError::Invalid(format!("{what} is not valid JSON: {e}")))
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "eval_differential_tests.rs"]
mod differential_tests;
