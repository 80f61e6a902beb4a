//! Like-total pacing: a changed total reaches members as a datagram at most
//! once per `online_push_interval`, latest value wins, like the online count.

use roomcast_protocol::datagram::ServerDatagram;
use tokio::time::Instant;

use super::RoomState;

/// The last total sent, and whether a newer one waits.
#[derive(Debug, Default)]
pub(super) struct LikePacer {
    sent: u64,
    sent_at: Option<Instant>,
    /// Likes were added since the last push.
    pending: bool,
}

impl RoomState {
    /// Likes were added: a push is due within the pacing interval.
    pub fn likes_changed(&mut self) {
        self.likes.pending = true;
    }

    /// When the like total should next be pushed, if it changed.
    pub fn likes_due(&self, now: Instant) -> Option<Instant> {
        if !self.likes.pending || self.roster.is_empty() {
            return None;
        }
        Some(match self.likes.sent_at {
            Some(at) => (at + self.limits.online_push_interval).max(now),
            None => now,
        })
    }

    /// Pushes `total` to every member as a datagram, if it changed since
    /// the last push.
    pub fn push_likes(&mut self, total: u64, now: Instant, now_ms: u64) {
        self.likes.pending = false;
        if total == self.likes.sent {
            return;
        }
        let datagram =
            ServerDatagram::LikeTotal { room: self.id.to_string(), total, server_time_ms: now_ms }.encode();
        for sub in &self.roster.subscribers {
            sub.outbox.set_likes(datagram.clone());
        }
        self.likes.sent = total;
        self.likes.sent_at = Some(now);
    }
}
