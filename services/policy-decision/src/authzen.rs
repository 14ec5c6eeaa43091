//! The OpenID AuthZEN Authorization API 1.0 (its HTTPS JSON binding), served
//! beside gRPC on the same listener: `POST /access/v1/evaluation`,
//! `POST /access/v1/evaluations` and `GET /.well-known/authzen-configuration`.
//!
//! Same mTLS and caller table as gRPC: the three paths are bindings of
//! Check, BatchCheck and GetPolicySet (`tether_runtime::authz::HTTP_BINDINGS`),
//! so a caller reaches them exactly when it may call those methods.
//!
//! An AuthZEN evaluation becomes a `CheckRequest` and goes through the same
//! `check_one` as gRPC Check: the same size limits, the same validation
//! against the schema, the same fail-closed evaluation. The mapping
//! (`docs/design/007-authzen.md`):
//! - `subject` → the principal, `resource` → the resource: `type` is the
//!   Cedar entity type, `id` the entity id; non-empty `properties` are that
//!   entity's attributes, sent as a request entity (Cedar's entity JSON),
//!   exactly what gRPC callers put in `entities_json`;
//! - `action.name` → `Action::"<name>"`; non-empty `action.properties` →
//!   `context.action_properties` (Cedar actions take no request-time
//!   attributes);
//! - `context` → the Cedar context.
//!
//! `decision` is `true` for ALLOW and nothing else. DENY, APPROVAL_REQUIRED
//! and evaluation errors are `false`; the decision's `context` carries the
//! determining policy ids, the reasons, any evaluation error, the step-up
//! and the policy version.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tether_policy::PolicyPack;
use tether_proto::policy::v1 as pb;
use tether_runtime::{ServiceError as _, ServiceErrorCode, clip};

use crate::error::PdpError;
use crate::service::{PolicyDecisionService, check_request_id, record};

/// The Access Evaluation API.
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
/// The Access Evaluations (batch) API.
pub const EVALUATIONS_PATH: &str = "/access/v1/evaluations";
/// The PDP metadata document.
pub const METADATA_PATH: &str = "/.well-known/authzen-configuration";

/// Where non-empty `action.properties` are put in the Cedar context.
pub const ACTION_PROPERTIES: &str = "action_properties";

/// The Cedar entity type of every action.
const ACTION_TYPE: &str = "Action";

const X_REQUEST_ID: &str = "x-request-id";

/// How long a PEP may cache the metadata document.
const METADATA_MAX_AGE: &str = "max-age=300";

/// What the handlers share.
#[derive(Debug)]
struct Authzen {
    service: PolicyDecisionService,
    /// Bound on a `/access/v1/evaluations` body: the transport limit, as
    /// for a gRPC BatchCheck (each item is then held to
    /// `limits.max_request_bytes`, as a BatchCheck item is).
    max_batch_body_bytes: usize,
    /// The scheme of the metadata's URLs: `http` only in plaintext mode.
    scheme: &'static str,
}

/// The AuthZEN routes, to be served with the gRPC routes (`tonic`'s
/// `Routes::from(router)`).
pub fn router(service: PolicyDecisionService, max_batch_body_bytes: usize, tls: bool) -> Router {
    let max_request_bytes = service.limits().max_request_bytes;
    let state = Arc::new(Authzen {
        service,
        max_batch_body_bytes,
        scheme: if tls { "https" } else { "http" },
    });
    Router::new()
        .route(
            EVALUATION_PATH,
            post(evaluation)
                .fallback(only_post)
                .layer(DefaultBodyLimit::max(max_request_bytes)),
        )
        .route(
            EVALUATIONS_PATH,
            post(evaluations)
                .fallback(only_post)
                .layer(DefaultBodyLimit::max(max_batch_body_bytes)),
        )
        .route(METADATA_PATH, get(metadata).fallback(only_get))
        .layer(axum::middleware::from_fn(echo_request_id))
        .fallback(not_found)
        .with_state(state)
}

