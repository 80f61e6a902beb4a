//! Viewers that only watch, many per UDP socket, on the node's own
//! transport driver (`roomcast_server::edge`): each viewer is a small state
//! machine (hello, join, read the room stream, heartbeat) that the socket's
//! driver steps, with no task, channel or timer of its own. So the
//! generator costs less per delivery than the node it measures, and its
//! figures are the node's.
//!
//! A watcher does not resume: a `Lagged` frame or a dropped connection
//! shows up as messages it did not get.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use roomcast_client::v1;
use roomcast_protocol::codec::{FrameDecoder, encode_frame};
use roomcast_protocol::datagram::ClientDatagram;
use roomcast_protocol::{MAX_SERVER_FRAME_BYTES, PROTOCOL_VERSION, unix_ms};
use roomcast_server::edge::{
    ConnId, Core, Dir, Driver, Event, Flow, Handler, Link, StreamEvent, StreamId, proto, read_stream,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::delivery::Received;
use super::session::RxCounts;

/// What one watcher is told at the start.
pub(crate) struct Viewer {
    pub(crate) index: usize,
    pub(crate) room: String,
    pub(crate) token: String,
    /// Never reads its room stream (slow-consumers).
    pub(crate) slow: bool,
}

/// How the watchers reach the node.
pub(crate) struct Dial {
    pub(crate) server: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) quic: proto::ClientConfig,
    /// For slow watchers: a small receive window.
    pub(crate) quic_slow: proto::ClientConfig,
    pub(crate) client_name: String,
    pub(crate) host_only_latency: bool,
    /// The readers' split stamp (see `Readers::split_at`).
    pub(crate) split: Arc<AtomicU64>,
    /// Watchers whose connection dropped before the end.
    pub(crate) dropped: Arc<AtomicU64>,
    /// Watchers done opening (joined or failed), for the progress bar.
    pub(crate) opened: Arc<AtomicU64>,
}

/// How the opening went on one driver.
#[derive(Default)]
pub(crate) struct OpenOutcome {
    pub(crate) joined: usize,
    pub(crate) failures: Vec<String>,
    /// Connect to `Joined`, µs.
    pub(crate) latencies: Vec<u64>,
}

enum Command {
    Stats(oneshot::Sender<RxCounts>),
    Finish(oneshot::Sender<Vec<(usize, Received)>>),
}

/// Watchers spread over some UDP sockets, one driver task each.
pub(crate) struct Watchers {
    drivers: Vec<(mpsc::Sender<Command>, JoinHandle<Watch>)>,
}

impl Watchers {
    /// Opens `viewers` over `sockets` sockets bound to `bind`, with at most
    /// `concurrency` handshakes in flight in all; returns once every one
    /// joined or failed.
    pub(crate) async fn open(
        dial: Dial,
        viewers: Vec<Viewer>,
        sockets: usize,
        bind: SocketAddr,
        buffer: usize,
        concurrency: usize,
    ) -> Result<(Self, OpenOutcome)> {
        if viewers.is_empty() {
            return Ok((Self { drivers: Vec::new() }, OpenOutcome::default()));
        }
        let sockets = sockets.clamp(1, viewers.len());
        let dial = Arc::new(dial);
        let mut shares: Vec<VecDeque<Viewer>> = (0..sockets).map(|_| VecDeque::new()).collect();
        for (k, v) in viewers.into_iter().enumerate() {
            shares[k % sockets].push_back(v);
        }
        let mut drivers = Vec::new();
        let mut outcomes = Vec::new();
        for pending in shares {
            let socket = roomcast_server::endpoint::udp_socket(bind, buffer)
                .with_context(|| format!("binding UDP {bind}"))?;
            let (done_tx, done_rx) = oneshot::channel();
            let watch = Watch {
                dial: dial.clone(),
                to_open: pending.len(),
                pending,
                opening: 0,
                limit: concurrency.div_ceil(sockets).max(1),
                outcome: OpenOutcome::default(),
                done: Some(done_tx),
                ended: Vec::new(),
                finishing: false,
            };
            let driver = Driver::new(socket, None, watch)?;
            let (tx, rx) = mpsc::channel(16);
            drivers.push((tx, tokio::spawn(driver.run(rx))));
            outcomes.push(done_rx);
        }
        let mut outcome = OpenOutcome::default();
        for rx in outcomes {
            let o = rx.await.unwrap_or_default();
            outcome.joined += o.joined;
            outcome.failures.extend(o.failures);
            outcome.latencies.extend(o.latencies);
        }
        Ok((Self { drivers }, outcome))
    }

