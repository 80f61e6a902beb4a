//! One room as a plain state machine: it never awaits and never touches a
//! socket. The room task feeds it commands and the time; it answers and
//! pushes encoded frames into members' outboxes.
//!
//! **Invariant:** `sequence` is the only place a sequence number is assigned.
//! It appends to history and to the room's log in the same step. Each member
//! has a cursor into the log and is sent everything after it, in order, so a
//! member sees sequence numbers in order and without holes. If its outbox
//! overflows, it is told so explicitly.
//!
//! Fan-out is spread over the batching window. A *round* walks the members in
//! chunks, one chunk per base window (a tick), so that a room of 10,000 does
//! not send 10,000 packets in one burst and leave the last member waiting
//! behind the first 9,999. Each member still gets at most one push per window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::datagram::ServerDatagram;
use roomcast_protocol::{ErrorCode, RoomId, v1};
use tokio::time::Instant;

use super::fanout::{Item, Outbox, PushOutcome, Shed};
use super::history::HistoryLog;
use crate::auth::{Identity, Role};

use v1::room_event::Kind;

/// Identifies a connection on this node.
pub type ConnId = u64;

/// Room tunables, taken from the node configuration.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    pub join_history: usize,
    pub viewer_page: usize,
    pub online_push_interval: Duration,
    /// Batching window of a room of up to 500 members; zero sends at once.
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
}

/// Which events a member receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Host messages, system notices, quiz traffic and recalls only.
    HostOnly,
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

/// The priority the server gives each kind of event.
pub fn priority(kind: &Kind) -> v1::Priority {
    match kind {
        Kind::Chat(_) | Kind::HostMessage(_) | Kind::Recall(_) => v1::Priority::High,
        Kind::SystemNotice(_) => v1::Priority::Normal,
        Kind::UserEntered(_) => v1::Priority::Low,
    }
}

/// Whether a host-only member receives this kind.
fn host_visible(kind: &Kind) -> bool {
    match kind {
        Kind::HostMessage(_) | Kind::SystemNotice(_) | Kind::Recall(_) => true,
        Kind::Chat(_) | Kind::UserEntered(_) => false,
    }
}

