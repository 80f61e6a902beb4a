//! Webhooks: events the node POSTs to the platform's backend (a user joined
//! or left and why, a room became empty or was closed, a message was
//! flagged), as signed JSON, at least once.
//!
//! * [`Hooks`] is the handle room and connection code emit through. `emit`
//!   never waits: it puts the event in a bounded queue, or counts it as
//!   dropped when the queue is full. Without a URL it does nothing.
//! * [`start`] spawns the dispatcher task, which takes events from the queue
//!   in batches of up to `batch_max`, POSTs each batch to the configured URL
//!   and retries it with backoff, with the same event ids, until it is
//!   accepted, refused for good, or out of attempts. One POST is in flight at
//!   a time, so the backend sees the node's events in the order they were
//!   emitted (apart from retries).
//! * [`verify`] and [`fresh`] are the receiver's checks: the signature, then
//!   the age of its timestamp.
//!
//! A POST's body is `{"events":[...]}`; each event has `id` (unique per
//! node, to de-duplicate redeliveries), `ts_ms` (when it happened) and
//! `type`. Its headers: `X-Roomcast-Timestamp` (unix seconds, set per
//! attempt) and `X-Roomcast-Signature: v1=<hex HMAC-SHA256(secret,
//! "{timestamp}.{body}")>`. README.md "Webhooks" is the receiver's recipe.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use roomcast_protocol::RoomId;
use serde::{Serialize, Serializer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::auth::Role;
use crate::config::WebhooksConfig;
use crate::metrics::{Metrics, WebhookMetrics};

pub(crate) mod client;
mod delivery;
mod signature;

pub use client::MAX_BACKOFF;
pub use signature::{fresh, verify};

/// Header carrying the unix time (seconds) the signature was made at.
pub const TIMESTAMP_HEADER: &str = "x-roomcast-timestamp";
/// Header carrying `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";
/// The age (either way) beyond which a receiver should refuse a timestamp.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a user left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client asked to leave.
    Left,
    /// A host or admin removed the user.
    Kicked,
    /// A host or admin removed the user and barred them from rejoining.
    Banned,
    /// The client stopped sending heartbeats.
    HeartbeatLoss,
    /// The connection closed or broke.
    Disconnect,
    /// The node is shutting down; the client will rejoin elsewhere.
    Drain,
}

impl LeaveReason {
    /// The name used in payloads and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Kicked => "kicked",
            Self::Banned => "banned",
            Self::HeartbeatLoss => "heartbeat_loss",
            Self::Disconnect => "disconnect",
            Self::Drain => "drain",
        }
    }
}

/// What the banned-words check did to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagAction {
    /// The message was refused and not broadcast.
    Refused,
    /// The message was broadcast with the words masked.
    Masked,
}

/// Everything the node tells the backend about. `conn` is the node's
/// connection number, to tell apart two sessions of one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HookEvent {
    UserJoined {
        #[serde(serialize_with = "room_str")]
        room: RoomId,
        user: Box<str>,
        #[serde(serialize_with = "role_str")]
        role: Role,
        conn: u64,
    },
    UserLeft {
        #[serde(serialize_with = "room_str")]
        room: RoomId,
        user: Box<str>,
        conn: u64,
        reason: LeaveReason,
    },
    /// The last member left; the room (and its history) is kept for a while.
    RoomEmpty {
        #[serde(serialize_with = "room_str")]
        room: RoomId,
    },
    /// The room is gone. `by` is the user who closed it, or `node` when the
    /// node did (an empty room's time ran out).
    RoomClosed {
        #[serde(serialize_with = "room_str")]
        room: RoomId,
        by: Box<str>,
    },
    MessageFlagged {
        #[serde(serialize_with = "room_str")]
        room: RoomId,
        user: Box<str>,
        text: Box<str>,
        action: FlagAction,
    },
}

fn room_str<S: Serializer>(room: &RoomId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(room.as_str())
}

fn role_str<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role.as_str())
}

/// `{node_epoch:x}-{n}`: unique per node incarnation, so a receiver can drop
/// a redelivered event by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    epoch: u64,
    n: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.n)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An event as queued and sent: its id and time, then the event's fields.
#[derive(Debug, Clone, Serialize)]
struct Envelope {
    id: EventId,
    ts_ms: u64,
    #[serde(flatten)]
    event: HookEvent,
}

#[derive(Serialize)]
struct Payload<'a> {
    events: &'a [Envelope],
}

/// The node's handle for emitting webhook events: cheap to clone, never
/// waits. `Hooks::default()` is disabled.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    queue: Option<Arc<Queue>>,
}

