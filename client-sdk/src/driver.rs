//! The session driver: one task owns the current connection's control stream,
//! the pending requests and each room's sequence tracking, so everything the
//! app sees is produced in one place and in order.
//!
//! When the connection drops for a reason worth retrying, the driver
//! reconnects with exponential backoff and jitter, then rejoins every room at
//! its last sequence number, replays what was missed and says whether the
//! resume was complete. A room stream that lags is resumed the same way on
//! the same connection.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use roomcast_protocol::codec::{FrameDecoder, encode_frame};
use roomcast_protocol::datagram::{ClientDatagram, ServerDatagram};
use roomcast_protocol::{ErrorCode, MAX_SERVER_FRAME_BYTES, PROTOCOL_VERSION, unix_ms, v1};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::debug;

use crate::{Backoff, ClientConfig, Error, Event};
use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

type Reply = oneshot::Sender<Result<Resp, Error>>;

/// Requests from [`crate::Client`] handles.
pub(crate) struct Command {
    pub body: Req,
    pub reply: Reply,
}

/// What [`crate::Client`] handles and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub welcome: Mutex<Arc<v1::Welcome>>,
    /// The current connection.
    pub conn: Mutex<quinn::Connection>,
    /// Token used for the next (re)connection.
    pub token: Mutex<String>,
    pub closing: AtomicBool,
    pub close: Notify,
    /// Set once the session is over and its connection closed.
    pub ended: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn welcome(&self) -> Arc<v1::Welcome> {
        self.welcome.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn conn(&self) -> quinn::Connection {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The most room-stream bytes the driver takes from QUIC in one read.
const ROOM_READ: usize = 16 * 1024;
/// How long a closing session waits for its close to reach the server.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Frames held for a room between its join request and its `Joined`.
const MAX_BUFFERED: usize = 16 * 1024;
/// Message ids remembered per room for de-duplication.
const RECENT_IDS: usize = 64;

/// A client message id unique to this process: a random prefix and a counter.
pub(crate) fn fresh_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(random_u64);
    format!("{prefix:016x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

fn connect_err(e: impl std::fmt::Display) -> Error {
    Error::Connect(e.to_string())
}

fn read_err(e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::ConnectionLost(c) => Error::from_connection(&c),
        other => Error::Protocol(other.to_string()),
    }
}

fn proto_code(code: i32) -> Option<ErrorCode> {
    u64::try_from(code).ok().and_then(ErrorCode::from_code)
}

/// Close codes after which connecting again cannot help.
fn is_fatal(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::BadToken
                | ErrorCode::TokenExpired
                | ErrorCode::UnsupportedVersion
                | ErrorCode::Forbidden
                | ErrorCode::ProtocolViolation
                | ErrorCode::FrameTooLarge
        )
    )
}

/// A frame from a room stream.
#[derive(Debug)]
enum RoomMsg {
    Event(v1::RoomEvent),
    /// Filtered-out events up to this sequence number were skipped.
    Advance(u64),
    /// The server could not queue `from..=to` for us; the stream has ended.
    Lagged {
        from: u64,
        to: u64,
    },
}

/// One live connection.
struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    control: mpsc::Receiver<Result<v1::ServerFrame, Error>>,
    control_open: bool,
}

