//! The connection driver: one task owns the control stream, the pending
//! requests and each room's sequence tracking, so everything the app sees is
//! produced in one place and in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use roomcast_protocol::codec::{FrameDecoder, encode_frame};
use roomcast_protocol::datagram::{ClientDatagram, ServerDatagram};
use roomcast_protocol::{ErrorCode, MAX_SERVER_FRAME_BYTES, PROTOCOL_VERSION, unix_ms, v1};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::{ClientConfig, Error, Event};
use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

type Reply = oneshot::Sender<Result<Resp, Error>>;

/// Requests from [`crate::Client`] handles.
pub(crate) enum Command {
    Request { body: Req, reply: Reply },
}

/// Events decoded by room stream readers, waiting for the driver.
const ROOM_QUEUE: usize = 1024;
/// Events held for a room between its join request and its `Joined`.
const MAX_BUFFERED: usize = 16 * 1024;

/// A client message id unique to this process: a random prefix and a counter.
pub(crate) fn fresh_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_le_bytes(b)
    });
    format!("{prefix:016x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
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

pub(crate) async fn start(
    config: ClientConfig,
) -> Result<(v1::Welcome, quinn::Connection, mpsc::Sender<Command>, mpsc::Receiver<Event>), Error> {
    let endpoint = match &config.endpoint {
        Some(e) => e.clone(),
        None => {
            let bind: SocketAddr =
                if config.server.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }
                    .map_err(connect_err)?;
            quinn::Endpoint::client(bind).map_err(connect_err)?
        }
    };
    let client_config = crate::tls::client_config(&config.trust)?;
    let handshake = async {
        let connecting =
            endpoint.connect_with(client_config, config.server, &config.server_name).map_err(connect_err)?;
        let conn = connecting.await.map_err(|e| match e {
            quinn::ConnectionError::ApplicationClosed(_) => Error::from_connection(&e),
            other => connect_err(other),
        })?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| Error::from_connection(&e))?;
        let hello = v1::ClientFrame {
            request_id: 1,
            body: Some(Req::Hello(v1::Hello {
                token: config.token.clone(),
                protocol_version: PROTOCOL_VERSION,
                client_name: config.client_name.clone(),
                client_version: config.client_version.clone(),
            })),
        };
        if send.write_all(&encode_frame(&hello)).await.is_err() {
            return Err(closed_err(&conn).await);
        }
        let (control_tx, mut control_rx) = mpsc::channel(64);
        tokio::spawn(read_control(recv, control_tx));
        let welcome = match control_rx.recv().await {
            Some(Ok(v1::ServerFrame { body: Some(Resp::Welcome(w)), .. })) => w,
            Some(Ok(v1::ServerFrame { body: Some(Resp::Error(e)), .. })) => {
                return Err(Error::Closed { code: proto_code(e.code), reason: e.message });
            }
            Some(Ok(other)) => return Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
            Some(Err(e)) => return Err(e),
            None => return Err(closed_err(&conn).await),
        };
        Ok((conn, send, control_rx, welcome))
    };
    let (conn, send, control_rx, welcome) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Connect("timed out".into()))??;

    let (events_tx, events_rx) = mpsc::channel(config.event_buffer.max(16));
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (room_tx, room_rx) = mpsc::channel(ROOM_QUEUE);
    tokio::spawn(accept_rooms(conn.clone(), room_tx));
    tokio::spawn(read_datagrams(conn.clone(), events_tx.clone()));
    if config.heartbeats {
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms).max(50));
        tokio::spawn(heartbeat(conn.clone(), interval));
    }
    let driver = Driver {
        conn: conn.clone(),
        _endpoint: endpoint,
        send,
        next_request: 2,
        pending: HashMap::new(),
        rooms: HashMap::new(),
        events: events_tx,
        close_error: None,
    };
    tokio::spawn(driver.run(commands_rx, control_rx, room_rx));
    Ok((welcome, conn, commands_tx, events_rx))
}

fn proto_code(code: i32) -> Option<ErrorCode> {
    u64::try_from(code).ok().and_then(ErrorCode::from_code)
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

/// Accepts the server's room streams and reads each in its own task.
async fn accept_rooms(conn: quinn::Connection, tx: mpsc::Sender<(String, v1::RoomEvent)>) {
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(read_room(conn.clone(), recv, tx.clone()));
    }
}

async fn read_room(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<(String, v1::RoomEvent)>,
) {
    let mut decoder = FrameDecoder::new(MAX_SERVER_FRAME_BYTES);
    let mut room: Option<String> = None;
    loop {
        let chunk = match recv.read_chunk(256 * 1024, true).await {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => return,
        };
        decoder.extend(&chunk.bytes);
        loop {
            let frame = match decoder.next_message::<v1::RoomFrame>() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    conn.close(ErrorCode::ProtocolViolation.to_code().into(), e.to_string().as_bytes());
                    return;
                }
            };
            match (frame.body, &room) {
                (Some(v1::room_frame::Body::Start(s)), None) => room = Some(s.room),
                (Some(v1::room_frame::Body::Event(e)), Some(r)) => {
                    if tx.send((r.clone(), e)).await.is_err() {
                        return;
                    }
                }
                _ => {
                    conn.close(ErrorCode::ProtocolViolation.to_code().into(), b"bad room stream");
                    return;
                }
            }
        }
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
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let hb = ClientDatagram::Heartbeat { client_time_ms: unix_ms(SystemTime::now()) };
        match conn.send_datagram(hb.encode()) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
            Err(e) => debug!(error = %e, "heartbeat not sent"),
        }
    }
}

