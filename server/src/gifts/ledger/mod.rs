//! The ledger seam: where gifts are charged. [`Ledger`] is what the rest of
//! the node calls. It has two implementations:
//!
//! * [`EmbeddedLedger`] (the default): balances in the node, every change in
//!   an append-only journal in the data directory ([`journal`]);
//! * [`WebhookLedger`]: the platform's backend keeps balances and charges
//!   each gift when the node POSTs it, signed, retried with the same
//!   idempotency key ([`webhook`]);
//! * `FleetLedger` (a fleet without a backend ledger): balances and keys in
//!   the fleet's Redis, so every node charges against one balance
//!   (`cluster::ledger`).
//!
//! **Exactly once.** Both keep the accepted idempotency keys of the last
//! `key_ttl` (24 h by default) in a journal, with the room's receipt once the
//! gift is sequenced, so a repeat (concurrent, after a reconnect, after a
//! restart) is answered with the first outcome and charges nothing more.
//!
//! **Charged, not yet sequenced.** Between a charge and the room's receipt a
//! key is *in flight*: a concurrent repeat is answered accepted without a
//! sequence number and broadcasts nothing. A key that was charged but never
//! sequenced — the node stopped in between, or the session that charged it
//! went away — is in flight no longer, and the next send of that key is
//! handed back as charged so the caller sequences it then: a charge that was
//! taken always ends broadcast or refunded, never silently kept.

pub mod journal;
pub mod webhook;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use journal::{EmbeddedLedger, JOURNAL_FILE, RepairReport, repair};
pub use webhook::{KEYS_FILE, WebhookLedger};

pub use crate::cluster::FleetLedger;

/// How long a caller waits for the ledger before answering
/// LEDGER_UNAVAILABLE, retries included.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the room made of an accepted charge, kept to answer repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub seq: u64,
    pub message_id: String,
    pub combo_id: String,
    pub combo_count: u32,
}

/// One gift send to charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub user: String,
    /// The client's idempotency key.
    pub key: String,
    /// Price × count.
    pub amount: u64,
    pub room: String,
    pub gift_id: String,
    pub count: u32,
    /// When it was sent, ms since the epoch.
    #[serde(rename = "at")]
    pub now_ms: u64,
}

/// The result of a debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitOutcome {
    /// Charged (now, or before without ever being sequenced): the caller
    /// sequences the gift, then settles or refunds the key. `balance` is
    /// what is left.
    Charged { balance: u64 },
    /// The key was accepted before: nothing charged now. `receipt` is the
    /// first send's, or `None` while that send is still being sequenced.
    Repeat { balance: u64, receipt: Option<Receipt> },
    /// The balance does not cover the amount; nothing charged.
    Insufficient { balance: u64 },
}

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger journal: {0}")]
    Io(#[from] io::Error),
    #[error(
        "gift ledger journal {} line {line} (byte {offset}) is unreadable: {why}. The node does not \
         start rather than guess at balances; stop it and run `roomcast-server ledger repair` with \
         the node's --data-dir (the journal as it was is kept beside it)",
        path.display()
    )]
    Corrupt { path: std::path::PathBuf, line: usize, offset: u64, why: String },
    #[error("the ledger did not answer in time")]
    Timeout,
    #[error("a credit would overflow the balance")]
    Overflow,
    #[error("the backend's ledger: {0}")]
    Backend(String),
    #[error("balances are kept by the platform's backend; credit users there")]
    Remote,
}

/// The ledger seam. Cheap to clone. Each call is bounded by
/// [`LEDGER_TIMEOUT`], and none blocks a runtime thread.
#[derive(Debug, Clone)]
pub enum Ledger {
    Embedded(Arc<EmbeddedLedger>),
    Webhook(Arc<WebhookLedger>),
    Fleet(FleetLedger),
}

