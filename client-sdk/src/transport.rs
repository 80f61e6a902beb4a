//! Connecting: the client endpoint, the QUIC handshake and the hello, and the
//! small tasks that live as long as one connection (the control stream's
//! reader, the datagram reader, heartbeats).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use roomcast_protocol::codec::{FrameDecoder, encode_frame};
use roomcast_protocol::datagram::{ClientDatagram, ServerDatagram};
use roomcast_protocol::{ErrorCode, MAX_SERVER_FRAME_BYTES, PROTOCOL_VERSION, unix_ms, v1};
use tokio::sync::mpsc;
use tracing::debug;

use crate::quiz::QuizDesk;
use crate::{ClientConfig, Error, Event};
use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

/// One live connection.
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    /// The control stream, client to server.
    pub(crate) send: quinn::SendStream,
    /// The control stream's frames, from its reader task.
    pub(crate) control: mpsc::Receiver<Result<v1::ServerFrame, Error>>,
    pub(crate) control_open: bool,
}

/// The configured endpoint, or a new one on an unspecified address of the
/// server's family.
pub(crate) fn endpoint(config: &ClientConfig) -> Result<quinn::Endpoint, Error> {
    if let Some(e) = &config.endpoint {
        return Ok(e.clone());
    }
    let bind: SocketAddr =
        if config.server.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.map_err(connect_err)?;
    quinn::Endpoint::client(bind).map_err(connect_err)
}

/// Connects to `server`, says hello and starts the connection's reader and heartbeat tasks.
pub(crate) async fn connect_once(
    config: &ClientConfig,
    client_config: &quinn::ClientConfig,
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    token: String,
    events: &mpsc::Sender<Event>,
    quiz: &Arc<QuizDesk>,
) -> Result<(Link, v1::Welcome), Error> {
    let handshake = async {
        let connecting =
            endpoint.connect_with(client_config.clone(), server, &config.server_name).map_err(connect_err)?;
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
    tokio::spawn(read_datagrams(link.conn.clone(), events.clone(), quiz.clone()));
    if config.heartbeats {
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms).max(50));
        tokio::spawn(heartbeat(link.conn.clone(), interval));
    }
    Ok((link, welcome))
}

/// The code of an `Error` frame, if it is one we know.
pub(crate) fn proto_code(code: i32) -> Option<ErrorCode> {
    u64::try_from(code).ok().and_then(ErrorCode::from_code)
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

async fn read_datagrams(conn: quinn::Connection, events: mpsc::Sender<Event>, quiz: Arc<QuizDesk>) {
    while let Ok(data) = conn.read_datagram().await {
        match ServerDatagram::decode(data) {
            // Latest value wins: if the app is behind, dropping one is harmless.
            Ok(ServerDatagram::OnlineCount { room, count, .. }) => {
                let _ = events.try_send(Event::OnlineCount { room, count });
            }
            Ok(ServerDatagram::LikeTotal { room, total, .. }) => {
                let _ = events.try_send(Event::LikeTotal { room, total });
            }
            Ok(ServerDatagram::QuizNudge { room, question_id, seq }) => quiz.nudge(room, question_id, seq),
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
