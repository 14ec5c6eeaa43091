//! Which failures are retried, and how long to wait between attempts.
//!
//! The contract (`facade.proto`) says UNAVAILABLE and DEADLINE_EXCEEDED are
//! safe to retry with exponential backoff, with two exceptions this module
//! encodes in [`retryable`]:
//! - StartSession: only with a fresh agent assertion (an assertion is
//!   single-use); the client signs a new one for every attempt.
//! - AcquireCredential: after DEADLINE_EXCEEDED "a lease may have been
//!   created … retrying issues a new one", so it is never retried; an
//!   UNAVAILABLE answer means no credential was issued, so it is. (An
//!   UNAVAILABLE from the transport itself is a connection that could not
//!   be made or a stream the server refused before reading it; tonic
//!   reports a connection lost mid-call as UNKNOWN, INTERNAL or
//!   CANCELLED, none of which is retried.)
//!
//! Nothing else is retried: a refusal (PERMISSION_DENIED, UNAUTHENTICATED,
//! RESOURCE_EXHAUSTED…) is an answer, and RESOURCE_EXHAUSTED's RetryInfo
//! (an approval cool-down, minutes) is handed to the caller.

use std::time::Duration;

use tonic::Code;

/// The facade's RPCs, for the retry table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    StartSession,
    Authorize,
    AcquireCredential,
    WatchApproval,
    EndSession,
    GetSession,
}

impl Rpc {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::StartSession => "StartSession",
            Self::Authorize => "Authorize",
            Self::AcquireCredential => "AcquireCredential",
            Self::WatchApproval => "WatchApproval",
            Self::EndSession => "EndSession",
            Self::GetSession => "GetSession",
        }
    }
}

/// Whether the contract makes `code` from `rpc` safe to retry.
pub(crate) fn retryable(rpc: Rpc, code: Code) -> bool {
    match code {
        Code::Unavailable => true,
        // INVARIANT: a timed-out AcquireCredential may have issued a
        // credential; a retry would issue a second one.
        Code::DeadlineExceeded => rpc != Rpc::AcquireCredential,
        _ => false,
    }
}

/// Bounded retries with exponential backoff and jitter.
///
/// Attempt `n` (1-based) that fails with a retryable status is followed by
/// a wait of `initial × 2^(n-1)`, capped at `max_backoff`, of which a
/// random half is jitter (so many agents failing together do not retry
/// together). A `RetryInfo` delay from the facade is honoured: the wait is
/// at least that long, and when it is longer than `max_backoff` the client
/// stops and returns the error (with `retry_after`) instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 100 ms initial backoff, at most 5 s between attempts.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` in all (at least 1), waits from `initial_backoff` up
    /// to `max_backoff`.
    pub fn new(max_attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_backoff,
            max_backoff: max_backoff.max(initial_backoff),
        }
    }

    /// One attempt, no retries.
    pub fn never() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait after failed attempt `attempt` (1-based), before jitter is
    /// taken off: `initial × 2^(attempt-1)`, capped.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff)
    }

    /// How long to wait after failed attempt `attempt` before the next
    /// one, or `None` to stop: no attempts left, or the facade asked for a
    /// longer wait than `max_backoff`. `random` is any random number (the
    /// jitter).
    pub(crate) fn next_delay(
        &self,
        attempt: u32,
        retry_info: Option<Duration>,
        random: u64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        if retry_info.is_some_and(|asked| asked > self.max_backoff) {
            return None;
        }
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = match jitter_nanos {
            0 => Duration::ZERO,
            n => Duration::from_nanos(random % (n + 1)),
        };
        let backoff = (ceiling - half) + jitter;
        Some(retry_info.map_or(backoff, |asked| asked.max(backoff)))
    }
}

/// A random number for jitter (0 if the system RNG fails: the wait is then
/// simply the deterministic half).
pub(crate) fn random() -> u64 {
    let mut bytes = [0u8; 8];
    match aws_lc_rs::rand::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_deadline_exceeded_are_retried() {
        let all = [
            Rpc::StartSession,
            Rpc::Authorize,
            Rpc::AcquireCredential,
            Rpc::WatchApproval,
            Rpc::EndSession,
            Rpc::GetSession,
        ];
        for rpc in all {
            assert!(retryable(rpc, Code::Unavailable), "{rpc:?}");
            for code in [
                Code::Ok,
                Code::Cancelled,
                Code::Unknown,
                Code::InvalidArgument,
                Code::NotFound,
                Code::AlreadyExists,
                Code::PermissionDenied,
                Code::ResourceExhausted,
                Code::FailedPrecondition,
                Code::Aborted,
                Code::OutOfRange,
                Code::Unimplemented,
                Code::Internal,
                Code::DataLoss,
                Code::Unauthenticated,
            ] {
                assert!(!retryable(rpc, code), "{rpc:?} {code:?}");
            }
        }
        for rpc in all {
            assert_eq!(
                retryable(rpc, Code::DeadlineExceeded),
                rpc != Rpc::AcquireCredential,
                "{rpc:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_within_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_millis(1_000));
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.ceiling(3), Duration::from_millis(400));
        assert_eq!(policy.ceiling(4), Duration::from_millis(800));
        assert_eq!(policy.ceiling(5), Duration::from_millis(1_000));
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(1_000));
        for attempt in 1..10 {
            let ceiling = policy.ceiling(attempt);
            let low = policy.next_delay(attempt, None, 0).unwrap();
            let high = policy.next_delay(attempt, None, u64::MAX - 1).unwrap();
            assert_eq!(low, ceiling - ceiling / 2, "no jitter: the lower half");
            assert!(high >= low && high <= ceiling, "{attempt}: {high:?}");
            for random in [1, 7, 12_345, 999_999_999] {
                let delay = policy.next_delay(attempt, None, random).unwrap();
                assert!(delay >= low && delay <= ceiling, "{attempt}: {delay:?}");
            }
        }
        // Different random numbers give different waits (jitter is real).
        let delays: std::collections::HashSet<Duration> = (0..50u64)
            .map(|r| policy.next_delay(3, None, r * 1_000_003).unwrap())
            .collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(50));
        assert!(policy.next_delay(1, None, 0).is_some());
        assert!(policy.next_delay(2, None, 0).is_some());
        assert_eq!(policy.next_delay(3, None, 0), None);
        assert_eq!(policy.next_delay(4, None, 0), None);
        assert_eq!(RetryPolicy::never().next_delay(1, None, 0), None);
        assert_eq!(
            RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).max_attempts(),
            1
        );
    }

    #[test]
    fn retry_info_is_honoured_or_ends_the_retries() {
        let policy = RetryPolicy::new(5, Duration::from_millis(10), Duration::from_secs(2));
        // Longer than the backoff: waited in full.
        assert_eq!(
            policy.next_delay(1, Some(Duration::from_millis(1_500)), 0),
            Some(Duration::from_millis(1_500))
        );
        // Shorter: the backoff wins.
        let delay = policy
            .next_delay(4, Some(Duration::from_millis(1)), 0)
            .unwrap();
        assert!(delay >= Duration::from_millis(40), "{delay:?}");
        // Longer than the client would ever wait between attempts: the
        // error goes back to the caller with its `retry_after`.
        assert_eq!(
            policy.next_delay(1, Some(Duration::from_secs(300)), 0),
            None
        );
    }
}
