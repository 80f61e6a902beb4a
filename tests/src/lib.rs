//! Harness for roomcast's end-to-end tests: a real node on a loopback UDP
//! port, real TLS, clients built on the real SDK, and raw sessions
//! ([`RawSession`]) that speak the wire contract frame by frame, the way a
//! client on another QUIC stack would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use roomcast_client::{Client, ClientConfig, Event, Events, Trust};
use roomcast_protocol::codec::{FrameDecoder, FrameError, encode_frame};
use roomcast_protocol::{MAX_SERVER_FRAME_BYTES, PROTOCOL_VERSION, v1};
use roomcast_server::auth::Role;
use roomcast_server::{Config, Drain};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

pub mod binary;
pub mod hooks;
pub mod quiz_rules;
pub mod redis;
pub mod relay;

/// A roomcast node serving on 127.0.0.1 with a random port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where its Prometheus endpoint listens.
    pub metrics_addr: SocketAddr,
    /// Where its admin API listens.
    pub admin_addr: SocketAddr,
    /// The admin API key the node accepts (`X-Api-Key`).
    pub admin_key: String,
    pub fingerprint: String,
    pub cert_path: PathBuf,
    pub secret: String,
    dir: PathBuf,
    drain: Drain,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The node's own runtime, for a node that can be killed.
    runtime: Option<tokio::runtime::Runtime>,
}

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROOMCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl TestServer {
    /// A node with test-friendly timings (200 ms heartbeats, 100 ms between
    /// online-count pushes) and no chat budget or per-user chat rate, so that
    /// tests can send quickly; tests of those limits set them. Token checks
    /// keep their defaults (the leeway on `exp` included).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], with the configuration adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        init();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("roomcast-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let secret = format!("test-secret-{n}");
        let mut config =
            Config { listen: "127.0.0.1:0".parse().unwrap(), data_dir: dir.clone(), ..Config::default() };
        config.auth.hs256_secret = Some(secret.clone());
        config.presence.heartbeat_interval_ms = 200;
        config.room.online_push_interval_ms = 100;
        config.room.chat_budget_per_sec = 0;
        config.room.user_chat_per_sec = 0.0;
        let admin_key = format!("test-admin-key-{n}");
        config.admin.api_key = Some(admin_key.clone());
        tweak(&mut config);
        let (endpoint, cert) = roomcast_server::endpoint::bind(&config).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let metrics = roomcast_server::metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let admin = roomcast_server::admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let drain = Drain::new();
        let task = tokio::spawn(roomcast_server::serve_with_drain(
            config,
            endpoint,
            Some(metrics),
            Some(admin),
            drain.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            metrics_addr,
            admin_addr,
            admin_key,
            fingerprint: cert.fingerprint,
            cert_path: cert.cert_path,
            secret,
            dir,
            drain,
            shutdown: Some(tx),
            task: Some(task),
            runtime: None,
        }
    }

    /// A fleet node on the Redis at `redis`; with `secret`, it takes the
    /// tokens another node signs (the platform's one secret).
    pub async fn in_fleet(redis: &str, secret: Option<&str>) -> Self {
        let (redis, secret) = (redis.to_string(), secret.map(str::to_string));
        Self::start_with(move |c| {
            c.redis = Some(redis);
            if let Some(secret) = secret {
                c.auth.hs256_secret = Some(secret);
            }
        })
        .await
    }

    /// Like [`TestServer::start_with`], on a runtime of its own, so that
    /// [`TestServer::kill`] can stop it the way a crash would.
    pub async fn start_killable_with(tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut server = runtime.spawn(Self::start_with(tweak)).await.unwrap();
        server.runtime = Some(runtime);
        server
    }

    /// Stops a node started with [`TestServer::start_killable_with`] at
    /// once, as a crash would: its tasks are dropped, its sockets closed,
    /// and nothing is said to its clients or its fleet.
    pub fn kill(mut self) {
        self.task.take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    pub fn token(&self, user: &str, role: Role) -> String {
        roomcast_server::auth::mint_hs256(self.secret.as_bytes(), user, user, role, Duration::from_secs(3600))
    }

    pub fn client_config(&self, token: String) -> ClientConfig {
        ClientConfig::new(self.addr, token, Trust::fingerprint(&self.fingerprint).unwrap())
    }

    /// Connects a client for `user` with `role`.
    pub async fn connect(&self, user: &str, role: Role) -> (Client, Events) {
        Client::connect(self.client_config(self.token(user, role))).await.unwrap()
    }

    /// Connects a client for `user` with `role`, its configuration adjusted
    /// by `tweak`.
    pub async fn connect_with(
        &self,
        user: &str,
        role: Role,
        tweak: impl FnOnce(&mut ClientConfig),
    ) -> (Client, Events) {
        let mut config = self.client_config(self.token(user, role));
        tweak(&mut config);
        Client::connect(config).await.unwrap()
    }

    /// A viewer `user` behind `relay` (a network that can drop out), with a
    /// short idle timeout and quick reconnects, so a dropout is noticed and
    /// healed within a test's patience.
    pub async fn connect_behind(&self, relay: &relay::Relay, user: &str) -> (Client, Events) {
        self.connect_with(user, Role::Viewer, |c| {
            c.server = relay.addr();
            c.idle_timeout = Duration::from_secs(1);
            c.connect_timeout = Duration::from_secs(1);
            c.reconnect = Some(roomcast_client::Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
                max_attempts: None,
            });
        })
        .await
    }

    /// The Prometheus exposition from the node's metrics endpoint.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "metrics answered: {body}");
        body
    }

    /// The node's drain switch, as the admin API holds it.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// The status code and body of `GET path` on the metrics endpoint.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(self.metrics_addr).await?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            s.write_all(request.as_bytes()).await?;
            let mut text = String::new();
            s.read_to_string(&mut text).await?;
            Ok::<_, std::io::Error>(text)
        };
        let text = tokio::time::timeout(WAIT, exchange).await.expect("metrics endpoint timed out").unwrap();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("an HTTP status line");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// Waits (at most [`WAIT`]) until the node's `serve` has returned.
    pub async fn finished(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task).await.expect("the node did not stop in time")?
    }

    /// `method path` on the admin API with the node's API key and, if
    /// given, `json` as the body.
    pub async fn admin(&self, method: &str, path: &str, json: Option<&str>) -> HttpAnswer {
        let mut headers = vec![("X-Api-Key", self.admin_key.as_str())];
        if json.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.admin_raw(method, path, &headers, json.unwrap_or("").as_bytes()).await
    }

    /// `method path` on the admin API with exactly `headers` (no
    /// credentials unless among them) and `body`.
    pub async fn admin_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpAnswer {
        http_request(self.admin_addr, method, path, headers, body).await
    }

    /// A plain QUIC connection with no roomcast session, for feeding the
    /// server bytes the SDK would never send. It trusts the node's
    /// certificate as a root and checks the name `localhost`.
    pub async fn raw_connection(&self) -> quinn::Connection {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&self.cert_path).unwrap();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![roomcast_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        endpoint.connect(self.addr, "localhost").unwrap().await.unwrap()
    }

    /// A raw connection whose control stream is open and carries a `Hello`
    /// (request id 1) with `token` and `protocol_version`. The answer is left
    /// unread: see [`RawSession::welcome`].
    pub async fn raw_hello(&self, token: String, protocol_version: u32) -> RawSession {
        let conn = self.raw_connection().await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_frame(&hello(token, protocol_version))).await.unwrap();
        RawSession { conn, send, control: FrameReader::new(recv) }
    }

    /// A raw session for `user`, its `Welcome` read and checked.
    pub async fn raw_session(&self, user: &str, role: Role) -> RawSession {
        let mut session = self.raw_hello(self.token(user, role), PROTOCOL_VERSION).await;
        let welcome = session.welcome().await;
        assert_eq!(welcome.user.as_ref().map(|u| u.user_id.as_str()), Some(user));
        session
    }

    /// Stops the node and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP answer: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`), with
