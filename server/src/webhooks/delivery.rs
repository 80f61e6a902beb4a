//! Sending a batch: one signed POST per attempt, the answer classified,
//! retries after a growing, jittered wait, and each event's outcome counted.

use std::time::Duration;

use bytes::Bytes;

use super::client::{PostError, SignedClient, Verdict, backoff, classify};
use super::{Envelope, Payload};
use crate::config::WebhooksConfig;
use crate::metrics::WebhookMetrics;

/// Most of a response body read (then discarded) so the connection can be
/// reused; the status is all that counts.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP side of the dispatcher.
pub(super) struct Sender {
    client: SignedClient,
    max_attempts: u32,
    backoff_base: Duration,
    metrics: WebhookMetrics,
}

impl Sender {
    pub(super) fn new(config: &WebhooksConfig, uri: hyper::Uri, metrics: WebhookMetrics) -> Self {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        // One POST is in flight at a time, so one idle connection is enough.
        let client = SignedClient::new(uri, config.secret.as_bytes(), timeout, 1);
        Self {
            client,
            max_attempts: config.max_attempts.max(1),
            backoff_base: Duration::from_millis(config.backoff_base_ms),
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
                    tokio::time::sleep(backoff(self.backoff_base, attempt, self.client.jitter())).await;
                }
            }
        }
        self.metrics.failed.inc_by(n);
        let first = batch.first().map(|e| e.id);
        tracing::warn!(events = n, first = ?first.map(|id| id.to_string()), "webhook batch given up");
    }

    /// One signed POST and what its answer means.
    async fn attempt(&self, body: Bytes) -> Verdict {
        match self.client.post(body, MAX_RESPONSE_BYTES).await {
            Ok((status, _)) => {
                let verdict = classify(status);
                if verdict != Verdict::Delivered {
                    tracing::debug!(%status, ?verdict, "webhook not accepted");
                }
                verdict
            }
            Err(e @ PostError::Build(_)) => {
                tracing::warn!(error = %e, "webhook request could not be built");
                Verdict::Permanent
            }
            Err(e) => {
                tracing::debug!(error = %e, "webhook request failed");
                Verdict::Retry
            }
        }
    }
}
