//! The admin HTTP API: the platform's way to act on a node's rooms — publish
//! into a room, recall, read a room's state and history, list rooms, mute,
//! ban and kick, open and close rooms, drain the node.
//!
//! It listens on its own TCP socket (`admin.listen`), apart from the QUIC
//! endpoint and the metrics endpoint: nothing here runs on a room's or a
//! connection's task, and a request reaches a room the way a session does,
//! through [`Rooms`].
//!
//! * [`router`] builds the whole API (tests call it without a socket);
//!   [`serve`] serves it on a listener until a shutdown future resolves.
//! * [`AdminState`] is what the handlers share.
//! * `auth` checks credentials (an admin JWT or the API key) in front of
//!   every route but `/openapi.json`; `errors` gives every failure one JSON
//!   shape and a stable code; `rooms`, `messages`, `sanctions` and `node` are
//!   the routes by resource; `openapi` builds the OpenAPI 3.1 document from
//!   the handlers' annotations, so the document cannot drift from the routes.
//!
//! **Nothing is partly applied:** credentials, path, query and body are all
//! checked before a handler calls into a room or the moderation state, and
//! each handler makes one call that either takes effect or fails whole (a
//! ban records the sanction, then removes the user's connections; both are
//! idempotent, so a retried ban converges).

pub mod auth;
pub mod dashboard;
pub mod errors;
pub mod messages;
pub mod node;
pub mod nodes;
pub mod openapi;
pub mod quiz;
pub mod rooms;
pub mod sanctions;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Config;
use crate::auth::TokenVerifier;
use crate::drain::Drain;
use crate::metrics::{AdminRequestLabels, Metrics};
use crate::moderation::Moderation;
use crate::room::Rooms;

/// What the admin handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub rooms: Arc<Rooms>,
    pub moderation: Arc<Moderation>,
    /// Checks admin JWTs: the node's connection-token verifier.
    pub verifier: Arc<TokenVerifier>,
    /// The key accepted in `X-Api-Key`; none: admin JWTs only.
    pub api_key: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// Longest text a published message may carry, in bytes (the chat
    /// limit, `limits.max_message_bytes`).
    pub max_message_bytes: usize,
    /// Largest request body (`admin.max_body_bytes`).
    pub max_body_bytes: usize,
    /// The gift ledger, for crediting users.
    pub gifts: Arc<crate::gifts::Gifts>,
    /// The live quizzes the API runs.
    pub quizzes: Arc<crate::quiz::Quizzes>,
    /// The address clients reach this node at (empty if unknown).
    pub advertise: Arc<str>,
}

impl AdminState {
    /// The admin state of a node: its rooms, moderation, metrics and drain
    /// switch, with a token verifier and limits from `config`.
    pub fn new(
        config: &Config,
        rooms: Arc<Rooms>,
        moderation: Arc<Moderation>,
        metrics: Arc<Metrics>,
        drain: Drain,
        gifts: Arc<crate::gifts::Gifts>,
        quizzes: Arc<crate::quiz::Quizzes>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            rooms,
            moderation,
            verifier: Arc::new(crate::auth::verifier(config)?),
            api_key: config.admin.api_key.as_deref().filter(|k| !k.is_empty()).map(Arc::from),
            metrics,
            drain,
            max_message_bytes: config.limits.max_message_bytes as usize,
            max_body_bytes: config.admin.max_body_bytes,
            gifts,
            quizzes,
            advertise: Arc::from(""),
        })
    }
}

/// The routes that need credentials, and the public one (`/openapi.json`),
/// with their OpenAPI paths.
fn routes() -> (OpenApiRouter<AdminState>, OpenApiRouter<AdminState>) {
    let protected = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(rooms::list))
        .routes(routes!(rooms::info))
        .routes(routes!(nodes::nodes))
        .routes(routes!(rooms::history))
        .routes(routes!(rooms::ranking))
        .routes(routes!(rooms::open))
        .routes(routes!(rooms::close))
        .routes(routes!(messages::publish))
        .routes(routes!(messages::recall))
        .routes(routes!(sanctions::room_sanctions))
        .routes(routes!(sanctions::mute_in_room, sanctions::unmute_in_room))
        .routes(routes!(sanctions::ban_in_room, sanctions::unban_in_room))
        .routes(routes!(sanctions::kick_from_room))
        .routes(routes!(sanctions::node_sanctions))
        .routes(routes!(sanctions::mute_on_node, sanctions::unmute_on_node))
        .routes(routes!(sanctions::ban_on_node, sanctions::unban_on_node))
        .routes(routes!(sanctions::kick_from_node))
        .routes(routes!(users::credit))
        .routes(routes!(quiz::create, quiz::status, quiz::end))
        .routes(routes!(quiz::start))
        .routes(routes!(quiz::reveal))
        .routes(routes!(node::drain));
    let public = OpenApiRouter::new().routes(routes!(openapi::document));
    (protected, public)
}

/// The API's OpenAPI 3.1 document, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (protected, public) = routes();
    let mut doc = protected.into_openapi();
    doc.merge(public.into_openapi());
    openapi::finish(&mut doc);
    doc
}

/// The whole admin API over `state`: credentials checked before anything
/// else, bodies over `state.max_body_bytes` refused, every answer counted
/// in `roomcast_admin_requests_total`.
pub fn router(state: AdminState) -> Router {
    let (protected, public) = routes();
    let (protected, mut doc) = protected.split_for_parts();
    let (public, public_doc) = public.split_for_parts();
    doc.merge(public_doc);
    openapi::finish(&mut doc);
    let json = openapi::Document(Bytes::from(doc.to_json().unwrap_or_default()));
    protected
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin))
        .merge(public)
        .merge(dashboard::routes())
        .fallback(errors::no_route)
        .method_not_allowed_fallback(errors::wrong_method)
        .layer(axum::Extension(json))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(from_fn_with_state(state.metrics.clone(), count))
        .with_state(state)
}

/// Counts a request by method, route template and status once answered.
async fn count(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let response = next.run(req).await;
    let labels = AdminRequestLabels { method, route, status: response.status().as_u16() };
    metrics.admin_requests.get_or_create(&labels).inc();
    response
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
