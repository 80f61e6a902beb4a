//! The transport edge: one task per UDP socket drives every QUIC connection
//! on it through quinn-proto's state machines.
//!
//! [`Driver::run`] receives datagrams in batches (recvmmsg and GRO, through
//! quinn-udp) and lets quinn-proto's `Endpoint` route each one to its
//! connection by connection id, so a client whose address changes still
//! reaches its connection. It hands each connection's events to a
//! [`Handler`] (sans-IO: the handler reads and writes the connection's
//! streams and datagrams and returns), polls transmits from the connections
//! something happened to and sends them (GSO per connection), and keeps
//! every connection's deadlines (quinn-proto's and the handler's own) in one
//! heap. There is no task, channel, lock or transmit buffer per connection:
//! a connection costs its quinn-proto state and the handler's.
//!
//! What reaches the driver from other tasks is a handler's `Command`, through
//! one bounded queue per driver.

mod core;
mod socket;
mod steer;
#[cfg(test)]
mod tests;
mod timers;

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::task::Waker;
use std::time::Instant;

use bytes::BytesMut;
use quinn::udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

use self::socket::{Io, udp_transmit};
use timers::Timers;

pub use self::core::Core;

pub use proto::{ConnectionHandle as ConnId, Dir, Event, StreamEvent, StreamId, VarInt};
/// quinn-proto, whose `Connection` a handler drives.
pub use quinn_proto as proto;
pub use steer::Steered;

/// Receive calls per turn of the loop before the connections it touched are
/// driven (and their answers sent).
const RECV_CALLS_PER_TURN: usize = 4;
/// Bytes of one receive buffer: one GRO batch at most.
const RECV_SLOT: usize = 64 * 1024;

/// One connection as a handler sees it: quinn-proto's state machine, the
/// handler's own state for it, and the time of this step.
pub struct Link<'a, S> {
    pub id: ConnId,
    pub quic: &'a mut proto::Connection,
    pub state: &'a mut S,
    pub now: Instant,
    wake: &'a mut Option<Instant>,
    waker: &'a Waker,
}

impl<S> Link<'_, S> {
    /// This connection's waker: waking it marks the connection ready in its
    /// driver's queue, and [`Handler::ready`] is called for it on the
    /// driver's next turn. For polling futures and outboxes from a handler.
    pub fn waker(&self) -> &Waker {
        self.waker
    }

    /// Calls [`Handler::wake`] for this connection at `at` (replacing an
    /// earlier request).
    pub fn wake_at(&mut self, at: Instant) {
        *self.wake = Some(at);
    }

    /// [`Self::wake_at`], or no wake-up with `None`.
    pub fn set_wake(&mut self, at: Option<Instant>) {
        *self.wake = at;
    }
}

/// What a driver's owner does with the connections: the sans-IO half.
pub trait Handler {
    /// Per connection.
    type State;
    /// What other tasks send the driver.
    type Command;

    /// A client's first packet (servers only): `Some` accepts it with that
    /// state, `None` refuses it (CONNECTION_REFUSED).
    fn admit(&mut self, incoming: &proto::Incoming, now: Instant) -> Option<Self::State> {
        let _ = (incoming, now);
        None
    }

    /// A connection [`Handler::admit`] let in that the endpoint could not
    /// accept after all; its state is handed back.
    fn unaccepted(&mut self, state: Self::State) {
        let _ = state;
    }

    /// An event of one connection.
    fn event(&mut self, link: &mut Link<'_, Self::State>, event: Event);

    /// The time asked for with [`Link::wake_at`] came.
    fn wake(&mut self, link: &mut Link<'_, Self::State>) {
        let _ = link;
    }

    /// The connection's waker ([`Link::waker`]) was woken.
    fn ready(&mut self, link: &mut Link<'_, Self::State>) {
        let _ = link;
    }

    /// A connection is gone (closed and drained); its state is handed back.
    fn ended(&mut self, id: ConnId, state: Self::State, quic: &proto::Connection);

    /// A command from another task. [`Flow::Stop`] ends the driver once what
    /// the connections have to send is sent.
    fn command(&mut self, core: &mut Core<Self::State>, command: Self::Command, now: Instant) -> Flow;

    /// Called once per turn of the driver's loop, after the connections the
    /// turn touched were driven: where a handler starts more work.
    fn turn(&mut self, core: &mut Core<Self::State>, now: Instant) {
        let _ = (core, now);
    }
}

/// Reads whatever stream `id` holds now, in order; `each` sees the bytes.
pub fn read_stream(quic: &mut proto::Connection, id: StreamId, mut each: impl FnMut(&[u8])) {
    let mut stream = quic.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else { return };
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        each(&chunk.bytes);
    }
    let _ = chunks.finalize();
}

