//! Mutes, bans and kicks, in one room or on the whole node, and the lists
//! of those in force.
//!
//! A mute refuses the user's chat (`MUTED`); a ban removes the user's
//! connections from the room (or every room) at once and refuses a rejoin
//! (`BANNED`); a kick is a ban that ends after `moderation.kick_secs`. A
//! room-scoped sanction needs no live room: a user can be banned from a room
//! before joining it. In a fleet every change goes through its Redis first
//! and holds on every node (node-wide sanctions hold fleet-wide); the
//! `removed` count is this node's.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use roomcast_protocol::{ErrorCode, unix_ms};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::errors::{ApiError, ApiResult, OptionalJsonBody, PathParams, room_id, user_id};
use super::rooms::MAX_REASON_BYTES;
use crate::cluster::{SanctionAction, SanctionChange};
use crate::moderation::{SanctionKind, Scope};
use crate::room::UserScope;

/// Longest sanction: ten years. Longer is "until lifted" (no duration).
const MAX_DURATION_SECS: u64 = 10 * 365 * 86_400;

/// What a sanction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SanctionKindName {
    Mute,
    Ban,
}

/// Where a sanction applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScopeName {
    Node,
    Room,
}

/// A sanction in force.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sanction {
    pub user: String,
    pub kind: SanctionKindName,
    pub scope: ScopeName,
    /// The room, for a room-scoped sanction.
    pub room: Option<String>,
    /// When it ends, Unix ms; absent: until lifted.
    pub until_ms: Option<u64>,
    pub reason: String,
}

impl From<crate::moderation::Sanction> for Sanction {
    fn from(s: crate::moderation::Sanction) -> Self {
        Self {
            user: s.user,
            kind: match s.kind {
                SanctionKind::Mute => SanctionKindName::Mute,
                SanctionKind::Ban => SanctionKindName::Ban,
            },
            scope: if s.room.is_some() { ScopeName::Room } else { ScopeName::Node },
            room: s.room.map(|r| r.to_string()),
            until_ms: s.until_ms,
            reason: s.reason,
        }
    }
}

/// Sanctions in force, by user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SanctionList {
    pub sanctions: Vec<Sanction>,
}

/// A mute or ban to apply. An empty body applies it until lifted, with no
/// reason.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SanctionRequest {
    /// How long it lasts, 1 s to 10 years (315360000 s); absent: until
    /// lifted.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub duration_secs: Option<u64>,
    /// At most 256 bytes; a banned or kicked member's stream ends with it.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub reason: String,
}

/// A kick. An empty body kicks with no reason.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KickRequest {
    /// At most 256 bytes; the kicked member's stream ends with it.
    #[serde(default)]
    pub reason: String,
}

/// A sanction applied, and what it did at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SanctionApplied {
    pub sanction: Sanction,
    /// Room memberships ended by a ban or a kick (0 for a mute).
    pub removed: u64,
}

fn check_reason(reason: &str) -> ApiResult<()> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::invalid(format!("reason is longer than {MAX_REASON_BYTES} bytes")));
    }
    Ok(())
}

/// Records a mute or ban, after checking everything; a ban then removes the
/// user's memberships in its scope.
async fn apply(
    state: &AdminState,
    scope: Scope,
    user: &str,
    kind: SanctionKind,
    req: SanctionRequest,
) -> ApiResult<Json<SanctionApplied>> {
    let user = user_id(user)?;
    check_reason(&req.reason)?;
    let now = unix_ms(SystemTime::now());
    let until_ms = match req.duration_secs {
        None => None,
        Some(d) if (1..=MAX_DURATION_SECS).contains(&d) => Some(now.saturating_add(d * 1000)),
        Some(_) => return Err(ApiError::invalid(format!("duration_secs must be 1 to {MAX_DURATION_SECS}"))),
    };
    announce(state, &scope, user, kind, until_ms, &req.reason, SanctionAction::Apply).await?;
    state.moderation.sanction(&scope, user, kind, until_ms, &req.reason);
    let removed = match kind {
        SanctionKind::Mute => 0,
        SanctionKind::Ban => {
            state.rooms.remove_user(user_scope(&scope), user, ErrorCode::Banned, &req.reason).await
        }
    };
    Ok(Json(SanctionApplied {
        sanction: sanction(&scope, user, kind, until_ms, req.reason),
        removed: removed as u64,
    }))
}

/// A kick: a ban until `moderation.kick_secs` from now, and the user's
/// memberships in the scope removed.
async fn kick(
    state: &AdminState,
    scope: Scope,
    user: &str,
    req: KickRequest,
) -> ApiResult<Json<SanctionApplied>> {
    let user = user_id(user)?;
    check_reason(&req.reason)?;
    let until_ms = Some(state.moderation.kick_until(unix_ms(SystemTime::now())));
    announce(state, &scope, user, SanctionKind::Ban, until_ms, &req.reason, SanctionAction::Kick).await?;
    state.moderation.sanction(&scope, user, SanctionKind::Ban, until_ms, &req.reason);
    let removed = state.rooms.kick_user(user_scope(&scope), user, &req.reason).await;
    Ok(Json(SanctionApplied {
        sanction: sanction(&scope, user, SanctionKind::Ban, until_ms, req.reason),
        removed: removed as u64,
    }))
}

