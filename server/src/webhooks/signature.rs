//! Signing a webhook POST and checking one: HMAC-SHA256 over
//! `"{timestamp}.{body}"`, sent as `v1=<lowercase hex>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// `v1=<hex HMAC-SHA256(key, "{timestamp}.{body}")>`.
pub(super) fn sign(key: &hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let tag = signed_tag(key, timestamp, body);
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in tag.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn signed_tag(key: &hmac::Key, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

/// Whether `signature_header` (the `X-Roomcast-Signature` value) is the
/// signature of `timestamp` (the `X-Roomcast-Timestamp` value, as sent) and
/// `body` under `secret`. The comparison takes the same time wherever the
/// signatures differ. Check [`fresh`] too, or an old request could be
/// replayed.
pub fn verify(secret: &[u8], timestamp: &str, body: &[u8], signature_header: &str) -> bool {
    let Some(hex) = signature_header.trim().strip_prefix("v1=") else { return false };
    let Some(tag) = decode_hex(hex) else { return false };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // `hmac::verify` recomputes the tag and compares in constant time.
    hmac::verify(&key, &[timestamp.as_bytes(), b".", body].concat(), &tag).is_ok()
}

/// Whether `timestamp` (unix seconds, as sent) is within `tolerance` of
/// `now`, either way. Receivers refuse stale requests with it, so a captured
/// request cannot be replayed later.
pub fn fresh(timestamp: &str, now: SystemTime, tolerance: Duration) -> bool {
    let Ok(sent) = timestamp.parse::<u64>() else { return false };
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    now.abs_diff(sent) <= tolerance.as_secs()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    hex.as_bytes().chunks_exact(2).map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::webhooks::DEFAULT_TOLERANCE;

    fn key(secret: &str) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // Computed independently: Python's
        // hmac.new(b"whsec", b'1700000000.{"events":[]}', hashlib.sha256).hexdigest()
        let sig = sign(&key("whsec"), "1700000000", br#"{"events":[]}"#);
        assert_eq!(sig, format!("v1={}", KNOWN_VECTOR));
        assert!(verify(b"whsec", "1700000000", br#"{"events":[]}"#, &sig));
    }

    const KNOWN_VECTOR: &str = "d5cebb38cfa8b6704bfba53eb3c4d44ecd08c1f9a9944337dc4ddfed63383ee1";

    #[test]
    fn verify_refuses_any_change() {
        let body = br#"{"events":[{"id":"1-1"}]}"#;
        let sig = sign(&key("s3cret"), "1700000000", body);
        assert!(verify(b"s3cret", "1700000000", body, &sig));
        assert!(!verify(b"other", "1700000000", body, &sig), "wrong secret");
        assert!(!verify(b"s3cret", "1700000001", body, &sig), "other timestamp");
        assert!(!verify(b"s3cret", "1700000000", br#"{"events":[{"id":"1-2"}]}"#, &sig), "other body");
        assert!(!verify(b"s3cret", "1700000000", body, &sig[3..]), "no version prefix");
        assert!(!verify(b"s3cret", "1700000000", body, "v1=zz"), "not hex");
        assert!(!verify(b"s3cret", "1700000000", body, &sig[..sig.len() - 2]), "truncated");
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(!verify(b"s3cret", "1700000000", body, std::str::from_utf8(&flipped).unwrap()));
    }

    #[test]
    fn freshness_allows_the_tolerance_either_way() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tol = DEFAULT_TOLERANCE;
        assert!(fresh("1700000000", now, tol));
        assert!(fresh("1699999700", now, tol));
        assert!(fresh("1700000300", now, tol));
        assert!(!fresh("1699999699", now, tol));
        assert!(!fresh("1700000301", now, tol));
        assert!(!fresh("soon", now, tol));
    }
}
