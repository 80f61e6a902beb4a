//! The `roomcast bench` command line: which scenario, against which server,
//! and its knobs.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use roomcast_client::Trust;

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PeerServer {
    /// A roomcast node.
    Roomcast,
    /// A NATS server (fanout and idle), for comparison: `--spawn` starts
    /// `--nats-server` on a free port, or give `--server` and `--server-pid`.
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Hold many joined, heartbeating connections.
    Idle,
    /// Connect, authenticate and join one room as fast as possible.
    JoinStorm,
    /// One publisher into a room of N subscribers.
    Fanout,
    /// Many viewers exceed the room's chat budget at once.
    ChatStorm,
    /// `fanout` with and without a share of subscribers that stop reading.
    SlowConsumers,
    /// Gift senders at their peak rate into a room of viewers.
    GiftBurst,
    /// Every viewer reports likes once a second while a host chats.
    LikeStorm,
    /// Every player answers one quiz question within its window.
    QuizBurst,
    /// Two fleet nodes and a Redis (all started for the run): one
    /// publisher on the first node, its subscribers on the same node, split
    /// across both, and all on the other.
    CrossNode,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub(crate) scenario: Scenario,
    /// Connections (idle, join-storm).
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Subscribers in the room (fanout, slow-consumers), watchers
    /// (chat-storm), viewers (gift-burst, like-storm) or players (quiz-burst).
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Publisher messages per second (fanout, slow-consumers).
    #[arg(long, default_value_t = 20.0)]
    pub(crate) rate: f64,
    /// Message size in bytes (the text of each chat).
    #[arg(long, default_value_t = 120)]
    pub(crate) size: usize,
    /// Seconds the measured phase lasts (publishing, holding, storming; the
    /// answer window of quiz-burst).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Rooms the idle connections spread over.
    #[arg(long, default_value_t = 100)]
    pub(crate) rooms: usize,
    /// Chat senders (chat-storm) or gift senders (gift-burst).
    #[arg(long, default_value_t = 200)]
    pub(crate) senders: usize,
    /// Messages (chat-storm) or gifts (gift-burst) per second per sender.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) sender_rate: f64,
    /// gift-burst: charge through the webhook ledger, against a stand-in
    /// backend in this process that answers after this many ms (needs
    /// `--spawn`). Without it, the node's embedded ledger.
    #[arg(long, requires = "spawn")]
    pub(crate) ledger_delay_ms: Option<u64>,
    /// like-storm: taps each viewer reports per second.
    #[arg(long, default_value_t = 5)]
    pub(crate) like_taps: u32,
    /// Share of subscribers that stop reading (slow-consumers).
    #[arg(long, default_value_t = 0.01)]
    pub(crate) slow_share: f64,
    /// Connection attempts in flight at once while ramping up.
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// What the watching viewers run on: the edge driver (many connections
    /// per task, cheaper per delivery than the node) or SDK clients.
    #[arg(long, value_enum, default_value = "edge")]
    pub(crate) clients: Clients,
    /// UDP sockets the connections are spread over.
    #[arg(long, default_value_t = 8)]
    pub(crate) sockets: usize,
    /// Room name (prefix for idle rooms).
    #[arg(long, default_value = "bench")]
    pub(crate) room: String,
    /// HS256 secret the server verifies tokens with. Default: the
    /// development secret in the local data directory, or the spawned
    /// server's.
    #[arg(long, env = "ROOMCAST_TOKEN_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// The node's admin API (gift-burst credits its senders, like-storm
    /// reads the room's total). A spawned node's is used without it.
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) admin: Option<SocketAddr>,
    /// The admin API key for `--admin`.
    #[arg(long, env = "ROOMCAST_ADMIN_API_KEY", hide_env_values = true)]
    pub(crate) admin_key: Option<String>,
    /// The node's metrics endpoint (like-storm reads the likes it counted).
    /// A spawned node's is used without it.
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) metrics: Option<SocketAddr>,
    /// PID of the server, to read its CPU time and memory from /proc.
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) server_pid: Option<u32>,
    /// Start a `roomcast-server` (from next to this binary) on a free
    /// loopback port for the run, and stop it after.
    #[arg(long)]
    pub(crate) spawn: bool,
    /// CPUs to pin the spawned server to (`taskset -c` list, e.g. `0`).
    #[arg(long, requires = "spawn")]
    pub(crate) server_cpus: Option<String>,
    /// Extra argument for the spawned server (repeatable), e.g.
    /// `--server-arg=--config=bench.toml`.
    #[arg(long = "server-arg", allow_hyphen_values = true, requires = "spawn")]
    pub(crate) server_args: Vec<String>,
    /// The server to measure: roomcast, or a peer measured the same way.
    #[arg(long, value_enum, default_value = "roomcast")]
    pub(crate) peer: PeerServer,
    /// The redis-server executable cross-node starts.
    #[arg(long, default_value = "redis-server")]
    pub(crate) redis_server: String,
    /// CPUs to pin cross-node's Redis to (`taskset -c` list).
    #[arg(long, requires = "spawn")]
    pub(crate) redis_cpus: Option<String>,
    /// The nats-server executable `--peer nats --spawn` starts.
    #[arg(long, default_value = "nats-server")]
    pub(crate) nats_server: String,
    /// Seconds to wait after the measured phase for messages in flight.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,
    /// Give up on the run after this many seconds in all.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) timeout: f64,
}

/// What the watching viewers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Clients {
    Edge,
    Sdk,
}

/// Where the global client options point.
pub(crate) struct Endpoint {
    pub(crate) server: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) trust: Option<Trust>,
}
