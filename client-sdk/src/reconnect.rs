//! Reconnection policy: which ends are worth connecting again after, and how
//! long to wait before each attempt.

use std::time::Duration;

use roomcast_protocol::ErrorCode;

use crate::Backoff;

/// Close codes after which connecting again cannot help.
pub(crate) fn is_fatal(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::BadToken
                | ErrorCode::TokenExpired
                | ErrorCode::UnsupportedVersion
                | ErrorCode::Forbidden
                | ErrorCode::ProtocolViolation
                | ErrorCode::FrameTooLarge
        )
    )
}

/// The delay before reconnection attempt `attempt` (1-based): exponential,
/// capped, with "equal jitter" (half fixed, half random) so that a crowd
/// dropped at the same moment does not come back at the same moment.
pub(crate) fn backoff_delay(b: &Backoff, attempt: u32, random: u64) -> Duration {
    let exp = b.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(b.max).max(Duration::from_millis(1));
    let half = cap / 2;
    let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % jitter_ns.max(1))
}

/// Random bits from the system's generator, for jitter and id prefixes.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: None };
        for attempt in 1..40 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1).min(16))).min(b.max);
            for random in [0, 1, 12_345_678, u64::MAX] {
                let d = backoff_delay(&b, attempt, random);
                assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?} outside {:?}..={cap:?}", cap / 2);
            }
        }
        assert_ne!(backoff_delay(&b, 3, 1), backoff_delay(&b, 3, 987_654_321), "jittered");
    }

    #[test]
    fn refused_tokens_and_protocol_errors_are_never_retried() {
        for code in [ErrorCode::BadToken, ErrorCode::TokenExpired, ErrorCode::ProtocolViolation] {
            assert!(is_fatal(Some(code)), "{code}");
        }
        for code in [None, Some(ErrorCode::ServerDraining), Some(ErrorCode::Internal)] {
            assert!(!is_fatal(code), "{code:?}");
        }
    }
}