#[derive(Debug)]
struct Queue {
    /// Bounded by `queue_capacity`. Overflow policy: the new event is
    /// dropped and counted (`outcome="dropped"`); nothing already queued is
    /// touched, and the emitter never waits.
    tx: mpsc::Sender<Envelope>,
    epoch: u64,
    next: AtomicU64,
    metrics: WebhookMetrics,
}

impl Hooks {
    /// A handle that emits nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether events go anywhere. Callers whose events are costly to build
    /// can skip building them when this is false.
    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `event` for delivery, or counts it as dropped if the queue is
    /// full (or the dispatcher has stopped). Returns at once either way.
    pub fn emit(&self, event: HookEvent) {
        let Some(q) = &self.queue else { return };
        let id = EventId { epoch: q.epoch, n: q.next.fetch_add(1, Ordering::Relaxed) };
        let envelope = Envelope { id, ts_ms: roomcast_protocol::unix_ms(SystemTime::now()), event };
        // Raised before the send so the dispatcher's decrement never comes
        // first and shows a negative depth.
        q.metrics.queue_depth.inc();
        if q.tx.try_send(envelope).is_err() {
            q.metrics.queue_depth.dec();
            q.metrics.dropped.inc();
        }
    }
}

/// The running dispatcher. Dropping it leaves the task running for as long
/// as any [`Hooks`] is alive; [`Dispatcher::shutdown`] ends it.
#[derive(Debug)]
pub struct Dispatcher {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Dispatcher {
    /// Stops taking new events (later ones count as dropped), sends what is
    /// already queued, and waits for that for at most `within`; whatever is
    /// still unsent then is abandoned.
    pub async fn shutdown(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else { return };
        if tokio::time::timeout(within, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("webhook dispatcher stopped with events unsent");
        }
    }
}

/// A webhook configuration the node cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks.url {0:?} is not a valid http:// URL")]
    BadUrl(String),
    #[error("webhooks.url {0:?}: only http:// is supported")]
    UnsupportedScheme(String),
    #[error("webhooks.secret must be set when webhooks.url is")]
    NoSecret,
}

/// Starts webhook delivery for `config`, counting into `metrics`. Event ids
/// start with `node_epoch` (the node's start time), so they stay unique
/// across restarts. With no URL, returns a disabled [`Hooks`] and spawns
/// nothing. Must be called inside a tokio runtime.
pub fn start(
    config: &WebhooksConfig,
    metrics: &Metrics,
    node_epoch: u64,
) -> Result<(Hooks, Dispatcher), WebhookError> {
    let Some(url) = &config.url else {
        return Ok((Hooks::disabled(), Dispatcher { stop: None, task: None }));
    };
    let uri: hyper::Uri = url.parse().map_err(|_| WebhookError::BadUrl(url.clone()))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => {}
        Some("https") => return Err(WebhookError::UnsupportedScheme(url.clone())),
        _ => return Err(WebhookError::BadUrl(url.clone())),
    }
    if config.secret.is_empty() {
        return Err(WebhookError::NoSecret);
    }
    let metrics = metrics.webhooks.clone();
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    let sender = delivery::Sender::new(config, uri, metrics.clone());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(dispatch(rx, sender, metrics.clone(), config.batch_max.max(1), stop_rx));
    let queue = Queue { tx, epoch: node_epoch, next: AtomicU64::new(1), metrics };
    Ok((Hooks { queue: Some(Arc::new(queue)) }, Dispatcher { stop: Some(stop_tx), task: Some(task) }))
}