/// An entity reference: `subject` or `resource`.
#[derive(Debug, Clone)]
struct Entity {
    kind: String,
    id: String,
    properties: Option<Map<String, Value>>,
}

#[derive(Debug, Clone)]
struct Action {
    name: String,
    properties: Option<Map<String, Value>>,
}

/// One evaluation as sent; in a batch, absent members take the top-level
/// defaults.
#[derive(Debug, Default)]
struct Evaluation {
    subject: Option<Entity>,
    action: Option<Action>,
    resource: Option<Entity>,
    /// Always a JSON object.
    context: Option<Value>,
}

/// `options.evaluations_semantic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    fn parse(options: Option<&Value>) -> Result<Self, PdpError> {
        let options = match options {
            None | Some(Value::Null) => return Ok(Self::ExecuteAll),
            Some(Value::Object(options)) => options,
            Some(_) => return Err(malformed("`options` must be an object")),
        };
        // Other options are the PEP's metadata; unknown ones are ignored.
        match options.get("evaluations_semantic") {
            None | Some(Value::Null) => Ok(Self::ExecuteAll),
            Some(Value::String(s)) if s == "execute_all" => Ok(Self::ExecuteAll),
            Some(Value::String(s)) if s == "deny_on_first_deny" => Ok(Self::DenyOnFirstDeny),
            Some(Value::String(s)) if s == "permit_on_first_permit" => {
                Ok(Self::PermitOnFirstPermit)
            }
            Some(_) => Err(malformed(
                "`options.evaluations_semantic` must be `execute_all`, `deny_on_first_deny` or `permit_on_first_permit`",
            )),
        }
    }

    /// Whether the evaluations stop after this decision.
    fn stops_after(self, allowed: bool) -> bool {
        match self {
            Self::ExecuteAll => false,
            Self::DenyOnFirstDeny => !allowed,
            Self::PermitOnFirstPermit => allowed,
        }
    }
}

fn malformed(message: impl Into<String>) -> PdpError {
    PdpError::Malformed(message.into())
}

// ---- reading the request --------------------------------------------------

/// The caller's `X-Request-ID` ("" without one), held to the same rules as
/// a gRPC `request_id`.
fn request_id(headers: &HeaderMap) -> Result<String, PdpError> {
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    match (ids.next(), ids.next()) {
        (None, _) => Ok(String::new()),
        (Some(id), None) => {
            let id = id
                .to_str()
                .map_err(|_| malformed("`X-Request-ID` must be ASCII"))?;
            check_request_id(id)?;
            Ok(id.to_owned())
        }
        (Some(_), Some(_)) => Err(malformed("more than one `X-Request-ID`")),
    }
}

/// `application/json`, with or without parameters; UTF-8 is checked on the
/// body itself.
fn is_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        return false;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The body as one JSON object: the media type (415), the size (413), then
/// UTF-8, repeated keys and JSON syntax (400).
async fn read_object(request: Request, limit: usize) -> Result<Map<String, Value>, Response> {
    if !is_json(request.headers()) {
        return Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be `application/json`",
        ));
    }
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                error(&PdpError::BodyTooLarge { limit })
            } else {
                error(&malformed("the body could not be read"))
            }
        })?;
    parse_object(&bytes).map_err(|e| error(&e))
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, PdpError> {
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("the body is not UTF-8"))?;
    // A repeated key would let the PEP and the PDP read different requests
    // (serde keeps the last one); the same check as the gRPC JSON fields.
    tether_policy::reject_duplicate_keys(text)
        .map_err(|e| malformed(format!("the body is not valid JSON: {e}")))?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed("the body must be a JSON object")),
        Err(e) => Err(malformed(format!("the body is not valid JSON: {e}"))),
    }
}

/// `null` is read as absent (the spec asks senders to omit nulls).
fn member<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn required_string(obj: &Map<String, Value>, path: &str, key: &str) -> Result<String, PdpError> {
    match member(obj, key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(malformed(format!("`{path}.{key}` must be a string"))),
        None => Err(malformed(format!("`{path}.{key}` is required"))),
    }
}

