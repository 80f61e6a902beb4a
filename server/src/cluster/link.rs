//! The connection under [`super::Fleet`]: one Redis or a Redis Cluster,
//! behind one type, and whether it has answered lately.
//!
//! * A single Redis is one RESP3 `ConnectionManager`: commands and
//!   subscriptions share it, and it resubscribes after a reconnect. Rooms'
//!   channels are plain pub/sub channels.
//! * A Redis Cluster is one `ClusterConnection` over RESP3 with sharded
//!   pub/sub (`SSUBSCRIBE`, `SPUBLISH`), so a room's events travel only
//!   through the shard that owns the room's slot; the room's keys and its
//!   channel share a hash tag and so a slot.
//!
//! Neither needs Redis to be up when the node starts: the single
//! connection is made lazily, the cluster's on first use. A ping every
//! [`PING_EVERY`] keeps [`Link::reachable`] current; the node refuses joins
//! once Redis has not answered for longer than its bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::FleetError;

/// How often the link checks that Redis answers.
pub(super) const PING_EVERY: Duration = Duration::from_millis(500);

/// How long a connection attempt or a request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One connection to the fleet's Redis, of either kind. Cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Starts receiving `channel` (sharded in a cluster).
    pub(super) async fn subscribe(mut self, channel: String) -> Result<(), FleetError> {
        match &mut self {
            Conn::Single(c) => c.subscribe(channel).await?,
            Conn::Cluster(c) => c.ssubscribe(channel).await?,
        }
        Ok(())
    }

    /// Stops receiving `channel`.
    pub(super) async fn unsubscribe(mut self, channel: String) -> Result<(), FleetError> {
        match &mut self {
            Conn::Single(c) => c.unsubscribe(channel).await?,
            Conn::Cluster(c) => c.sunsubscribe(channel).await?,
        }
        Ok(())
    }
}

/// The link: how to connect, the connection once made, and when Redis last
/// answered.
pub(super) struct Link {
    cluster: Option<redis::cluster::ClusterClient>,
    conn: OnceCell<Conn>,
    /// Milliseconds after `born` of the last answered ping; 0: never.
    last_answer_ms: AtomicU64,
    /// The round trip of the last answered ping, in microseconds; 0: none.
    last_rtt_us: AtomicU64,
    born: Instant,
    unreachable_after: Duration,
    /// The connection dropped (a failed ping, or the client library's
    /// disconnection notice) and subscriptions may have missed events.
    resync: Arc<AtomicBool>,
    /// Counts the times Redis answered again after that: rooms then read
    /// what they may have missed from their streams.
    reconnected: tokio::sync::watch::Sender<u64>,
}

/// Adds `protocol=resp3` to a Redis URL that names no protocol.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

impl Link {
    /// A link to the Redis at `url`, or (with `cluster`) to the Redis
    /// Cluster whose seed nodes `url` lists, comma-separated. Fails only on
    /// a malformed URL; whether Redis answers shows in [`Link::reachable`].
    pub(super) fn new(
        url: &str,
        cluster: bool,
        unreachable_after: Duration,
        push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, FleetError> {
        let resync = Arc::new(AtomicBool::new(false));
        let dropped = resync.clone();
        let push = move |info: PushInfo| {
            if info.kind == redis::PushKind::Disconnection {
                dropped.store(true, Ordering::Relaxed);
            }
            push(info)
        };
        let (cluster, conn) = if cluster {
            let seeds: Vec<String> = url.split(',').map(|u| resp3(u.trim())).collect();
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push)
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .retries(2)
                .build()?;
            (Some(client), OnceCell::new())
        } else {
            let client = redis::Client::open(resp3(url))?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_push_sender(push)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT))
                // A request fails within a few seconds when Redis is gone
                // (the node answers UNAVAILABLE); reconnecting goes on in
                // the background.
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, config)?;
            (None, OnceCell::new_with(Some(Conn::Single(manager))))
        };
        Ok(Arc::new(Self {
            cluster,
            conn,
            last_answer_ms: AtomicU64::new(0),
            last_rtt_us: AtomicU64::new(0),
            born: Instant::now(),
            unreachable_after,
            resync,
            reconnected: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// The connection, made now if it has not been yet.
    pub(super) async fn conn(&self) -> Result<Conn, FleetError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let Some(client) = &self.cluster else {
                    return Err(FleetError::Unreachable);
                };
                match tokio::time::timeout(TIMEOUT, client.get_async_connection()).await {
                    Ok(Ok(c)) => Ok(Conn::Cluster(c)),
                    Ok(Err(e)) => Err(FleetError::Redis(e)),
                    Err(_) => Err(FleetError::Unreachable),
                }
            })
            .await?;
        Ok(conn.clone())
    }

    /// Whether Redis has answered within the bound.
    pub(super) fn reachable(&self) -> bool {
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        last > 0 && self.born.elapsed().saturating_sub(Duration::from_millis(last)) <= self.unreachable_after
    }

    /// The round trip of the last answered ping, if one was.
    pub(super) fn last_rtt(&self) -> Option<Duration> {
        let us = self.last_rtt_us.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// Pings Redis once, and notes when it answered and how long it took.
    pub(super) async fn ping(&self) -> bool {
        let started = Instant::now();
        let answered = async {
            let mut conn = self.conn().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<_, FleetError>(())
        };
        let ok = matches!(tokio::time::timeout(TIMEOUT, answered).await, Ok(Ok(())));
        if ok {
            let rtt = started.elapsed().as_micros().clamp(1, u128::from(u64::MAX)) as u64;
            self.last_rtt_us.store(rtt, Ordering::Relaxed);
            self.answered();
        }
        ok
    }

    /// Changes each time Redis answers again after the connection dropped.
    pub(super) fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnected.subscribe()
    }

    /// Notes that Redis answered just now.
    pub(super) fn answered(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_answer_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Pings every [`PING_EVERY`] for as long as the node holds the link.
    pub(super) fn keep_checking(self: &Arc<Self>) {
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(link) = link.upgrade() else { break };
                let was = link.reachable();
                let now = link.ping().await;
                if !now {
                    link.resync.store(true, Ordering::Relaxed);
                } else if link.resync.swap(false, Ordering::Relaxed) {
                    // Subscriptions are back with the connection: what was
                    // published meanwhile is read from the streams.
                    link.reconnected.send_modify(|n| *n += 1);
                }
                if was && !link.reachable() {
                    tracing::warn!("the fleet's Redis is unreachable: new joins are refused");
                } else if !was && now {
                    tracing::info!("the fleet's Redis answers");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_ask_for_resp3_unless_they_name_a_protocol() {
        assert_eq!(resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(resp3("redis://h:1/?db=2"), "redis://h:1/?db=2&protocol=resp3");
        assert_eq!(resp3("redis://h:1?protocol=resp2"), "redis://h:1?protocol=resp2");
    }
}
