//! One room as a plain state machine: it never awaits and never touches a
//! socket. The room task feeds it commands and the time; it answers and
//! pushes encoded frames into members' outboxes.
//!
//! By concern:
//! * `roster`: members, their fan-out slots, presence and the viewer page;
//! * `admission`: what becomes of chat before it is sequenced (retries,
//!   per-user rate, the room's visible-chat budget);
//! * `log`: sequencing (the one place a sequence number is assigned) and the
//!   log of encoded events waiting for members;
//! * `rounds`: how the log reaches members, paced over the batching window;
//! * `online`: online-count pacing;
//! * `likes`: like-total pacing;
//! * `quiz`: quiz questions and results, the open question and its nudges;
//! * `gifts`: charged gifts, sequenced with their running combos;
//! * `platform`: commands from the platform (publish, recall, remove a
//!   user, close, figures).
//!
//! This file holds the commands, each of which uses the parts above. A new
//! kind of event gets its class and priority in `super::kinds` and a command
//! here that sequences it (`EventLog::sequence`) or sends it as ephemeral
//! (`EventLog::ephemeral`); rounds, outboxes and history need no change.
//!
//! **Invariant:** each member has a cursor into the log and is sent
//! everything after it, in order, so a member sees sequence numbers in order
//! and without holes. If its outbox overflows, it is told so explicitly.

mod admission;
mod gifts;
mod likes;
mod log;
mod online;
mod platform;
mod quiz;
mod ranking;
mod roster;
mod rounds;

use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::{ErrorCode, RoomId, v1};
use tokio::time::Instant;
use v1::room_event::Kind;

use super::fanout::Outbox;
use super::history::{self, HistoryLog};
use super::kinds;
use crate::auth::{Identity, Role};
use admission::{Admission, Admit};
use likes::LikePacer;
use log::EventLog;
use online::OnlinePacer;
pub use quiz::QuizEvent;
use roster::{Roster, Subscriber};
use rounds::Rounds;

pub use gifts::{GiftRequest, GiftSequenced};
pub(crate) use log::Outgoing;
pub use platform::{AdminKind, AdminMessage, RoomInfo};
pub use rounds::FlushStats;

/// The names of event kinds, in the order of `RoomState::take_event_counts`.
pub const EVENT_KINDS: [&str; super::kinds::KINDS] = super::kinds::NAMES;

/// Identifies a connection on this node.
pub type ConnId = u64;

/// Room tunables, taken from the node configuration.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    pub join_history: usize,
    pub viewer_page: usize,
    pub online_push_interval: Duration,
    /// Batching window of a room of up to 999 members; zero sends at once.
    pub batch_window: Duration,
    /// The window grows with room size up to this.
    pub max_batch_window: Duration,
    /// Viewer chat messages per second the room sequences; the rest are
    /// sampled out. 0: no budget.
    pub chat_budget_per_sec: u32,
    /// Chat messages per second one viewer may send. 0: no limit.
    pub user_chat_per_sec: f64,
    /// "User entered" events per second the room broadcasts. 0: none.
    pub entered_per_sec: u32,
    /// The same gift from the same user within this of the previous send
    /// continues its combo.
    pub combo_window: Duration,
}

/// Which events a member receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Host messages, system notices, quiz traffic and recalls only.
    HostOnly,
}

impl Filter {
    /// Whether a member with this filter is shown `event`.
    pub fn shows(self, event: &v1::RoomEvent) -> bool {
        match self {
            Self::All => true,
            Self::HostOnly => event.kind.as_ref().is_some_and(kinds::host_visible),
        }
    }
}

/// Where a rejoining client left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub last_seq: u64,
    /// The room incarnation `last_seq` belongs to, when the client knows it.
    pub epoch: Option<u64>,
}

impl Resume {
    pub fn at(last_seq: u64) -> Self {
        Self { last_seq, epoch: None }
    }
}

