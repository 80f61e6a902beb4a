//! roomcast-server: a node that carries live rooms over QUIC.
//!
//! * [`run`] serves an already bound [`endpoint::Listener`] until a
//!   shutdown future resolves; [`endpoint::bind`] binds one from a [`Config`].
//! * [`edge`] is the transport driver: one task per UDP socket drives every
//!   QUIC connection on it through quinn-proto; `connection` holds the
//!   sessions, as steps that driver calls.
//! * `room` holds the room state machine, the room task and the per-member
//!   outboxes.
//! * [`auth`] verifies connection tokens (JWT, HS256 or ES256) locally.
//! * [`Drain`] stops a node without losing what it acknowledged: the
//!   shutdown future, SIGTERM and the admin API all pull the same switch.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = roomcast_server::Config::default();
//! let (endpoint, cert) = roomcast_server::endpoint::bind(&config)?;
//! println!("pin {}", cert.fingerprint);
//! roomcast_server::run(config, endpoint, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
mod connection;
pub mod drain;
mod durable;
pub mod edge;
pub mod endpoint;
pub mod gate;
pub mod gifts;
pub mod metrics;
pub mod moderation;
pub mod quiz;
pub mod rate;
pub mod room;
pub mod tls;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use roomcast_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::info;

pub use config::Config;
pub use drain::{Drain, DrainState};

/// Most users whose like rate is tracked at once (see [`rate::RateTable`]).
const MAX_LIKERS: usize = 1_000_000;

/// State shared by every connection of the node.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) verifier: auth::TokenVerifier,
    pub(crate) rooms: Arc<room::Rooms>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) next_conn: AtomicU64,
    /// Start time of this node, to make session ids unique across restarts.
    pub(crate) node_epoch: u64,
    /// The node's drain switch: `drain.start()` begins a graceful shutdown
    /// (see [`drain`]); `drain.started()` resolves when one begins.
    pub(crate) drain: Drain,
    /// Mutes, bans and the banned-words filter, checked by sessions.
    pub(crate) moderation: Arc<moderation::Moderation>,
    /// Events for the platform's webhooks; emitting never waits.
    pub(crate) hooks: webhooks::Hooks,
    /// The gift catalogue, the per-user gift cap and the ledger.
    pub(crate) gifts: Arc<gifts::Gifts>,
    /// Each user's like cap (taps counted per second).
    pub(crate) likes: rate::RateTable,
    /// The live quizzes, one per room at most.
    pub(crate) quizzes: Arc<quiz::Quizzes>,
}

/// Serves `endpoint` until `shutdown` resolves, with metrics on
/// `config.metrics_listen` if set. See [`serve`].
pub async fn run(
    config: Config,
    endpoint: endpoint::Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.with_context(|| format!("binding metrics on {addr}"))?),
        None => None,
    };
    let admin = match config.admin.listen {
        Some(addr) => {
            Some(admin::bind(addr).await.with_context(|| format!("binding the admin API on {addr}"))?)
        }
        None => None,
    };
    serve_with_drain(config, endpoint, listener, admin, Drain::new(), shutdown).await
}

/// Serves `endpoint`, and `/metrics`, `/healthz` and `/readyz` on
/// `metrics_listener` if given, until `shutdown` resolves; then drains (see
/// [`drain`]): refuses new connections, lets in-flight work settle, closes
/// every connection with `SERVER_DRAINING` and a retry-after hint so clients
/// reconnect elsewhere and resume, and returns within
/// `config.drain.timeout_secs`. It installs the node's QUIC server
/// configuration ([`endpoint::server_config`], counting resumed handshakes
/// in the metrics) on `endpoint`, which starts accepting then.
pub async fn serve(
    config: Config,
    endpoint: endpoint::Listener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_with_drain(config, endpoint, metrics_listener, None, Drain::new(), shutdown).await
}

