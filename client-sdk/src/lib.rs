//! The roomcast client SDK: what a viewer or host app embeds.
//!
//! [`Client::connect`] opens a QUIC connection, authenticates with a token and
//! starts heartbeats; [`Client::join`] enters a room and returns its snapshot
//! (online count, viewers, recent history); room events, online counts, gaps
//! and connection changes arrive on [`Events`], in order per room.
//!
//! The SDK checks every room's sequence numbers: if one is ever skipped it
//! says so with [`Event::Gap`] instead of hiding it. When the connection drops
//! it reconnects with backoff and jitter, to the same node or to the next of
//! [`ClientConfig::alternates`] (at once when the node drained, and to the
//! drained node no sooner than its retry-after hint), and resumes each room
//! where it left off ([`Event::Resumed`] says whether nothing was missed); when the server
//! reports that this client fell behind ([`Event::Lagged`]) it resumes the
//! same way. Events delivered twice on the way are dropped.
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
//!         Event::Resumed { room, complete, .. } => eprintln!("{room}: back, complete: {complete}"),
//!         Event::Disconnected { reason, .. } => { eprintln!("gone: {reason}"); break }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod driver;
pub mod likes;
pub mod quiz;
mod reconnect;
mod requests;
mod room_stream;
mod room_track;
mod seq;
mod tls;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use roomcast_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

pub use reconnect::{Backoff, Resolver};
pub use roomcast_protocol::v1;
pub use tls::Trust;

/// What to connect to and how.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's UDP address: the first one connected to.
    pub server: SocketAddr,
    /// Other nodes to reconnect to when the current one drains or dies,
    /// tried in order after `server` (wrapping around). A node that closes
    /// with `SERVER_DRAINING` is skipped until its retry-after hint has
    /// passed, and the next address is tried at once; with no alternates,
    /// the SDK waits at least the hint before connecting to `server` again.
    /// Use addresses of `server`'s family (the UDP socket is bound to it).
    /// Default: none.
    pub alternates: Vec<SocketAddr>,
    /// Asked for the nodes to try before every reconnect attempt (after
    /// `server` and `alternates` are used up as the first list): the app's
    /// own discovery, e.g. the list its backend last handed out. Default:
    /// none.
    pub resolver: Option<Resolver>,
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
    /// Time a request (join, chat, leave…) waits for the server's answer
    /// before it fails with [`Error::Timeout`]. Default 15 s.
    pub request_timeout: Duration,
    /// A client endpoint (UDP socket) to share with other connections; a new
    /// one is bound when absent. Load generators multiplex many connections
    /// over a few sockets this way.
    pub endpoint: Option<quinn::Endpoint>,
    /// Reconnect after a dropped connection, and how; `None` ends the session
    /// at the first drop. Tokens refused and protocol errors are never retried.
    pub reconnect: Option<Backoff>,
    /// Silence after which the connection counts as dead. Heartbeats keep a
    /// healthy connection busy, so it must be longer than the server's
    /// heartbeat interval. Default 30 s.
    pub idle_timeout: Duration,
    /// Bytes of one room stream buffered before the server must wait for the
    /// app to read (QUIC flow control). Default: quinn's. A small window makes
    /// a stalled app fall behind (and resume) sooner and bounds its memory.
    pub stream_receive_window: Option<u32>,
}

impl ClientConfig {
    pub fn new(server: SocketAddr, token: impl Into<String>, trust: Trust) -> Self {
        Self {
            server,
            alternates: Vec::new(),
            resolver: None,
            server_name: "localhost".into(),
            token: token.into(),
            trust,
            client_name: "roomcast-rust".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            heartbeats: true,
            event_buffer: 4096,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            endpoint: None,
            reconnect: Some(Backoff::default()),
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: None,
        }
    }

