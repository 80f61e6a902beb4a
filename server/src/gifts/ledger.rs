//! The ledger seam: where gifts are charged. [`Ledger`] is what the rest of
//! the node calls; [`EmbeddedLedger`] is the default implementation, with
//! balances in memory and an append-only journal in the data directory.
//!
//! **Journal.** `gift-ledger.jsonl` in `data_dir`: one JSON object per line,
//! each carrying the user's balance *after* the operation, so replay sets
//! balances rather than adding them up:
//!
//! ```text
//! {"op":"credit","user":"u1","amount":500,"balance":500,"at":1764370000000}
//! {"op":"debit","user":"u1","key":"k-1","amount":10,"balance":490,"at":1764370001000}
//! {"op":"settle","user":"u1","key":"k-1","seq":7,"message_id":"7-ab","combo_id":"c7","combo_count":1}
//! {"op":"refund","user":"u1","key":"k-2","amount":10,"balance":490,"at":1764370002000}
//! ```
//!
//! **Durability.** A credit, a debit or a refund is written and `fsync`ed
//! (`sync_data`) before it is answered, one record per sync: a charge that
//! was acknowledged survives a crash. A `settle` (the room's sequence number
//! for an accepted key, used only to answer repeats) is written without a
//! sync of its own and reaches the disk with the next record's; losing it
//! makes a repeat answer `seq` 0, never charges twice. A torn last line (a
//! crash mid-write) is cut off at start; any other unreadable line refuses
//! the start rather than guess at balances.
//!
//! **Exactly once.** Accepted keys are kept per user for `key_ttl` (24 h by
//! default), in memory and in the journal, so a repeat within that time —
//! concurrent, after a reconnect, or after a restart — is answered with the
//! first outcome and charges nothing. Refusals are not kept.
//!
//! **No overdraft.** All state sits behind one `std::sync::Mutex`, held for
//! the check, the write and the sync of one operation and never across an
//! `.await`; [`Ledger`] runs each operation on tokio's blocking pool, so the
//! sync never stalls a runtime thread, a room or another user's chat.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The journal's file name in the data directory.
pub const JOURNAL_FILE: &str = "gift-ledger.jsonl";

/// How long a caller waits for the ledger before answering
/// LEDGER_UNAVAILABLE.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the room made of an accepted charge, kept to answer repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub seq: u64,
    pub message_id: String,
    pub combo_id: String,
    pub combo_count: u32,
}

/// The result of a debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitOutcome {
    /// Charged now; `balance` is what is left.
    Charged { balance: u64 },
    /// The key was accepted before: nothing charged now. `receipt` is the
    /// first send's, once the room has sequenced it.
    Repeat { balance: u64, receipt: Option<Receipt> },
    /// The balance does not cover the amount; nothing charged.
    Insufficient { balance: u64 },
}

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger journal: {0}")]
    Io(#[from] io::Error),
    #[error("ledger journal line {line}: {why}")]
    Corrupt { line: usize, why: String },
    #[error("the ledger did not answer in time")]
    Timeout,
    #[error("a credit would overflow the balance")]
    Overflow,
}

/// The ledger seam. Cheap to clone. Each call runs off the async runtime
/// and is bounded by [`LEDGER_TIMEOUT`].
#[derive(Debug, Clone)]
pub enum Ledger {
    Embedded(Arc<EmbeddedLedger>),
}

impl Ledger {
    /// Charges `amount` to `user` once per `key`.
    pub async fn debit(
        &self,
        user: &str,
        amount: u64,
        key: &str,
        now_ms: u64,
    ) -> Result<DebitOutcome, LedgerError> {
        let (user, key) = (user.to_string(), key.to_string());
        match self {
            Self::Embedded(l) => {
                let l = l.clone();
                blocking(move || l.debit(&user, amount, &key, now_ms)).await
            }
        }
    }

    /// Adds `amount` to `user`'s balance and returns the new balance.
    pub async fn credit(&self, user: &str, amount: u64, now_ms: u64) -> Result<u64, LedgerError> {
        let user = user.to_string();
        match self {
            Self::Embedded(l) => {
                let l = l.clone();
                blocking(move || l.credit(&user, amount, now_ms)).await
            }
        }
    }

