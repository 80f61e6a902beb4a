//! The embedded ledger: balances in memory, every change in an append-only
//! journal.
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
//! **Durability.** Every record is written and `fsync`ed (`sync_data`)
//! before it is answered, one record per sync: a charge that was
//! acknowledged survives a crash, and so does the room's receipt for it
//! (`settle`), so a gift answered once is never broadcast again after a
//! restart. The file holds whole records only, and a debit is taken only
//! while there is room for its receipt ([`file`]: failed writes are cut
//! back, a reserve file is given back when the disk fills). A torn last line
//! (a crash mid-write) is cut off at start; any other unreadable line
//! refuses the start with its line and byte offset rather than guess at
//! balances, and `roomcast-server ledger repair` rewrites the journal
//! without it ([`replay`]).
//!
//! **Compaction.** When the journal holds many more lines than the state it
//! describes (expired keys, superseded balances), it is rewritten as that
//! state — the live keys with their receipts, then each balance — into a
//! temporary file that is synced and renamed over the journal. A crash
//! leaves either the old journal or the new one, both whole.
//!
//! **No overdraft.** All state sits behind one `std::sync::Mutex`, held for
//! the check, the write and the sync of one operation and never across an
//! `.await`; [`super::Ledger`] runs each operation on tokio's blocking pool,
//! so the sync never stalls a runtime thread, a room or another user's chat.

mod file;
mod replay;

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use self::file::JournalFile;
pub use self::file::RESERVE_BYTES;
pub use self::replay::{RepairReport, repair};
use super::{DebitOutcome, LedgerError, Receipt};

/// The embedded ledger's journal file name in the data directory.
pub const JOURNAL_FILE: &str = "gift-ledger.jsonl";

/// A journal shorter than this is never compacted.
const COMPACT_MIN_LINES: usize = 50_000;

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Credit { user: String, amount: u64, balance: u64, at: u64 },
    Debit { user: String, key: String, amount: u64, balance: u64, at: u64 },
    Settle { user: String, key: String, seq: u64, message_id: String, combo_id: String, combo_count: u32 },
    Refund { user: String, key: String, amount: u64, balance: u64, at: u64 },
}

impl Record {
    fn op(&self) -> &'static str {
        match self {
            Self::Credit { .. } => "credit",
            Self::Debit { .. } => "debit",
            Self::Settle { .. } => "settle",
            Self::Refund { .. } => "refund",
        }
    }

    /// The record as one journal line.
    fn line(&self) -> Result<Vec<u8>, LedgerError> {
        let mut line = serde_json::to_vec(self).map_err(io::Error::other)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// An accepted key.
#[derive(Debug, Clone)]
struct Accepted {
    at_ms: u64,
    amount: u64,
    balance: u64,
    receipt: Option<Receipt>,
    /// Charged and being sequenced by a session of this process (never
    /// journaled: after a restart nothing is in flight).
    in_flight: bool,
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

    /// The answer for a key accepted before, if it was: a repeat, or — for a
    /// charge that was never sequenced and is not in flight — the charge
    /// again, now in flight for the caller to sequence.
    fn repeat(&mut self, user: &str, key: &str) -> Option<DebitOutcome> {
        let balance = self.balance(user);
        let a = self.keys.get_mut(&(user.into(), key.into()))?;
        if a.receipt.is_none() && !a.in_flight {
            a.in_flight = true;
            return Some(DebitOutcome::Charged { balance });
        }
        Some(DebitOutcome::Repeat { balance: a.balance, receipt: a.receipt.clone() })
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
                let accepted = Accepted { at_ms: at, amount, balance, receipt: None, in_flight: true };
                self.keys.insert(id, accepted);
            }
            Record::Settle { user, key, seq, message_id, combo_id, combo_count } => {
                if let Some(a) = self.keys.get_mut(&(user.into(), key.into())) {
                    a.receipt = Some(Receipt { seq, message_id, combo_id, combo_count });
                    a.in_flight = false;
                }
            }
            Record::Refund { user, key, balance, .. } => {
                self.keys.remove(&(user.as_str().into(), key.into()));
                self.balances.insert(user.into(), balance);
            }
        }
    }

    /// The records that rebuild this state: each live key (with its receipt)
    /// in acceptance order, then each balance, which the keys' records would
    /// otherwise leave at older values.
    fn snapshot(&self, now_ms: u64) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.keys.len() * 2 + self.balances.len());
        for (at, id) in &self.order {
            let Some(a) = self.keys.get(id).filter(|a| a.at_ms == *at) else { continue };
            let (user, key) = (id.0.to_string(), id.1.to_string());
            out.push(Record::Debit {
                user: user.clone(),
                key: key.clone(),
                amount: a.amount,
                balance: a.balance,
                at: *at,
            });
            if let Some(r) = &a.receipt {
                let r = r.clone();
                out.push(Record::Settle {
                    user,
                    key,
                    seq: r.seq,
                    message_id: r.message_id,
                    combo_id: r.combo_id,
                    combo_count: r.combo_count,
                });
            }
        }
        let mut users: Vec<_> = self.balances.iter().collect();
        users.sort();
        for (user, balance) in users {
            out.push(Record::Credit { user: user.to_string(), amount: 0, balance: *balance, at: now_ms });
        }
        out
    }
}

