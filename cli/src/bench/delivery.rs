//! What subscribers receive, whichever server they read from: send times
//! stamped into payloads, each subscriber's count of what it saw, and the
//! signal that ends a run's readers.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use roomcast_client::v1;
use tokio::sync::watch;

/// Microseconds since the process started: publishers stamp it into the
/// payload, receivers in the same process subtract it from their clock.
pub(crate) fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A payload of `size` bytes that starts with the send time.
pub(crate) fn stamped(size: usize) -> String {
    let mut s = format!("{:>15}|", now_us());
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The send time a payload made by [`stamped`] starts with.
pub(crate) fn stamp_of(text: &str) -> Option<u64> {
    text.get(..15)?.trim().parse().ok()
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) gaps: u64,
    pub(crate) lags: u64,
    pub(crate) disconnected: bool,
    /// Sequence numbers seen, as a bit set from `base`.
    pub(crate) base: u64,
    seen: Vec<u64>,
    /// Publish-to-receive latencies of stamped messages, µs.
    pub(crate) latencies: Vec<u64>,
    /// The same messages from the node's sequencing (`server_time_ms`, wall
    /// clock, so millisecond resolution) to receipt, µs: the fan-out's share.
    pub(crate) fanout_latencies: Vec<u64>,
    /// Only host messages count (chat-storm watchers).
    pub(crate) host_only_latency: bool,
    /// Latencies of messages sent at or after the readers' split (see
    /// [`Readers::split_at`]); `latencies` keeps those sent before.
    pub(crate) latencies_after_split: Vec<u64>,
    /// The highest like total the room pushed to this subscriber.
    pub(crate) like_total: u64,
    /// When (see [`now_us`]) a quiz result arrived.
    pub(crate) quiz_result_at: Option<u64>,
    /// The highest sequence number seen.
    last: u64,
}

impl Received {
    /// A subscriber that joined after sequence number `base`.
    pub(crate) fn after(base: u64, host_only_latency: bool) -> Self {
        Self { base, host_only_latency, last: base, ..Self::default() }
    }

    /// Counts a sequenced event (`seq` >= 1) that arrived now. `split` is
    /// the readers' split (see [`Readers::split_at`]).
    pub(crate) fn take(&mut self, m: &v1::RoomEvent, split: u64) {
        use v1::room_event::Kind;
        let now = now_us();
        if !self.mark(m.seq) {
            self.duplicates += 1;
            return;
        }
        if m.seq < self.last {
            self.out_of_order += 1;
        }
        self.last = self.last.max(m.seq);
        self.delivered += 1;
        match m.kind {
            // A quiz question's delivery counts from the split (the moment
            // the run started it); a result's arrival is kept.
            Some(Kind::QuizQuestion(_)) => {
                if split != u64::MAX {
                    self.latencies_after_split.push(now.saturating_sub(split));
                }
                return;
            }
            Some(Kind::QuizResult(_)) => {
                self.quiz_result_at = Some(now);
                return;
            }
            _ => {}
        }
        let counts = !self.host_only_latency || matches!(m.kind, Some(Kind::HostMessage(_)));
        // A gift carries its send time in its media timestamp.
        let stamp = match &m.kind {
            Some(Kind::Gift(_)) => m.media_ts_ms,
            Some(Kind::Chat(c)) => stamp_of(&c.text),
            Some(Kind::HostMessage(h)) => stamp_of(&h.text),
            Some(Kind::SystemNotice(n)) => stamp_of(&n.text),
            _ => None,
        };
        if counts && let Some(sent) = stamp {
            if sent >= split {
                self.latencies_after_split.push(now.saturating_sub(sent));
            } else {
                self.latencies.push(now.saturating_sub(sent));
            }
            let wall_ms = roomcast_protocol::unix_ms(std::time::SystemTime::now());
            self.fanout_latencies.push(wall_ms.saturating_sub(m.server_time_ms) * 1_000);
        }
    }

    /// Records `seq` as seen; false if it was seen before (or is not after `base`).
    pub(crate) fn mark(&mut self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(self.base + 1) else { return false };
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        let fresh = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        fresh
    }

    pub(crate) fn has(&self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(self.base + 1) else { return false };
        self.seen.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What the readers of a run share: the signal that ends the run, and the
/// count of readers whose connection dropped before it.
pub(crate) struct Readers {
    stop: watch::Sender<bool>,
    dropped: Arc<AtomicU64>,
    split: Arc<AtomicU64>,
}

/// One reader's end of [`Readers`].
pub(crate) struct ReaderEnd {
    /// Turns true when the run is over.
    pub(crate) stop: watch::Receiver<bool>,
    /// Add one when this reader's connection drops before the stop.
    pub(crate) dropped: Arc<AtomicU64>,
    /// Send stamps from this one on count as after the split.
    pub(crate) split: Arc<AtomicU64>,
}

impl Readers {
    pub(crate) fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            dropped: Arc::new(AtomicU64::new(0)),
            split: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// The ends one more reader holds.
    pub(crate) fn end(&self) -> ReaderEnd {
        ReaderEnd { stop: self.stop.subscribe(), dropped: self.dropped.clone(), split: self.split.clone() }
    }

    /// Readers whose connection dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages sent from `stamp` (see [`now_us`]) on are counted apart:
    /// their latencies go to `Received::latencies_after_split`.
    pub(crate) fn split_at(&self, stamp: u64) {
        self.split.store(stamp, Ordering::Relaxed);
    }

    /// Tells every reader the run is over.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }
}
