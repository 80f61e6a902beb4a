//! Draining a node: what was acknowledged before the drain reaches every
//! viewer before its connection closes, `/readyz` turns 503, clients are told
//! `SERVER_DRAINING` with a retry-after hint and the SDK moves to the next
//! address in its list and rejoins; SIGTERM drains the real binary the same
//! way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roomcast_client::{Backoff, Client, ClientConfig, Event, Events, Trust};
use roomcast_protocol::ErrorCode;
use roomcast_server::auth::Role;
use roomcast_tests::binary::{server_binary, wait_child};
use roomcast_tests::{TestServer, WAIT, sequenced, text, wait_for};

/// Every event up to the end of the session (reconnection off), with a bound.
async fn until_disconnected(events: &mut Events) -> (Vec<Event>, Option<ErrorCode>, String) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("timed out waiting for the end of the session")
            .expect("event stream ended before Disconnected");
        if let Event::Disconnected { code, reason } = event {
            return (seen, code, reason);
        }
        seen.push(event);
    }
}

#[tokio::test]
async fn a_drain_delivers_everything_acknowledged_before_closing_and_readyz_turns_503() {
    // A wide batching window: acknowledged chats sit in the room for up to
    // 300 ms before they go out, so closing at once would lose them.
    let node = TestServer::start_with(|c| {
        c.room.batch_window_ms = 300;
        c.room.max_batch_window_ms = 300;
        c.drain.settle_ms = 1_500;
        c.drain.retry_after_ms = 4_000;
    })
    .await;
    let no_reconnect = |c: &mut ClientConfig| c.reconnect = None;
    let mut viewers = Vec::new();
    for i in 0..3 {
        let (client, events) = node.connect_with(&format!("viewer-{i}"), Role::Viewer, no_reconnect).await;
        client.join("live").await.unwrap();
        viewers.push((client, events));
    }
    let (host, _host_events) = node.connect_with("host", Role::Host, no_reconnect).await;
    host.join("live").await.unwrap();
    assert_eq!(node.http_get("/readyz").await.0, 200, "ready while serving");

    let mut acked = Vec::new();
    for i in 0..20 {
        let ack = host.send_chat("live", &format!("m{i}")).await.unwrap();
        acked.push(ack.seq);
    }
    let started = Instant::now();
    assert!(node.drain().start(), "the first start begins the drain");
    let (status, body) = node.http_get("/readyz").await;
    assert_eq!((status, body.as_str()), (503, "draining\n"), "not ready once draining");
    assert_eq!(node.http_get("/healthz").await.0, 200, "alive while draining");
    assert!(
        roomcast_tests::metric(&node.scrape().await, "roomcast_draining") == Some(1.0),
        "the drain is visible in the metrics"
    );
    assert!(!node.drain().start(), "a second start changes nothing");

    for (_, events) in &mut viewers {
        let (seen, code, reason) = until_disconnected(events).await;
        let got: Vec<u64> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.seq > 0 => Some(m.seq),
                _ => None,
            })
            .collect();
        assert_eq!(got, acked, "every acknowledged chat arrives, in order, before the close");
        assert_eq!(code, Some(ErrorCode::ServerDraining), "{reason}");
        assert!(reason.contains("retry_after_ms=4000"), "the close carries the hint: {reason}");
    }
    node.finished().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "within the drain bound: {:?}", started.elapsed());
}