fn optional_object(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<Map<String, Value>>, PdpError> {
    match member(obj, key) {
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(malformed(format!("`{path}.{key}` must be an object"))),
        None => Ok(None),
    }
}

fn object_member<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, PdpError> {
    let key = path.rsplit('.').next().unwrap_or(path);
    match member(obj, key) {
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(malformed(format!("`{path}` must be an object"))),
        None => Ok(None),
    }
}

/// One evaluation's members; unknown members are ignored, as the spec
/// requires for forward compatibility.
fn parse_evaluation(obj: &Map<String, Value>, prefix: &str) -> Result<Evaluation, PdpError> {
    let entity = |name: &str| -> Result<Option<Entity>, PdpError> {
        let path = format!("{prefix}{name}");
        object_member(obj, &path)?
            .map(|e| {
                Ok::<_, PdpError>(Entity {
                    kind: required_string(e, &path, "type")?,
                    id: required_string(e, &path, "id")?,
                    properties: optional_object(e, &path, "properties")?,
                })
            })
            .transpose()
    };
    let action_path = format!("{prefix}action");
    let action = object_member(obj, &action_path)?
        .map(|a| {
            Ok::<_, PdpError>(Action {
                name: required_string(a, &action_path, "name")?,
                properties: optional_object(a, &action_path, "properties")?,
            })
        })
        .transpose()?;
    let context =
        object_member(obj, &format!("{prefix}context"))?.map(|c| Value::Object(c.clone()));
    Ok(Evaluation {
        subject: entity("subject")?,
        action,
        resource: entity("resource")?,
        context,
    })
}

/// The `CheckRequest` an evaluation stands for.
fn check_request(
    subject: &Entity,
    action: &Action,
    resource: &Entity,
    context: Option<&Value>,
    request_id: &str,
) -> Result<pb::CheckRequest, PdpError> {
    let context_json = match action.properties.as_ref().filter(|p| !p.is_empty()) {
        Some(properties) => {
            let mut merged = match context {
                Some(Value::Object(c)) => c.clone(),
                _ => Map::new(),
            };
            if merged.contains_key(ACTION_PROPERTIES) {
                return Err(malformed(format!(
                    "`context.{ACTION_PROPERTIES}` is where `action.properties` go; send one of them"
                )));
            }
            merged.insert(
                ACTION_PROPERTIES.to_owned(),
                Value::Object(properties.clone()),
            );
            Value::Object(merged).to_string()
        }
        None => context.map(Value::to_string).unwrap_or_default(),
    };
    let entities: Vec<Value> = [subject, resource]
        .into_iter()
        .filter_map(|e| {
            let attrs = e.properties.as_ref().filter(|p| !p.is_empty())?;
            Some(json!({
                "uid": {"type": e.kind, "id": e.id},
                "attrs": attrs,
                "parents": [],
            }))
        })
        .collect();
    let entities_json = if entities.is_empty() {
        String::new()
    } else {
        Value::Array(entities).to_string()
    };
    let uid = |kind: &str, id: &str| {
        Some(pb::EntityUid {
            r#type: kind.to_owned(),
            id: id.to_owned(),
        })
    };
    Ok(pb::CheckRequest {
        principal: uid(&subject.kind, &subject.id),
        action: uid(ACTION_TYPE, &action.name),
        resource: uid(&resource.kind, &resource.id),
        context_json,
        entities_json,
        request_id: request_id.to_owned(),
    })
}

/// A single evaluation's request: all three of subject, action, resource.
fn single_request(e: &Evaluation, request_id: &str) -> Result<pb::CheckRequest, PdpError> {
    let subject = e
        .subject
        .as_ref()
        .ok_or_else(|| malformed("`subject` is required"))?;
    let action = e
        .action
        .as_ref()
        .ok_or_else(|| malformed("`action` is required"))?;
    let resource = e
        .resource
        .as_ref()
        .ok_or_else(|| malformed("`resource` is required"))?;
    check_request(subject, action, resource, e.context.as_ref(), request_id)
}

// ---- answering ------------------------------------------------------------

/// The HTTP status of a refusal: the PDP's one error mapping
/// (`ServiceError::error_code`), read as HTTP.
fn http_status(err: &PdpError) -> StatusCode {
    match err.error_code() {
        ServiceErrorCode::InvalidArgument | ServiceErrorCode::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        ServiceErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ServiceErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ServiceErrorCode::NotFound => StatusCode::NOT_FOUND,
        // Sizes and counts (see `PdpError::error_code`).
        ServiceErrorCode::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ServiceErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ServiceErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(status: StatusCode, body: &Value, cache: &'static str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `{"error": {"status", "message"}}`: the shape AuthZEN gives an error
/// inside a decision, used for whole-request errors too.
fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"status": status.as_u16(), "message": message}}),
        "no-store",
    )
}

