//! The roomcast client SDK: what a viewer or host app embeds.
//!
//! [`Client::connect`] opens a QUIC connection, authenticates with a token and
//! starts heartbeats; [`Client::join`] enters a room and returns its snapshot
//! (online count, viewers, recent history); room events, online counts, gaps
//! and disconnects arrive on [`Events`], in order per room.
//!
//! The SDK checks every room's sequence numbers: if one is ever skipped it
//! says so with [`Event::Gap`] instead of hiding it.
//!
//! ```no_run
//! use roomcast_client::{Client, ClientConfig, Event, Trust};
//!
//! # async fn demo() -> Result<(), roomcast_client::Error> {
//! let trust = Trust::fingerprint("AB:CD:...")?;
//! let config = ClientConfig::new("127.0.0.1:4433".parse().unwrap(), "<token>", trust);
//! let (client, mut events) = Client::connect(config).await?;
//! let joined = client.join("live-42").await?;
//! println!("{} watching, last seq {}", joined.online_count, joined.current_seq);
//! client.send_chat("live-42", "hello").await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(e) => println!("#{} {:?}", e.seq, e.kind),
//!         Event::OnlineCount { room, count } => println!("{room}: {count} online"),
//!         Event::Gap { room, from, to } => eprintln!("{room}: missed {from}..={to}"),
//!         Event::Disconnected { reason, .. } => { eprintln!("gone: {reason}"); break }
//!     }
//! }
//! # Ok(()) }
//! ```

mod driver;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot};

pub use roomcast_protocol::v1;
pub use tls::Trust;

/// What to connect to and how.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// Name checked against the certificate with [`Trust::Roots`], and sent
    /// as SNI. Default `localhost`.
    pub server_name: String,
    /// Connection token minted by the platform's backend.
    pub token: String,
    pub trust: Trust,
    /// Reported to the server in `Hello`, for its logs.
    pub client_name: String,
    pub client_version: String,
    /// Send heartbeat datagrams at the interval the server asks for. Turning
    /// this off makes the server drop the client from presence.
    pub heartbeats: bool,
    /// Events buffered for the app before the SDK stops reading the network.
    pub event_buffer: usize,
    /// Time allowed for the QUIC and roomcast handshakes.
    pub connect_timeout: Duration,
    /// A client endpoint (UDP socket) to share with other connections; a new
    /// one is bound when absent. Load generators multiplex many connections
    /// over a few sockets this way.
    pub endpoint: Option<quinn::Endpoint>,
}

impl ClientConfig {
    pub fn new(server: SocketAddr, token: impl Into<String>, trust: Trust) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            token: token.into(),
            trust,
            client_name: "roomcast-rust".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            heartbeats: true,
            event_buffer: 4096,
            connect_timeout: Duration::from_secs(10),
            endpoint: None,
        }
    }
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A room event: sequenced (`seq` >= 1, in order) or ephemeral (`seq` 0).
    Message(v1::RoomEvent),
    /// Sequenced events `from..=to` of `room` were never received.
    Gap { room: String, from: u64, to: u64 },
    /// A room's online count (latest value wins).
    OnlineCount { room: String, count: u64 },
    /// The connection ended. `code` is the server's close code when it gave one.
    Disconnected { code: Option<ErrorCode>, reason: String },
}

/// Why an SDK call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration could not be used (bad certificate file, fingerprint…).
    #[error("configuration: {0}")]
    Config(String),
    /// The connection could not be established.
    #[error("connect: {0}")]
    Connect(String),
    /// The server refused the request; the connection stays open.
    #[error("refused ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// The connection is closed; `code` is the server's close code if it sent one.
    #[error("connection closed{}: {reason}", .code.map(|c| format!(" ({c})")).unwrap_or_default())]
    Closed { code: Option<ErrorCode>, reason: String },
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// The server's error or close code, if it sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            Self::Closed { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn from_connection(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Self::Closed {
                code: ErrorCode::from_code(c.error_code.into_inner()),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            other => Self::Closed { code: None, reason: other.to_string() },
        }
    }
}

/// A chat message with all its options.
#[derive(Debug, Clone, Default)]
pub struct ChatMessage {
    pub room: String,
    pub text: String,
    /// De-duplication id; the SDK picks a fresh one when empty.
    pub client_msg_id: String,
    /// Position on the media timeline, ms.
    pub media_ts_ms: Option<u64>,
}

/// The stream of [`Event`]s of one connection.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Disconnected`] has been delivered.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// A connected session. Cheap to clone; every clone drives the same connection.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<driver::Command>,
    welcome: std::sync::Arc<v1::Welcome>,
    conn: quinn::Connection,
}

impl Client {
    /// Connects, authenticates and starts heartbeats.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), Error> {
        let (welcome, conn, commands, rx) = driver::start(config).await?;
        Ok((Client { commands, welcome: std::sync::Arc::new(welcome), conn }, Events { rx }))
    }

    /// The server's `Welcome`: session id, limits, heartbeat interval, user.
    pub fn welcome(&self) -> &v1::Welcome {
        &self.welcome
    }

    async fn request(&self, body: v1::client_frame::Body) -> Result<v1::server_frame::Body, Error> {
        let (reply, rx) = oneshot::channel();
        let closed = || Error::Closed { code: None, reason: "client stopped".into() };
        self.commands.send(driver::Command::Request { body, reply }).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Joins a room. Its events follow on [`Events`], right after
    /// `Joined.current_seq`.
    pub async fn join(&self, room: &str) -> Result<v1::Joined, Error> {
        self.join_at(room, None).await
    }

    /// Joins a room, resuming after `last_seq`: `Joined.history` then holds
    /// the missed events, and `Joined.resumed` says whether that is all of them.
    pub async fn join_at(&self, room: &str, last_seq: Option<u64>) -> Result<v1::Joined, Error> {
        let body = v1::client_frame::Body::Join(v1::Join { room: room.into(), last_seq });
        match self.request(body).await? {
            v1::server_frame::Body::Joined(j) => Ok(j),
            other => Err(unexpected(other)),
        }
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), Error> {
        match self.request(v1::client_frame::Body::Leave(v1::Leave { room: room.into() })).await? {
            v1::server_frame::Body::Left(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a chat message and waits for its sequence number.
    pub async fn send_chat(&self, room: &str, text: &str) -> Result<v1::ChatAck, Error> {
        self.send(ChatMessage { room: room.into(), text: text.into(), ..ChatMessage::default() }).await
    }

    /// Sends a chat message with options.
    pub async fn send(&self, mut msg: ChatMessage) -> Result<v1::ChatAck, Error> {
        if msg.client_msg_id.is_empty() {
            msg.client_msg_id = driver::fresh_id();
        }
        let body = v1::client_frame::Body::SendChat(v1::SendChat {
            room: msg.room,
            text: msg.text,
            client_msg_id: msg.client_msg_id,
            media_ts_ms: msg.media_ts_ms,
        });
        match self.request(body).await? {
            v1::server_frame::Body::ChatAck(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"client closed");
    }
}

fn unexpected(body: v1::server_frame::Body) -> Error {
    Error::Protocol(format!("unexpected answer: {body:?}"))
}
