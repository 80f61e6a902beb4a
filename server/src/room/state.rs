//! One room as a plain state machine: it never awaits and never touches a
//! socket. The room task feeds it commands and the time; it answers and
//! pushes encoded frames into members' outboxes.
//!
//! **Invariant:** `publish` is the only place a sequence number is assigned,
//! and it appends to history and fans out in the same step, so every member
//! sees sequence numbers in order and without holes unless its own outbox
//! overflowed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::datagram::ServerDatagram;
use roomcast_protocol::{ErrorCode, RoomId, v1};
use tokio::time::Instant;

use super::fanout::Outbox;
use crate::auth::{Identity, Role};

/// Identifies a connection on this node.
pub type ConnId = u64;

/// Room tunables, taken from the node configuration.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    pub history_len: usize,
    pub join_history: usize,
    pub viewer_page: usize,
    pub online_push_interval: Duration,
}

/// A chat message as the connection validated it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub text: String,
    pub client_msg_id: String,
    pub media_ts_ms: Option<u64>,
}

#[derive(Debug)]
struct Member {
    identity: Identity,
    outbox: Arc<Outbox>,
    present: bool,
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

#[derive(Debug)]
pub struct RoomState {
    id: RoomId,
    /// Distinguishes message ids of this incarnation of the room from those
    /// of an earlier one with the same id.
    epoch: u64,
    limits: RoomLimits,
    seq: u64,
    history: VecDeque<v1::RoomEvent>,
    members: HashMap<ConnId, Member>,
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
}

impl RoomState {
    pub fn new(id: RoomId, epoch: u64, limits: RoomLimits) -> Self {
        Self {
            id,
            epoch,
            limits,
            seq: 0,
            history: VecDeque::new(),
            members: HashMap::new(),
            present_users: HashMap::new(),
            hosts: Vec::new(),
            recent: VecDeque::new(),
            dedup: Dedup::default(),
            ephemeral_counter: 0,
            online_sent: None,
            online_sent_at: None,
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

    /// Adds (or replaces) a member and answers with the room's snapshot. Its
    /// outbox receives every event sequenced after `Joined.current_seq`.
    pub fn join(
        &mut self,
        conn: ConnId,
        identity: Identity,
        outbox: Arc<Outbox>,
        last_seq: Option<u64>,
        now_ms: u64,
    ) -> v1::Joined {
        self.leave(conn);
        let user = identity.user_id.clone();
        let first_of_user = !self.present_users.contains_key(&user);
        if identity.role == Role::Host {
            self.hosts.push(conn);
        }
        let entered = identity.to_proto();
        self.members.insert(conn, Member { identity, outbox, present: true });
        *self.present_users.entry(user).or_default() += 1;
        self.recent.push_back(conn);
        if self.recent.len() > self.limits.viewer_page * 4 {
            self.recent.pop_front();
        }

        let (history, resumed) = self.history_after(last_seq);
        let joined = v1::Joined {
            room: self.id.to_string(),
            current_seq: self.seq,
            online_count: self.online_count(),
            viewers: self.viewer_page(),
            history,
            resumed,
        };
        if first_of_user {
            self.broadcast_ephemeral(
                v1::room_event::Kind::UserEntered(v1::UserEntered { user: Some(entered.clone()) }),
                Some(entered),
                v1::Priority::Low,
                now_ms,
                Some(conn),
            );
        }
        joined
    }

    /// History for a join: everything after `last_seq` when it is still in
    /// the window, otherwise the most recent `join_history` events.
    fn history_after(&self, last_seq: Option<u64>) -> (Vec<v1::RoomEvent>, bool) {
        if let Some(last) = last_seq {
            let oldest_kept = self.history.front().map_or(self.seq + 1, |e| e.seq);
            if last <= self.seq && last + 1 >= oldest_kept {
                let skip = (last + 1 - oldest_kept) as usize;
                return (self.history.iter().skip(skip).cloned().collect(), true);
            }
        }
        let skip = self.history.len().saturating_sub(self.limits.join_history);
        (self.history.iter().skip(skip).cloned().collect(), false)
    }

    /// Hosts first, then the most recent arrivals; one entry per user.
    fn viewer_page(&self) -> Vec<v1::User> {
        let mut seen = std::collections::HashSet::new();
        let mut page = Vec::new();
        let candidates = self.hosts.iter().chain(self.recent.iter().rev());
        for conn in candidates {
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
        m.outbox.close();
        if m.present {
            self.unpresent(&m.identity.user_id);
        }
        self.hosts.retain(|c| *c != conn);
        self.recent.retain(|c| *c != conn);
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

    /// Sequences a chat message from a member and fans it out.
    pub fn publish(
        &mut self,
        conn: ConnId,
        chat: ChatRequest,
        now_ms: u64,
    ) -> Result<v1::ChatAck, ErrorCode> {
        let member = self.members.get(&conn).ok_or(ErrorCode::NotJoined)?;
        let identity = member.identity.clone();
        if let Some(ack) = self.dedup.get(&identity.user_id, &chat.client_msg_id) {
            return Ok(ack.clone());
        }
        use v1::room_event::Kind;
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
        let event = self.sequence(kind, Some(identity.to_proto()), chat.media_ts_ms, now_ms);
        let ack = v1::ChatAck {
            room: self.id.to_string(),
            seq: event.seq,
            message_id: event.message_id.clone(),
            server_time_ms: now_ms,
        };
        self.dedup.insert(identity.user_id, chat.client_msg_id, ack.clone());
        Ok(ack)
    }

    /// Assigns the next sequence number, keeps the event in history and
    /// pushes its encoded frame to every member. The one place seq grows.
    fn sequence(
        &mut self,
        kind: v1::room_event::Kind,
        sender: Option<v1::User>,
        media_ts_ms: Option<u64>,
        now_ms: u64,
    ) -> v1::RoomEvent {
        self.seq += 1;
        let event = v1::RoomEvent {
            room: self.id.to_string(),
            seq: self.seq,
            message_id: format!("{:x}-{}", self.epoch, self.seq),
            server_time_ms: now_ms,
            media_ts_ms,
            priority: v1::Priority::High as i32,
            sender,
            kind: Some(kind),
        };
        let frame = encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event.clone())) });
        self.fan_out(&frame, None);
        self.history.push_back(event.clone());
        while self.history.len() > self.limits.history_len {
            self.history.pop_front();
        }
        event
    }

