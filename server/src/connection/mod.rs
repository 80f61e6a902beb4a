//! One task per QUIC connection: the hello handshake, the control stream's
//! requests, heartbeat datagrams and presence, all in one loop; and a writer
//! task per joined room.
//!
//! Anything malformed from the network ends this connection only, with the
//! matching close code; nothing here unwraps what a peer sent.
//!
//! `requests` holds the handlers of each request; `writer` the room
//! writer.

mod quiz;
mod requests;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use roomcast_protocol::codec::{FrameDecoder, FrameError, encode_frame};
use roomcast_protocol::datagram::ClientDatagram;
use roomcast_protocol::{ErrorCode, MAX_MESSAGE_ID_BYTES, PROTOCOL_VERSION, RoomId, unix_ms, v1};
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Shared;
use crate::auth::Identity;
use crate::gate::Permit;
use crate::gifts::{Charge, DebitOutcome, Gifts, MAX_GIFT_COUNT, Receipt};
use crate::moderation::{SanctionKind, Verdict};
use crate::room::{
    ChatRequest, ConnId, Feed, Filter, GiftRequest, HistoryRange, JoinRequest, Joined, Reply, Resume,
    RoomHandle,
};
use crate::webhooks::{FlagAction, HookEvent, LeaveReason};

use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

/// The most control-stream bytes taken from QUIC in one read.
const CONTROL_CHUNK: usize = 64 * 1024;

/// Requests handed to a room whose answers are still to come. Chats,
/// recalls and gifts are pipelined: the session reads the next request while the room
/// works, so one sender's rate is not capped at one round trip through a
/// busy scheduler. At this many the session stops reading the control stream
/// until the oldest answer arrives.
const MAX_IN_FLIGHT: usize = 64;

type Answered = Result<Resp, (ErrorCode, String)>;
type Answer = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// How a request is answered: at once, or when its room replies.
enum Outcome {
    /// Boxed: an answer's body is large, a pending one small.
    Now(Box<Answered>),
    Later(Answer),
}

/// Waits for the oldest pending answer; rooms answer their commands in
/// order, so the front is normally the first to be ready.
async fn oldest(pending: &mut VecDeque<(u32, Answer)>) -> Answered {
    match pending.front_mut() {
        Some((_, answer)) => answer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The room's reply to a request, as an answer to the client.
fn room_answer<T: Send + 'static>(reply: Reply<T>, refused: &'static str, wrap: fn(T) -> Resp) -> Answer {
    Box::pin(async move { reply.await.map(wrap).map_err(|code| (code, refused.to_string())) })
}

/// Serves one incoming connection until it ends.
///
/// The connection's task lives as long as the connection, and its size is
/// that of its largest state. Accepting (the client's first packets, the
/// TLS handshake) and saying hello need several kilobytes once, so they run
/// in a box that is freed when the session starts, and the task keeps only
/// the session's own state.
pub(crate) async fn serve(incoming: Box<quinn::Incoming>, shared: Arc<Shared>, permit: Permit) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let span =
        info_span!("conn", conn = id, user = tracing::field::Empty, remote = %incoming.remote_address());
    async move {
        // The gate's place is held until the connection ends.
        let _permit = permit;
        let metrics = shared.metrics.clone();
        let Some(session) = Box::pin(accept(id, incoming, shared)).await else {
            return;
        };
        metrics.connections.inc();
        session.run().await;
        metrics.connections.dec();
    }
    .instrument(span)
    .await
}

/// Completes the QUIC handshake and the session's hello.
async fn accept(id: ConnId, incoming: Box<quinn::Incoming>, shared: Arc<Shared>) -> Option<Session> {
    let conn = match (*incoming).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return None;
        }
    };
    let metrics = shared.metrics.clone();
    metrics.handshakes.inc();
    match Session::handshake(id, conn, shared).await {
        Ok(session) => Some(session),
        Err(code) => {
            metrics.sessions_refused.inc();
            if let Some(code) = code {
                metrics.session_refused(code);
            }
            None
        }
    }
}

struct Session {
    id: ConnId,
    conn: quinn::Connection,
    send: quinn::SendStream,
    /// The control stream's read half, with the bytes read but not yet
    /// decoded. Read only while fewer than `MAX_IN_FLIGHT` answers are
    /// pending, so QUIC flow control pushes back on a client that floods it.
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    identity: Identity,
    shared: Arc<Shared>,
    rooms: HashMap<RoomId, RoomHandle>,
    /// The last heartbeat (or request).
    last_heartbeat: Instant,
    present: bool,
    /// Answers still to come from rooms, oldest first (at most `MAX_IN_FLIGHT`).
    pending: VecDeque<(u32, Answer)>,
    /// The room writers, so a draining session can wait for them to finish.
    writers: Vec<tokio::task::JoinHandle<()>>,
    /// The quiz this session's user plays, whose reveals it waits on.
    quiz: Option<quiz::QuizWatch>,
    /// The node's drain state, watched by every turn of the session loop.
    drain: tokio::sync::watch::Receiver<crate::DrainState>,
}

