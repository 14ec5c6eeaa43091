//! The workspace's one wall clock: Unix time as `i64` seconds or
//! milliseconds, 0 for an instant before 1970 and saturating far in the
//! future (never a panic, never a wrap).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds of `t`.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    unix_secs(SystemTime::now())
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instants_before_the_epoch_are_zero_and_seconds_agree_with_milliseconds() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let t = UNIX_EPOCH + Duration::from_millis(1_796_535_265_123);
        assert_eq!(unix_ms(t), 1_796_535_265_123);
        assert_eq!(unix_secs(t), 1_796_535_265);
        assert!(unix_now_ms() / 1000 >= unix_now() - 1);
    }
}