    fn broadcast_ephemeral(
        &mut self,
        kind: v1::room_event::Kind,
        sender: Option<v1::User>,
        priority: v1::Priority,
        now_ms: u64,
        except: Option<ConnId>,
    ) {
        self.ephemeral_counter += 1;
        let event = v1::RoomEvent {
            room: self.id.to_string(),
            seq: 0,
            message_id: format!("{:x}-e{}", self.epoch, self.ephemeral_counter),
            server_time_ms: now_ms,
            media_ts_ms: None,
            priority: priority as i32,
            sender,
            kind: Some(kind),
        };
        let frame = encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event)) });
        self.fan_out(&frame, except);
    }

    /// The per-member work: one queue push of shared bytes.
    fn fan_out(&self, frame: &Bytes, except: Option<ConnId>) {
        for (conn, m) in &self.members {
            if Some(*conn) != except {
                m.outbox.push(frame.clone());
            }
        }
    }

    /// When the online count should next be pushed, if it changed.
    pub fn online_due(&self) -> Option<Instant> {
        if self.online_sent == Some(self.online_count()) || self.members.is_empty() {
            return None;
        }
        Some(match self.online_sent_at {
            Some(at) => at + self.limits.online_push_interval,
            None => Instant::now(),
        })
    }

    /// Pushes the online count datagram to every member.
    pub fn push_online(&mut self, now: Instant, now_ms: u64) {
        let count = self.online_count();
        let datagram =
            ServerDatagram::OnlineCount { room: self.id.to_string(), count, server_time_ms: now_ms }.encode();
        for m in self.members.values() {
            m.outbox.set_online(datagram.clone());
        }
        self.online_sent = Some(count);
        self.online_sent_at = Some(now);
    }

    #[cfg(test)]
    pub(crate) fn history_seqs(&self) -> Vec<u64> {
        self.history.iter().map(|e| e.seq).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::codec::FrameDecoder;

    fn limits() -> RoomLimits {
        RoomLimits {
            history_len: 5,
            join_history: 3,
            viewer_page: 2,
            online_push_interval: Duration::from_secs(1),
        }
    }

    fn id(user: &str, role: Role) -> Identity {
        Identity { user_id: user.into(), name: user.to_uppercase().into(), role }
    }

    fn chat(text: &str, cid: &str) -> ChatRequest {
        ChatRequest { text: text.into(), client_msg_id: cid.into(), media_ts_ms: None }
    }

    async fn events(o: &Outbox) -> Vec<v1::RoomEvent> {
        let mut frames = Vec::new();
        o.drain(&mut frames).await;
        let mut dec = FrameDecoder::new(1 << 20);
        for f in frames {
            dec.extend(&f);
        }
        let mut out = Vec::new();
        while let Some(v1::RoomFrame { body: Some(v1::room_frame::Body::Event(e)) }) =
            dec.next_message().unwrap()
        {
            out.push(e);
        }
        out
    }

    fn room() -> RoomState {
        RoomState::new(RoomId::new("r").unwrap(), 7, limits())
    }

    #[tokio::test]
    async fn sequence_numbers_are_consecutive_and_shared_by_all_members() {
        let mut r = room();
        let a = Outbox::new(100);
        let b = Outbox::new(100);
        r.join(1, id("a", Role::Viewer), a.clone(), None, 0);
        r.join(2, id("b", Role::Viewer), b.clone(), None, 0);
        for i in 0..4 {
            let ack = r.publish(if i % 2 == 0 { 1 } else { 2 }, chat("hi", ""), 0).unwrap();
            assert_eq!(ack.seq, i + 1);
        }
        let ea: Vec<_> = events(&a).await.into_iter().filter(|e| e.seq > 0).map(|e| e.seq).collect();
        let eb: Vec<_> = events(&b).await.into_iter().filter(|e| e.seq > 0).map(|e| e.seq).collect();
        assert_eq!(ea, vec![1, 2, 3, 4]);
        assert_eq!(ea, eb);
    }

    #[tokio::test]
    async fn kind_follows_the_senders_role() {
        let mut r = room();
        let o = Outbox::new(100);
        r.join(1, id("v", Role::Viewer), o.clone(), None, 0);
        r.join(2, id("h", Role::Host), Outbox::new(100), None, 0);
        r.join(3, id("x", Role::Admin), Outbox::new(100), None, 0);
        r.publish(1, chat("a", ""), 0).unwrap();
        r.publish(2, chat("b", ""), 0).unwrap();
        r.publish(3, chat("c", ""), 0).unwrap();
        let kinds: Vec<_> =
            events(&o).await.into_iter().filter(|e| e.seq > 0).map(|e| e.kind.unwrap()).collect();
        assert!(matches!(kinds[0], v1::room_event::Kind::Chat(_)));
        assert!(matches!(kinds[1], v1::room_event::Kind::HostMessage(_)));
        assert!(matches!(kinds[2], v1::room_event::Kind::SystemNotice(_)));
    }

    #[test]
    fn duplicate_client_msg_id_is_sequenced_once() {
        let mut r = room();
        r.join(1, id("a", Role::Viewer), Outbox::new(100), None, 0);
        let first = r.publish(1, chat("hi", "c-1"), 0).unwrap();
        let again = r.publish(1, chat("hi", "c-1"), 0).unwrap();
        assert_eq!(first, again);
        assert_eq!(r.current_seq(), 1);
        // Without an id, every send is a new message.
        r.publish(1, chat("hi", ""), 0).unwrap();
        r.publish(1, chat("hi", ""), 0).unwrap();
        assert_eq!(r.current_seq(), 3);
    }

    #[test]
    fn history_is_bounded_and_resume_returns_exactly_the_missed_events() {
        let mut r = room();
        r.join(1, id("a", Role::Viewer), Outbox::new(100), None, 0);
        for _ in 0..8 {
            r.publish(1, chat("m", ""), 0).unwrap();
        }
        assert_eq!(r.history_seqs(), vec![4, 5, 6, 7, 8]);
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), Some(5), 0);
        assert!(j.resumed);
        assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), Some(3), 0);
        assert!(j.resumed, "seq 4.. is all still kept");
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), Some(2), 0);
        assert!(!j.resumed, "seq 3 is gone");
        assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), Some(8), 0);
        assert!(j.resumed && j.history.is_empty());
        let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), Some(99), 0);
        assert!(!j.resumed, "a position from a future (or an earlier room) is not a resume");
        let j = r.join(3, id("c", Role::Viewer), Outbox::new(100), None, 0);
        assert_eq!((j.current_seq, j.history.len(), j.resumed), (8, 3, false));
    }

    #[test]
    fn online_count_counts_present_users_once() {
        let mut r = room();
        r.join(1, id("a", Role::Viewer), Outbox::new(10), None, 0);
        r.join(2, id("a", Role::Viewer), Outbox::new(10), None, 0);
        let j = r.join(3, id("b", Role::Viewer), Outbox::new(10), None, 0);
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
        r.join(1, id("host", Role::Host), Outbox::new(10), None, 0);
        r.join(2, id("v1", Role::Viewer), Outbox::new(10), None, 0);
        r.join(3, id("v2", Role::Viewer), Outbox::new(10), None, 0);
        let j = r.join(4, id("v3", Role::Viewer), Outbox::new(10), None, 0);
        let names: Vec<_> = j.viewers.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(names, vec!["host", "v3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn online_count_is_pushed_at_most_once_per_interval() {
        let mut r = room();
        let o = Outbox::new(10);
        r.join(1, id("a", Role::Viewer), o.clone(), None, 0);
        let due = r.online_due().unwrap();
        r.push_online(due, 0);
        assert_eq!(r.online_due(), None, "nothing changed");
        r.join(2, id("b", Role::Viewer), Outbox::new(10), None, 0);
        assert_eq!(r.online_due(), Some(due + Duration::from_secs(1)));
        let mut frames = Vec::new();
        let d = o.drain(&mut frames).await;
        let got = ServerDatagram::decode(d.online.unwrap()).unwrap();
        assert_eq!(got, ServerDatagram::OnlineCount { room: "r".into(), count: 1, server_time_ms: 0 });
    }

    #[tokio::test]
    async fn user_entered_is_ephemeral_and_not_sent_to_the_joiner() {
        let mut r = room();
        let a = Outbox::new(10);
        let b = Outbox::new(10);
        r.join(1, id("a", Role::Viewer), a.clone(), None, 0);
        r.join(2, id("b", Role::Viewer), b.clone(), None, 0);
        let ea = events(&a).await;
        assert_eq!(ea.len(), 1);
        assert_eq!(ea[0].seq, 0);
        assert!(matches!(ea[0].kind, Some(v1::room_event::Kind::UserEntered(_))));
        assert_eq!(r.current_seq(), 0, "ephemeral events take no sequence number");
        assert!(r.history_seqs().is_empty());
        let mut none = Vec::new();
        b.push(Bytes::from_static(b"probe"));
        b.drain(&mut none).await;
        assert_eq!(none, vec![Bytes::from_static(b"probe")]);
    }

    #[test]
    fn publish_requires_membership() {
        let mut r = room();
        assert_eq!(r.publish(9, chat("x", ""), 0), Err(ErrorCode::NotJoined));
    }
}