fn user_scope(scope: &Scope) -> UserScope<'_> {
    match scope {
        Scope::Node => UserScope::Node,
        Scope::Room(r) => UserScope::Room(r),
    }
}

fn sanction(
    scope: &Scope,
    user: &str,
    kind: SanctionKind,
    until_ms: Option<u64>,
    reason: String,
) -> Sanction {
    let room = match scope {
        Scope::Node => None,
        Scope::Room(r) => Some(r.clone()),
    };
    crate::moderation::Sanction { user: user.to_string(), kind, room, until_ms, reason }.into()
}

/// Lifts a sanction: 204, or 404 `NOT_FOUND` when none was in force.
async fn lift(state: &AdminState, scope: Scope, user: &str, kind: SanctionKind) -> ApiResult<StatusCode> {
    let user = user_id(user)?;
    let now = unix_ms(SystemTime::now());
    let in_force = state.moderation.list(&scope, now).iter().any(|s| s.user == user && s.kind == kind);
    if !in_force {
        return Err(ApiError::not_found("no such sanction in force"));
    }
    announce(state, &scope, user, kind, None, "", SanctionAction::Lift).await?;
    state.moderation.lift(&scope, user, kind);
    Ok(StatusCode::NO_CONTENT)
}

/// In a fleet: records the change in the fleet's Redis and tells every
/// node, before this node applies it; `UNAVAILABLE` (503) when Redis cannot
/// take it, and then nothing changed anywhere. A node alone has no one to
/// tell.
async fn announce(
    state: &AdminState,
    scope: &Scope,
    user: &str,
    kind: SanctionKind,
    until_ms: Option<u64>,
    reason: &str,
    action: SanctionAction,
) -> ApiResult<()> {
    let Some(fleet) = state.rooms.fleet() else { return Ok(()) };
    let room = match scope {
        Scope::Node => None,
        Scope::Room(r) => Some(r.to_string()),
    };
    let change =
        SanctionChange { action, user: user.to_string(), kind, room, until_ms, reason: reason.to_string() };
    fleet.change_sanction(&change).await.map_err(|e| {
        ApiError::room(ErrorCode::Unavailable, format!("the fleet's Redis did not take the change: {e}"))
    })
}

fn list(state: &AdminState, scope: Scope) -> Json<SanctionList> {
    let sanctions = state.moderation.list(&scope, unix_ms(SystemTime::now()));
    Json(SanctionList { sanctions: sanctions.into_iter().map(Sanction::from).collect() })
}

/// The mutes and bans (kicks included) of one room, not the node's.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/sanctions",
    tag = "moderation",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 200, description = "In force, by user", body = SanctionList))
)]
pub(super) async fn room_sanctions(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
) -> ApiResult<Json<SanctionList>> {
    Ok(list(&state, Scope::Room(room_id(&room)?)))
}

/// Mutes a user in a room: the user's chat there is refused with `MUTED`.
#[utoipa::path(
    put,
    path = "/v1/rooms/{room}/mutes/{user}",
    tag = "moderation",
    params(("room" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    request_body(content = Option<SanctionRequest>, description = "Optional"),
    responses((status = 200, description = "Muted", body = SanctionApplied))
)]
pub(super) async fn mute_in_room(
    State(state): State<AdminState>,
    PathParams((room, user)): PathParams<(String, String)>,
    OptionalJsonBody(req): OptionalJsonBody<SanctionRequest>,
) -> ApiResult<Json<SanctionApplied>> {
    apply(&state, Scope::Room(room_id(&room)?), &user, SanctionKind::Mute, req).await
}

