//! Many SDK sessions over a few UDP sockets: opening them with a bounded
//! number of handshakes in flight, reading each one's events, and closing
//! them at the end of a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;

use indicatif::ProgressBar;
use roomcast_client::{Client, Event, Events};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::args::{BenchArgs, Clients};
use super::delivery::{ReaderEnd, Readers, Received, now_us};
use super::progress::bar;
use super::target::{SOCKET_BUFFER, Target, any_addr};
use super::watchers::{Dial, OpenOutcome, Viewer, Watchers};

/// How a scenario opens its viewer sessions, built once per scenario: the
/// node, how many handshakes may be in flight, which room each session
/// joins, which sessions stop reading, and the stop signal and drop count
/// all their readers share.
pub(crate) struct SessionPlan {
    target: Arc<Target>,
    concurrency: usize,
    rooms: Rooms,
    slow: SlowEvery,
    host_only_latency: bool,
    readers: Readers,
    /// Watchers on the edge driver (default) or on SDK clients.
    clients: Clients,
    sockets: usize,
}

/// The rooms a plan's sessions join.
pub(crate) enum Rooms {
    /// All in this one.
    One(String),
    /// Session `i` in `{prefix}-{i % count}`.
    Spread { prefix: String, count: usize },
}

impl Rooms {
    fn of(&self, i: usize) -> String {
        match self {
            Rooms::One(room) => room.clone(),
            Rooms::Spread { prefix, count } => format!("{prefix}-{}", i % (*count).max(1)),
        }
    }
}

/// Which sessions are slow: every `n`th (the last of each `n`), none if 0.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SlowEvery(usize);

impl SlowEvery {
    /// About `share` (0..=1) of the sessions.
    pub(crate) fn share(share: f64) -> Self {
        Self(if share > 0.0 { (1.0 / share).round().max(1.0) as usize } else { 0 })
    }

    fn is_slow(self, i: usize) -> bool {
        self.0 > 0 && i % self.0 == self.0 - 1
    }
}

/// A running session, with the task reading its events.
pub(crate) struct Session {
    pub(crate) client: Client,
    reader: tokio::task::JoinHandle<Received>,
}

/// Sessions opened, failures, and each join's latency (connect to `Joined`), µs.
#[derive(Default)]
pub(crate) struct Opened {
    pub(crate) sessions: Vec<(usize, Session)>,
    pub(crate) failures: Vec<String>,
    pub(crate) latencies: Vec<u64>,
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

impl SessionPlan {
    /// Sessions with `args`' concurrency, joined to `rooms`, all reading.
    pub(crate) fn new(target: &Arc<Target>, args: &BenchArgs, rooms: Rooms) -> Self {
        Self {
            target: target.clone(),
            concurrency: args.concurrency,
            rooms,
            slow: SlowEvery::default(),
            host_only_latency: false,
            readers: Readers::new(),
            clients: args.clients,
            sockets: args.sockets,
        }
    }

    /// The sessions `slow` picks stop reading, with small buffers.
    pub(crate) fn with_slow(self, slow: SlowEvery) -> Self {
        Self { slow, ..self }
    }

    /// Only host messages' latencies count (chat-storm's watchers).
    pub(crate) fn with_host_only_latency(self) -> Self {
        Self { host_only_latency: true, ..self }
    }

    /// Whether session `i` is one that stops reading.
    pub(crate) fn is_slow(&self, i: usize) -> bool {
        self.slow.is_slow(i)
    }

    /// Latencies of messages sent from now on are counted apart (see
    /// [`Readers::split_at`]).
    pub(crate) fn split_latencies_now(&self) {
        self.readers.split_at(now_us());
    }

    /// Sessions whose connection dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.readers.dropped()
    }

