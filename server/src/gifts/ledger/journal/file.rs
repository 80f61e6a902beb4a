//! The journal's file: whole records only, whatever the disk does.
//!
//! * **No torn record in the middle.** The file's length after its last
//!   whole record is kept. A write or a sync that fails is cut back to it
//!   (`set_len`) before anything else is written; if even the cut fails,
//!   every later write tries it first and fails until it succeeds. A crash
//!   mid-write can leave a torn *last* record only, which replay cuts off.
//! * **A reserve for the records already promised.** A debit promises a
//!   `settle` (the room's receipt) once the gift is sequenced: without it a
//!   restarted node would broadcast the gift again. So beside the journal
//!   lies a reserve file (`<journal>.reserve`, [`RESERVE_BYTES`] of real
//!   blocks). A debit is taken only while the reserve is whole; a record
//!   that finds the disk full gives the reserve back and is written in the
//!   room it frees. New debits are then refused (LEDGER_UNAVAILABLE) until
//!   the reserve can be made again, which is tried at each debit.
//! * **A receipt is never forgotten in memory.** A receipt whose write
//!   fails even then stays pending and is written before anything else;
//!   nothing else is written (so no debit is taken) until it is.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prometheus_client::metrics::counter::Counter;

/// The reserve's size: room for the receipts of thousands of gifts in
/// flight when the disk fills.
pub const RESERVE_BYTES: usize = 1 << 20;

/// An open journal file (see the module docs).
#[derive(Debug)]
pub(super) struct JournalFile {
    path: PathBuf,
    file: File,
    /// The length of the whole records: where the next one starts.
    len: u64,
    /// The file is longer than `len` (a failed write whose cut failed too).
    torn: bool,
    /// Records applied in memory whose write failed, in order.
    pending: Vec<u8>,
    reserve: PathBuf,
    /// Failed writes, for `roomcast_storage_write_failures_total`.
    failures: Option<Counter>,
}

impl JournalFile {
    /// Takes `file`, opened for appending, whose first `len` bytes are whole
    /// records; anything after them is cut off now.
    pub(super) fn new(path: PathBuf, file: File, len: u64) -> io::Result<Self> {
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_data()?;
        }
        let reserve = reserve_path(&path);
        let mut journal = Self { path, file, len, torn: false, pending: Vec::new(), reserve, failures: None };
        if let Err(e) = journal.make_reserve() {
            tracing::warn!(error = %e, file = %journal.path.display(), "no room for the journal's reserve: gifts are refused until there is");
        }
        Ok(journal)
    }

    /// Counts failed writes in `failures`.
    pub(super) fn count_failures(&mut self, failures: Counter) {
        self.failures = Some(failures);
    }

    /// Makes sure a debit's receipt will find room: the reserve is whole
    /// (made again if it was given back) and no receipt is pending.
    pub(super) fn ready_for_debit(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if !self.reserve_is_whole() {
            self.make_reserve()?;
            tracing::info!(file = %self.path.display(), "the journal's reserve is back: gifts are taken again");
        }
        Ok(())
    }

    /// Appends one record (a whole line), synced to disk if `sync`. On an
    /// error nothing of it is left in the file.
    pub(super) fn append(&mut self, line: &[u8], sync: bool) -> io::Result<()> {
        self.write_pending()?;
        self.write_whole(line, sync)
    }

    /// Appends a record that is already true in memory (a receipt): when the
    /// disk is full the reserve is given back for it; when it still cannot
    /// be written it stays pending, ahead of every later record.
    pub(super) fn append_promised(&mut self, line: &[u8], sync: bool) -> io::Result<()> {
        let first = self.append(line, sync);
        let Err(e) = first else { return Ok(()) };
        if self.give_back_reserve() {
            tracing::warn!(error = %e, file = %self.path.display(), "disk full: the journal's reserve given back for a receipt; gifts are refused until there is room again");
            if self.append(line, sync).is_ok() {
                return Ok(());
            }
        }
        self.pending.extend_from_slice(line);
        Err(e)
    }

    /// Replaces the whole journal with `records` (a compaction): written to
    /// a temporary file, synced, and renamed over the journal, so a crash or
    /// a full disk leaves either the old journal or the new one.
    pub(super) fn replace(&mut self, records: &[u8]) -> io::Result<()> {
        self.write_pending()?;
        if let Err(e) = crate::durable::replace(&self.path, records, false) {
            self.failed();
            return Err(e);
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = records.len() as u64;
        self.torn = false;
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return self.cut_torn();
        }
        let pending = std::mem::take(&mut self.pending);
        match self.write_whole(&pending, true) {
            Ok(()) => {
                tracing::info!(file = %self.path.display(), "pending gift receipts written");
                Ok(())
            }
            Err(e) => {
                self.pending = pending;
                Err(e)
            }
        }
    }

    fn write_whole(&mut self, bytes: &[u8], sync: bool) -> io::Result<()> {
        self.cut_torn()?;
        let written =
            self.file.write_all(bytes).and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.failed();
                self.torn = true;
                if let Err(cut) = self.cut_torn() {
                    tracing::error!(error = %cut, file = %self.path.display(), "a failed journal write could not be cut back; nothing more is written until it is");
                }
                Err(e)
            }
        }
    }

    /// Cuts whatever follows the last whole record.
    fn cut_torn(&mut self) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        Ok(())
    }

    fn failed(&self) {
        if let Some(c) = &self.failures {
            c.inc();
        }
    }

    fn reserve_is_whole(&self) -> bool {
        std::fs::metadata(&self.reserve).is_ok_and(|m| m.len() == RESERVE_BYTES as u64)
    }

    /// Writes the reserve (real blocks, not a sparse file), or removes what
    /// part of it was written.
    fn make_reserve(&mut self) -> io::Result<()> {
        if self.reserve_is_whole() {
            return Ok(());
        }
        let made = (|| {
            let mut f = File::create(&self.reserve)?;
            f.write_all(&vec![0u8; RESERVE_BYTES])?;
            f.sync_all()
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&self.reserve);
            self.failed();
        }
        made
    }

    /// Gives the reserve's room back to the disk; whether there was one.
    fn give_back_reserve(&mut self) -> bool {
        std::fs::remove_file(&self.reserve).is_ok()
    }
}

/// `<journal>.reserve` beside `journal`.
pub(crate) fn reserve_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_os_string();
    name.push(".reserve");
    journal.with_file_name(name)
}
