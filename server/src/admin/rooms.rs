//! Rooms: list (busiest first), one room's state and viewer page, history
//! by sequence or media range, open and close.

use axum::Json;
use axum::extract::State;
use roomcast_protocol::v1;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use super::errors::{ApiError, ApiResult, ErrorBody, OptionalJsonBody, PathParams, QueryParams, room_id};
use crate::room::{HistoryRange, Lifecycle};

/// Most rooms one list answer carries.
const MAX_LIST: usize = 1000;
/// Most viewers one room-info answer carries.
const MAX_VIEWER_PAGE: usize = 500;
/// Most events one history answer carries (the room's page cap).
const MAX_HISTORY: u32 = 500;
/// Longest close reason, in bytes.
pub(super) const MAX_REASON_BYTES: usize = 256;

/// A room's lifecycle, as the platform decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomStateName {
    /// Neither opened nor closed: joining creates the room, unless the node
    /// requires rooms to be opened first.
    Auto,
    Open,
    /// Joins are refused with `ROOM_CLOSED` until the room is opened again.
    Closed,
}

impl From<Lifecycle> for RoomStateName {
    fn from(l: Lifecycle) -> Self {
        match l {
            Lifecycle::Auto => Self::Auto,
            Lifecycle::Open => Self::Open,
            Lifecycle::Closed => Self::Closed,
        }
    }
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Viewer,
    Host,
    Admin,
    Unspecified,
}

impl RoleName {
    fn from_proto(role: i32) -> Self {
        match v1::Role::try_from(role) {
            Ok(v1::Role::Viewer) => Self::Viewer,
            Ok(v1::Role::Host) => Self::Host,
            Ok(v1::Role::Admin) => Self::Admin,
            _ => Self::Unspecified,
        }
    }
}

/// A user as rooms show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub user_id: String,
    pub display_name: String,
    pub role: RoleName,
}

impl From<&v1::User> for User {
    fn from(u: &v1::User) -> Self {
        Self {
            user_id: u.user_id.clone(),
            display_name: u.display_name.clone(),
            role: RoleName::from_proto(u.role),
        }
    }
}

/// One room in the list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomSummary {
    pub room: String,
    /// Members present now (heartbeating).
    pub online: u64,
    /// Members joined, present or not.
    pub members: u64,
    /// The room's last sequence number.
    pub current_seq: u64,
    pub state: RoomStateName,
}

impl From<crate::room::RoomSummary> for RoomSummary {
    fn from(r: crate::room::RoomSummary) -> Self {
        Self {
            room: r.room.to_string(),
            online: r.online,
            members: r.members,
            current_seq: r.current_seq,
            state: r.lifecycle.into(),
        }
    }
}

/// The node's rooms, busiest (most online) first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<RoomSummary>,
    /// Rooms on the node; more than `rooms` holds when `limit` cut it.
    pub total: usize,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most rooms to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists the node's rooms, busiest first.
#[utoipa::path(
    get,
    path = "/v1/rooms",
    tag = "rooms",
    params(ListQuery),
    responses((status = 200, description = "The rooms, most online first", body = RoomList))
)]
pub(super) async fn list(
    State(state): State<AdminState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<RoomList>> {
    let limit = bounded(q.limit, 100, MAX_LIST, "limit")?;
    let mut rooms = state.rooms.list();
    let total = rooms.len();
    rooms.truncate(limit);
    let rooms = rooms.into_iter().map(RoomSummary::from).collect();
    Ok(Json(RoomList { rooms, total }))
}

/// Distinct members per role.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleCounts {
    pub viewers: u64,
    pub hosts: u64,
    pub admins: u64,
}

/// A room's state and one page of the users present in it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomInfo {
    pub room: String,
    pub online: u64,
    pub members: u64,
    pub by_role: RoleCounts,
    pub current_seq: u64,
    /// Changes when the room is recreated; a client resuming across epochs
    /// starts over.
    pub epoch: u64,
    pub state: RoomStateName,
    /// Likes counted in the room while it has been live.
    pub like_total: u64,
    /// The viewer list: users present, from `offset`, at most `limit`.
    pub users: Vec<User>,
    /// Users present, for paging.
    pub users_total: u64,
    pub offset: usize,
    pub limit: usize,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InfoQuery {
    /// First user of the page (default 0).
    offset: Option<usize>,
    /// Users per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// One gifter in a room's ranking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RankEntry {
    pub user: Option<User>,
    /// Value given in the room during this live.
    pub value: u64,
}

