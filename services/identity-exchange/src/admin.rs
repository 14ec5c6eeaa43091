//! Session administration for operators: `ListSessions` and `GetSession`,
//! which the facade's `SessionAdmin` (and through it `tether session`)
//! shows. Facts only: the store never holds a token, so none can leak here.
//!
//! Paging is keyset paging on the order the list is read in (newest first:
//! start time, then `sid`), so sessions that start while an operator pages
//! never shift a page. The page token carries the last row's position and
//! the filters it was read with; a token presented with other filters, or
//! one that does not parse, is INVALID_ARGUMENT. It is not signed: a caller
//! who edits the position only pages differently through what it may list
//! anyway (every caller of this RPC may list every session).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tether_proto::identity::v1 as pb;

use crate::error::{ExchangeError, OAuthCode};
use crate::store::{SessionCursor, SessionFilter, SessionRecord};

/// Sessions per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Sessions per page at most.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The longest user subject or agent id a filter may name.
const MAX_FILTER_BYTES: usize = 256;
/// The longest page token this service produces (two filters at their
/// limit, a sid at its limit, base64) with room to spare.
const MAX_PAGE_TOKEN_BYTES: usize = 2048;

fn invalid(message: impl Into<String>) -> ExchangeError {
    ExchangeError::oauth(OAuthCode::InvalidRequest, message)
}

/// A validated `ListSessionsRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: SessionFilter,
    pub after: Option<SessionCursor>,
    pub page_size: u32,
    active_only: bool,
}

/// What a page token holds: where the page ended and what it was read
/// with.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct PageToken {
    /// `created_at` of the last session of the page (Unix ms).
    t: i64,
    /// Its `sid`.
    s: String,
    /// The filters: user, agent, active only.
    u: String,
    a: String,
    o: bool,
}

fn check_filter(field: &str, value: &str) -> Result<(), ExchangeError> {
    if value.len() > MAX_FILTER_BYTES {
        return Err(invalid(format!(
            "`{field}` is {} bytes, the limit is {MAX_FILTER_BYTES}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("`{field}` contains control characters")));
    }
    Ok(())
}

impl ListQuery {
    /// Checks every field of `r`; `now_ms` is when "active" is judged.
    pub fn parse(r: &pb::ListSessionsRequest, now_ms: i64) -> Result<Self, ExchangeError> {
        check_filter("user_subject", &r.user_subject)?;
        check_filter("agent_id", &r.agent_id)?;
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(invalid(format!("`page_size` is at most {MAX_PAGE_SIZE}")));
            }
            n => n,
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(r)?)
        };
        Ok(Self {
            filter: SessionFilter {
                sub: r.user_subject.clone(),
                agent: r.agent_id.clone(),
                active_at_ms: r.active_only.then_some(now_ms),
            },
            after,
            page_size,
            active_only: r.active_only,
        })
    }

    /// The token that continues after `last`.
    pub fn next_page_token(&self, last: &SessionRecord) -> String {
        let token = PageToken {
            t: last.created_at_ms,
            s: last.sid.clone(),
            u: self.filter.sub.clone(),
            a: self.filter.agent.clone(),
            o: self.active_only,
        };
        // A struct of strings, an integer and a bool always serializes.
        let json = serde_json::to_vec(&token).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }
}

fn parse_page_token(r: &pb::ListSessionsRequest) -> Result<SessionCursor, ExchangeError> {
    let bad = || invalid("`page_token` was not produced by ListSessions for these filters");
    if r.page_token.len() > MAX_PAGE_TOKEN_BYTES {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&r.page_token)
        .map_err(|_| bad())?;
    let token: PageToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.u != r.user_subject
        || token.a != r.agent_id
        || token.o != r.active_only
        || tether_token::check_session_id(&token.s).is_err()
    {
        return Err(bad());
    }
    Ok(SessionCursor {
        created_at_ms: token.t,
        sid: token.s,
    })
}

/// A `sid` an operator named: INVALID_ARGUMENT unless it has the syntax
/// of a session id.
pub fn check_sid(sid: &str) -> Result<(), ExchangeError> {
    tether_token::check_session_id(sid).map_err(|e| invalid(format!("`sid`: {e}")))
}

fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // Below 1000 ms, so the product fits an i32.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The facts of `s` as the contract shows them.
pub fn session_pb(s: SessionRecord) -> pb::Session {
    pb::Session {
        sid: s.sid,
        user_issuer: s.user_issuer,
        user_subject: s.sub,
        agent_id: s.agent,
        intent: s.intent,
        scope: s.scope,
        audience: s.audience,
        started_at: Some(timestamp_ms(s.created_at_ms)),
        expires_at: Some(timestamp_ms(s.expires_at_ms)),
        revoked_at: s.revoked_at_ms.map(timestamp_ms),
        revoke_reason: if s.revoked_at_ms.is_some() {
            s.revoke_reason.unwrap_or_default()
        } else {
            String::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(page_token: &str) -> pb::ListSessionsRequest {
        pb::ListSessionsRequest {
            user_subject: "alice".into(),
            agent_id: "hr-assistant".into(),
            active_only: true,
            page_size: 0,
            page_token: page_token.into(),
        }
    }

    fn record(sid: &str, created_at_ms: i64) -> SessionRecord {
        SessionRecord {
            sid: sid.into(),
            user_issuer: "https://idp.example".into(),
            sub: "alice".into(),
            agent: "hr-assistant".into(),
            audience: "https://tether.example/facade".into(),
            scope: "hr:read".into(),
            intent: r#"[{"type":"hr"}]"#.into(),
            created_at_ms,
            expires_at_ms: created_at_ms + 900_000,
            revoked_at_ms: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn defaults_and_limits() {
        let q = ListQuery::parse(&request(""), 42).unwrap();
        assert_eq!(q.page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(q.filter.active_at_ms, Some(42));
        assert!(q.after.is_none());
        let mut r = request("");
        r.page_size = MAX_PAGE_SIZE;
        assert_eq!(ListQuery::parse(&r, 0).unwrap().page_size, MAX_PAGE_SIZE);
        r.page_size = MAX_PAGE_SIZE + 1;
        assert!(ListQuery::parse(&r, 0).is_err());
        for (user, agent) in [
            ("a".repeat(MAX_FILTER_BYTES + 1), String::new()),
            (String::new(), "a".repeat(MAX_FILTER_BYTES + 1)),
            ("alice\n".into(), String::new()),
            (String::new(), "agent\u{1b}[0m".into()),
        ] {
            let r = pb::ListSessionsRequest {
                user_subject: user,
                agent_id: agent,
                ..Default::default()
            };
            let err = ListQuery::parse(&r, 0).unwrap_err();
            assert_eq!(
                tether_runtime::ServiceError::error_code(&err),
                tether_runtime::ServiceErrorCode::InvalidArgument
            );
        }
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_the_filters() {
        let q = ListQuery::parse(&request(""), 0).unwrap();
        let token = q.next_page_token(&record("s_abc", 1_700_000_000_000));
        let next = ListQuery::parse(&request(&token), 0).unwrap();
        assert_eq!(
            next.after,
            Some(SessionCursor {
                created_at_ms: 1_700_000_000_000,
                sid: "s_abc".into()
            })
        );
        let mut other_user = request(&token);
        other_user.user_subject = "carol".into();
        assert!(ListQuery::parse(&other_user, 0).is_err());
        let mut all = request(&token);
        all.active_only = false;
        assert!(ListQuery::parse(&all, 0).is_err());
        for garbage in ["x", "!!!", &"A".repeat(MAX_PAGE_TOKEN_BYTES + 1)] {
            assert!(ListQuery::parse(&request(garbage), 0).is_err(), "{garbage}");
        }
        // A well-formed token whose sid could not be a session's.
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"t":1,"s":"x' OR 1=1 --","u":"alice","a":"hr-assistant","o":true}"#);
        assert!(ListQuery::parse(&request(&forged), 0).is_err());
    }

    #[test]
    fn facts_carry_millisecond_times_and_a_reason_only_when_revoked() {
        let mut r = record("s_1", 1_700_000_000_123);
        r.revoke_reason = Some("stale".into());
        let shown = session_pb(r.clone());
        assert_eq!(shown.started_at.unwrap().seconds, 1_700_000_000);
        assert_eq!(shown.started_at.unwrap().nanos, 123_000_000);
        assert!(shown.revoked_at.is_none());
        assert!(shown.revoke_reason.is_empty());
        r.revoked_at_ms = Some(1_700_000_000_500);
        let shown = session_pb(r);
        assert_eq!(shown.revoke_reason, "stale");
        assert_eq!(shown.revoked_at.unwrap().nanos, 500_000_000);
    }

    #[test]
    fn sids_are_checked() {
        check_sid("s_0123").unwrap();
        for bad in ["", "s 1", "s_1\n", &"a".repeat(129)] {
            assert!(check_sid(bad).is_err(), "{bad:?}");
        }
    }
}
