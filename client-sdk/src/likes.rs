//! Likes: the app reports each tap (or a handful) with
//! [`crate::Client::like`]; the SDK adds them up per room and sends at most
//! one `LikeReport` datagram a second per room. A report lost on the way
//! loses at most that second of this user's taps, and it is never re-sent.
//!
//! [`LikeTally`] is the sans-IO part (taps in, reports out, the time given);
//! [`report`] is the task that sends what it says is due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use roomcast_protocol::datagram::ClientDatagram;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

/// The least time between two reports for one room.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Most rooms with taps waiting; taps for further rooms are dropped (a
/// client is in a handful of rooms).
const MAX_ROOMS: usize = 64;

/// Taps waiting per room, and when each room was last reported.
#[derive(Debug, Default)]
pub struct LikeTally {
    waiting: HashMap<String, u32>,
    last: HashMap<String, Instant>,
}

impl LikeTally {
    /// Adds `taps` for `room`. Returns whether they were kept.
    pub fn add(&mut self, room: &str, taps: u32) -> bool {
        if taps == 0 {
            return true;
        }
        if let Some(n) = self.waiting.get_mut(room) {
            *n = n.saturating_add(taps);
            return true;
        }
        if self.waiting.len() >= MAX_ROOMS {
            return false;
        }
        self.waiting.insert(room.to_owned(), taps);
        true
    }

    /// When the next report is due, if any taps wait.
    pub fn due(&self) -> Option<Instant> {
        let now = Instant::now();
        self.waiting.keys().map(|room| self.last.get(room).map_or(now, |at| *at + REPORT_INTERVAL)).min()
    }

    /// The reports due at `now`: each room with taps waiting that was not
    /// reported within the last [`REPORT_INTERVAL`].
    pub fn take_due(&mut self, now: Instant) -> Vec<(String, u32)> {
        let due: Vec<String> = self
            .waiting
            .keys()
            .filter(|room| self.last.get(*room).is_none_or(|at| now >= *at + REPORT_INTERVAL))
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for room in due {
            if let Some(taps) = self.waiting.remove(&room) {
                self.last.insert(room.clone(), now);
                out.push((room, taps));
            }
        }
        // Rooms quiet for a while need no pacing memory.
        self.last.retain(|_, at| now.saturating_duration_since(*at) < REPORT_INTERVAL * 2);
        out
    }
}

/// The tally shared by the client handles and the reporter task.
#[derive(Debug, Default)]
pub(crate) struct Likes {
    tally: Mutex<LikeTally>,
    added: Notify,
}

impl Likes {
    pub(crate) fn add(&self, room: &str, taps: u32) -> bool {
        let kept = self.tally.lock().unwrap_or_else(PoisonError::into_inner).add(room, taps);
        self.added.notify_one();
        kept
    }
}

/// Sends the reports the tally says are due on the session's current
/// connection, until the session is gone.
pub(crate) async fn report(likes: Arc<Likes>, shared: Weak<crate::driver::Shared>) {
    let Some(mut ended) = shared.upgrade().map(|s| s.ended.subscribe()) else { return };
    loop {
        let due = likes.tally.lock().unwrap_or_else(PoisonError::into_inner).due();
        let wake = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = ended.wait_for(|ended| *ended) => return,
            () = wake => {}
            () = likes.added.notified() => continue,
        }
        let Some(shared) = shared.upgrade() else { return };
        let reports = likes.tally.lock().unwrap_or_else(PoisonError::into_inner).take_due(Instant::now());
        let conn = shared.conn();
        for (room, taps) in reports {
            if let Err(e) = conn.send_datagram(ClientDatagram::LikeReport { room, taps }.encode()) {
                debug!(error = %e, "like report not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn taps_are_summed_and_reported_at_most_once_a_second_per_room() {
        let mut t = LikeTally::default();
        let start = Instant::now();
        assert_eq!(t.due(), None);
        t.add("a", 3);
        t.add("a", 4);
        t.add("b", 1);
        assert_eq!(t.due(), Some(start), "the first taps go at once");
        let mut first = t.take_due(start);
        first.sort();
        assert_eq!(first, [("a".to_owned(), 7), ("b".to_owned(), 1)]);
        t.add("a", 2);
        assert_eq!(t.due(), Some(start + REPORT_INTERVAL));
        assert!(t.take_due(start + Duration::from_millis(500)).is_empty(), "not twice within a second");
        t.add("a", 5);
        assert_eq!(t.take_due(start + REPORT_INTERVAL), [("a".to_owned(), 7)]);
        assert_eq!(t.due(), None);
    }

    #[test]
    fn counts_saturate_and_the_rooms_waiting_are_bounded() {
        let mut t = LikeTally::default();
        t.add("a", u32::MAX);
        t.add("a", 10);
        assert_eq!(t.waiting["a"], u32::MAX);
        for i in 1..MAX_ROOMS {
            assert!(t.add(&format!("r{i}"), 1));
        }
        assert!(!t.add("one-too-many", 1));
        assert!(t.add("a", 1), "a room already waiting still adds up");
    }
}
