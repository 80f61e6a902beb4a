//! Commands from the platform (the admin API) rather than from a member:
//! publishing as the platform, recalling any message, removing a user,
//! closing the room, and the room's figures.

use bytes::Bytes;
use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::{ErrorCode, v1};
use tokio::time::Instant;
use v1::room_event::Kind;

use super::super::archive::ArchiveSink;
use super::RoomState;
use super::admission::Admit;
use crate::auth::{Identity, Role};

/// The platform's own sender, for de-duplicating its messages' client ids.
const PLATFORM: &str = "\u{0}platform";

/// What the platform says in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKind {
    /// A `HostMessage`, as if from the room's host.
    Host,
    /// A `SystemNotice`.
    System,
}

/// A message published by the platform.
#[derive(Debug, Clone)]
pub struct AdminMessage {
    pub kind: AdminKind,
    pub text: String,
    pub media_ts_ms: Option<u64>,
    /// Retries with the same id are answered with the first answer.
    pub client_msg_id: String,
    /// Shown as the sender; `None` for the platform itself.
    pub sender: Option<v1::User>,
}

/// A room's figures for the platform.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomInfo {
    pub online: u64,
    pub members: u64,
    /// Distinct users by role.
    pub viewers: u64,
    pub hosts: u64,
    pub admins: u64,
    pub current_seq: u64,
    pub epoch: u64,
    /// The requested page of present users, and how many there are.
    pub page: Vec<v1::User>,
    pub page_total: u64,
    /// Likes counted in the room.
    pub like_total: u64,
}

impl RoomState {
    /// Sequences a message from the platform. It passes no rate, budget or
    /// banned-words check: the platform says what it means.
    pub fn publish_admin(&mut self, msg: AdminMessage, now: Instant, now_ms: u64) -> v1::ChatAck {
        let platform = Identity { user_id: PLATFORM.into(), name: "".into(), role: Role::Admin };
        if let Admit::Repeat(ack) = self.admission.chat(&platform, &msg.client_msg_id, now) {
            return ack;
        }
        let kind = match msg.kind {
            AdminKind::Host => Kind::HostMessage(v1::HostMessage {
                text: msg.text,
                client_msg_id: msg.client_msg_id.clone(),
            }),
            AdminKind::System => Kind::SystemNotice(v1::SystemNotice { text: msg.text }),
        };
        let event = self.sequence(kind, msg.sender, msg.media_ts_ms, now, now_ms);
        let ack = v1::ChatAck {
            room: self.id.to_string(),
            seq: event.seq,
            message_id: event.message_id,
            server_time_ms: now_ms,
            broadcast: true,
        };
        self.admission.answered(platform.user_id, msg.client_msg_id, ack.clone());
        ack
    }

    /// Recalls any kept message.
    pub fn recall_admin(
        &mut self,
        message_id: &str,
        now: Instant,
        now_ms: u64,
    ) -> Result<v1::Recalled, ErrorCode> {
        let target = self.log.history.find(message_id).ok_or(ErrorCode::NotFound)?;
        if matches!(target.kind, Some(Kind::Recall(_))) {
            return Err(ErrorCode::NotFound);
        }
        self.log.history.remove(message_id);
        let kind = Kind::Recall(v1::RecallNotice { message_id: message_id.to_string() });
        let event = self.sequence(kind, None, None, now, now_ms);
        Ok(v1::Recalled { room: self.id.to_string(), message_id: message_id.to_string(), seq: event.seq })
    }

    /// Removes every connection of `user`, each stream ending with a
    /// `Removed` notice after what was already queued for it. Returns how
    /// many connections were removed.
    pub fn remove_user(&mut self, user: &str, code: ErrorCode, reason: &str) -> usize {
        let conns = self.roster.conns_of(user);
        let notice = removed(code, reason);
        for conn in &conns {
            self.remove_with(*conn, notice.clone());
        }
        conns.len()
    }