/// Connects, says hello and starts the connection's reader and heartbeat tasks.
async fn connect_once(
    config: &ClientConfig,
    client_config: &quinn::ClientConfig,
    endpoint: &quinn::Endpoint,
    token: String,
    events: &mpsc::Sender<Event>,
) -> Result<(Link, v1::Welcome), Error> {
    let handshake = async {
        let connecting = endpoint
            .connect_with(client_config.clone(), config.server, &config.server_name)
            .map_err(connect_err)?;
        let conn = connecting.await.map_err(|e| match e {
            quinn::ConnectionError::ApplicationClosed(_) => Error::from_connection(&e),
            other => connect_err(other),
        })?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| Error::from_connection(&e))?;
        let hello = v1::ClientFrame {
            request_id: 1,
            body: Some(Req::Hello(v1::Hello {
                token,
                protocol_version: PROTOCOL_VERSION,
                client_name: config.client_name.clone(),
                client_version: config.client_version.clone(),
            })),
        };
        if send.write_all(&encode_frame(&hello)).await.is_err() {
            return Err(closed_err(&conn).await);
        }
        let (control_tx, mut control) = mpsc::channel(64);
        tokio::spawn(read_control(recv, control_tx));
        let welcome = match control.recv().await {
            Some(Ok(v1::ServerFrame { body: Some(Resp::Welcome(w)), .. })) => w,
            Some(Ok(v1::ServerFrame { body: Some(Resp::Error(e)), .. })) => {
                return Err(Error::Closed { code: proto_code(e.code), reason: e.message });
            }
            Some(Ok(other)) => return Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
            Some(Err(e)) => return Err(e),
            None => return Err(closed_err(&conn).await),
        };
        Ok((Link { conn, send, control, control_open: true }, welcome))
    };
    let (link, welcome) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Connect("timed out".into()))??;
    tokio::spawn(read_datagrams(link.conn.clone(), events.clone()));
    if config.heartbeats {
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms).max(50));
        tokio::spawn(heartbeat(link.conn.clone(), interval));
    }
    Ok((link, welcome))
}

/// Opens the first connection and starts the driver task.
pub(crate) async fn start(
    config: ClientConfig,
) -> Result<(Arc<Shared>, mpsc::Sender<Command>, mpsc::Receiver<Event>), Error> {
    let endpoint = match &config.endpoint {
        Some(e) => e.clone(),
        None => {
            let bind: SocketAddr =
                if config.server.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }
                    .map_err(connect_err)?;
            quinn::Endpoint::client(bind).map_err(connect_err)?
        }
    };
    let (events_tx, events_rx) = mpsc::channel(config.event_buffer.max(16));
    // Built once, so its session cache carries resumption tickets from one
    // connection to the next: a reconnection resumes TLS instead of a full
    // handshake.
    let tls = crate::tls::client_config(&config)?;
    let (link, welcome) = connect_once(&config, &tls, &endpoint, config.token.clone(), &events_tx).await?;
    let shared = Arc::new(Shared {
        welcome: Mutex::new(Arc::new(welcome)),
        conn: Mutex::new(link.conn.clone()),
        token: Mutex::new(config.token.clone()),
        closing: AtomicBool::new(false),
        close: Notify::new(),
        ended: watch::Sender::new(false),
    });
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let driver = Driver {
        config,
        tls,
        endpoint,
        shared: shared.clone(),
        link,
        next_request: 2,
        pending: HashMap::new(),
        rooms: HashMap::new(),
        events: events_tx,
        readers: Vec::new(),
        scratch: vec![0; ROOM_READ],
        close_error: None,
        ended: None,
    };
    tokio::spawn(driver.run(commands_rx));
    Ok((shared, commands_tx, events_rx))
}

async fn closed_err(conn: &quinn::Connection) -> Error {
    let reason = conn.closed().await;
    Error::from_connection(&reason)
}

async fn read_control(mut recv: quinn::RecvStream, tx: mpsc::Sender<Result<v1::ServerFrame, Error>>) {
    let mut decoder = FrameDecoder::new(MAX_SERVER_FRAME_BYTES);
    loop {
        match recv.read_chunk(256 * 1024, true).await {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                loop {
                    match decoder.next_message::<v1::ServerFrame>() {
                        Ok(Some(f)) => {
                            if tx.send(Ok(f)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(Error::Protocol(e.to_string()))).await;
                            return;
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(read_err(e))).await;
                return;
            }
        }
    }
}

/// A room stream the server opened on the current connection. The driver
/// reads it itself, so a packet of room events costs the app one task wake-up
/// between QUIC and the app, not one per stream reader and one more for the
/// driver.
struct RoomReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// Named by the stream's first frame; shared, as every read hands it on.
    room: Option<Arc<str>>,
}

/// What one read of the room streams gave.
enum RoomRead {
    /// Reader `i` took in bytes.
    Data(usize),
    /// Reader `i`'s stream ended (finished, reset or with the connection).
    End(usize),
}

