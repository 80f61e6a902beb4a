//! Prometheus metrics, served over HTTP at `/metrics` (OpenMetrics text),
//! with `/healthz` (200 while the process lives) and `/readyz` (200 while
//! the node takes joins; 503 once draining, or in a fleet while its Redis is
//! unreachable: see [`Readiness`]).
//!
//! Handles are created once and kept; nothing on the hot path looks up a
//! label. Rooms add their fan-out counts once per command, not per member.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cluster::Fleet;
use crate::drain::Drain;
use crate::room::FlushStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Every metric the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub rooms: Gauge,
    pub sessions_refused: Counter,
    /// New connections turned away before their handshake, by reason
    /// (`node_full`, `ip_rate`).
    refused_connections: Family<ReasonLabel, Counter>,
    /// Completed QUIC handshakes (full and resumed; resumed ones are also
    /// counted in `tls_resumed`).
    pub handshakes: Counter,
    /// Sessions refused at hello, by error code.
    session_refusals: Family<ReasonLabel, Counter>,
    /// Joins into rooms.
    pub joins: Counter,
    /// Leaves from rooms, by reason.
    leaves: Family<ReasonLabel, Counter>,
    /// Room events made (sequenced and ephemeral), by kind.
    room_events: Family<KindLabel, Counter>,
    /// Time from sequencing an event to its connection taking it for a member:
    /// the batching window, the round's pacing and the outbox together.
    pub sequenced_to_write: Histogram,
    pub events_sequenced: Counter,
    /// Events queued to subscribers (one per event per subscriber).
    pub deliveries: Counter,
    /// Outbox pushes (one per flush per subscriber).
    pub pushes: Counter,
    pub drop_shed_low: Counter,
    pub drop_shed_normal: Counter,
    pub drop_lagged: Counter,
    pub chat_sampled: Counter,
    pub chat_rate_limited: Counter,
    /// Gift sends answered, by outcome.
    gifts: Family<ReasonLabel, Counter>,
    /// Sequenced events not archived because the archive's writer was behind.
    pub archive_dropped: Counter,
    /// Sequenced events not archived because the disk refused their write.
    pub archive_write_failed: Counter,
    /// Writes the disk refused (or could not sync), by file.
    pub storage_failures: StorageFailures,
    /// Rooms that took a new epoch because the fleet's Redis had lost their
    /// numbering.
    pub fleet_rooms_renumbered: Counter,
    /// Deliveries from the fleet's Redis dropped because the node was behind
    /// (their rooms read them back from the stream).
    pub fleet_deliveries_dropped: Counter,
    /// Datagrams that reached another driver's socket and were handed to the
    /// driver holding their connection (clients whose address changed).
    pub edge_steered: Counter,
    /// Quiz answers, by outcome.
    quiz_answers: Family<ReasonLabel, Counter>,
    /// Like taps reported: counted, or flagged (over the user's cap).
    likes_counted: Counter,
    likes_flagged: Counter,
    /// Like reports received: for a joined room, or ignored (not joined).
    like_reports_joined: Counter,
    like_reports_ignored: Counter,
    pub subscribers_lagged: Counter,
    /// How long room events wait in a member's outbox for its connection: the
    /// node's own queueing after fan-out, before QUIC takes the bytes.
    pub outbox_wait: Histogram,
    /// Handshakes in which a client presented a resumption ticket the node
    /// could read.
    pub tls_resumed: Counter,
    /// 1 while the node drains.
    pub draining: Gauge,
    pub webhooks: WebhookMetrics,
    /// Admin API requests, by method, route and status.
    pub admin_requests: Family<AdminRequestLabels, Counter>,
    /// The fleet's Redis as this node sees it; a node alone has none.
    redis: Option<RedisGauges>,
}

/// `roomcast_redis_up` and `roomcast_redis_ping_rtt_seconds`, set from the
/// fleet's link each time the metrics are read.
#[derive(Debug)]
struct RedisGauges {
    up: Gauge,
    rtt: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// Labels of `roomcast_admin_requests_total`. `route` is the route's
/// template (`/v1/rooms/{room}`), or `unmatched`, so the label set stays
/// small whatever paths callers send.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabel {
    file: &'static str,
}

/// `roomcast_storage_write_failures_total`, one handle per file the node
/// writes as it serves.
#[derive(Debug, Clone, Default)]
pub struct StorageFailures {
    /// The embedded ledger's journal.
    pub gift_ledger: Counter,
    /// The webhook ledger's key journal.
    pub gift_webhook_keys: Counter,
    /// The room archive.
    pub archive: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Webhook delivery, counted per event (a POST carries a batch of them).
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    /// Events the backend acknowledged with a 2xx.
    pub ok: Counter,
    /// Events sent again after a failed attempt (one per event per retry).
    pub retried: Counter,
    /// Events given up: a permanent refusal, or every attempt failed.
    pub failed: Counter,
    /// Events not queued because the queue was full.
    pub dropped: Counter,
    /// Events queued and not yet taken into a POST.
    pub queue_depth: Gauge,
}

