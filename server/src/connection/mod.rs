//! Sessions on the transport edge: each connection's hello, control-stream
//! requests, heartbeats and presence, and its room streams, as steps that
//! the socket's driver ([`crate::edge`]) calls. There is no task per
//! connection: what a session waits for (a room's reply, a ledger's
//! answer, a room's outbox) is polled with the connection's waker, whose
//! wake is a mark in the driver's ready queue.
//!
//! Anything malformed from the network ends this connection only, with the
//! matching close code; nothing here unwraps what a peer sent.
//!
//! `requests` holds the handlers of each request, `rooms` the room
//! streams, `quiz` a player's side of a live quiz.

mod control;
mod quiz;
mod requests;
mod rooms;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use roomcast_protocol::codec::{FrameDecoder, encode_frame};
use roomcast_protocol::datagram::ClientDatagram;
use roomcast_protocol::{ErrorCode, MAX_MESSAGE_ID_BYTES, PROTOCOL_VERSION, RoomId, unix_ms, v1};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::auth::Identity;
use crate::edge::{self, Core, Dir, Event, Flow, Handler, Link, StreamEvent, StreamId, proto};
use crate::gate::{Gate, Permit};
use crate::gifts::{Charge, DebitOutcome, Gifts, MAX_GIFT_COUNT, Receipt};
use crate::moderation::{SanctionKind, Verdict};
use crate::room::{
    ChatRequest, ConnId, Feed, Filter, GiftRequest, HistoryRange, JoinRequest, Joined, Reply, Resume,
    RoomHandle,
};
use crate::webhooks::{FlagAction, HookEvent, LeaveReason};

use control::{Read, answer, close, finish_control, flush_control, read_chunk, write_all};
use rooms::RoomStream;
use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

/// The most control-stream bytes taken from QUIC in one read.
const CONTROL_CHUNK: usize = 64 * 1024;

/// Requests handed on whose answers are still to come. Chats, recalls and
/// gifts are pipelined: the session reads the next request while the room
/// works, so one sender's rate is not capped at one round trip through a
/// busy scheduler. At this many the session stops reading the control stream
/// until the oldest answer arrives, and QUIC flow control pushes back on a
/// client that floods it.
const MAX_IN_FLIGHT: usize = 64;

/// How long a closing session waits for the client to acknowledge what was
/// written to it: closing a QUIC connection discards whatever the peer has
/// not acknowledged, answers included.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

type Answered = Result<Resp, (ErrorCode, String)>;
type Answer = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// What a step the session waited on came to.
enum Done {
    /// The answer to a request.
    Answer(Answered),
    /// A join's outcome: the stream is opened and the answer written when it
    /// is applied.
    Joined(RoomId, Result<Joined, (ErrorCode, String)>),
    /// A quiz verdict read from the fleet, sent unsolicited.
    Verdict(Option<v1::QuizVerdict>),
}

type Step = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A step the session waits on, in request order.
struct Pending {
    /// The request it answers (0 for an unsolicited frame).
    rid: u32,
    /// Joins and leaves: no later request is read until it is done (a chat
    /// right after a join needs the room).
    barrier: bool,
    step: Step,
    done: Option<Done>,
}

/// The room's reply to a request, as an answer to the client.
fn room_answer<T: Send + 'static>(reply: Reply<T>, refused: &'static str, wrap: fn(T) -> Resp) -> Answer {
    Box::pin(async move { reply.await.map(wrap).map_err(|code| (code, refused.to_string())) })
}

/// What the node's drivers are told from outside.
pub(crate) enum Command {
    /// The node drains: refuse newcomers; each session leaves its rooms,
    /// writes what is pending and closes with `SERVER_DRAINING` and `reason`.
    Drain { reason: Bytes },
    /// Close every connection left, now.
    CloseAll { code: ErrorCode, reason: Bytes },
    /// Send what is queued and stop.
    Stop,
}

/// The sessions of one driver.
pub(crate) struct Node {
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    /// Connections open on this driver, for the drain to watch.
    open: Arc<AtomicUsize>,
    draining: Option<Bytes>,
}

