//! The CIBA ping callback (`ciba.notification_endpoint`).
//!
//! The IdP POSTs `{"auth_req_id": "…"}` with `Authorization: Bearer
//! <client_notification_token>`. The token is compared, in constant time,
//! with the hash stored for that request; a match only wakes the ticket's
//! fetch from the token endpoint. A ping carries no result, so a forged,
//! replayed or late ping changes nothing: a wrong token is 401, a ping for
//! a ticket that already ended is 204 and ignored.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use crate::ciba::{NotificationTokenHash, bearer_token};
use crate::driver::{Drivers, now_ms};
use crate::store::{State as TicketState, Store};

/// A ping is one short JSON object.
const MAX_BODY_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone)]
struct Ping {
    store: Store,
    drivers: Drivers,
}

#[derive(Deserialize)]
struct Body {
    auth_req_id: String,
}

/// The router serving pings at `path`.
pub fn router(path: &str, store: Store, drivers: Drivers) -> axum::Router {
    axum::Router::new()
        .route(path, axum::routing::post(notify))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Ping { store, drivers })
}

async fn notify(State(ping): State<Ping>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let token = match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(bearer_token),
        _ => None,
    };
    let Some(token) = token else {
        tracing::warn!("CIBA ping without one bearer notification token refused");
        return StatusCode::UNAUTHORIZED;
    };
    let Ok(Body { auth_req_id }) = serde_json::from_slice::<Body>(&body) else {
        tracing::warn!("CIBA ping with an unreadable body refused");
        return StatusCode::BAD_REQUEST;
    };
    let ticket = match ping.store.ticket_by_auth_req_id(&auth_req_id).await {
        Ok(ticket) => ticket,
        Err(e) => {
            tracing::warn!(error = %e, "ticket store unavailable for a CIBA ping");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    };
    let matched = ticket.as_ref().is_some_and(|t| {
        t.notification_token_hash
            .as_deref()
            .and_then(NotificationTokenHash::from_hex)
            .is_some_and(|hash| hash.matches(token))
    });
    let Some(ticket) = ticket.filter(|_| matched) else {
        // One answer for an unknown request and a wrong token.
        tracing::warn!("CIBA ping with an unknown request or a wrong notification token refused");
        return StatusCode::UNAUTHORIZED;
    };
    if ticket.state != TicketState::Pending {
        tracing::debug!(ticket = %ticket.id, "CIBA ping for a ticket that already ended; ignored");
        return StatusCode::NO_CONTENT;
    }
    if !ping.drivers.wake(&ticket.id) {
        // Another replica drives the ticket: it picks the ping up.
        if let Err(e) = ping.store.record_ping(&ticket.id, now_ms()).await {
            tracing::warn!(ticket = %ticket.id, error = %e, "could not record a CIBA ping");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    tracing::debug!(ticket = %ticket.id, "CIBA ping accepted; fetching the result");
    StatusCode::NO_CONTENT
}