/// The book, its journal, and how many lines the journal holds.
#[derive(Debug)]
struct Inner {
    book: Book,
    file: JournalFile,
    lines: usize,
}

/// Balances in memory, every change journaled (see the module docs).
#[derive(Debug)]
pub struct EmbeddedLedger {
    path: PathBuf,
    key_ttl_ms: u64,
    /// A journal shorter than this is never compacted.
    compact_min_lines: usize,
    inner: Mutex<Inner>,
}

impl EmbeddedLedger {
    /// Opens (or creates) the journal in `dir` and replays it. Keys older
    /// than `key_ttl` at `now_ms` are forgotten.
    pub fn open(dir: &Path, key_ttl: Duration, now_ms: u64) -> Result<Self, LedgerError> {
        Self::open_file(dir, JOURNAL_FILE, key_ttl, now_ms)
    }

    /// [`EmbeddedLedger::open`] with another file name in `dir`.
    pub fn open_file(dir: &Path, name: &str, key_ttl: Duration, now_ms: u64) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let replayed = replay::replay(&path)?;
        if replayed.torn > 0 {
            tracing::warn!(bytes = replayed.torn, file = %path.display(), "cutting a torn last record off the gift ledger journal (it was never acknowledged)");
        }
        let mut book = Book::default();
        let lines = replayed.records.len();
        for record in replayed.records {
            book.apply(record);
        }
        let handle = OpenOptions::new().append(true).create(true).open(&path)?;
        let file = JournalFile::new(path.clone(), handle, replayed.whole)?;
        // Nothing is in flight in a process that just started.
        book.keys.values_mut().for_each(|a| a.in_flight = false);
        let key_ttl_ms = key_ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        book.expire(now_ms, key_ttl_ms);
        let ledger = Self {
            path,
            key_ttl_ms,
            compact_min_lines: COMPACT_MIN_LINES,
            inner: Mutex::new(Inner { book, file, lines }),
        };
        if let Err(e) = ledger.compact_if_due(&mut ledger.lock(), now_ms, 2) {
            // The journal as it was is whole and read: a full disk delays
            // the compaction, not the start.
            tracing::warn!(error = %e, "gift ledger not compacted at start");
        }
        Ok(ledger)
    }

    /// Counts the journal's failed writes in `failures`.
    pub fn count_failures(&self, failures: Counter) {
        self.lock().file.count_failures(failures);
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied record:
        // memory changes only after the journal write succeeded.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn balance(&self, user: &str) -> u64 {
        self.lock().book.balance(user)
    }

    /// Charges `amount` once per (`user`, `key`); never below zero.
    pub fn debit(
        &self,
        user: &str,
        amount: u64,
        key: &str,
        now_ms: u64,
    ) -> Result<DebitOutcome, LedgerError> {
        let mut inner = self.lock();
        inner.book.expire(now_ms, self.key_ttl_ms);
        if let Some(outcome) = inner.book.repeat(user, key) {
            return Ok(outcome);
        }
        let have = inner.book.balance(user);
        let Some(balance) = have.checked_sub(amount) else {
            return Ok(DebitOutcome::Insufficient { balance: have });
        };
        inner.file.ready_for_debit()?;
        let record = Record::Debit { user: user.into(), key: key.into(), amount, balance, at: now_ms };
        self.append(&mut inner, record, true, now_ms)?;
        Ok(DebitOutcome::Charged { balance })
    }

    /// Whether a charge could be journaled now with room for its receipt
    /// (see [`file`]): asked before someone else (the backend) charges.
    pub fn ready(&self) -> Result<(), LedgerError> {
        Ok(self.lock().file.ready_for_debit()?)
    }

    /// The answer for a key accepted before (see [`DebitOutcome`]), without
    /// charging anything when it was not.
    pub fn lookup(&self, user: &str, key: &str, now_ms: u64) -> Option<DebitOutcome> {
        let mut inner = self.lock();
        inner.book.expire(now_ms, self.key_ttl_ms);
        inner.book.repeat(user, key)
    }

    /// Journals a charge someone else made (the backend's ledger), with the
    /// balance it reported. A key recorded meanwhile by a concurrent send is
    /// answered as a repeat.
    pub fn record(
        &self,
        user: &str,
        key: &str,
        amount: u64,
        balance: u64,
        now_ms: u64,
    ) -> Result<DebitOutcome, LedgerError> {
        let mut inner = self.lock();
        inner.book.expire(now_ms, self.key_ttl_ms);
        if let Some(outcome) = inner.book.repeat(user, key) {
            return Ok(outcome);
        }
        inner.file.ready_for_debit()?;
        let record = Record::Debit { user: user.into(), key: key.into(), amount, balance, at: now_ms };
        self.append(&mut inner, record, true, now_ms)?;
        Ok(DebitOutcome::Charged { balance })
    }

    /// Adds `amount` to `user`'s balance.
    pub fn credit(&self, user: &str, amount: u64, now_ms: u64) -> Result<u64, LedgerError> {
        let mut inner = self.lock();
        let balance = inner.book.balance(user).checked_add(amount).ok_or(LedgerError::Overflow)?;
        let record = Record::Credit { user: user.into(), amount, balance, at: now_ms };
        self.append(&mut inner, record, true, now_ms)?;
        Ok(balance)
    }

    /// Gives back the charge of an accepted key and forgets the key.
    pub fn refund(&self, user: &str, key: &str, now_ms: u64) -> Result<u64, LedgerError> {
        let balance = self.lock().book.balance(user);
        self.forget(user, key, None, now_ms).map(|b| b.unwrap_or(balance))
    }

    /// Forgets an accepted key and gives its amount back: onto the balance,
    /// or to `balance` when someone else (the backend) refunded it. The new
    /// balance, or `None` when the key was not accepted.
    pub fn forget(
        &self,
        user: &str,
        key: &str,
        balance: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<u64>, LedgerError> {
        let mut inner = self.lock();
        let Some(a) = inner.book.keys.get(&(user.into(), key.into())) else {
            return Ok(None);
        };
        let amount = a.amount;
        let balance = balance.unwrap_or_else(|| inner.book.balance(user).saturating_add(amount));
        let record = Record::Refund { user: user.into(), key: key.into(), amount, balance, at: now_ms };
        self.append(&mut inner, record, true, now_ms)?;
        Ok(Some(balance))
    }

    /// The amount an accepted key charged.
    pub fn amount(&self, user: &str, key: &str) -> Option<u64> {
        self.lock().book.keys.get(&(user.into(), key.into())).map(|a| a.amount)
    }

    /// Records the room's receipt for an accepted key, synced. The gift was
    /// broadcast, so the receipt holds in memory even when the disk refuses
    /// it: the journal then writes it before anything else, and takes no
    /// debit until it has (see [`file`]).
    pub fn settle(&self, user: &str, key: &str, receipt: Receipt) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        if !inner.book.keys.contains_key(&(user.into(), key.into())) {
            return Ok(());
        }
        let Receipt { seq, message_id, combo_id, combo_count } = receipt;
        let record =
            Record::Settle { user: user.into(), key: key.into(), seq, message_id, combo_id, combo_count };
        let line = record.line()?;
        let written = inner.file.append_promised(&line, true);
        inner.book.apply(record);
        inner.lines += 1;
        written.map_err(LedgerError::from)
    }

    /// Ends a charge's time in flight; the next send of its key sequences it
    /// unless a receipt was recorded.
    pub fn release(&self, user: &str, key: &str) {
        if let Some(a) = self.lock().book.keys.get_mut(&(user.into(), key.into())) {
            a.in_flight = false;
        }
    }

    /// Writes `record`, applies it, and compacts the journal if it has grown
    /// well past the state it describes.
    fn append(&self, inner: &mut Inner, record: Record, sync: bool, now_ms: u64) -> Result<(), LedgerError> {
        inner.file.append(&record.line()?, sync)?;
        inner.book.apply(record);
        inner.lines += 1;
        if let Err(e) = self.compact_if_due(inner, now_ms, 4) {
            // The journal as it was is still whole and appended to.
            tracing::warn!(error = %e, "gift ledger not compacted");
        }
        Ok(())
    }

    /// Rewrites the journal as its state when it holds more than `factor`
    /// times the lines that state needs (and at least `compact_min_lines`).
    fn compact_if_due(&self, inner: &mut Inner, now_ms: u64, factor: usize) -> Result<(), LedgerError> {
        if inner.lines < self.compact_min_lines {
            return Ok(());
        }
        inner.book.expire(now_ms, self.key_ttl_ms);
        let live = inner.book.keys.len() * 2 + inner.book.balances.len();
        if inner.lines < live.saturating_mul(factor) {
            return Ok(());
        }
        let records = inner.book.snapshot(now_ms);
        let mut text = Vec::with_capacity(records.len() * 128);
        for record in &records {
            text.extend_from_slice(&record.line()?);
        }
        inner.file.replace(&text)?;
        tracing::info!(from = inner.lines, to = records.len(), "gift ledger journal compacted");
        inner.lines = records.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