impl Node {
    pub(crate) fn new(shared: Arc<Shared>, gate: Arc<Gate>, open: Arc<AtomicUsize>) -> Self {
        Self { shared, gate, open, draining: None }
    }
}

/// Where a connection is in its life.
enum Phase {
    /// Handshaking or waiting for the hello, until the deadline.
    Hello { deadline: Instant },
    /// A session.
    Live(Box<Session>),
}

/// Why and when a connection closes once the client has what was written.
struct Closing {
    code: proto::VarInt,
    reason: Bytes,
    by: Instant,
}

/// One connection's state.
pub(crate) struct Conn {
    id: ConnId,
    /// The gate's place, held until the connection ends.
    _permit: Permit,
    remote: SocketAddr,
    control: Option<StreamId>,
    decoder: FrameDecoder,
    /// Control-stream bytes QUIC has not taken yet.
    out: VecDeque<Bytes>,
    /// The client finished or reset its control stream.
    control_ended: bool,
    /// QUIC may hold control-stream bytes not read yet (a `Readable` event
    /// came since the last read found nothing): a ready mark from a room
    /// does not read the stream for nothing.
    control_unread: bool,
    /// Everything written on the control stream was acknowledged.
    control_acked: bool,
    phase: Phase,
    closing: Option<Closing>,
    closed: bool,
}

/// A session: what exists once the hello was answered.
struct Session {
    identity: Identity,
    rooms: HashMap<RoomId, RoomHandle>,
    streams: Vec<RoomStream>,
    /// The last heartbeat (or request).
    last_heartbeat: Instant,
    present: bool,
    next_presence_check: Instant,
    pending: VecDeque<Pending>,
    quiz: Option<quiz::QuizWatch>,
    draining: bool,
}

impl Handler for Node {
    type State = Conn;
    type Command = Command;

    fn admit(&mut self, incoming: &proto::Incoming, now: Instant) -> Option<Conn> {
        if self.draining.is_some() {
            // Refused at once, so that clients try their next address
            // instead of timing out here.
            self.shared.metrics.connections_refused("draining");
            return None;
        }
        let remote = incoming.remote_address();
        let admitted = self.gate.admit(remote.ip(), now.into());
        match admitted {
            Ok(permit) => {
                self.open.fetch_add(1, Ordering::Relaxed);
                let limits = &self.shared.config.limits;
                Some(Conn {
                    id: self.shared.next_conn.fetch_add(1, Ordering::Relaxed),
                    _permit: permit,
                    remote,
                    control: None,
                    decoder: FrameDecoder::new(limits.max_frame_bytes),
                    out: VecDeque::new(),
                    control_ended: false,
                    control_unread: false,
                    control_acked: false,
                    // Set again when the handshake completes.
                    phase: Phase::Hello { deadline: now + Duration::from_millis(limits.hello_timeout_ms) },
                    closing: None,
                    closed: false,
                })
            }
            Err(why) => {
                self.shared.metrics.connections_refused(why.as_str());
                None
            }
        }
    }

