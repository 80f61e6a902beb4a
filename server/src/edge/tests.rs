//! Drivers on both ends over real UDP on loopback: an echo server and
//! clients that send lines and wait for them back.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use rebinder::Rebinder;

mod rebinder;

const ALPN: &[u8] = b"edge-test";
/// A bound on how long a test waits for what must happen; never a
/// measurement.
const PATIENCE: Duration = Duration::from_secs(20);
/// Handshakes a client driver has in flight at once.
const HANDSHAKES: usize = 32;

/// TLS for both ends, and `idle` as both ends' idle timeout.
fn tls_idle(idle: Duration) -> (proto::ServerConfig, proto::ClientConfig) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let idle = |t: &mut proto::TransportConfig| {
        t.max_idle_timeout(Some(idle.try_into().unwrap()));
    };
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    let mut server = proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = proto::TransportConfig::default();
    idle(&mut t);
    server.transport_config(Arc::new(t));
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut client = proto::ClientConfig::new(Arc::new(crypto));
    let mut t = proto::TransportConfig::default();
    idle(&mut t);
    client.transport_config(Arc::new(t));
    (server, client)
}

/// Ends that wait 10 s before they give a silent peer up.
fn tls() -> (proto::ServerConfig, proto::ClientConfig) {
    tls_idle(Duration::from_secs(10))
}

fn loopback() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Reads what stream `id` has.
fn read_all(quic: &mut proto::Connection, id: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    read_stream(quic, id, |b| out.extend_from_slice(b));
    out
}

/// What the echo server saw.
#[derive(Default)]
struct Seen {
    admitted: usize,
    ended: usize,
    /// Connections whose peer address changed while open.
    moved: usize,
}

#[derive(Default)]
struct Echo {
    seen: Arc<Mutex<Seen>>,
}

struct EchoConn {
    remote: Option<SocketAddr>,
}

impl Handler for Echo {
    type State = EchoConn;
    type Command = ();

    fn admit(&mut self, incoming: &proto::Incoming, _now: Instant) -> Option<EchoConn> {
        self.seen.lock().unwrap().admitted += 1;
        Some(EchoConn { remote: Some(incoming.remote_address()) })
    }

    fn event(&mut self, link: &mut Link<'_, EchoConn>, event: Event) {
        let remote = link.quic.remote_address();
        if link.state.remote.is_some_and(|r| r != remote) {
            self.seen.lock().unwrap().moved += 1;
        }
        link.state.remote = Some(remote);
        match event {
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                while let Some(id) = link.quic.streams().accept(Dir::Bi) {
                    let bytes = read_all(link.quic, id);
                    let _ = link.quic.send_stream(id).write(&bytes);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                let bytes = read_all(link.quic, id);
                let _ = link.quic.send_stream(id).write(&bytes);
            }
            _ => {}
        }
    }

    fn ended(&mut self, _id: ConnId, _state: EchoConn, _quic: &proto::Connection) {
        self.seen.lock().unwrap().ended += 1;
    }

    fn command(&mut self, _core: &mut Core<EchoConn>, _command: (), _now: Instant) -> Flow {
        Flow::Stop
    }
}

/// Clients that each send `line {i}` on connecting and again whenever told
/// to, and count the lines that come back whole.
struct Lines {
    config: proto::ClientConfig,
    /// Where each client connects, by index.
    servers: Vec<SocketAddr>,
    /// The next client to connect, and handshakes in flight (at most
    /// `HANDSHAKES`: a burst of first packets would overflow the sockets'
    /// default buffers).
    next: usize,
    handshaking: usize,
    /// Lines echoed back, by client.
    echoed: Vec<usize>,
    /// Fired once every client has had `want` lines back.
    want: usize,
    done: Option<oneshot::Sender<()>>,
    /// How each client's connection ended, by client.
    ended: Vec<Option<String>>,
    ended_tx: Option<(usize, oneshot::Sender<()>)>,
    /// Send one more line this long after each echo.
    again_after: Option<Duration>,
    /// Where each connection's waker is handed once it is connected, for
    /// another task to wake; [`Handler::ready`] then sends one more line.
    wakers: Option<std::sync::mpsc::Sender<Waker>>,
}

