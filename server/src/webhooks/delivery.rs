//! Sending a batch: one signed POST per attempt, the answer classified,
//! retries after a growing, jittered wait, and each event's outcome counted.

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
use super::{Envelope, Payload, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::config::WebhooksConfig;
use crate::metrics::WebhookMetrics;

/// The longest wait between two attempts, whatever the attempt number.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most of a response body read (then discarded) so the connection can be
/// reused; the status is all that counts.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP side of the dispatcher.
pub(super) struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    key: hmac::Key,
    timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    rng: SystemRandom,
    metrics: WebhookMetrics,
}

/// What one attempt's answer means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Delivered,
    /// Worth another attempt: the receiver is down, slow or asked us to wait.
    Retry,
    /// The receiver refused the request itself; sending it again won't help.
    Permanent,
}

/// 2xx is delivered; 408, 429 and 5xx are retried; anything else (other
/// 4xx, and 1xx/3xx since redirects are not followed) is permanent.
fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

/// The wait after the `failures`-th failed attempt: `base` doubled per
/// failure, capped at [`MAX_BACKOFF`], of which the upper half is scaled by
/// `jitter` (in [0, 1)) so that nodes restarted together spread out.
fn backoff(base: Duration, failures: u32, jitter: f64) -> Duration {
    let doubling = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    let full = base.saturating_mul(doubling).min(MAX_BACKOFF);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

impl Sender {
    pub(super) fn new(config: &WebhooksConfig, uri: hyper::Uri, metrics: WebhookMetrics) -> Self {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        // One POST is in flight at a time, so one idle connection is enough.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self {
            client,
            uri,
            key: hmac::Key::new(hmac::HMAC_SHA256, config.secret.as_bytes()),
            timeout,
            max_attempts: config.max_attempts.max(1),
            backoff_base: Duration::from_millis(config.backoff_base_ms),
            rng: SystemRandom::new(),
            metrics,
        }
    }

    /// Sends `batch` until it is delivered, refused for good, or out of
    /// attempts, counting each event's outcome.
    pub(super) async fn deliver(&self, batch: &[Envelope]) {
        let n = batch.len() as u64;
        let body = match serde_json::to_vec(&Payload { events: batch }) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                // Unreachable with these types; counted rather than retried.
                tracing::warn!(error = %e, "webhook batch could not be encoded");
                self.metrics.failed.inc_by(n);
                return;
            }
        };
        for attempt in 1..=self.max_attempts {
            let verdict = self.attempt(body.clone()).await;
            match verdict {
                Verdict::Delivered => {
                    self.metrics.ok.inc_by(n);
                    return;
                }
                Verdict::Permanent => break,
                Verdict::Retry if attempt == self.max_attempts => break,
                Verdict::Retry => {
                    self.metrics.retried.inc_by(n);
                    tokio::time::sleep(backoff(self.backoff_base, attempt, self.jitter())).await;
                }
            }
        }
        self.metrics.failed.inc_by(n);
        let first = batch.first().map(|e| e.id);
        tracing::warn!(events = n, first = ?first.map(|id| id.to_string()), "webhook batch given up");
    }

    /// One signed POST, bounded by the timeout (connecting and reading the
    /// answer included). The timestamp is signed afresh each attempt, so a
    /// retry minutes later still passes the receiver's age check.
    async fn attempt(&self, body: Bytes) -> Verdict {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let signature = sign(&self.key, &timestamp.to_string(), &body);
        let request = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("roomcast/", env!("CARGO_PKG_VERSION")))
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "webhook request could not be built");
                return Verdict::Permanent;
            }
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read (a bounded amount of) the body so the connection goes
            // back to the pool; its content does not matter.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => {
                let verdict = classify(status);
                if verdict != Verdict::Delivered {
                    tracing::debug!(%status, ?verdict, "webhook not accepted");
                }
                verdict
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "webhook request failed");
                Verdict::Retry
            }
            Err(_) => {
                tracing::debug!("webhook request timed out");
                Verdict::Retry
            }
        }
    }

    fn jitter(&self) -> f64 {
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