    /// Gives back a charge whose gift could not be sequenced, and forgets
    /// its key. Returns the new balance.
    pub async fn refund(&self, user: &str, key: &str, now_ms: u64) -> Result<u64, LedgerError> {
        let (user, key) = (user.to_string(), key.to_string());
        match self {
            Self::Embedded(l) => {
                let l = l.clone();
                blocking(move || l.refund(&user, &key, now_ms)).await
            }
        }
    }

    /// Records what the room made of an accepted key.
    pub async fn settle(&self, user: &str, key: &str, receipt: Receipt) {
        let (user, key) = (user.to_string(), key.to_string());
        match self {
            Self::Embedded(l) => {
                let l = l.clone();
                if let Err(e) = blocking(move || l.settle(&user, &key, receipt)).await {
                    tracing::warn!(error = %e, "gift receipt not journaled");
                }
            }
        }
    }

    /// `user`'s balance.
    pub fn balance(&self, user: &str) -> u64 {
        match self {
            Self::Embedded(l) => l.balance(user),
        }
    }
}

/// Runs `f` on the blocking pool, within [`LEDGER_TIMEOUT`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    match tokio::time::timeout(LEDGER_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(LedgerError::Io(io::Error::other(join.to_string()))),
        Err(_) => Err(LedgerError::Timeout),
    }
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Credit { user: String, amount: u64, balance: u64, at: u64 },
    Debit { user: String, key: String, amount: u64, balance: u64, at: u64 },
    Settle { user: String, key: String, seq: u64, message_id: String, combo_id: String, combo_count: u32 },
    Refund { user: String, key: String, amount: u64, balance: u64, at: u64 },
}

/// An accepted key.
#[derive(Debug, Clone)]
struct Accepted {
    at_ms: u64,
    amount: u64,
    balance: u64,
    receipt: Option<Receipt>,
}

type KeyId = (Box<str>, Box<str>);

#[derive(Debug, Default)]
struct Book {
    balances: HashMap<Box<str>, u64>,
    keys: HashMap<KeyId, Accepted>,
    /// Keys in the order they were accepted, for expiry.
    order: VecDeque<(u64, KeyId)>,
}

impl Book {
    fn balance(&self, user: &str) -> u64 {
        self.balances.get(user).copied().unwrap_or(0)
    }

    fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some((at, _)) = self.order.front() {
            if now_ms.saturating_sub(*at) < ttl_ms {
                break;
            }
            if let Some((at, id)) = self.order.pop_front()
                && self.keys.get(&id).is_some_and(|a| a.at_ms == at)
            {
                self.keys.remove(&id);
            }
        }
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Credit { user, balance, .. } => {
                self.balances.insert(user.into(), balance);
            }
            Record::Debit { user, key, amount, balance, at } => {
                let id: KeyId = (user.as_str().into(), key.into());
                self.balances.insert(user.into(), balance);
                self.order.push_back((at, id.clone()));
                self.keys.insert(id, Accepted { at_ms: at, amount, balance, receipt: None });
            }
            Record::Settle { user, key, seq, message_id, combo_id, combo_count } => {
                if let Some(a) = self.keys.get_mut(&(user.into(), key.into())) {
                    a.receipt = Some(Receipt { seq, message_id, combo_id, combo_count });
                }
            }
            Record::Refund { user, key, balance, .. } => {
                self.keys.remove(&(user.as_str().into(), key.into()));
                self.balances.insert(user.into(), balance);
            }
        }
    }
}

/// Balances in memory, every change journaled (see the module docs).
#[derive(Debug)]
pub struct EmbeddedLedger {
    path: PathBuf,
    key_ttl_ms: u64,
    inner: Mutex<(Book, File)>,
}