impl Ledger {
    /// Charges `charge.amount` to `charge.user` once per key.
    pub async fn debit(&self, charge: Charge) -> Result<DebitOutcome, LedgerError> {
        match self {
            Self::Embedded(l) => {
                let l = l.clone();
                blocking(move || l.debit(&charge.user, charge.amount, &charge.key, charge.now_ms)).await
            }
            Self::Webhook(l) => bounded(l.debit(charge)).await,
            Self::Fleet(l) => {
                let debited = bounded(l.debit(&charge)).await;
                if debited.is_err() {
                    // The script may have run and its answer been lost: the
                    // key is let go, so that the sender's retry sequences
                    // what was charged instead of waiting out the lease.
                    self.release(&charge);
                }
                debited
            }
        }
    }

    /// Counts the failed writes of the journals this ledger keeps on disk.
    pub fn count_failures(&self, failures: &crate::metrics::StorageFailures) {
        match self {
            Self::Embedded(l) => l.count_failures(failures.gift_ledger.clone()),
            Self::Webhook(l) => l.journal().count_failures(failures.gift_webhook_keys.clone()),
            Self::Fleet(_) => {}
        }
    }

    /// Adds `amount` to `user`'s balance and returns the new balance.
    pub async fn credit(&self, user: &str, amount: u64, now_ms: u64) -> Result<u64, LedgerError> {
        match self {
            Self::Embedded(l) => {
                let (l, user) = (l.clone(), user.to_string());
                blocking(move || l.credit(&user, amount, now_ms)).await
            }
            Self::Webhook(_) => Err(LedgerError::Remote),
            Self::Fleet(l) => bounded(l.credit(user, amount, now_ms)).await,
        }
    }

    /// Gives back a charge whose gift could not be sequenced, and forgets
    /// its key. Returns the new balance.
    pub async fn refund(&self, charge: Charge) -> Result<u64, LedgerError> {
        match self {
            Self::Embedded(l) => {
                let l = l.clone();
                blocking(move || l.refund(&charge.user, &charge.key, charge.now_ms)).await
            }
            Self::Webhook(l) => bounded(l.refund(charge)).await,
            Self::Fleet(l) => bounded(l.refund(&charge)).await,
        }
    }

    /// Records what the room made of an accepted key.
    pub async fn settle(&self, user: &str, key: &str, receipt: Receipt) {
        let journaled = |journal: &Arc<EmbeddedLedger>| {
            let (journal, user, key, receipt) =
                (journal.clone(), user.to_string(), key.to_string(), receipt.clone());
            blocking(move || journal.settle(&user, &key, receipt))
        };
        let settled = match self {
            Self::Embedded(l) => journaled(l).await,
            Self::Webhook(l) => journaled(l.journal()).await,
            Self::Fleet(l) => bounded(l.settle(user, key, &receipt)).await,
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "gift receipt not recorded");
        }
    }

    /// Ends a charge's time in flight without a receipt (its sender went
    /// away): the next send of its key sequences it. Harmless after a settle
    /// or a refund.
    pub fn release(&self, charge: &Charge) {
        match self {
            Self::Embedded(l) => l.release(&charge.user, &charge.key),
            Self::Webhook(l) => l.journal().release(&charge.user, &charge.key),
            Self::Fleet(l) => {
                // Called from a drop: the release goes on by itself, and if
                // it never lands the key's lease runs out instead.
                let (l, charge) = (l.clone(), charge.clone());
                tokio::spawn(async move { bounded(l.release(&charge)).await });
            }
        }
    }
}

/// Runs `f` on the blocking pool, within [`LEDGER_TIMEOUT`].
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    match tokio::time::timeout(LEDGER_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(LedgerError::Io(io::Error::other(join.to_string()))),
        Err(_) => Err(LedgerError::Timeout),
    }
}

async fn bounded<T>(f: impl Future<Output = Result<T, LedgerError>>) -> Result<T, LedgerError> {
    tokio::time::timeout(LEDGER_TIMEOUT, f).await.unwrap_or(Err(LedgerError::Timeout))
}