    /// Opens `n` viewer sessions (user `{users}{i}`), each joined to its
    /// room, with at most the plan's concurrency of handshakes in flight.
    pub(crate) async fn open(&self, users: &str, n: usize) -> Opened {
        let pb = bar(n as u64, "connecting");
        let limit = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut set = JoinSet::new();
        let mut opened = Opened::default();
        for i in 0..n {
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let mut config = self.target.config(&format!("{users}{i}"), "viewer");
            let is_slow = self.slow.is_slow(i);
            if is_slow {
                config.event_buffer = 16;
                config.stream_receive_window = Some(16 * 1024);
            }
            let (room, end, host_only_latency) =
                (self.rooms.of(i), self.readers.end(), self.host_only_latency);
            set.spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                let (client, events) = Client::connect(config).await?;
                let joined = client.join(&room).await?;
                let took = started.elapsed().as_micros() as u64;
                let r = Received::after(joined.current_seq, host_only_latency);
                let reader = tokio::spawn(read_events(events, r, is_slow, end));
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
        report_failures(&opened.failures);
        opened
    }

    /// Opens `n` viewers (user `{users}{i}`) that only watch their room,
    /// on the edge driver unless `--clients sdk` asked for SDK clients.
    pub(crate) async fn watch(&self, users: &str, n: usize) -> Result<Watching> {
        if self.clients == Clients::Sdk {
            return Ok(Watching::Sdk(self.open(users, n).await));
        }
        let template = self.target.config(&format!("{users}0"), "viewer");
        let quic = template.quic_config()?;
        let mut slow = template.clone();
        slow.stream_receive_window = Some(16 * 1024);
        let end = self.readers.end();
        let opened = Arc::new(AtomicU64::new(0));
        let dial = Dial {
            server: self.target.addr,
            server_name: template.server_name.clone(),
            quic,
            quic_slow: slow.quic_config()?,
            client_name: template.client_name.clone(),
            host_only_latency: self.host_only_latency,
            split: end.split,
            dropped: end.dropped,
            opened: opened.clone(),
        };
        let viewers = (0..n)
            .map(|i| Viewer {
                index: i,
                room: self.rooms.of(i),
                token: self.target.token(&format!("{users}{i}"), "viewer"),
                slow: self.slow.is_slow(i),
            })
            .collect();
        let pb = bar(n as u64, "connecting");
        let ticker = {
            let (pb, opened) = (pb.clone(), opened.clone());
            tokio::spawn(async move {
                loop {
                    pb.set_position(opened.load(Ordering::Relaxed));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            })
        };
        let bind = any_addr(&self.target.addr);
        let got = Watchers::open(dial, viewers, self.sockets, bind, SOCKET_BUFFER, self.concurrency).await;
        ticker.abort();
        pb.finish_and_clear();
        let (watchers, outcome) = got?;
        report_failures(&outcome.failures);
        Ok(Watching::Edge(watchers, outcome))
    }

    /// Stops the readers, closes the sessions, and returns what each saw,
    /// by session index.
    pub(crate) async fn finish(&self, sessions: Vec<(usize, Session)>) -> Vec<(usize, Received)> {
        self.readers.stop();
        let mut out = Vec::with_capacity(sessions.len());
        for (i, s) in sessions {
            s.client.close();
            if let Ok(r) = s.reader.await {
                out.push((i, r));
            }
        }
        out
    }
}

/// Prints how many sessions failed, by reason.
fn report_failures(failures: &[String]) {
    let mut reasons: Vec<(&String, usize)> = Vec::new();
    for f in failures {
        match reasons.iter_mut().find(|(r, _)| *r == f) {
            Some((_, n)) => *n += 1,
            None => reasons.push((f, 1)),
        }
    }
    for (reason, n) in reasons {
        eprintln!("{n} sessions failed: {reason}");
    }
}

/// Viewers that watch a room, on either kind of client.
pub(crate) enum Watching {
    Sdk(Opened),
    Edge(Watchers, OpenOutcome),
}

impl Watching {
    pub(crate) fn failures(&self) -> &[String] {
        match self {
            Watching::Sdk(o) => &o.failures,
            Watching::Edge(_, o) => &o.failures,
        }
    }

    /// Each join's latency (connect to `Joined`), µs.
    pub(crate) fn latencies(&self) -> &[u64] {
        match self {
            Watching::Sdk(o) => &o.latencies,
            Watching::Edge(_, o) => &o.latencies,
        }
    }

    /// Viewers that joined.
    pub(crate) fn joined(&self) -> usize {
        match self {
            Watching::Sdk(o) => o.sessions.len(),
            Watching::Edge(_, o) => o.joined,
        }
    }

    pub(crate) async fn rx_counts(&self) -> RxCounts {
        match self {
            Watching::Sdk(o) => rx_counts(&o.sessions),
            Watching::Edge(w, _) => w.rx_counts().await,
        }
    }

    /// Stops and closes the viewers; what each saw, by index.
    pub(crate) async fn finish(self, plan: &SessionPlan) -> Vec<(usize, Received)> {
        match self {
            Watching::Sdk(o) => plan.finish(o.sessions).await,
            Watching::Edge(w, _) => {
                plan.readers.stop();
                w.finish().await
            }
        }
    }
}

/// Reads a session's events until the stop; a slow reader reads nothing.
async fn read_events(mut events: Events, mut r: Received, slow: bool, end: ReaderEnd) -> Received {
    let ReaderEnd { mut stop, dropped, split } = end;
    if slow {
        let _ = stop.wait_for(|s| *s).await;
        return r;
    }
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
            Some(Event::Message(m)) if m.seq > 0 => r.take(&m, split.load(Ordering::Relaxed)),
            Some(Event::Gap { from, to, .. }) => r.gaps += to - from + 1,
            Some(Event::Lagged { .. }) => r.lags += 1,
            Some(Event::LikeTotal { total, .. }) => r.like_total = r.like_total.max(total),
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

/// What the subscribers' connections received: UDP datagrams, and PING and
/// STREAM frames (a node's loss probes show up as PINGs and repeated STREAM
/// frames).
#[derive(Default, Clone, Copy)]
pub(crate) struct RxCounts {
    pub(crate) datagrams: u64,
    pub(crate) pings: u64,
    pub(crate) streams: u64,
}

pub(crate) fn rx_counts(sessions: &[(usize, Session)]) -> RxCounts {
    sessions.iter().fold(RxCounts::default(), |acc, (_, s)| {
        let st = s.client.connection_stats();
        RxCounts {
            datagrams: acc.datagrams + st.udp_rx.datagrams,
            pings: acc.pings + st.frame_rx.ping,
            streams: acc.streams + st.frame_rx.stream,
        }
    })
}
