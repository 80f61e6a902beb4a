//! `roomcast bench SCENARIO`: the load generator.
//!
//! One process opens many SDK sessions, multiplexed over a few UDP sockets,
//! drives a scenario for a bounded time, and reports a table and one JSON
//! line. With the server's PID (or a server it starts itself) it also reports
//! the server's CPU time and memory from /proc, so every figure comes with
//! what it cost.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use roomcast_client::{Client, ClientConfig, Event, Events, Trust, v1};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

mod nats;

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
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Connections (idle, join-storm).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Subscribers in the room (fanout, slow-consumers) or watchers (chat-storm).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publisher messages per second (fanout, slow-consumers).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Message size in bytes (the text of each chat).
    #[arg(long, default_value_t = 120)]
    size: usize,
    /// Seconds the measured phase lasts (publishing, holding, storming).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rooms the idle connections spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Chat senders (chat-storm).
    #[arg(long, default_value_t = 200)]
    senders: usize,
    /// Messages per second per sender (chat-storm).
    #[arg(long, default_value_t = 1.0)]
    sender_rate: f64,
    /// Share of subscribers that stop reading (slow-consumers).
    #[arg(long, default_value_t = 0.01)]
    slow_share: f64,
    /// Connection attempts in flight at once while ramping up.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// UDP sockets the connections are spread over.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Room name (prefix for idle rooms).
    #[arg(long, default_value = "bench")]
    room: String,
    /// HS256 secret the server verifies tokens with. Default: the
    /// development secret in the local data directory, or the spawned
    /// server's.
    #[arg(long, env = "ROOMCAST_TOKEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// PID of the server, to read its CPU time and memory from /proc.
    #[arg(long, conflicts_with = "spawn")]
    server_pid: Option<u32>,
    /// Start a `roomcast-server` (from next to this binary) on a free
    /// loopback port for the run, and stop it after.
    #[arg(long)]
    spawn: bool,
    /// CPUs to pin the spawned server to (`taskset -c` list, e.g. `0`).
    #[arg(long, requires = "spawn")]
    server_cpus: Option<String>,
    /// Extra argument for the spawned server (repeatable), e.g.
    /// `--server-arg=--config=bench.toml`.
    #[arg(long = "server-arg", allow_hyphen_values = true, requires = "spawn")]
    server_args: Vec<String>,
    /// The server to measure: roomcast, or a peer measured the same way.
    #[arg(long, value_enum, default_value = "roomcast")]
    peer: PeerServer,
    /// The nats-server executable `--peer nats --spawn` starts.
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    /// Seconds to wait after the measured phase for messages in flight.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Give up on the run after this many seconds in all.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

/// Where the global client options point.
pub(crate) struct Endpoint {
    pub server: SocketAddr,
    pub server_name: String,
    pub trust: Option<Trust>,
}

/// Receive and send buffer of each of the generator's UDP sockets.
const SOCKET_BUFFER: usize = 16 << 20;

/// Microseconds since the process started: publishers stamp it into the
/// payload, receivers in the same process subtract it from their clock.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A payload of `size` bytes that starts with the send time.
fn stamped(size: usize) -> String {
    let mut s = format!("{:>15}|", now_us());
    while s.len() < size {
        s.push('x');
    }
    s
}

fn stamp_of(text: &str) -> Option<u64> {
    text.get(..15)?.trim().parse().ok()
}

fn event_text(e: &v1::RoomEvent) -> &str {
    use v1::room_event::Kind;
    match &e.kind {
        Some(Kind::Chat(c)) => &c.text,
        Some(Kind::HostMessage(h)) => &h.text,
        Some(Kind::SystemNotice(n)) => &n.text,
        _ => "",
    }
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    cpu: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
    at: Instant,
}

/// Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on Linux).
const USER_HZ: u64 = 100;

fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu: Duration::from_millis((utime + stime) * 1000 / USER_HZ),
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
        at: Instant::now(),
    })
}