impl WebhookMetrics {
    fn register(registry: &mut Registry) -> Self {
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook events by outcome: ok, retried (per retry), failed (given up), dropped (queue full)",
            outcomes.clone(),
        );
        let outcome = |outcome| outcomes.get_or_create(&OutcomeLabel { outcome }).clone();
        let queue_depth = Gauge::default();
        registry.register("webhook_queue_depth", "Webhook events waiting to be sent", queue_depth.clone());
        Self {
            ok: outcome("ok"),
            retried: outcome("retried"),
            failed: outcome("failed"),
            dropped: outcome("dropped"),
            queue_depth,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("roomcast");
        let connections = Gauge::default();
        registry.register("connections", "Open QUIC connections with a session", connections.clone());
        let rooms = Gauge::default();
        registry.register("rooms", "Rooms alive on this node", rooms.clone());
        let sessions_refused = Counter::default();
        registry.register("sessions_refused", "Connections closed during hello", sessions_refused.clone());
        let handshakes = Counter::default();
        registry.register("handshakes", "QUIC handshakes completed (full and resumed)", handshakes.clone());
        let session_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "session_refusals",
            "Sessions refused at hello, by error code (reason label)",
            session_refusals.clone(),
        );
        let joins = Counter::default();
        registry.register("joins", "Joins into rooms", joins.clone());
        let leaves = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "leaves",
            "Leaves from rooms, by reason: left, kicked, banned, heartbeat_loss, disconnect, drain",
            leaves.clone(),
        );
        let room_events = Family::<KindLabel, Counter>::default();
        registry.register("room_events", "Room events made, by kind", room_events.clone());
        let sequenced_to_write =
            Histogram::new([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]);
        registry.register(
            "sequenced_to_write_seconds",
            "Time from sequencing a room event to its connection taking it for a member",
            sequenced_to_write.clone(),
        );
        let refused_connections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "New connections refused before their handshake, by reason",
            refused_connections.clone(),
        );
        let events_sequenced = Counter::default();
        registry.register(
            "events_sequenced",
            "Room events given a sequence number",
            events_sequenced.clone(),
        );
        let deliveries = Counter::default();
        registry.register("deliveries", "Room events queued to subscribers", deliveries.clone());
        let pushes = Counter::default();
        registry.register("outbox_pushes", "Batches queued to subscribers", pushes.clone());
        let drops = Family::<ReasonLabel, Counter>::default();
        registry.register("dropped_events", "Events not delivered to a subscriber, by reason", drops.clone());
        let drop_shed_low = drops.get_or_create(&ReasonLabel { reason: "shed_low" }).clone();
        let drop_shed_normal = drops.get_or_create(&ReasonLabel { reason: "shed_normal" }).clone();
        let drop_lagged = drops.get_or_create(&ReasonLabel { reason: "lagged" }).clone();
        let chat = Family::<ReasonLabel, Counter>::default();
        registry.register("chat_refused", "Chat messages not broadcast, by reason", chat.clone());
        let chat_sampled = chat.get_or_create(&ReasonLabel { reason: "sampled" }).clone();
        let chat_rate_limited = chat.get_or_create(&ReasonLabel { reason: "rate_limited" }).clone();
        let gifts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "gifts",
            "Gift sends answered, by outcome (repeat: an idempotency key seen before)",
            gifts.clone(),
        );
        let archive = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "archive_dropped",
            "Sequenced events not kept for replay after the live: the archive's writer was behind (queue_full) or the disk refused the write (write_failed)",
            archive.clone(),
        );
        let archive_dropped = archive.get_or_create(&ReasonLabel { reason: "queue_full" }).clone();
        let archive_write_failed = archive.get_or_create(&ReasonLabel { reason: "write_failed" }).clone();
        let storage = Family::<FileLabel, Counter>::default();
        registry.register(
            "storage_write_failures",
            "Writes the disk refused or could not sync, by file (gift_ledger, gift_webhook_keys, archive); a failed write is cut back, so files hold whole records only",
            storage.clone(),
        );
        // One statement each: a family's handle holds its lock until dropped.
        let gift_ledger = storage.get_or_create(&FileLabel { file: "gift_ledger" }).clone();
        let gift_webhook_keys = storage.get_or_create(&FileLabel { file: "gift_webhook_keys" }).clone();
        let archive_failures = storage.get_or_create(&FileLabel { file: "archive" }).clone();
        let storage_failures = StorageFailures { gift_ledger, gift_webhook_keys, archive: archive_failures };
        let fleet_rooms_renumbered = Counter::default();
        registry.register(
            "fleet_rooms_renumbered",
            "Rooms that took a new epoch because the fleet's Redis had lost their numbering (flushed, restarted without persistence, failed over behind, or evicted); members resume incomplete",
            fleet_rooms_renumbered.clone(),
        );
        let fleet_deliveries_dropped = Counter::default();
        registry.register(
            "fleet_deliveries_dropped",
            "Deliveries from the fleet's Redis dropped because the node was behind; rooms read them back from the stream",
            fleet_deliveries_dropped.clone(),
        );
        let edge_steered = Counter::default();
        registry.register(
            "edge_steered_datagrams",
            "Datagrams that reached one transport driver's socket and were handed to the driver holding their connection (a client whose address changed)",
            edge_steered.clone(),
        );
        let quiz_answers = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "quiz_answers",
            "Quiz answers by outcome: accepted, already_answered, too_late, eliminated, unknown_question, invalid_option",
            quiz_answers.clone(),
        );
        let likes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "likes",
            "Like taps reported by clients: counted, or flagged (beyond the user's cap, not counted)",
            likes.clone(),
        );
        let likes_counted = likes.get_or_create(&ReasonLabel { reason: "counted" }).clone();
        let likes_flagged = likes.get_or_create(&ReasonLabel { reason: "flagged" }).clone();
        let like_reports = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "like_reports",
            "Like report datagrams received: for a joined room (joined), or ignored (not_joined)",
            like_reports.clone(),
        );
        let like_reports_joined = like_reports.get_or_create(&ReasonLabel { reason: "joined" }).clone();
        let like_reports_ignored = like_reports.get_or_create(&ReasonLabel { reason: "not_joined" }).clone();
        let subscribers_lagged = Counter::default();
        registry.register(
            "subscribers_lagged",
            "Subscriptions that fell behind and were told to resume",
            subscribers_lagged.clone(),
        );
        // 1 ms to 5 s: a healthy node drains within a scheduler round; seconds
        // mean writers starved of CPU or a peer's flow control holding them.
        let outbox_wait =
            Histogram::new([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]);
        registry.register(
            "outbox_wait_seconds",
            "Time the oldest room event waited in a member's outbox before its connection took it",
            outbox_wait.clone(),
        );
        let tls_resumed = Counter::default();
        registry.register(
            "tls_resumptions",
            "Handshakes that presented a resumption ticket this node could read",
            tls_resumed.clone(),
        );
        let webhooks = WebhookMetrics::register(&mut registry);
        let admin_requests = Family::<AdminRequestLabels, Counter>::default();
        registry.register(
            "admin_requests",
            "Admin API requests by method, route template and HTTP status",
            admin_requests.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the node drains (refusing connections, closing the rest)",
            draining.clone(),
        );
        Self {
            registry,
            draining,
            connections,
            rooms,
            sessions_refused,
            refused_connections,
            handshakes,
            session_refusals,
            joins,
            leaves,
            room_events,
            sequenced_to_write,
            events_sequenced,
            deliveries,
            pushes,
            drop_shed_low,
            drop_shed_normal,
            drop_lagged,
            chat_sampled,
            chat_rate_limited,
            gifts,
            archive_dropped,
            archive_write_failed,
            storage_failures,
            fleet_rooms_renumbered,
            fleet_deliveries_dropped,
            edge_steered,
            quiz_answers,
            likes_counted,
            likes_flagged,
            like_reports_joined,
            like_reports_ignored,
            subscribers_lagged,
            outbox_wait,
            tls_resumed,
            webhooks,
            admin_requests,
            redis: None,
        }
    }

    /// Registers the fleet's Redis gauges: for a node with `redis` set,
    /// before it is shared.
    pub fn register_redis(&mut self) {
        let up = Gauge::default();
        self.registry.register(
            "redis_up",
            "1 while the fleet's Redis answers within fleet.unreachable_after_ms (joins are taken), 0 while not (joins are refused UNAVAILABLE and /readyz is 503)",
            up.clone(),
        );
        let rtt = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        self.registry.register(
            "redis_ping_rtt_seconds",
            "Round trip of the last ping the fleet's Redis answered (one every 500 ms)",
            rtt.clone(),
        );
        self.redis = Some(RedisGauges { up, rtt });
    }

    /// Sets the Redis gauges from what the fleet's link last saw.
    fn observe_redis(&self, fleet: &Fleet) {
        if let Some(g) = &self.redis {
            g.up.set(i64::from(fleet.reachable()));
            if let Some(rtt) = fleet.ping_rtt() {
                g.rtt.set(rtt.as_secs_f64());
            }
        }
    }

    /// Adds a room's fan-out counts.
    /// Counts a session refused at hello with `code`.
    pub fn session_refused(&self, code: roomcast_protocol::ErrorCode) {
        self.session_refusals.get_or_create(&ReasonLabel { reason: code.name() }).inc();
    }

    /// Counts a gift send's answer: `accepted`, `repeat`,
    /// `insufficient_balance`, `unknown_gift`, `rate_limited`,
    /// `ledger_unavailable` or `refunded`.
    pub fn gift(&self, outcome: &'static str) {
        self.gifts.get_or_create(&ReasonLabel { reason: outcome }).inc();
    }

    /// Counts a quiz answer by its outcome.
    pub fn quiz_answer(&self, outcome: &'static str) {
        self.quiz_answers.get_or_create(&ReasonLabel { reason: outcome }).inc();
    }

    /// Counts a like report for a joined room: its taps counted and flagged.
    pub fn like_report(&self, counted: u64, flagged: u64) {
        self.like_reports_joined.inc();
        self.likes_counted.inc_by(counted);
        self.likes_flagged.inc_by(flagged);
    }

    /// Counts a like report for a room the session had not joined.
    pub fn like_report_ignored(&self) {
        self.like_reports_ignored.inc();
    }

    /// Counts a member leaving a room.
    pub fn left(&self, reason: crate::webhooks::LeaveReason) {
        self.leaves.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    /// Adds a room's event counts by kind (see `room::EVENT_KINDS`).
    pub fn record_events(&self, counts: [u64; crate::room::EVENT_KINDS.len()]) {
        for (kind, n) in crate::room::EVENT_KINDS.into_iter().zip(counts) {
            if n > 0 {
                self.room_events.get_or_create(&KindLabel { kind }).inc_by(n);
            }
        }
    }

    /// Counts a connection refused by the node's gate.
    pub fn connections_refused(&self, reason: &'static str) {
        self.refused_connections.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn record_flush(&self, s: FlushStats) {
        if s == FlushStats::default() {
            return;
        }
        self.pushes.inc_by(s.pushes as u64);
        self.deliveries.inc_by(s.deliveries as u64);
        self.drop_shed_low.inc_by(s.shed_low as u64);
        self.drop_shed_normal.inc_by(s.shed_normal as u64);
        self.drop_lagged.inc_by(s.lagged_events as u64);
        self.subscribers_lagged.inc_by(s.lagged_members as u64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Whether the node can take joins now, as `/readyz` answers it: not while
/// it drains, and in a fleet not while its Redis is unreachable (every join
/// is then refused `UNAVAILABLE`), so that a load balancer sends viewers
/// elsewhere until it answers again.
#[derive(Clone)]
pub struct Readiness {
    pub drain: Drain,
    /// The node's fleet link, if it is in one.
    pub fleet: Option<Fleet>,
}

impl Readiness {
    /// Why the node is not ready, or `None` if it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.drain.is_draining() {
            Some("draining")
        } else if self.fleet.as_ref().is_some_and(|f| !f.reachable()) {
            Some("redis unreachable")
        } else {
            None
        }
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Arc<Metrics>, ready: Readiness) -> Router {
    let fleet = ready.fleet.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                if let Some(f) = &fleet {
                    m.observe_redis(f);
                }
                async move {
                    (
                        [(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        m.encode(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let why = ready.not_ready();
                async move {
                    match why {
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                        None => (StatusCode::OK, "ready\n".to_string()),
                    }
                }
            }),
        )
}

/// Serves the metrics router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, ready)).with_graceful_shutdown(shutdown).await
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_drop_reason() {
        let m = Metrics::new();
        m.record_flush(FlushStats {
            pushes: 3,
            deliveries: 5,
            shed_low: 2,
            shed_normal: 1,
            lagged_events: 4,
            lagged_members: 1,
        });
        let text = m.encode();
        assert!(text.contains("roomcast_dropped_events_total{reason=\"shed_low\"} 2"), "{text}");
        assert!(text.contains("roomcast_dropped_events_total{reason=\"shed_normal\"} 1"));
        assert!(text.contains("roomcast_dropped_events_total{reason=\"lagged\"} 4"));
        assert!(text.contains("roomcast_deliveries_total 5"));
        assert!(text.contains("roomcast_subscribers_lagged_total 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