/// [`serve`] with the admin API ([`admin`]) on `admin_listener` if given,
/// and a drain switch made by the caller: `drain.start()` drains the node
/// just as `shutdown` resolving does.
pub async fn serve_with_drain(
    config: Config,
    endpoint: endpoint::Listener,
    metrics_listener: Option<tokio::net::TcpListener>,
    admin_listener: Option<tokio::net::TcpListener>,
    drain: Drain,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut metrics = metrics::Metrics::new();
    if config.redis.is_some() {
        metrics.register_redis();
    }
    let metrics = Arc::new(metrics);
    let (server_config, _) = endpoint::server_config(&config, metrics.tls_resumed.clone())?;
    let node_epoch = roomcast_protocol::unix_ms(SystemTime::now());
    let (hooks, hook_dispatcher) = webhooks::start(&config.webhooks, &metrics, node_epoch)?;
    let archive = match config.room.archive_retention_secs {
        0 => None,
        secs => {
            let dir = config.data_dir.join("archive");
            let (retention, max) = (Duration::from_secs(secs), config.room.archive_max_bytes);
            let archive = room::Archive::open(
                dir.clone(),
                retention,
                max,
                room::ArchiveCounters {
                    queue_full: metrics.archive_dropped.clone(),
                    write_failed: metrics.archive_write_failed.clone(),
                    write_failures: metrics.storage_failures.archive.clone(),
                },
            )
            .with_context(|| format!("opening the history archive in {}", dir.display()))?;
            Some(archive)
        }
    };
    // Where clients reach this node, as the platform is told.
    let advertise = config.fleet.advertise.clone().unwrap_or_else(|| match endpoint.local_addr() {
        Ok(a) if !a.ip().is_unspecified() => a.to_string(),
        _ => String::new(),
    });
    let (tx, mut deliveries) = tokio::sync::mpsc::channel(cluster::DELIVERY_QUEUE);
    let fleet = match &config.redis {
        None => None,
        Some(url) => {
            let dropped = metrics.fleet_deliveries_dropped.clone();
            let options = cluster::Options {
                redis: url.clone(),
                cluster: config.fleet.cluster,
                history_len: config.room.history_len,
                unreachable_after: Duration::from_millis(config.fleet.unreachable_after_ms),
                advertise: advertise.clone(),
            };
            let fleet = cluster::Fleet::connect(&options, tx, move || {
                dropped.inc();
            })
            .await
            .with_context(|| format!("the fleet's Redis URL {url}"))?;
            info!(redis = %url, "in a fleet: rooms follow the shared log");
            Some(fleet)
        }
    };
    let gifts = gifts::Gifts::open(&config.gifts, &config.data_dir, node_epoch, fleet.as_ref())
        .with_context(|| format!("opening the gift ledger in {}", config.data_dir.display()))?;
    gifts.ledger.count_failures(&metrics.storage_failures);
    let gifts = Arc::new(gifts);
    let rooms = match fleet {
        None => room::Rooms::with_archive(config.room.clone(), metrics.clone(), hooks.clone(), archive),
        Some(fleet) => {
            let mut reconnections = fleet.reconnections();
            let rooms =
                room::Rooms::in_fleet(config.room.clone(), metrics.clone(), hooks.clone(), archive, fleet);
            let router = rooms.clone();
            tokio::spawn(async move {
                while let Some(d) = deliveries.recv().await {
                    router.deliver(d);
                }
            });
            let catcher = rooms.clone();
            tokio::spawn(async move {
                while reconnections.changed().await.is_ok() {
                    catcher.catch_up();
                }
            });
            rooms
        }
    };
    let shared = Arc::new(Shared {
        verifier: auth::verifier(&config)?,
        rooms,
        metrics: metrics.clone(),
        next_conn: AtomicU64::new(1),
        node_epoch,
        hooks,
        drain: drain.clone(),
        moderation: moderation::Moderation::new(&config.moderation),
        gifts,
        likes: rate::RateTable::new(config.likes.per_user_per_sec, config.likes.burst_secs, MAX_LIKERS),
        quizzes: Arc::default(),
        config,
    });
    if let Some(fleet) = shared.rooms.fleet() {
        let follow = moderation::follow_fleet(shared.moderation.clone(), shared.rooms.clone(), fleet.clone());
        tokio::spawn(follow);
    }
    if let Some(path) = shared.config.moderation.banned_words_file.clone() {
        let action = shared.config.moderation.banned_words_action;
        let watch = moderation::watch_words(shared.moderation.clone(), path, action, Duration::from_secs(2));
        tokio::spawn(watch);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(());
    if let Some(listener) = admin_listener {
        let mut state = admin::AdminState::new(
            &shared.config,
            shared.rooms.clone(),
            shared.moderation.clone(),
            shared.metrics.clone(),
            drain.clone(),
            shared.gifts.clone(),
            shared.quizzes.clone(),
        )?;
        state.advertise = advertise.as_str().into();
        let mut stop_rx = stop_tx.subscribe();
        let stopped = async move {
            let _ = stop_rx.changed().await;
        };
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, state, stopped).await {
                tracing::warn!(error = %e, "admin API failed");
            }
        });
    }
    if let Some(listener) = metrics_listener {
        let stopped = async move {
            let _ = stop_rx.changed().await;
        };
        let ready = metrics::Readiness { drain: drain.clone(), fleet: shared.rooms.fleet().cloned() };
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, metrics, ready, stopped).await {
                tracing::warn!(error = %e, "metrics endpoint failed");
            }
        });
    }
    // Accept only once everything a session needs is ready: a bad key fails
    // before any client is let in.
    let limits = &shared.config.moderation;
    let gate = Arc::new(gate::Gate::new(limits.max_connections, limits.connections_per_ip_per_sec));
    let open = Arc::new(AtomicUsize::new(0));
    let server_config = Arc::new(server_config);
    let sockets = endpoint.into_sockets();
    let nodes =
        sockets.iter().map(|_| connection::Node::new(shared.clone(), gate.clone(), open.clone())).collect();
    let steered = shared.metrics.edge_steered.clone();
    let on_steer: edge::Steered = Arc::new(move || {
        steered.inc();
    });
    let group = edge::Driver::group(sockets, Some(server_config), nodes, on_steer)
        .context("starting the transport drivers")?;
    info!(drivers = group.len(), "serving");
    let mut drivers = Vec::new();
    for driver in group {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        drivers.push((tx, tokio::spawn(driver.run(rx))));
    }
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {
            drain.start();
        }
        () = drain.started() => {}
    }
    drain_node(&shared, drivers, &open).await;
    // Leaves reported during the drain still reach the platform.
    hook_dispatcher.shutdown(Duration::from_secs(5)).await;
    shared.drain.set_drained();
    let _ = stop_tx.send(());
    Ok(())
}