    /// The QUIC and TLS configuration a connection with these options uses:
    /// for a client that drives its own QUIC connections (the load
    /// generator) and should look to the node exactly like this SDK.
    pub fn quic_config(&self) -> Result<quinn::ClientConfig, Error> {
        tls::client_config(self)
    }
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A room event: sequenced (`seq` >= 1, in order) or ephemeral (`seq` 0).
    Message(v1::RoomEvent),
    /// Sequenced events `from..=to` of `room` were never received.
    Gap { room: String, from: u64, to: u64 },
    /// A room's online count (latest value wins).
    OnlineCount { room: String, count: u64 },
    /// A room's total like count (latest value wins; `Joined.like_total`
    /// has it at the join).
    LikeTotal { room: String, total: u64 },
    /// A quiz question to show now: the player's video reached its media
    /// time (fed with [`Client::set_media_position`]), or its latest display
    /// time passed. Once per question. Answer with [`Client::answer`] before
    /// `answer_until_media_ms` on the player's timeline. The question's
    /// event also arrives as an [`Event::Message`] when sequenced: show this
    /// one instead.
    QuizQuestion {
        room: String,
        seq: u64,
        question: Box<v1::QuizQuestion>,
        shown: quiz::Shown,
        answer_until_media_ms: u64,
    },
    /// This player's standing after a quiz reveal (sent to players only):
    /// still in, a revive card spent, or out.
    QuizVerdict(v1::QuizVerdict),
    /// The server could not keep up with this client (it read too slowly) and
    /// dropped `from..=to`; the SDK is resuming the room, and
    /// [`Event::Resumed`] follows.
    Lagged { room: String, from: u64, to: u64 },
    /// A room was rejoined after a lag or a reconnection. The `replayed`
    /// missed events were delivered just before this; when the server sent
    /// only the oldest of them in its answer (`Joined.next_seq`), the rest
    /// follow right after, in order, ahead of live events. `complete` is
    /// false when some were older than the room's history window: an
    /// [`Event::Gap`] named them, and recent history was replayed instead.
    Resumed { room: String, complete: bool, replayed: usize },
    /// A room could not be rejoined after a reconnection; it is no longer
    /// joined.
    ResumeFailed { room: String, error: Error },
    /// The server removed this session from a room: `code` is
    /// [`ErrorCode::Banned`] (kicked or banned; a rejoin is refused until it
    /// expires) or [`ErrorCode::RoomClosed`]. The room is no longer joined
    /// and is not rejoined.
    Removed { room: String, code: Option<ErrorCode>, reason: String },
    /// The connection dropped; attempt `attempt` to connect again, to
    /// `server`, starts after `delay`. Requests made meanwhile fail with
    /// [`Error::Closed`]. A draining node's close (`code`
    /// [`ErrorCode::ServerDraining`]) says how long to stay away from it in
    /// `reason` (`retry_after_ms=N`).
    Reconnecting {
        attempt: u32,
        delay: Duration,
        code: Option<ErrorCode>,
        reason: String,
        server: SocketAddr,
    },
    /// Connected again (a new session); room resumes follow.
    Reconnected { session_id: String },
    /// The session ended for good. `code` is the server's close code when it
    /// gave one.
    Disconnected { code: Option<ErrorCode>, reason: String },
}

impl Event {
    /// A gift, if this is one: the room event (room, `seq`, sender, media
    /// time) and the gift (id, name, count, value, and its combo: the combo
    /// id and the running count, so an app shows one animation per combo
    /// and updates its count).
    pub fn gift(&self) -> Option<(&v1::RoomEvent, &v1::Gift)> {
        match self {
            Event::Message(m) => match &m.kind {
                Some(v1::room_event::Kind::Gift(g)) => Some((m, g)),
                _ => None,
            },
            _ => None,
        }
    }

    /// A quiz result (exact counts per option, the correct one, players left),
    /// if this is one.
    pub fn quiz_result(&self) -> Option<(&v1::RoomEvent, &v1::QuizResult)> {
        match self {
            Event::Message(m) => match &m.kind {
                Some(v1::room_event::Kind::QuizResult(r)) => Some((m, r)),
                _ => None,
            },
            _ => None,
        }
    }

    /// A room's top gifters (at most 10, highest value first), if this is a
    /// ranking update: replace the whole list.
    pub fn ranking(&self) -> Option<(&str, &[v1::RankEntry])> {
        match self {
            Event::Message(m) => match &m.kind {
                Some(v1::room_event::Kind::Ranking(r)) => Some((m.room.as_str(), r.entries.as_slice())),
                _ => None,
            },
            _ => None,
        }
    }
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
    /// No answer came within [`ClientConfig::request_timeout`]. The request
    /// may still take effect on the server.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
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

/// A gift with all its options (see [`Client::send_gift_with`]).
#[derive(Debug, Clone, Default)]
pub struct GiftMessage {
    pub room: String,
    /// An id from the node's gift catalogue.
    pub gift_id: String,
    /// How many, at least 1.
    pub count: u32,
    /// Required: make one per send with [`idempotency_key`] and keep it for
    /// the send's retries, so a retry is never charged twice.
    pub idempotency_key: String,
    /// Position on the media timeline, ms.
    pub media_ts_ms: Option<u64>,
    /// Empty: the node decides combos. A new value starts a new combo.
    pub combo_id: String,
}

/// A fresh idempotency key for a gift: random per process, then a counter.
pub fn idempotency_key() -> String {
    requests::fresh_id()
}

/// How to join a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Resume after this sequence number: `Joined.history` then holds the
    /// missed events, and `Joined.resumed` says whether that is all of them.
    pub last_seq: Option<u64>,
    /// `Joined.epoch` the `last_seq` belongs to, if known.
    pub epoch: Option<u64>,
    /// Which events to receive.
    pub filter: v1::JoinFilter,
}