    /// What the watchers' connections received so far.
    pub(crate) async fn rx_counts(&self) -> RxCounts {
        let mut total = RxCounts::default();
        for (tx, _) in &self.drivers {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Stats(reply)).await.is_ok()
                && let Ok(c) = rx.await
            {
                total.datagrams += c.datagrams;
                total.pings += c.pings;
                total.streams += c.streams;
            }
        }
        total
    }

    /// Closes every watcher and returns what each saw, by viewer index.
    pub(crate) async fn finish(self) -> Vec<(usize, Received)> {
        let mut out = Vec::new();
        for (tx, task) in self.drivers {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Finish(reply)).await.is_ok()
                && let Ok(got) = rx.await
            {
                out.extend(got);
            }
            drop(tx);
            let _ = task.await;
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }
}

/// One watcher's connection.
struct Watcher {
    viewer: Viewer,
    started: Instant,
    joined: bool,
    /// Set once it counted as opened (joined or failed).
    settled: bool,
    failure: Option<String>,
    control: Option<StreamId>,
    control_in: FrameDecoder,
    rooms: Vec<(StreamId, RoomIn)>,
    heartbeat: Duration,
    received: Received,
}

/// A room stream's frames: `RoomStreamStart` first, then events.
struct RoomIn {
    frames: FrameDecoder,
    started: bool,
}

/// The handler of one socket's watchers.
struct Watch {
    dial: Arc<Dial>,
    pending: VecDeque<Viewer>,
    to_open: usize,
    opening: usize,
    limit: usize,
    outcome: OpenOutcome,
    done: Option<oneshot::Sender<OpenOutcome>>,
    /// What watchers whose connection ended saw.
    ended: Vec<(usize, Received)>,
    finishing: bool,
}

impl Watch {
    /// Counts a watcher as opened (joined or failed), once.
    fn settle(&mut self, w: &mut Watcher, now: Instant) {
        if w.settled {
            return;
        }
        w.settled = true;
        let latency = w.joined.then(|| now.duration_since(w.started).as_micros() as u64);
        let failure = w.failure.clone().unwrap_or_else(|| "connection closed".into());
        self.opened(latency.ok_or(failure));
    }

    fn opened(&mut self, outcome: Result<u64, String>) {
        self.opening -= 1;
        self.dial.opened.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(latency) => {
                self.outcome.joined += 1;
                self.outcome.latencies.push(latency);
            }
            Err(failure) => self.outcome.failures.push(failure),
        }
        self.to_open -= 1;
        if self.to_open == 0
            && let Some(done) = self.done.take()
        {
            let _ = done.send(std::mem::take(&mut self.outcome));
        }
    }

    /// The control stream's answers: the welcome, the join's answer, or a refusal.
    fn control(&mut self, link: &mut Link<'_, Watcher>, id: StreamId) {
        use v1::server_frame::Body;
        read_stream(link.quic, id, |b| link.state.control_in.extend(b));
        loop {
            let frame = match link.state.control_in.next_message::<v1::ServerFrame>() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    link.state.failure = Some(format!("control stream: {e}"));
                    link.quic.close(link.now, 0u32.into(), Bytes::new());
                    return;
                }
            };
            match frame.body {
                Some(Body::Welcome(welcome)) => {
                    let every = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms).max(50));
                    link.state.heartbeat = every;
                    let at = link.now + every;
                    link.wake_at(at);
                }
                Some(Body::Joined(j)) if frame.request_id == 2 => {
                    link.state.received = Received::after(j.current_seq, self.dial.host_only_latency);
                    link.state.joined = true;
                    self.settle(link.state, link.now);
                }
                Some(Body::Error(e)) => {
                    link.state.failure = Some(format!("refused: {} ({})", e.message, e.code));
                    link.quic.close(link.now, 0u32.into(), Bytes::new());
                    self.settle(link.state, link.now);
                    return;
                }
                _ => {}
            }
        }
    }

    /// A room stream's frames, counted into what the watcher received.
    fn room(&mut self, link: &mut Link<'_, Watcher>, id: StreamId) {
        use v1::room_frame::Body;
        let Watcher { viewer, rooms, received, failure, .. } = &mut *link.state;
        if viewer.slow {
            return;
        }
        let Some((_, room)) = rooms.iter_mut().find(|(s, _)| *s == id) else { return };
        read_stream(link.quic, id, |b| room.frames.extend(b));
        let split = self.dial.split.load(Ordering::Relaxed);
        loop {
            let frame = match room.frames.next_message::<v1::RoomFrame>() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    *failure = Some(format!("room stream: {e}"));
                    link.quic.close(link.now, 0u32.into(), Bytes::new());
                    return;
                }
            };
            match frame.body {
                Some(Body::Start(_)) if !room.started => room.started = true,
                Some(Body::Event(e)) if room.started => {
                    if e.seq > 0 {
                        received.take(&e, split);
                    }
                }
                Some(Body::Lagged(_)) if room.started => received.lags += 1,
                Some(Body::Advance(_) | Body::Removed(_)) if room.started => {}
                _ => {
                    *failure = Some("bad room stream".into());
                    link.quic.close(link.now, 0u32.into(), Bytes::new());
                    return;
                }
            }
        }
    }
}

