//! Publishing into a room (a host message or a system notice) and recalling
//! a message.

use axum::Json;
use axum::extract::State;
use roomcast_protocol::{MAX_MESSAGE_ID_BYTES, v1};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::errors::{ApiError, ApiResult, ErrorBody, JsonBody, MAX_USER_ID_BYTES, PathParams, room_id};
use crate::room::{AdminKind, AdminMessage};

/// Longest display name, in bytes (as tokens carry it).
const MAX_NAME_BYTES: usize = 128;

/// What is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishKind {
    /// A message from the room's host (`host_message`, High priority).
    Host,
    /// A notice from the platform (`system_notice`).
    System,
}

/// Who a host message is from.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    /// 1 to 128 bytes.
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: String,
    /// At most 128 bytes.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub display_name: String,
}

/// A message to publish.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub kind: PublishKind,
    /// 1 byte to `limits.max_message_bytes` (512 by default); outside that,
    /// `MESSAGE_TOO_LONG` (empty included), as for a chat on the wire.
    #[schema(min_length = 1)]
    pub text: String,
    /// Position on the stream's media timeline, in ms.
    #[serde(default)]
    pub media_ts_ms: Option<u64>,
    /// The caller's id for this message, at most 64 bytes: a retry with the
    /// same id is answered with the first one's sequence number and not
    /// published twice.
    #[serde(default)]
    #[schema(max_length = 64)]
    pub client_msg_id: Option<String>,
    /// For a host message: the host it is shown from (role host). A system
    /// notice has no sender.
    #[serde(default)]
    pub sender: Option<Sender>,
}

/// A published message's place in the room.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishAck {
    pub room: String,
    /// Its sequence number.
    pub seq: u64,
    pub message_id: String,
    pub server_time_ms: u64,
}

impl PublishRequest {
    /// Checks every field, so that nothing reaches the room unless all of it
    /// is right.
    fn into_message(self, max_text: usize) -> ApiResult<AdminMessage> {
        // One rule with chat on the wire: a text outside 1 to `max_text`
        // bytes is `MESSAGE_TOO_LONG`, empty included.
        if self.text.is_empty() || self.text.len() > max_text {
            return Err(ApiError::room(
                roomcast_protocol::ErrorCode::MessageTooLong,
                format!("text must be 1 to {max_text} bytes"),
            ));
        }
        let client_msg_id = self.client_msg_id.unwrap_or_default();
        if client_msg_id.len() > MAX_MESSAGE_ID_BYTES {
            return Err(ApiError::invalid(format!(
                "client_msg_id is longer than {MAX_MESSAGE_ID_BYTES} bytes"
            )));
        }
        let (kind, role) = match self.kind {
            PublishKind::Host => (AdminKind::Host, v1::Role::Host),
            PublishKind::System => (AdminKind::System, v1::Role::Admin),
        };
        let sender = match self.sender {
            Some(_) if self.kind == PublishKind::System => {
                return Err(ApiError::invalid("a system notice has no sender"));
            }
            Some(s) if s.user_id.is_empty() || s.user_id.len() > MAX_USER_ID_BYTES => {
                return Err(ApiError::invalid(format!("sender.user_id is 1 to {MAX_USER_ID_BYTES} bytes")));
            }
            Some(s) if s.display_name.len() > MAX_NAME_BYTES => {
                return Err(ApiError::invalid(format!(
                    "sender.display_name is longer than {MAX_NAME_BYTES} bytes"
                )));
            }
            Some(s) => Some(v1::User { user_id: s.user_id, display_name: s.display_name, role: role as i32 }),
            None => None,
        };
        Ok(AdminMessage { kind, text: self.text, media_ts_ms: self.media_ts_ms, client_msg_id, sender })
    }
}

/// Publishes a host message or a system notice into a live room; answers
/// its sequence number.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/messages",
    tag = "messages",
    params(("room" = String, Path, description = "Room id")),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Sequenced (or a retry of one that was)", body = PublishAck),
        (status = 404, description = "No such room on this node (`NOT_FOUND`)", body = ErrorBody),
        (status = 409, description = "The room is closed (`ROOM_CLOSED`)", body = ErrorBody)
    )
)]
pub(super) async fn publish(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
    JsonBody(body): JsonBody<PublishRequest>,
) -> ApiResult<Json<PublishAck>> {
    let room = room_id(&room)?;
    let message = body.into_message(state.max_message_bytes)?;
    let ack = state.rooms.publish(&room, message).await?;
    Ok(Json(PublishAck {
        room: room.to_string(),
        seq: ack.seq,
        message_id: ack.message_id,
        server_time_ms: ack.server_time_ms,
    }))
}

/// A recalled message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recalled {
    pub room: String,
    pub message_id: String,
    /// Sequence number of the recall notice.
    pub seq: u64,
}

/// Recalls a message: it leaves the room's history and members are told to
/// remove it.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room}/messages/{message_id}",
    tag = "messages",
    params(
        ("room" = String, Path, description = "Room id"),
        ("message_id" = String, Path, description = "The message's `message_id`")
    ),
    responses(
        (status = 200, description = "Recalled", body = Recalled),
        (status = 404, description = "No such room, or no such message in its history (`NOT_FOUND`)", body = ErrorBody)
    )
)]
pub(super) async fn recall(
    State(state): State<AdminState>,
    PathParams((room, message_id)): PathParams<(String, String)>,
) -> ApiResult<Json<Recalled>> {
    let room = room_id(&room)?;
    if message_id.is_empty() || message_id.len() > MAX_MESSAGE_ID_BYTES {
        return Err(ApiError::invalid(format!("a message id is 1 to {MAX_MESSAGE_ID_BYTES} bytes")));
    }
    let r = state.rooms.recall(&room, &message_id).await?;
    Ok(Json(Recalled { room: room.to_string(), message_id: r.message_id, seq: r.seq }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: PublishKind, text: &str) -> PublishRequest {
        PublishRequest { kind, text: text.into(), media_ts_ms: None, client_msg_id: None, sender: None }
    }

    #[test]
    fn every_field_is_checked_before_the_room_sees_it() {
        assert!(request(PublishKind::System, "hi").into_message(4).is_ok());
        assert_eq!(request(PublishKind::System, "").into_message(4).unwrap_err().code, "MESSAGE_TOO_LONG");
        assert_eq!(
            request(PublishKind::System, "hello").into_message(4).unwrap_err().code,
            "MESSAGE_TOO_LONG"
        );
        let mut r = request(PublishKind::Host, "hi");
        r.client_msg_id = Some("x".repeat(MAX_MESSAGE_ID_BYTES + 1));
        assert_eq!(r.into_message(4).unwrap_err().code, "INVALID_REQUEST");
        let mut r = request(PublishKind::System, "hi");
        r.sender = Some(Sender { user_id: "h".into(), display_name: String::new() });
        assert_eq!(r.into_message(4).unwrap_err().code, "INVALID_REQUEST");
        let mut r = request(PublishKind::Host, "hi");
        r.sender = Some(Sender { user_id: "hana".into(), display_name: "Hana".into() });
        let m = r.into_message(4).unwrap();
        assert_eq!(m.sender.map(|s| s.role), Some(v1::Role::Host as i32));
    }
}