fn error(err: &PdpError) -> Response {
    tracing::debug!(error = %err, "AuthZEN request refused");
    error_response(http_status(err), &err.public_message())
}

/// A decision in AuthZEN form.
fn decision(resp: &pb::CheckResponse) -> Value {
    // INVARIANT: `true` is ALLOW and nothing else; APPROVAL_REQUIRED, DENY
    // and every evaluation error are `false`.
    let allowed = resp.decision() == pb::Decision::Allow;
    let mut context = Map::new();
    context.insert("policy_ids".into(), json!(resp.policy_ids));
    context.insert("reasons".into(), json!(resp.reasons));
    if !resp.errors.is_empty() {
        let errors: Vec<Value> = resp
            .errors
            .iter()
            .map(|e| json!({"policy_id": e.policy_id, "message": e.message}))
            .collect();
        context.insert("errors".into(), Value::Array(errors));
    }
    if let Some(s) = &resp.step_up {
        context.insert(
            "step_up".into(),
            json!({
                "method": s.method,
                "binding_message": s.binding_message,
                "policy_ids": s.policy_ids,
            }),
        );
    }
    context.insert("policy_version".into(), json!(resp.policy_version));
    json!({"decision": allowed, "context": context})
}

/// A batch item that could not be evaluated: `false`, with the error in the
/// decision's context as the spec shows it.
fn rejected(err: &PdpError, version: &str) -> Value {
    json!({
        "decision": false,
        "context": {
            "error": {"status": http_status(err).as_u16(), "message": err.public_message()},
            "policy_version": version,
        },
    })
}

impl Authzen {
    /// One evaluation, as gRPC Check does it.
    fn evaluate(&self, pack: &PolicyPack, req: &pb::CheckRequest) -> Result<Value, PdpError> {
        let span = tracing::info_span!(
            "pdp.authzen.evaluation",
            request_id = %clip(&req.request_id),
            action = %req.action.as_ref().map(|a| clip(&a.id)).unwrap_or_default(),
            decision = tracing::field::Empty,
            policy_ids = tracing::field::Empty,
            policy_version = tracing::field::Empty,
        );
        span.in_scope(|| match self.service.check_one(pack, req) {
            Ok(resp) => {
                record(&span, &resp);
                if !resp.errors.is_empty() {
                    tracing::warn!(
                        errors = resp.errors.len(),
                        "policy evaluation errors, denied"
                    );
                }
                Ok(decision(&resp))
            }
            Err(e) => {
                span.record("decision", "REJECTED");
                Err(e)
            }
        })
    }

    fn single(&self, e: &Evaluation, request_id: &str) -> Result<Value, PdpError> {
        let req = single_request(e, request_id)?;
        let pack = self.service.pack()?;
        self.evaluate(&pack, &req)
    }

