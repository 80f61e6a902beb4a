//! The room's gift ranking for the current live: the value each user gave.
//! The top goes to members as an ephemeral Normal event when it changes, at
//! most once every `INTERVAL`; the platform reads the whole ranking. One
//! entry per user who gave a gift in this incarnation of the room.
//!
//! A gift counts when it enters the room's log, numbered: on a node alone
//! when the room sequences it, in a fleet when it comes back from Redis,
//! whichever node sent it, so every node ranks the same gifts. Redis keeps
//! the fleet's totals with the numbering (`sequence.lua`, from each
//! outgoing event's [`GiftTally`]), and a room that starts following
//! mid-live starts from them ([`RoomState::seed_ranking`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::v1;
use tokio::time::Instant;
use v1::room_event::Kind;

use super::RoomState;

/// Entries in the broadcast top.
pub(super) const TOP: usize = 10;

/// Least time between two broadcast rankings.
pub(super) const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(super) struct Ranking {
    by_user: HashMap<Arc<str>, (v1::User, u64)>,
    /// Gifts arrived since the last broadcast.
    dirty: bool,
    sent_at: Option<Instant>,
    /// The last top broadcast, to send nothing when it did not change.
    last_top: Vec<v1::RankEntry>,
}

/// What one gift adds to its sender's total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GiftTally {
    pub(crate) user_id: String,
    pub(crate) name: String,
    pub(crate) value: u64,
}

impl GiftTally {
    /// What `event` adds to the ranking, if it is a gift.
    pub(super) fn of(event: &v1::RoomEvent) -> Option<Self> {
        let (Some(Kind::Gift(g)), Some(sender)) = (&event.kind, &event.sender) else { return None };
        Some(Self { user_id: sender.user_id.clone(), name: sender.display_name.clone(), value: g.value })
    }
}

impl Ranking {
    pub(super) fn add(&mut self, user: v1::User, value: u64) {
        let entry = self.by_user.entry(Arc::from(user.user_id.as_str())).or_insert_with(|| (user, 0));
        entry.1 = entry.1.saturating_add(value);
        self.dirty = true;
    }

    /// The `n` highest, highest first, ties by user id.
    pub(super) fn top(&self, n: usize) -> Vec<v1::RankEntry> {
        let mut all: Vec<&(v1::User, u64)> = self.by_user.values().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.user_id.cmp(&b.0.user_id)));
        all.into_iter()
            .take(n)
            .map(|(user, value)| v1::RankEntry { user: Some(user.clone()), value: *value })
            .collect()
    }
}

impl RoomState {
    /// Counts `event` in the ranking if it is a gift (see the module docs).
    pub(super) fn rank(&mut self, event: &v1::RoomEvent) {
        if let (Some(Kind::Gift(g)), Some(sender)) = (&event.kind, &event.sender) {
            self.ranking.add(sender.clone(), g.value);
        }
    }

    /// Starts the ranking from the fleet's totals (a room that starts
    /// following mid-live); gifts numbered after them count as they arrive.
    pub fn seed_ranking(&mut self, totals: Vec<v1::RankEntry>) {
        self.ranking = Ranking::default();
        for e in totals {
            if let Some(user) = e.user {
                self.ranking.add(user, e.value);
            }
        }
    }

    /// When the ranking should next go out, if gifts changed it.
    pub fn ranking_due(&self, now: Instant) -> Option<Instant> {
        let r = &self.ranking;
        r.dirty.then(|| r.sent_at.map_or(now, |at| (at + INTERVAL).max(now)))
    }

    /// Sends the top to every member, if it changed since the last one.
    pub fn push_ranking(&mut self, now: Instant, now_ms: u64) {
        let top = self.ranking.top(TOP);
        self.ranking.dirty = false;
        if top == self.ranking.last_top {
            return;
        }
        self.ranking.sent_at = Some(now);
        self.ranking.last_top = top.clone();
        let subscribed = !self.roster.subscribers.is_empty();
        self.log.ephemeral(Kind::Ranking(v1::GiftRanking { entries: top }), None, subscribed, now_ms, None);
    }

    /// The whole ranking, highest first.
    pub fn ranking(&self) -> Vec<v1::RankEntry> {
        self.ranking.top(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> v1::User {
        v1::User { user_id: id.into(), ..Default::default() }
    }

    fn ids(entries: &[v1::RankEntry]) -> Vec<(String, u64)> {
        entries
            .iter()
            .map(|e| (e.user.as_ref().map(|u| u.user_id.clone()).unwrap_or_default(), e.value))
            .collect()
    }

    #[test]
    fn the_ranking_sums_each_users_gifts_and_orders_by_value_then_id() {
        let mut r = Ranking::default();
        for (u, v) in [("b", 10), ("a", 5), ("c", 500), ("a", 5), ("d", 10)] {
            r.add(user(u), v);
        }
        assert_eq!(ids(&r.top(3)), [("c".into(), 500), ("a".into(), 10), ("b".into(), 10)]);
        assert_eq!(r.top(usize::MAX).len(), 4);
        let mut many = Ranking::default();
        for i in 0..30u64 {
            many.add(user(&format!("u{i:02}")), i);
        }
        let top = ids(&many.top(TOP));
        assert_eq!(top.len(), TOP);
        assert_eq!(top[0], ("u29".into(), 29));
        assert_eq!(top[9], ("u20".into(), 20));
    }
}