/// The dispatcher: batches from the queue, one POST at a time, until every
/// [`Hooks`] is gone or [`Dispatcher::shutdown`] closes the queue and what
/// was in it has been sent.
async fn dispatch(
    mut rx: mpsc::Receiver<Envelope>,
    sender: delivery::Sender,
    metrics: WebhookMetrics,
    batch_max: usize,
    mut stop: oneshot::Receiver<()>,
) {
    let mut watching_stop = true;
    let mut batch = Vec::with_capacity(batch_max);
    loop {
        let first = tokio::select! {
            stopped = &mut stop, if watching_stop => {
                watching_stop = false;
                // A dropped `Dispatcher` is not a request to stop.
                if stopped.is_ok() {
                    rx.close();
                }
                continue;
            }
            next = rx.recv() => match next {
                Some(envelope) => envelope,
                None => break,
            },
        };
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        metrics.queue_depth.dec_by(batch.len() as i64);
        sender.deliver(&batch).await;
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn payload_is_the_documented_json() {
        let room = RoomId::new("r1").unwrap();
        let events = [
            Envelope {
                id: EventId { epoch: 0x18c, n: 1 },
                ts_ms: 1_700_000_000_123,
                event: HookEvent::UserJoined {
                    room: room.clone(),
                    user: "u1".into(),
                    role: Role::Host,
                    conn: 7,
                },
            },
            Envelope {
                id: EventId { epoch: 0x18c, n: 2 },
                ts_ms: 1_700_000_000_124,
                event: HookEvent::UserLeft {
                    room: room.clone(),
                    user: "u1".into(),
                    conn: 7,
                    reason: LeaveReason::HeartbeatLoss,
                },
            },
            Envelope {
                id: EventId { epoch: 0x18c, n: 3 },
                ts_ms: 3,
                event: HookEvent::RoomEmpty { room: room.clone() },
            },
            Envelope {
                id: EventId { epoch: 0x18c, n: 4 },
                ts_ms: 4,
                event: HookEvent::RoomClosed { room: room.clone(), by: "node".into() },
            },
            Envelope {
                id: EventId { epoch: 0x18c, n: 5 },
                ts_ms: 5,
                event: HookEvent::MessageFlagged {
                    room,
                    user: "u2".into(),
                    text: "bad".into(),
                    action: FlagAction::Masked,
                },
            },
        ];
        let json = serde_json::to_string(&Payload { events: &events }).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"events":["#,
                r#"{"id":"18c-1","ts_ms":1700000000123,"type":"user_joined","room":"r1","user":"u1","role":"host","conn":7},"#,
                r#"{"id":"18c-2","ts_ms":1700000000124,"type":"user_left","room":"r1","user":"u1","conn":7,"reason":"heartbeat_loss"},"#,
                r#"{"id":"18c-3","ts_ms":3,"type":"room_empty","room":"r1"},"#,
                r#"{"id":"18c-4","ts_ms":4,"type":"room_closed","room":"r1","by":"node"},"#,
                r#"{"id":"18c-5","ts_ms":5,"type":"message_flagged","room":"r1","user":"u2","text":"bad","action":"masked"}"#,
                "]}"
            )
        );
    }

    #[test]
    fn leave_reasons_have_their_wire_names() {
        let names: Vec<_> = [
            LeaveReason::Left,
            LeaveReason::Kicked,
            LeaveReason::Banned,
            LeaveReason::HeartbeatLoss,
            LeaveReason::Disconnect,
            LeaveReason::Drain,
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                r#""left""#,
                r#""kicked""#,
                r#""banned""#,
                r#""heartbeat_loss""#,
                r#""disconnect""#,
                r#""drain""#
            ]
        );
    }

    #[test]
    fn config_reads_the_webhooks_table_and_rejects_unknown_keys() {
        let c = crate::Config::from_toml(
            "[webhooks]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"s\"\nmax_attempts = 3\n",
        )
        .unwrap();
        assert_eq!(c.webhooks.url.as_deref(), Some("http://127.0.0.1:9/hooks"));
        assert_eq!(c.webhooks.max_attempts, 3);
        assert_eq!(c.webhooks.timeout_ms, 5_000);
        assert_eq!(c.webhooks.queue_capacity, 10_000);
        assert_eq!(c.webhooks.batch_max, 100);
        assert!(crate::Config::default().webhooks.url.is_none());
        assert!(crate::Config::from_toml("[webhooks]\nulr = \"http://x\"\n").is_err());
    }

    #[tokio::test]
    async fn start_refuses_urls_it_cannot_send_to_and_a_missing_secret() {
        let metrics = Metrics::new();
        let with = |url: &str, secret: &str| WebhooksConfig {
            url: Some(url.into()),
            secret: secret.into(),
            ..WebhooksConfig::default()
        };
        assert!(matches!(
            start(&with("https://x/h", "s"), &metrics, 1),
            Err(WebhookError::UnsupportedScheme(_))
        ));
        assert!(matches!(start(&with("not a url", "s"), &metrics, 1), Err(WebhookError::BadUrl(_))));
        assert!(matches!(start(&with("/relative", "s"), &metrics, 1), Err(WebhookError::BadUrl(_))));
        assert!(matches!(start(&with("http://x/h", ""), &metrics, 1), Err(WebhookError::NoSecret)));
        let (hooks, dispatcher) = start(&with("http://127.0.0.1:9/h", "s"), &metrics, 1).unwrap();
        assert!(hooks.is_enabled());
        dispatcher.shutdown(Duration::from_secs(1)).await;
    }

    #[test]
    fn a_disabled_handle_queues_and_counts_nothing() {
        let hooks = Hooks::disabled();
        assert!(!hooks.is_enabled());
        hooks.emit(HookEvent::RoomEmpty { room: RoomId::new("r").unwrap() });
    }
}