/// A token bucket; `rate` 0 means unlimited.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        Self { rate, burst, tokens: burst, last: None }
    }

    fn take(&mut self, now: Instant) -> bool {
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

#[derive(Debug)]
struct Member {
    identity: Identity,
    outbox: Arc<Outbox>,
    present: bool,
    /// Index of this member in `RoomState::subscribers`.
    slot: usize,
}

/// What a flush needs of a member, kept in a dense array so that a flush
/// walks contiguous memory.
#[derive(Debug)]
struct Subscriber {
    conn: ConnId,
    filter: Filter,
    outbox: Arc<Outbox>,
    /// Log position of the first event not yet pushed to it.
    next: u64,
    /// Host-only: sequenced events were left out since the last one it was
    /// sent, so its next one must be preceded by a `SeqAdvance`.
    host_skipped: bool,
    /// Version of the online-count datagram it was last given.
    online: u64,
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

/// An event in the room's log, waiting to be pushed to members.
#[derive(Debug)]
struct Pending {
    frame: Bytes,
    /// 0 for ephemeral events.
    seq: u64,
    host_visible: bool,
    shed: Shed,
    /// A member that must not receive it (the subject of "user entered").
    except: Option<ConnId>,
}

/// What one flush did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub pushes: usize,
    pub deliveries: usize,
    pub shed_low: usize,
    pub shed_normal: usize,
    pub lagged_events: usize,
    /// Members whose outbox turned lagged in this flush.
    pub lagged_members: usize,
}

impl FlushStats {
    fn add(&mut self, o: PushOutcome) {
        self.pushes += 1;
        self.deliveries += o.queued;
        self.shed_low += o.shed_low;
        self.shed_normal += o.shed_normal;
        self.lagged_events += o.lagged;
        self.lagged_members += usize::from(o.turned_lagged);
    }
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
    /// Distinguishes message ids of this incarnation of the room from those
    /// of an earlier one with the same id.
    epoch: u64,
    limits: RoomLimits,
    seq: u64,
    history: Arc<HistoryLog>,
    members: HashMap<ConnId, Member>,
    /// The fan-out targets, one per member.
    subscribers: Vec<Subscriber>,
    /// Present connections per user: the online count is the number of keys.
    present_users: HashMap<Arc<str>, u32>,
    /// Connections of hosts, for the head of the viewer list.
    hosts: Vec<ConnId>,
    /// Most recent arrivals, newest last, for the viewer list. Bounded.
    recent: VecDeque<ConnId>,
    dedup: Dedup,
    ephemeral_counter: u64,
    online_sent: Option<u64>,
    online_sent_at: Option<Instant>,
    chat_budget: Bucket,
    entered_budget: Bucket,
    user_rates: HashMap<Arc<str>, Bucket>,
    /// Events not yet pushed to every member; `log[0]` is at position
    /// `log_base`. Trimmed at the end of each round.
    log: Vec<Pending>,
    log_base: u64,
    /// Where the newest sequenced event went in the log; while it is at or
    /// after `log_base`, sequenced events wait.
    last_sequenced: Option<u64>,
    /// The round in progress: the next member to serve and how many a tick
    /// serves.
    round: Option<Round>,
    /// When the last round started.
    round_started: Option<Instant>,
    /// The last round ended with events still to send: the next one follows
    /// it on the room's cadence.
    back_to_back: bool,
    /// The latest online-count datagram and its version; members are given it
    /// as their chunk is served.
    online_frame: Option<Bytes>,
    online_version: u64,
    /// Fan-out counts since the last `take_stats`.
    stats: FlushStats,
    /// Wall-clock time of the latest event, for an online count that goes
    /// out with a flush.
    last_now_ms: u64,
}

impl RoomState {
    pub fn new(id: RoomId, epoch: u64, limits: RoomLimits, history: Arc<HistoryLog>) -> Self {
        Self {
            id,
            epoch,
            chat_budget: Bucket::new(f64::from(limits.chat_budget_per_sec)),
            entered_budget: Bucket::new(f64::from(limits.entered_per_sec)),
            limits,
            seq: 0,
            history,
            members: HashMap::new(),
            subscribers: Vec::new(),
            present_users: HashMap::new(),
            hosts: Vec::new(),
            recent: VecDeque::new(),
            dedup: Dedup::default(),
            ephemeral_counter: 0,
            online_sent: None,
            online_sent_at: None,
            user_rates: HashMap::new(),
            log: Vec::new(),
            last_sequenced: None,
            log_base: 0,
            round: None,
            round_started: None,
            back_to_back: false,
            online_frame: None,
            online_version: 0,
            stats: FlushStats::default(),
            last_now_ms: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn online_count(&self) -> u64 {
        self.present_users.len() as u64
    }

    pub fn current_seq(&self) -> u64 {
        self.seq
    }

    /// The batching window for the room's current size: the base window up
    /// to 500 members, then proportionally wider (one base window per 500
    /// members), up to the maximum. The packets a node sends for a busy room
    /// are members / window per second, so big rooms trade a little latency
    /// for far fewer packets.
    pub fn batch_window(&self) -> Duration {
        let scale = (self.members.len() / 500).max(1) as u32;
        (self.limits.batch_window * scale).min(self.limits.max_batch_window.max(self.limits.batch_window))
    }

    /// How long ephemeral events alone ("user entered", like totals) may
    /// wait for a sequenced event to travel with: a second (or a window, if
    /// that is longer). A quiet room's members then get its decorations at
    /// most once a second, together with the online count, instead of a
    /// packet per notice: in a join storm those packets would go to every
    /// member for every newcomer.
    fn ephemeral_linger(&self) -> Duration {
        EPHEMERAL_LINGER.max(self.batch_window())
    }

    /// Adds (or replaces) a member and answers with the room's snapshot. Its
    /// outbox receives every event sequenced after `Joined.current_seq`.
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
        let user = identity.user_id.clone();
        let first_of_user = !self.present_users.contains_key(&user);
        if identity.role == Role::Host {
            self.hosts.push(conn);
        }
        let entered = identity.to_proto();
        let slot = self.subscribers.len();
        self.subscribers.push(Subscriber {
            conn,
            filter,
            outbox: outbox.clone(),
            next: self.log_end(),
            host_skipped: false,
            online: self.online_version,
        });
        self.members.insert(conn, Member { identity, outbox, present: true, slot });
        *self.present_users.entry(user).or_default() += 1;
        self.recent.push_back(conn);
        if self.recent.len() > self.limits.viewer_page * 4 {
            self.recent.pop_front();
        }

        let last_seq = resume.filter(|r| r.epoch.is_none_or(|e| e == self.epoch)).map(|r| r.last_seq);
        let (mut history, resumed) = match last_seq.and_then(|l| self.history.after(now, l, self.seq)) {
            Some(missed) => (missed, true),
            None => (self.history.recent(now, self.limits.join_history), false),
        };
        if filter == Filter::HostOnly {
            history.retain(|e| e.kind.as_ref().is_some_and(host_visible));
        }
        let joined = v1::Joined {
            room: self.id.to_string(),
            current_seq: self.seq,
            online_count: self.online_count(),
            viewers: self.viewer_page(),
            history,
            resumed,
            epoch: self.epoch,
        };
        if first_of_user && self.limits.entered_per_sec > 0 && self.entered_budget.take(now) {
            let kind = Kind::UserEntered(v1::UserEntered { user: Some(entered.clone()) });
            self.ephemeral(kind, Some(entered), now_ms, Some(conn));
        }
        joined
    }

    /// Hosts first, then the most recent arrivals; one entry per user.
    fn viewer_page(&self) -> Vec<v1::User> {
        let mut seen = HashSet::new();
        let mut page = Vec::new();
        for conn in self.hosts.iter().chain(self.recent.iter().rev()) {
            if page.len() >= self.limits.viewer_page {
                break;
            }
            if let Some(m) = self.members.get(conn)
                && m.present
                && seen.insert(m.identity.user_id.clone())
            {
                page.push(m.identity.to_proto());
            }
        }
        page
    }

    /// Removes a member; its outbox is closed so its room stream finishes.
    pub fn leave(&mut self, conn: ConnId) -> bool {
        let Some(m) = self.members.remove(&conn) else {
            return false;
        };
        self.subscribers.swap_remove(m.slot);
        if let Some(moved) = self.subscribers.get(m.slot)
            && let Some(member) = self.members.get_mut(&moved.conn)
        {
            member.slot = m.slot;
        }
        m.outbox.close();
        if m.present {
            self.unpresent(&m.identity.user_id);
        }
        self.hosts.retain(|c| *c != conn);
        self.recent.retain(|c| *c != conn);
        if self.user_rates.len() > 2 * self.members.len() + 16 {
            let members: HashSet<_> = self.members.values().map(|m| m.identity.user_id.clone()).collect();
            self.user_rates.retain(|u, _| members.contains(u));
        }
        true
    }

    fn unpresent(&mut self, user: &Arc<str>) {
        if let Some(n) = self.present_users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.present_users.remove(user);
            }
        }
    }

    /// Marks a member present or absent (missed heartbeats).
    pub fn set_present(&mut self, conn: ConnId, present: bool) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        if m.present == present {
            return;
        }
        m.present = present;
        let user = m.identity.user_id.clone();
        if present {
            *self.present_users.entry(user).or_default() += 1;
        } else {
            self.unpresent(&user);
        }
    }

    /// Checks, sequences (or samples out) a chat message from a member.
    pub fn publish(
        &mut self,
        conn: ConnId,
        chat: ChatRequest,
        now: Instant,
        now_ms: u64,
    ) -> Result<(v1::ChatAck, ChatOutcome), ErrorCode> {
        let member = self.members.get(&conn).ok_or(ErrorCode::NotJoined)?;
        let identity = member.identity.clone();
        if let Some(ack) = self.dedup.get(&identity.user_id, &chat.client_msg_id) {
            let outcome = if ack.broadcast { ChatOutcome::Broadcast } else { ChatOutcome::Sampled };
            return Ok((ack.clone(), outcome));
        }
        let kind = match identity.role {
            Role::Viewer => {
                let rate = self.limits.user_chat_per_sec;
                if !self
                    .user_rates
                    .entry(identity.user_id.clone())
                    .or_insert_with(|| Bucket::new(rate))
                    .take(now)
                {
                    return Err(ErrorCode::RateLimited);
                }
                if !self.chat_budget.take(now) {
                    let ack = v1::ChatAck {
                        room: self.id.to_string(),
                        seq: 0,
                        message_id: String::new(),
                        server_time_ms: now_ms,
                        broadcast: false,
                    };
                    self.dedup.insert(identity.user_id, chat.client_msg_id, ack.clone());
                    return Ok((ack, ChatOutcome::Sampled));
                }
                Kind::Chat(v1::Chat { text: chat.text, client_msg_id: chat.client_msg_id.clone() })
            }
            Role::Host => Kind::HostMessage(v1::HostMessage {
                text: chat.text,
                client_msg_id: chat.client_msg_id.clone(),
            }),
            Role::Admin => Kind::SystemNotice(v1::SystemNotice { text: chat.text }),
        };
        let event = self.sequence(kind, Some(identity.to_proto()), chat.media_ts_ms, now, now_ms);
        let ack = v1::ChatAck {
            room: self.id.to_string(),
            seq: event.seq,
            message_id: event.message_id,
            server_time_ms: now_ms,
            broadcast: true,
        };
        self.dedup.insert(identity.user_id, chat.client_msg_id, ack.clone());
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
        let member = self.members.get(&conn).ok_or(ErrorCode::NotJoined)?;
        let identity = member.identity.clone();
        let target = self.history.find(message_id).ok_or(ErrorCode::NotFound)?;
        if matches!(target.kind, Some(Kind::Recall(_))) {
            return Err(ErrorCode::NotFound);
        }
        let own = target.sender.as_ref().is_some_and(|s| *s.user_id == *identity.user_id);
        if !own && identity.role == Role::Viewer {
            return Err(ErrorCode::Forbidden);
        }
        self.history.remove(message_id);
        let kind = Kind::Recall(v1::RecallNotice { message_id: message_id.to_string() });
        let event = self.sequence(kind, Some(identity.to_proto()), None, now, now_ms);
        Ok(v1::Recalled { room: self.id.to_string(), message_id: message_id.to_string(), seq: event.seq })
    }

    /// Assigns the next sequence number, keeps the event in history and
    /// queues its encoded frame for the next flush. The one place seq grows.
    fn sequence(
        &mut self,
        kind: Kind,
        sender: Option<v1::User>,
        media_ts_ms: Option<u64>,
        now: Instant,
        now_ms: u64,
    ) -> v1::RoomEvent {
        self.seq += 1;
        let visible = host_visible(&kind);
        let event = v1::RoomEvent {
            room: self.id.to_string(),
            seq: self.seq,
            message_id: format!("{:x}-{}", self.epoch, self.seq),
            server_time_ms: now_ms,
            media_ts_ms,
            priority: priority(&kind) as i32,
            sender,
            kind: Some(kind),
        };
        let frame = encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event.clone())) });
        if !self.subscribers.is_empty() {
            self.last_sequenced = Some(self.log_end());
            self.log.push(Pending {
                frame,
                seq: self.seq,
                host_visible: visible,
                shed: Shed::Normal,
                except: None,
            });
        }
        self.history.push(now, event.clone());
        self.last_now_ms = now_ms;
        event
    }

    fn ephemeral(&mut self, kind: Kind, sender: Option<v1::User>, now_ms: u64, except: Option<ConnId>) {
        self.ephemeral_counter += 1;
        self.last_now_ms = now_ms;
        let prio = priority(&kind);
        let event = v1::RoomEvent {
            room: self.id.to_string(),
            seq: 0,
            message_id: format!("{:x}-e{}", self.epoch, self.ephemeral_counter),
            server_time_ms: now_ms,
            media_ts_ms: None,
            priority: prio as i32,
            sender,
            kind: Some(kind),
        };
        let frame = encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event)) });
        let shed = if prio == v1::Priority::Low { Shed::Low } else { Shed::Normal };
        if !self.subscribers.is_empty() {
            self.log.push(Pending { frame, seq: 0, host_visible: false, shed, except });
        }
    }

    fn log_end(&self) -> u64 {
        self.log_base + self.log.len() as u64
    }

    /// Whether the log holds sequenced events (not only ephemeral).
    fn has_sequenced_pending(&self) -> bool {
        self.last_sequenced.is_some_and(|at| at >= self.log_base)
    }

    /// When the next tick is due. During a round: tick k is due k base
    /// windows after the round started. Otherwise, if the log holds events:
    /// now if the room has been quiet (a lone message is not held back), else
    /// `round_wait` after the previous round started, or earlier with a due
    /// online count when only ephemeral events wait. A log that reached
    /// `MAX_LOG` is due at once.
    pub fn flush_due(&self, now: Instant) -> Option<Instant> {
        if self.log.is_empty() && self.round.is_none() {
            return None;
        }
        if self.log.len() >= MAX_LOG {
            return Some(now);
        }
        if let Some(round) = self.round {
            // Tick k of a round is due k base windows after the round
            // started, however late the previous tick ran: a busy node
            // catches up instead of stretching every round.
            let started = self.round_started.unwrap_or(now);
            return Some((started + self.limits.batch_window * round.ticks).max(now));
        }
        let due = self.round_started.map_or(now, |s| (s + self.round_wait()).max(now));
        if self.has_sequenced_pending() {
            return Some(due);
        }
        // Ephemeral events alone go with the online count if that is due
        // first.
        Some(self.online_change_due(now).map_or(due, |at| at.min(due)))
    }

    /// How long after the previous round the next one starts: a batching
    /// window when sequenced events wait, the ephemeral linger when only
    /// ephemeral ones do.
    fn round_wait(&self) -> Duration {
        if self.has_sequenced_pending() { self.batch_window() } else { self.ephemeral_linger() }
    }

    /// Fan-out counts since the previous call.
    pub fn take_stats(&mut self) -> FlushStats {
        std::mem::take(&mut self.stats)
    }

    /// Serves the next chunk of members, starting a round if none is in
    /// progress. A round has one tick per base window in the room's batching
    /// window, so it serves every member once per window, a slice at a time.
    pub fn tick(&mut self, now: Instant) {
        let round = match self.round {
            Some(round) => round,
            None if self.log.is_empty() => return,
            None => self.start_round(now),
        };
        let n = self.subscribers.len();
        let end = if self.log.len() >= MAX_LOG { n } else { round.next.saturating_add(round.chunk).min(n) };
        self.serve(round.next.min(n)..end, now);
        if end >= n {
            self.end_round();
        } else {
            self.round = Some(Round { next: end, ticks: round.ticks + 1, ..round });
        }
    }

    /// Brings every member up to date now, finishing the round in progress.
    pub fn flush(&mut self, now: Instant) {
        if self.round.is_none() {
            if self.log.is_empty() {
                return;
            }
            self.start_round(now);
        }
        self.serve(0..self.subscribers.len(), now);
        self.end_round();
    }

    fn start_round(&mut self, now: Instant) -> Round {
        let window = self.batch_window();
        // A changed online count that would be due within this window
        // travels with the round's batches instead of costing packets of its
        // own.
        if self.online_change_due(now).is_some_and(|at| at <= now + window) {
            let _ = self.stage_online(now, self.last_now_ms);
        }
        let base = self.limits.batch_window;
        let ticks = if base.is_zero() { 1 } else { (window.as_nanos() / base.as_nanos()).max(1) as usize };
        let round = Round { next: 0, chunk: self.subscribers.len().div_ceil(ticks).max(1), ticks: 0 };
        // A round that follows the last one back to back (events were
        // waiting when it ended) and starts less than a tick late counts
        // from when it was due, so a busy room keeps its cadence; a room that
        // was quiet starts counting now.
        let started = match self.round_started.map(|s| s + self.round_wait()) {
            Some(due) if self.back_to_back && due <= now && now.duration_since(due) < base => due,
            _ => now,
        };
        self.round = Some(round);
        self.round_started = Some(started);
        round
    }

    /// Ends the round and forgets the events every member has been sent.
    fn end_round(&mut self) {
        self.round = None;
        let oldest = self.subscribers.iter().map(|s| s.next).min().unwrap_or_else(|| self.log_end());
        self.log.drain(..(oldest - self.log_base) as usize);
        self.log_base = oldest;
        self.back_to_back = !self.log.is_empty();
    }

    /// Pushes to each member in `range` everything in the log after its
    /// cursor, and the staged online count. Members at the same cursor share
    /// one batch, built once.
    fn serve(&mut self, range: Range<usize>, now: Instant) {
        let end = self.log_end();
        let (log, base, stats) = (&self.log, self.log_base, &mut self.stats);
        let online = self.online_frame.as_ref().map(|f| (self.online_version, f));
        let mut built: Vec<Built> = Vec::new();
        let mut last = 0;
        for sub in &mut self.subscribers[range] {
            if let Some((version, frame)) = online
                && sub.online != version
            {
                sub.outbox.set_online(frame.clone());
                sub.online = version;
            }
            if sub.next == end {
                continue;
            }
            let key = (sub.next, sub.filter, sub.host_skipped);
            // Members at one cursor are the rule: the batch built for the
            // previous member usually fits this one too.
            if built.get(last).is_none_or(|b| b.key != key) {
                last = match built.iter().position(|b| b.key == key) {
                    Some(i) => i,
                    None => {
                        built.push(Built::new(key, &log[(sub.next - base) as usize..]));
                        built.len() - 1
                    }
                };
            }
            let b = &built[last];
            let conn = Some(sub.conn);
            for (item, except) in &b.before {
                if *except != conn {
                    stats.add(sub.outbox.push_at(item.clone(), now));
                }
            }
            if let Some(item) = &b.batch {
                stats.add(sub.outbox.push_at(item.clone(), now));
            }
            for (item, except) in &b.after {
                if *except != conn {
                    stats.add(sub.outbox.push_at(item.clone(), now));
                }
            }
            sub.next = end;
            sub.host_skipped = b.skipped;
        }
    }

    /// When the online count should next be pushed on its own, if it
    /// changed. During a round it waits for the next round to carry it.
    pub fn online_due(&self, now: Instant) -> Option<Instant> {
        // A round in progress or one waiting to start carries it instead.
        if self.round.is_some() || !self.log.is_empty() {
            return None;
        }
        self.online_change_due(now)
    }

    /// When a changed online count is next due, by its own pace.
    fn online_change_due(&self, now: Instant) -> Option<Instant> {
        if self.online_sent == Some(self.online_count()) || self.members.is_empty() {
            return None;
        }
        Some(match self.online_sent_at {
            Some(at) => (at + self.limits.online_push_interval).max(now),
            None => now,
        })
    }

    /// Pushes the online count datagram to every member.
    pub fn push_online(&mut self, now: Instant, now_ms: u64) {
        let frame = self.stage_online(now, now_ms);
        for sub in &mut self.subscribers {
            sub.outbox.set_online(frame.clone());
            sub.online = self.online_version;
        }
    }

    /// Encodes the current online count as the datagram members are given
    /// next, and returns it.
    fn stage_online(&mut self, now: Instant, now_ms: u64) -> Bytes {
        let count = self.online_count();
        let datagram =
            ServerDatagram::OnlineCount { room: self.id.to_string(), count, server_time_ms: now_ms }.encode();
        self.online_frame = Some(datagram.clone());
        self.online_version += 1;
        self.online_sent = Some(count);
        self.online_sent_at = Some(now);
        datagram
    }
}

