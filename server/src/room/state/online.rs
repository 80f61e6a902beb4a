//! Online-count pacing: a changed count reaches members as a datagram at
//! most once per `online_push_interval`, latest value wins. A count due
//! while a round is near rides with the round's batches instead of costing
//! packets of its own.

use bytes::Bytes;
use roomcast_protocol::datagram::ServerDatagram;
use tokio::time::Instant;

use super::super::fanout::Slot;
use super::RoomState;

/// The last count sent and the datagram members are given next.
#[derive(Debug, Default)]
pub(super) struct OnlinePacer {
    sent: Option<u64>,
    sent_at: Option<Instant>,
    /// The latest online-count datagram and its version; members are given
    /// it as their slice of a round is served.
    pub(super) frame: Option<Bytes>,
    pub(super) version: u64,
}

impl RoomState {
    /// When the online count should next be pushed on its own, if it
    /// changed. During a round it waits for the next round to carry it.
    pub fn online_due(&self, now: Instant) -> Option<Instant> {
        // A round in progress or one waiting to start carries it instead.
        if self.rounds.round.is_some() || !self.log.is_empty() {
            return None;
        }
        self.online_change_due(now)
    }

    /// When a changed online count is next due, by its own pace.
    pub(super) fn online_change_due(&self, now: Instant) -> Option<Instant> {
        if self.online.sent == Some(self.online_count()) || self.roster.is_empty() {
            return None;
        }
        Some(match self.online.sent_at {
            Some(at) => (at + self.limits.online_push_interval).max(now),
            None => now,
        })
    }

    /// Pushes the online count datagram to every member.
    pub fn push_online(&mut self, now: Instant, now_ms: u64) {
        let frame = self.stage_online(now, now_ms);
        for sub in &mut self.roster.subscribers {
            sub.outbox.set_datagram(Slot::Online, frame.clone());
            sub.online = self.online.version;
        }
    }

    /// Encodes the current online count as the datagram members are given
    /// next, and returns it.
    pub(super) fn stage_online(&mut self, now: Instant, now_ms: u64) -> Bytes {
        let count = self.online_count();
        let datagram =
            ServerDatagram::OnlineCount { room: self.id.to_string(), count, server_time_ms: now_ms }.encode();
        let o = &mut self.online;
        o.frame = Some(datagram.clone());
        o.version += 1;
        o.sent = Some(count);
        o.sent_at = Some(now);
        datagram
    }
}
