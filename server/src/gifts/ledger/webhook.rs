//! The webhook ledger: the platform's backend keeps balances and charges
//! each gift when the node asks it.
//!
//! **The call.** One signed POST per attempt to `[gifts.ledger] url`, with
//! the same headers as the event webhooks (`X-Roomcast-Timestamp`,
//! `X-Roomcast-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`)
//! and a JSON body:
//!
//! ```text
//! {"op":"debit","user":"u1","key":"k-1","amount":10,"room":"r1","gift_id":"rose","count":10,"at":1764370001000}
//! {"op":"refund","user":"u1","key":"k-1","amount":10,"room":"r1","gift_id":"rose","count":10,"at":1764370001000}
//! ```
//!
//! The backend answers 200 with `{"outcome":"charged","balance":490}` or
//! `{"outcome":"insufficient","balance":5}` to a debit, and
//! `{"outcome":"refunded","balance":500}` to a refund. It must charge a
//! (`user`, `key`) at most once: a debit repeating a key it already charged
//! answers `charged` again without charging, and a refund of a key it never
//! charged answers `refunded` with the balance unchanged.
//!
//! **Retries.** No answer within `timeout_ms`, a failed connection, 408, 429
//! or 5xx is tried again, up to `max_attempts` in all, after a growing,
//! jittered wait, *with the same body*: a charge whose answer was lost is
//! answered `charged` on the retry and charged once. Any other answer, or an
//! unreadable one, ends the send as LEDGER_UNAVAILABLE, as does running out
//! of attempts.
//!
//! **Keys.** The node keeps the keys the backend charged, with the room's
//! receipts, in its own journal (`gift-webhook-keys.jsonl` in the data
//! directory, the embedded ledger's format, with its reserve): a repeat
//! within the key's time to live is answered from it without calling the
//! backend, and the gift is broadcast once. A node whose disk has no room
//! for a charge's record and receipt refuses the send before asking the
//! backend to charge.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Charge, DebitOutcome, EmbeddedLedger, LedgerError, blocking};
use crate::config::LedgerConfig;
use crate::webhooks::client::{PostError, SignedClient, Verdict, backoff, classify};

/// The webhook ledger's key journal in the data directory.
pub const KEYS_FILE: &str = "gift-webhook-keys.jsonl";

/// Most of an answer read.
const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// The request body: the operation and the charge.
#[derive(Serialize)]
struct Call<'a> {
    op: &'static str,
    #[serde(flatten)]
    charge: &'a Charge,
}

/// The backend's answer.
#[derive(Debug, Deserialize)]
struct Answer {
    outcome: Outcome,
    balance: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Charged,
    Insufficient,
    Refunded,
}

/// Gifts charged by the platform's backend (see the module docs).
pub struct WebhookLedger {
    client: SignedClient,
    journal: Arc<EmbeddedLedger>,
    max_attempts: u32,
    backoff_base: Duration,
}

impl std::fmt::Debug for WebhookLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookLedger").field("journal", &self.journal.path()).finish_non_exhaustive()
    }
}

impl WebhookLedger {
    /// The ledger calling `config.url`, with its key journal in `dir`.
    pub fn open(
        config: &LedgerConfig,
        dir: &std::path::Path,
        key_ttl: Duration,
        now_ms: u64,
    ) -> anyhow::Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let uri: hyper::Uri = url.parse().map_err(|e| anyhow::anyhow!("gifts.ledger.url {url:?}: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.host().is_some(),
            "gifts.ledger.url {url:?}: only http://host URLs are supported"
        );
        anyhow::ensure!(!config.secret.is_empty(), "gifts.ledger.secret is required with gifts.ledger.url");
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        // Gifts are charged concurrently, one POST per send in flight.
        let client = SignedClient::new(uri, config.secret.as_bytes(), timeout, 32);
        let journal = EmbeddedLedger::open_file(dir, KEYS_FILE, key_ttl, now_ms)?;
        Ok(Self {
            client,
            journal: Arc::new(journal),
            max_attempts: config.max_attempts.max(1),
            backoff_base: Duration::from_millis(config.backoff_base_ms),
        })
    }

    pub(super) fn journal(&self) -> &Arc<EmbeddedLedger> {
        &self.journal
    }

    /// Answers a known key from the journal; otherwise asks the backend to
    /// charge, and journals the charge before answering.
    pub(super) async fn debit(&self, charge: Charge) -> Result<DebitOutcome, LedgerError> {
        if let Some(outcome) = self.journal.lookup(&charge.user, &charge.key, charge.now_ms) {
            return Ok(outcome);
        }
        // A charge the node could not journal with its receipt is not asked
        // for (a full disk): nothing is charged, the send is refused.
        let journal = self.journal.clone();
        blocking(move || journal.ready()).await?;
        let answer = self.call("debit", &charge).await?;
        match answer.outcome {
            Outcome::Insufficient => Ok(DebitOutcome::Insufficient { balance: answer.balance }),
            Outcome::Charged => {
                let journal = self.journal.clone();
                let Charge { user, key, amount, now_ms, .. } = charge;
                blocking(move || journal.record(&user, &key, amount, answer.balance, now_ms)).await
            }
            Outcome::Refunded => Err(LedgerError::Backend("answered a debit with `refunded`".into())),
        }
    }

    /// Asks the backend to give a charge back, then forgets its key.
    pub(super) async fn refund(&self, charge: Charge) -> Result<u64, LedgerError> {
        let Some(amount) = self.journal.amount(&charge.user, &charge.key) else {
            return Ok(self.journal.balance(&charge.user));
        };
        let charge = Charge { amount, ..charge };
        let answer = self.call("refund", &charge).await?;
        if answer.outcome != Outcome::Refunded {
            return Err(LedgerError::Backend(format!("answered a refund with {:?}", answer.outcome)));
        }
        let journal = self.journal.clone();
        let Charge { user, key, now_ms, .. } = charge;
        let balance = answer.balance;
        blocking(move || journal.forget(&user, &key, Some(balance), now_ms))
            .await
            .map(|b| b.unwrap_or(balance))
    }

    /// POSTs `op` for `charge` until the backend answers, refuses, or the
    /// attempts run out; every attempt carries the same body.
    async fn call(&self, op: &'static str, charge: &Charge) -> Result<Answer, LedgerError> {
        let body =
            serde_json::to_vec(&Call { op, charge }).map_err(|e| LedgerError::Backend(e.to_string()))?;
        let body = Bytes::from(body);
        let mut last = String::new();
        for attempt in 1..=self.max_attempts {
            match self.client.post(body.clone(), MAX_ANSWER_BYTES).await {
                Ok((status, answer)) => match classify(status) {
                    Verdict::Delivered => {
                        return serde_json::from_slice(&answer)
                            .map_err(|e| LedgerError::Backend(format!("unreadable answer to {op}: {e}")));
                    }
                    Verdict::Permanent => {
                        return Err(LedgerError::Backend(format!("{op} refused with {status}")));
                    }
                    Verdict::Retry => last = format!("{op} answered {status}"),
                },
                Err(e @ PostError::Build(_)) => return Err(LedgerError::Backend(e.to_string())),
                Err(e) => last = format!("{op}: {e}"),
            }
            tracing::debug!(attempt, key = %charge.key, error = %last, "gift ledger call to be retried");
            if attempt < self.max_attempts {
                tokio::time::sleep(backoff(self.backoff_base, attempt, self.client.jitter())).await;
            }
        }
        Err(LedgerError::Backend(format!("{last} after {} attempts", self.max_attempts)))
    }
}
