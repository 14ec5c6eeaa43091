//! `tether.identity.v1.IdentityExchange` over gRPC.

use std::sync::Arc;

use tether_proto::identity::v1 as pb;
use tether_token::Actor;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::admin::{self, ListQuery};
use crate::error::{ExchangeError, OAuthCode};
use crate::exchange::{ExchangeInput, Exchanger, Introspection, TOKEN_TYPE_ACCESS, unix_now_ms};

/// How long past a session's expiry its revocation stays listed.
const REVOCATION_MARGIN_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct IdentityService {
    exchanger: Arc<Exchanger>,
}

impl IdentityService {
    pub fn new(exchanger: Arc<Exchanger>) -> Self {
        Self { exchanger }
    }
}

pub(crate) fn timestamp(unix_secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: unix_secs,
        nanos: 0,
    })
}

fn actor(a: &Actor) -> pb::Actor {
    pb::Actor {
        sub: a.sub.clone(),
        act: a.act.as_deref().map(|inner| Box::new(actor(inner))),
    }
}

fn user_claims(map: &serde_json::Map<String, serde_json::Value>) -> Option<prost_types::Struct> {
    fn value(v: &serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(value).collect(),
            }),
            serde_json::Value::Object(m) => Kind::StructValue(prost_types::Struct {
                fields: m.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    Some(prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    })
}

fn introspection(i: Introspection) -> pb::IntrospectResponse {
    let c = i.claims;
    pb::IntrospectResponse {
        active: true,
        sub: c.sub,
        act: Some(actor(&c.act)),
        sid: c.sid,
        scope: c.scope,
        aud: c.aud,
        exp: timestamp(c.exp),
        iat: timestamp(c.iat),
        jti: c.jti,
        authorization_details: c
            .authorization_details
            .map(|v| v.to_string())
            .unwrap_or_default(),
        iss: c.iss,
        user_claims: user_claims(&c.user),
        session_expires_at: timestamp(i.session_expires_at),
    }
}

