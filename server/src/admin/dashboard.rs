//! The live dashboard: `GET /dashboard` serves one self-contained page
//! (`dashboard.html`: inline CSS and script, nothing fetched from elsewhere,
//! no build step), and `GET /dashboard/data` the figures it polls every
//! second: the busiest rooms with their online counts, and the node's
//! running totals (events sequenced, deliveries, drops by reason, lagged
//! members). The page turns successive totals into per-second rates, so the
//! node keeps no history for it.
//!
//! Both routes take the admin API's credentials (an admin JWT or
//! `X-Api-Key`) and, because a browser cannot set a header on the first page
//! load, the API key as a `?key=` query parameter too; nowhere else does the
//! API accept it there. The key is compared like the header (constant time)
//! and never logged: the request counter records the route template only.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::AdminState;
use super::auth::{API_KEY_HEADER, Caller, authenticate};
use super::errors::ApiError;
use super::rooms::RoomSummary;

/// The page, compiled in.
const PAGE: &str = include_str!("dashboard.html");

/// Most rooms one sample carries: the page shows the busiest, and a node
/// with many thousands of rooms should not send them all every second.
pub const MAX_ROOMS: usize = 200;

/// What the page may load: its own inline style and script, and requests
/// back to this node. Room ids come from clients, so the page writes them
/// as text only; this policy is the second line.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `/dashboard` and `/dashboard/data`, each checking credentials itself
/// (see [`Viewer`]), so they are merged beside the admin API's protected
/// routes rather than behind its middleware.
pub fn routes() -> Router<AdminState> {
    Router::new().route("/dashboard", get(page)).route("/dashboard/data", get(data))
}

/// One sample of the node, as `/dashboard/data` answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// When the sample was taken, unix milliseconds: the page divides the
    /// change in each total by the change in this.
    pub at_ms: u64,
    /// The busiest rooms, most online first, at most [`MAX_ROOMS`].
    pub rooms: Vec<RoomSummary>,
    /// Rooms live on the node; more than `rooms` holds when it was cut.
    pub rooms_total: usize,
    pub totals: Totals,
}

/// The node's running totals since it started (connections: now).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    /// Open QUIC connections with a session.
    pub connections: i64,
    /// Room events given a sequence number (messages, notices, recalls...).
    pub events_sequenced: u64,
    /// Room events queued to members, one per event per member.
    pub deliveries: u64,
    pub drops: Drops,
    /// Subscriptions that fell behind and were told to resume.
    pub lagged_members: u64,
    /// Chat accepted but not broadcast: over the room's visible budget.
    pub chat_sampled: u64,
    /// Chat refused: over the sender's rate.
    pub chat_rate_limited: u64,
}

/// Events not delivered to a member, by reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drops {
    /// Ephemeral events of low priority shed from a full outbox.
    pub shed_low: u64,
    /// Ephemeral events of normal priority shed from a full outbox.
    pub shed_normal: u64,
    /// Sequenced events that did not fit: the member was told it lagged.
    pub lagged: u64,
}

/// Proof that a dashboard request carries admin credentials: the admin API's
/// own (`Authorization: Bearer <admin JWT>` or `X-Api-Key`), or the API key
/// as `?key=`. Refusals are the API's 401/403 answers.
#[derive(Debug, Clone)]
pub struct Viewer(pub Caller);

#[derive(Debug, Deserialize)]
struct KeyParam {
    key: Option<String>,
}

impl FromRequestParts<AdminState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        let api_key = state.api_key.as_deref();
        // Other query parameters are the page's business; only `key` counts.
        let param = Query::<KeyParam>::try_from_uri(&parts.uri).ok().and_then(|q| q.0.key);
        let caller = match param {
            Some(key) => {
                // Judged exactly as the header would be, so the comparison
                // and its refusals are the API's own.
                let value =
                    HeaderValue::from_str(&key).map_err(|_| ApiError::unauthorized("wrong API key"))?;
                let mut headers = HeaderMap::new();
                headers.insert(HeaderName::from_static(API_KEY_HEADER), value);
                authenticate(&headers, api_key, &state.verifier)?
            }
            None => authenticate(&parts.headers, api_key, &state.verifier)?,
        };
        Ok(Viewer(caller))
    }
}

/// Headers every dashboard answer carries: nothing cached (the page's URL
/// may hold the key, and the figures are stale in a second), and no
/// referrer leaves the page.
fn private() -> [(HeaderName, HeaderValue); 2] {
    [
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

async fn page(_: Viewer) -> Response {
    let csp = HeaderName::from_static("content-security-policy");
    (
        private(),
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (csp, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        ],
        PAGE,
    )
        .into_response()
}

async fn data(_: Viewer, State(state): State<AdminState>) -> Response {
    (private(), Json(sample(&state))).into_response()
}

/// Reads the rooms and the metrics now.
pub fn sample(state: &AdminState) -> Sample {
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut rooms = state.rooms.list();
    let rooms_total = rooms.len();
    rooms.truncate(MAX_ROOMS);
    let rooms = rooms.into_iter().map(RoomSummary::from).collect();
    let m = &state.metrics;
    let totals = Totals {
        connections: m.connections.get(),
        events_sequenced: m.events_sequenced.get(),
        deliveries: m.deliveries.get(),
        drops: Drops {
            shed_low: m.drop_shed_low.get(),
            shed_normal: m.drop_shed_normal.get(),
            lagged: m.drop_lagged.get(),
        },
        lagged_members: m.subscribers_lagged.get(),
        chat_sampled: m.chat_sampled.get(),
        chat_rate_limited: m.chat_rate_limited.get(),
    };
    Sample { at_ms, rooms, rooms_total, totals }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        // No build step and nothing fetched from elsewhere: no external
        // scripts, styles, fonts or images, and it polls its own data route.
        for banned in ["<script src", "<link", "@import", "url(", "http://", "https://", "<img"] {
            assert!(!PAGE.contains(banned), "dashboard.html contains {banned:?}");
        }
        assert!(PAGE.contains("/dashboard/data"));
        assert!(PAGE.contains("data-room"));
    }
}
