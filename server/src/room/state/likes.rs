//! Like-total pacing: a changed total reaches members as a datagram at most
//! once per `online_push_interval`, latest value wins, like the online
//! count. A total due while a round is near rides with the round's batches
//! (each member is handed it with its slice) instead of waking every
//! member's writer on its own.

use std::sync::Arc;

use bytes::Bytes;
use roomcast_protocol::datagram::ServerDatagram;
use tokio::time::Instant;

use super::super::fanout::Slot;
use super::super::likes::LikeCounter;
use super::RoomState;

/// The room's running total, the last total sent, and the datagram members
/// are given next.
#[derive(Debug, Default)]
pub(super) struct LikePacer {
    counter: Arc<LikeCounter>,
    sent: u64,
    sent_at: Option<Instant>,
    /// Likes were added since the last push.
    pending: bool,
    /// The latest like-total datagram and its version; members are given it
    /// as their slice of a round is served.
    pub(super) frame: Option<Bytes>,
    pub(super) version: u64,
    /// In a fleet: this room's local total as the last report sent it,
    /// and the likes the rest of the fleet counted (the fleet's total less
    /// ours).
    reported: u64,
    others: u64,
}

impl RoomState {
    /// The state counting into `counter`, which the room's handles add to.
    pub(in crate::room) fn with_likes(mut self, counter: Arc<LikeCounter>) -> Self {
        self.likes.counter = counter;
        self
    }

    /// Likes were added: a push is due within the pacing interval.
    pub fn likes_changed(&mut self) {
        self.likes.pending = true;
    }

    /// When the like total should next be pushed on its own, if it changed.
    /// During a round it waits for the next round to carry it.
    pub fn likes_due(&self, now: Instant) -> Option<Instant> {
        if self.rounds.round.is_some() || !self.log.is_empty() {
            return None;
        }
        self.likes_change_due(now)
    }

    /// When a changed total is next due, by its own pace.
    pub(super) fn likes_change_due(&self, now: Instant) -> Option<Instant> {
        if !self.likes.pending || self.roster.is_empty() {
            return None;
        }
        Some(match self.likes.sent_at {
            Some(at) => (at + self.limits.online_push_interval).max(now),
            None => now,
        })
    }

    /// Pushes the like total to every member now.
    pub fn push_likes(&mut self, now: Instant, now_ms: u64) {
        let Some(frame) = self.stage_likes(now, now_ms) else { return };
        for sub in &mut self.roster.subscribers {
            sub.outbox.set_datagram(Slot::Likes, frame.clone());
            sub.likes = self.likes.version;
        }
    }

    /// In a fleet: every like counted here, as the next report sends it.
    pub fn likes_to_report(&mut self) -> u64 {
        let total = self.likes.counter.total();
        self.likes.reported = total;
        total
    }

    /// In a fleet: the room's like total across the fleet, as the last
    /// report returned it.
    pub fn set_fleet_likes(&mut self, fleet_total: u64) {
        let others = fleet_total.saturating_sub(self.likes.reported);
        if others != self.likes.others {
            self.likes.others = others;
            self.likes.pending = true;
        }
    }

    /// Reads the total and, if it changed since the last push, encodes it as
    /// the datagram members are given next.
    pub(super) fn stage_likes(&mut self, now: Instant, now_ms: u64) -> Option<Bytes> {
        let l = &mut self.likes;
        l.pending = false;
        let total = l.counter.take() + l.others;
        if total == l.sent {
            return None;
        }
        let datagram =
            ServerDatagram::LikeTotal { room: self.id.to_string(), total, server_time_ms: now_ms }.encode();
        l.frame = Some(datagram.clone());
        l.version += 1;
        l.sent = total;
        l.sent_at = Some(now);
        Some(datagram)
    }

    /// The total as the room's handles have counted it, and in a fleet the
    /// other nodes' likes as of the last report.
    pub fn like_total(&self) -> u64 {
        self.likes.counter.total() + self.likes.others
    }
}