/// a `Content-Length` body; chunked answers are decoded. Panics on a
/// malformed answer and after [`WAIT`].
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = stream.into_split();
        // Write and read at once: a server refusing a large body may answer
        // before reading all of it. The write half stays open until the
        // answer is read (dropping it would half-close the connection, which
        // the server takes as the client going away).
        let write = async {
            wr.write_all(head.as_bytes()).await?;
            wr.write_all(body).await?;
            wr.flush().await
        };
        let mut raw = Vec::new();
        let (_, read) = tokio::join!(write, rd.read_to_end(&mut raw));
        drop(wr);
        read.map(|_| raw)
    };
    let raw =
        tokio::time::timeout(WAIT, exchange).await.expect("HTTP exchange timed out").expect("HTTP exchange");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let head = String::from_utf8(raw[..split].to_vec()).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    HttpAnswer { status, headers, body: String::from_utf8(body).expect("a UTF-8 body") }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("a chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A `Hello` frame (request id 1), as a client of `protocol_version` sends it.
pub fn hello(token: String, protocol_version: u32) -> v1::ClientFrame {
    v1::ClientFrame {
        request_id: 1,
        body: Some(v1::client_frame::Body::Hello(v1::Hello {
            token,
            protocol_version,
            client_name: "raw".into(),
            client_version: "0".into(),
        })),
    }
}

/// The frames of one QUIC stream from the server, read with the protocol's
/// own decoder and the contract's bound on server frames.
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self { recv, decoder: FrameDecoder::new(MAX_SERVER_FRAME_BYTES) }
    }

    /// The next control-stream frame; `None` once the stream has ended.
    pub async fn server_frame(&mut self) -> Option<v1::ServerFrame> {
        self.next(FrameDecoder::next_message::<v1::ServerFrame>).await
    }

    /// The next room-stream frame; `None` once the stream has ended.
    pub async fn room_frame(&mut self) -> Option<v1::RoomFrame> {
        self.next(FrameDecoder::next_message::<v1::RoomFrame>).await
    }

    /// Every control-stream frame until the stream ends.
    pub async fn server_frames_to_end(&mut self) -> Vec<v1::ServerFrame> {
        let mut frames = Vec::new();
        while let Some(f) = self.server_frame().await {
            frames.push(f);
        }
        frames
    }

    /// Panics on a malformed frame, a stream that ends inside a frame or is
    /// reset, and after [`WAIT`].
    async fn next<M>(&mut self, decode: fn(&mut FrameDecoder) -> Result<Option<M>, FrameError>) -> Option<M> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(m) = decode(&mut self.decoder).expect("malformed frame from the server") {
                return Some(m);
            }
            let chunk = tokio::time::timeout_at(deadline, self.recv.read_chunk(64 * 1024, true))
                .await
                .expect("timed out waiting for a frame")
                .expect("stream failed");
            match chunk {
                Some(chunk) => self.decoder.extend(&chunk.bytes),
                None => {
                    self.decoder.finish().expect("stream ended inside a frame");
                    return None;
                }
            }
        }
    }
}