/// A chat message as the connection validated it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub text: String,
    pub client_msg_id: String,
    pub media_ts_ms: Option<u64>,
}

/// What the chat path decided, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatOutcome {
    Broadcast,
    Sampled,
}

#[derive(Debug)]
pub struct RoomState {
    id: RoomId,
    limits: RoomLimits,
    log: EventLog,
    roster: Roster,
    admission: Admission,
    online: OnlinePacer,
    likes: LikePacer,
    quiz: quiz::QuizDesk,
    rounds: Rounds,
    combos: gifts::Combos,
    ranking: ranking::Ranking,
    /// Fan-out counts since the last `take_stats`.
    stats: FlushStats,
    /// In a fleet: users present on the other nodes.
    fleet_others: u64,
    /// In a fleet: the other nodes' first pages of users.
    fleet_page: Vec<v1::User>,
}

impl RoomState {
    pub fn new(id: RoomId, epoch: u64, limits: RoomLimits, history: Arc<HistoryLog>) -> Self {
        Self {
            log: EventLog::new(id.clone(), epoch, history),
            roster: Roster::new(limits.viewer_page),
            admission: Admission::new(&limits),
            id,
            limits,
            online: OnlinePacer::default(),
            likes: LikePacer::default(),
            quiz: quiz::QuizDesk::default(),
            rounds: Rounds::default(),
            combos: gifts::Combos::default(),
            ranking: ranking::Ranking::default(),
            stats: FlushStats::default(),
            fleet_others: 0,
            fleet_page: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.roster.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.roster.len()
    }

    /// Users present: here, plus (in a fleet) on the other nodes as last
    /// reported.
    pub fn online_count(&self) -> u64 {
        self.roster.online_count() + self.fleet_others
    }

    /// Users present on this node.
    pub fn local_online(&self) -> u64 {
        self.roster.online_count()
    }

    /// The first page of this node's users in the room.
    pub fn local_page(&self) -> Vec<v1::User> {
        self.roster.viewer_page()
    }

    /// In a fleet: whether the other nodes' first pages are known.
    pub fn has_fleet_page(&self) -> bool {
        !self.fleet_page.is_empty()
    }

    /// In a fleet: the first pages of the other nodes' users, which a
    /// joiner's page is filled up from after this node's own.
    pub fn set_fleet_page(&mut self, page: Vec<v1::User>) {
        self.fleet_page = page;
    }

    /// The page a joiner gets: this node's users first (hosts first, then
    /// the latest arrivals), then the other nodes', one entry per user.
    fn joiner_page(&self) -> Vec<v1::User> {
        let mut page = self.roster.viewer_page();
        let limit = self.limits.viewer_page;
        for u in &self.fleet_page {
            if page.len() >= limit {
                break;
            }
            if !page.iter().any(|p| p.user_id == u.user_id) {
                page.push(u.clone());
            }
        }
        page
    }

    /// In a fleet: the users the other nodes have present. This node takes
    /// the share of the room's chat budget its own users are of the room's,
    /// since chat arrives where the users are.
    pub fn set_fleet_others(&mut self, others: u64) {
        self.fleet_others = others;
        let here = self.roster.online_count().max(1) as f64;
        self.admission.share_budgets(here / (here + others as f64));
    }

    pub fn current_seq(&self) -> u64 {
        self.log.seq
    }

    /// Adds (or replaces) a member and answers with the room's snapshot. Its
    /// outbox receives every event sequenced after `Joined.current_seq`;
    /// when a resume's missed events do not all fit in the answer,
    /// `Joined.next_seq` says where the part the member still has to be sent
    /// from history starts.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        conn: ConnId,
        identity: Identity,
        outbox: Arc<Outbox>,
        resume: Option<Resume>,
        filter: Filter,
        now: Instant,
        now_ms: u64,
    ) -> v1::Joined {
        // The newcomer's cursor starts at the end of the log: events already
        // sequenced but not yet pushed reach it through `history`, which holds
        // everything up to `current_seq`. Nobody else's batch is cut short.
        self.leave(conn);
        let first_of_user = !self.roster.is_present(&identity.user_id);
        let entered = identity.to_proto();
        let sub = Subscriber {
            conn,
            filter,
            outbox: outbox.clone(),
            next: self.log.end(),
            online: self.online.version,
            likes: self.likes.version,
        };
        self.roster.insert(conn, identity, outbox, sub);

        let current_seq = self.log.seq;
        let epoch = self.log.epoch;
        let last_seq = resume.filter(|r| r.epoch.is_none_or(|e| e == epoch)).map(|r| r.last_seq);
        let mut next_seq = current_seq + 1;
        let (history, resumed) = match last_seq.and_then(|l| self.log.history.after(now, l, current_seq)) {
            Some(mut missed) => {
                missed.retain(|e| filter.shows(e));
                let cut = history::fit_oldest(&mut missed, history::ANSWER_BYTES);
                if let Some(first_left) = cut {
                    next_seq = first_left;
                }
                (missed, true)
            }
            None => {
                let mut recent = self.log.history.recent(now, self.limits.join_history);
                recent.retain(|e| filter.shows(e));
                history::fit_newest(&mut recent, history::ANSWER_BYTES);
                (recent, false)
            }
        };
        let joined = v1::Joined {
            room: self.id.to_string(),
            current_seq,
            online_count: self.online_count(),
            viewers: self.joiner_page(),
            history,
            resumed,
            epoch,
            next_seq,
            like_total: self.like_total(),
            open_question: self.open_question(now),
        };
        if first_of_user && self.admission.entered(now) {
            let kind = Kind::UserEntered(v1::UserEntered { user: Some(entered.clone()) });
            self.log.ephemeral(kind, Some(entered), true, now_ms, Some(conn));
        }
        joined
    }

