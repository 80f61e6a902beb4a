//! One signed POST to the platform's backend: the HTTP client both the event
//! dispatcher and the gift ledger's webhook use, the retry classes of an
//! answer, and the wait between attempts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::signature::sign;
use super::{SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The longest wait between two attempts, whatever the attempt number.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A pooled HTTP/1 client that signs each POST to one URL.
pub(crate) struct SignedClient {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    key: hmac::Key,
    timeout: Duration,
    rng: SystemRandom,
}

/// Why a POST got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("request could not be built: {0}")]
    Build(String),
    #[error("request failed: {0}")]
    Failed(String),
    #[error("no answer within the timeout")]
    Timeout,
}

/// What one attempt's answer means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered,
    /// Worth another attempt: the receiver is down, slow or asked us to wait.
    Retry,
    /// The receiver refused the request itself; sending it again won't help.
    Permanent,
}

/// 2xx is delivered; 408, 429 and 5xx are retried; anything else (other
/// 4xx, and 1xx/3xx since redirects are not followed) is permanent.
pub(crate) fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

/// The wait after the `failures`-th failed attempt: `base` doubled per
/// failure, capped at [`MAX_BACKOFF`], of which the upper half is scaled by
/// `jitter` (in [0, 1)) so that nodes restarted together spread out.
pub(crate) fn backoff(base: Duration, failures: u32, jitter: f64) -> Duration {
    let doubling = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    let full = base.saturating_mul(doubling).min(MAX_BACKOFF);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

impl SignedClient {
    /// A client for `uri`, signing with `secret`; `timeout` bounds each POST,
    /// connecting and reading the answer included. `idle` connections are
    /// kept for reuse.
    pub(crate) fn new(uri: hyper::Uri, secret: &[u8], timeout: Duration, idle: usize) -> Self {
        let timeout = timeout.max(Duration::from_millis(1));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(idle)
            .build(connector);
        Self {
            client,
            uri,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            timeout,
            rng: SystemRandom::new(),
        }
    }

    /// One signed POST of `body`, bounded by the timeout; the answer's status
    /// and up to `max_response` bytes of its body. The timestamp is signed
    /// afresh each call, so a retry minutes later still passes the
    /// receiver's age check.
    pub(crate) async fn post(
        &self,
        body: Bytes,
        max_response: usize,
    ) -> Result<(StatusCode, Bytes), PostError> {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let signature = sign(&self.key, &timestamp.to_string(), &body);
        let request = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("roomcast/", env!("CARGO_PKG_VERSION")))
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body))
            .map_err(|e| PostError::Build(e.to_string()))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| PostError::Failed(e.to_string()))?;
            let status = response.status();
            // Reading the body (a bounded amount) also lets the connection
            // go back to the pool.
            let body = match Limited::new(response.into_body(), max_response).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| PostError::Timeout)?
    }

    /// A number in [0, 1) for [`backoff`]'s jitter.
    pub(crate) fn jitter(&self) -> f64 {
        let mut bytes = [0u8; 4];
        match self.rng.fill(&mut bytes) {
            Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
            Err(_) => 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn backoff_doubles_from_base_with_jitter_in_the_upper_half_and_is_capped() {
        let base = Duration::from_secs(1);
        let low: Vec<_> = (1..=5).map(|f| backoff(base, f, 0.0).as_millis()).collect();
        assert_eq!(low, [500, 1000, 2000, 4000, 8000]);
        let high: Vec<_> = (1..=5).map(|f| backoff(base, f, 0.999_999).as_millis()).collect();
        assert_eq!(high, [999, 1999, 3999, 7999, 15999]);
        assert_eq!(backoff(base, 6, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(base, 7, 0.0), MAX_BACKOFF / 2);
        assert_eq!(backoff(base, 200, 1.0), MAX_BACKOFF, "no overflow for large attempt numbers");
        assert_eq!(backoff(Duration::ZERO, 3, 0.5), Duration::ZERO);
    }

    #[test]
    fn responses_are_classified_as_delivered_retried_or_permanent() {
        let verdict = |code| classify(StatusCode::from_u16(code).unwrap());
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(verdict(code), Verdict::Delivered, "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(verdict(code), Verdict::Retry, "{code}");
        }
        for code in [100, 301, 302, 400, 401, 403, 404, 409, 410, 413, 422] {
            assert_eq!(verdict(code), Verdict::Permanent, "{code}");
        }
    }
}