#[tonic::async_trait]
impl pb::identity_exchange_server::IdentityExchange for IdentityService {
    async fn exchange(
        &self,
        request: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::ExchangeResponse>, Status> {
        let r = request.into_inner();
        let input = ExchangeInput {
            subject_token: r.subject_token,
            subject_token_type: r.subject_token_type,
            actor_token: r.actor_token,
            actor_token_type: r.actor_token_type,
            audience: r.audience,
            scope: r.scope,
            requested_token_type: r.requested_token_type,
            authorization_details: r.authorization_details,
            // gRPC has no DPoP binding: a bound subject token is refused.
            dpop_proof: None,
        };
        let span = tracing::info_span!(
            "identity.exchange",
            session_id = tracing::field::Empty,
            agent = tracing::field::Empty,
            user = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let exchanged = self
            .exchanger
            .exchange(&input)
            .instrument(span.clone())
            .await;
        let minted = match exchanged {
            Ok(m) => m,
            Err(e) => {
                span.record("outcome", e.rfc_code());
                span.in_scope(|| tracing::info!(error = %e, "exchange refused"));
                return Err(e.into_status());
            }
        };
        span.record("session_id", minted.claims.sid.as_str());
        span.record("agent", minted.claims.act.sub.as_str());
        span.record("user", minted.claims.sub.as_str());
        span.record("outcome", "minted");
        let c = &minted.claims;
        Ok(Response::new(pb::ExchangeResponse {
            issued_token_type: TOKEN_TYPE_ACCESS.into(),
            token_type: "Bearer".into(),
            expires_in: c.exp - c.iat,
            scope: c.scope.clone(),
            sid: c.sid.clone(),
            expires_at: timestamp(c.exp),
            session_expires_at: timestamp(minted.session_expires_at),
            issued_at: timestamp(c.iat),
            jti: c.jti.clone(),
            audience: c.aud.clone(),
            access_token: minted.access_token,
        }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let r = request.into_inner();
        if r.token.is_empty() || r.token.len() > 16 * 1024 {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`token` must be 1 byte to 16 KiB",
            )
            .into_status());
        }
        match self
            .exchanger
            .introspect(&r.token)
            .await
            .map_err(ExchangeError::into_status)?
        {
            Some(i) => Ok(Response::new(introspection(i))),
            None => Ok(Response::new(pb::IntrospectResponse::default())),
        }
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let r = request.into_inner();
        match self
            .exchanger
            .revoke_session(&r.sid, &r.reason)
            .await
            .map_err(ExchangeError::into_status)?
        {
            Some((at_ms, already)) => Ok(Response::new(pb::RevokeSessionResponse {
                revoked_at: Some(prost_types::Timestamp {
                    seconds: at_ms / 1000,
                    nanos: i32::try_from((at_ms % 1000) * 1_000_000).unwrap_or(0),
                }),
                already_revoked: already,
            })),
            None => Err(ExchangeError::NotFound(
                "no session with this `sid` was ever minted".into(),
            )
            .into_status()),
        }
    }

    async fn list_revoked_sessions(
        &self,
        request: Request<pb::ListRevokedSessionsRequest>,
    ) -> Result<Response<pb::ListRevokedSessionsResponse>, Status> {
        let r = request.into_inner();
        if r.page_size > 1000 {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`page_size` is at most 1000",
            )
            .into_status());
        }
        let limit = if r.page_size == 0 {
            1000
        } else {
            i64::from(r.page_size)
        };
        let now = unix_now_ms();
        let legacy = r.since_unix_ms != 0 || !r.after_sid.is_empty();
        if r.after_sequence < 0 || (legacy && r.after_sequence != 0) {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`after_sequence` must be 0 or more and is not combined with `since_unix_ms` or `after_sid`",
            )
            .into_status());
        }
        if !legacy {
            let page = self
                .exchanger
                .store()
                .revoked_after(r.after_sequence, REVOCATION_MARGIN_MS, limit)
                .await
                .map_err(ExchangeError::into_status)?;
            return Ok(Response::new(pb::ListRevokedSessionsResponse {
                sessions: page
                    .entries
                    .into_iter()
                    .map(|e| pb::RevokedSession {
                        sid: e.sid,
                        revoked_at_unix_ms: e.revoked_at_ms,
                        session_expires_at_unix_ms: e.expires_at_ms,
                        sequence: e.seq,
                    })
                    .collect(),
                server_time_unix_ms: now,
                more: page.more,
                next_after_sequence: page.next_after_seq,
            }));
        }
        // Deprecated time paging, for verifiers not yet upgraded. Entries
        // stay listed until their tokens are dead even with clock skew:
        // the verifier's leeway is at most a minute.
        let rows = self
            .exchanger
            .store()
            .revoked_since(
                r.since_unix_ms,
                &r.after_sid,
                now - REVOCATION_MARGIN_MS,
                limit + 1,
            )
            .await
            .map_err(ExchangeError::into_status)?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(Response::new(pb::ListRevokedSessionsResponse {
            sessions: rows
                .into_iter()
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .map(|(sid, revoked, expires)| pb::RevokedSession {
                    sid,
                    revoked_at_unix_ms: revoked,
                    session_expires_at_unix_ms: expires,
                    sequence: 0,
                })
                .collect(),
            server_time_unix_ms: now,
            more,
            next_after_sequence: 0,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let r = request.into_inner();
        let query = ListQuery::parse(&r, unix_now_ms()).map_err(ExchangeError::into_status)?;
        let limit = usize::try_from(query.page_size).unwrap_or(usize::MAX);
        // One more than a page tells whether another page follows.
        let mut rows = self
            .exchanger
            .store()
            .list_sessions(
                &query.filter,
                query.after.as_ref(),
                i64::from(query.page_size) + 1,
            )
            .await
            .map_err(ExchangeError::into_status)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_page_token = match rows.last() {
            Some(last) if more => query.next_page_token(last),
            _ => String::new(),
        };
        tracing::debug!(sessions = rows.len(), more, "sessions listed");
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: rows.into_iter().map(admin::session_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let r = request.into_inner();
        admin::check_sid(&r.sid).map_err(ExchangeError::into_status)?;
        let session = self
            .exchanger
            .store()
            .session(&r.sid)
            .await
            .map_err(ExchangeError::into_status)?
            .ok_or_else(|| {
                ExchangeError::NotFound(format!("no session `{}`", r.sid)).into_status()
            })?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(admin::session_pb(session)),
        }))
    }
}