    fn event(&mut self, link: &mut Link<'_, Conn>, event: Event) {
        match event {
            Event::Connected => {
                self.shared.metrics.handshakes.inc();
                // The hello's time counts from the handshake's end: a node
                // busy with a join storm does not refuse a slow handshake.
                let timeout = Duration::from_millis(self.shared.config.limits.hello_timeout_ms);
                if let Phase::Hello { deadline } = &mut link.state.phase {
                    *deadline = link.now + timeout;
                }
            }
            Event::ConnectionLost { reason } => {
                debug!(conn = link.state.id, %reason, "connection closed");
                self.end(link.state);
                return;
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                // The transport allows the client one bidirectional stream.
                if let Some(id) = link.quic.streams().accept(Dir::Bi) {
                    link.state.control = Some(id);
                    link.state.control_unread = true;
                }
            }
            Event::Stream(StreamEvent::Readable { id }) if link.state.control == Some(id) => {
                link.state.control_unread = true;
            }
            Event::Stream(StreamEvent::Finished { id }) => {
                if link.state.control == Some(id) {
                    link.state.control_acked = true;
                } else if let Phase::Live(s) = &mut link.state.phase {
                    s.streams.retain(|r| r.id() != id);
                }
            }
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                if let Phase::Live(s) = &mut link.state.phase
                    && let Some(i) = s.streams.iter().position(|r| r.id() == id)
                {
                    s.streams.swap_remove(i).stop();
                }
            }
            Event::DatagramReceived => self.datagrams(link),
            _ => {}
        }
        self.advance(link);
    }

    fn wake(&mut self, link: &mut Link<'_, Conn>) {
        self.advance(link);
    }

    fn ready(&mut self, link: &mut Link<'_, Conn>) {
        self.advance(link);
    }

    fn unaccepted(&mut self, _state: Conn) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn ended(&mut self, _id: edge::ConnId, mut state: Conn, _quic: &proto::Connection) {
        self.end(&mut state);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn command(&mut self, core: &mut Core<Conn>, command: Command, now: Instant) -> Flow {
        match command {
            Command::Drain { reason } => {
                self.draining = Some(reason);
                let mut leaving = Vec::new();
                let mut touched = Vec::new();
                for (handle, _, conn) in core.iter_mut() {
                    if let Phase::Live(s) = &mut conn.phase
                        && !s.draining
                    {
                        s.draining = true;
                        leaving.extend(s.rooms.drain().map(|(_, h)| (conn.id, h)));
                    }
                    touched.push(handle);
                }
                leave(leaving, LeaveReason::Drain);
                // Each session finishes its side once idle: woken now, so
                // that one with nothing to say (no room, no request) does
                // not wait for its next packet or presence check.
                for handle in touched {
                    core.wake(handle);
                }
                Flow::Continue
            }
            Command::CloseAll { code, reason } => {
                core.close_all(now, code.to_code().into(), &reason);
                Flow::Continue
            }
            Command::Stop => Flow::Stop,
        }
    }
}

/// Tells rooms that members left, off the driver (a room's queue may be
/// full): one task for all of them.
fn leave(members: Vec<(ConnId, RoomHandle)>, reason: LeaveReason) {
    if members.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (conn, room) in members {
            room.leave(conn, reason).await;
        }
    });
}

impl Node {
    /// A connection is over: its rooms are told, its streams end.
    fn end(&mut self, conn: &mut Conn) {
        if conn.closed {
            return;
        }
        conn.closed = true;
        if let Phase::Live(s) = &mut conn.phase {
            let reason = if self.draining.is_some() {
                LeaveReason::Drain
            } else if !s.present {
                LeaveReason::HeartbeatLoss
            } else {
                LeaveReason::Disconnect
            };
            for stream in s.streams.drain(..) {
                stream.stop();
            }
            leave(s.rooms.drain().map(|(_, h)| (conn.id, h)).collect(), reason);
            self.shared.metrics.connections.dec();
            info!(conn = conn.id, user = %s.identity.user_id, "session ended");
        }
    }

    /// Everything a connection can do now: read and answer requests, take
    /// what its waits came to, fill its room streams, and close when due.
    /// Called after every event, wake-up and ready mark; doing nothing when
    /// nothing changed.
    fn advance(&mut self, link: &mut Link<'_, Conn>) {
        if link.state.closed {
            return;
        }
        if let Some(by) = link.state.closing.as_ref().map(|c| c.by) {
            flush_control(link);
            if link.state.control_acked || link.now >= by {
                let Some(c) = link.state.closing.take() else { return };
                link.quic.close(link.now, c.code, c.reason);
                self.end(link.state);
            } else {
                link.wake_at(by);
            }
            return;
        }
        match &link.state.phase {
            Phase::Hello { deadline } => {
                let deadline = *deadline;
                self.hello(link);
                if matches!(link.state.phase, Phase::Hello { .. }) && link.state.closing.is_none() {
                    if link.now >= deadline {
                        let why = if link.state.control.is_some() {
                            "no hello in time"
                        } else {
                            "no control stream in time"
                        };
                        self.refuse(link, ErrorCode::HelloTimeout, why);
                    } else {
                        link.wake_at(deadline);
                    }
                }
            }
            Phase::Live(_) => self.serve(link),
        }
        if link.state.closing.is_some() {
            // Just started to close: wait for the acknowledgement.
            self.advance(link);
        }
    }

