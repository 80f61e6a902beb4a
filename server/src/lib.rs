//! roomcast-server: a node that carries live rooms over QUIC.
//!
//! * [`run`] serves an already bound [`quinn::Endpoint`] until a shutdown
//!   future resolves; [`endpoint::bind`] binds one from a [`Config`].
//! * `room` holds the room state machine, the room task and the per-member
//!   outboxes; `connection` one task per QUIC connection.
//! * [`auth`] verifies connection tokens (JWT, HS256 or ES256) locally.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = roomcast_server::Config::default();
//! let (endpoint, cert) = roomcast_server::endpoint::bind(&config)?;
//! println!("pin {}", cert.fingerprint);
//! roomcast_server::run(config, endpoint, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod auth;
pub mod config;
mod connection;
pub mod endpoint;
pub mod metrics;
pub mod room;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use roomcast_protocol::ErrorCode;
use tracing::info;

pub use config::Config;

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
}

/// Serves `endpoint` until `shutdown` resolves, with metrics on
/// `config.metrics_listen` if set. See [`serve`].
pub async fn run(
    config: Config,
    endpoint: quinn::Endpoint,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.with_context(|| format!("binding metrics on {addr}"))?),
        None => None,
    };
    serve(config, endpoint, listener, shutdown).await
}

/// Serves `endpoint`, and `/metrics` on `metrics_listener` if given, until
/// `shutdown` resolves; then closes every connection with `SERVER_DRAINING`
/// so clients reconnect elsewhere and resume. It installs the node's QUIC
/// server configuration ([`endpoint::server_config`], counting resumed handshakes
/// in the metrics) on `endpoint`, which starts accepting then.
pub async fn serve(
    config: Config,
    endpoint: quinn::Endpoint,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let (server_config, _) = endpoint::server_config(&config, metrics.tls_resumed.clone())?;
    let shared = Arc::new(Shared {
        verifier: auth::verifier(&config)?,
        rooms: room::Rooms::new(config.room.clone(), metrics.clone()),
        metrics: metrics.clone(),
        next_conn: AtomicU64::new(1),
        node_epoch: roomcast_protocol::unix_ms(SystemTime::now()),
        config,
    });
    // Accept only once everything a session needs is ready: a bad key fails
    // before any client is let in.
    endpoint.set_server_config(Some(server_config));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(());
    if let Some(listener) = metrics_listener {
        let stopped = async move {
            let _ = stop_rx.changed().await;
        };
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, metrics, stopped).await {
                tracing::warn!(error = %e, "metrics endpoint failed");
            }
        });
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tokio::spawn(connection::serve(Box::new(incoming), shared.clone()));
                }
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(());
    endpoint.close(ErrorCode::ServerDraining.to_code().into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}