type Drivers =
    Vec<(tokio::sync::mpsc::Sender<connection::Command>, tokio::task::JoinHandle<connection::Node>)>;

/// Steps 1 to 4 of a drain (see [`drain`]), within `config.drain.timeout_secs`.
async fn drain_node(shared: &Shared, drivers: Drivers, open: &AtomicUsize) {
    let started = Instant::now();
    let config = &shared.config.drain;
    let deadline = started + config.timeout();
    shared.metrics.draining.set(1);
    info!(connections = open.load(Ordering::Relaxed), "draining");
    let reason = bytes::Bytes::from(drain::close_reason(config.retry_after()));
    for (tx, _) in &drivers {
        let _ = tx.send(connection::Command::Drain { reason: reason.clone() }).await;
    }
    // Settle: every connection gone by itself (each closes once its rooms'
    // last events and its answers are acknowledged), or the settle time over.
    let settled = started + config.settle();
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while open.load(Ordering::Relaxed) > 0 && Instant::now() < settled {
        poll.tick().await;
    }
    let left = open.load(Ordering::Relaxed);
    for (tx, _) in &drivers {
        let close = connection::Command::CloseAll { code: ErrorCode::ServerDraining, reason: reason.clone() };
        let _ = tx.send(close).await;
    }
    // The closes must leave before the process does; a little time past the
    // bound is given only if it is already spent, so they are sent at all.
    let idle_by = deadline.max(Instant::now() + Duration::from_millis(100));
    while open.load(Ordering::Relaxed) > 0 && Instant::now() < idle_by {
        poll.tick().await;
    }
    let idle = open.load(Ordering::Relaxed) == 0;
    for (tx, task) in drivers {
        let _ = tx.send(connection::Command::Stop).await;
        let _ = task.await;
    }
    info!(closed = left, elapsed_ms = started.elapsed().as_millis() as u64, idle, "drained");
}