    fn batch(&self, body: &Map<String, Value>, request_id: &str) -> Result<Value, PdpError> {
        let defaults = parse_evaluation(body, "")?;
        let items = match member(body, "evaluations") {
            None => &[][..],
            Some(Value::Array(items)) => items.as_slice(),
            Some(_) => return Err(malformed("`evaluations` must be an array")),
        };
        let semantic = Semantic::parse(member(body, "options"))?;
        // Without evaluations the request is a single evaluation, answered
        // as one (the spec's backwards-compatible form).
        if items.is_empty() {
            return self.single(&defaults, request_id);
        }
        let limit = self.service.limits().max_batch_size;
        if items.len() > limit {
            return Err(PdpError::BatchTooLarge {
                size: items.len(),
                limit,
            });
        }
        // Every item is read before anything is evaluated: a malformed one
        // refuses the whole request.
        let mut requests = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let prefix = format!("evaluations[{i}].");
            let Value::Object(item) = item else {
                return Err(malformed(format!("`evaluations[{i}]` must be an object")));
            };
            let e = parse_evaluation(item, &prefix)?;
            let required = |what: &str| {
                malformed(format!(
                    "`{prefix}{what}` is required: give it in the evaluation or at the top level"
                ))
            };
            let subject = e.subject.as_ref().or(defaults.subject.as_ref());
            let action = e.action.as_ref().or(defaults.action.as_ref());
            let resource = e.resource.as_ref().or(defaults.resource.as_ref());
            // An evaluation's context replaces the default, as any other member.
            let context = e.context.as_ref().or(defaults.context.as_ref());
            let request = check_request(
                subject.ok_or_else(|| required("subject"))?,
                action.ok_or_else(|| required("action"))?,
                resource.ok_or_else(|| required("resource"))?,
                context,
                request_id,
            )?;
            // Defaults are copied into every item: an item over the limit
            // is dropped here, refused in its place in the answer, so a
            // large default times many items is never held in memory.
            let size = prost::Message::encoded_len(&request);
            let limit = self.service.limits().max_request_bytes;
            requests.push(if size > limit {
                Err(PdpError::RequestTooLarge { size, limit })
            } else {
                Ok(request)
            });
        }
        let pack = self.service.pack()?;
        let _span = tracing::info_span!(
            "pdp.authzen.evaluations",
            request_id = %clip(request_id),
            items = requests.len(),
            semantic = ?semantic,
        )
        .entered();
        let mut decisions = Vec::with_capacity(requests.len());
        for req in requests {
            let (answer, allowed) = match req.and_then(|req| self.evaluate(&pack, &req)) {
                Ok(answer) => {
                    let allowed = answer["decision"] == Value::Bool(true);
                    (answer, allowed)
                }
                Err(e) => (rejected(&e, pack.version()), false),
            };
            decisions.push(answer);
            if semantic.stops_after(allowed) {
                break;
            }
        }
        Ok(json!({"evaluations": decisions}))
    }
}

// ---- handlers -------------------------------------------------------------

async fn evaluation(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    let request_id = match request_id(request.headers()) {
        Ok(id) => id,
        Err(e) => return error(&e),
    };
    let limit = az.service.limits().max_request_bytes;
    let body = match read_object(request, limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let answer = parse_evaluation(&body, "").and_then(|e| az.single(&e, &request_id));
    match answer {
        Ok(answer) => json_response(StatusCode::OK, &answer, "no-store"),
        Err(e) => error(&e),
    }
}

async fn evaluations(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    let request_id = match request_id(request.headers()) {
        Ok(id) => id,
        Err(e) => return error(&e),
    };
    let body = match read_object(request, az.max_batch_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match az.batch(&body, &request_id) {
        Ok(answer) => json_response(StatusCode::OK, &answer, "no-store"),
        Err(e) => error(&e),
    }
}

/// The PDP metadata. The identifier is the authority the PEP connected to
/// (its mTLS check of the PDP's SPIFFE ID is what rules out a mix-up);
/// only the endpoints served are listed, so the search APIs are absent.
async fn metadata(State(az): State<Arc<Authzen>>, uri: Uri, headers: HeaderMap) -> Response {
    let authority = uri.authority().cloned().or_else(|| {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(host), None) => host.to_str().ok()?.parse::<Authority>().ok(),
            _ => None,
        }
    });
    let Some(authority) = authority.filter(|a| !a.as_str().contains('@')) else {
        return error(&malformed("the request names no valid host"));
    };
    let base = format!("{}://{}", az.scheme, authority.as_str());
    json_response(
        StatusCode::OK,
        &json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}{EVALUATION_PATH}"),
            "access_evaluations_endpoint": format!("{base}{EVALUATIONS_PATH}"),
        }),
        METADATA_MAX_AGE,
    )
}