#[tokio::test]
async fn the_sdk_moves_to_the_next_address_at_once_and_rejoins() {
    let tweak = |c: &mut roomcast_server::Config| {
        c.drain.settle_ms = 300;
        c.drain.retry_after_ms = 60_000;
    };
    let a = TestServer::start_with(tweak).await;
    // Node B takes the tokens node A does (the platform's one secret).
    let b = TestServer::start_with(|c| {
        tweak(c);
        c.auth.hs256_secret = Some(a.secret.clone());
    })
    .await;
    let token = a.token("viewer", Role::Viewer);
    // Each node has its own development certificate, issued for localhost:
    // trust both as roots rather than pinning one.
    let mut config = ClientConfig::new(a.addr, token, roomcast_tests::trust_all(&[&a, &b]));
    config.alternates = vec![b.addr];
    config.reconnect = Some(Backoff { initial: Duration::from_millis(100), ..Backoff::default() });

    let (viewer, mut events) = Client::connect(config).await.unwrap();
    viewer.join("live").await.unwrap();
    let (host_a, _ha) = a.connect("host-a", Role::Host).await;
    host_a.join("live").await.unwrap();
    host_a.send_chat("live", "on a").await.unwrap();
    assert_eq!(text(&sequenced(&mut events, 1).await[0]), "on a");

    a.drain().start();
    let (server, delay, code, reason) = wait_for(&mut events, |e| match e {
        Event::Reconnecting { server, delay, code, reason, .. } => {
            Some((*server, *delay, *code, reason.clone()))
        }
        _ => None,
    })
    .await;
    assert_eq!(code, Some(ErrorCode::ServerDraining), "{reason}");
    assert_eq!((server, delay), (b.addr, Duration::ZERO), "the other node, at once");
    wait_for(&mut events, |e| matches!(e, Event::Reconnected { .. }).then_some(())).await;
    // Node B has no history of the room (history lives in one process): the
    // resume says it is incomplete rather than pretending otherwise.
    let complete = wait_for(&mut events, |e| match e {
        Event::Resumed { room, complete, .. } if room == "live" => Some(*complete),
        _ => None,
    })
    .await;
    assert!(!complete, "a node without the room's history cannot resume it completely");
    assert_eq!(viewer.server(), b.addr);

    let host_token = a.token("host-b", Role::Host);
    let (host_b, _hb) = Client::connect(b.client_config(host_token)).await.unwrap();
    host_b.join("live").await.unwrap();
    host_b.send_chat("live", "on b").await.unwrap();
    let next = wait_for(&mut events, |e| match e {
        Event::Message(m) if m.seq > 0 => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(text(&next), "on b", "the rejoined room is live on the new node");
    a.finished().await.unwrap();
}

/// The `roomcast-server` binary of this build, rebuilt if needed (bounded).
/// Starts `binary` on a loopback port with `secret`, its data in `dir`, no
/// HTTP listeners, and `config` if given; returns it with the address and
/// certificate fingerprint it printed.
async fn spawn_server(
    binary: &std::path::Path,
    dir: &std::path::Path,
    secret: &str,
    config: Option<&std::path::Path>,
) -> (Child, std::net::SocketAddr, String) {
    let mut command = Command::new(binary);
    command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--admin-listen", "off"]);
    command.args(["--token-secret", secret]).arg("--data-dir").arg(dir);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command.env("ROOMCAST_LOG", "warn").stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (addr, fingerprint) = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(|| started(stdout)))
        .await
        .expect("the server did not start")
        .unwrap();
    (child, addr, fingerprint)
}

/// The address and certificate fingerprint a starting `roomcast-server`
/// prints: "roomcast listening on ADDR (…)" and "… (sha256 FINGERPRINT)".
/// Its output is read to the end afterwards, so it never blocks on the pipe.
fn started(stdout: std::process::ChildStdout) -> (std::net::SocketAddr, String) {
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut fingerprint) = (None, None);
    while addr.is_none() || fingerprint.is_none() {
        let line = lines.next().expect("the server exited while starting").unwrap();
        if let Some(rest) = line.strip_prefix("roomcast listening on ") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some((_, fp)) = line.rsplit_once("(sha256 ") {
            fingerprint = Some(fp.trim_end_matches(')').to_string());
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (addr.unwrap(), fingerprint.unwrap())
}

#[tokio::test]
async fn sigterm_drains_the_server_binary_and_it_exits_0() {
    let binary = tokio::task::spawn_blocking(server_binary).await.unwrap();
    let dir = std::env::temp_dir().join(format!("roomcast-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let secret = "sigterm-secret";
    let (mut child, addr, fingerprint) = spawn_server(&binary, &dir, secret, None).await;

    let token = roomcast_server::auth::mint_hs256(
        secret.as_bytes(),
        "viewer",
        "viewer",
        Role::Viewer,
        Duration::from_secs(600),
    );
    let mut config = ClientConfig::new(addr, token, Trust::fingerprint(&fingerprint).unwrap());
    config.reconnect = None;
    let (client, mut events) = Client::connect(config).await.unwrap();
    client.join("live").await.unwrap();

    let started = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let (_, code, reason) = until_disconnected(&mut events).await;
    assert_eq!(code, Some(ErrorCode::ServerDraining), "told of the drain, not timed out: {reason}");
    assert!(reason.contains("retry_after_ms="), "{reason}");
    let status = tokio::task::spawn_blocking(move || wait_child(&mut child, Duration::from_secs(12)))
        .await
        .unwrap()
        .expect("the server did not exit within its drain bound");
    assert!(status.success(), "a drained server exits 0: {status}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a drain costs: `viewers` connections in rooms of 100, each room's
/// host sends 10 acknowledged chats, then SIGTERM. Prints the time until
/// every viewer was told `SERVER_DRAINING`, until the process exited, and
/// the acknowledged chats some viewer never received. Run in release:
/// `ROOMCAST_DRAIN_VIEWERS=5000 cargo test --release -p roomcast-tests
/// --test drain -- --ignored --nocapture drain_cost`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run it in release"]
async fn drain_cost() {
    let viewers: usize =
        std::env::var("ROOMCAST_DRAIN_VIEWERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let binary = tokio::task::spawn_blocking(server_binary).await.unwrap();
    let dir = std::env::temp_dir().join(format!("roomcast-drain-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(&config, "[room]\nchat_budget_per_sec = 0\nuser_chat_per_sec = 0.0\n").unwrap();
    let secret = "drain-cost-secret";
    let (mut child, addr, fingerprint) = spawn_server(&binary, &dir, secret, Some(&config)).await;
    let token = |user: &str, role| {
        roomcast_server::auth::mint_hs256(secret.as_bytes(), user, user, role, Duration::from_secs(3600))
    };
    // Client sockets with large buffers, as the load generator's: the closes
    // of thousands of connections arrive in one burst.
    let endpoints: Vec<quinn::Endpoint> = (0..16)
        .map(|_| {
            let socket =
                roomcast_server::endpoint::udp_socket("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
            let runtime = std::sync::Arc::new(quinn::TokioRuntime);
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).unwrap()
        })
        .collect();
    let config_for = |i: usize, user: &str, role| {
        let mut c = ClientConfig::new(addr, token(user, role), Trust::fingerprint(&fingerprint).unwrap());
        c.reconnect = None;
        c.endpoint = Some(endpoints[i % endpoints.len()].clone());
        c
    };
    let rooms = viewers.div_ceil(100);
    let open = Instant::now();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..viewers {
        let config = config_for(i, &format!("v{i}"), Role::Viewer);
        let limit = limit.clone();
        connecting.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let (client, events) = Client::connect(config).await.unwrap();
            client.join(&format!("r{}", i % rooms)).await.unwrap();
            (i, client, events)
        });
    }
    let mut sessions = Vec::new();
    while let Some(done) = connecting.join_next().await {
        sessions.push(done.unwrap());
    }
    eprintln!("{viewers} viewers in {rooms} rooms joined in {:?}", open.elapsed());
    let mut acked = vec![Vec::new(); rooms];
    // Kept joined: hosts are drained like everyone else.
    let mut hosts = Vec::new();
    for (r, seqs) in acked.iter_mut().enumerate() {
        let (host, _events) = Client::connect(config_for(r, &format!("h{r}"), Role::Host)).await.unwrap();
        host.join(&format!("r{r}")).await.unwrap();
        for m in 0..10 {
            seqs.push(host.send_chat(&format!("r{r}"), &format!("m{m}")).await.unwrap().seq);
        }
        hosts.push(host);
    }
    let killed_at = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = wait_child(&mut child, Duration::from_secs(30));
        (status, killed_at.elapsed())
    });
    let mut watching = tokio::task::JoinSet::new();
    for (i, client, mut events) in sessions {
        let want = acked[i % rooms].clone();
        watching.spawn(async move {
            let mut seen = Vec::new();
            let mut code = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
                if let Event::Disconnected { code: c, .. } = event {
                    code = c;
                    break;
                }
                seen.push(event);
            }
            drop(client);
            let got: std::collections::HashSet<u64> = seen
                .iter()
                .filter_map(|e| match e {
                    Event::Message(m) => Some(m.seq),
                    _ => None,
                })
                .collect();
            let lost = want.iter().filter(|s| !got.contains(s)).count();
            (lost, code == Some(ErrorCode::ServerDraining), Instant::now())
        });
    }
    let (mut lost, mut draining, mut last) = (0, 0, killed_at);
    let mut ends = Vec::new();
    while let Some(done) = watching.join_next().await {
        let (l, d, at) = done.unwrap();
        lost += l;
        draining += usize::from(d);
        last = last.max(at);
        ends.push(at - killed_at);
    }
    ends.sort();
    eprintln!("told of the drain: median {:?}, p99 {:?}", ends[ends.len() / 2], ends[ends.len() * 99 / 100]);
    let (status, exit_after) = exited.await.unwrap();
    let status = status.expect("the server did not exit");
    eprintln!(
        "drain of {viewers} viewers (+{rooms} hosts): all told SERVER_DRAINING after {:?} ({draining} of {viewers}), \
         process exited {status} after {exit_after:?}; acknowledged chats lost: {lost} of {}",
        last - killed_at,
        viewers * 10,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(lost, 0);
    assert_eq!(draining, viewers);
}

/// A session that is in no room and sends nothing (a heartbeat interval of
/// a minute, so no presence check of the node's wakes it) is closed by a
/// drain as soon as the drain starts, with its control stream finished and
/// `SERVER_DRAINING`, not left until the settle time runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_in_no_room_is_closed_at_once_by_a_drain() {
    let node = TestServer::start_with(|c| {
        c.presence.heartbeat_interval_ms = 60_000;
        c.drain.settle_ms = 20_000;
        c.drain.timeout_secs = 30;
    })
    .await;
    let mut raw = node.raw_session("idle", Role::Viewer).await;
    // Idle: everything the handshake and the hello started is done.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(node.drain().start());
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.conn.closed())
        .await
        .expect("the idle session was not closed within 5 s of the drain (the settle time is 20 s)");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), u64::from(ErrorCode::ServerDraining.to_code()), "{c:?}");
        }
        other => panic!("closed with {other:?}"),
    }
    assert!(raw.control.server_frame().await.is_none(), "the control stream was finished first");
    node.finished().await.unwrap();
}
