//! Replay after the live: every sequenced event of every room is also kept on
//! local disk, so a room's history stays readable by sequence range and by
//! media time after the room has emptied and gone, or the node restarted,
//! for `room.archive_retention_secs` (24 h by default).
//!
//! * One file per room incarnation in `data_dir/archive/`,
//!   `{room}~{epoch:016x}.log`: each event encoded as a `RoomEvent`, prefixed
//!   by its length (4 bytes, big-endian). Reads use a room's newest
//!   incarnation.
//! * Writing never touches the room's task: `ArchiveSink::record` is a
//!   `try_send` of the encoded event into a bounded queue, drained by one
//!   writer thread that appends in batches. An event that finds the queue
//!   full is not archived and is counted (`queue_full`); the room and its
//!   live history are unaffected.
//! * A file holds whole records only. A batch the disk refuses (full, or an
//!   I/O error) is cut back to the file's length before it, its events are
//!   counted (`write_failed`) and the failure is logged once until a write
//!   succeeds again; what is written after the disk has room again reads
//!   back like the rest. Live history is unaffected.
//! * Reading happens on tokio's blocking pool, never behind live traffic. A
//!   recalled message is left out (its `RecallNotice` is kept), as in live
//!   history; a torn last record (a crash mid-write) is ignored.
//! * The writer deletes files older than the retention, then the oldest
//!   files while the archive holds more than `archive_max_bytes`.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prost::Message;
use roomcast_protocol::{HistoryRange, MAX_SERVER_FRAME_BYTES, RoomId, v1};

use super::history::{self, Page};

/// Events waiting for the writer; beyond it an event is not archived.
const QUEUE: usize = 65_536;
/// Most of one file read back.
const MAX_READ_BYTES: u64 = 256 << 20;
/// How often the writer looks for files to delete.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One event for the writer.
struct Record {
    file: Arc<str>,
    bytes: Vec<u8>,
}

/// The node's archive (see the module docs).
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    tx: SyncSender<Record>,
    dropped: AtomicU64,
    counters: ArchiveCounters,
}

/// Where the archive counts what it could not keep.
#[derive(Debug, Clone, Default)]
pub struct ArchiveCounters {
    /// Events not archived because the writer was behind.
    pub queue_full: Counter,
    /// Events not archived because the disk refused their write.
    pub write_failed: Counter,
    /// Writes the disk refused.
    pub write_failures: Counter,
}

/// A room incarnation's way into the archive.
#[derive(Debug, Clone)]
pub(crate) struct ArchiveSink {
    archive: Arc<Archive>,
    file: Arc<str>,
}

/// The file of a room incarnation.
fn file_name(room: &RoomId, epoch: u64) -> String {
    format!("{}~{epoch:016x}.log", room.as_str())
}

impl ArchiveSink {
    /// Queues `event` for the archive; never waits.
    pub(super) fn record(&self, event: &v1::RoomEvent) {
        let record = Record { file: self.file.clone(), bytes: event.encode_to_vec() };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.archive.tx.try_send(record) {
            self.archive.dropped.fetch_add(1, Ordering::Relaxed);
            self.archive.counters.queue_full.inc();
        }
    }
}

impl Archive {
    /// Opens (or creates) the archive in `dir` and starts its writer thread.
    /// What it cannot keep is counted in `counters`.
    pub fn open(
        dir: PathBuf,
        retention: Duration,
        max_bytes: u64,
        counters: ArchiveCounters,
    ) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = sync_channel(QUEUE);
        let writer =
            Writer { dir: dir.clone(), retention, max_bytes, counters: counters.clone(), failing: false };
        std::thread::Builder::new().name("roomcast-archive".into()).spawn(move || writer.run(&rx))?;
        Ok(Arc::new(Self { dir, tx, dropped: AtomicU64::new(0), counters }))
    }

    /// The sink of `room`'s incarnation `epoch`.
    pub(crate) fn sink(self: &Arc<Self>, room: &RoomId, epoch: u64) -> ArchiveSink {
        ArchiveSink { archive: self.clone(), file: file_name(room, epoch).into() }
    }

    /// Events not archived because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A page of `room`'s archived history (its newest incarnation), or
    /// `None` if the archive has none.
    pub async fn read(&self, room: &RoomId, range: HistoryRange, limit: usize) -> Option<Page> {
        let (dir, room) = (self.dir.clone(), room.clone());
        let events = tokio::task::spawn_blocking(move || read_room(&dir, &room)).await.ok()??;
        Some(history::page(&events, range, limit))
    }
}

/// The newest incarnation's events of `room`, recalled ones left out.
fn read_room(dir: &Path, room: &RoomId) -> Option<Vec<v1::RoomEvent>> {
    let prefix = format!("{}~", room.as_str());
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".log"))
        .max()?;
    let mut bytes = Vec::new();
    File::open(dir.join(newest)).ok()?.take(MAX_READ_BYTES).read_to_end(&mut bytes).ok()?;
    let mut events = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_SERVER_FRAME_BYTES as usize || len > rest.len() - 4 {
            break;
        }
        match v1::RoomEvent::decode(&rest[4..4 + len]) {
            Ok(e) => events.push(e),
            Err(e) => {
                tracing::warn!(error = %e, room = %room, "unreadable archive record; reading stops there");
                break;
            }
        }
        rest = &rest[4 + len..];
    }
    let recalled: HashSet<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::room_event::Kind::Recall(r)) => Some(r.message_id.clone()),
            _ => None,
        })
        .collect();
    events.retain(|e| !recalled.contains(&e.message_id));
    Some(events)
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    retention: Duration,
    max_bytes: u64,
    counters: ArchiveCounters,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