/// A server to measure, and maybe one we started.
struct Target {
    addr: SocketAddr,
    server_name: String,
    trust: Trust,
    secret: Vec<u8>,
    pid: Option<String>,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
    endpoints: Vec<quinn::Endpoint>,
    next: AtomicUsize,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The unspecified address of `server`'s family, port 0: where a client socket binds.
fn any_addr(server: &SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = if server.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, 0)
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl Target {
    async fn new(ep: &Endpoint, args: &BenchArgs) -> Result<Self> {
        let (mut addr, mut trust, mut secret, mut pid) =
            (ep.server, ep.trust.clone(), args.secret.clone(), args.server_pid.map(|p| p.to_string()));
        let (mut child, mut data_dir) = (None, None);
        if args.spawn {
            let dir = std::env::temp_dir().join(format!("roomcast-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
            addr = SocketAddr::from(([127, 0, 0, 1], port));
            let s = random_hex(32);
            let exe = std::env::current_exe()?.with_file_name("roomcast-server");
            if !exe.exists() {
                bail!("{} not found: build it (cargo build --release)", exe.display());
            }
            let mut cmd = match &args.server_cpus {
                Some(cpus) => {
                    let mut c = Command::new("taskset");
                    c.args(["-c", cpus]).arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(&dir)
                .args(["--metrics-listen", "off"])
                .args(&args.server_args)
                .env("ROOMCAST_TOKEN_SECRET", &s)
                .env_remove("ROOMCAST_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let c = cmd.spawn().context("starting roomcast-server")?;
            pid = Some(c.id().to_string());
            child = Some(c);
            let cert = dir.join(roomcast_protocol::dev::CERT_FILE);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cert.exists() {
                if Instant::now() > deadline {
                    bail!("the spawned server did not start");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The certificate is written before the socket is bound.
            tokio::time::sleep(Duration::from_millis(300)).await;
            trust = Some(Trust::pinned_cert_file(&cert)?);
            secret = Some(s);
            data_dir = Some(dir);
        }
        let trust = match trust {
            Some(t) => t,
            None => {
                let path = roomcast_protocol::dev::default_data_dir().join(roomcast_protocol::dev::CERT_FILE);
                Trust::pinned_cert_file(&path)
                    .context("pass --cert, --fingerprint or --ca to trust the server")?
            }
        };
        let secret = match secret {
            Some(s) => s.into_bytes(),
            None => {
                let path =
                    roomcast_protocol::dev::default_data_dir().join(roomcast_protocol::dev::SECRET_FILE);
                let s = std::fs::read_to_string(&path).with_context(|| {
                    format!("no --secret and no development secret at {}", path.display())
                })?;
                s.trim().as_bytes().to_vec()
            }
        };
        let mut endpoints = Vec::new();
        for _ in 0..args.sockets.max(1) {
            endpoints.push(roomcast_client::bind_endpoint(any_addr(&addr), SOCKET_BUFFER)?);
        }
        Ok(Self {
            addr,
            server_name: ep.server_name.clone(),
            trust,
            secret,
            pid,
            child,
            data_dir,
            endpoints,
            next: AtomicUsize::new(0),
        })
    }

    fn token(&self, user: &str, role: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + 24 * 3600)
            .unwrap_or(u64::MAX);
        let claims = json!({ "sub": user, "name": user, "role": role, "exp": exp });
        let key = jsonwebtoken::EncodingKey::from_secret(&self.secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
    }

    fn config(&self, user: &str, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.addr, self.token(user, role), self.trust.clone());
        c.server_name = self.server_name.clone();
        c.client_name = "roomcast-bench".into();
        c.event_buffer = 256;
        c.reconnect = None;
        c.connect_timeout = Duration::from_secs(20);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        c.endpoint = Some(self.endpoints[i].clone());
        c
    }

    /// A host client on a socket of its own, its events read and dropped, as
    /// a host's app would: its packets do not queue behind a thousand
    /// viewers' in a shared socket, and its event buffer never fills up and
    /// stops it reading its acks.
    async fn host(&self, user: &str) -> Result<Client> {
        let mut config = self.config(user, "host");
        config.endpoint = Some(roomcast_client::bind_endpoint(any_addr(&self.addr), SOCKET_BUFFER)?);
        let (client, mut events) =
            Client::connect(config).await.with_context(|| format!("{user} connect"))?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        Ok(client)
    }

    fn sample(&self) -> Option<ProcSample> {
        self.pid.as_deref().and_then(proc_sample)
    }
}

/// Percentile `p` (0..=100) of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The figures of one run, in the order they were added.
struct Report {
    title: String,
    rows: Vec<(String, Value)>,
    /// Reasons to doubt a figure, printed under the table and carried in
    /// the JSON line as `warnings`.
    warnings: Vec<String>,
}

impl Report {
    fn new(title: &str) -> Self {
        Self { title: title.into(), rows: Vec::new(), warnings: Vec::new() }
    }

    fn add(&mut self, key: &str, v: impl Into<Value>) {
        self.rows.push((key.into(), v.into()));
    }

    fn warn(&mut self, why: String) {
        self.warnings.push(why);
    }

    /// What a fan-out delivered: `delivered` messages against `expected`,
    /// `lost` of them, over `secs`; duplicates and reordering as `seen` by
    /// the subscribers that count.
    fn delivery_rows(&mut self, expected: u64, delivered: u64, lost: u64, secs: f64, seen: &[&Received]) {
        self.add("expected_deliveries", expected);
        self.add("deliveries", delivered);
        self.add("deliveries_per_s", round2(delivered as f64 / secs.max(1e-9)));
        self.add("lost", lost);
        self.add("duplicates", seen.iter().map(|r| r.duplicates).sum::<u64>());
        self.add("out_of_order", seen.iter().map(|r| r.out_of_order).sum::<u64>());
    }

    /// The server's RSS growth between two samples, per connection held.
    fn rss_per_connection(
        &mut self,
        before: Option<ProcSample>,
        after: Option<ProcSample>,
        connections: usize,
    ) {
        if let (Some(a), Some(b)) = (before, after) {
            let per = b.rss_kib.saturating_sub(a.rss_kib) as f64 / connections.max(1) as f64;
            self.add("server_rss_kib_per_connection", round2(per));
        }
    }

    /// The server's RSS growth between two samples.
    fn rss_growth(&mut self, before: Option<ProcSample>, after: Option<ProcSample>) {
        if let (Some(a), Some(b)) = (before, after) {
            self.add("server_rss_growth_mib", round2((b.rss_kib as f64 - a.rss_kib as f64) / 1024.0));
        }
    }

    fn print(&self) {
        println!("\n{}", self.title);
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.rows {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  {k:<width$}  {v}");
        }
        for w in &self.warnings {
            println!("  warning: {w}");
        }
        let mut map: serde_json::Map<String, Value> = self.rows.iter().cloned().collect();
        if !self.warnings.is_empty() {
            map.insert("warnings".into(), self.warnings.clone().into());
        }
        println!("{}", Value::Object(map));
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    if pb.is_hidden() {
        // Not a terminal: one line per phase, so a log shows where a run is.
        eprintln!("{what}: {len}");
    }
    pb
}

/// A running session, with the task reading its events.
struct Session {
    client: Client,
    reader: tokio::task::JoinHandle<Received>,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Received {
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    lags: u64,
    disconnected: bool,
    /// Sequence numbers seen, as a bit set from `base`.
    base: u64,
    seen: Vec<u64>,
    /// Publish-to-receive latencies of stamped messages, µs.
    latencies: Vec<u64>,
    /// The same messages from the node's sequencing (`server_time_ms`, wall
    /// clock, so millisecond resolution) to receipt, µs: the fan-out's share.
    fanout_latencies: Vec<u64>,
    /// Only host messages count (chat-storm watchers).
    host_only_latency: bool,
}

impl Received {
    fn mark(&mut self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(self.base + 1) else { return false };
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        let fresh = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        fresh
    }

    fn has(&self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(self.base + 1) else { return false };
        self.seen.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// Reads a session's events until `stop`; a slow reader reads nothing.
async fn read_events(
    mut events: Events,
    mut r: Received,
    slow: bool,
    mut stop: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
) -> Received {
    if slow {
        let _ = stop.wait_for(|s| *s).await;
        return r;
    }
    let mut last = r.base;
    // One waiter on the stop signal for the whole run, not one registered
    // and dropped per event. It is looked at first: the run's end closes the
    // clients right after signalling stop, and the end of a session the
    // generator closed itself is not a disconnection.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stopped => break,
            e = events.recv() => e,
        };
        match event {
            Some(Event::Message(m)) if m.seq > 0 => {
                let now = now_us();
                if !r.mark(m.seq) {
                    r.duplicates += 1;
                    continue;
                }
                if m.seq < last {
                    r.out_of_order += 1;
                }
                last = last.max(m.seq);
                r.delivered += 1;
                let counts =
                    !r.host_only_latency || matches!(m.kind, Some(v1::room_event::Kind::HostMessage(_)));
                if counts && let Some(sent) = stamp_of(event_text(&m)) {
                    r.latencies.push(now.saturating_sub(sent));
                    let wall_ms = roomcast_protocol::unix_ms(std::time::SystemTime::now());
                    r.fanout_latencies.push(wall_ms.saturating_sub(m.server_time_ms) * 1_000);
                }
            }
            Some(Event::Gap { from, to, .. }) => r.gaps += to - from + 1,
            Some(Event::Lagged { .. }) => r.lags += 1,
            Some(Event::Disconnected { .. }) | None => {
                r.disconnected = true;
                dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(_) => {}
        }
    }
    r
}

/// Sessions opened, failures, and each join's latency (connect to `Joined`), µs.
#[derive(Default)]
struct Opened {
    sessions: Vec<(usize, Session)>,
    failures: Vec<String>,
    latencies: Vec<u64>,
}

type OpenResult = Result<Result<(usize, Session, u64), roomcast_client::Error>, tokio::task::JoinError>;

impl Opened {
    fn add(&mut self, done: OpenResult, pb: &ProgressBar) {
        pb.inc(1);
        match done {
            Ok(Ok((i, s, took))) => {
                self.sessions.push((i, s));
                self.latencies.push(took);
            }
            Ok(Err(e)) => self.failures.push(e.to_string()),
            Err(e) => self.failures.push(e.to_string()),
        }
    }
}

/// Opens `n` sessions (user `{prefix}{i}`), each joined to `room(i)`, with at
/// most `concurrency` handshakes in flight.
#[allow(clippy::too_many_arguments)]
async fn open_sessions(
    target: &Arc<Target>,
    n: usize,
    prefix: &str,
    role: &'static str,
    room: impl Fn(usize) -> String,
    slow: impl Fn(usize) -> bool,
    tweak: impl Fn(&mut ClientConfig),
    concurrency: usize,
    stop: &watch::Receiver<bool>,
    dropped: &Arc<AtomicU64>,
    host_only_latency: bool,
) -> Opened {
    let pb = bar(n as u64, "connecting");
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut opened = Opened::default();
    for i in 0..n {
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let mut config = target.config(&format!("{prefix}{i}"), role);
        let is_slow = slow(i);
        if is_slow {
            config.event_buffer = 16;
            config.stream_receive_window = Some(16 * 1024);
        }
        tweak(&mut config);
        let (room, stop, dropped) = (room(i), stop.clone(), dropped.clone());
        set.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let (client, events) = Client::connect(config).await?;
            let joined = client.join(&room).await?;
            let took = started.elapsed().as_micros() as u64;
            let r = Received { base: joined.current_seq, host_only_latency, ..Received::default() };
            let reader = tokio::spawn(read_events(events, r, is_slow, stop, dropped));
            Ok::<_, roomcast_client::Error>((i, Session { client, reader }, took))
        });
        while let Some(done) = set.try_join_next() {
            opened.add(done, &pb);
        }
    }
    while let Some(done) = set.join_next().await {
        opened.add(done, &pb);
    }
    pb.finish_and_clear();
    let mut reasons: Vec<(&String, usize)> = Vec::new();
    for f in &opened.failures {
        match reasons.iter_mut().find(|(r, _)| *r == f) {
            Some((_, n)) => *n += 1,
            None => reasons.push((f, 1)),
        }
    }
    for (reason, n) in reasons {
        eprintln!("{n} sessions failed: {reason}");
    }
    opened
}

/// The inodes of a process's sockets, from the links in /proc/PID/fd.
fn socket_inodes(pid: &str) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return HashSet::new() };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// What the kernel holds for some sockets right now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SocketQueues {
    /// Bytes waiting in their receive queues (as the kernel accounts them).
    rx_bytes: u64,
    /// Datagrams dropped on arrival since each UDP socket was opened.
    drops: u64,
}

/// One of the kernel's socket tables, e.g. /proc/net/udp.
struct SocketTable {
    text: String,
    /// UDP tables end each line in a drop count; TCP tables do not.
    udp: bool,
}

/// The kernel's UDP socket tables for IPv4 and IPv6, and its TCP tables too
/// if asked (a TCP peer's run: they have a line per connection, so they
/// cost more to read).
fn socket_tables(tcp: bool) -> Vec<SocketTable> {
    let mut paths = vec![("/proc/net/udp", true), ("/proc/net/udp6", true)];
    if tcp {
        paths.extend([("/proc/net/tcp", false), ("/proc/net/tcp6", false)]);
    }
    paths
        .into_iter()
        .filter_map(|(p, udp)| Some(SocketTable { text: std::fs::read_to_string(p).ok()?, udp }))
        .collect()
}

/// Sums the receive queues (and, for UDP, drop counts) of the sockets with
/// these inodes, from the tables of the process's network namespace.
/// Columns: `sl local rem st tx_queue:rx_queue tr tm->when retrnsmt uid
/// timeout inode …`, queues in hex; a UDP line ends `ref pointer drops`.
/// A listening TCP socket's `rx_queue` is its accept backlog, not bytes, so
/// those lines are skipped. A TCP peer's tables have a line per connection:
/// no allocation per line.
fn socket_queues(tables: &[SocketTable], inodes: &HashSet<u64>) -> SocketQueues {
    /// TCP_LISTEN in the `st` column.
    const LISTEN: &str = "0A";
    let mut q = SocketQueues::default();
    for table in tables {
        for line in table.text.lines().skip(1) {
            let mut f = line.split_ascii_whitespace();
            let (Some(state), Some(queues), Some(inode)) = (f.nth(3), f.next(), f.nth(4)) else { continue };
            if !inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) || (!table.udp && state == LISTEN) {
                continue;
            }
            let rx = queues.split_once(':').and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
            q.rx_bytes += rx.unwrap_or(0);
            if table.udp {
                q.drops += f.nth(2).and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    q
}

/// The receive backlog (largest and mean) and the drops of the generator's
/// sockets and of the server's, sampled every 100 ms over a phase (every
/// second for a TCP peer). A burst
/// of packets queues for a moment; a generator whose queues stay full is
/// the bottleneck, and the latency it measures is then its own.
#[derive(Debug, Default, Clone, Copy)]
struct Backlog {
    samples: u64,
    own_sum_rx: u64,
    own_max_rx: u64,
    own_drops: (u64, u64),
    server_max_rx: u64,
    server_drops: (u64, u64),
}

struct BacklogWatch {
    seen: Arc<std::sync::Mutex<Backlog>>,
    task: tokio::task::JoinHandle<()>,
    /// The server is a TCP peer: no UDP drop counts to report.
    tcp: bool,
}

impl BacklogWatch {
    const EVERY: Duration = Duration::from_millis(100);

    fn start(server_pid: Option<String>, tcp: bool) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Backlog::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut first = true;
            // A TCP table has a line per connection: read it less often.
            let every = if tcp { Self::EVERY * 10 } else { Self::EVERY };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let tables = socket_tables(tcp);
                let own = socket_queues(&tables, &socket_inodes("self"));
                let server = server_pid.as_deref().map(|p| socket_queues(&tables, &socket_inodes(p)));
                let Ok(mut b) = shared.lock() else { return };
                if first {
                    b.own_drops.0 = own.drops;
                    b.server_drops.0 = server.map_or(0, |s| s.drops);
                    first = false;
                }
                b.samples += 1;
                b.own_sum_rx += own.rx_bytes;
                b.own_max_rx = b.own_max_rx.max(own.rx_bytes);
                b.own_drops.1 = own.drops;
                if let Some(s) = server {
                    b.server_max_rx = b.server_max_rx.max(s.rx_bytes);
                    b.server_drops.1 = s.drops;
                }
            }
        });
        Self { seen, task, tcp }
    }

    fn finish(self, report: &mut Report, server: bool) {
        self.task.abort();
        let Ok(b) = self.seen.lock().map(|b| *b) else { return };
        let kib = |bytes: u64| round2(bytes as f64 / 1024.0);
        let own_mean = b.own_sum_rx / b.samples.max(1);
        report.add("generator_rx_backlog_mean_kib", kib(own_mean));
        report.add("generator_rx_backlog_max_kib", kib(b.own_max_rx));
        if !self.tcp {
            report.add("generator_udp_drops", b.own_drops.1.saturating_sub(b.own_drops.0));
        }
        if server {
            report.add("server_rx_backlog_max_kib", kib(b.server_max_rx));
            if !self.tcp {
                report.add("server_udp_drops", b.server_drops.1.saturating_sub(b.server_drops.0));
            }
        }
        if own_mean >= GENERATOR_BEHIND_BYTES {
            report.warn(format!(
                "the generator fell behind: its sockets held {:.1} MiB unread on average (up to {:.1} MiB), so the latency measured here is partly its own",
                own_mean as f64 / (1 << 20) as f64,
                b.own_max_rx as f64 / (1 << 20) as f64
            ));
        }
    }
}

/// A mean receive backlog past which the generator, not the server, sets
/// the latency: a MiB of queued packets is tens of milliseconds of its work,
/// all the time.
const GENERATOR_BEHIND_BYTES: u64 = 1 << 20;

/// CPU and memory of the server (and of this process) over a phase, and the
/// sockets' backlogs.
struct Usage {
    pid: Option<String>,
    server: Option<ProcSample>,
    own: Option<ProcSample>,
    backlog: BacklogWatch,
}

impl Usage {
    /// Starts measuring the server `pid` (if known) and this process;
    /// `tcp` if the server is a TCP peer.
    fn start(pid: Option<&str>, tcp: bool) -> Self {
        let pid = pid.map(str::to_string);
        Self {
            server: pid.as_deref().and_then(proc_sample),
            own: proc_sample("self"),
            backlog: BacklogWatch::start(pid.clone(), tcp),
            pid,
        }
    }

    /// Adds the phase's figures; `deliveries` divides the server's CPU time.
    fn finish(self, report: &mut Report, deliveries: Option<u64>) {
        let secs = |a: &ProcSample, b: &ProcSample| b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        if let (Some(a), Some(b)) = (self.server, self.pid.as_deref().and_then(proc_sample)) {
            let cpu = b.cpu.saturating_sub(a.cpu);
            report.add("server_cpu_s", round2(cpu.as_secs_f64()));
            report.add("server_cpu_pct", round2(100.0 * cpu.as_secs_f64() / secs(&a, &b)));
            if let Some(d) = deliveries.filter(|d| *d > 0) {
                report.add("server_cpu_us_per_delivery", round2(cpu.as_secs_f64() * 1e6 / d as f64));
            }
            report.add("server_rss_mib", round2(b.rss_kib as f64 / 1024.0));
            report.add("server_peak_rss_mib", round2(b.peak_rss_kib as f64 / 1024.0));
        }
        if let (Some(a), Some(b)) = (self.own, proc_sample("self")) {
            let cpu = b.cpu.saturating_sub(a.cpu);
            report.add("generator_cpu_pct", round2(100.0 * cpu.as_secs_f64() / secs(&a, &b)));
        }
        self.backlog.finish(report, self.pid.is_some());
    }
}

fn params(report: &mut Report, args: &BenchArgs, target: &Target, keys: &[(&str, Value)]) {
    report.add("scenario", format!("{:?}", args.scenario).to_lowercase());
    report.add("server", target.addr.to_string());
    report.add("server_pid", target.pid.clone().map(Value::from).unwrap_or(Value::Null));
    report.add("sockets", target.endpoints.len());
    for (k, v) in keys {
        report.add(k, v.clone());
    }
}

/// Waits `secs` with a progress bar.
async fn hold(secs: f64, what: &str, status: impl Fn() -> String) {
    let pb = bar((secs * 10.0).ceil() as u64, what);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pb.inc(1);
        pb.set_message(status());
    }
    pb.finish_and_clear();
}

/// Stops the readers and returns what each saw, by session index.
async fn finish_sessions(
    sessions: Vec<(usize, Session)>,
    stop: &watch::Sender<bool>,
) -> Vec<(usize, Received)> {
    let _ = stop.send(true);
    let mut out = Vec::with_capacity(sessions.len());
    for (i, s) in sessions {
        s.client.close();
        if let Ok(r) = s.reader.await {
            out.push((i, r));
        }
    }
    out
}

/// What the subscribers' connections received: UDP datagrams, and PING and
/// STREAM frames (a node's loss probes show up as PINGs and repeated STREAM
/// frames).
#[derive(Default, Clone, Copy)]
struct RxCounts {
    datagrams: u64,
    pings: u64,
    streams: u64,
}

fn rx_counts(sessions: &[(usize, Session)]) -> RxCounts {
    sessions.iter().fold(RxCounts::default(), |acc, (_, s)| {
        let st = s.client.connection_stats();
        RxCounts {
            datagrams: acc.datagrams + st.udp_rx.datagrams,
            pings: acc.pings + st.frame_rx.ping,
            streams: acc.streams + st.frame_rx.stream,
        }
    })
}

/// What a publisher sent.
#[derive(Default)]
struct Published {
    sent: u64,
    seqs: Vec<u64>,
    sampled: u64,
    rate_limited: u64,
    errors: u64,
    /// Send-to-ack times of acknowledged sends, µs.
    ack_latencies: Vec<u64>,
}

/// Sends stamped messages at `rate` per second for `secs`, without waiting
/// for one ack before the next send.
async fn publish(
    client: &Client,
    room: &str,
    rate: f64,
    size: usize,
    secs: f64,
    pb: Option<&ProgressBar>,
) -> Published {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    let mut p = Published::default();
    let take =
        |p: &mut Published,
         r: Result<Result<(v1::ChatAck, u64), roomcast_client::Error>, tokio::task::JoinError>| {
            if let Ok(Ok((_, took))) = &r {
                p.ack_latencies.push(*took);
            }
            match r {
                Ok(Ok((ack, _))) if ack.broadcast => p.seqs.push(ack.seq),
                Ok(Ok(_)) => p.sampled += 1,
                Ok(Err(e)) if e.code() == Some(roomcast_protocol::ErrorCode::RateLimited) => {
                    p.rate_limited += 1
                }
                _ => p.errors += 1,
            }
        };
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let (c, room) = (client.clone(), room.to_string());
        set.spawn(async move {
            let started = Instant::now();
            c.send_chat(&room, &stamped(size)).await.map(|ack| (ack, started.elapsed().as_micros() as u64))
        });
        p.sent += 1;
        if let Some(pb) = pb {
            pb.inc(1);
        }
        while let Some(r) = set.try_join_next() {
            take(&mut p, r);
        }
    }
    while let Some(r) = set.join_next().await {
        take(&mut p, r);
    }
    p
}

fn latency_rows(report: &mut Report, prefix: &str, mut lat: Vec<u64>) {
    lat.sort_unstable();
    report.add(&format!("{prefix}latency_samples"), lat.len());
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
        report.add(&format!("{prefix}latency_{name}_ms"), ms(pct(&lat, p)));
    }
    report.add(&format!("{prefix}latency_max_ms"), ms(lat.last().copied().unwrap_or(0)));
}

pub(crate) async fn run(ep: Endpoint, args: BenchArgs) -> Result<()> {
    let _ = now_us();
    let limit = Duration::from_secs_f64(args.timeout);
    if args.peer == PeerServer::Nats {
        let run = async {
            match args.scenario {
                Scenario::Fanout => nats::fanout(&args, ep.server).await,
                Scenario::Idle => nats::idle(&args, ep.server).await,
                _ => bail!("--peer nats runs the fanout and idle scenarios only"),
            }
        };
        let report =
            tokio::time::timeout(limit, run).await.context("the run took longer than --timeout")??;
        report.print();
        return Ok(());
    }
    let target = Arc::new(Target::new(&ep, &args).await?);
    let run = async {
        match args.scenario {
            Scenario::Idle => idle(&target, &args).await.map(|r| vec![r]),
            Scenario::JoinStorm => join_storm(&target, &args).await.map(|r| vec![r]),
            Scenario::Fanout => fanout(&target, &args, 0.0, "fanout").await.map(|r| vec![r]),
            Scenario::ChatStorm => chat_storm(&target, &args).await.map(|r| vec![r]),
            Scenario::SlowConsumers => {
                let base = fanout(&target, &args, 0.0, "baseline").await?;
                let slow = fanout(&target, &args, args.slow_share, "slow").await?;
                Ok(vec![base, slow])
            }
        }
    };
    let reports = tokio::time::timeout(limit, run).await.context("the run took longer than --timeout")??;
    for r in &reports {
        r.print();
    }
    // Let the connections' closes reach the server.
    for e in &target.endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    Ok(())
}

async fn idle(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let mut report = Report::new("idle: connections held");
    params(
        &mut report,
        args,
        target,
        &[
            ("connections", args.connections.into()),
            ("rooms", args.rooms.into()),
            ("hold_s", args.duration.into()),
        ],
    );
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let before = target.sample();
    let started = Instant::now();
    let rooms = args.rooms.max(1);
    let prefix = args.room.clone();
    let opened = open_sessions(
        target,
        args.connections,
        "idle-",
        "viewer",
        |i| format!("{prefix}-{}", i % rooms),
        |_| false,
        |_| {},
        args.concurrency,
        &stop,
        &dropped,
        false,
    )
    .await;
    let ramp = started.elapsed().as_secs_f64();
    report.add("ramp_s", round2(ramp));
    report.add("connect_failures", opened.failures.len());
    if let Some(f) = opened.failures.first() {
        report.add("first_failure", f.clone());
    }
    let held_at_start = opened.sessions.len();
    let after_ramp = target.sample();
    let usage = Usage::start(target.pid.as_deref(), false);
    let d = dropped.clone();
    hold(args.duration, "holding", move || format!("{} dropped", d.load(Ordering::Relaxed))).await;
    let held = held_at_start as u64 - dropped.load(Ordering::Relaxed);
    report.add("connections_held", held);
    report.add("connections_dropped", dropped.load(Ordering::Relaxed));
    report.rss_per_connection(before, after_ramp, held_at_start);
    usage.finish(&mut report, None);
    finish_sessions(opened.sessions, &stop_tx).await;
    Ok(report)
}

async fn join_storm(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let mut report = Report::new("join-storm: connect, authenticate, join one room");
    params(
        &mut report,
        args,
        target,
        &[("connections", args.connections.into()), ("concurrency", args.concurrency.into())],
    );
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let usage = Usage::start(target.pid.as_deref(), false);
    let started = Instant::now();
    let room = args.room.clone();
    let opened = open_sessions(
        target,
        args.connections,
        "joiner-",
        "viewer",
        |_| room.clone(),
        |_| false,
        |_| {},
        args.concurrency,
        &stop,
        &dropped,
        false,
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    let ok = opened.sessions.len();
    report.add("joined", ok);
    report.add("failures", opened.failures.len());
    if let Some(f) = opened.failures.first() {
        report.add("first_failure", f.clone());
    }
    report.add("wall_s", round2(wall));
    report.add("joins_per_s", round2(ok as f64 / wall.max(1e-9)));
    latency_rows(&mut report, "join_", opened.latencies);
    usage.finish(&mut report, None);
    finish_sessions(opened.sessions, &stop_tx).await;
    Ok(report)
}

async fn fanout(target: &Arc<Target>, args: &BenchArgs, slow_share: f64, label: &str) -> Result<Report> {
    let mut report = Report::new(&format!("{label}: one publisher, {} subscribers", args.subscribers));
    let room = format!("{}-{label}", args.room);
    let every = if slow_share > 0.0 { (1.0 / slow_share).round().max(1.0) as usize } else { 0 };
    let is_slow = move |i: usize| every > 0 && i % every == every - 1;
    params(
        &mut report,
        args,
        target,
        &[
            ("run", label.into()),
            ("subscribers", args.subscribers.into()),
            ("rate_per_s", args.rate.into()),
            ("size_bytes", args.size.into()),
            ("duration_s", args.duration.into()),
            ("slow_share", slow_share.into()),
        ],
    );
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let rss_start = target.sample();
    let opened = open_sessions(
        target,
        args.subscribers,
        &format!("{label}-sub-"),
        "viewer",
        |_| room.clone(),
        is_slow,
        |_| {},
        args.concurrency,
        &stop,
        &dropped,
        false,
    )
    .await;
    report.add("connect_failures", opened.failures.len());
    let publisher = target.host(&format!("{label}-publisher")).await?;
    publisher.join(&room).await.context("publisher join")?;
    // Let the joins' side effects (entered notices, online counts) settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rx0 = rx_counts(&opened.sessions);
    let usage = Usage::start(target.pid.as_deref(), false);
    let pb = bar((args.rate * args.duration).round() as u64, "publishing");
    let published = publish(&publisher, &room, args.rate, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    hold(args.drain, "draining", String::new).await;
    let window = usage.server.map(|s| s.at.elapsed().as_secs_f64()).unwrap_or(args.duration + args.drain);
    let rx1 = rx_counts(&opened.sessions);
    let received = finish_sessions(opened.sessions, &stop_tx).await;
    let deliveries: u64 = received.iter().map(|(_, r)| r.delivered).sum();
    let healthy: Vec<&Received> = received.iter().filter(|(i, _)| !is_slow(*i)).map(|(_, r)| r).collect();
    let expected = published.seqs.len() as u64 * healthy.len() as u64;
    let got: u64 = healthy.iter().map(|r| published.seqs.iter().filter(|s| r.has(**s)).count() as u64).sum();
    report.add("published", published.sent);
    report.add("publish_errors", published.errors);
    latency_rows(&mut report, "publish_ack_", published.ack_latencies.clone());
    let stats = publisher.connection_stats();
    report.add("publisher_rtt_ms", round2(stats.path.rtt.as_secs_f64() * 1e3));
    report.add("publisher_cwnd", stats.path.cwnd);
    report.add("publisher_lost_packets", stats.path.lost_packets);
    report.add("healthy_subscribers", healthy.len());
    report.add("slow_subscribers", received.len() - healthy.len());
    report.delivery_rows(expected, deliveries, expected.saturating_sub(got), args.duration, &healthy);
    report.add("gaps_reported", healthy.iter().map(|r| r.gaps).sum::<u64>());
    report.add("lagged_healthy", healthy.iter().map(|r| r.lags).sum::<u64>());
    report.add("disconnected", dropped.load(Ordering::Relaxed));
    let packets = rx1.datagrams - rx0.datagrams;
    report.add("packets_to_subscribers_per_s", round2(packets as f64 / window));
    report.add("packets_per_delivery", round2(packets as f64 / deliveries.max(1) as f64));
    report.add("stream_frames_to_subscribers", rx1.streams - rx0.streams);
    report.add("ping_frames_to_subscribers", rx1.pings - rx0.pings);
    latency_rows(&mut report, "", healthy.iter().flat_map(|r| r.latencies.iter().copied()).collect());
    latency_rows(
        &mut report,
        "sequenced_to_receive_",
        healthy.iter().flat_map(|r| r.fanout_latencies.iter().copied()).collect(),
    );
    usage.finish(&mut report, Some(deliveries));
    report.rss_growth(rss_start, target.sample());
    publisher.close();
    Ok(report)
}

async fn chat_storm(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let mut report = Report::new("chat-storm: viewers exceed the room's chat budget");
    let room = format!("{}-storm", args.room);
    params(
        &mut report,
        args,
        target,
        &[
            ("watchers", args.subscribers.into()),
            ("senders", args.senders.into()),
            ("sender_rate_per_s", args.sender_rate.into()),
            ("duration_s", args.duration.into()),
        ],
    );
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let r = room.clone();
    let watchers = open_sessions(
        target,
        args.subscribers,
        "watcher-",
        "viewer",
        |_| r.clone(),
        |_| false,
        |_| {},
        args.concurrency,
        &stop,
        &dropped,
        true,
    )
    .await;
    let r = room.clone();
    let senders = open_sessions(
        target,
        args.senders,
        "sender-",
        "viewer",
        |_| r.clone(),
        |_| false,
        |_| {},
        args.concurrency,
        &stop,
        &dropped,
        false,
    )
    .await;
    let host = target.host("storm-host").await?;
    host.join(&room).await.context("host join")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = Usage::start(target.pid.as_deref(), false);
    let mut storm = JoinSet::new();
    for (i, (_, s)) in senders.sessions.iter().enumerate() {
        let (c, room, size, rate, secs) =
            (s.client.clone(), room.clone(), args.size, args.sender_rate, args.duration);
        // Spread the senders' phases over one period.
        let phase =
            Duration::from_secs_f64(i as f64 / senders.sessions.len().max(1) as f64 / rate.max(0.001));
        storm.spawn(async move {
            tokio::time::sleep(phase).await;
            publish(&c, &room, rate, size, secs, None).await
        });
    }
    let pb = bar((2.0 * args.duration).round() as u64, "storming");
    let host_pub = publish(&host, &room, 2.0, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    let mut viewers = Published::default();
    while let Some(p) = storm.join_next().await {
        let p = p?;
        viewers.sent += p.sent;
        viewers.sampled += p.sampled;
        viewers.rate_limited += p.rate_limited;
        viewers.errors += p.errors;
        viewers.seqs.extend(p.seqs);
    }
    hold(args.drain, "draining", String::new).await;
    let received = finish_sessions(watchers.sessions, &stop_tx).await;
    finish_sessions(senders.sessions, &watch::channel(false).0).await;
    let mut all: Vec<u64> = viewers.seqs.iter().chain(host_pub.seqs.iter()).copied().collect();
    all.sort_unstable();
    let contiguous = all.windows(2).all(|w| w[1] == w[0] + 1);
    let gaps: u64 = received.iter().map(|(_, r)| r.gaps).sum();
    let disorder: u64 = received.iter().map(|(_, r)| r.out_of_order + r.duplicates).sum();
    let complete = received.iter().all(|(_, r)| all.iter().all(|s| r.has(*s)));
    report.add("viewer_chats_sent", viewers.sent);
    report.add("viewer_chats_broadcast", viewers.seqs.len());
    report.add("viewer_chats_sampled", viewers.sampled);
    report.add("viewer_chats_rate_limited", viewers.rate_limited);
    report.add("viewer_chat_errors", viewers.errors);
    let decided = (viewers.seqs.len() as u64 + viewers.sampled).max(1);
    report.add("sampled_share", round2(viewers.sampled as f64 / decided as f64));
    report.add("broadcast_chats_per_s", round2(viewers.seqs.len() as f64 / args.duration.max(1e-9)));
    report.add("host_messages_sent", host_pub.sent);
    report.add("host_messages_sampled", host_pub.sampled);
    report.add("seqs_gap_free", contiguous && gaps == 0 && disorder == 0);
    report.add("watchers_complete", complete);
    report.add("gaps_reported", gaps);
    report.add("deliveries", received.iter().map(|(_, r)| r.delivered).sum::<u64>());
    latency_rows(
        &mut report,
        "host_",
        received.iter().flat_map(|(_, r)| r.latencies.iter().copied()).collect(),
    );
    let deliveries = received.iter().map(|(_, r)| r.delivered).sum::<u64>();
    usage.finish(&mut report, Some(deliveries));
    host.close();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets of ours and one of another process, in the kernel's
    /// /proc/net/udp format (`udp4_format_sock`).
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1042: 0100007F:1151 00000000:0000 07 00000000:00012000 00:00000000 00000000     0        0 5551 2 0000000000000000 3
 1043: 00000000:A1B2 00000000:0000 07 00000000:00000800 00:00000000 00000000     0        0 5552 2 0000000000000000 0
 1044: 00000000:A1B3 00000000:0000 07 00000000:00fff000 00:00000000 00000000     0        0 9999 2 0000000000000000 7
";

    #[test]
    fn socket_queues_sum_the_backlog_and_drops_of_the_given_sockets_only() {
        let tables = vec![SocketTable { text: UDP.to_string(), udp: true }];
        let set = |i: &[u64]| i.iter().copied().collect::<HashSet<u64>>();
        let q = socket_queues(&tables, &set(&[5551, 5552]));
        assert_eq!(q, SocketQueues { rx_bytes: 0x12000 + 0x800, drops: 3 });
        assert_eq!(socket_queues(&tables, &set(&[9999])), SocketQueues { rx_bytes: 0xfff000, drops: 7 });
        assert_eq!(socket_queues(&tables, &set(&[1])), SocketQueues::default());
        // The same lines read as a TCP table: the last column is not a drop
        // count, and a listening socket (state 0A) has no byte backlog.
        let tcp = vec![SocketTable { text: UDP.to_string(), udp: false }];
        assert_eq!(socket_queues(&tcp, &set(&[5551])), SocketQueues { rx_bytes: 0x12000, drops: 0 });
        let listen = vec![SocketTable { text: UDP.replace(" 07 ", " 0A "), udp: false }];
        assert_eq!(socket_queues(&listen, &set(&[5551])), SocketQueues::default());
    }

    #[test]
    fn this_process_finds_its_own_udp_socket_and_its_backlog() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let inodes = socket_inodes("self");
        assert!(inodes.len() >= 2, "two sockets, found inodes {inodes:?}");
        let empty = socket_queues(&socket_tables(false), &inodes).rx_bytes;
        for _ in 0..10 {
            sender.send_to(&[7u8; 1000], socket.local_addr().expect("addr")).expect("send");
        }
        // Loopback delivers before send_to returns.
        let full = socket_queues(&socket_tables(false), &inodes).rx_bytes;
        assert!(full >= empty + 10 * 1000, "backlog grew from {empty} to {full}");
    }
}