    /// Removes a member; its outbox is closed so its room stream finishes.
    pub fn leave(&mut self, conn: ConnId) -> bool {
        let Some(m) = self.roster.remove(conn) else {
            return false;
        };
        m.outbox.close();
        let roster = &self.roster;
        self.admission.forget_rates(roster.len(), || roster.users());
        true
    }

    /// Marks a member present or absent (missed heartbeats).
    pub fn set_present(&mut self, conn: ConnId, present: bool) {
        self.roster.set_present(conn, present);
    }

    /// Checks, sequences (or samples out) a chat message from a member.
    pub fn publish(
        &mut self,
        conn: ConnId,
        chat: ChatRequest,
        now: Instant,
        now_ms: u64,
    ) -> Result<(v1::ChatAck, ChatOutcome), ErrorCode> {
        let identity = self.roster.get(conn).ok_or(ErrorCode::NotJoined)?.identity.clone();
        let mut ack = v1::ChatAck {
            room: self.id.to_string(),
            seq: 0,
            message_id: String::new(),
            server_time_ms: now_ms,
            broadcast: false,
        };
        match self.admission.chat(&identity, &chat.client_msg_id, now) {
            Admit::Repeat(ack) => {
                let outcome = if ack.broadcast { ChatOutcome::Broadcast } else { ChatOutcome::Sampled };
                return Ok((ack, outcome));
            }
            Admit::RateLimited => return Err(ErrorCode::RateLimited),
            Admit::Sampled => {
                self.admission.answered(identity.user_id, chat.client_msg_id, ack.clone());
                return Ok((ack, ChatOutcome::Sampled));
            }
            Admit::Sequence => {}
        }
        let kind = match identity.role {
            Role::Viewer => {
                Kind::Chat(v1::Chat { text: chat.text, client_msg_id: chat.client_msg_id.clone() })
            }
            Role::Host => Kind::HostMessage(v1::HostMessage {
                text: chat.text,
                client_msg_id: chat.client_msg_id.clone(),
            }),
            Role::Admin => Kind::SystemNotice(v1::SystemNotice { text: chat.text }),
        };
        let event = self.sequence(kind, Some(identity.to_proto()), chat.media_ts_ms, now, now_ms);
        ack.seq = event.seq;
        ack.message_id = event.message_id;
        ack.broadcast = true;
        self.admission.answered(identity.user_id, chat.client_msg_id, ack.clone());
        Ok((ack, ChatOutcome::Broadcast))
    }