/// Resolves once the node has started to drain (at once if it has).
async fn drain_started(drain: &mut tokio::sync::watch::Receiver<crate::DrainState>) {
    let _ = drain.wait_for(|s| *s != crate::DrainState::Serving).await;
}

/// Closes the connection with `code`, after trying to say why on the control
/// stream.
///
/// Boxed, like the session's other rare steps (presence checks, answers,
/// leaving): a session's task is as large as its largest step, for the
/// whole life of the connection.
fn close<'a>(
    conn: &'a quinn::Connection,
    send: Option<&'a mut quinn::SendStream>,
    code: ErrorCode,
    why: &'a str,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        info!(code = code.name(), reason = why, "closing connection");
        if let Some(send) = send {
            let frame = error_frame(0, code, why);
            let _ = send.write_all(&frame).await;
            deliver(send).await;
        }
        conn.close(code.to_code().into(), why.as_bytes());
    })
}

/// How long a closing session waits for the client to acknowledge what was
/// written to it.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Finishes the control stream and waits (at most `CLOSE_LINGER`) until the
/// client has acknowledged everything on it: closing a QUIC connection
/// discards whatever the peer has not acknowledged, answers included.
async fn deliver(send: &mut quinn::SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
}

/// Waits for every task in `tasks` to end.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

fn error_frame(request_id: u32, code: ErrorCode, why: &str) -> Bytes {
    encode_frame(&v1::ServerFrame {
        request_id,
        body: Some(Resp::Error(v1::Error { code: code.to_proto() as i32, message: why.to_string() })),
    })
}