impl EmbeddedLedger {
    /// Opens (or creates) the journal in `dir` and replays it. Keys older
    /// than `key_ttl` at `now_ms` are forgotten.
    pub fn open(dir: &Path, key_ttl: Duration, now_ms: u64) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let mut book = Book::default();
        // Only whole lines count: a last line without its newline was torn
        // by a crash before it was synced, so it was never acknowledged.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        for (n, line) in text[..whole].lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(line)
                .map_err(|e| LedgerError::Corrupt { line: n + 1, why: e.to_string() })?;
            book.apply(record);
        }
        if whole < text.len() {
            tracing::warn!(bytes = text.len() - whole, "cutting a torn last line off the gift ledger");
            file.set_len(whole as u64)?;
            file.seek(SeekFrom::End(0))?;
            file.sync_data()?;
        }
        let key_ttl_ms = key_ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        book.expire(now_ms, key_ttl_ms);
        Ok(Self { path, key_ttl_ms, inner: Mutex::new((book, file)) })
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Book, File)> {
        // A panic while holding the lock cannot leave a half-applied record:
        // memory changes only after the journal write succeeded.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn balance(&self, user: &str) -> u64 {
        self.lock().0.balance(user)
    }

    /// Charges `amount` once per (`user`, `key`); never below zero.
    pub fn debit(
        &self,
        user: &str,
        amount: u64,
        key: &str,
        now_ms: u64,
    ) -> Result<DebitOutcome, LedgerError> {
        let mut guard = self.lock();
        let (book, file) = &mut *guard;
        book.expire(now_ms, self.key_ttl_ms);
        if let Some(a) = book.keys.get(&(user.into(), key.into())) {
            return Ok(DebitOutcome::Repeat { balance: a.balance, receipt: a.receipt.clone() });
        }
        let have = book.balance(user);
        let Some(balance) = have.checked_sub(amount) else {
            return Ok(DebitOutcome::Insufficient { balance: have });
        };
        let record = Record::Debit { user: user.into(), key: key.into(), amount, balance, at: now_ms };
        write(file, &record, true)?;
        book.apply(record);
        Ok(DebitOutcome::Charged { balance })
    }

    /// Adds `amount` to `user`'s balance.
    pub fn credit(&self, user: &str, amount: u64, now_ms: u64) -> Result<u64, LedgerError> {
        let mut guard = self.lock();
        let (book, file) = &mut *guard;
        let balance = book.balance(user).checked_add(amount).ok_or(LedgerError::Overflow)?;
        let record = Record::Credit { user: user.into(), amount, balance, at: now_ms };
        write(file, &record, true)?;
        book.apply(record);
        Ok(balance)
    }

    /// Gives back the charge of an accepted key and forgets the key.
    pub fn refund(&self, user: &str, key: &str, now_ms: u64) -> Result<u64, LedgerError> {
        let mut guard = self.lock();
        let (book, file) = &mut *guard;
        let Some(a) = book.keys.get(&(user.into(), key.into())) else {
            return Ok(book.balance(user));
        };
        let amount = a.amount;
        let balance = book.balance(user).saturating_add(amount);
        let record = Record::Refund { user: user.into(), key: key.into(), amount, balance, at: now_ms };
        write(file, &record, true)?;
        book.apply(record);
        Ok(balance)
    }

    /// Records the room's receipt for an accepted key (not synced by itself).
    pub fn settle(&self, user: &str, key: &str, receipt: Receipt) -> Result<(), LedgerError> {
        let mut guard = self.lock();
        let (book, file) = &mut *guard;
        if !book.keys.contains_key(&(user.into(), key.into())) {
            return Ok(());
        }
        let Receipt { seq, message_id, combo_id, combo_count } = receipt;
        let record =
            Record::Settle { user: user.into(), key: key.into(), seq, message_id, combo_id, combo_count };
        write(file, &record, false)?;
        book.apply(record);
        Ok(())
    }
}