/// A room's gift ranking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ranking {
    pub room: String,
    /// Highest value first; every gifter of this live.
    pub entries: Vec<RankEntry>,
}

/// A live room's whole gift ranking for the current live (members see the
/// top 10, at most every 2 s).
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/ranking",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "The ranking", body = Ranking),
        (status = 404, description = "No such room on this node (`NOT_FOUND`)", body = ErrorBody)
    )
)]
pub(super) async fn ranking(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
) -> ApiResult<Json<Ranking>> {
    let room = room_id(&room)?;
    let entries = state.rooms.ranking(&room).await?;
    let entries =
        entries.iter().map(|e| RankEntry { user: e.user.as_ref().map(User::from), value: e.value }).collect();
    Ok(Json(Ranking { room: room.to_string(), entries }))
}

/// A live room's online count, members per role, sequence, state and a
/// page of its viewer list.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id"), InfoQuery),
    responses(
        (status = 200, description = "The room", body = RoomInfo),
        (status = 404, description = "No such room on this node (`NOT_FOUND`)", body = ErrorBody)
    )
)]
pub(super) async fn info(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
    QueryParams(q): QueryParams<InfoQuery>,
) -> ApiResult<Json<RoomInfo>> {
    let room = room_id(&room)?;
    let offset = q.offset.unwrap_or(0);
    let limit = bounded(q.limit, 50, MAX_VIEWER_PAGE, "limit")?;
    let (i, lifecycle) = state.rooms.info(&room, offset, limit).await?;
    Ok(Json(RoomInfo {
        room: room.to_string(),
        online: i.online,
        members: i.members,
        by_role: RoleCounts { viewers: i.viewers, hosts: i.hosts, admins: i.admins },
        current_seq: i.current_seq,
        epoch: i.epoch,
        state: lifecycle.into(),
        like_total: i.like_total,
        users: i.page.iter().map(User::from).collect(),
        users_total: i.page_total,
        offset,
        limit,
    }))
}

/// What an event is, with what it carries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Chat {
        text: String,
        client_msg_id: String,
    },
    HostMessage {
        text: String,
        client_msg_id: String,
    },
    SystemNotice {
        text: String,
    },
    /// A recall notice, naming the message recalled.
    Recall {
        message_id: String,
    },
    RoomStatus {
        state: Option<RoomStateName>,
        reason: String,
    },
    UserEntered {
        user: Option<User>,
    },
    /// A gift (the sender is the event's `sender`); `value` is price × count.
    Gift {
        gift_id: String,
        name: String,
        count: u32,
        value: u64,
        combo_id: String,
        combo_count: u32,
    },
    /// A live-quiz question (the correct option is not in it).
    QuizQuestion {
        quiz_id: String,
        question_id: String,
        index: u32,
        text: String,
        options: Vec<String>,
        closes_at_ms: u64,
    },
    /// A question's reveal.
    QuizResult {
        quiz_id: String,
        question_id: String,
        index: u32,
        correct_option: u32,
        counts: Vec<u64>,
        remaining: u64,
    },
    /// A kind this API does not know yet.
    Unknown,
}

/// A sequenced room event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub seq: u64,
    pub message_id: String,
    pub server_time_ms: u64,
    pub media_ts_ms: Option<u64>,
    /// Absent for events the node or the platform originates.
    pub sender: Option<User>,
    pub body: EventBody,
}