impl Session {
    /// Waits for `Hello`, checks version and token, answers `Welcome`.
    async fn handshake(
        id: ConnId,
        conn: quinn::Connection,
        shared: Arc<Shared>,
    ) -> Result<Self, Option<ErrorCode>> {
        let limits = &shared.config.limits;
        let deadline = Instant::now() + std::time::Duration::from_millis(limits.hello_timeout_ms);
        let (mut send, mut recv) = match timeout_at(deadline, conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => {
                debug!(error = %e, "connection ended before the control stream");
                return Err(None);
            }
            Err(_) => {
                close(&conn, None, ErrorCode::HelloTimeout, "no control stream in time").await;
                return Err(Some(ErrorCode::HelloTimeout));
            }
        };
        let mut decoder = FrameDecoder::new(limits.max_frame_bytes);
        let first = timeout_at(deadline, async {
            loop {
                if let Some(frame) = decoder.next_message::<v1::ClientFrame>()? {
                    return Ok::<_, FrameError>(Some(frame));
                }
                match recv.read_chunk(CONTROL_CHUNK, true).await {
                    Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
                    Ok(None) | Err(_) => return Ok(None),
                }
            }
        });
        let hello = match first.await {
            Err(_) => Err((ErrorCode::HelloTimeout, "no hello in time".to_string())),
            Ok(Ok(None)) => Err((ErrorCode::ProtocolViolation, "control stream ended before hello".into())),
            Ok(Err(e)) => Err((e.code(), e.to_string())),
            Ok(Ok(Some(v1::ClientFrame { body: Some(Req::Hello(h)), request_id }))) => Ok((request_id, h)),
            Ok(Ok(Some(_))) => Err((ErrorCode::ProtocolViolation, "first frame must be hello".into())),
        };
        let (request_id, hello) = match hello {
            Ok(h) => h,
            Err((code, why)) => {
                close(&conn, Some(&mut send), code, &why).await;
                return Err(Some(code));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let why = format!(
                "protocol version {} not supported (server speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            );
            close(&conn, Some(&mut send), ErrorCode::UnsupportedVersion, &why).await;
            return Err(Some(ErrorCode::UnsupportedVersion));
        }
        let identity = match shared.verifier.verify(&hello.token) {
            Ok(i) => i,
            Err(code) => {
                close(&conn, Some(&mut send), code, "token refused").await;
                return Err(Some(code));
            }
        };
        tracing::Span::current().record("user", &*identity.user_id);
        info!(role = identity.role.as_str(), client = %hello.client_name, version = %hello.client_version, "session started");

        let presence = &shared.config.presence;
        let welcome = v1::Welcome {
            session_id: format!("{:x}-{id}", shared.node_epoch),
            server_time_ms: unix_ms(SystemTime::now()),
            heartbeat_interval_ms: presence.heartbeat_interval_ms.min(u64::from(u32::MAX)) as u32,
            limits: Some(v1::Limits {
                max_frame_bytes: limits.max_frame_bytes,
                max_message_bytes: limits.max_message_bytes,
                max_rooms: limits.max_rooms_per_conn,
                max_room_id_bytes: roomcast_protocol::MAX_ROOM_ID_BYTES as u32,
            }),
            user: Some(identity.to_proto()),
            protocol_version: PROTOCOL_VERSION,
        };
        let frame = encode_frame(&v1::ServerFrame { request_id, body: Some(Resp::Welcome(welcome)) });
        if send.write_all(&frame).await.is_err() {
            return Err(None);
        }
        let drain = shared.drain.watch();
        Ok(Self {
            id,
            conn,
            send,
            recv,
            decoder,
            identity,
            shared,
            rooms: HashMap::new(),
            last_heartbeat: Instant::now(),
            present: true,
            pending: VecDeque::new(),
            writers: Vec::new(),
            quiz: None,
            drain,
        })
    }

    async fn run(mut self) {
        let mut presence_check = tokio::time::interval(self.shared.config.presence.heartbeat_interval());
        presence_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let conn = self.conn.clone();
        let mut control_open = true;
        let mut draining = false;
        loop {
            // Requests already read are handled before more is read, as long
            // as the pipeline has room.
            if self.pending.len() < MAX_IN_FLIGHT {
                match self.decoder.next_message::<v1::ClientFrame>() {
                    Ok(Some(frame)) => {
                        // Boxed: a request's state (a join's, say) lives only
                        // while it is handled, not in every idle session.
                        if let Err((code, why)) = Box::pin(self.handle(frame)).await {
                            close(&self.conn, Some(&mut self.send), code, &why).await;
                            break;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        close(&self.conn, Some(&mut self.send), e.code(), &e.to_string()).await;
                        break;
                    }
                }
            }
            let reading = control_open && self.pending.len() < MAX_IN_FLIGHT;
            tokio::select! {
                answered = oldest(&mut self.pending), if !self.pending.is_empty() => {
                    let Some((rid, _)) = self.pending.pop_front() else { continue };
                    if let Err((code, why)) = Box::pin(self.answer(rid, answered)).await {
                        close(&self.conn, Some(&mut self.send), code, &why).await;
                        break;
                    }
                }
                chunk = self.recv.read_chunk(CONTROL_CHUNK, true), if reading => match chunk {
                    Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                    Ok(None) => {
                        if let Err(e) = self.decoder.finish() {
                            close(&self.conn, Some(&mut self.send), e.code(), &e.to_string()).await;
                            break;
                        }
                        debug!("control stream ended");
                        // Answers still pending are written before the
                        // connection closes, below.
                        control_open = false;
                    }
                    Err(e) => {
                        debug!(error = %e, "control stream failed");
                        conn.close(0u32.into(), b"bye");
                        break;
                    }
                },
                datagram = conn.read_datagram() => match datagram.map(ClientDatagram::decode) {
                    Ok(Ok(ClientDatagram::Heartbeat { .. })) => self.touch(),
                    Ok(Ok(ClientDatagram::LikeReport { room, taps })) => self.like(&room, taps),
                    Ok(Err(e)) => {
                        close(&conn, None, e.code(), &format!("bad datagram: {e}")).await;
                        break;
                    }
                    Err(reason) => {
                        debug!(%reason, "connection closed");
                        break;
                    }
                },
                _ = presence_check.tick() => Box::pin(self.check_presence()).await,
                reveal = quiz::next_reveal(&mut self.quiz) => {
                    if let Err((code, why)) = Box::pin(self.send_verdict(reveal)).await {
                        close(&self.conn, Some(&mut self.send), code, &why).await;
                        break;
                    }
                }
                reason = conn.closed() => {
                    debug!(%reason, "connection closed");
                    break;
                }
                () = drain_started(&mut self.drain), if !draining => {
                    // The node drains: no new requests; the answers pending
                    // are written, every room stream gets what its room
                    // queued and ends, then the connection closes below.
                    draining = true;
                    control_open = false;
                    Box::pin(self.leave_all()).await;
                }
            }
            if !control_open && self.pending.is_empty() {
                if draining {
                    Box::pin(self.close_draining()).await;
                } else {
                    Box::pin(deliver(&mut self.send)).await;
                    conn.close(0u32.into(), b"bye");
                }
                break;
            }
        }
        Box::pin(self.leave_all()).await;
        info!("session ended");
    }

    /// Closes a draining session once its room streams and its control stream
    /// are acknowledged (each wait bounded), with `SERVER_DRAINING` and the
    /// node's retry-after hint, so the client resumes elsewhere without loss.
    async fn close_draining(&mut self) {
        let writers = std::mem::take(&mut self.writers);
        let _ = tokio::time::timeout(CLOSE_LINGER, futures_join(writers)).await;
        deliver(&mut self.send).await;
        let reason = crate::drain::close_reason(self.shared.config.drain.retry_after());
        info!("closing connection: node draining");
        self.conn.close(ErrorCode::ServerDraining.to_code().into(), reason.as_bytes());
    }

    /// Leaves every room as the session ends, telling rooms why.
    async fn leave_all(&mut self) {
        let reason = if self.shared.drain.is_draining() {
            LeaveReason::Drain
        } else if !self.present {
            LeaveReason::HeartbeatLoss
        } else {
            LeaveReason::Disconnect
        };
        for (_, room) in self.rooms.drain() {
            room.leave(self.id, reason).await;
        }
    }

    /// Leaves presence after the configured number of missed heartbeats,
    /// and returns on the next heartbeat.
    async fn check_presence(&mut self) {
        let silent = self.last_heartbeat.elapsed();
        let present = silent < self.shared.config.presence.grace();
        if present != self.present {
            self.present = present;
            debug!(present, "presence changed");
            for room in self.rooms.values() {
                room.set_present(self.id, present).await;
            }
        }
    }

    /// Counts a like report's taps in a joined room, up to the user's cap;
    /// the rest are flagged. A report for a room not joined is ignored.
    fn like(&mut self, room: &str, taps: u32) {
        self.touch();
        let Some(handle) = self.rooms.get(room) else {
            self.shared.metrics.like_report_ignored();
            return;
        };
        let taps = u64::from(taps);
        let counted = self.shared.likes.take_up_to(&self.identity.user_id, taps, Instant::now());
        handle.like(counted);
        if counted < taps {
            debug!(taps, counted, room, "like rate over the cap flagged");
        }
        self.shared.metrics.like_report(counted, taps - counted);
    }

    fn touch(&mut self) {
        self.last_heartbeat = Instant::now();
    }

    /// Handles one request. `Err` closes the connection.
    async fn handle(&mut self, frame: v1::ClientFrame) -> Result<(), (ErrorCode, String)> {
        let rid = frame.request_id;
        let now = |r: Answered| Outcome::Now(Box::new(r));
        let later = |r: Result<Answer, (ErrorCode, String)>| {
            r.map_or_else(|e| Outcome::Now(Box::new(Err(e))), Outcome::Later)
        };
        let outcome = match frame.body {
            None => return Err((ErrorCode::ProtocolViolation, "empty frame".into())),
            Some(Req::Hello(_)) => return Err((ErrorCode::ProtocolViolation, "second hello".into())),
            Some(Req::Join(j)) => now(self.join(j).await.map(Resp::Joined)),
            Some(Req::Leave(l)) => {
                now(self.leave(&l.room).await.map(|()| Resp::Left(v1::Left { room: l.room })))
            }
            Some(Req::SendChat(c)) => later(self.chat(c).await),
            Some(Req::Recall(r)) => later(self.recall(r).await),
            Some(Req::FetchHistory(f)) => later(self.fetch_history(f)),
            Some(Req::SendGift(g)) => later(self.gift(g)),
            Some(Req::FetchCatalogue(_)) => now(Ok(Resp::Catalogue(self.shared.gifts.catalogue()))),
            Some(Req::SubmitAnswer(a)) => later(self.answer_quiz(a)),
        };
        match outcome {
            Outcome::Now(result) => self.answer(rid, *result).await,
            Outcome::Later(answer) => {
                self.pending.push_back((rid, answer));
                Ok(())
            }
        }
    }

    /// Writes the answer to request `rid`. `Err` closes the connection.
    async fn answer(&mut self, rid: u32, result: Answered) -> Result<(), (ErrorCode, String)> {
        let bytes = match result {
            Ok(body) => encode_frame(&v1::ServerFrame { request_id: rid, body: Some(body) }),
            Err((code, why)) => {
                debug!(code = code.name(), reason = %why, "request refused");
                error_frame(rid, code, &why)
            }
        };
        self.send
            .write_all(&bytes)
            .await
            .map_err(|_| (ErrorCode::Internal, "control stream write failed".into()))
    }
}