/// A roomcast session on a bare QUIC connection: what a client written from
/// the wire contract alone sees, frame by frame.
pub struct RawSession {
    pub conn: quinn::Connection,
    /// The control stream, client to server.
    pub send: quinn::SendStream,
    /// The control stream, server to client.
    pub control: FrameReader,
}

impl RawSession {
    /// Reads the answer to the `Hello`: a `Welcome` echoing its request id 1.
    /// Panics on anything else.
    pub async fn welcome(&mut self) -> v1::Welcome {
        match self.control.server_frame().await {
            Some(v1::ServerFrame { request_id: 1, body: Some(v1::server_frame::Body::Welcome(w)) }) => w,
            other => panic!("expected a Welcome answering request 1, got {other:?}"),
        }
    }

    /// Writes a request.
    pub async fn send(&mut self, request_id: u32, body: v1::client_frame::Body) {
        let frame = encode_frame(&v1::ClientFrame { request_id, body: Some(body) });
        self.send.write_all(&frame).await.unwrap();
    }

    /// Writes a request and reads the next control frame, which must answer
    /// it; returns the answer's body.
    pub async fn request(&mut self, request_id: u32, body: v1::client_frame::Body) -> v1::server_frame::Body {
        self.send(request_id, body).await;
        let answer = self.control.server_frame().await.expect("control stream ended");
        assert_eq!(answer.request_id, request_id, "answer to the request just sent: {answer:?}");
        answer.body.expect("answer without a body")
    }