impl Writer {
    /// Appends batches until every sink and the archive are gone, and
    /// sweeps old files.
    fn run(mut self, rx: &Receiver<Record>) {
        let mut last_sweep = std::time::Instant::now();
        sweep(&self.dir, self.retention, self.max_bytes);
        loop {
            let first = match rx.recv_timeout(SWEEP_EVERY) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: HashMap<Arc<str>, Vec<Vec<u8>>> = HashMap::new();
            for r in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()).take(4_096)) {
                batch.entry(r.file).or_default().push(r.bytes);
            }
            for (file, events) in batch {
                self.write(&file, &events);
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                sweep(&self.dir, self.retention, self.max_bytes);
                last_sweep = std::time::Instant::now();
            }
        }
    }

    fn write(&mut self, file: &str, events: &[Vec<u8>]) {
        match append(&self.dir.join(file), events) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(file = %file, "archive writes succeed again");
            }
            Ok(()) => {}
            Err(e) => {
                self.counters.write_failures.inc();
                self.counters.write_failed.inc_by(events.len() as u64);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(error = %e, file = %file, "archive write failed; events are not kept for replay until writes succeed again");
                }
            }
        }
    }
}

/// Appends `events` to the file at `path` in one write; on an error the
/// file is cut back to where it was, so it never holds a torn record
/// before whole ones.
fn append(path: &Path, events: &[Vec<u8>]) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let start = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(events.iter().map(|e| e.len() + 4).sum());
    for e in events {
        bytes.extend_from_slice(&(e.len() as u32).to_be_bytes());
        bytes.extend_from_slice(e);
    }
    let written = file.write_all(&bytes);
    if written.is_err()
        && let Err(cut) = file.set_len(start)
    {
        tracing::error!(error = %cut, file = %path.display(), "a failed archive write could not be cut back");
    }
    written
}

/// Deletes files older than `retention`, then the oldest while the archive
/// is over `max_bytes`.
fn sweep(dir: &Path, retention: Duration, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    files.retain(|(modified, _, path)| {
        let old = now.duration_since(*modified).unwrap_or_default() > retention;
        if old {
            let _ = std::fs::remove_file(path);
        }
        !old
    });
    files.sort();
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roomcast-archive-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn chat(seq: u64, media: u64) -> v1::RoomEvent {
        v1::RoomEvent {
            room: "r".into(),
            seq,
            message_id: format!("m{seq}"),
            media_ts_ms: Some(media),
            kind: Some(v1::room_event::Kind::Chat(v1::Chat {
                text: format!("c{seq}"),
                client_msg_id: String::new(),
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_room_reads_back_by_seq_and_media_time_without_recalled_messages_and_its_newest_incarnation() {
        let d = dir("read");
        let archive =
            Archive::open(d.clone(), Duration::from_secs(3600), u64::MAX, ArchiveCounters::default())
                .unwrap();
        let room = RoomId::new("r").unwrap();
        let old = archive.sink(&room, 1);
        old.record(&chat(1, 0));
        let sink = archive.sink(&room, 2);
        for seq in 1..=5 {
            sink.record(&chat(seq, seq * 1_000));
        }
        let recall = v1::RoomEvent {
            seq: 6,
            message_id: "m6".into(),
            kind: Some(v1::room_event::Kind::Recall(v1::RecallNotice { message_id: "m2".into() })),
            ..Default::default()
        };
        sink.record(&recall);
        // The writer is a thread: wait for it.
        let mut page = None;
        for _ in 0..200 {
            page = archive.read(&room, HistoryRange::Seq { from: 1, to: 6 }, 100).await;
            if page.as_ref().is_some_and(|p| p.events.len() == 5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seqs: Vec<u64> = page.unwrap().events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 3, 4, 5, 6], "the newest incarnation, without the recalled message");
        let media =
            archive.read(&room, HistoryRange::Media { from_ms: 3_000, to_ms: 4_000 }, 100).await.unwrap();
        assert_eq!(media.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert!(archive.read(&RoomId::new("other").unwrap(), HistoryRange::Latest, 10).await.is_none());
        // A torn last record is ignored.
        let file = d.join(file_name(&room, 2));
        OpenOptions::new().append(true).open(&file).unwrap().write_all(&[0, 0, 1]).unwrap();
        assert_eq!(archive.read(&room, HistoryRange::Latest, 100).await.unwrap().events.len(), 5);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_sweep_deletes_old_files_then_the_oldest_over_the_size_bound() {
        let d = dir("sweep");
        std::fs::create_dir_all(&d).unwrap();
        for (name, len) in [("a~1.log", 100), ("b~1.log", 100), ("c~1.log", 100)] {
            std::fs::write(d.join(name), vec![0u8; len]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        sweep(&d, Duration::from_secs(3600), 250);
        let mut left: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["b~1.log", "c~1.log"], "the oldest went");
        sweep(&d, Duration::ZERO, u64::MAX);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "everything is older than no retention");
        let _ = std::fs::remove_dir_all(&d);
    }
}
