//! A room's kept history: the last sequenced events, bounded by count and age.
//!
//! The room task appends; readers (`FetchHistory`) take a short lock and copy
//! out what they asked for, without queueing behind the room's live traffic.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;
use roomcast_protocol::v1;
use tokio::time::Instant;

/// Most events one `FetchHistory` answer carries.
pub(super) const MAX_FETCH: usize = 500;

/// Most bytes of events one answer (`Joined` or `History`) carries, so that
/// with its other fields it stays within `MAX_SERVER_FRAME_BYTES`.
pub(super) const ANSWER_BYTES: usize = roomcast_protocol::MAX_SERVER_FRAME_BYTES as usize - 16 * 1024;

/// What an event adds to an answer's encoded size (the repeated field's tag
/// and length prefix included).
fn answer_len(e: &v1::RoomEvent) -> usize {
    let len = e.encoded_len();
    len + prost::length_delimiter_len(len) + 1
}

/// Keeps the oldest events that fit in `budget` bytes. Returns the sequence
/// number of the first event left out, if any was.
pub(super) fn fit_oldest(events: &mut Vec<v1::RoomEvent>, budget: usize) -> Option<u64> {
    let mut used = 0;
    let keep = events
        .iter()
        .position(|e| {
            used += answer_len(e);
            used > budget
        })
        .unwrap_or(events.len());
    let cut = events.get(keep).map(|e| e.seq);
    events.truncate(keep);
    cut
}

/// Keeps the newest events that fit in `budget` bytes.
pub(super) fn fit_newest(events: &mut Vec<v1::RoomEvent>, budget: usize) {
    let mut used = 0;
    let keep = events
        .iter()
        .rev()
        .position(|e| {
            used += answer_len(e);
            used > budget
        })
        .unwrap_or(events.len());
    events.drain(..events.len() - keep);
}

/// A page of `events` (kept history, oldest first) for `range`, at most
/// `limit` events and what fits in an answer: as a live room's history
/// answers it, for history read back from the archive.
pub(super) fn page(events: &[v1::RoomEvent], range: roomcast_protocol::HistoryRange, limit: usize) -> Page {
    use roomcast_protocol::HistoryRange;
    let limit = limit.clamp(1, MAX_FETCH);
    let oldest_seq = events.first().map_or(0, |e| e.seq);
    let keep: Box<dyn Fn(&v1::RoomEvent) -> bool> = match range {
        HistoryRange::Latest => {
            let skip = events.len().saturating_sub(limit);
            let mut out = events[skip..].to_vec();
            let before = out.len();
            fit_newest(&mut out, ANSWER_BYTES);
            return Page { truncated: skip > 0 || out.len() < before, events: out, oldest_seq };
        }
        HistoryRange::Seq { from, to } => Box::new(move |e| e.seq >= from && e.seq <= to),
        HistoryRange::Media { from_ms, to_ms } => {
            Box::new(move |e| e.media_ts_ms.is_some_and(|t| t >= from_ms && t <= to_ms))
        }
    };
    let mut out = Vec::new();
    let mut truncated = false;
    let mut bytes = 0;
    for e in events.iter().filter(|e| keep(e)) {
        bytes += answer_len(e);
        if out.len() == limit || bytes > ANSWER_BYTES {
            truncated = true;
            break;
        }
        out.push(e.clone());
    }
    Page { events: out, oldest_seq, truncated }
}

#[derive(Debug)]
pub struct HistoryLog {
    inner: Mutex<Inner>,
    max_len: usize,
    max_age: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<(Instant, v1::RoomEvent)>,
    /// Where every event pushed is also kept for replay after the live.
    archive: Option<super::archive::ArchiveSink>,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<v1::RoomEvent>,
    pub oldest_seq: u64,
    pub truncated: bool,
}