impl From<&v1::RoomEvent> for Event {
    fn from(e: &v1::RoomEvent) -> Self {
        use v1::room_event::Kind;
        let body = match &e.kind {
            Some(Kind::Chat(c)) => {
                EventBody::Chat { text: c.text.clone(), client_msg_id: c.client_msg_id.clone() }
            }
            Some(Kind::HostMessage(h)) => {
                EventBody::HostMessage { text: h.text.clone(), client_msg_id: h.client_msg_id.clone() }
            }
            Some(Kind::SystemNotice(n)) => EventBody::SystemNotice { text: n.text.clone() },
            Some(Kind::Recall(r)) => EventBody::Recall { message_id: r.message_id.clone() },
            Some(Kind::RoomStatus(s)) => EventBody::RoomStatus {
                state: match v1::RoomState::try_from(s.state) {
                    Ok(v1::RoomState::Open) => Some(RoomStateName::Open),
                    Ok(v1::RoomState::Closed) => Some(RoomStateName::Closed),
                    _ => None,
                },
                reason: s.reason.clone(),
            },
            Some(Kind::UserEntered(u)) => EventBody::UserEntered { user: u.user.as_ref().map(User::from) },
            Some(Kind::Gift(g)) => EventBody::Gift {
                gift_id: g.gift_id.clone(),
                name: g.name.clone(),
                count: g.count,
                value: g.value,
                combo_id: g.combo_id.clone(),
                combo_count: g.combo_count,
            },
            Some(Kind::QuizQuestion(q)) => EventBody::QuizQuestion {
                quiz_id: q.quiz_id.clone(),
                question_id: q.question_id.clone(),
                index: q.index,
                text: q.text.clone(),
                options: q.options.clone(),
                closes_at_ms: q.closes_at_ms,
            },
            Some(Kind::QuizResult(r)) => EventBody::QuizResult {
                quiz_id: r.quiz_id.clone(),
                question_id: r.question_id.clone(),
                index: r.index,
                correct_option: r.correct_option,
                counts: r.counts.clone(),
                remaining: r.remaining,
            },
            // Rankings are ephemeral and never kept in history.
            Some(Kind::Ranking(_)) | None => EventBody::Unknown,
        };
        Self {
            seq: e.seq,
            message_id: e.message_id.clone(),
            server_time_ms: e.server_time_ms,
            media_ts_ms: e.media_ts_ms,
            sender: e.sender.as_ref().map(User::from),
            body,
        }
    }
}

/// A page of a room's kept events, in sequence order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub room: String,
    pub events: Vec<Event>,
    /// The oldest sequence number the room still keeps (0: none kept).
    pub oldest_seq: u64,
    /// More events matched than this answer holds: ask again from the last
    /// one's `seq` + 1.
    pub truncated: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// First sequence number (with `to_seq`, or alone: to the newest).
    from_seq: Option<u64>,
    /// Last sequence number, inclusive.
    to_seq: Option<u64>,
    /// Earliest media timestamp, ms (with `to_ms`, or alone: to the end).
    from_ms: Option<u64>,
    /// Latest media timestamp, ms, inclusive.
    to_ms: Option<u64>,
    /// Most events, 1 to 500 (default 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

impl HistoryQuery {
    fn range(&self) -> ApiResult<HistoryRange> {
        let seq = self.from_seq.is_some() || self.to_seq.is_some();
        let media = self.from_ms.is_some() || self.to_ms.is_some();
        let range = match (seq, media) {
            (true, true) => return Err(ApiError::invalid("ask by sequence or by media time, not both")),
            (false, false) => HistoryRange::Latest,
            (true, false) => {
                HistoryRange::Seq { from: self.from_seq.unwrap_or(1), to: self.to_seq.unwrap_or(u64::MAX) }
            }
            (false, true) => HistoryRange::Media {
                from_ms: self.from_ms.unwrap_or(0),
                to_ms: self.to_ms.unwrap_or(u64::MAX),
            },
        };
        match range {
            HistoryRange::Seq { from, to } if from > to => Err(ApiError::invalid("from_seq is after to_seq")),
            HistoryRange::Media { from_ms, to_ms } if from_ms > to_ms => {
                Err(ApiError::invalid("from_ms is after to_ms"))
            }
            r => Ok(r),
        }
    }
}