    /// Sends `join` and returns the answer, which must be `Joined`.
    pub async fn join(&mut self, request_id: u32, join: v1::Join) -> v1::Joined {
        match self.request(request_id, v1::client_frame::Body::Join(join)).await {
            v1::server_frame::Body::Joined(j) => j,
            other => panic!("join answered with {other:?}"),
        }
    }

    /// Accepts the next unidirectional stream the server opens and reads its
    /// first frame, which must be a `RoomStreamStart`; returns the room it
    /// names and the stream.
    pub async fn accept_room_stream(&self) -> (String, FrameReader) {
        let recv = tokio::time::timeout(WAIT, self.conn.accept_uni())
            .await
            .expect("timed out waiting for a room stream")
            .expect("connection ended");
        let mut reader = FrameReader::new(recv);
        match reader.room_frame().await {
            Some(v1::RoomFrame { body: Some(v1::room_frame::Body::Start(s)) }) => (s.room, reader),
            other => panic!("a room stream starts with RoomStreamStart, got {other:?}"),
        }
    }
}

/// Waits for the first event for which `pick` returns `Some`, skipping others.
/// Panics after [`WAIT`] or if the connection ends first.
pub async fn wait_for<T>(events: &mut Events, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("event stream ended");
        if let Some(t) = pick(&event) {
            return t;
        }
        if let Event::Disconnected { code, reason } = event {
            panic!("disconnected while waiting: {code:?} {reason}");
        }
    }
}

/// Waits for the next online count of `room` equal to `want`.
pub async fn wait_online(events: &mut Events, room: &str, want: u64) {
    wait_for(events, |e| match e {
        Event::OnlineCount { room: r, count } if r == room && *count == want => Some(()),
        _ => None,
    })
    .await
}

/// Collects the next `n` sequenced events, failing on any reported gap.
pub async fn sequenced(events: &mut Events, n: usize) -> Vec<roomcast_client::v1::RoomEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = wait_for(events, |e| match e {
            Event::Message(m) if m.seq > 0 => Some(m.clone()),
            Event::Gap { room, from, to } => panic!("gap in {room}: {from}..={to}"),
            _ => None,
        })
        .await;
        out.push(e);
    }
    out
}

/// Trust in every one of `nodes`' development certificates (each issued for
/// localhost), as roots: for a client that may move between them.
pub fn trust_all(nodes: &[&TestServer]) -> roomcast_client::Trust {
    use rustls::pki_types::pem::PemObject;
    let mut certs = Vec::new();
    for node in nodes {
        let pem = std::fs::read(&node.cert_path).unwrap();
        certs.extend(rustls::pki_types::CertificateDer::pem_slice_iter(&pem).map(Result::unwrap));
    }
    roomcast_client::Trust::Roots(certs)
}

/// The value of the Prometheus sample `name` (with its labels, as printed,
/// e.g. `roomcast_dropped_events_total{reason="lagged"}`) in `exposition`.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The text of a chat, host message or notice.
pub fn text(e: &roomcast_client::v1::RoomEvent) -> &str {
    use roomcast_client::v1::room_event::Kind;
    match &e.kind {
        Some(Kind::Chat(c)) => &c.text,
        Some(Kind::HostMessage(h)) => &h.text,
        Some(Kind::SystemNotice(n)) => &n.text,
        _ => "",
    }
}