    /// Closes the room: a last `RoomStatus` (CLOSED) is sequenced and pushed
    /// to every member at once, then every member is removed with a
    /// `ROOM_CLOSED` notice. Returns the final sequence number.
    pub fn close(&mut self, reason: &str, now: Instant, now_ms: u64) -> u64 {
        let status = v1::RoomStatus { state: v1::RoomState::Closed as i32, reason: reason.to_string() };
        let seq = self.sequence(Kind::RoomStatus(status), None, None, now, now_ms).seq;
        self.remove_all_closed(reason, now);
        seq
    }

    /// Removes every member with a `ROOM_CLOSED` notice, after everything
    /// already sequenced: the room closed here, or on another node of the
    /// fleet (its closing status came in).
    pub fn remove_all_closed(&mut self, reason: &str, now: Instant) {
        self.flush(now);
        let notice = removed(ErrorCode::RoomClosed, reason);
        for conn in self.roster.conns() {
            self.remove_with(conn, notice.clone());
        }
    }

    /// Goes on as a new incarnation `epoch`, numbered from 1, because the
    /// fleet's Redis lost the room's numbering (see `cluster/sequence.lua`).
    /// Members keep what they were sent: each member's stream ends with a
    /// `Lagged` frame just after the old numbering, so its app rejoins, finds
    /// another epoch and is told its resume is incomplete, as after a node
    /// restart. History starts empty; the archive keeps the old
    /// incarnation's file and starts `archive`.
    pub(crate) fn renumber(&mut self, epoch: u64, archive: Option<ArchiveSink>, now: Instant) {
        self.flush(now);
        let next = self.log.seq + 1;
        let lagged = v1::room_frame::Body::Lagged(v1::Lagged { from_seq: next, to_seq: next });
        let lagged = encode_frame(&v1::RoomFrame { body: Some(lagged) });
        for conn in self.roster.conns() {
            if let Some(m) = self.roster.get(conn) {
                m.outbox.close_with(lagged.clone());
            }
        }
        self.log.renumber(epoch, archive);
        // Redis dropped the old incarnation's totals with its numbering.
        self.ranking = super::ranking::Ranking::default();
    }

    /// The room's figures, with page `offset..offset + limit` of its
    /// present users.
    pub fn info(&self, offset: usize, limit: usize) -> RoomInfo {
        let [viewers, hosts, admins] = self.roster.role_counts();
        let (page, total) = self.roster.viewers(offset, limit);
        RoomInfo {
            online: self.online_count(),
            members: self.roster.len() as u64,
            viewers,
            hosts,
            admins,
            current_seq: self.log.seq,
            epoch: self.log.epoch,
            page,
            page_total: total as u64,
            like_total: self.like_total(),
        }
    }

    /// Who `conn` is, while it is a member.
    pub fn member(&self, conn: super::ConnId) -> Option<&Identity> {
        self.roster.get(conn).map(|m| &m.identity)
    }

    /// Every member's connection and identity.
    pub fn members(&self) -> Vec<(super::ConnId, Identity)> {
        self.roster.conns().into_iter().filter_map(|c| self.member(c).map(|i| (c, i.clone()))).collect()
    }

    fn remove_with(&mut self, conn: super::ConnId, notice: Bytes) {
        if let Some(m) = self.roster.remove(conn) {
            m.outbox.close_with(notice);
        }
    }
}