impl Handler for Watch {
    type State = Watcher;
    type Command = Command;

    fn event(&mut self, link: &mut Link<'_, Watcher>, event: Event) {
        match event {
            Event::Connected => {
                let Some(id) = link.quic.streams().open(Dir::Bi) else { return };
                link.state.control = Some(id);
                let hello = v1::ClientFrame {
                    request_id: 1,
                    body: Some(v1::client_frame::Body::Hello(v1::Hello {
                        token: std::mem::take(&mut link.state.viewer.token),
                        protocol_version: PROTOCOL_VERSION,
                        client_name: self.dial.client_name.clone(),
                        client_version: env!("CARGO_PKG_VERSION").into(),
                    })),
                };
                let join = v1::ClientFrame {
                    request_id: 2,
                    body: Some(v1::client_frame::Body::Join(v1::Join {
                        room: link.state.viewer.room.clone(),
                        ..Default::default()
                    })),
                };
                let mut bytes = encode_frame(&hello).to_vec();
                bytes.extend_from_slice(&encode_frame(&join));
                // Two small frames fit the stream's first window.
                let _ = link.quic.send_stream(id).write(&bytes);
            }
            Event::ConnectionLost { reason } => {
                let w = &mut *link.state;
                if w.failure.is_none() {
                    w.failure = Some(reason.to_string());
                }
                if w.joined && !self.finishing {
                    w.received.disconnected = true;
                    self.dial.dropped.fetch_add(1, Ordering::Relaxed);
                }
                let now = link.now;
                self.settle(link.state, now);
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = link.quic.streams().accept(Dir::Uni) {
                    link.state.rooms.push((
                        id,
                        RoomIn { frames: FrameDecoder::new(MAX_SERVER_FRAME_BYTES), started: false },
                    ));
                    self.room(link, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if link.state.control == Some(id) {
                    self.control(link, id);
                } else {
                    self.room(link, id);
                }
            }
            Event::DatagramReceived => while link.quic.datagrams().recv().is_some() {},
            _ => {}
        }
    }

    fn wake(&mut self, link: &mut Link<'_, Watcher>) {
        let hb = ClientDatagram::Heartbeat { client_time_ms: unix_ms(SystemTime::now()) };
        let _ = link.quic.datagrams().send(hb.encode(), true);
        let at = link.now + link.state.heartbeat;
        link.wake_at(at);
    }

    fn ended(&mut self, _id: ConnId, mut state: Watcher, _quic: &proto::Connection) {
        let now = Instant::now();
        self.settle(&mut state, now);
        self.ended.push((state.viewer.index, state.received));
    }

    fn command(&mut self, core: &mut Core<Watcher>, command: Command, now: Instant) -> Flow {
        match command {
            Command::Stats(reply) => {
                let mut c = RxCounts::default();
                for (_, quic, _) in core.iter_mut() {
                    let st = quic.stats();
                    c.datagrams += st.udp_rx.datagrams;
                    c.pings += st.frame_rx.ping;
                    c.streams += st.frame_rx.stream;
                }
                let _ = reply.send(c);
                Flow::Continue
            }
            Command::Finish(reply) => {
                self.finishing = true;
                core.close_all(now, 0u32.into(), b"done");
                let mut out = std::mem::take(&mut self.ended);
                for (_, _, w) in core.iter_mut() {
                    out.push((w.viewer.index, std::mem::take(&mut w.received)));
                }
                let _ = reply.send(out);
                Flow::Stop
            }
        }
    }

    fn turn(&mut self, core: &mut Core<Watcher>, now: Instant) {
        while self.opening < self.limit {
            let Some(viewer) = self.pending.pop_front() else { return };
            let config = if viewer.slow { self.dial.quic_slow.clone() } else { self.dial.quic.clone() };
            let w = Watcher {
                viewer,
                started: now,
                joined: false,
                settled: false,
                failure: None,
                control: None,
                control_in: FrameDecoder::new(MAX_SERVER_FRAME_BYTES),
                rooms: Vec::new(),
                heartbeat: Duration::from_secs(20),
                received: Received::default(),
            };
            self.opening += 1;
            let dial = self.dial.clone();
            if let Err(e) = core.connect(now, config, dial.server, &dial.server_name, w) {
                self.opened(Err(e.to_string()));
            }
        }
    }
}