impl HistoryLog {
    pub fn new(max_len: usize, max_age: Duration) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::default(), max_len, max_age })
    }

    /// A history that also hands every event pushed to `archive`.
    pub(super) fn archived(
        max_len: usize,
        max_age: Duration,
        archive: super::archive::ArchiveSink,
    ) -> Arc<Self> {
        let inner = Inner { events: VecDeque::new(), archive: Some(archive) };
        Arc::new(Self { inner: Mutex::new(inner), max_len, max_age })
    }

    /// History for a new incarnation of the room (the fleet renumbered
    /// it): what was kept is dropped, and what is pushed from now on is
    /// archived in `archive`, the new incarnation's file.
    pub(super) fn renew(&self, archive: Option<super::archive::ArchiveSink>) {
        let mut inner = self.lock();
        inner.events.clear();
        inner.archive = archive;
    }

    // Nothing panics while holding the lock, so poison carries no meaning.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn trim(&self, inner: &mut Inner, now: Instant) {
        while inner.events.len() > self.max_len {
            inner.events.pop_front();
        }
        while inner.events.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.max_age) {
            inner.events.pop_front();
        }
    }

    pub fn push(&self, now: Instant, event: v1::RoomEvent) {
        let mut inner = self.lock();
        if let Some(archive) = &inner.archive {
            archive.record(&event);
        }
        inner.events.push_back((now, event));
        self.trim(&mut inner, now);
    }

    /// Lowest kept sequence number, if any.
    pub fn oldest_seq(&self, now: Instant) -> Option<u64> {
        let mut inner = self.lock();
        self.trim(&mut inner, now);
        inner.events.front().map(|(_, e)| e.seq)
    }

    /// Events with `seq > after` if every one of them is still kept
    /// (`Some`), or `None` if some were already dropped.
    pub fn after(&self, now: Instant, after: u64, current_seq: u64) -> Option<Vec<v1::RoomEvent>> {
        let mut inner = self.lock();
        self.trim(&mut inner, now);
        if after > current_seq {
            return None;
        }
        if after == current_seq {
            return Some(Vec::new());
        }
        // Recalled events leave holes in the kept seqs, so compare with the
        // oldest kept seq rather than counting.
        let oldest = inner.events.front().map(|(_, e)| e.seq)?;
        if after + 1 < oldest {
            return None;
        }
        Some(inner.events.iter().filter(|(_, e)| e.seq > after).map(|(_, e)| e.clone()).collect())
    }

    /// The most recent `n` events.
    pub fn recent(&self, now: Instant, n: usize) -> Vec<v1::RoomEvent> {
        let mut inner = self.lock();
        self.trim(&mut inner, now);
        let skip = inner.events.len().saturating_sub(n);
        inner.events.iter().skip(skip).map(|(_, e)| e.clone()).collect()
    }

    /// Events in a sequence range, oldest first, at most `limit`.
    pub fn by_seq(&self, now: Instant, from: u64, to: u64, limit: usize) -> Page {
        self.select(now, limit, |e| e.seq >= from && e.seq <= to)
    }

    /// The newest `limit` events (at most `MAX_FETCH`, and what fits in an
    /// answer), oldest first.
    pub fn latest(&self, now: Instant, limit: usize) -> Page {
        let limit = limit.clamp(1, MAX_FETCH);
        let mut inner = self.lock();
        self.trim(&mut inner, now);
        let oldest_seq = inner.events.front().map_or(0, |(_, e)| e.seq);
        let skip = inner.events.len().saturating_sub(limit);
        let mut events: Vec<_> = inner.events.iter().skip(skip).map(|(_, e)| e.clone()).collect();
        drop(inner);
        let before = events.len();
        fit_newest(&mut events, ANSWER_BYTES);
        Page { truncated: skip > 0 || events.len() < before, events, oldest_seq }
    }

    /// Events whose media timestamp is in `from_ms..=to_ms`, oldest first.
    pub fn by_media_time(&self, now: Instant, from_ms: u64, to_ms: u64, limit: usize) -> Page {
        self.select(now, limit, |e| e.media_ts_ms.is_some_and(|t| t >= from_ms && t <= to_ms))
    }

    fn select(&self, now: Instant, limit: usize, keep: impl Fn(&v1::RoomEvent) -> bool) -> Page {
        let limit = limit.clamp(1, MAX_FETCH);
        let mut inner = self.lock();
        self.trim(&mut inner, now);
        let oldest_seq = inner.events.front().map_or(0, |(_, e)| e.seq);
        let mut events = Vec::new();
        let mut truncated = false;
        let mut bytes = 0;
        for (_, e) in inner.events.iter().filter(|(_, e)| keep(e)) {
            bytes += answer_len(e);
            if events.len() == limit || bytes > ANSWER_BYTES {
                truncated = true;
                break;
            }
            events.push(e.clone());
        }
        Page { events, oldest_seq, truncated }
    }

    /// The kept event with this message id.
    pub fn find(&self, message_id: &str) -> Option<v1::RoomEvent> {
        self.lock().events.iter().find(|(_, e)| e.message_id == message_id).map(|(_, e)| e.clone())
    }

    /// Removes the event with this message id; true if it was kept.
    pub fn remove(&self, message_id: &str) -> bool {
        let mut inner = self.lock();
        match inner.events.iter().position(|(_, e)| e.message_id == message_id) {
            Some(pos) => inner.events.remove(pos).is_some(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, media: Option<u64>) -> v1::RoomEvent {
        v1::RoomEvent { seq, message_id: format!("m{seq}"), media_ts_ms: media, ..Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_count_and_age() {
        let h = HistoryLog::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for s in 1..=5 {
            h.push(t0, ev(s, None));
        }
        assert_eq!(h.recent(t0, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        let later = t0 + Duration::from_secs(11);
        h.push(later, ev(6, None));
        assert_eq!(h.recent(later, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), [6], "old ones aged out");
        assert_eq!(h.oldest_seq(later), Some(6));
    }

    #[tokio::test(start_paused = true)]
    async fn after_tells_complete_from_incomplete() {
        let h = HistoryLog::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for s in 1..=5 {
            h.push(t, ev(s, None));
        }
        assert_eq!(h.after(t, 2, 5).unwrap().len(), 3);
        assert_eq!(h.after(t, 4, 5).unwrap().len(), 1);
        assert_eq!(h.after(t, 5, 5), Some(vec![]));
        assert_eq!(h.after(t, 1, 5), None, "seq 2 is gone");
        assert_eq!(h.after(t, 9, 5), None, "a position past the end is not ours");
        // A recalled event leaves a hole that is not loss.
        assert!(h.remove("m4"));
        assert_eq!(h.after(t, 3, 5).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    }

    #[tokio::test(start_paused = true)]
    async fn ranges_by_seq_and_media_time_with_limits() {
        let h = HistoryLog::new(100, Duration::from_secs(60));
        let t = Instant::now();
        for s in 1..=10 {
            h.push(t, ev(s, if s % 2 == 0 { Some(s * 1000) } else { None }));
        }
        let p = h.by_seq(t, 3, 6, 100);
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert!(!p.truncated);
        assert_eq!(p.oldest_seq, 1);
        let p = h.by_seq(t, 1, 10, 3);
        assert_eq!(p.events.len(), 3);
        assert!(p.truncated);
        let p = h.by_media_time(t, 3000, 8000, 100);
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 6, 8]);
        assert_eq!(h.find("m7").map(|e| e.seq), Some(7));
        assert!(!h.remove("nope"));
        let p = h.latest(t, 3);
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 9, 10]);
        assert!(p.truncated, "older events are left");
        assert!(!h.latest(t, 100).truncated);
    }

    fn big(seq: u64) -> v1::RoomEvent {
        let text = "x".repeat(1000);
        v1::RoomEvent {
            seq,
            kind: Some(v1::room_event::Kind::Chat(v1::Chat { text, client_msg_id: String::new() })),
            ..ev(seq, None)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_bounded_by_bytes_and_fit_keeps_the_right_end() {
        let h = HistoryLog::new(1000, Duration::from_secs(60));
        let t = Instant::now();
        for s in 1..=300 {
            h.push(t, big(s));
        }
        let bytes = |events: &[v1::RoomEvent]| events.iter().map(answer_len).sum::<usize>();
        let p = h.by_seq(t, 1, 300, 500);
        assert!(p.truncated && bytes(&p.events) <= ANSWER_BYTES, "{} events", p.events.len());
        assert_eq!(p.events.first().map(|e| e.seq), Some(1));
        let p = h.latest(t, 500);
        assert!(p.truncated && bytes(&p.events) <= ANSWER_BYTES);
        assert_eq!(p.events.last().map(|e| e.seq), Some(300), "the newest page ends at the newest event");

        let mut all: Vec<_> = (1..=300).map(big).collect();
        let cut = fit_oldest(&mut all, ANSWER_BYTES);
        let kept = all.len() as u64;
        assert!(kept < 300 && bytes(&all) <= ANSWER_BYTES);
        assert_eq!(cut, Some(kept + 1), "the first event left out follows the last kept");
        let mut few: Vec<_> = (1..=3).map(big).collect();
        assert_eq!(fit_oldest(&mut few, ANSWER_BYTES), None);
        assert_eq!(few.len(), 3);
        let mut all: Vec<_> = (1..=300).map(big).collect();
        fit_newest(&mut all, ANSWER_BYTES);
        assert_eq!(all.last().map(|e| e.seq), Some(300));
        assert!(bytes(&all) <= ANSWER_BYTES);
    }
}