async fn only_post() -> Response {
    method_not_allowed("POST")
}

async fn only_get() -> Response {
    method_not_allowed("GET, HEAD")
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("this endpoint takes {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Every response to a request with one `X-Request-ID` carries it back, as
/// the spec requires (errors included).
async fn echo_request_id(request: Request, next: Next) -> Response {
    let mut ids = request.headers().get_all(X_REQUEST_ID).iter();
    let id = match (ids.next(), ids.next()) {
        (Some(id), None) => Some(id.clone()),
        _ => None,
    };
    let mut response = next.run(request).await;
    if let Some(id) = id {
        response.headers_mut().insert(X_REQUEST_ID, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> Map<String, Value> {
        parse_object(text.as_bytes()).unwrap()
    }

    fn refused(result: Result<impl std::fmt::Debug, PdpError>) -> String {
        match result {
            Err(PdpError::Malformed(message)) => message,
            other => panic!("expected a malformed request, got {other:?}"),
        }
    }

    #[test]
    fn the_spec_example_maps_to_a_cedar_request() {
        let body = object(
            r#"{"subject": {"type": "user", "id": "alice@example.com", "properties": {"department": "Sales"}},
                "resource": {"type": "account", "id": "123"},
                "action": {"name": "can_read", "properties": {"method": "GET"}},
                "context": {"time": "1985-10-26T01:22-07:00"},
                "unknown_member": [1, 2]}"#,
        );
        let req = single_request(&parse_evaluation(&body, "").unwrap(), "r-1").unwrap();
        let uid = |t: &str, id: &str| {
            Some(pb::EntityUid {
                r#type: t.into(),
                id: id.into(),
            })
        };
        assert_eq!(req.principal, uid("user", "alice@example.com"));
        assert_eq!(req.action, uid("Action", "can_read"));
        assert_eq!(req.resource, uid("account", "123"));
        assert_eq!(req.request_id, "r-1");
        let context: Value = serde_json::from_str(&req.context_json).unwrap();
        assert_eq!(
            context,
            json!({"time": "1985-10-26T01:22-07:00", "action_properties": {"method": "GET"}})
        );
        let entities: Value = serde_json::from_str(&req.entities_json).unwrap();
        assert_eq!(
            entities,
            json!([{"uid": {"type": "user", "id": "alice@example.com"}, "attrs": {"department": "Sales"}, "parents": []}])
        );
    }

    #[test]
    fn without_properties_or_context_nothing_extra_is_sent() {
        let body = object(
            r#"{"subject": {"type": "user", "id": "a", "properties": {}},
                "resource": {"type": "doc", "id": "1", "properties": null},
                "action": {"name": "read", "properties": {}}}"#,
        );
        let req = single_request(&parse_evaluation(&body, "").unwrap(), "").unwrap();
        assert_eq!(req.context_json, "");
        assert_eq!(req.entities_json, "");
    }

    #[test]
    fn malformed_members_are_named() {
        for (text, expected) in [
            (
                r#"{"action": {"name": "r"}, "resource": {"type": "d", "id": "1"}}"#,
                "`subject` is required",
            ),
            (
                r#"{"subject": {"type": "u"}, "action": {"name": "r"}, "resource": {"type": "d", "id": "1"}}"#,
                "`subject.id` is required",
            ),
            (
                r#"{"subject": {"type": "u", "id": 7}, "action": {"name": "r"}, "resource": {"type": "d", "id": "1"}}"#,
                "`subject.id` must be a string",
            ),
            (
                r#"{"subject": "alice", "action": {"name": "r"}, "resource": {"type": "d", "id": "1"}}"#,
                "`subject` must be an object",
            ),
            (
                r#"{"subject": {"type": "u", "id": "a"}, "action": {}, "resource": {"type": "d", "id": "1"}}"#,
                "`action.name` is required",
            ),
            (
                r#"{"subject": {"type": "u", "id": "a"}, "action": {"name": "r"}, "resource": {"type": "d", "id": "1"}, "context": []}"#,
                "`context` must be an object",
            ),
            (
                r#"{"subject": {"type": "u", "id": "a", "properties": [1]}, "action": {"name": "r"}, "resource": {"type": "d", "id": "1"}}"#,
                "`subject.properties` must be an object",
            ),
            (
                r#"{"subject": {"type": "u", "id": "a"}, "action": {"name": "r", "properties": {"m": 1}}, "resource": {"type": "d", "id": "1"}, "context": {"action_properties": {}}}"#,
                "`context.action_properties` is where",
            ),
        ] {
            let message =
                refused(parse_evaluation(&object(text), "").and_then(|e| single_request(&e, "")));
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn only_a_json_object_without_repeated_keys_is_read() {
        for (text, expected) in [
            ("[1]", "must be a JSON object"),
            ("{\"a\": 1, \"a\": 2}", "not valid JSON"),
            (
                "{\"subject\": {\"id\": \"a\", \"id\": \"b\"}}",
                "not valid JSON",
            ),
            ("{\"a\": \"\u{7}\"}", "not valid JSON"),
            ("{\"a\": 1} x", "not valid JSON"),
            ("{", "not valid JSON"),
        ] {
            let message = refused(parse_object(text.as_bytes()));
            assert!(message.contains(expected), "{text}: {message}");
        }
        assert!(refused(parse_object(b"{\"a\": \"\xff\"}")).contains("not UTF-8"));
    }

    #[test]
    fn semantics_parse_and_stop_where_the_spec_says() {
        let parse = |v: Value| Semantic::parse(Some(&v));
        assert_eq!(Semantic::parse(None).unwrap(), Semantic::ExecuteAll);
        assert_eq!(parse(json!({"other": 1})).unwrap(), Semantic::ExecuteAll);
        assert_eq!(
            parse(json!({"evaluations_semantic": "deny_on_first_deny"})).unwrap(),
            Semantic::DenyOnFirstDeny
        );
        assert_eq!(
            parse(json!({"evaluations_semantic": "permit_on_first_permit"})).unwrap(),
            Semantic::PermitOnFirstPermit
        );
        assert!(parse(json!({"evaluations_semantic": "first_one_wins"})).is_err());
        assert!(parse(json!("execute_all")).is_err());
        assert!(!Semantic::ExecuteAll.stops_after(false));
        assert!(Semantic::DenyOnFirstDeny.stops_after(false));
        assert!(!Semantic::DenyOnFirstDeny.stops_after(true));
        assert!(Semantic::PermitOnFirstPermit.stops_after(true));
        assert!(!Semantic::PermitOnFirstPermit.stops_after(false));
    }

    #[test]
    fn only_allow_is_true() {
        for (kind, expected) in [
            (pb::Decision::Allow, true),
            (pb::Decision::Deny, false),
            (pb::Decision::ApprovalRequired, false),
            (pb::Decision::Unspecified, false),
        ] {
            let resp = pb::CheckResponse {
                decision: kind.into(),
                ..Default::default()
            };
            assert_eq!(decision(&resp)["decision"], json!(expected), "{kind:?}");
        }
    }

    #[test]
    fn request_ids_follow_the_grpc_rules() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert_eq!(request_id(&headers(&[])).unwrap(), "");
        assert_eq!(request_id(&headers(&["abc-1"])).unwrap(), "abc-1");
        assert!(request_id(&headers(&["a", "b"])).is_err());
        assert!(matches!(
            request_id(&headers(&["x".repeat(129).as_str()])),
            Err(PdpError::RequestIdTooLong(129))
        ));
        assert!(matches!(
            request_id(&headers(&["a\tb"])),
            Err(PdpError::ControlCharacter("request_id"))
        ));
    }
}