/// Reads whichever room stream has data, starting at `from` so that one busy
/// stream does not starve the others.
fn poll_readers(
    readers: &mut [RoomReader],
    scratch: &mut [u8],
    from: usize,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<RoomRead> {
    use std::task::Poll;
    let n = readers.len();
    for k in 0..n {
        let i = (from + k) % n;
        let reader = &mut readers[i];
        match reader.recv.poll_read(cx, scratch) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RoomRead::End(i)),
            Poll::Ready(Ok(len)) => {
                reader.decoder.extend(&scratch[..len]);
                return Poll::Ready(RoomRead::Data(i));
            }
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// Decodes what a room stream's reader holds. `Err` is a protocol violation.
fn decode_room(reader: &mut RoomReader) -> Result<Vec<RoomMsg>, String> {
    use v1::room_frame::Body;
    let mut msgs = Vec::new();
    loop {
        let frame = match reader.decoder.next_message::<v1::RoomFrame>() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(msgs),
            Err(e) => return Err(e.to_string()),
        };
        let msg = match (frame.body, &reader.room) {
            (Some(Body::Start(s)), None) => {
                reader.room = Some(s.room.into());
                continue;
            }
            (Some(Body::Event(e)), Some(_)) => RoomMsg::Event(e),
            (Some(Body::Advance(a)), Some(_)) => RoomMsg::Advance(a.seq),
            (Some(Body::Lagged(l)), Some(_)) => RoomMsg::Lagged { from: l.from_seq, to: l.to_seq },
            _ => return Err("bad room stream".into()),
        };
        msgs.push(msg);
    }
}

async fn read_datagrams(conn: quinn::Connection, events: mpsc::Sender<Event>) {
    while let Ok(data) = conn.read_datagram().await {
        match ServerDatagram::decode(data) {
            // Latest value wins: if the app is behind, dropping one is harmless.
            Ok(ServerDatagram::OnlineCount { room, count, .. }) => {
                let _ = events.try_send(Event::OnlineCount { room, count });
            }
            Err(e) => debug!(error = %e, "ignoring malformed datagram"),
        }
    }
}

async fn heartbeat(conn: quinn::Connection, interval: Duration) {
    // The first one is due an interval after connecting: the handshake and
    // the hello were the signs of life until then.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = conn.closed() => return,
        }
        let hb = ClientDatagram::Heartbeat { client_time_ms: unix_ms(SystemTime::now()) };
        match conn.send_datagram(hb.encode()) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
            Err(e) => debug!(error = %e, "heartbeat not sent"),
        }
    }
}

/// The delay before reconnection attempt `attempt` (1-based): exponential,
/// capped, with "equal jitter" (half fixed, half random) so that a crowd
/// dropped at the same moment does not come back at the same moment.
pub(crate) fn backoff_delay(b: &Backoff, attempt: u32, random: u64) -> Duration {
    let exp = b.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(b.max).max(Duration::from_millis(1));
    let half = cap / 2;
    let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % jitter_ns.max(1))
}

/// The message ids most recently delivered in a room, hashed, to drop an
/// event delivered twice (for example once live and once in a resume).
#[derive(Default)]
struct RecentIds {
    ring: Vec<u64>,
    next: usize,
}

impl RecentIds {
    /// Remembers `id`; false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id);
        if self.ring.contains(&h) {
            return false;
        }
        if self.ring.len() < RECENT_IDS {
            self.ring.push(h);
        } else {
            self.ring[self.next] = h;
            self.next = (self.next + 1) % RECENT_IDS;
        }
        true
    }
}

/// A room as the driver tracks it.
struct RoomTrack {
    /// Everything up to here has been delivered (or skipped by the filter).
    last_seq: u64,
    epoch: Option<u64>,
    filter: i32,
    /// Frames that arrived while a join or resume was pending.
    joining: Option<Vec<RoomMsg>>,
    recent: RecentIds,
}

impl RoomTrack {
    fn joining(filter: i32) -> Self {
        Self { last_seq: 0, epoch: None, filter, joining: Some(Vec::new()), recent: RecentIds::default() }
    }
}

enum Pending {
    /// A join the app asked for.
    Join(String, Reply),
    /// A rejoin the driver sent itself, after a lag or a reconnection.
    Resume(String),
    Leave(String, Reply),
    Other(Reply),
}

/// Where an arriving event stands in its room's sequence.
#[derive(Debug, PartialEq, Eq)]
enum SeqCheck {
    /// Deliver it: the next sequenced event, or an ephemeral one (seq 0).
    Next,
    /// Already delivered (from history or an earlier stream): drop it.
    Duplicate,
    /// Deliver it, after reporting that `from..=to` never arrived.
    Gap { from: u64, to: u64 },
}