/// A room's kept events: the newest page, a sequence range, or a media-time
/// range (for replays: what was said at that point of the stream).
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/history",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id"), HistoryQuery),
    responses(
        (status = 200, description = "Events in sequence order", body = History),
        (status = 404, description = "No such room on this node (`NOT_FOUND`)", body = ErrorBody)
    )
)]
pub(super) async fn history(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> ApiResult<Json<History>> {
    let room = room_id(&room)?;
    let range = q.range()?;
    let limit = bounded(q.limit.map(|l| l as usize), MAX_HISTORY as usize, MAX_HISTORY as usize, "limit")?;
    let h = state.rooms.history(&room, range, limit as u32).await?;
    Ok(Json(History {
        room: h.room,
        events: h.events.iter().map(Event::from).collect(),
        oldest_seq: h.oldest_seq,
        truncated: h.truncated,
    }))
}

/// A room's lifecycle after an open or a close.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomStateChange {
    pub room: String,
    pub state: RoomStateName,
    /// For a close: the room's last sequence number, that of its closing
    /// `room_status` event (0 when the room was not live).
    pub final_seq: Option<u64>,
}

/// Opens a room: it is created now (so messages can be published before
/// anyone joins), and joins are let in even on a node that requires rooms
/// to be opened. A closed room opens again with a new epoch.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/open",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "The room is open", body = RoomStateChange),
        (status = 503, description = "In a fleet, the fleet's Redis cannot be reached (`UNAVAILABLE`)", body = ErrorBody)
    )
)]
pub(super) async fn open(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
) -> ApiResult<Json<RoomStateChange>> {
    let room = room_id(&room)?;
    state.rooms.open(&room).await?;
    Ok(Json(RoomStateChange { room: room.to_string(), state: RoomStateName::Open, final_seq: None }))
}

/// Why a room is closed.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// Shown to members in the closing `room_status` event; at most 256
    /// bytes.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub reason: String,
}

/// Closes a room: joins are refused with `ROOM_CLOSED` from now on, and a
/// live room sends its members a last `room_status` event (closed) and
/// removes them. Closing a room that is not live only refuses joins. In a
/// fleet this holds on every node, whichever node is asked.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/close",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    request_body(content = Option<CloseRequest>, description = "Optional; an empty body closes without a reason"),
    responses(
        (status = 200, description = "The room is closed", body = RoomStateChange),
        (status = 503, description = "In a fleet, the fleet's Redis cannot be reached (`UNAVAILABLE`)", body = ErrorBody)
    )
)]
pub(super) async fn close(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
    OptionalJsonBody(body): OptionalJsonBody<CloseRequest>,
) -> ApiResult<Json<RoomStateChange>> {
    let room = room_id(&room)?;
    if body.reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::invalid(format!("reason is longer than {MAX_REASON_BYTES} bytes")));
    }
    let final_seq = state.rooms.close(&room, &body.reason).await?;
    Ok(Json(RoomStateChange {
        room: room.to_string(),
        state: RoomStateName::Closed,
        final_seq: Some(final_seq),
    }))
}

/// `value` or `default`, refused unless in `1..=max`.
fn bounded(value: Option<usize>, default: usize, max: usize, name: &str) -> ApiResult<usize> {
    match value.unwrap_or(default) {
        v if (1..=max).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid(format!("{name} must be 1 to {max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(
        from_seq: Option<u64>,
        to_seq: Option<u64>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> HistoryQuery {
        HistoryQuery { from_seq, to_seq, from_ms, to_ms, limit: None }
    }

    #[test]
    fn history_ranges() {
        assert_eq!(q(None, None, None, None).range(), Ok(HistoryRange::Latest));
        assert_eq!(q(Some(3), Some(9), None, None).range(), Ok(HistoryRange::Seq { from: 3, to: 9 }));
        assert_eq!(q(Some(3), None, None, None).range(), Ok(HistoryRange::Seq { from: 3, to: u64::MAX }));
        assert_eq!(q(None, None, Some(5), Some(6)).range(), Ok(HistoryRange::Media { from_ms: 5, to_ms: 6 }));
        assert_eq!(q(Some(1), None, Some(5), None).range().unwrap_err().code, "INVALID_REQUEST");
        assert_eq!(q(Some(9), Some(3), None, None).range().unwrap_err().code, "INVALID_REQUEST");
        assert_eq!(q(None, None, Some(9), Some(3)).range().unwrap_err().code, "INVALID_REQUEST");
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(bounded(None, 50, 500, "limit"), Ok(50));
        assert_eq!(bounded(Some(500), 50, 500, "limit"), Ok(500));
        assert!(bounded(Some(0), 50, 500, "limit").is_err());
        assert!(bounded(Some(501), 50, 500, "limit").is_err());
    }
}
