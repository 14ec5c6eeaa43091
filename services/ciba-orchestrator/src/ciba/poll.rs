//! The polling state machine of one CIBA request: pure functions of (the
//! token endpoint's answer, now), so a ticket store can persist
//! [`PollState`] after every step and resume after a restart.
//!
//! Rules (CIBA Core §7.3, §11):
//! - the interval is the IdP's `interval`, or 5 s when it gives none;
//! - `slow_down` adds 5 s to the interval for the rest of the request;
//! - a poll is never due before `next_poll_at` (the previous answer's time
//!   plus the interval), so two token requests are never closer than the
//!   current interval;
//! - the request has its own deadline (from `expires_in`, capped by
//!   configuration, counted from when the request was sent): it expires on
//!   time even when the IdP never says so, and nothing counts after it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::client::IdToken;
use super::outcome::{ExpiredBy, Failure, Outcome};

/// The interval when the IdP gives none (CIBA Core §7.3).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// What each `slow_down` adds to the interval (CIBA Core §11, RFC 8628).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Bounds on the interval, whatever the IdP says: never a busy loop, never
/// a time that overflows.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Bound on a request's lifetime, whatever the caller says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where one request's polling stands. Persist all three fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollState {
    /// Least time between two token requests.
    pub interval: Duration,
    /// No token request before this.
    pub next_poll_at: SystemTime,
    /// The request is expired from this instant on, whatever the IdP says.
    pub deadline: SystemTime,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The deadline has passed: the request is expired.
    Expired,
    /// A token request may be sent now.
    Now,
    /// Nothing before this instant (the next poll, or the deadline).
    At(SystemTime),
}

/// One answer of the token endpoint, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAnswer {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`.
    SlowDown,
    /// `expired_token`.
    ExpiredToken,
    /// `access_denied`, with the IdP's description (clipped).
    AccessDenied { description: Option<String> },
    /// `invalid_grant`.
    InvalidGrant,
    /// Success: tokens were issued (and the `auth_req_id` consumed). The ID
    /// token must be verified before anything counts.
    Issued(IdToken),
    /// Success, but unusable (no ID token, not JSON).
    Unusable(String),
    /// No usable answer: unreachable, 5xx, 429, or an error this client
    /// does not expect. Retried at the current interval.
    Unavailable,
}

/// The next step after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Still pending: persist the state, poll again when it is due.
    Continue(PollState),
    /// Tokens arrived before the deadline: verify the ID token.
    Verify(IdToken),
    /// Terminal.
    Done(Outcome),
}

/// `t + d`, or `fallback` when that overflows `SystemTime`.
fn add(t: SystemTime, d: Duration, fallback: SystemTime) -> SystemTime {
    t.checked_add(d).unwrap_or(fallback)
}

impl PollState {
    /// The state after the IdP accepted a request.
    ///
    /// - `sent_at`: when the backchannel request was sent (the deadline
    ///   counts from here: the IdP's clock started no earlier);
    /// - `answered_at`: when its answer arrived (the first poll is one
    ///   interval later);
    /// - `expires_in`, `interval`: as the IdP gave them;
    /// - `max_lifetime`: the expiry that was requested (the deadline is
    ///   never later, whatever `expires_in` says).
    pub fn new(
        sent_at: SystemTime,
        answered_at: SystemTime,
        expires_in: Duration,
        interval: Option<Duration>,
        max_lifetime: Duration,
    ) -> Self {
        let interval = interval
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        let lifetime = expires_in.min(max_lifetime).min(MAX_LIFETIME);
        // INVARIANT: an overflowing deadline falls back to "already
        // expired" (fail closed); an overflowing poll time to the deadline.
        let deadline = add(sent_at, lifetime, sent_at);
        Self {
            interval,
            next_poll_at: add(answered_at, interval, deadline),
            deadline,
        }
    }