/// Advances `last_seq` past `seq` and says what that means.
fn check_seq(last_seq: &mut u64, seq: u64) -> SeqCheck {
    if seq == 0 {
        return SeqCheck::Next;
    }
    if seq <= *last_seq {
        return SeqCheck::Duplicate;
    }
    let expected = *last_seq + 1;
    *last_seq = seq;
    if seq == expected { SeqCheck::Next } else { SeqCheck::Gap { from: expected, to: seq - 1 } }
}

/// Why a connection ended.
struct End {
    code: Option<ErrorCode>,
    reason: String,
    /// The app closed the client: do not reconnect.
    by_client: bool,
}

struct Driver {
    config: ClientConfig,
    /// QUIC and TLS settings for every connection of this session.
    tls: quinn::ClientConfig,
    // Keeps the UDP socket alive as long as the session is driven.
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    link: Link,
    next_request: u32,
    pending: HashMap<u32, Pending>,
    rooms: HashMap<String, RoomTrack>,
    events: mpsc::Sender<Event>,
    /// The current connection's room streams.
    readers: Vec<RoomReader>,
    /// Where room-stream reads land before they are decoded.
    scratch: Vec<u8>,
    /// The reason the server gave in an unsolicited `Error` before closing.
    close_error: Option<(Option<ErrorCode>, String)>,
    /// Why the session ended, for the final `Disconnected` event.
    ended: Option<(Option<ErrorCode>, String)>,
}

impl Driver {
    async fn run(mut self, commands: mpsc::Receiver<Command>) {
        self.run_session(commands).await;
        // Let the connection close reach the server before the app, told
        // the session ended, possibly exits. A shared endpoint belongs to the
        // app, which waits for it itself.
        if self.config.endpoint.is_none() {
            let _ = tokio::time::timeout(CLOSE_LINGER, self.endpoint.wait_idle()).await;
        }
        self.shared.ended.send_replace(true);
        if let Some((code, reason)) = self.ended.take() {
            let _ = self.events.send(Event::Disconnected { code, reason }).await;
        }
    }