/// Where a round is.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Index in `subscribers` of the next member to serve.
    next: usize,
    /// Members served per tick.
    chunk: usize,
    /// Ticks served so far in this round.
    ticks: u32,
}

/// The most events the log holds before every member is brought up to date
/// at once; bounds the log when events come faster than rounds end.
const MAX_LOG: usize = 256;

/// See `RoomState::ephemeral_linger`.
const EPHEMERAL_LINGER: Duration = Duration::from_secs(1);

/// What a member at one cursor (with one filter) is sent: built once per
/// chunk and shared by every member at that cursor.
struct Built {
    key: (u64, Filter, bool),
    /// Ephemeral events from before the first sequenced one, with the member
    /// each must not reach.
    before: Vec<(Item, Option<ConnId>)>,
    batch: Option<Item>,
    /// Ephemeral events from after it.
    after: Vec<(Item, Option<ConnId>)>,
    /// The host-only state after this batch.
    skipped: bool,
}

impl Built {
    fn new(key: (u64, Filter, bool), events: &[Pending]) -> Self {
        let (_, filter, mut skipped) = key;
        match filter {
            Filter::All => {
                let first = events.iter().position(|p| p.seq > 0).unwrap_or(events.len());
                let ephemeral = |events: &[Pending]| -> Vec<(Item, Option<ConnId>)> {
                    events
                        .iter()
                        .filter(|p| p.seq == 0)
                        .map(|p| (Item::Ephemeral { frame: p.frame.clone(), shed: p.shed }, p.except))
                        .collect()
                };
                Self {
                    key,
                    before: ephemeral(&events[..first]),
                    batch: batch(events, |_| true, &mut false),
                    after: ephemeral(&events[first..]),
                    skipped,
                }
            }
            Filter::HostOnly => {
                let batch = batch(events, |p| p.host_visible, &mut skipped);
                Self { key, before: Vec::new(), batch, after: Vec::new(), skipped }
            }
        }
    }
}