struct LineConn {
    index: usize,
    stream: Option<StreamId>,
    got: Vec<u8>,
}

enum LinesCommand {
    /// Every client sends one more line.
    Again,
    /// Lines echoed back, all clients together.
    Count(oneshot::Sender<usize>),
    /// Lines echoed back, by client.
    Counts(oneshot::Sender<Vec<usize>>),
    /// Every connection is woken through [`Core::wake`].
    WakeAll,
    Stop,
}

impl Lines {
    fn new(
        config: proto::ClientConfig,
        servers: Vec<SocketAddr>,
        want: usize,
    ) -> (Self, oneshot::Receiver<()>) {
        let (done, rx) = oneshot::channel();
        let n = servers.len();
        let lines = Self {
            config,
            servers,
            next: 0,
            handshaking: 0,
            echoed: vec![0; n],
            want,
            done: Some(done),
            ended: vec![None; n],
            ended_tx: None,
            again_after: None,
            wakers: None,
        };
        (lines, rx)
    }

    fn send_line(link: &mut Link<'_, LineConn>) {
        let Some(id) = link.state.stream else { return };
        let line = format!("line {}\n", link.state.index);
        let _ = link.quic.send_stream(id).write(line.as_bytes());
    }
}

impl Handler for Lines {
    type State = LineConn;
    type Command = LinesCommand;

    fn event(&mut self, link: &mut Link<'_, LineConn>, event: Event) {
        match event {
            Event::Connected => {
                self.handshaking -= 1;
                link.state.stream = link.quic.streams().open(Dir::Bi);
                Self::send_line(link);
                if let Some(tx) = &self.wakers {
                    let _ = tx.send(link.waker().clone());
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                let bytes = read_all(link.quic, id);
                link.state.got.extend_from_slice(&bytes);
                let line = format!("line {}\n", link.state.index);
                while link.state.got.starts_with(line.as_bytes()) {
                    link.state.got.drain(..line.len());
                    let i = link.state.index;
                    self.echoed[i] += 1;
                    if let Some(after) = self.again_after {
                        let at = link.now + after;
                        link.wake_at(at);
                    }
                    if self.echoed.iter().all(|n| *n >= self.want)
                        && let Some(done) = self.done.take()
                    {
                        let _ = done.send(());
                    }
                }
            }
            Event::ConnectionLost { reason } => {
                if link.state.stream.is_none() {
                    self.handshaking -= 1;
                }
                self.ended[link.state.index] = Some(reason.to_string());
            }
            _ => {}
        }
    }

    fn wake(&mut self, link: &mut Link<'_, LineConn>) {
        Self::send_line(link);
    }

    fn ready(&mut self, link: &mut Link<'_, LineConn>) {
        Self::send_line(link);
    }

    fn ended(&mut self, _id: ConnId, state: LineConn, quic: &proto::Connection) {
        let e = &mut self.ended[state.index];
        e.get_or_insert_with(|| "drained".into());
        let st = quic.stats();
        e.as_mut().unwrap().push_str(&format!(" tx={} rx={}", st.udp_tx.datagrams, st.udp_rx.datagrams));
        if let Some((n, _)) = &self.ended_tx
            && self.ended.iter().filter(|e| e.is_some()).count() >= *n
            && let Some((_, tx)) = self.ended_tx.take()
        {
            let _ = tx.send(());
        }
    }

    fn command(&mut self, core: &mut Core<LineConn>, command: LinesCommand, now: Instant) -> Flow {
        match command {
            LinesCommand::Again => {
                let mut touched = Vec::new();
                for (id, quic, state) in core.iter_mut() {
                    if let Some(stream) = state.stream {
                        let line = format!("line {}\n", state.index);
                        let _ = quic.send_stream(stream).write(line.as_bytes());
                        touched.push(id);
                    }
                }
                for id in touched {
                    core.touch(id);
                }
                Flow::Continue
            }
            LinesCommand::Count(reply) => {
                let _ = reply.send(self.echoed.iter().sum());
                Flow::Continue
            }
            LinesCommand::Counts(reply) => {
                let _ = reply.send(self.echoed.clone());
                Flow::Continue
            }
            LinesCommand::WakeAll => {
                let ids: Vec<ConnId> = core.iter_mut().map(|(id, _, _)| id).collect();
                for id in ids {
                    core.wake(id);
                }
                Flow::Continue
            }
            LinesCommand::Stop => {
                core.close_all(now, 0u32.into(), b"bye");
                Flow::Stop
            }
        }
    }

    fn turn(&mut self, core: &mut Core<LineConn>, now: Instant) {
        while self.handshaking < HANDSHAKES && self.next < self.servers.len() {
            let index = self.next;
            self.next += 1;
            self.handshaking += 1;
            let state = LineConn { index, stream: None, got: Vec::new() };
            core.connect(now, self.config.clone(), self.servers[index], "localhost", state).unwrap();
        }
    }
}

struct Running<H: Handler> {
    tx: mpsc::Sender<H::Command>,
    task: JoinHandle<H>,
}

fn spawn<H: Handler + Send + 'static>(
    socket: std::net::UdpSocket,
    server: Option<proto::ServerConfig>,
    handler: H,
) -> (Running<H>, SocketAddr)
where
    H::State: Send,
    H::Command: Send,
{
    let driver = Driver::new(socket, server.map(Arc::new), handler).unwrap();
    let addr = driver.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    (Running { tx, task: tokio::spawn(driver.run(rx)) }, addr)
}