    /// A live session's turn.
    fn serve(&mut self, link: &mut Link<'_, Conn>) {
        let cx_waker = link.waker().clone();
        let mut cx = Context::from_waker(&cx_waker);
        if let Err((code, why)) = self.requests(link, &mut cx) {
            return close(link, code, &why);
        }
        // After the requests, so that a watch an answer just set up has the
        // waker registered before the session goes idle.
        if let Phase::Live(s) = &mut link.state.phase
            && quiz::poll_reveal(s, &mut cx)
            && let Err((code, why)) = self.settle(link, &mut cx)
        {
            return close(link, code, &why);
        }
        let Phase::Live(s) = &mut link.state.phase else { return };
        // Presence: absent after the configured number of missed heartbeats.
        let presence = &self.shared.config.presence;
        if link.now >= s.next_presence_check {
            s.next_presence_check = link.now + presence.heartbeat_interval();
            let present = link.now.duration_since(s.last_heartbeat) < presence.grace();
            if present != s.present {
                s.present = present;
                debug!(conn = link.state.id, present, "presence changed");
                let (conn, rooms) = (link.state.id, s.rooms.values().cloned().collect::<Vec<_>>());
                tokio::spawn(async move {
                    for room in rooms {
                        room.set_present(conn, present).await;
                    }
                });
            }
        }
        for stream in &mut s.streams {
            stream.pump(link.quic, &mut cx, &self.shared.metrics);
        }
        s.streams.retain(|r| !r.is_gone());
        flush_control(link);
        let Phase::Live(s) = &mut link.state.phase else { return };
        let idle = s.pending.is_empty();
        if s.draining && idle && s.streams.is_empty() && link.state.out.is_empty() {
            // Drained: the client reconnects elsewhere and resumes.
            let reason = self.draining.clone().unwrap_or_default();
            info!(conn = link.state.id, "closing connection: node draining");
            finish_control(link);
            let code = ErrorCode::ServerDraining.to_code().into();
            link.state.closing = Some(Closing { code, reason, by: link.now + CLOSE_LINGER });
            return;
        }
        if link.state.control_ended && idle && !s.draining {
            finish_control(link);
            link.state.closing = Some(Closing {
                code: 0u32.into(),
                reason: Bytes::from_static(b"bye"),
                by: link.now + CLOSE_LINGER,
            });
            return;
        }
        let next = s.next_presence_check;
        link.wake_at(next);
    }

