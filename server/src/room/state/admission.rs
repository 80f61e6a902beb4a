//! Chat admission: what becomes of a chat message before it is sequenced,
//! so that sampling never leaves a hole in the room's sequence.
//!
//! A retry of a message already answered gets the first answer again
//! (`Dedup`). A viewer faster than its own rate is refused; viewer chat
//! beyond the room's visible-chat budget is sampled out (acknowledged, not
//! broadcast). Hosts and admins pass both.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use roomcast_protocol::v1;
use tokio::time::Instant;

use super::RoomLimits;
use crate::auth::{Identity, Role};

/// A token bucket; `rate` 0 means unlimited.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    pub(super) fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        Self { rate, burst, tokens: burst, last: None }
    }

    /// Refills at `rate` from now on (0: no limit), its burst a second of it.
    fn set_rate(&mut self, rate: f64) {
        self.rate = rate;
        self.burst = rate.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Remembered acknowledgements, so a retried `SendChat` is answered with the
/// first ack instead of being broadcast twice. Bounded: the oldest entries are
/// forgotten first.
#[derive(Debug, Default)]
struct Dedup {
    acks: HashMap<(Arc<str>, String), v1::ChatAck>,
    order: VecDeque<(Arc<str>, String)>,
}

const DEDUP_CAPACITY: usize = 4096;

impl Dedup {
    fn get(&self, user: &Arc<str>, id: &str) -> Option<&v1::ChatAck> {
        if id.is_empty() {
            return None;
        }
        self.acks.get(&(user.clone(), id.to_string()))
    }

    fn insert(&mut self, user: Arc<str>, id: String, ack: v1::ChatAck) {
        if id.is_empty() {
            return;
        }
        if self.order.len() >= DEDUP_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.acks.remove(&old);
        }
        self.order.push_back((user.clone(), id.clone()));
        self.acks.insert((user, id), ack);
    }
}

/// What admission decided for one chat message.
#[derive(Debug)]
pub(super) enum Admit {
    /// A retry: answer with the first acknowledgement.
    Repeat(v1::ChatAck),
    /// The sender is over its own rate.
    RateLimited,
    /// Over the room's budget: acknowledge without broadcasting.
    Sampled,
    /// Sequence it.
    Sequence,
}

/// The room's chat budget, per-user rates, the "entered" budget and the
/// remembered answers.
#[derive(Debug)]
pub(super) struct Admission {
    chat_budget: Bucket,
    entered_budget: Bucket,
    /// The room's budgets (per second) across the fleet; a node in a fleet
    /// takes its share of them (see [`Admission::share_budgets`]).
    room_budgets: (f64, f64),
    entered_on: bool,
    user_rate: f64,
    user_rates: HashMap<Arc<str>, Bucket>,
    dedup: Dedup,
}

impl Admission {
    pub(super) fn new(limits: &RoomLimits) -> Self {
        Self {
            chat_budget: Bucket::new(f64::from(limits.chat_budget_per_sec)),
            entered_budget: Bucket::new(f64::from(limits.entered_per_sec)),
            room_budgets: (f64::from(limits.chat_budget_per_sec), f64::from(limits.entered_per_sec)),
            entered_on: limits.entered_per_sec > 0,
            user_rate: limits.user_chat_per_sec,
            user_rates: HashMap::new(),
            dedup: Dedup::default(),
        }
    }

    /// Decides what becomes of a chat message from `who`.
    pub(super) fn chat(&mut self, who: &Identity, client_msg_id: &str, now: Instant) -> Admit {
        if let Some(ack) = self.dedup.get(&who.user_id, client_msg_id) {
            return Admit::Repeat(ack.clone());
        }
        if who.role != Role::Viewer {
            return Admit::Sequence;
        }
        let rate = self.user_rate;
        if !self.user_rates.entry(who.user_id.clone()).or_insert_with(|| Bucket::new(rate)).take(now) {
            return Admit::RateLimited;
        }
        if !self.chat_budget.take(now) {
            return Admit::Sampled;
        }
        Admit::Sequence
    }

    /// Remembers the answer to a message, for its retries.
    pub(super) fn answered(&mut self, user: Arc<str>, client_msg_id: String, ack: v1::ChatAck) {
        self.dedup.insert(user, client_msg_id, ack);
    }

    /// In a fleet: the number Redis gave a message whose answer is
    /// remembered without one yet, so a retry is answered with it.
    pub(super) fn numbered(&mut self, user: &str, client_msg_id: &str, seq: u64, message_id: &str) {
        if client_msg_id.is_empty() {
            return;
        }
        if let Some(ack) = self.dedup.acks.get_mut(&(Arc::from(user), client_msg_id.to_string()))
            && ack.seq == 0
            && ack.broadcast
        {
            ack.seq = seq;
            ack.message_id = message_id.to_string();
        }
    }

    /// In a fleet: this node admits `share` (0..=1) of the room's chat and
    /// "entered" budgets, so that the nodes together admit the room's
    /// budget, not one budget each.
    pub(super) fn share_budgets(&mut self, share: f64) {
        let share = share.clamp(0.0, 1.0);
        let (chat, entered) = self.room_budgets;
        // A budget of 0 means none; a share keeps it none.
        if chat > 0.0 {
            self.chat_budget.set_rate((chat * share).max(f64::MIN_POSITIVE));
        }
        if entered > 0.0 {
            self.entered_budget.set_rate((entered * share).max(f64::MIN_POSITIVE));
        }
    }

    /// Whether a newcomer's "entered" notice fits the room's budget.
    pub(super) fn entered(&mut self, now: Instant) -> bool {
        self.entered_on && self.entered_budget.take(now)
    }

    /// Forgets the rates of users who left, once they outnumber the members.
    pub(super) fn forget_rates(&mut self, members: usize, users: impl FnOnce() -> HashSet<Arc<str>>) {
        if self.user_rates.len() > 2 * members + 16 {
            let users = users();
            self.user_rates.retain(|u, _| users.contains(u));
        }
    }
}