/// The sequenced part of a stretch of the log for one filter: the chosen
/// events' frames back to back. When events were left out since the last one
/// chosen, a `SeqAdvance` goes before the next chosen event, so the events
/// left out never look like loss. `skipped` carries that state from batch to
/// batch.
fn batch(pending: &[Pending], keep: impl Fn(&Pending) -> bool, skipped: &mut bool) -> Option<Item> {
    let mut buf = BytesMut::new();
    let mut events = 0;
    let (mut first, mut last) = (0, 0);
    for p in pending.iter().filter(|p| p.seq > 0) {
        if !keep(p) {
            *skipped = true;
            continue;
        }
        if std::mem::take(skipped) {
            let adv = v1::RoomFrame {
                body: Some(v1::room_frame::Body::Advance(v1::SeqAdvance { seq: p.seq - 1 })),
            };
            buf.extend_from_slice(&encode_frame(&adv));
        }
        if events == 0 {
            first = p.seq;
        }
        buf.extend_from_slice(&p.frame);
        events += 1;
        last = p.seq;
    }
    (events > 0).then(|| Item::Sequenced { frames: buf.freeze(), first, last, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::codec::FrameDecoder;

    fn limits() -> RoomLimits {
        RoomLimits {
            join_history: 3,
            viewer_page: 2,
            online_push_interval: Duration::from_secs(1),
            batch_window: Duration::from_millis(20),
            max_batch_window: Duration::from_millis(500),
            chat_budget_per_sec: 0,
            user_chat_per_sec: 0.0,
            entered_per_sec: 100,
        }
    }

    fn id(user: &str, role: Role) -> Identity {
        Identity { user_id: user.into(), name: user.to_uppercase().into(), role }
    }

    fn chat(text: &str, cid: &str) -> ChatRequest {
        ChatRequest { text: text.into(), client_msg_id: cid.into(), media_ts_ms: None }
    }

    fn room_with(limits: RoomLimits, history_len: usize) -> RoomState {
        RoomState::new(
            RoomId::new("r").unwrap(),
            7,
            limits,
            HistoryLog::new(history_len, Duration::from_secs(3600)),
        )
    }

    fn room() -> RoomState {
        room_with(limits(), 5)
    }

    /// Frames currently queued for a member, decoded (none if nothing is).
    async fn frames(o: &Outbox) -> Vec<v1::room_frame::Body> {
        let mut raw = Vec::new();
        if o.is_empty() && !o.is_done() {
            return Vec::new();
        }
        o.drain(&mut raw).await;
        let mut dec = FrameDecoder::new(1 << 20);
        for f in raw {
            dec.extend(&f);
        }
        let mut out = Vec::new();
        while let Some(v1::RoomFrame { body: Some(b) }) = dec.next_message().unwrap() {
            out.push(b);
        }
        out
    }

    /// The "user entered" events among `frames`.
    fn entered_events(frames: Vec<v1::room_frame::Body>) -> Vec<v1::RoomEvent> {
        frames
            .into_iter()
            .filter_map(|b| match b {
                v1::room_frame::Body::Event(e) if matches!(e.kind, Some(Kind::UserEntered(_))) => Some(e),
                _ => None,
            })
            .collect()
    }

    async fn seqs(o: &Outbox) -> Vec<u64> {
        frames(o)
            .await
            .into_iter()
            .filter_map(|b| match b {
                v1::room_frame::Body::Event(e) if e.seq > 0 => Some(e.seq),
                _ => None,
            })
            .collect()
    }

    fn join(r: &mut RoomState, conn: ConnId, who: Identity, o: &Arc<Outbox>, now: Instant) -> v1::Joined {
        r.join(conn, who, o.clone(), None, Filter::All, now, 0)
    }

    fn send(r: &mut RoomState, conn: ConnId, text: &str, now: Instant) -> v1::ChatAck {
        r.publish(conn, chat(text, ""), now, 0).unwrap().0
    }

    #[tokio::test(start_paused = true)]
    async fn sequence_numbers_are_consecutive_and_shared_by_all_members() {
        let mut r = room();
        let now = Instant::now();
        let (a, b) = (Outbox::new(100), Outbox::new(100));
        join(&mut r, 1, id("a", Role::Viewer), &a, now);
        join(&mut r, 2, id("b", Role::Viewer), &b, now);
        for i in 0..4 {
            assert_eq!(send(&mut r, if i % 2 == 0 { 1 } else { 2 }, "hi", now).seq, i + 1);
        }
        r.flush(now);
        let sa = seqs(&a).await;
        assert_eq!(sa, vec![1, 2, 3, 4]);
        assert_eq!(sa, seqs(&b).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_room_flushes_at_once_and_a_busy_one_once_per_window() {
        let mut r = room();
        let t0 = Instant::now();
        let o = Outbox::new(100);
        join(&mut r, 1, id("a", Role::Viewer), &o, t0);
        r.flush(t0);
        r.take_stats();
        let _ = frames(&o).await;
        let t1 = t0 + Duration::from_millis(30);
        send(&mut r, 1, "first", t1);
        assert_eq!(r.flush_due(t1), Some(t1), "nothing flushed for a window: at once");
        r.flush(t1);
        let stats = r.take_stats();
        assert_eq!((stats.pushes, stats.deliveries), (1, 1));
        let t2 = t1 + Duration::from_millis(5);
        send(&mut r, 1, "second", t2);
        send(&mut r, 1, "third", t2);
        assert_eq!(r.flush_due(t2), Some(t1 + Duration::from_millis(20)), "within the window: wait");
        r.flush(t1 + Duration::from_millis(20));
        let stats = r.take_stats();
        assert_eq!((stats.pushes, stats.deliveries), (1, 2), "two events, one push");
        assert_eq!(seqs(&o).await, vec![1, 2, 3]);
    }

    #[test]
    fn the_window_widens_with_room_size() {
        let mut r = room();
        let now = Instant::now();
        assert_eq!(r.batch_window(), Duration::from_millis(20));
        for c in 0..5_000 {
            r.join(c, id(&format!("u{c}"), Role::Viewer), Outbox::new(4), None, Filter::All, now, 0);
        }
        assert_eq!(r.batch_window(), Duration::from_millis(200));
        for c in 5_000..40_000 {
            r.join(c, id(&format!("u{c}"), Role::Viewer), Outbox::new(4), None, Filter::All, now, 0);
        }
        assert_eq!(r.batch_window(), Duration::from_millis(500), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn ephemeral_events_alone_linger_and_the_online_count_rides_with_a_batch() {
        let mut r = room_with(RoomLimits { entered_per_sec: 100, ..limits() }, 10);
        let t0 = Instant::now();
        let a = Outbox::new(100);
        join(&mut r, 1, id("a", Role::Host), &a, t0);
        r.flush(t0);
        r.push_online(t0, 0);
        let mut raw = Vec::new();
        assert!(a.try_drain(&mut raw).is_some_and(|d| d.online.is_some()));
        // A newcomer's "entered" alone waits for company: a second after the
        // last round, when the changed online count is due too.
        let t1 = t0 + Duration::from_millis(10);
        join(&mut r, 2, id("b", Role::Viewer), &Outbox::new(100), t1);
        assert_eq!(r.flush_due(t1), Some(t0 + Duration::from_secs(1)));
        assert_eq!(r.online_due(t1), None, "it rides with that round");
        // A sequenced event brings the batch back to one window.
        send(&mut r, 1, "hi", t1);
        assert_eq!(r.flush_due(t1), Some(t0 + Duration::from_millis(20)));
        // The online count changed (2 now); its next push is due a second
        // after the last, so it waits...
        let t2 = t0 + Duration::from_millis(20);
        r.flush(t2);
        assert!(a.try_drain(&mut raw).is_some_and(|d| d.online.is_none()));
        // ...and goes out with the first batch within a window of that.
        let t3 = t0 + Duration::from_millis(990);
        send(&mut r, 1, "again", t3);
        r.flush(t3);
        assert!(a.try_drain(&mut raw).is_some_and(|d| d.online.is_some()));
        assert_eq!(r.online_due(t3), None, "nothing left to push on its own");
    }

    #[tokio::test(start_paused = true)]
    async fn kind_and_priority_follow_the_senders_role() {
        let mut r = room();
        let now = Instant::now();
        let o = Outbox::new(100);
        join(&mut r, 1, id("v", Role::Viewer), &o, now);
        join(&mut r, 2, id("h", Role::Host), &Outbox::new(100), now);
        join(&mut r, 3, id("x", Role::Admin), &Outbox::new(100), now);
        send(&mut r, 1, "a", now);
        send(&mut r, 2, "b", now);
        send(&mut r, 3, "c", now);
        r.flush(now);
        let events: Vec<_> = frames(&o)
            .await
            .into_iter()
            .filter_map(|b| match b {
                v1::room_frame::Body::Event(e) if e.seq > 0 => Some(e),
                _ => None,
            })
            .collect();
        assert!(matches!(events[0].kind, Some(Kind::Chat(_))));
        assert_eq!(events[0].priority, v1::Priority::High as i32);
        assert!(matches!(events[1].kind, Some(Kind::HostMessage(_))));
        assert!(matches!(events[2].kind, Some(Kind::SystemNotice(_))));
        assert_eq!(events[2].priority, v1::Priority::Normal as i32);
    }

    #[test]
    fn duplicate_client_msg_id_is_sequenced_once() {
        let mut r = room();
        let now = Instant::now();
        join(&mut r, 1, id("a", Role::Viewer), &Outbox::new(100), now);
        let first = r.publish(1, chat("hi", "c-1"), now, 0).unwrap();
        let again = r.publish(1, chat("hi", "c-1"), now, 0).unwrap();
        assert_eq!(first, again);
        assert_eq!(r.current_seq(), 1);
        send(&mut r, 1, "hi", now);
        send(&mut r, 1, "hi", now);
        assert_eq!(r.current_seq(), 3);
    }

    #[test]
    fn the_budget_samples_viewer_chat_but_never_hosts_or_admins() {
        let mut r = room_with(RoomLimits { chat_budget_per_sec: 5, ..limits() }, 100);
        let now = Instant::now();
        join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
        join(&mut r, 2, id("h", Role::Host), &Outbox::new(100), now);
        join(&mut r, 3, id("x", Role::Admin), &Outbox::new(100), now);
        let outcomes: Vec<_> = (0..20).map(|_| r.publish(1, chat("x", ""), now, 0).unwrap()).collect();
        let broadcast = outcomes.iter().filter(|(a, _)| a.broadcast).count();
        assert_eq!(broadcast, 5, "the burst of a 5/s budget");
        for (ack, outcome) in &outcomes[5..] {
            assert_eq!((ack.seq, *outcome), (0, ChatOutcome::Sampled));
        }
        for _ in 0..20 {
            assert!(r.publish(2, chat("host", ""), now, 0).unwrap().0.broadcast);
            assert!(r.publish(3, chat("notice", ""), now, 0).unwrap().0.broadcast);
        }
        assert_eq!(r.current_seq(), 45, "sampled messages took no sequence numbers");
        // The budget refills with time.
        let later = now + Duration::from_secs(1);
        assert!(r.publish(1, chat("x", ""), later, 0).unwrap().0.broadcast);
    }

    #[test]
    fn a_viewer_faster_than_the_user_rate_is_refused() {
        let mut r = room_with(RoomLimits { user_chat_per_sec: 1.0, ..limits() }, 100);
        let now = Instant::now();
        join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
        join(&mut r, 2, id("w", Role::Viewer), &Outbox::new(100), now);
        join(&mut r, 3, id("h", Role::Host), &Outbox::new(100), now);
        assert!(r.publish(1, chat("a", ""), now, 0).is_ok());
        assert_eq!(r.publish(1, chat("b", ""), now, 0), Err(ErrorCode::RateLimited));
        assert!(r.publish(2, chat("c", ""), now, 0).is_ok(), "per user, not per room");
        assert!(r.publish(3, chat("d", ""), now, 0).is_ok());
        assert!(r.publish(3, chat("e", ""), now, 0).is_ok(), "hosts are not limited");
        assert!(r.publish(1, chat("f", ""), now + Duration::from_secs(1), 0).is_ok());
    }

    #[test]
    fn join_returns_recent_history_or_exactly_the_missed_events() {
        let mut r = room();
        let now = Instant::now();
        join(&mut r, 1, id("a", Role::Viewer), &Outbox::new(100), now);
        for _ in 0..8 {
            send(&mut r, 1, "m", now);
        }
        let resume = |r: &mut RoomState, last: Option<u64>| {
            r.join(2, id("b", Role::Viewer), Outbox::new(100), last.map(Resume::at), Filter::All, now, 0)
        };
        let j = resume(&mut r, Some(5));
        assert!(j.resumed);
        assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
        assert!(resume(&mut r, Some(3)).resumed, "seq 4.. is all still kept");
        let j = resume(&mut r, Some(2));
        assert!(!j.resumed, "seq 3 is gone");
        assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
        let j = resume(&mut r, Some(8));
        assert!(j.resumed && j.history.is_empty());
        assert!(!resume(&mut r, Some(99)).resumed, "a position from a future (or an earlier room)");
        let j = resume(&mut r, None);
        assert_eq!((j.current_seq, j.history.len(), j.resumed, j.epoch), (8, 3, false, 7));
        let at = |epoch| Some(Resume { last_seq: 5, epoch: Some(epoch) });
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), at(7), Filter::All, now, 0);
        assert!(j.resumed, "same incarnation");
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), at(6), Filter::All, now, 0);
        assert!(!j.resumed, "seq 5 of an earlier incarnation of the room");
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_sees_unflushed_events_in_its_history_not_twice() {
        let mut r = room();
        let t0 = Instant::now();
        let o = Outbox::new(100);
        join(&mut r, 1, id("a", Role::Viewer), &o, t0);
        send(&mut r, 1, "one", t0);
        r.flush(t0);
        send(&mut r, 1, "two", t0); // pending: within the window
        let late = Outbox::new(100);
        let j = join(&mut r, 2, id("b", Role::Viewer), &late, t0);
        assert_eq!(j.current_seq, 2);
        assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        r.flush(t0 + Duration::from_secs(1));
        assert!(late.is_empty(), "seq 2 came with the history, not again live");
        assert_eq!(seqs(&o).await, [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn host_only_members_get_host_events_and_advances_instead_of_gaps() {
        let mut r = room_with(limits(), 100);
        let now = Instant::now();
        let host_only = Outbox::new(100);
        join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
        join(&mut r, 2, id("h", Role::Host), &Outbox::new(100), now);
        r.join(3, id("f", Role::Viewer), host_only.clone(), None, Filter::HostOnly, now, 0);
        r.flush(now);
        send(&mut r, 1, "chat 1", now); // 1
        send(&mut r, 2, "host 2", now); // 2
        send(&mut r, 1, "chat 3", now); // 3
        send(&mut r, 1, "chat 4", now); // 4
        send(&mut r, 2, "host 5", now); // 5
        send(&mut r, 2, "host 6", now); // 6
        send(&mut r, 1, "chat 7", now); // 7
        r.flush(now);
        let got: Vec<String> = frames(&host_only)
            .await
            .into_iter()
            .map(|b| match b {
                v1::room_frame::Body::Event(e) => format!("event {}", e.seq),
                v1::room_frame::Body::Advance(a) => format!("advance {}", a.seq),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["advance 1", "event 2", "advance 4", "event 5", "event 6"]);
        // Its join history is filtered the same way.
        let j = r.join(3, id("f", Role::Viewer), Outbox::new(100), None, Filter::HostOnly, now, 0);
        assert_eq!(
            j.history.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [5, 6],
            "recent 3 = 5, 6, 7; 7 is chat"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn recall_by_sender_host_or_admin_removes_from_history() {
        let mut r = room_with(limits(), 100);
        let now = Instant::now();
        let o = Outbox::new(100);
        join(&mut r, 1, id("v", Role::Viewer), &o, now);
        join(&mut r, 2, id("w", Role::Viewer), &Outbox::new(100), now);
        join(&mut r, 3, id("h", Role::Host), &Outbox::new(100), now);
        let a = send(&mut r, 1, "oops", now);
        let b = send(&mut r, 1, "rude", now);
        assert_eq!(r.recall(2, &a.message_id, now, 0), Err(ErrorCode::Forbidden), "not someone else's");
        let rec = r.recall(1, &a.message_id, now, 0).unwrap();
        assert_eq!(rec.seq, 3);
        assert_eq!(r.recall(1, &a.message_id, now, 0), Err(ErrorCode::NotFound), "already gone");
        assert!(r.recall(3, &b.message_id, now, 0).is_ok(), "the host may");
        assert_eq!(r.recall(1, "nope", now, 0), Err(ErrorCode::NotFound));
        let j = r.join(9, id("z", Role::Viewer), Outbox::new(10), None, Filter::All, now, 0);
        let kinds: Vec<_> =
            j.history.iter().map(|e| (e.seq, matches!(e.kind, Some(Kind::Recall(_))))).collect();
        assert_eq!(kinds, [(3, true), (4, true)], "both messages left history; the recalls stay");
        r.flush(now);
        let frames = frames(&o).await;
        let recalls = frames
            .iter()
            .filter(
                |b| matches!(b, v1::room_frame::Body::Event(e) if matches!(e.kind, Some(Kind::Recall(_)))),
            )
            .count();
        assert_eq!(recalls, 2, "every member hears about the recall");
    }

    #[test]
    fn online_count_counts_present_users_once() {
        let mut r = room();
        let now = Instant::now();
        join(&mut r, 1, id("a", Role::Viewer), &Outbox::new(10), now);
        join(&mut r, 2, id("a", Role::Viewer), &Outbox::new(10), now);
        let j = join(&mut r, 3, id("b", Role::Viewer), &Outbox::new(10), now);
        assert_eq!(j.online_count, 2);
        r.set_present(3, false);
        assert_eq!(r.online_count(), 1);
        r.set_present(3, true);
        assert_eq!(r.online_count(), 2);
        r.leave(1);
        assert_eq!(r.online_count(), 2, "user a still has connection 2");
        r.leave(2);
        assert_eq!(r.online_count(), 1);
        assert!(!r.leave(2));
    }

    #[test]
    fn viewer_page_lists_hosts_first_then_recent_arrivals() {
        let mut r = room();
        let now = Instant::now();
        join(&mut r, 1, id("host", Role::Host), &Outbox::new(10), now);
        join(&mut r, 2, id("v1", Role::Viewer), &Outbox::new(10), now);
        join(&mut r, 3, id("v2", Role::Viewer), &Outbox::new(10), now);
        let j = join(&mut r, 4, id("v3", Role::Viewer), &Outbox::new(10), now);
        let names: Vec<_> = j.viewers.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(names, vec!["host", "v3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn online_count_is_pushed_at_most_once_per_interval() {
        let mut r = room_with(RoomLimits { entered_per_sec: 0, ..limits() }, 10);
        let now = Instant::now();
        let o = Outbox::new(10);
        join(&mut r, 1, id("a", Role::Viewer), &o, now);
        let due = r.online_due(now).unwrap();
        r.push_online(due, 0);
        assert_eq!(r.online_due(now), None, "nothing changed");
        join(&mut r, 2, id("b", Role::Viewer), &Outbox::new(10), now);
        assert_eq!(r.online_due(now), Some(due + Duration::from_secs(1)));
        let mut raw = Vec::new();
        let d = o.drain(&mut raw).await;
        let got = ServerDatagram::decode(d.online.unwrap()).unwrap();
        assert_eq!(got, ServerDatagram::OnlineCount { room: "r".into(), count: 1, server_time_ms: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn user_entered_is_ephemeral_sampled_and_not_sent_to_the_joiner() {
        let mut r = room_with(RoomLimits { entered_per_sec: 2, ..limits() }, 10);
        let now = Instant::now();
        let a = Outbox::new(100);
        join(&mut r, 1, id("a", Role::Viewer), &a, now);
        r.flush(now);
        let _ = frames(&a).await;
        for c in 2..10 {
            join(&mut r, c, id(&format!("u{c}"), Role::Viewer), &Outbox::new(100), now);
        }
        r.flush(now);
        let entered = entered_events(frames(&a).await);
        assert_eq!(entered.len(), 1, "a's own entry used one of the two tokens; one more got through");
        assert_eq!(entered[0].seq, 0);
        assert_eq!(entered[0].priority, v1::Priority::Low as i32);
        assert_eq!(r.current_seq(), 0, "ephemeral events take no sequence number");
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_storm_sends_members_one_batch_of_entries_not_a_push_per_newcomer() {
        let mut r = room_with(RoomLimits { entered_per_sec: 100, ..limits() }, 10);
        let t0 = Instant::now();
        let a = Outbox::new(100);
        join(&mut r, 1, id("a", Role::Viewer), &a, t0);
        r.flush(t0);
        let _ = frames(&a).await;
        for c in 2..7 {
            let at = t0 + Duration::from_millis(c);
            join(&mut r, c, id(&format!("u{c}"), Role::Viewer), &Outbox::new(100), at);
        }
        assert!(a.is_empty(), "a newcomer's join pushed pending entries to everyone");
        let due = r.flush_due(t0).expect("the entries are pending");
        r.flush(due);
        let entered = entered_events(frames(&a).await).len();
        assert_eq!(entered, 5, "all five entries, together");
    }

    #[tokio::test]
    async fn an_entry_and_the_newcomers_first_message_arrive_in_that_order() {
        let mut r = room();
        let now = Instant::now();
        let a = Outbox::new(100);
        join(&mut r, 1, id("a", Role::Viewer), &a, now);
        r.flush(now);
        let _ = frames(&a).await;
        join(&mut r, 2, id("b", Role::Viewer), &Outbox::new(100), now);
        send(&mut r, 2, "hi", now);
        join(&mut r, 3, id("c", Role::Viewer), &Outbox::new(100), now);
        r.flush(now);
        let kinds: Vec<_> = frames(&a)
            .await
            .into_iter()
            .filter_map(|b| match b {
                v1::room_frame::Body::Event(e) => match e.kind {
                    Some(Kind::UserEntered(u)) => {
                        Some(format!("entered {}", u.user.unwrap_or_default().user_id))
                    }
                    Some(Kind::Chat(c)) => Some(format!("chat {}", c.text)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["entered b", "chat hi", "entered c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_lags_one_member_and_not_the_others() {
        let mut r = room_with(limits(), 100);
        let now = Instant::now();
        let slow = Outbox::new(3);
        let fast = Outbox::new(100);
        join(&mut r, 1, id("s", Role::Viewer), &slow, now);
        join(&mut r, 2, id("f", Role::Viewer), &fast, now);
        r.flush(now);
        let _ = frames(&fast).await;
        r.take_stats();
        for _ in 0..6 {
            send(&mut r, 2, "x", now);
            r.flush(now);
        }
        let stats = r.take_stats();
        assert_eq!((stats.lagged_members, stats.lagged_events, stats.shed_low), (1, 3, 1));
        assert_eq!(seqs(&fast).await, [1, 2, 3, 4, 5, 6]);
        let mut raw = Vec::new();
        let d = slow.drain(&mut raw).await;
        assert_eq!(d.lagged, Some((4, 6)), "the user-entered event was shed first, then 4.. lost");
        assert_eq!(raw.len(), 3, "1..=3 still go out before the lag notice");
    }

    #[tokio::test]
    async fn leaves_and_rejoins_keep_every_remaining_member_subscribed() {
        let mut r = room();
        let now = Instant::now();
        let boxes: Vec<_> = (0..4).map(|_| Outbox::new(100)).collect();
        for (c, o) in boxes.iter().enumerate() {
            join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Host), o, now);
        }
        r.flush(now);
        for o in &boxes {
            frames(o).await;
        }
        // Leave from the front, the middle and the end of the member list.
        assert!(r.leave(0));
        send(&mut r, 1, "a", now);
        r.flush(now);
        assert!(r.leave(3));
        send(&mut r, 2, "b", now);
        r.flush(now);
        let again = Outbox::new(100);
        join(&mut r, 0, id("u0", Role::Host), &again, now);
        assert!(r.leave(1));
        send(&mut r, 2, "c", now);
        r.flush(now);
        assert_eq!(r.member_count(), 2);
        assert_eq!(seqs(&again).await, [3]);
        assert!(seqs(&boxes[0]).await.is_empty());
        assert_eq!(seqs(&boxes[2]).await, [1, 2, 3]);
        assert_eq!(seqs(&boxes[1]).await, [1, 2]);
        assert_eq!(seqs(&boxes[3]).await, [1]);
    }

    /// A room of 1,500 with a 20 ms base window: a 60 ms window, so a round
    /// is three ticks of 500 members.
    fn big_room(now: Instant) -> (RoomState, Vec<Arc<Outbox>>) {
        let mut r = room_with(RoomLimits { entered_per_sec: 0, ..limits() }, 100);
        let boxes: Vec<_> = (0..1_500).map(|_| Outbox::new(100)).collect();
        for (c, o) in boxes.iter().enumerate() {
            join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Viewer), o, now);
        }
        assert_eq!(r.batch_window(), Duration::from_millis(60));
        (r, boxes)
    }

    /// Ticks the room through every due tick up to `until`, as the room
    /// task does.
    fn run_until(r: &mut RoomState, from: Instant, until: Instant) {
        let mut now = from;
        while let Some(at) = r.flush_due(now).filter(|at| *at <= until) {
            r.tick(at);
            now = at;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_room_is_served_a_slice_per_tick_and_each_member_once_per_window() {
        let t0 = Instant::now();
        let (mut r, boxes) = big_room(t0);
        send(&mut r, 0, "one", t0);
        assert_eq!(r.flush_due(t0), Some(t0), "a quiet room starts at once");
        r.tick(t0);
        assert_eq!(boxes.iter().filter(|o| !o.is_empty()).count(), 500, "one slice per tick");
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(r.flush_due(t0), Some(t1), "the next slice one base window later");
        send(&mut r, 0, "two", t1 - Duration::from_millis(1));
        r.tick(t1);
        assert_eq!(boxes.iter().filter(|o| !o.is_empty()).count(), 1_000);
        r.tick(t1 + Duration::from_millis(20));
        assert_eq!(r.take_stats().pushes, 1_500, "one push per member in the round");
        // The first slice gets "two" in the next round, one window after
        // the first began; everyone else already has both.
        assert_eq!(r.flush_due(t1), Some(t0 + Duration::from_millis(60)));
        run_until(&mut r, t0, t0 + Duration::from_secs(1));
        assert_eq!(r.take_stats().pushes, 500);
        assert_eq!(r.flush_due(t0 + Duration::from_secs(1)), None, "all delivered");
        assert!(r.log.is_empty(), "the log is trimmed once every member has it");
        for o in &boxes {
            assert_eq!(seqs(o).await, [1, 2]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn newcomers_to_a_quiet_room_cost_each_member_about_one_packet_a_second() {
        let t0 = Instant::now();
        let mut r = room_with(RoomLimits { entered_per_sec: 100, ..limits() }, 10);
        let boxes: Vec<_> = (0..100).map(|_| Outbox::new(1_000)).collect();
        for (c, o) in boxes.iter().enumerate() {
            join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Viewer), o, t0);
        }
        // What the room task does: due rounds, and online counts on their own.
        let drive = |r: &mut RoomState, until: Instant| loop {
            let round = r.flush_due(until).filter(|at| *at <= until);
            let online = r.online_due(until).filter(|at| *at <= until);
            match (round, online) {
                (Some(at), None) => r.tick(at),
                (Some(at), Some(o)) if at <= o => r.tick(at),
                (_, Some(at)) => r.push_online(at, 0),
                (None, None) => break,
            }
        };
        let mut raw = Vec::new();
        let settled = t0 + Duration::from_secs(3);
        drive(&mut r, settled);
        let _ = boxes[0].try_drain(&mut raw);
        // Fifty newcomers over the next two seconds, one every 40 ms: member
        // 0's outbox is looked at after each, as its writer would.
        let mut wakeups = 0;
        for i in 0..50u64 {
            let now = settled + Duration::from_millis(40 * i);
            drive(&mut r, now);
            join(&mut r, 1_000 + i, id(&format!("n{i}"), Role::Viewer), &Outbox::new(1_000), now);
            wakeups += usize::from(boxes[0].try_drain(&mut raw).is_some());
        }
        drive(&mut r, settled + Duration::from_secs(2));
        wakeups += usize::from(boxes[0].try_drain(&mut raw).is_some());
        assert!(wakeups <= 3, "{wakeups} writes in two seconds for 50 entered notices and counts");
        let entered = raw.len();
        assert!(entered >= 50, "every newcomer's notice arrived ({entered} frames)");
    }

    #[tokio::test(start_paused = true)]
    async fn an_entered_notice_after_a_served_chat_waits_the_linger_and_one_beside_a_chat_the_window() {
        let t0 = Instant::now();
        let mut r = room();
        let boxes: Vec<_> = (0..3).map(|_| Outbox::new(100)).collect();
        for (c, o) in boxes.iter().enumerate() {
            join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Viewer), o, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        run_until(&mut r, t0, t1);
        send(&mut r, 0, "hello", t1);
        run_until(&mut r, t1, t1);
        r.push_online(t1, 0);
        assert!(r.flush_due(t1).is_none(), "the chat went out at once and the log is empty");
        // Only an entered notice waits: it may linger a second after the
        // chat's round, for the online count to travel with.
        let t2 = t1 + Duration::from_millis(5);
        join(&mut r, 10, id("late", Role::Viewer), &Outbox::new(100), t2);
        let linger = r.flush_due(t2).expect("the notice is due");
        assert!(linger >= t1 + Duration::from_millis(900), "due {:?} after the chat", linger - t1);
        // A chat beside it: the round follows one window after the last.
        send(&mut r, 1, "again", t2);
        assert_eq!(r.flush_due(t2), Some(t1 + r.batch_window()));
    }

    #[tokio::test(start_paused = true)]
    async fn late_ticks_do_not_stretch_the_round_or_the_next_one() {
        let t0 = Instant::now();
        let (mut r, _boxes) = big_room(t0);
        send(&mut r, 0, "one", t0);
        r.tick(t0);
        let late = t0 + Duration::from_millis(35);
        send(&mut r, 0, "two", late);
        r.tick(late);
        assert_eq!(r.flush_due(late), Some(t0 + Duration::from_millis(40)), "the last tick keeps its place");
        let end = t0 + Duration::from_millis(41);
        r.tick(end);
        assert!(r.round.is_none());
        // The first slice still needs "two": the next round is due one
        // window after the first began, and counts from then.
        assert_eq!(r.flush_due(end), Some(t0 + Duration::from_millis(60)));
        let next = t0 + Duration::from_millis(62);
        r.tick(next);
        assert_eq!(r.flush_due(next), Some(t0 + Duration::from_millis(80)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_moved_by_a_leave_mid_round_still_gets_every_event_once() {
        let t0 = Instant::now();
        let (mut r, boxes) = big_room(t0);
        send(&mut r, 1, "one", t0);
        r.tick(t0);
        // Slot 0 was served; the last member, not yet served, moves into it.
        assert!(r.leave(0));
        run_until(&mut r, t0, t0 + Duration::from_secs(1));
        assert!(r.log.is_empty());
        for o in &boxes[1..] {
            assert_eq!(seqs(o).await, [1]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_mid_round_has_unsent_events_in_its_history_and_not_again() {
        let t0 = Instant::now();
        let (mut r, boxes) = big_room(t0);
        send(&mut r, 0, "one", t0);
        r.tick(t0);
        let late = Outbox::new(100);
        let joined = join(&mut r, 9_999, id("late", Role::Viewer), &late, t0 + Duration::from_millis(5));
        assert_eq!(joined.current_seq, 1);
        assert_eq!(joined.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        send(&mut r, 0, "two", t0 + Duration::from_millis(10));
        run_until(&mut r, t0, t0 + Duration::from_secs(1));
        assert_eq!(seqs(&late).await, [2]);
        assert_eq!(seqs(&boxes[1_499]).await, [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_that_outgrows_its_bound_reaches_everyone_at_once() {
        let t0 = Instant::now();
        let (mut r, boxes) = big_room(t0);
        r.tick(t0);
        for i in 0..MAX_LOG as u64 {
            r.sequence(
                Kind::Chat(v1::Chat { text: format!("{i}"), ..Default::default() }),
                None,
                None,
                t0,
                0,
            );
        }
        assert_eq!(r.flush_due(t0), Some(t0));
        r.tick(t0);
        assert!(r.log.is_empty());
        assert_eq!(r.take_stats().pushes, boxes.len(), "every member, not one slice");
    }

    #[test]
    fn publish_requires_membership() {
        let mut r = room();
        assert_eq!(r.publish(9, chat("x", ""), Instant::now(), 0), Err(ErrorCode::NotJoined));
    }
}
