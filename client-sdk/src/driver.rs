//! The session driver: one task owns the current connection's control
//! stream, its room streams, the pending requests and the [`RoomTracker`],
//! so everything the app sees is produced in one place and in order. It does
//! the I/O around the tracker: it hands it answers and room frames, then
//! sends the events it queues to the app and the rejoins it asks for to the
//! server.
//!
//! When the connection drops for a reason worth retrying, the driver
//! reconnects with backoff and jitter ([`crate::reconnect`]), to the next
//! address that a draining node's retry-after hint does not hold back, then the
//! tracker rejoins every room at its last sequence number, replays what was
//! missed and says whether the resume was complete. A room stream that lags
//! is resumed the same way on the same connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::{ErrorCode, v1};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::quiz::QuizDesk;
use crate::reconnect::{Servers, backoff_delay, is_fatal, random_u64, retry_after};
use crate::requests::{Command, Pending, Reply, Requests};
use crate::room_stream::{ROOM_READ, RoomRead, RoomReader, poll_readers};
use crate::room_track::{Output, RoomMsg, RoomTracker};
use crate::transport::{Link, connect_once, proto_code};
use crate::{Backoff, ClientConfig, Error, Event};
use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

/// What [`crate::Client`] handles and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) welcome: Mutex<Arc<v1::Welcome>>,
    /// The current connection.
    pub(crate) conn: Mutex<quinn::Connection>,
    /// Token used for the next (re)connection.
    pub(crate) token: Mutex<String>,
    pub(crate) closing: AtomicBool,
    pub(crate) close: Notify,
    /// Set once the session is over and its connection closed.
    pub(crate) ended: watch::Sender<bool>,
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

/// How long a closing session waits for its close to reach the server.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Opens the first connection and starts the driver task.
#[allow(clippy::type_complexity)]
pub(crate) async fn start(
    config: ClientConfig,
    quiz: Arc<QuizDesk>,
) -> Result<(Arc<Shared>, mpsc::Sender<Command>, mpsc::Sender<Event>, mpsc::Receiver<Event>), Error> {
    let endpoint = crate::transport::endpoint(&config)?;
    let (events_tx, events_rx) = mpsc::channel(config.event_buffer.max(16));
    // Built once, so its session cache carries resumption tickets from one
    // connection to the next: a reconnection resumes TLS instead of a full
    // handshake.
    let tls = crate::tls::client_config(&config)?;
    let servers = Servers::new(config.server, &config.alternates);
    let (link, welcome) =
        connect_once(&config, &tls, &endpoint, servers.current(), config.token.clone(), &events_tx, &quiz)
            .await?;
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
        servers,
        tls,
        endpoint,
        shared: shared.clone(),
        link,
        requests: Requests::new(),
        rooms: RoomTracker::default(),
        events: events_tx.clone(),
        quiz,
        readers: Vec::new(),
        scratch: vec![0; ROOM_READ],
        close_error: None,
        ended: None,
    };
    tokio::spawn(driver.run(commands_rx));
    Ok((shared, commands_tx, events_tx, events_rx))
}

/// Why a connection ended.
struct End {
    code: Option<ErrorCode>,
    reason: String,
    /// The app closed the client: do not reconnect.
    by_client: bool,
    /// A draining node's hint: do not connect to it again sooner.
    retry_after: Option<Duration>,
}

