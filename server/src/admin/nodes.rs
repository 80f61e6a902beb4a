//! Which nodes carry a room: in a fleet, where a platform sends a room's
//! next viewers.

use axum::Json;
use axum::extract::State;
use roomcast_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::errors::{ApiError, ApiResult, ErrorBody, PathParams, room_id};

/// The nodes that carry a room.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomNodes {
    pub room: String,
    /// Busiest first.
    pub nodes: Vec<RoomNodeEntry>,
}

/// One node that carries a room.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomNodeEntry {
    /// Where clients reach it (`fleet.advertise`); empty if it does not say.
    pub address: String,
    /// The room's users present there.
    pub online: u64,
}

/// The nodes that carry a room now, busiest first: in a fleet, where to send
/// the room's next viewers so that it stays on as few nodes as it needs
/// (each node's rounds coalesce only its own share of a room). A node alone
/// names itself.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/nodes",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "The nodes, busiest first (none: no node carries it)", body = RoomNodes),
        (status = 503, description = "The fleet's Redis cannot be reached (`UNAVAILABLE`)", body = ErrorBody)
    )
)]
pub(super) async fn nodes(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
) -> ApiResult<Json<RoomNodes>> {
    let room = room_id(&room)?;
    let nodes = match state.rooms.fleet() {
        Some(fleet) => fleet
            .room_nodes(&room)
            .await
            .map_err(|e| ApiError::room(ErrorCode::Unavailable, format!("the fleet's Redis: {e}")))?
            .into_iter()
            .map(|n| RoomNodeEntry { address: n.address, online: n.online })
            .collect(),
        None => match state.rooms.info(&room, 0, 0).await {
            Ok((info, _)) => {
                vec![RoomNodeEntry { address: state.advertise.to_string(), online: info.online }]
            }
            Err(ErrorCode::NotFound) => Vec::new(),
            Err(code) => return Err(code.into()),
        },
    };
    Ok(Json(RoomNodes { room: room.to_string(), nodes }))
}
