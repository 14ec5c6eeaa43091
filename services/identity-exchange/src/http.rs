//! The OAuth HTTP endpoints, for standard clients: RFC 8693 `/token`,
//! RFC 7517 JWKS, RFC 8414 metadata, RFC 7662 `/introspect`, RFC 7009
//! `/revoke`. Same semantics (and the same code) as the gRPC service.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;

use crate::error::{ExchangeError, OAuthCode};
use crate::exchange::{
    ExchangeInput, Exchanger, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID,
    TOKEN_TYPE_JWT,
};

/// Largest form body accepted on any endpoint.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub fn router(exchanger: Arc<Exchanger>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/introspect", post(introspect))
        .route("/revoke", post(revoke))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(exchanger)
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(err: &ExchangeError) -> Response {
    let description = tether_runtime::ServiceError::public_message(err);
    let mut response = (
        err.http_status(),
        Json(json!({"error": err.rfc_code(), "error_description": description})),
    )
        .into_response();
    if err.http_status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    no_store(response)
}

async fn token(
    State(ex): State<Arc<Exchanger>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("grant_type") != GRANT_TYPE_TOKEN_EXCHANGE {
        return error(&ExchangeError::oauth(
            OAuthCode::UnsupportedGrantType,
            format!("`grant_type` must be `{GRANT_TYPE_TOKEN_EXCHANGE}`"),
        ));
    }
    // RFC 8693 allows `resource` and `audience`; Tether issues for exactly one.
    let audience = match (form.get("audience"), form.get("resource")) {
        (Some(a), None) | (None, Some(a)) => a.clone(),
        (Some(a), Some(r)) if a == r => a.clone(),
        (None, None) => String::new(),
        _ => {
            return error(&ExchangeError::oauth(
                OAuthCode::InvalidTarget,
                "give exactly one target: `audience` or `resource`",
            ));
        }
    };
    let input = ExchangeInput {
        subject_token: field("subject_token"),
        subject_token_type: field("subject_token_type"),
        actor_token: field("actor_token"),
        actor_token_type: field("actor_token_type"),
        audience,
        scope: field("scope"),
        requested_token_type: field("requested_token_type"),
        authorization_details: field("authorization_details"),
    };
    match ex.exchange(&input).await {
        Ok(minted) => {
            let c = &minted.claims;
            no_store(
                Json(json!({
                    "access_token": minted.access_token,
                    "issued_token_type": TOKEN_TYPE_ACCESS,
                    "token_type": "Bearer",
                    "expires_in": c.exp - c.iat,
                    "scope": c.scope,
                }))
                .into_response(),
            )
        }
        Err(e) => {
            tracing::info!(error = %e, "exchange refused");
            error(&e)
        }
    }
}

/// The `token` form field (RFC 7662 / RFC 7009), or the error to answer.
fn required_token(form: &HashMap<String, String>) -> Result<String, ExchangeError> {
    match form.get("token") {
        Some(token) if !token.is_empty() => Ok(token.clone()),
        _ => Err(ExchangeError::oauth(
            OAuthCode::InvalidRequest,
            "`token` is required",
        )),
    }
}

async fn introspect(
    State(ex): State<Arc<Exchanger>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = match required_token(&form) {
        Ok(token) => token,
        Err(e) => return error(&e),
    };
    match ex.introspect(&token).await {
        Ok(Some(i)) => {
            let c = i.claims;
            let mut body = json!({
                "active": true,
                "iss": c.iss,
                "sub": c.sub,
                "aud": c.aud,
                "scope": c.scope,
                "client_id": c.client_id,
                "token_type": "Bearer",
                "exp": c.exp,
                "iat": c.iat,
                "jti": c.jti,
                "sid": c.sid,
                "act": c.act,
            });
            if let Some(details) = c.authorization_details {
                body["authorization_details"] = details;
            }
            no_store(Json(body).into_response())
        }
        Ok(None) => no_store(Json(json!({"active": false})).into_response()),
        Err(e) => error(&e),
    }
}

async fn revoke(
    State(ex): State<Arc<Exchanger>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = match required_token(&form) {
        Ok(token) => token,
        Err(e) => return error(&e),
    };
    match ex.revoke_token(&token).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => error(&e),
    }
}

async fn jwks(State(ex): State<Arc<Exchanger>>) -> Response {
    let mut response = Json(ex.ring().jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

async fn metadata(State(ex): State<Arc<Exchanger>>) -> Response {
    let issuer = ex.issuer();
    Json(json!({
        "issuer": issuer,
        "token_endpoint": ex.token_endpoint(),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "subject_token_types_supported": [TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID],
        "actor_token_types_supported": [TOKEN_TYPE_JWT],
        "authorization_details_types_supported": ["*"],
    }))
    .into_response()
}
