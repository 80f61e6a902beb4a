//! The node itself: draining.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use crate::drain::DrainState;

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Serving,
    Draining,
    Drained,
}

/// The answer to a drain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainStarted {
    pub state: NodeState,
    /// False if the node was already draining: a drain is started once.
    pub started: bool,
}

/// Drains the node: it stops taking connections, lets in-flight work
/// settle, closes every connection with `SERVER_DRAINING` (clients resume
/// elsewhere) and stops. Answers at once; the drain runs in the background.
/// Idempotent.
#[utoipa::path(
    post,
    path = "/v1/node/drain",
    tag = "node",
    responses((status = 202, description = "Draining", body = DrainStarted))
)]
pub(super) async fn drain(State(state): State<AdminState>) -> (StatusCode, Json<DrainStarted>) {
    let started = state.drain.start();
    let node_state = match state.drain.state() {
        DrainState::Serving => NodeState::Serving,
        DrainState::Draining => NodeState::Draining,
        DrainState::Drained => NodeState::Drained,
    };
    (StatusCode::ACCEPTED, Json(DrainStarted { state: node_state, started }))
}