    /// Reads and handles requests while the pipeline has room, and writes
    /// the answers that came, in order. `Err` closes the connection.
    fn requests(
        &mut self,
        link: &mut Link<'_, Conn>,
        cx: &mut Context<'_>,
    ) -> Result<(), (ErrorCode, String)> {
        loop {
            self.settle(link, cx)?;
            let Phase::Live(s) = &mut link.state.phase else { return Ok(()) };
            let blocked =
                s.draining || s.pending.len() >= MAX_IN_FLIGHT || s.pending.iter().any(|p| p.barrier);
            if blocked || link.state.control_ended {
                return Ok(());
            }
            let frame = match link.state.decoder.next_message::<v1::ClientFrame>() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    let Some(control) = link.state.control else { return Ok(()) };
                    if !link.state.control_unread {
                        return Ok(());
                    }
                    match read_chunk(link.quic, control) {
                        Read::Data(bytes) => {
                            link.state.decoder.extend(&bytes);
                            continue;
                        }
                        Read::Nothing => {
                            link.state.control_unread = false;
                            return Ok(());
                        }
                        Read::Ended => {
                            link.state.decoder.finish().map_err(|e| (e.code(), e.to_string()))?;
                            debug!(conn = link.state.id, "control stream ended");
                            link.state.control_ended = true;
                            return Ok(());
                        }
                    }
                }
                Err(e) => return Err((e.code(), e.to_string())),
            };
            self.handle(link, frame)?;
        }
    }

    /// Polls what the session waits on and applies what is done, oldest first.
    fn settle(&mut self, link: &mut Link<'_, Conn>, cx: &mut Context<'_>) -> Result<(), (ErrorCode, String)> {
        let Phase::Live(s) = &mut link.state.phase else { return Ok(()) };
        for p in s.pending.iter_mut() {
            if p.done.is_none()
                && let Poll::Ready(done) = p.step.as_mut().poll(cx)
            {
                p.done = Some(done);
            }
        }
        loop {
            let Phase::Live(s) = &mut link.state.phase else { return Ok(()) };
            let Some(p) = s.pending.front_mut() else { return Ok(()) };
            let Some(done) = p.done.take() else { return Ok(()) };
            let rid = p.rid;
            s.pending.pop_front();
            self.apply(link, rid, done)?;
        }
    }

    /// Applies one step's outcome.
    fn apply(&mut self, link: &mut Link<'_, Conn>, rid: u32, done: Done) -> Result<(), (ErrorCode, String)> {
        match done {
            Done::Answer(answered) => answer(link, rid, answered),
            Done::Joined(_, Err(e)) => answer(link, rid, Err(e)),
            Done::Joined(room, Ok(joined)) => {
                let id = link.state.id;
                let Phase::Live(s) = &mut link.state.phase else { return Ok(()) };
                let Joined { answer: joined_answer, handle, feed } = joined;
                let Some(stream) = link.quic.streams().open(Dir::Uni) else {
                    leave(vec![(id, handle)], LeaveReason::Disconnect);
                    let why = "cannot open room stream: the client allows no more".to_string();
                    return answer(link, rid, Err((ErrorCode::Internal, why)));
                };
                debug!(conn = id, room = %room, seq = joined_answer.current_seq, resumed = joined_answer.resumed, "joined");
                s.streams.push(RoomStream::new(stream, room.clone(), feed));
                if s.draining {
                    // The node began to drain while the join was on its way:
                    // the room ends the new stream after what it queued.
                    leave(vec![(id, handle)], LeaveReason::Drain);
                } else {
                    s.rooms.insert(room, handle);
                }
                answer(link, rid, Ok(Resp::Joined(joined_answer)))
            }
            Done::Verdict(verdict) => {
                let Phase::Live(s) = &mut link.state.phase else { return Ok(()) };
                let Some(verdict) = quiz::verdict_frame(s, verdict) else { return Ok(()) };
                link.state.out.push_back(verdict);
                Ok(())
            }
        }
    }

    /// Heartbeats and like reports.
    fn datagrams(&mut self, link: &mut Link<'_, Conn>) {
        while let Some(data) = link.quic.datagrams().recv() {
            let Phase::Live(s) = &mut link.state.phase else { continue };
            match ClientDatagram::decode(data) {
                Ok(ClientDatagram::Heartbeat { .. }) => s.last_heartbeat = link.now,
                Ok(ClientDatagram::LikeReport { room, taps }) => {
                    s.last_heartbeat = link.now;
                    like(&self.shared, s, &room, taps);
                }
                Err(e) => {
                    let why = format!("bad datagram: {e}");
                    info!(conn = link.state.id, code = e.code().name(), reason = %why, "closing connection");
                    link.quic.close(link.now, e.code().to_code().into(), Bytes::from(why));
                    self.end(link.state);
                    return;
                }
            }
        }
    }
}

/// Counts a like report's taps in a joined room, up to the user's cap;
/// the rest are flagged. A report for a room not joined is ignored.
fn like(shared: &Shared, s: &Session, room: &str, taps: u32) {
    let Some(handle) = s.rooms.get(room) else {
        shared.metrics.like_report_ignored();
        return;
    };
    let taps = u64::from(taps);
    let counted = shared.likes.take_up_to(&s.identity.user_id, taps, tokio::time::Instant::now());
    handle.like(counted);
    if counted < taps {
        debug!(taps, counted, room, "like rate over the cap flagged");
    }
    shared.metrics.like_report(counted, taps - counted);
}
