//! Gifts in the room: combos and sequencing. The room sees a gift only once
//! its sender was charged (see `crate::gifts`), so nothing here refuses one
//! for money; the room only refuses a sender that is not a member.
//!
//! A combo is the same gift from the same user within the combo window of
//! the previous send: it keeps one id (the client's, or the first send's
//! message id) and counts up. The map is bounded: past `MAX_COMBOS` entries,
//! those whose window has passed are forgotten, and if every one is still
//! running the oldest goes.

use std::collections::HashMap;
use std::time::Duration;

use roomcast_protocol::{ErrorCode, v1};
use tokio::time::Instant;
use v1::room_event::Kind;

use super::{ConnId, RoomState};

/// Most running combos a room tracks.
const MAX_COMBOS: usize = 4096;

/// A charged gift, as the session hands it to the room.
#[derive(Debug, Clone)]
pub struct GiftRequest {
    pub gift_id: String,
    pub name: String,
    pub count: u32,
    /// Price × count.
    pub value: u64,
    /// The client's combo id; empty: the room decides.
    pub combo_id: String,
    pub media_ts_ms: Option<u64>,
}

/// What the room made of a gift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftSequenced {
    pub seq: u64,
    pub message_id: String,
    pub combo_id: String,
    pub combo_count: u32,
}

#[derive(Debug)]
struct Combo {
    id: String,
    count: u32,
    last: Instant,
}

/// Running combos by (user, gift id).
#[derive(Debug, Default)]
pub(super) struct Combos {
    running: HashMap<(Box<str>, String), Combo>,
}

impl Combos {
    /// The combo id and count of a send of `gift` by `user` at `now`;
    /// `first_id` names a new combo when the client gave none.
    fn next(
        &mut self,
        user: &str,
        gift: &str,
        client_id: &str,
        first_id: &str,
        window: Duration,
        now: Instant,
    ) -> (String, u32) {
        if self.running.len() >= MAX_COMBOS {
            self.running.retain(|_, c| now.saturating_duration_since(c.last) < window);
            if self.running.len() >= MAX_COMBOS
                && let Some(oldest) = self.running.iter().min_by_key(|(_, c)| c.last).map(|(k, _)| k.clone())
            {
                self.running.remove(&oldest);
            }
        }
        let key = (Box::from(user), gift.to_string());
        let continues = self.running.get(&key).is_some_and(|c| {
            now.saturating_duration_since(c.last) < window && (client_id.is_empty() || client_id == c.id)
        });
        if continues && let Some(c) = self.running.get_mut(&key) {
            c.count = c.count.saturating_add(1);
            c.last = now;
            return (c.id.clone(), c.count);
        }
        let id = if client_id.is_empty() { first_id.to_string() } else { client_id.to_string() };
        self.running.insert(key, Combo { id: id.clone(), count: 1, last: now });
        (id, 1)
    }
}

impl RoomState {
    /// Sequences a charged gift from a member, continuing its combo.
    pub fn gift(
        &mut self,
        conn: ConnId,
        gift: GiftRequest,
        now: Instant,
        now_ms: u64,
    ) -> Result<GiftSequenced, ErrorCode> {
        let identity = self.roster.get(conn).ok_or(ErrorCode::NotJoined)?.identity.clone();
        // A new combo is named after the message id its first send gets.
        let first_id = format!("{:x}-{}", self.log.epoch, self.log.seq + 1);
        let (combo_id, combo_count) = self.combos.next(
            &identity.user_id,
            &gift.gift_id,
            &gift.combo_id,
            &first_id,
            self.limits.combo_window,
            now,
        );
        let kind = Kind::Gift(v1::Gift {
            gift_id: gift.gift_id,
            name: gift.name,
            count: gift.count,
            value: gift.value,
            combo_id: combo_id.clone(),
            combo_count,
        });
        let sender = identity.to_proto();
        let event = self.sequence(kind, Some(sender), gift.media_ts_ms, now, now_ms);
        Ok(GiftSequenced { seq: event.seq, message_id: event.message_id, combo_id, combo_count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_combo_runs_within_its_window_and_restarts_after() {
        let mut combos = Combos::default();
        let w = Duration::from_secs(3);
        let t = Instant::now();
        assert_eq!(combos.next("u", "rose", "", "a", w, t), ("a".into(), 1));
        assert_eq!(combos.next("u", "rose", "", "b", w, t + Duration::from_secs(2)), ("a".into(), 2));
        assert_eq!(combos.next("u", "rose", "", "c", w, t + Duration::from_secs(4)), ("a".into(), 3));
        assert_eq!(combos.next("u", "heart", "", "d", w, t + Duration::from_secs(4)), ("d".into(), 1));
        assert_eq!(combos.next("v", "rose", "", "e", w, t + Duration::from_secs(4)), ("e".into(), 1));
        assert_eq!(combos.next("u", "rose", "", "f", w, t + Duration::from_secs(8)), ("f".into(), 1));
        // A client's new combo id starts a new combo; the same one continues.
        assert_eq!(combos.next("u", "rose", "x", "g", w, t + Duration::from_secs(8)), ("x".into(), 1));
        assert_eq!(combos.next("u", "rose", "x", "h", w, t + Duration::from_secs(9)), ("x".into(), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn combos_stay_bounded() {
        let mut combos = Combos::default();
        let t = Instant::now();
        for i in 0..MAX_COMBOS + 10 {
            combos.next(&format!("u{i}"), "rose", "", "a", Duration::from_secs(3), t);
        }
        assert!(combos.running.len() <= MAX_COMBOS);
    }
}