    /// Recalls a kept message: its sender, the room's hosts and admins may.
    pub fn recall(
        &mut self,
        conn: ConnId,
        message_id: &str,
        now: Instant,
        now_ms: u64,
    ) -> Result<v1::Recalled, ErrorCode> {
        let identity = self.roster.get(conn).ok_or(ErrorCode::NotJoined)?.identity.clone();
        let target = self.log.history.find(message_id).ok_or(ErrorCode::NotFound)?;
        if matches!(target.kind, Some(Kind::Recall(_))) {
            return Err(ErrorCode::NotFound);
        }
        let own = target.sender.as_ref().is_some_and(|s| *s.user_id == *identity.user_id);
        if !own && identity.role == Role::Viewer {
            return Err(ErrorCode::Forbidden);
        }
        self.log.history.remove(message_id);
        let kind = Kind::Recall(v1::RecallNotice { message_id: message_id.to_string() });
        let event = self.sequence(kind, Some(identity.to_proto()), None, now, now_ms);
        Ok(v1::Recalled { room: self.id.to_string(), message_id: message_id.to_string(), seq: event.seq })
    }

    /// Sequences an event for every member (see `EventLog::sequence`).
    /// In a fleet: this room follows the fleet's sequence from `last`
    /// (with `recent`, its newest events, as history) and numbers nothing
    /// itself.
    pub fn join_fleet(
        &mut self,
        last: u64,
        epoch: u64,
        recent: Vec<v1::RoomEvent>,
        now: Instant,
        now_ms: u64,
    ) {
        self.log.join_fleet(recent.first().map_or(last, |e| e.seq.saturating_sub(1)), epoch);
        for e in recent {
            self.quiz_caught_up(&e, now, now_ms);
            self.log.ingest(e, false, now);
        }
        self.log.join_fleet(last, epoch);
    }

    /// The events made here since the last call, encoded, for the fleet to
    /// number (empty on a node running alone).
    pub(crate) fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.log.outgoing)
    }

    /// An event the fleet numbered, the next in sequence: kept and fanned
    /// out like one sequenced here.
    pub fn ingest(&mut self, event: v1::RoomEvent, now: Instant) {
        let sent = match &event.kind {
            Some(Kind::Chat(c)) => Some(&c.client_msg_id),
            Some(Kind::HostMessage(h)) => Some(&h.client_msg_id),
            _ => None,
        };
        if let (Some(id), Some(sender)) = (sent, &event.sender) {
            // A retry of a message sent here is answered with its number.
            self.admission.numbered(&sender.user_id, id, event.seq, &event.message_id);
        }
        self.quiz_ingested(&event, now);
        self.rank(&event);
        let subscribed = !self.roster.subscribers.is_empty();
        self.log.ingest(event, subscribed, now);
    }

    /// The room's last sequence number.
    pub fn last_seq(&self) -> u64 {
        self.log.seq
    }

    fn sequence(
        &mut self,
        kind: Kind,
        sender: Option<v1::User>,
        media_ts_ms: Option<u64>,
        now: Instant,
        now_ms: u64,
    ) -> v1::RoomEvent {
        let subscribed = !self.roster.subscribers.is_empty();
        let event = self.log.sequence(kind, sender, media_ts_ms, subscribed, now, now_ms);
        if event.seq > 0 {
            // Numbered here (a node alone); in a fleet it counts on its way
            // back from Redis, in `ingest`.
            self.rank(&event);
        }
        event
    }
}

#[cfg(test)]
mod tests;