    async fn run_session(&mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let end = self.drive(&mut commands).await;
            self.readers.clear();
            for (_, p) in self.pending.drain() {
                if let Pending::Join(_, reply) | Pending::Leave(_, reply) | Pending::Other(reply) = p {
                    let _ = reply.send(Err(Error::Closed { code: end.code, reason: end.reason.clone() }));
                }
            }
            // A join the app was still waiting for failed with the connection
            // (the app has the error and decides); rooms joined before are
            // resumed.
            self.rooms.retain(|_, t| t.joining.is_none() || t.epoch.is_some());
            let retry = self.config.reconnect.as_ref().filter(|_| !end.by_client && !is_fatal(end.code));
            let Some(backoff) = retry.cloned() else {
                self.ended = Some((end.code, end.reason));
                return;
            };
            if !self.reconnect(&backoff, end, &mut commands).await {
                return;
            }
            self.resume_rooms().await;
        }
    }

    /// Serves the current connection until it ends.
    async fn drive(&mut self, commands: &mut mpsc::Receiver<Command>) -> End {
        let conn = self.link.conn.clone();
        let shared = self.shared.clone();
        // Made once, not once per event: each of these registers with shared
        // state when it is created or dropped.
        let close = shared.close.notified();
        let closed = conn.closed();
        let accept = conn.accept_uni();
        tokio::pin!(close, closed, accept);
        let mut next_reader = 0;
        // Until the connection stops taking streams (it is closing).
        let mut accepting = true;
        let reason = loop {
            tokio::select! {
                biased;
                _ = &mut close => {
                    conn.close(0u32.into(), b"client closed");
                    return End { code: None, reason: "closed by the client".into(), by_client: true };
                }
                frame = self.link.control.recv(), if self.link.control_open => match frame {
                    Some(Ok(frame)) => self.on_response(frame).await,
                    Some(Err(e)) => {
                        debug!(error = %e, "control stream ended");
                        self.link.control_open = false;
                    }
                    None => self.link.control_open = false,
                },
                stream = &mut accept, if accepting => match stream {
                    Ok(recv) => {
                        accept.set(conn.accept_uni());
                        let decoder = FrameDecoder::new(MAX_SERVER_FRAME_BYTES);
                        self.readers.push(RoomReader { recv, decoder, room: None });
                    }
                    Err(_) => accepting = false,
                },
                read = std::future::poll_fn(|cx| poll_readers(&mut self.readers, &mut self.scratch, next_reader, cx)),
                    if !self.readers.is_empty() => match read {
                    RoomRead::Data(i) => {
                        next_reader = i + 1;
                        match decode_room(&mut self.readers[i]) {
                            Ok(msgs) => {
                                if let Some(room) = self.readers[i].room.clone()
                                    && !msgs.is_empty()
                                {
                                    self.on_room_msgs(&room, msgs).await;
                                }
                            }
                            Err(why) => {
                                conn.close(ErrorCode::ProtocolViolation.to_code().into(), why.as_bytes());
                            }
                        }
                    }
                    RoomRead::End(i) => {
                        self.readers.swap_remove(i);
                    }
                },
                cmd = commands.recv() => match cmd {
                    Some(Command { body, reply }) => self.on_request(body, reply).await,
                    None => {
                        // Every Client handle is gone.
                        conn.close(0u32.into(), b"client dropped");
                        return End { code: None, reason: "client dropped".into(), by_client: true };
                    }
                },
                reason = &mut closed => break reason,
            }
        };
        let (code, reason) = match (self.close_error.take(), Error::from_connection(&reason)) {
            (Some((code, why)), _) => (code, why),
            (None, Error::Closed { code, reason }) => (code, reason),
            (None, other) => (None, other.to_string()),
        };
        End { code, reason, by_client: self.shared.closing.load(Ordering::Relaxed) }
    }

    /// Connects again, with backoff. False when the session is over (the
    /// app closed it, attempts ran out, or the server refused for good); the
    /// app has been told.
    async fn reconnect(
        &mut self,
        backoff: &Backoff,
        end: End,
        commands: &mut mpsc::Receiver<Command>,
    ) -> bool {
        let (mut code, mut reason) = (end.code, end.reason);
        let shared = self.shared.clone();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if backoff.max_attempts.is_some_and(|max| attempt > max) {
                self.ended = Some((code, reason));
                return false;
            }
            let delay = backoff_delay(backoff, attempt, random_u64());
            let _ =
                self.events.send(Event::Reconnecting { attempt, delay, code, reason: reason.clone() }).await;
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = shared.close.notified() => {
                        self.ended = Some((None, "closed by the client".to_string()));
                        return false;
                    }
                    _ = &mut sleep => break,
                    cmd = commands.recv() => match cmd {
                        Some(Command { reply, .. }) => {
                            let _ = reply.send(Err(Error::Closed { code, reason: format!("reconnecting: {reason}") }));
                        }
                        None => return false,
                    },
                }
            }
            let token = self.shared.token();
            match connect_once(&self.config, &self.tls, &self.endpoint, token, &self.events).await {
                Ok((link, welcome)) => {
                    debug!(attempt, session = %welcome.session_id, "reconnected");
                    let session_id = welcome.session_id.clone();
                    *self.shared.welcome.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(welcome);
                    *self.shared.conn.lock().unwrap_or_else(PoisonError::into_inner) = link.conn.clone();
                    self.link = link;
                    let _ = self.events.send(Event::Reconnected { session_id }).await;
                    return true;
                }
                Err(e) => {
                    debug!(attempt, error = %e, "reconnection failed");
                    if is_fatal(e.code()) {
                        self.ended = Some((e.code(), e.to_string()));
                        return false;
                    }
                    code = e.code();
                    reason = e.to_string();
                }
            }
        }
    }

    /// Rejoins every room where it left off.
    async fn resume_rooms(&mut self) {
        let mut names: Vec<String> = self.rooms.keys().cloned().collect();
        names.sort();
        for room in names {
            self.resume(room).await;
        }
    }

    /// Sends a rejoin for `room` at its last sequence number.
    async fn resume(&mut self, room: String) {
        let Some(track) = self.rooms.get_mut(&room) else { return };
        track.joining = Some(Vec::new());
        let join = v1::Join {
            room: room.clone(),
            last_seq: Some(track.last_seq),
            filter: track.filter,
            epoch: track.epoch,
        };
        let id = self.take_request_id();
        let frame = encode_frame(&v1::ClientFrame { request_id: id, body: Some(Req::Join(join)) });
        // If the write fails the connection is going: the next reconnection
        // resumes the room again.
        if self.link.send.write_all(&frame).await.is_ok() {
            self.pending.insert(id, Pending::Resume(room));
        }
    }

    fn take_request_id(&mut self) -> u32 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(2);
        id
    }

    async fn on_request(&mut self, body: Req, reply: Reply) {
        let id = self.take_request_id();
        let pending = match &body {
            Req::Join(j) => {
                self.rooms.insert(j.room.clone(), RoomTrack::joining(j.filter));
                Pending::Join(j.room.clone(), reply)
            }
            Req::Leave(l) => Pending::Leave(l.room.clone(), reply),
            _ => Pending::Other(reply),
        };
        let frame = encode_frame(&v1::ClientFrame { request_id: id, body: Some(body) });
        if self.link.send.write_all(&frame).await.is_err() {
            let err = Error::Closed { code: None, reason: "control stream closed".into() };
            match pending {
                Pending::Join(room, reply) => {
                    self.rooms.remove(&room);
                    let _ = reply.send(Err(err));
                }
                Pending::Leave(_, reply) | Pending::Other(reply) => {
                    let _ = reply.send(Err(err));
                }
                Pending::Resume(_) => {}
            }
            return;
        }
        self.pending.insert(id, pending);
    }

    async fn on_response(&mut self, frame: v1::ServerFrame) {
        let Some(body) = frame.body else { return };
        if frame.request_id == 0 {
            if let Resp::Error(e) = body {
                self.close_error = Some((proto_code(e.code), e.message));
            }
            return;
        }
        let Some(pending) = self.pending.remove(&frame.request_id) else {
            debug!(request_id = frame.request_id, "answer to no pending request");
            return;
        };
        let result = match body {
            Resp::Error(e) => {
                let code = proto_code(e.code).unwrap_or(ErrorCode::Internal);
                Err(Error::Refused { code, message: e.message })
            }
            other => Ok(other),
        };
        match (pending, result) {
            (Pending::Join(room, reply), Ok(Resp::Joined(j))) => {
                let buffered = match self.rooms.get_mut(&room) {
                    Some(track) => {
                        track.last_seq = j.current_seq;
                        track.epoch = Some(j.epoch);
                        for e in &j.history {
                            track.recent.insert(&e.message_id);
                        }
                        track.joining.take().unwrap_or_default()
                    }
                    None => Vec::new(),
                };
                let _ = reply.send(Ok(Resp::Joined(j)));
                self.on_room_msgs(&room, buffered).await;
            }
            (Pending::Join(room, reply), result) => {
                if result.is_err() {
                    self.rooms.remove(&room);
                }
                let _ = reply.send(result);
            }
            (Pending::Resume(room), Ok(Resp::Joined(j))) => self.on_resumed(room, j).await,
            (Pending::Resume(room), result) => {
                self.rooms.remove(&room);
                let error = match result {
                    Err(e) => e,
                    Ok(other) => Error::Protocol(format!("unexpected answer to join: {other:?}")),
                };
                let _ = self.events.send(Event::ResumeFailed { room, error }).await;
            }
            (Pending::Leave(room, reply), result) => {
                if result.is_ok() {
                    self.rooms.remove(&room);
                }
                let _ = reply.send(result);
            }
            (Pending::Other(reply), result) => {
                let _ = reply.send(result);
            }
        }
    }

    /// Replays what a rejoin returned, then what arrived meanwhile.
    async fn on_resumed(&mut self, room: String, j: v1::Joined) {
        let Some(track) = self.rooms.get_mut(&room) else { return };
        let same_room = track.epoch.is_none_or(|e| e == j.epoch) && j.current_seq >= track.last_seq;
        if !same_room {
            // The room was recreated and its numbering restarted.
            track.last_seq = 0;
            track.recent = RecentIds::default();
        }
        track.epoch = Some(j.epoch);
        let from = track.last_seq;
        let buffered = track.joining.take().unwrap_or_default();
        let complete = j.resumed;
        let mut replayed = 0;
        if !complete {
            let first = j.history.iter().map(|e| e.seq).find(|s| *s > from).unwrap_or(j.current_seq + 1);
            if first > from + 1 && same_room {
                let gap = Event::Gap { room: room.clone(), from: from + 1, to: first - 1 };
                let _ = self.events.send(gap).await;
            }
            if let Some(track) = self.rooms.get_mut(&room) {
                track.last_seq = track.last_seq.max(first.saturating_sub(1));
            }
        }
        for e in j.history {
            if self.deliver(&room, e).await {
                replayed += 1;
            }
        }
        if let Some(track) = self.rooms.get_mut(&room) {
            // Filtered-out events at the end of the range.
            track.last_seq = track.last_seq.max(j.current_seq);
        }
        let _ = self.events.send(Event::Resumed { room: room.clone(), complete, replayed }).await;
        self.on_room_msgs(&room, buffered).await;
    }

    async fn on_room_msgs(&mut self, room: &str, msgs: Vec<RoomMsg>) {
        for msg in msgs {
            self.on_room(room, msg).await;
        }
    }

    async fn on_room(&mut self, room: &str, msg: RoomMsg) {
        let Some(track) = self.rooms.get_mut(room) else {
            return; // a room we left
        };
        if let Some(buffer) = &mut track.joining {
            if buffer.len() < MAX_BUFFERED {
                buffer.push(msg);
            }
            return;
        }
        match msg {
            RoomMsg::Event(e) => {
                self.deliver(room, e).await;
            }
            RoomMsg::Advance(seq) => track.last_seq = track.last_seq.max(seq),
            RoomMsg::Lagged { from, to } => {
                // A stale notice from a stream that a resume already covered.
                if to <= track.last_seq {
                    return;
                }
                let from = from.max(track.last_seq + 1);
                let _ = self.events.send(Event::Lagged { room: room.to_string(), from, to }).await;
                self.resume(room.to_string()).await;
            }
        }
    }

    /// Delivers a room event in order, dropping duplicates and reporting
    /// gaps. True if it was delivered.
    async fn deliver(&mut self, room: &str, event: v1::RoomEvent) -> bool {
        let Some(track) = self.rooms.get_mut(room) else { return false };
        let check = check_seq(&mut track.last_seq, event.seq);
        if check == SeqCheck::Duplicate || !track.recent.insert(&event.message_id) {
            return false;
        }
        if let SeqCheck::Gap { from, to } = check {
            let _ = self.events.send(Event::Gap { room: room.to_string(), from, to }).await;
        }
        let _ = self.events.send(Event::Message(event)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_check_delivers_in_order_drops_duplicates_and_reports_gaps() {
        let mut last = 5;
        assert_eq!(check_seq(&mut last, 6), SeqCheck::Next);
        assert_eq!(check_seq(&mut last, 6), SeqCheck::Duplicate);
        assert_eq!(check_seq(&mut last, 3), SeqCheck::Duplicate);
        assert_eq!(check_seq(&mut last, 0), SeqCheck::Next, "ephemeral events never count");
        assert_eq!(last, 6);
        assert_eq!(check_seq(&mut last, 9), SeqCheck::Gap { from: 7, to: 8 });
        assert_eq!(last, 9);
        assert_eq!(check_seq(&mut last, 10), SeqCheck::Next);
    }

    #[test]
    fn fresh_ids_are_unique() {
        let a = fresh_id();
        let b = fresh_id();
        assert_ne!(a, b);
        assert!(a.len() <= 64, "fits the server's client_msg_id limit");
    }

    #[test]
    fn recent_ids_drop_repeats_within_the_window() {
        let mut r = RecentIds::default();
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert(""), "events without an id are never duplicates");
        assert!(r.insert(""));
        for i in 0..RECENT_IDS {
            assert!(r.insert(&format!("x{i}")));
        }
        assert!(r.insert("a"), "forgotten once the window moved on");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: None };
        for attempt in 1..40 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1).min(16))).min(b.max);
            for random in [0, 1, 12_345_678, u64::MAX] {
                let d = backoff_delay(&b, attempt, random);
                assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?} outside {:?}..={cap:?}", cap / 2);
            }
        }
        assert_ne!(backoff_delay(&b, 3, 1), backoff_delay(&b, 3, 987_654_321), "jittered");
    }
}