/// Lifts a user's mute in a room.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room}/mutes/{user}",
    tag = "moderation",
    params(("room" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, description = "No such mute in force (`NOT_FOUND`)", body = super::errors::ErrorBody)
    )
)]
pub(super) async fn unmute_in_room(
    State(state): State<AdminState>,
    PathParams((room, user)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    lift(&state, Scope::Room(room_id(&room)?), &user, SanctionKind::Mute).await
}

/// Bans a user from a room: removed at once, a rejoin refused with `BANNED`.
#[utoipa::path(
    put,
    path = "/v1/rooms/{room}/bans/{user}",
    tag = "moderation",
    params(("room" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    request_body(content = Option<SanctionRequest>, description = "Optional"),
    responses((status = 200, description = "Banned", body = SanctionApplied))
)]
pub(super) async fn ban_in_room(
    State(state): State<AdminState>,
    PathParams((room, user)): PathParams<(String, String)>,
    OptionalJsonBody(req): OptionalJsonBody<SanctionRequest>,
) -> ApiResult<Json<SanctionApplied>> {
    apply(&state, Scope::Room(room_id(&room)?), &user, SanctionKind::Ban, req).await
}

/// Lifts a user's ban (or kick) in a room.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room}/bans/{user}",
    tag = "moderation",
    params(("room" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, description = "No such ban in force (`NOT_FOUND`)", body = super::errors::ErrorBody)
    )
)]
pub(super) async fn unban_in_room(
    State(state): State<AdminState>,
    PathParams((room, user)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    lift(&state, Scope::Room(room_id(&room)?), &user, SanctionKind::Ban).await
}

/// Kicks a user from a room: removed at once, a rejoin refused with
/// `BANNED` for `moderation.kick_secs`.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/kicks/{user}",
    tag = "moderation",
    params(("room" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    request_body(content = Option<KickRequest>, description = "Optional"),
    responses((status = 200, description = "Kicked", body = SanctionApplied))
)]
pub(super) async fn kick_from_room(
    State(state): State<AdminState>,
    PathParams((room, user)): PathParams<(String, String)>,
    OptionalJsonBody(req): OptionalJsonBody<KickRequest>,
) -> ApiResult<Json<SanctionApplied>> {
    kick(&state, Scope::Room(room_id(&room)?), &user, req).await
}

/// The node-wide mutes and bans (kicks included).
#[utoipa::path(
    get,
    path = "/v1/node/sanctions",
    tag = "moderation",
    responses((status = 200, description = "In force, by user", body = SanctionList))
)]
pub(super) async fn node_sanctions(State(state): State<AdminState>) -> Json<SanctionList> {
    list(&state, Scope::Node)
}

/// Mutes a user in every room of the node.
#[utoipa::path(
    put,
    path = "/v1/node/mutes/{user}",
    tag = "moderation",
    params(("user" = String, Path, description = "User id")),
    request_body(content = Option<SanctionRequest>, description = "Optional"),
    responses((status = 200, description = "Muted", body = SanctionApplied))
)]
pub(super) async fn mute_on_node(
    State(state): State<AdminState>,
    PathParams(user): PathParams<String>,
    OptionalJsonBody(req): OptionalJsonBody<SanctionRequest>,
) -> ApiResult<Json<SanctionApplied>> {
    apply(&state, Scope::Node, &user, SanctionKind::Mute, req).await
}

/// Lifts a user's node-wide mute.
#[utoipa::path(
    delete,
    path = "/v1/node/mutes/{user}",
    tag = "moderation",
    params(("user" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, description = "No such mute in force (`NOT_FOUND`)", body = super::errors::ErrorBody)
    )
)]
pub(super) async fn unmute_on_node(
    State(state): State<AdminState>,
    PathParams(user): PathParams<String>,
) -> ApiResult<StatusCode> {
    lift(&state, Scope::Node, &user, SanctionKind::Mute).await
}

/// Bans a user from every room of the node.
#[utoipa::path(
    put,
    path = "/v1/node/bans/{user}",
    tag = "moderation",
    params(("user" = String, Path, description = "User id")),
    request_body(content = Option<SanctionRequest>, description = "Optional"),
    responses((status = 200, description = "Banned", body = SanctionApplied))
)]
pub(super) async fn ban_on_node(
    State(state): State<AdminState>,
    PathParams(user): PathParams<String>,
    OptionalJsonBody(req): OptionalJsonBody<SanctionRequest>,
) -> ApiResult<Json<SanctionApplied>> {
    apply(&state, Scope::Node, &user, SanctionKind::Ban, req).await
}

/// Lifts a user's node-wide ban (or kick).
#[utoipa::path(
    delete,
    path = "/v1/node/bans/{user}",
    tag = "moderation",
    params(("user" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, description = "No such ban in force (`NOT_FOUND`)", body = super::errors::ErrorBody)
    )
)]
pub(super) async fn unban_on_node(
    State(state): State<AdminState>,
    PathParams(user): PathParams<String>,
) -> ApiResult<StatusCode> {
    lift(&state, Scope::Node, &user, SanctionKind::Ban).await
}

/// Kicks a user from every room of the node.
#[utoipa::path(
    post,
    path = "/v1/node/kicks/{user}",
    tag = "moderation",
    params(("user" = String, Path, description = "User id")),
    request_body(content = Option<KickRequest>, description = "Optional"),
    responses((status = 200, description = "Kicked", body = SanctionApplied))
)]
pub(super) async fn kick_from_node(
    State(state): State<AdminState>,
    PathParams(user): PathParams<String>,
    OptionalJsonBody(req): OptionalJsonBody<KickRequest>,
) -> ApiResult<Json<SanctionApplied>> {
    kick(&state, Scope::Node, &user, req).await
}