impl<H: Handler> Running<H> {
    /// Sends `command` (the handler's stop) and waits for the driver to hand
    /// its handler back.
    async fn stop(self, command: H::Command) -> H {
        assert!(self.tx.send(command).await.is_ok(), "the driver is running");
        self.task.await.unwrap()
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("{what} did not happen"))
}

#[tokio::test]
async fn many_connections_share_one_driver_on_each_end() {
    let (server_config, client_config) = tls();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (server, addr) = spawn(loopback(), Some(server_config), Echo { seen: seen.clone() });
    let (lines, done) = Lines::new(client_config, vec![addr; 300], 3);
    let lines = Lines { again_after: Some(Duration::from_millis(100)), ..lines };
    let (clients, _) = spawn(loopback(), None, lines);
    let finished = tokio::time::timeout(PATIENCE, done).await;
    let lines = clients.stop(LinesCommand::Stop).await;
    let short: Vec<(usize, usize, Option<String>)> = (0..300)
        .filter(|i| lines.echoed[*i] < 3)
        .map(|i| (i, lines.echoed[i], lines.ended[i].clone()))
        .collect();
    let admitted = seen.lock().unwrap().admitted;
    assert!(
        finished.is_ok(),
        "{} connections short of three echoes ({admitted} admitted): {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
    assert!(lines.echoed.iter().all(|n| *n >= 3), "{:?}", lines.echoed);
    assert!(lines.ended.iter().all(Option::is_none), "no connection ended before the stop");
    assert_eq!(seen.lock().unwrap().admitted, 300);
    // The clients' close reaches the server, which lets every connection go.
    within("the server drains every connection", async {
        while seen.lock().unwrap().ended < 300 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.stop(()).await;
}

#[tokio::test]
async fn a_wake_up_comes_when_asked_for() {
    let (server_config, client_config) = tls();
    let (server, addr) = spawn(loopback(), Some(server_config), Echo::default());
    // Each echo asks for a wake-up 50 ms later that sends the next line:
    // five echoes need four wake-ups.
    let (lines, done) = Lines::new(client_config, vec![addr; 20], 5);
    let lines = Lines { again_after: Some(Duration::from_millis(50)), ..lines };
    let (clients, _) = spawn(loopback(), None, lines);
    within("five echoes each, paced by wake-ups", done).await.unwrap();
    let lines = clients.stop(LinesCommand::Stop).await;
    assert!(lines.echoed.iter().all(|n| *n >= 5));
    server.stop(()).await;
}

/// Echoes counted so far, by client.
async fn counts(clients: &Running<Lines>) -> Vec<usize> {
    let (tx, rx) = oneshot::channel();
    assert!(clients.tx.send(LinesCommand::Counts(tx)).await.is_ok());
    rx.await.unwrap()
}

/// Waits until every client has had `want` echoes.
async fn until_echoed(clients: &Running<Lines>, want: usize) {
    within("the echoes", async {
        while counts(clients).await.iter().any(|n| *n < want) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waker_woken_from_another_thread_reaches_an_idle_connection() {
    let (server_config, client_config) = tls();
    let (server, addr) = spawn(loopback(), Some(server_config), Echo::default());
    let (wakers_tx, wakers) = std::sync::mpsc::channel();
    let (lines, done) = Lines::new(client_config, vec![addr; 10], 1);
    let lines = Lines { wakers: Some(wakers_tx), ..lines };
    let (clients, _) = spawn(loopback(), None, lines);
    within("one echo each", done).await.unwrap();
    // Idle now: no wake-up asked for, nothing to send, nothing to receive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wakers: Vec<Waker> = wakers.try_iter().collect();
    assert_eq!(wakers.len(), 10);
    // Woken from a thread outside the runtime, as a room or a watch would.
    std::thread::spawn(move || wakers.iter().for_each(Waker::wake_by_ref)).join().unwrap();
    until_echoed(&clients, 2).await;
    clients.stop(LinesCommand::Stop).await;
    server.stop(()).await;
}

#[tokio::test]
async fn a_command_wakes_idle_connections_through_core_wake() {
    let (server_config, client_config) = tls();
    let (server, addr) = spawn(loopback(), Some(server_config), Echo::default());
    let (lines, done) = Lines::new(client_config, vec![addr; 10], 1);
    let (clients, _) = spawn(loopback(), None, lines);
    within("one echo each", done).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(clients.tx.send(LinesCommand::WakeAll).await.is_ok());
    until_echoed(&clients, 2).await;
    clients.stop(LinesCommand::Stop).await;
    server.stop(()).await;
}

#[tokio::test]
async fn silent_connections_time_out_on_both_ends() {
    let (server_config, client_config) = tls_idle(Duration::from_millis(600));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (server, addr) = spawn(loopback(), Some(server_config), Echo { seen: seen.clone() });
    let (lines, done) = Lines::new(client_config, vec![addr; 20], 1);
    let (ended_tx, ended) = oneshot::channel();
    let lines = Lines { ended_tx: Some((20, ended_tx)), ..lines };
    let (clients, _) = spawn(loopback(), None, lines);
    within("one echo each", done).await.unwrap();
    // Nothing more is sent: the 600 ms idle timeout ends every connection,
    // on both ends, by the drivers' timers alone.
    within("the clients' connections end", ended).await.unwrap();
    within("the server's connections end", async {
        while seen.lock().unwrap().ended < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let lines = clients.stop(LinesCommand::Stop).await;
    for e in &lines.ended {
        assert!(e.as_deref().is_some_and(|e| e.contains("timed out")), "{e:?}");
    }
    server.stop(()).await;
}

#[tokio::test]
async fn a_connection_follows_its_client_to_a_new_address() {
    let (server_config, client_config) = tls();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (server, addr) = spawn(loopback(), Some(server_config), Echo { seen: seen.clone() });
    let relay = Rebinder::start(addr).await;
    let (lines, done) = Lines::new(client_config, vec![relay.addr], 1);
    let (clients, _) = spawn(loopback(), None, lines);
    within("the first echo", done).await.unwrap();
    relay.moved.store(true, Ordering::SeqCst);
    clients.tx.send(LinesCommand::Again).await.unwrap();
    within("the server sees the new address", async {
        while seen.lock().unwrap().moved == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The echo of the line sent from the new address comes back.
    within("the second echo", async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (reply, rx) = oneshot::channel();
            clients.tx.send(LinesCommand::Count(reply)).await.unwrap();
            if rx.await.unwrap() >= 2 {
                return;
            }
        }
    })
    .await;
    let lines = clients.stop(LinesCommand::Stop).await;
    assert_eq!(lines.ended[0], None, "the connection lived through the move");
    assert_eq!(seen.lock().unwrap().admitted, 1, "one connection, not a new one");
    server.stop(()).await;
}

#[tokio::test]
async fn a_client_whose_packets_stop_is_let_go_while_the_others_carry_on() {
    let (server_config, client_config) = tls_idle(Duration::from_millis(600));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (server, addr) = spawn(loopback(), Some(server_config), Echo { seen: seen.clone() });
    let relay = Rebinder::start(addr).await;
    // Client 0 behind the relay; clients 1..=5 direct. Every client sends a
    // line 100 ms after each echo, so the live ones never go idle.
    let mut servers = vec![relay.addr];
    servers.extend([addr; 5]);
    let (lines, done) = Lines::new(client_config, servers, 1);
    let lines = Lines { again_after: Some(Duration::from_millis(100)), ..lines };
    let (clients, _) = spawn(loopback(), None, lines);
    within("an echo each", done).await.unwrap();
    relay.dropping.store(true, Ordering::SeqCst);
    within("the server lets the silent client go", async {
        while seen.lock().unwrap().ended == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (reply, rx) = oneshot::channel();
    clients.tx.send(LinesCommand::Counts(reply)).await.unwrap();
    let before = rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (reply, rx) = oneshot::channel();
    clients.tx.send(LinesCommand::Counts(reply)).await.unwrap();
    let after = rx.await.unwrap();
    assert_eq!(before[0], after[0], "nothing more came back through the silent path");
    for i in 1..=5 {
        assert!(after[i] > before[i], "client {i} went on being echoed: {before:?} then {after:?}");
    }
    assert_eq!(seen.lock().unwrap().ended, 1, "only the silent client was let go");
    clients.stop(LinesCommand::Stop).await;
    server.stop(()).await;
}

#[tokio::test]
async fn in_a_group_a_moved_client_is_steered_back_to_its_driver() {
    let (server_config, client_config) = tls();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sockets = crate::endpoint::udp_sockets("127.0.0.1:0".parse().unwrap(), 0, 2).unwrap();
    let addr = sockets[0].local_addr().unwrap();
    assert_eq!(sockets[1].local_addr().unwrap(), addr, "one address");
    let handlers = vec![Echo { seen: seen.clone() }, Echo { seen: seen.clone() }];
    let steered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = steered.clone();
    let on_steer: Steered = Arc::new(move || {
        count.fetch_add(1, Ordering::Relaxed);
    });
    let drivers = Driver::group(sockets, Some(Arc::new(server_config)), handlers, on_steer).unwrap();
    let mut servers = Vec::new();
    for driver in drivers {
        let (tx, rx) = mpsc::channel(4);
        servers.push(Running { tx, task: tokio::spawn(driver.run(rx)) });
    }
    // Twenty clients, each behind a relay of its own: the kernel spreads
    // their addresses over the two sockets, before and after each moves.
    let mut relays = Vec::new();
    for _ in 0..20 {
        relays.push(Rebinder::start(addr).await);
    }
    let (lines, done) = Lines::new(client_config, relays.iter().map(|r| r.addr).collect(), 1);
    let (clients, _) = spawn(loopback(), None, lines);
    within("an echo each", done).await.unwrap();
    for r in &relays {
        r.moved.store(true, Ordering::SeqCst);
    }
    clients.tx.send(LinesCommand::Again).await.unwrap();
    within("a second echo each, from the new addresses", async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (reply, rx) = oneshot::channel();
            clients.tx.send(LinesCommand::Counts(reply)).await.unwrap();
            if rx.await.unwrap().iter().all(|n| *n >= 2) {
                return;
            }
        }
    })
    .await;
    let lines = clients.stop(LinesCommand::Stop).await;
    assert!(lines.ended.iter().all(Option::is_none), "every connection lived through its move");
    assert_eq!(seen.lock().unwrap().admitted, 20, "no client had to connect again");
    // With twenty independent moves over two sockets, some land on the
    // other driver's socket (all staying put has odds of one in a million).
    assert!(steered.load(Ordering::Relaxed) > 0, "no datagram was steered");
    for s in servers {
        s.stop(()).await;
    }
}