    /// What is due at `now`.
    pub fn due(&self, now: SystemTime) -> Due {
        if now >= self.deadline {
            Due::Expired
        } else if now >= self.next_poll_at {
            Due::Now
        } else {
            Due::At(self.next_poll_at.min(self.deadline))
        }
    }

    /// The state after the token endpoint answered at `now`.
    pub fn on_answer(self, answer: TokenAnswer, now: SystemTime) -> Transition {
        // INVARIANT: nothing counts after the deadline, not even tokens: a
        // late answer is an expiry, never an approval.
        if now >= self.deadline {
            return Transition::Done(Outcome::Expired(ExpiredBy::Deadline));
        }
        match answer {
            TokenAnswer::Pending | TokenAnswer::Unavailable => {
                Transition::Continue(self.next_after(now, self.interval))
            }
            TokenAnswer::SlowDown => {
                let interval = self
                    .interval
                    .saturating_add(SLOW_DOWN_STEP)
                    .min(MAX_INTERVAL);
                Transition::Continue(self.next_after(now, interval))
            }
            TokenAnswer::ExpiredToken => Transition::Done(Outcome::Expired(ExpiredBy::Idp)),
            TokenAnswer::AccessDenied { description } => {
                Transition::Done(Outcome::Denied { description })
            }
            TokenAnswer::InvalidGrant => Transition::Done(Outcome::Failed(Failure::InvalidGrant)),
            TokenAnswer::Unusable(why) => {
                Transition::Done(Outcome::Failed(Failure::BadTokenResponse(why)))
            }
            TokenAnswer::Issued(token) => Transition::Verify(token),
        }
    }