fn removed(code: ErrorCode, reason: &str) -> Bytes {
    let body = v1::room_frame::Body::Removed(v1::Removed {
        code: code.to_proto() as i32,
        reason: reason.to_string(),
    });
    encode_frame(&v1::RoomFrame { body: Some(body) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use roomcast_protocol::RoomId;

    use super::super::{Filter, RoomLimits};
    use super::*;
    use crate::room::fanout::Outbox;
    use crate::room::history::HistoryLog;

    fn room() -> RoomState {
        let limits = RoomLimits {
            join_history: 3,
            viewer_page: 10,
            online_push_interval: Duration::from_secs(1),
            batch_window: Duration::ZERO,
            max_batch_window: Duration::ZERO,
            chat_budget_per_sec: 1,
            user_chat_per_sec: 1.0,
            entered_per_sec: 0,
            combo_window: Duration::from_secs(3),
        };
        RoomState::new(RoomId::new("r").unwrap(), 7, limits, HistoryLog::new(100, Duration::from_secs(60)))
    }

    fn who(user: &str, role: Role) -> Identity {
        Identity { user_id: user.into(), name: user.into(), role }
    }

    async fn bodies(o: &Outbox) -> (Vec<v1::room_frame::Body>, bool) {
        let mut raw = Vec::new();
        let d = o.drain(&mut raw).await;
        raw.extend(d.last);
        let mut dec = roomcast_protocol::codec::FrameDecoder::new(1 << 20);
        raw.iter().for_each(|f| dec.extend(f));
        let mut out = Vec::new();
        while let Some(v1::RoomFrame { body: Some(b) }) = dec.next_message().unwrap() {
            out.push(b);
        }
        (out, d.closed)
    }

    #[tokio::test(start_paused = true)]
    async fn the_platform_publishes_past_the_budget_once_per_client_id() {
        let mut r = room();
        let now = Instant::now();
        let msg = |id: &str| AdminMessage {
            kind: AdminKind::System,
            text: "maintenance at noon".into(),
            media_ts_ms: Some(5),
            client_msg_id: id.into(),
            sender: None,
        };
        let a = r.publish_admin(msg("n1"), now, 0);
        let b = r.publish_admin(msg("n2"), now, 0);
        assert_eq!((a.seq, b.seq), (1, 2), "no chat budget or rate for the platform");
        assert_eq!(r.publish_admin(msg("n1"), now, 0), a, "a retry is answered, not sequenced");
        assert_eq!(r.current_seq(), 2);
        assert_eq!(r.recall_admin(&a.message_id, now, 0).map(|x| x.seq), Ok(3));
        assert_eq!(r.recall_admin(&a.message_id, now, 0), Err(ErrorCode::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_user_loses_every_connection_with_a_notice_and_others_stay() {
        let mut r = room();
        let now = Instant::now();
        let (a1, a2, b) = (Outbox::new(10), Outbox::new(10), Outbox::new(10));
        r.join(1, who("a", Role::Viewer), a1.clone(), None, Filter::All, now, 0);
        r.join(2, who("a", Role::Viewer), a2.clone(), None, Filter::All, now, 0);
        r.join(3, who("b", Role::Viewer), b.clone(), None, Filter::All, now, 0);
        assert_eq!(r.remove_user("a", ErrorCode::Banned, "spam"), 2);
        assert_eq!(r.member_count(), 1);
        for o in [&a1, &a2] {
            let (frames, closed) = bodies(o).await;
            assert!(closed);
            assert!(
                matches!(frames.last(), Some(v1::room_frame::Body::Removed(x)) if x.code == ErrorCode::Banned.to_proto() as i32 && x.reason == "spam"),
                "{frames:?}"
            );
        }
        assert!(!b.is_done());
        assert_eq!(r.remove_user("nobody", ErrorCode::Banned, ""), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_sends_a_final_status_then_removes_everyone() {
        let mut r = room();
        let now = Instant::now();
        let (h, v) = (Outbox::new(10), Outbox::new(10));
        r.join(1, who("h", Role::Host), h.clone(), None, Filter::HostOnly, now, 0);
        r.join(2, who("v", Role::Viewer), v.clone(), None, Filter::All, now, 0);
        let info = r.info(0, 10);
        assert_eq!((info.viewers, info.hosts, info.admins, info.page_total), (1, 1, 0, 2));
        assert_eq!(info.page[0].user_id, "h", "hosts first");
        assert_eq!(r.info(1, 10).page.len(), 1, "paged");
        assert_eq!(r.close("the show is over", now, 0), 1);
        assert!(r.is_empty());
        for o in [&h, &v] {
            let (frames, closed) = bodies(o).await;
            assert!(closed);
            let n = frames.len();
            assert!(n >= 2, "{frames:?}");
            assert!(matches!(&frames[n - 2], v1::room_frame::Body::Event(e)
                if e.seq == 1 && matches!(&e.kind, Some(Kind::RoomStatus(s)) if s.state == v1::RoomState::Closed as i32)));
            assert!(
                matches!(&frames[n - 1], v1::room_frame::Body::Removed(x) if x.code == ErrorCode::RoomClosed.to_proto() as i32)
            );
        }
    }
}
