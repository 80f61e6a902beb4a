//! Reading a journal back, and repairing one that cannot be read.
//!
//! Replay takes whole lines only. A last line without its newline was torn
//! by a crash or a full disk before it was synced, so it was never
//! acknowledged: it is reported and cut off. Any other unreadable line
//! stops the start with its line number and byte offset, rather than guess
//! at balances; `roomcast-server ledger repair` ([`repair`]) is the way on.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::Record;
use crate::gifts::ledger::LedgerError;

/// A journal read back.
#[derive(Debug)]
pub(super) struct Replayed {
    pub(super) records: Vec<Record>,
    /// Bytes of whole records; anything after them was a torn last record.
    pub(super) whole: u64,
    /// Bytes of a torn last record, cut off.
    pub(super) torn: u64,
}

/// Reads the journal at `path` (missing: empty).
pub(super) fn replay(path: &Path) -> Result<Replayed, LedgerError> {
    let text = read(path)?;
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    let mut records = Vec::new();
    let mut offset = 0;
    for (n, line) in text[..whole].split_inclusive('\n').enumerate() {
        let body = line.trim_end_matches('\n');
        if !body.trim().is_empty() {
            let record = serde_json::from_str(body).map_err(|e| LedgerError::Corrupt {
                path: path.to_path_buf(),
                line: n + 1,
                offset: offset as u64,
                why: e.to_string(),
            })?;
            records.push(record);
        }
        offset += line.len();
    }
    Ok(Replayed { records, whole: whole as u64, torn: (text.len() - whole) as u64 })
}

fn read(path: &Path) -> Result<String, LedgerError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        LedgerError::Corrupt { path: path.to_path_buf(), line, offset: at as u64, why: "not UTF-8".into() }
    })
}

/// What a repair did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Where the journal as it was is kept.
    pub backup: Option<PathBuf>,
    /// Records kept as they were.
    pub kept: usize,
    /// Whole records found inside an unreadable line (after a torn one) and
    /// kept: (line, byte offset of the line, the record's operation).
    pub salvaged: Vec<(usize, u64, String)>,
    /// What was dropped: (line, byte offset, the bytes as text).
    pub dropped: Vec<(usize, u64, String)>,
    /// Keys charged with no receipt after the repair: their next send is
    /// sequenced (a receipt dropped with a torn record may mean the gift was
    /// broadcast before).
    pub unsettled: Vec<(String, String)>,
}

/// Rewrites the journal at `path` without its unreadable parts: each line
/// that does not read is searched for a whole record starting inside it
/// (what an older node appended after a torn one), which is kept; the rest
/// of the line is dropped. The journal as it was is kept beside it
/// (`<journal>.corrupt-<unix ms>`). Only for a stopped node.
pub fn repair(path: &Path, now_ms: u64) -> Result<RepairReport, LedgerError> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut report = RepairReport::default();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut offset = 0u64;
    let mut records = Vec::new();
    for (n, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let (line_no, at) = (n + 1, offset);
        offset += line.len() as u64;
        let whole_line = line.ends_with(b"\n");
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if whole_line && let Ok(r) = serde_json::from_slice::<Record>(body) {
            out.extend_from_slice(body);
            out.push(b'\n');
            records.push(r);
            report.kept += 1;
            continue;
        }
        // The first position inside the line from which a whole record reads.
        let found = whole_line
            .then(|| {
                (1..body.len())
                    .filter(|i| body[*i] == b'{')
                    .find_map(|i| serde_json::from_slice::<Record>(&body[i..]).ok().map(|r| (i, r)))
            })
            .flatten();
        match found {
            Some((i, r)) => {
                report.dropped.push((line_no, at, String::from_utf8_lossy(&body[..i]).into_owned()));
                report.salvaged.push((line_no, at, r.op().to_string()));
                out.extend_from_slice(&body[i..]);
                out.push(b'\n');
                records.push(r);
            }
            None => report.dropped.push((line_no, at, String::from_utf8_lossy(body).into_owned())),
        }
    }
    if report.dropped.is_empty() {
        return Ok(report);
    }
    report.unsettled = unsettled(&records);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{now_ms}"));
    let backup = path.with_file_name(name);
    std::fs::copy(path, &backup)?;
    crate::durable::replace(path, &out, false)?;
    report.backup = Some(backup);
    Ok(report)
}

/// The (user, key) pairs debited and neither settled nor refunded.
fn unsettled(records: &[Record]) -> Vec<(String, String)> {
    let mut open: Vec<(String, String)> = Vec::new();
    for r in records {
        match r {
            Record::Debit { user, key, .. } => open.push((user.clone(), key.clone())),
            Record::Settle { user, key, .. } | Record::Refund { user, key, .. } => {
                open.retain(|(u, k)| !(u == user && k == key));
            }
            Record::Credit { .. } => {}
        }
    }
    open
}
