//! The gift ledger of a fleet: balances and idempotency keys in Redis, each
//! change one atomic script (`ledger.lua`), so every node charges against
//! the same balance and a key sent to two nodes charges once.
//!
//! Keys are hash-tagged by user (`rc:user:{USER}:…`): a user's balance and
//! keys share a slot, so a Redis Cluster runs the script on one shard.
//! A charged key carries a lease: while it runs, a repeat is answered
//! "accepted, being sequenced"; once it lapses (the charging node died
//! before the room's receipt) or the charging session let it go, the next
//! send of the key is handed back as charged and sequenced then — the same
//! contract as the embedded ledger's (see `gifts::ledger`).

use std::time::Duration;

use redis::Script;

use super::{Fleet, FleetError};
use crate::gifts::ledger::{Charge, DebitOutcome, LedgerError, Receipt};

/// One call of `ledger.lua`.
struct Op<'a> {
    name: &'static str,
    user: &'a str,
    key: &'a str,
    amount: u64,
    now_ms: u64,
    receipt: &'a str,
    owner: &'a str,
}

impl<'a> Op<'a> {
    /// `name` on `charge`'s key, with nothing else set.
    fn new(name: &'static str, charge: &'a Charge) -> Self {
        Self { name, user: &charge.user, key: &charge.key, amount: 0, now_ms: 0, receipt: "", owner: "" }
    }
}

/// How long a charge stays in flight before another send of its key may
/// sequence it: longer than any sequencing takes, short enough that a
/// node's death does not hold a gift back for long.
const LEASE: Duration = Duration::from_secs(30);

/// The fleet's ledger. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FleetLedger {
    fleet: Fleet,
    script: std::sync::Arc<Script>,
    key_ttl: Duration,
    /// Keys whose receipt is on its way to Redis: a release must not hand
    /// them to the next send, which would sequence them a second time.
    settling: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

impl From<FleetError> for LedgerError {
    fn from(e: FleetError) -> Self {
        LedgerError::Backend(e.to_string())
    }
}

impl FleetLedger {
    /// Keys are kept for `key_ttl` after their last change.
    pub fn new(fleet: Fleet, key_ttl: Duration) -> Self {
        Self {
            fleet,
            script: std::sync::Arc::new(Script::new(include_str!("ledger.lua"))),
            key_ttl,
            settling: std::sync::Arc::default(),
        }
    }

    /// The holder of a charge's lease: this node and the send's time. A
    /// refund or release by anyone else (a node that stalled past the lease
    /// while another sequenced the key) changes nothing.
    fn owner(&self, charge: &Charge) -> String {
        format!("{}:{}", self.fleet.node, charge.now_ms)
    }

    async fn call(&self, op: Op<'_>) -> Result<(String, u64, String), LedgerError> {
        let user = op.user;
        let mut conn = self.fleet.link.conn().await?;
        let reply = self
            .script
            .key(format!("rc:user:{{{user}}}:balance"))
            .key(format!("rc:user:{{{user}}}:gift:{}", op.key))
            .arg(op.name)
            .arg(op.amount)
            .arg(op.now_ms)
            .arg(LEASE.as_millis() as u64)
            .arg(self.key_ttl.as_millis() as u64)
            .arg(op.receipt)
            .arg(op.owner)
            .invoke_async(&mut conn)
            .await
            .map_err(FleetError::from);
        Ok(self.fleet.answered(reply)?)
    }

    /// Charges `charge.amount` to its user once per key.
    pub async fn debit(&self, charge: &Charge) -> Result<DebitOutcome, LedgerError> {
        let owner = self.owner(charge);
        let op =
            Op { amount: charge.amount, now_ms: charge.now_ms, owner: &owner, ..Op::new("debit", charge) };
        let (outcome, balance, receipt) = self.call(op).await?;
        Ok(match outcome.as_str() {
            "charged" => DebitOutcome::Charged { balance },
            "insufficient" => DebitOutcome::Insufficient { balance },
            "repeat" => DebitOutcome::Repeat {
                balance,
                receipt: if receipt.is_empty() { None } else { serde_json::from_str(&receipt).ok() },
            },
            other => return Err(LedgerError::Backend(format!("ledger script answered {other:?}"))),
        })
    }

    /// Adds `amount` to `user`'s balance; returns the new balance.
    pub async fn credit(&self, user: &str, amount: u64, now_ms: u64) -> Result<u64, LedgerError> {
        let op = Op { name: "credit", user, key: "", amount, now_ms, receipt: "", owner: "" };
        match self.call(op).await? {
            (o, _, _) if o == "overflow" => Err(LedgerError::Overflow),
            (_, balance, _) => Ok(balance),
        }
    }

    /// Gives back `charge` if it was never sequenced and this send still
    /// holds its lease, and forgets the key; returns the balance.
    pub async fn refund(&self, charge: &Charge) -> Result<u64, LedgerError> {
        let owner = self.owner(charge);
        Ok(self.call(Op { owner: &owner, ..Op::new("refund", charge) }).await?.1)
    }

    /// Records what the room made of `key`. It runs on a task of its own,
    /// retried for most of the key's lease, so that neither a Redis blip nor
    /// the sender going away leaves a sequenced gift looking unsequenced.
    pub async fn settle(&self, user: &str, key: &str, receipt: &Receipt) -> Result<(), LedgerError> {
        let json = serde_json::to_string(receipt).map_err(|e| LedgerError::Backend(e.to_string()))?;
        let id = (user.to_string(), key.to_string());
        self.lock_settling().insert(id.clone());
        let ledger = self.clone();
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LEASE * 5 / 6;
            let mut wait = Duration::from_millis(100);
            let result = loop {
                let op = Op {
                    name: "settle",
                    user: &id.0,
                    key: &id.1,
                    amount: 0,
                    now_ms: 0,
                    receipt: &json,
                    owner: "",
                };
                match ledger.call(op).await {
                    Ok(_) => break Ok(()),
                    Err(e) if tokio::time::Instant::now() + wait > deadline => break Err(e),
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            };
            ledger.lock_settling().remove(&id);
            result
        });
        task.await.map_err(|e| LedgerError::Backend(e.to_string()))?
    }

    /// Ends `charge`'s time in flight without a receipt, unless its receipt
    /// is being recorded or another send holds the lease now.
    pub async fn release(&self, charge: &Charge) -> Result<(), LedgerError> {
        if self.lock_settling().contains(&(charge.user.clone(), charge.key.clone())) {
            return Ok(());
        }
        let owner = self.owner(charge);
        self.call(Op { owner: &owner, ..Op::new("release", charge) }).await.map(|_| ())
    }

    fn lock_settling(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.settling.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