/// Where a room's sequence tracking stands.
enum Track {
    /// Join sent, `Joined` not yet received: live events wait here.
    Joining(Vec<v1::RoomEvent>),
    /// Everything up to `last_seq` has been delivered.
    Live { last_seq: u64 },
}

enum Pending {
    Join(String),
    Leave(String),
    Other,
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

struct Driver {
    conn: quinn::Connection,
    // Keeps the UDP socket alive as long as the connection is driven.
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    next_request: u32,
    pending: HashMap<u32, (Pending, Reply)>,
    rooms: HashMap<String, Track>,
    events: mpsc::Sender<Event>,
    /// The reason the server gave in an unsolicited `Error` before closing.
    close_error: Option<(Option<ErrorCode>, String)>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut control: mpsc::Receiver<Result<v1::ServerFrame, Error>>,
        mut rooms: mpsc::Receiver<(String, v1::RoomEvent)>,
    ) {
        let conn = self.conn.clone();
        let mut control_open = true;
        let reason = loop {
            tokio::select! {
                biased;
                frame = control.recv(), if control_open => match frame {
                    Some(Ok(frame)) => self.on_response(frame).await,
                    Some(Err(e)) => {
                        debug!(error = %e, "control stream ended");
                        control_open = false;
                    }
                    None => control_open = false,
                },
                Some((room, event)) = rooms.recv() => self.on_event(room, event).await,
                cmd = commands.recv() => match cmd {
                    Some(Command::Request { body, reply }) => self.on_request(body, reply).await,
                    None => {
                        // Every Client handle is gone.
                        conn.close(0u32.into(), b"client dropped");
                    }
                },
                reason = conn.closed() => break reason,
            }
        };
        while let Ok((room, event)) = rooms.try_recv() {
            self.on_event(room, event).await;
        }
        let (code, reason) = match (self.close_error.take(), Error::from_connection(&reason)) {
            (Some((code, why)), _) => (code, why),
            (None, Error::Closed { code, reason }) => (code, reason),
            (None, other) => (None, other.to_string()),
        };
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(Error::Closed { code, reason: reason.clone() }));
        }
        let _ = self.events.send(Event::Disconnected { code, reason }).await;
    }

    async fn on_request(&mut self, body: Req, reply: Reply) {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let kind = match &body {
            Req::Join(j) => {
                self.rooms.insert(j.room.clone(), Track::Joining(Vec::new()));
                Pending::Join(j.room.clone())
            }
            Req::Leave(l) => Pending::Leave(l.room.clone()),
            _ => Pending::Other,
        };
        let frame = encode_frame(&v1::ClientFrame { request_id: id, body: Some(body) });
        if self.send.write_all(&frame).await.is_err() {
            let _ = reply.send(Err(Error::Closed { code: None, reason: "control stream closed".into() }));
            return;
        }
        self.pending.insert(id, (kind, reply));
    }

    async fn on_response(&mut self, frame: v1::ServerFrame) {
        let body = match frame.body {
            Some(b) => b,
            None => return,
        };
        if frame.request_id == 0 {
            if let Resp::Error(e) = body {
                self.close_error = Some((proto_code(e.code), e.message));
            }
            return;
        }
        let Some((kind, reply)) = self.pending.remove(&frame.request_id) else {
            debug!(request_id = frame.request_id, "answer to no pending request");
            return;
        };
        let result = match body {
            Resp::Error(e) => {
                if let Pending::Join(room) = &kind {
                    self.rooms.remove(room);
                }
                let code = proto_code(e.code).unwrap_or(ErrorCode::Internal);
                Err(Error::Refused { code, message: e.message })
            }
            other => Ok(other),
        };
        let mut flush = None;
        match (&kind, &result) {
            (Pending::Join(room), Ok(Resp::Joined(j))) => {
                let old = self.rooms.insert(room.clone(), Track::Live { last_seq: j.current_seq });
                if let Some(Track::Joining(buffered)) = old {
                    flush = Some((room.clone(), buffered));
                }
            }
            (Pending::Leave(room), Ok(_)) => {
                self.rooms.remove(room);
            }
            _ => {}
        }
        let _ = reply.send(result);
        if let Some((room, buffered)) = flush {
            for event in buffered {
                self.on_event(room.clone(), event).await;
            }
        }
    }

    /// Delivers a room event in order, dropping duplicates and reporting gaps.
    async fn on_event(&mut self, room: String, event: v1::RoomEvent) {
        let Some(track) = self.rooms.get_mut(&room) else {
            return; // a room we left
        };
        let last_seq = match track {
            Track::Joining(buffer) => {
                if buffer.len() < MAX_BUFFERED {
                    buffer.push(event);
                }
                return;
            }
            Track::Live { last_seq } => last_seq,
        };
        match check_seq(last_seq, event.seq) {
            SeqCheck::Duplicate => return,
            SeqCheck::Next => {}
            SeqCheck::Gap { from, to } => {
                let _ = self.events.send(Event::Gap { room, from, to }).await;
            }
        }
        let _ = self.events.send(Event::Message(event)).await;
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
}