/// Whether a driver goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// One UDP socket's connections and the task that drives them.
pub struct Driver<H: Handler> {
    core: Core<H::State>,
    handler: H,
    io: Io,
    /// Its place in a group of drivers on one address, if it is in one.
    steer: Option<steer::Steer>,
}

impl<H: Handler> Driver<H> {
    /// A driver on `socket` (bound, non-blocking or not). With a server
    /// configuration it accepts the clients its handler admits.
    pub fn new(
        socket: std::net::UdpSocket,
        server_config: Option<Arc<proto::ServerConfig>>,
        handler: H,
    ) -> io::Result<Self> {
        Self::with(socket, server_config, handler, proto::EndpointConfig::default(), None)
    }

    /// Drivers for `sockets`, all bound to one address with `SO_REUSEPORT`
    /// (see [`crate::endpoint::udp_sockets`]), one handler each: each issues
    /// connection ids that name it, and a datagram that reaches another's
    /// socket is handed to it (see `steer`), and `steered` is called.
    pub fn group(
        sockets: Vec<std::net::UdpSocket>,
        server_config: Option<Arc<proto::ServerConfig>>,
        handlers: Vec<H>,
        steered: Steered,
    ) -> io::Result<Vec<Self>> {
        let n = sockets.len();
        if n != handlers.len() || n == 0 || n > usize::from(u8::MAX) {
            return Err(io::Error::other("a group needs 1 to 255 sockets, one handler each"));
        }
        if n == 1 {
            // Alone: nothing to steer, and connection ids need not name it.
            let (socket, handler) =
                sockets.into_iter().zip(handlers).next().ok_or_else(|| io::Error::other("empty"))?;
            return Ok(vec![Self::new(socket, server_config, handler)?]);
        }
        let (senders, mut inboxes): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::channel(steer::MOVED_QUEUE)).map(|(tx, rx)| (tx, Some(rx))).unzip();
        let mut drivers = Vec::with_capacity(n);
        for (driver, (socket, handler)) in sockets.into_iter().zip(handlers).enumerate() {
            let index = u8::try_from(driver).map_err(io::Error::other)?;
            let mut config = proto::EndpointConfig::default();
            config.cid_generator(move || {
                Box::new(steer::Cids {
                    driver: index,
                    random: proto::RandomConnectionIdGenerator::new(steer::CID_LEN),
                })
            });
            let inbox = inboxes[driver].take().ok_or_else(|| io::Error::other("inbox"))?;
            let steer = steer::Steer { driver, peers: senders.clone(), inbox, steered: steered.clone() };
            drivers.push(Self::with(socket, server_config.clone(), handler, config, Some(steer))?);
        }
        Ok(drivers)
    }

    fn with(
        socket: std::net::UdpSocket,
        server_config: Option<Arc<proto::ServerConfig>>,
        handler: H,
        config: proto::EndpointConfig,
        steer: Option<steer::Steer>,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let udp = UdpSocketState::new((&socket).into())?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let batch = quinn::udp::BATCH_SIZE.max(1);
        let endpoint = proto::Endpoint::new(Arc::new(config), server_config.clone(), true, None);
        Ok(Self {
            core: Core {
                endpoint,
                server_config,
                conns: Vec::new(),
                live: 0,
                timers: Timers::default(),
                dirty: Vec::new(),
                ready: Arc::default(),
                generations: 0,
            },
            handler,
            io: Io {
                socket,
                udp,
                recv_buf: vec![0; RECV_SLOT * batch],
                metas: vec![RecvMeta::default(); batch],
                send_buf: Vec::with_capacity(64 * 1024),
                blocked: None,
                backlog: std::collections::VecDeque::new(),
                scratch: Vec::new(),
            },
            steer,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.socket.local_addr()
    }

    /// The connections and the handler, before the driver runs (to open
    /// connections, for instance).
    pub fn parts(&mut self) -> (&mut Core<H::State>, &mut H) {
        (&mut self.core, &mut self.handler)
    }

    /// Drives the connections until the handler stops it (or `commands`
    /// closes and no connection is left), then hands the handler back.
    pub async fn run(mut self, mut commands: mpsc::Receiver<H::Command>) -> H {
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut commands_open = true;
        let mut stopping = false;
        loop {
            let now = Instant::now();
            self.expire(now);
            self.drive_dirty(now);
            if !stopping {
                self.handler.turn(&mut self.core, now);
                self.drive_dirty(now);
            }
            if stopping && self.io.blocked.is_none() {
                return self.handler;
            }
            if !commands_open && self.core.is_empty() {
                return self.handler;
            }
            let next = self.core.timers.next();
            if next != armed {
                if let Some(at) = next {
                    sleep.as_mut().reset(at.into());
                }
                armed = next;
            }
            tokio::select! {
                biased;
                command = commands.recv(), if commands_open && !stopping => match command {
                    Some(c) => {
                        if self.handler.command(&mut self.core, c, Instant::now()) == Flow::Stop {
                            stopping = true;
                        }
                    }
                    None => commands_open = false,
                },
                ready = self.io.socket.writable(), if self.io.blocked.is_some() => {
                    if ready.is_ok() {
                        self.unblock();
                    }
                }
                ready = self.io.socket.readable() => {
                    if ready.is_ok() {
                        self.receive(Instant::now());
                    }
                }
                () = self.core.ready.notify.notified() => self.take_ready(Instant::now()),
                moved = moved(&mut self.steer) => {
                    if let Some(m) = moved {
                        self.datagram(Instant::now(), &m.meta, m.data);
                    }
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                }
            }
        }
    }

    /// Reads what the socket has (a few batches) and hands each datagram to
    /// the endpoint.
    fn receive(&mut self, now: Instant) {
        for _ in 0..RECV_CALLS_PER_TURN {
            let Io { socket, udp, recv_buf, metas, .. } = &mut self.io;
            let (socket, udp) = (&*socket, &*udp);
            let mut slices: Vec<IoSliceMut<'_>> =
                recv_buf.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
            let got = socket.try_io(Interest::READABLE, || udp.recv(socket.into(), &mut slices, metas));
            drop(slices);
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    return;
                }
            };
            for i in 0..n {
                let meta = self.io.metas[i];
                let start = i * RECV_SLOT;
                let mut data = BytesMut::from(&self.io.recv_buf[start..start + meta.len]);
                let stride = meta.stride.max(1);
                while !data.is_empty() {
                    let datagram = data.split_to(stride.min(data.len()));
                    if let Some(steer) = &self.steer
                        && let Some(owner) = steer.owner(&datagram)
                        && owner != steer.driver
                    {
                        // Another driver's connection: its client moved. A
                        // full queue drops it, as a full socket would.
                        if steer.peers[owner].try_send(steer::Moved { meta, data: datagram }).is_ok() {
                            (steer.steered)();
                        }
                        continue;
                    }
                    self.datagram(now, &meta, datagram);
                }
            }
        }
    }

    fn datagram(&mut self, now: Instant, meta: &RecvMeta, data: BytesMut) {
        let ecn = meta.ecn.and_then(|e| proto::EcnCodepoint::from_bits(e as u8));
        self.io.scratch.clear();
        let event = self.core.endpoint.handle(now, meta.addr, meta.dst_ip, ecn, data, &mut self.io.scratch);
        match event {
            Some(proto::DatagramEvent::ConnectionEvent(id, event)) => {
                if let Some(Some(slot)) = self.core.conns.get_mut(id.0) {
                    slot.quic.handle_event(event);
                    self.core.mark(id);
                }
            }
            Some(proto::DatagramEvent::NewConnection(incoming)) => match self.handler.admit(&incoming, now) {
                Some(state) => {
                    let config = self.core.server_config.clone();
                    match self.core.endpoint.accept(incoming, now, &mut self.io.scratch, config) {
                        Ok((id, quic)) => self.core.insert(id, quic, state),
                        Err(e) => {
                            self.handler.unaccepted(state);
                            if let Some(t) = e.response {
                                self.respond(&t);
                            }
                        }
                    }
                }
                None => {
                    let t = self.core.endpoint.refuse(incoming, &mut self.io.scratch);
                    self.respond(&t);
                }
            },
            Some(proto::DatagramEvent::Response(t)) => self.respond(&t),
            None => {}
        }
    }

    /// Sends an endpoint's own answer from `scratch`, best effort: a peer
    /// that misses one asks again.
    fn respond(&mut self, t: &proto::Transmit) {
        let Io { socket, udp, scratch, .. } = &self.io;
        let transmit = udp_transmit(t, &scratch[..t.size]);
        let _ = socket.try_io(Interest::WRITABLE, || udp.send(socket.into(), &transmit));
    }

    /// Tells the handler of the connections marked ready.
    fn take_ready(&mut self, now: Instant) {
        let marks =
            std::mem::take(&mut *self.core.ready.marks.lock().unwrap_or_else(PoisonError::into_inner));
        for (index, generation) in marks {
            let Some(Some(slot)) = self.core.conns.get_mut(index) else { continue };
            if slot.generation != generation {
                continue;
            }
            self.handler.ready(&mut slot.link(index, now));
            self.core.mark(ConnId(index));
        }
    }

    /// Runs the connections whose deadline passed.
    fn expire(&mut self, now: Instant) {
        while let Some((at, index)) = self.core.timers.pop_due(now) {
            let Some(Some(slot)) = self.core.conns.get_mut(index) else { continue };
            if slot.deadline != Some(at) {
                continue;
            }
            slot.deadline = None;
            slot.quic.handle_timeout(now);
            if slot.wake.is_some_and(|w| w <= now) {
                slot.wake = None;
                self.handler.wake(&mut slot.link(index, now));
            }
            self.core.mark(ConnId(index));
        }
        if self.core.timers.len() > 4 * self.core.live + 1024 {
            let live = self
                .core
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().and_then(|s| s.deadline).map(|at| (at, i)));
            let live: Vec<_> = live.collect();
            self.core.timers.rebuild(live.into_iter());
        }
    }

    fn drive_dirty(&mut self, now: Instant) {
        while !self.core.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.core.dirty);
            for id in &dirty {
                self.drive(*id, now);
            }
            let mut reuse = dirty;
            reuse.clear();
            if self.core.dirty.is_empty() {
                self.core.dirty = reuse;
            }
        }
    }

    /// One connection's step: its events to the endpoint and the handler,
    /// its transmits to the socket, its next deadline to the heap.
    fn drive(&mut self, id: ConnId, now: Instant) {
        let Core { endpoint, conns, timers, live, .. } = &mut self.core;
        let Some(Some(slot)) = conns.get_mut(id.0) else { return };
        slot.dirty = false;
        loop {
            let mut progressed = false;
            while let Some(event) = slot.quic.poll_endpoint_events() {
                progressed = true;
                if let Some(event) = endpoint.handle_event(id, event) {
                    slot.quic.handle_event(event);
                }
            }
            while let Some(event) = slot.quic.poll() {
                progressed = true;
                self.handler.event(&mut slot.link(id.0, now), event);
            }
            if !progressed {
                break;
            }
        }
        if self.io.blocked.is_none() {
            let max = self.io.udp.max_gso_segments();
            loop {
                self.io.send_buf.clear();
                let Some(t) = slot.quic.poll_transmit(now, max, &mut self.io.send_buf) else { break };
                if !self.io.send(t) {
                    break;
                }
            }
        }
        if self.io.blocked.is_some() && !slot.backlogged {
            slot.backlogged = true;
            self.io.backlog.push_back(id);
        }
        if slot.quic.is_drained() {
            // The drained event went to the endpoint above, which let the handle go.
            if let Some(slot) = conns[id.0].take() {
                *live -= 1;
                self.handler.ended(id, slot.state, &slot.quic);
            }
            return;
        }
        let deadline = match (slot.quic.poll_timeout(), slot.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deadline != slot.deadline {
            slot.deadline = deadline;
            if let Some(at) = deadline {
                timers.push(at, id.0);
            }
        }
    }

    /// The socket takes sends again: the blocked transmit first, then the
    /// connections that were waiting.
    fn unblock(&mut self) {
        if let Some(t) = self.io.blocked.take()
            && !self.io.send(t)
        {
            return;
        }
        let now = Instant::now();
        while self.io.blocked.is_none() {
            let Some(id) = self.io.backlog.pop_front() else { break };
            if let Some(Some(slot)) = self.core.conns.get_mut(id.0) {
                slot.backlogged = false;
            }
            self.core.mark(id);
            self.drive_dirty(now);
        }
    }
}

/// The next datagram another driver of the group handed over; never, for a
/// driver alone.
async fn moved(steer: &mut Option<steer::Steer>) -> Option<steer::Moved> {
    match steer {
        Some(s) => s.inbox.recv().await,
        None => std::future::pending().await,
    }
}