    fn next_after(self, now: SystemTime, interval: Duration) -> Self {
        // Never earlier than already promised (an answer stamped with a
        // clock that went backwards must not bring the next poll forward).
        let next = add(now, interval, self.deadline).max(self.next_poll_at);
        Self {
            interval,
            next_poll_at: next,
            deadline: self.deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cont(t: Transition) -> PollState {
        match t {
            Transition::Continue(state) => state,
            other => panic!("expected to continue, got {other:?}"),
        }
    }

    #[test]
    fn default_interval_is_five_seconds_and_the_first_poll_waits_for_it() {
        let s = PollState::new(at(0), at(1), secs(300), None, secs(600));
        assert_eq!(s.interval, secs(5));
        assert_eq!(s.next_poll_at, at(6));
        assert_eq!(s.deadline, at(300));
        assert_eq!(s.due(at(5)), Due::At(at(6)));
        assert_eq!(s.due(at(6)), Due::Now);
    }

    #[test]
    fn the_idps_interval_is_used_within_bounds() {
        assert_eq!(
            PollState::new(at(0), at(0), secs(60), Some(secs(2)), secs(60)).interval,
            secs(2)
        );
        assert_eq!(
            PollState::new(at(0), at(0), secs(60), Some(secs(0)), secs(60)).interval,
            secs(1),
            "never a busy loop"
        );
    }

    #[test]
    fn pending_waits_one_interval_from_the_answer() {
        let s = PollState::new(at(0), at(0), secs(300), Some(secs(2)), secs(600));
        let s = cont(s.on_answer(TokenAnswer::Pending, at(3)));
        assert_eq!(s.next_poll_at, at(5));
        assert_eq!(s.due(at(4)), Due::At(at(5)));
        assert_eq!(s.interval, secs(2));
    }

    #[test]
    fn slow_down_adds_five_seconds_for_the_rest_of_the_request() {
        let s = PollState::new(at(0), at(0), secs(300), Some(secs(2)), secs(600));
        let s = cont(s.on_answer(TokenAnswer::SlowDown, at(2)));
        assert_eq!(s.interval, secs(7));
        assert_eq!(s.next_poll_at, at(9));
        let s = cont(s.on_answer(TokenAnswer::Pending, at(9)));
        assert_eq!(s.interval, secs(7), "kept");
        assert_eq!(s.next_poll_at, at(16));
        let s = cont(s.on_answer(TokenAnswer::SlowDown, at(16)));
        assert_eq!(s.interval, secs(12), "cumulative");
        let s = cont(s.on_answer(TokenAnswer::Unavailable, at(28)));
        assert_eq!(s.interval, secs(12), "an outage does not reset it");
        assert_eq!(s.next_poll_at, at(40));
    }

    #[test]
    fn the_next_poll_never_moves_forward() {
        let s = PollState::new(at(0), at(10), secs(300), Some(secs(5)), secs(600));
        // An answer stamped earlier than the last promise (clock stepped back).
        let s = cont(s.on_answer(TokenAnswer::Pending, at(3)));
        assert_eq!(s.next_poll_at, at(15));
    }

    #[test]
    fn deadline_is_from_the_send_time_and_capped_by_the_requested_expiry() {
        let s = PollState::new(at(0), at(2), secs(600), None, secs(120));
        assert_eq!(s.deadline, at(120), "capped: the IdP gave more than asked");
        let s = PollState::new(at(0), at(2), secs(60), None, secs(120));
        assert_eq!(s.deadline, at(60), "the IdP gave less");
        let s = PollState::new(
            at(0),
            at(2),
            Duration::MAX,
            Some(Duration::MAX),
            Duration::MAX,
        );
        assert_eq!(s.deadline, at(24 * 3600), "bounded, no overflow");
        assert_eq!(s.interval, secs(24 * 3600));
    }

    #[test]
    fn the_request_expires_on_its_own_deadline_without_the_idp() {
        // An interval longer than the life: the first poll would come after
        // the deadline, so the deadline wakes the driver and expires it.
        let s = PollState::new(at(0), at(0), secs(2), None, secs(2));
        assert_eq!(s.due(at(1)), Due::At(at(2)));
        assert_eq!(s.due(at(2)), Due::Expired);
        // Pending answers keep it pending only until then.
        let s = PollState::new(at(0), at(0), secs(10), Some(secs(1)), secs(10));
        let s = cont(s.on_answer(TokenAnswer::Pending, at(9)));
        assert_eq!(s.due(at(10)), Due::Expired);
    }

    #[test]
    fn nothing_counts_after_the_deadline() {
        let s = PollState::new(at(0), at(0), secs(10), Some(secs(1)), secs(10));
        for answer in [
            TokenAnswer::Issued(IdToken::new("h.p.s".into())),
            TokenAnswer::AccessDenied { description: None },
            TokenAnswer::Pending,
        ] {
            assert_eq!(
                s.on_answer(answer, at(10)),
                Transition::Done(Outcome::Expired(ExpiredBy::Deadline))
            );
        }
    }

    #[test]
    fn terminal_answers() {
        let s = PollState::new(at(0), at(0), secs(60), None, secs(60));
        assert_eq!(
            s.on_answer(TokenAnswer::ExpiredToken, at(5)),
            Transition::Done(Outcome::Expired(ExpiredBy::Idp))
        );
        assert_eq!(
            s.on_answer(
                TokenAnswer::AccessDenied {
                    description: Some("no".into())
                },
                at(5)
            ),
            Transition::Done(Outcome::Denied {
                description: Some("no".into())
            })
        );
        assert_eq!(
            s.on_answer(TokenAnswer::InvalidGrant, at(5)),
            Transition::Done(Outcome::Failed(Failure::InvalidGrant))
        );
        assert!(matches!(
            s.on_answer(TokenAnswer::Unusable("no id_token".into()), at(5)),
            Transition::Done(Outcome::Failed(Failure::BadTokenResponse(_)))
        ));
        assert!(matches!(
            s.on_answer(TokenAnswer::Issued(IdToken::new("h.p.s".into())), at(5)),
            Transition::Verify(_)
        ));
    }

    #[test]
    fn state_round_trips_through_storage() {
        let s = PollState::new(at(0), at(1), secs(300), Some(secs(3)), secs(600));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<PollState>(&json).unwrap(), s);
    }
}