/// Appends one record as a line, synced to disk if `sync`.
fn write(file: &mut File, record: &Record, sync: bool) -> Result<(), LedgerError> {
    let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roomcast-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_debit_never_takes_a_balance_below_zero() {
        let d = dir("negative");
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        l.credit("u", 25, 0).unwrap();
        assert_eq!(l.debit("u", 10, "a", 1).unwrap(), DebitOutcome::Charged { balance: 15 });
        assert_eq!(l.debit("u", 10, "b", 2).unwrap(), DebitOutcome::Charged { balance: 5 });
        assert_eq!(l.debit("u", 10, "c", 3).unwrap(), DebitOutcome::Insufficient { balance: 5 });
        assert_eq!(l.debit("nobody", 1, "a", 3).unwrap(), DebitOutcome::Insufficient { balance: 0 });
        assert_eq!(l.balance("u"), 5);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_same_key_charges_once_and_answers_the_first_outcome() {
        let d = dir("idempotent");
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        l.credit("u", 100, 0).unwrap();
        assert_eq!(l.debit("u", 30, "k", 1).unwrap(), DebitOutcome::Charged { balance: 70 });
        assert_eq!(l.debit("u", 30, "k", 2).unwrap(), DebitOutcome::Repeat { balance: 70, receipt: None });
        let receipt = Receipt { seq: 4, message_id: "m".into(), combo_id: "c".into(), combo_count: 1 };
        l.settle("u", "k", receipt.clone()).unwrap();
        assert_eq!(
            l.debit("u", 30, "k", 3).unwrap(),
            DebitOutcome::Repeat { balance: 70, receipt: Some(receipt) }
        );
        // Keys are per user.
        l.credit("v", 30, 0).unwrap();
        assert_eq!(l.debit("v", 30, "k", 3).unwrap(), DebitOutcome::Charged { balance: 0 });
        assert_eq!(l.balance("u"), 70);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replay_restores_balances_keys_and_receipts() {
        let d = dir("replay");
        let receipt = Receipt { seq: 9, message_id: "m9".into(), combo_id: "c9".into(), combo_count: 2 };
        {
            let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
            l.credit("u", 100, 0).unwrap();
            l.debit("u", 40, "k1", 1).unwrap();
            l.settle("u", "k1", receipt.clone()).unwrap();
            l.debit("u", 10, "k2", 2).unwrap();
            l.refund("u", "k2", 3).unwrap();
        }
        let l = EmbeddedLedger::open(&d, DAY, 10).unwrap();
        assert_eq!(l.balance("u"), 60);
        assert_eq!(
            l.debit("u", 40, "k1", 11).unwrap(),
            DebitOutcome::Repeat { balance: 60, receipt: Some(receipt) }
        );
        // A refunded key is forgotten: sending it again charges.
        assert_eq!(l.debit("u", 10, "k2", 12).unwrap(), DebitOutcome::Charged { balance: 50 });
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_expire_after_their_time_to_live() {
        let d = dir("expiry");
        let ttl = Duration::from_secs(10);
        {
            let l = EmbeddedLedger::open(&d, ttl, 0).unwrap();
            l.credit("u", 100, 0).unwrap();
            l.debit("u", 10, "k", 1_000).unwrap();
            assert!(matches!(l.debit("u", 10, "k", 5_000).unwrap(), DebitOutcome::Repeat { .. }));
        }
        let l = EmbeddedLedger::open(&d, ttl, 11_000).unwrap();
        assert_eq!(l.debit("u", 10, "k", 11_000).unwrap(), DebitOutcome::Charged { balance: 80 });
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_a_corrupt_one_refuses_the_start() {
        let d = dir("torn");
        {
            let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
            l.credit("u", 100, 0).unwrap();
        }
        let path = d.join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"op":"debit","user":"u","ke"#).unwrap();
        drop(f);
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        assert_eq!(l.balance("u"), 100);
        l.debit("u", 1, "k", 1).unwrap();
        drop(l);
        let l = EmbeddedLedger::open(&d, DAY, 2).unwrap();
        assert_eq!(l.balance("u"), 99);
        drop(l);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n").unwrap();
        drop(f);
        assert!(matches!(EmbeddedLedger::open(&d, DAY, 3), Err(LedgerError::Corrupt { line: 3, .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_debits_never_overdraw() {
        let d = dir("concurrent");
        let l = Arc::new(EmbeddedLedger::open(&d, DAY, 0).unwrap());
        l.credit("u", 50, 0).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .filter(|i| {
                            matches!(
                                l.debit("u", 3, &format!("{t}-{i}"), 1),
                                Ok(DebitOutcome::Charged { .. })
                            )
                        })
                        .count()
                })
            })
            .collect();
        let charged: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(charged, 16);
        assert_eq!(l.balance("u"), 2);
        let _ = std::fs::remove_dir_all(&d);
    }
}
