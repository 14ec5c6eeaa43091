//! Refusals of the OAuth HTTP endpoints that happen before a handler runs
//! (the transport's), and client authentication `/token` does not do.
//!
//! Every refusal, the transport's too, is the RFC 6749 §5.2 JSON
//! (`{"error": "invalid_request", "error_description"}`, `Cache-Control:
//! no-store`), with the HTTP status that names the problem (RFC 9110):
//!
//! | problem | status |
//! |---|---|
//! | body over [`MAX_FORM_BYTES`] | 413 Content Too Large |
//! | body not `application/x-www-form-urlencoded` (RFC 6749 §3.2, Appendix B) | 415 Unsupported Media Type |
//! | another method than POST | 405 Method Not Allowed, `Allow: POST` |
//! | body that does not parse as a form | 400 Bad Request |
//!
//! RFC 6749 §5.2 gives 400 "unless specified otherwise"; HTTP specifies
//! these three otherwise, and a client or proxy that branches on the
//! status (retrying a smaller body, fixing its encoder) learns what to fix.
//!
//! `/token` takes no client authentication (its metadata says `none`): the
//! agent proves itself with the RFC 8693 `actor_token`. A request that
//! carries client authentication anyway (`client_assertion`,
//! `client_assertion_type`, `client_secret`, an `Authorization` header) is
//! refused with `invalid_client` (RFC 6749 §5.2: "unsupported
//! authentication method"), never served as if the credential had been
//! checked.

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use tether_runtime::clip;

use crate::error::{ExchangeError, OAuthCode};
use crate::http::{MAX_FORM_BYTES, error};

/// The client authentication methods of `/token`: `none` (RFC 7591 §2).
/// RFC 8414's default for an absent list is `client_secret_basic`, so
/// `none` is stated, and no `token_endpoint_auth_signing_alg_values_supported`
/// goes with it (that entry belongs to `private_key_jwt`).
pub const TOKEN_AUTH_METHODS: [&str; 1] = ["none"];

/// Form fields of client authentication methods `/token` does not do.
const CLIENT_AUTH_FIELDS: [&str; 3] =
    ["client_assertion", "client_assertion_type", "client_secret"];

/// A transport-level refusal: `invalid_request` in the RFC 6749 body, with
/// the HTTP status that names the problem.
fn transport_refusal(status: StatusCode, description: String) -> Response {
    let mut response = error(&ExchangeError::oauth(
        OAuthCode::InvalidRequest,
        description,
    ));
    *response.status_mut() = status;
    response
}

/// Why the form could not be read, as an OAuth error.
pub fn form_refusal(rejection: &FormRejection) -> Response {
    let response = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => transport_refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {MAX_FORM_BYTES} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => transport_refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be `application/x-www-form-urlencoded` (RFC 6749 §3.2)".into(),
        ),
        _ => transport_refusal(
            StatusCode::BAD_REQUEST,
            "the request body is not a valid `application/x-www-form-urlencoded` form".into(),
        ),
    };
    tracing::info!(
        status = response.status().as_u16(),
        "OAuth request body refused"
    );
    response
}

/// The router's 405 for an OAuth endpoint, as an OAuth error; its `Allow`
/// header is kept. (A `route_layer` on the OAuth routes only.)
pub async fn method_refusal(uri: Uri, response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut refusal = transport_refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("`{}` accepts only POST", clip(uri.path())),
    );
    if let Some(allow) = allow {
        refusal.headers_mut().insert(header::ALLOW, allow);
    }
    refusal
}

/// Refuses client authentication at `/token`, which does none (see the
/// module documentation): a client that sent a credential must learn it
/// was not checked.
pub fn no_client_authentication(
    form: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(), ExchangeError> {
    let refuse = |what: &str| {
        Err(ExchangeError::oauth(
            OAuthCode::InvalidClient,
            format!(
                "`/token` takes no client authentication ({what} given): the agent proves itself with `actor_token`, its RFC 7523 assertion or JWT-SVID (RFC 8693)"
            ),
        ))
    };
    if let Some(field) = CLIENT_AUTH_FIELDS.iter().find(|f| form.contains_key(**f)) {
        return refuse(&format!("`{field}`"));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return refuse("an `Authorization` header");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn client_authentication_at_token_is_refused_not_ignored() {
        let plain = form(&[("grant_type", "x"), ("client_id", "hr-assistant")]);
        assert!(no_client_authentication(&plain, &HeaderMap::new()).is_ok());
        for field in CLIENT_AUTH_FIELDS {
            // Even empty: the client meant to authenticate.
            let err =
                no_client_authentication(&form(&[(field, "")]), &HeaderMap::new()).unwrap_err();
            assert_eq!(err.rfc_code(), "invalid_client");
            assert!(err.to_string().contains(field), "{err}");
        }
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic YTpi".parse().unwrap());
        let err = no_client_authentication(&plain, &basic).unwrap_err();
        assert!(err.to_string().contains("`Authorization` header"), "{err}");
    }
}