struct Driver {
    config: ClientConfig,
    /// The addresses to connect to, and the one in use.
    servers: Servers,
    /// QUIC and TLS settings for every connection of this session.
    tls: quinn::ClientConfig,
    // Keeps the UDP socket alive as long as the session is driven.
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    link: Link,
    requests: Requests,
    rooms: RoomTracker,
    events: mpsc::Sender<Event>,
    /// Where quiz questions go to be aligned with the player's video.
    quiz: Arc<QuizDesk>,
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
            self.requests.fail_all(end.code, &end.reason);
            self.rooms.disconnected();
            let retry = self.config.reconnect.as_ref().filter(|_| !end.by_client && !is_fatal(end.code));
            let Some(backoff) = retry.cloned() else {
                self.ended = Some((end.code, end.reason));
                return;
            };
            if !self.reconnect(&backoff, end, &mut commands).await {
                return;
            }
            self.rooms.reconnected();
            self.flush().await;
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
                    let reason = "closed by the client".into();
                    return End { code: None, reason, by_client: true, retry_after: None };
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
                        self.readers.push(RoomReader::new(recv));
                    }
                    Err(_) => accepting = false,
                },
                read = std::future::poll_fn(|cx| poll_readers(&mut self.readers, &mut self.scratch, next_reader, cx)),
                    if !self.readers.is_empty() => match read {
                    RoomRead::Data(i) => {
                        next_reader = i + 1;
                        let decoder = &mut self.readers[i].decoder;
                        match decoder.decode() {
                            Ok(msgs) => {
                                if let Some(room) = decoder.room()
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
                        let reason = "client dropped".into();
                        return End { code: None, reason, by_client: true, retry_after: None };
                    }
                },
                reason = &mut closed => break reason,
            }
        };
        let retry_after = match &reason {
            quinn::ConnectionError::ApplicationClosed(c)
                if ErrorCode::from_code(c.error_code.into_inner()) == Some(ErrorCode::ServerDraining) =>
            {
                retry_after(&c.reason)
            }
            _ => None,
        };
        let (code, reason) = match (self.close_error.take(), Error::from_connection(&reason)) {
            (Some((code, why)), _) => (code, why),
            (None, Error::Closed { code, reason }) => (code, reason),
            (None, other) => (None, other.to_string()),
        };
        End { code, reason, by_client: self.shared.closing.load(Ordering::Relaxed), retry_after }
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
        if let Some(after) = end.retry_after {
            self.servers.hold_current(Instant::now(), after);
        }
        let shared = self.shared.clone();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if backoff.max_attempts.is_some_and(|max| attempt > max) {
                self.ended = Some((code, reason));
                return false;
            }
            let backoff = backoff_delay(backoff, attempt, random_u64());
            if let Some(resolver) = &self.config.resolver {
                self.servers.refresh(&resolver.resolve());
            }
            let (server, delay) = self.servers.next(Instant::now(), backoff, attempt == 1);
            let reconnecting = Event::Reconnecting { attempt, delay, code, reason: reason.clone(), server };
            let _ = self.events.send(reconnecting).await;
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
            match connect_once(
                &self.config,
                &self.tls,
                &self.endpoint,
                server,
                token,
                &self.events,
                &self.quiz,
            )
            .await
            {
                Ok((link, welcome)) => {
                    debug!(attempt, %server, session = %welcome.session_id, "reconnected");
                    let session_id = welcome.session_id.clone();
                    *self.shared.welcome.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(welcome);
                    *self.shared.conn.lock().unwrap_or_else(PoisonError::into_inner) = link.conn.clone();
                    self.link = link;
                    let _ = self.events.send(Event::Reconnected { session_id }).await;
                    return true;
                }
                Err(e) => {
                    debug!(attempt, %server, error = %e, "reconnection failed");
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

    /// Does what the room tracker queued: events to the app, in order, and
    /// rejoins to the server.
    async fn flush(&mut self) {
        while let Some(output) = self.rooms.poll_output() {
            match output {
                Output::Event(event) => {
                    if let Event::Message(m) = &event {
                        self.quiz.offer_event(m);
                    }
                    let _ = self.events.send(event).await;
                }
                Output::Rejoin(join) => {
                    let room = join.room.clone();
                    let id = self.requests.take_id();
                    let frame =
                        encode_frame(&v1::ClientFrame { request_id: id, body: Some(Req::Join(join)) });
                    // If the write fails the connection is going: the next
                    // reconnection resumes the room again.
                    if self.link.send.write_all(&frame).await.is_ok() {
                        self.requests.sent(id, Pending::Resume(room));
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, body: Req, reply: Reply) {
        let id = self.requests.take_id();
        let pending = match &body {
            Req::Join(j) => {
                self.rooms.join_requested(&j.room, j.filter);
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
                    self.rooms.join_failed(&room);
                    let _ = reply.send(Err(err));
                }
                Pending::Leave(_, reply) | Pending::Other(reply) => {
                    let _ = reply.send(Err(err));
                }
                Pending::Resume(_) => {}
            }
            return;
        }
        self.requests.sent(id, pending);
    }

    async fn on_response(&mut self, frame: v1::ServerFrame) {
        let Some(body) = frame.body else { return };
        if frame.request_id == 0 {
            match body {
                Resp::Error(e) => self.close_error = Some((proto_code(e.code), e.message)),
                Resp::QuizVerdict(v) => {
                    let _ = self.events.send(Event::QuizVerdict(v)).await;
                }
                _ => {}
            }
            return;
        }
        let Some(pending) = self.requests.answered(frame.request_id) else {
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
                self.rooms.joined(&room, &j);
                self.offer_joined(&j);
                let _ = reply.send(Ok(Resp::Joined(j)));
            }
            (Pending::Join(room, reply), result) => {
                self.rooms.join_failed(&room);
                let _ = reply.send(result);
            }
            (Pending::Resume(room), Ok(Resp::Joined(j))) => {
                self.offer_joined(&j);
                self.rooms.resumed(&room, j);
            }
            (Pending::Resume(room), result) => {
                let error = match result {
                    Err(e) => e,
                    Ok(other) => Error::Protocol(format!("unexpected answer to join: {other:?}")),
                };
                self.rooms.resume_failed(&room, error);
            }
            (Pending::Leave(room, reply), result) => {
                if result.is_ok() {
                    self.rooms.left(&room);
                }
                let _ = reply.send(result);
            }
            (Pending::Other(reply), result) => {
                let _ = reply.send(result);
            }
        }
        self.flush().await;
    }

    /// The quiz question a join found open, and any in its history.
    fn offer_joined(&self, j: &v1::Joined) {
        for e in j.open_question.iter().chain(&j.history) {
            self.quiz.offer_event(e);
        }
    }

    async fn on_room_msgs(&mut self, room: &str, msgs: Vec<RoomMsg>) {
        for msg in msgs {
            self.rooms.room_msg(room, msg);
        }
        self.flush().await;
    }
}