pub use roomcast_protocol::HistoryRange;

/// The stream of [`Event`]s of one session.
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

/// A session with a roomcast server: one connection at a time, replaced when
/// it drops. Cheap to clone; every clone drives the same session.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<requests::Command>,
    shared: Arc<driver::Shared>,
    request_timeout: Duration,
    likes: Arc<likes::Likes>,
    quiz: Arc<quiz::QuizDesk>,
}

impl Client {
    /// Connects, authenticates and starts heartbeats. The first connection is
    /// not retried: an error here is returned as is.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), Error> {
        let request_timeout = config.request_timeout;
        let quiz = Arc::new(quiz::QuizDesk::default());
        let (shared, commands, events, rx) = driver::start(config, quiz.clone()).await?;
        let likes = Arc::new(likes::Likes::default());
        tokio::spawn(likes::report(likes.clone(), Arc::downgrade(&shared)));
        tokio::spawn(quiz::run(quiz.clone(), events, commands.clone(), Arc::downgrade(&shared)));
        Ok((Client { commands, shared, request_timeout, likes, quiz }, Events { rx }))
    }

    /// The current connection's `Welcome`: session id, limits, heartbeat
    /// interval, user.
    pub fn welcome(&self) -> Arc<v1::Welcome> {
        self.shared.welcome()
    }

    /// The address of the node the current (or last) connection is to: the
    /// configured server or one of its alternates.
    pub fn server(&self) -> SocketAddr {
        self.shared.conn().remote_address()
    }

    /// Transport statistics of the current connection (packets, bytes,
    /// round-trip time), as QUIC counts them.
    pub fn connection_stats(&self) -> quinn::ConnectionStats {
        self.shared.conn().stats()
    }

    /// Replaces the token used when the SDK reconnects (tokens expire).
    pub fn set_token(&self, token: impl Into<String>) {
        *self.shared.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = token.into();
    }

    async fn request(&self, body: v1::client_frame::Body) -> Result<v1::server_frame::Body, Error> {
        let (reply, rx) = oneshot::channel();
        let closed = || Error::Closed { code: None, reason: "client stopped".into() };
        let answer = async {
            self.commands.send(requests::Command { body, reply }).await.map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        };
        tokio::time::timeout(self.request_timeout, answer)
            .await
            .unwrap_or(Err(Error::Timeout(self.request_timeout)))
    }

    /// Joins a room. Its events follow on [`Events`], from `Joined.next_seq`
    /// (right after `Joined.current_seq` when the server leaves it 0).
    pub async fn join(&self, room: &str) -> Result<v1::Joined, Error> {
        self.join_with(room, JoinOptions::default()).await
    }

    /// Joins a room, resuming after `last_seq`: `Joined.history` then holds
    /// the missed events, and `Joined.resumed` says whether that is all of them.
    pub async fn join_at(&self, room: &str, last_seq: Option<u64>) -> Result<v1::Joined, Error> {
        self.join_with(room, JoinOptions { last_seq, ..JoinOptions::default() }).await
    }

    /// Joins a room with options: a resume position, or a filter such as
    /// [`v1::JoinFilter::HostOnly`] (only host messages, system notices,
    /// quiz traffic and recalls).
    ///
    /// ```no_run
    /// # async fn demo(client: roomcast_client::Client) -> Result<(), roomcast_client::Error> {
    /// use roomcast_client::{JoinOptions, v1::JoinFilter};
    /// let opts = JoinOptions { filter: JoinFilter::HostOnly, ..JoinOptions::default() };
    /// client.join_with("live-42", opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn join_with(&self, room: &str, opts: JoinOptions) -> Result<v1::Joined, Error> {
        let body = v1::client_frame::Body::Join(v1::Join {
            room: room.into(),
            last_seq: opts.last_seq,
            filter: opts.filter as i32,
            epoch: opts.epoch,
        });
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

    /// Sends a chat message. The ack carries its sequence number, or
    /// `broadcast: false` when the room's chat budget sampled it out.
    pub async fn send_chat(&self, room: &str, text: &str) -> Result<v1::ChatAck, Error> {
        self.send(ChatMessage { room: room.into(), text: text.into(), ..ChatMessage::default() }).await
    }

    /// Sends a chat message with options.
    pub async fn send(&self, mut msg: ChatMessage) -> Result<v1::ChatAck, Error> {
        if msg.client_msg_id.is_empty() {
            msg.client_msg_id = requests::fresh_id();
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

    /// The node's gift catalogue: every gift `send_gift` may name, with its
    /// display name, price and tier, cheapest first.
    pub async fn gift_catalogue(&self) -> Result<v1::Catalogue, Error> {
        let body = v1::client_frame::Body::FetchCatalogue(v1::FetchCatalogue {});
        match self.request(body).await? {
            v1::server_frame::Body::Catalogue(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a gift: the node charges the sender's balance, then broadcasts
    /// it as a `Gift` event ([`Event::Message`] with
    /// `v1::room_event::Kind::Gift`). The ack's `outcome` says whether it was
    /// accepted (with its `seq` and the new `balance`) or why not. After a
    /// timeout or a reconnect, send again with the same `idempotency_key`:
    /// the node answers the first outcome and charges nothing more.
    pub async fn send_gift(
        &self,
        room: &str,
        gift_id: &str,
        count: u32,
        idempotency_key: &str,
    ) -> Result<v1::GiftAck, Error> {
        let gift = GiftMessage {
            room: room.into(),
            gift_id: gift_id.into(),
            count,
            idempotency_key: idempotency_key.into(),
            ..GiftMessage::default()
        };
        self.send_gift_with(gift).await
    }

    /// Counts `taps` likes in `room` (call it per tap, or with a few). The
    /// SDK adds them up and sends at most one report a second per room, as a
    /// datagram: never waits, never fails; a report lost on the network
    /// loses at most that second's taps. The room's total comes back as
    /// [`Event::LikeTotal`]. The node counts a user's taps up to a cap (about
    /// 20 a second) and flags the rest as fake.
    pub fn like(&self, room: &str, taps: u32) {
        if !self.likes.add(room, taps) {
            debug!(room, "likes for too many rooms at once; dropped");
        }
    }

    /// Where the player's video in `room` is now, in ms on the stream's media
    /// timeline (read from the video's SEI). Feed it per frame, or a few
    /// times a second: quiz questions are released as
    /// [`Event::QuizQuestion`] when it reaches theirs.
    pub fn set_media_position(&self, room: &str, media_ts_ms: u64) {
        self.quiz.set_position(room, media_ts_ms);
    }

    /// Answers quiz question `question_id` of `room` with option `option`
    /// (0-based). One answer per question counts; the ack's `outcome` says
    /// whether this one did.
    pub async fn answer(&self, room: &str, question_id: &str, option: u32) -> Result<v1::AnswerAck, Error> {
        let body = v1::client_frame::Body::SubmitAnswer(v1::SubmitAnswer {
            room: room.into(),
            question_id: question_id.into(),
            option,
        });
        match self.request(body).await? {
            v1::server_frame::Body::AnswerAck(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a gift with options (a media timestamp, a combo id).
    pub async fn send_gift_with(&self, gift: GiftMessage) -> Result<v1::GiftAck, Error> {
        let body = v1::client_frame::Body::SendGift(v1::SendGift {
            room: gift.room,
            gift_id: gift.gift_id,
            count: gift.count,
            idempotency_key: gift.idempotency_key,
            media_ts_ms: gift.media_ts_ms,
            combo_id: gift.combo_id,
        });
        match self.request(body).await? {
            v1::server_frame::Body::GiftAck(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Recalls a message by its `message_id`: allowed to its sender, the
    /// room's hosts and admins. Every member then receives a recall event.
    pub async fn recall(&self, room: &str, message_id: &str) -> Result<v1::Recalled, Error> {
        let body =
            v1::client_frame::Body::Recall(v1::Recall { room: room.into(), message_id: message_id.into() });
        match self.request(body).await? {
            v1::server_frame::Body::Recalled(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Fetches part of a room's history (no need to be joined), oldest first,
    /// at most `limit` events (0: the server's maximum, 500) and what fits in
    /// one answer: `truncated` says to ask again from the last seq + 1. A room
    /// not live on the node is [`ErrorCode::NotFound`].
    pub async fn fetch_history(
        &self,
        room: &str,
        range: HistoryRange,
        limit: u32,
    ) -> Result<v1::History, Error> {
        let range = range.to_proto();
        let body = v1::client_frame::Body::FetchHistory(v1::FetchHistory { room: room.into(), range, limit });
        match self.request(body).await? {
            v1::server_frame::Body::History(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Ends the session politely; [`Event::Disconnected`] follows. Await
    /// [`Client::closed`] before the process exits so that the server hears
    /// of it at once rather than at its idle timeout.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.close.notify_one();
    }

    /// Waits until the session is over, whoever ended it, and its connection
    /// close has been sent (at most about a second after the end).
    ///
    /// ```no_run
    /// # async fn f(client: roomcast_client::Client) {
    /// client.close();
    /// client.closed().await;
    /// # }
    /// ```
    pub async fn closed(&self) {
        let _ = self.shared.ended.subscribe().wait_for(|ended| *ended).await;
    }
}

fn unexpected(body: v1::server_frame::Body) -> Error {
    Error::Protocol(format!("unexpected answer: {body:?}"))
}
