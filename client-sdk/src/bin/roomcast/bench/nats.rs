//! `roomcast bench fanout --peer nats`: the same fan-out against a NATS
//! server, so the node's figures sit next to a peer's measured the same way
//! on the same machine: one publisher, N subscribers of one subject, stamped
//! payloads, the server's CPU time from /proc.
//!
//! It speaks NATS's text protocol over TCP itself (`CONNECT`, `SUB`, `PUB`,
//! `PING`/`PONG` out; `INFO`, `MSG`, `PING`, `PONG`, `+OK`, `-ERR` in), so the
//! generator pays no client library's overhead beyond reading the sockets.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use super::{BenchArgs, Received, Report, Usage, bar, hold, latency_rows, now_us, round2};

/// The largest `MSG` payload a subscriber accepts (NATS's default maximum).
const MAX_PAYLOAD: usize = 1 << 20;

/// What a NATS server sends a client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ServerOp {
    Msg(Bytes),
    Ping,
    Pong,
    Ok,
    Info,
    Err(String),
}

/// Takes the next complete operation off `buf`; `Ok(None)` if more bytes
/// are needed.
pub(super) fn next_op(buf: &mut BytesMut) -> Result<Option<ServerOp>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("control line too long".into());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..eol]).map_err(|_| "control line is not UTF-8".to_string())?;
    let op = line.split_ascii_whitespace().next().unwrap_or("").to_ascii_uppercase();
    let simple = |buf: &mut BytesMut, op| {
        buf.advance(eol + 2);
        Ok(Some(op))
    };
    match op.as_str() {
        "MSG" => {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len: usize = line
                .split_ascii_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line: {line}"))?;
            if len > MAX_PAYLOAD {
                return Err(format!("MSG payload of {len} bytes"));
            }
            if buf.len() < eol + 2 + len + 2 {
                return Ok(None);
            }
            buf.advance(eol + 2);
            let payload = buf.split_to(len).freeze();
            if &buf[..2] != b"\r\n" {
                return Err("MSG payload not followed by CRLF".into());
            }
            buf.advance(2);
            Ok(Some(ServerOp::Msg(payload)))
        }
        "PING" => simple(buf, ServerOp::Ping),
        "PONG" => simple(buf, ServerOp::Pong),
        "+OK" => simple(buf, ServerOp::Ok),
        "INFO" => simple(buf, ServerOp::Info),
        "-ERR" => {
            let why = line.trim_start().get(4..).unwrap_or("").trim().to_string();
            simple(buf, ServerOp::Err(why))
        }
        _ => Err(format!("unknown operation: {line}")),
    }
}

/// A payload of `size` bytes: the send time, then the message's number.
fn stamped(seq: u64, size: usize) -> Vec<u8> {
    let mut s = format!("{:>15}|{seq:>10}|", now_us());
    while s.len() < size {
        s.push('x');
    }
    s.into_bytes()
}

/// The send time and number in a payload made by [`stamped`].
pub(super) fn stamp_and_seq(payload: &[u8]) -> Option<(u64, u64)> {
    let sent = std::str::from_utf8(payload.get(..15)?).ok()?.trim().parse().ok()?;
    let seq = std::str::from_utf8(payload.get(16..26)?).ok()?.trim().parse().ok()?;
    Some((sent, seq))
}

/// A NATS server to measure, and maybe one we started.
struct Peer {
    addr: SocketAddr,
    pid: Option<String>,
    child: Option<Child>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Peer {
    async fn new(args: &BenchArgs, server: SocketAddr) -> Result<Self> {
        if !args.spawn {
            return Ok(Self { addr: server, pid: args.server_pid.map(|p| p.to_string()), child: None });
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = match &args.server_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&args.nats_server);
                c
            }
            None => Command::new(&args.nats_server),
        };
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            cmd.spawn().with_context(|| format!("starting {} (is it installed?)", args.nats_server))?;
        let mut peer = Self { addr, pid: Some(child.id().to_string()), child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            if let Some(Ok(Some(status))) = peer.child.as_mut().map(Child::try_wait) {
                bail!("the spawned nats-server exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("the spawned nats-server did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(peer)
    }

    /// A report on this server, headed with the scenario and where it ran.
    fn report(&self, title: &str, scenario: &str) -> Report {
        let mut report = Report::new(title);
        report.add("scenario", scenario);
        report.add("peer", "nats");
        report.add("server", self.addr.to_string());
        report.add("server_pid", self.pid.clone().map(serde_json::Value::from).unwrap_or_default());
        report
    }
}

/// Opens a connection, sends `CONNECT` and `then`, and waits for the `PONG`
/// that answers the trailing `PING`: whatever `then` asked for is in force.
async fn open(addr: SocketAddr, then: &str) -> Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"roomcast-bench\"}}\r\n{then}PING\r\n"
    );
    s.write_all(hello.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(op) = next_op(&mut buf).map_err(anyhow::Error::msg)? {
            match op {
                ServerOp::Pong => return Ok((s, buf)),
                ServerOp::Err(e) => bail!("nats: {e}"),
                _ => {}
            }
        }
        if s.read_buf(&mut buf).await? == 0 {
            bail!("nats closed the connection");
        }
    }
}

/// Reads one subscriber's messages until `stop`. Numbers above `max_seq`
/// are not this run's (another publisher on the subject) and are ignored,
/// which also bounds the set of numbers seen.
async fn subscribe(
    mut s: TcpStream,
    mut buf: BytesMut,
    max_seq: u64,
    mut stop: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
) -> Received {
    let mut r = Received::default();
    let mut last = 0;
    loop {
        loop {
            match next_op(&mut buf) {
                Ok(Some(ServerOp::Msg(payload))) => {
                    let Some((sent, seq)) = stamp_and_seq(&payload).filter(|(_, n)| *n <= max_seq) else {
                        continue;
                    };
                    if !r.mark(seq) {
                        r.duplicates += 1;
                        continue;
                    }
                    r.latencies.push(now_us().saturating_sub(sent));
                    r.delivered += 1;
                    if seq < last {
                        r.out_of_order += 1;
                    }
                    last = last.max(seq);
                }
                Ok(Some(ServerOp::Ping)) => {
                    if s.write_all(b"PONG\r\n").await.is_err() {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    r.disconnected = true;
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return r;
                }
            }
        }
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return r,
            n = s.read_buf(&mut buf) => n,
        };
        if !matches!(read, Ok(n) if n > 0) {
            if !*stop.borrow() {
                r.disconnected = true;
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            return r;
        }
    }
}

/// This process's limit on open files (the soft limit), from /proc.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Refuses a run that needs more TCP connections than this process may open
/// files: each is a socket, and a run that hits the limit fails to connect
/// some and cannot read /proc either.
fn check_open_files(connections: usize) -> Result<()> {
    if let Some(limit) = open_files_limit()
        && connections as u64 + 64 > limit
    {
        bail!(
            "{connections} TCP connections need more open files than this process may have ({limit}); raise `ulimit -n`"
        );
    }
    Ok(())
}

/// Opens `n` subscribers (`concurrency` at a time), subscriber `i` to
/// `subject(i)`, each read by its own task until `stop` (counting messages
/// numbered up to `max_seq`); and how many could not connect.
async fn subscribers(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    max_seq: u64,
    subject: impl Fn(usize) -> String,
    stop: &watch::Receiver<bool>,
    dropped: &Arc<AtomicU64>,
) -> (Vec<tokio::task::JoinHandle<Received>>, u64) {
    let pb = bar(n as u64, "subscribing");
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..n {
        let (gate, sub) = (gate.clone(), format!("SUB {} 1\r\n", subject(i)));
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            open(addr, &sub).await
        });
    }
    let mut readers = Vec::with_capacity(n);
    let mut failures = 0u64;
    while let Some(opened) = opening.join_next().await {
        pb.inc(1);
        match opened {
            Ok(Ok((s, buf))) => {
                readers.push(tokio::spawn(subscribe(s, buf, max_seq, stop.clone(), dropped.clone())))
            }
            _ => failures += 1,
        }
    }
    pb.finish_and_clear();
    (readers, failures)
}

/// `idle` against NATS: `--connections` subscribers spread over `--rooms`
/// subjects, answering the server's pings (as NATS clients do), held for
/// `--duration` s.
pub(super) async fn idle(args: &BenchArgs, server: SocketAddr) -> Result<Report> {
    check_open_files(args.connections)?;
    let peer = Peer::new(args, server).await?;
    let mut report = peer.report("idle (NATS): connections held", "idle");
    report.add("connections", args.connections);
    report.add("rooms", args.rooms);
    report.add("hold_s", args.duration);
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let before = peer.pid.as_deref().and_then(super::proc_sample);
    let started = Instant::now();
    let rooms = args.rooms.max(1);
    let (readers, failures) = subscribers(
        peer.addr,
        args.connections,
        args.concurrency,
        0,
        |i| format!("{}.{}.{}", args.room, std::process::id(), i % rooms),
        &stop,
        &dropped,
    )
    .await;
    report.add("ramp_s", round2(started.elapsed().as_secs_f64()));
    report.add("connect_failures", failures);
    let after_ramp = peer.pid.as_deref().and_then(super::proc_sample);
    let usage = Usage::start(peer.pid.as_deref(), true);
    let d = dropped.clone();
    hold(args.duration, "holding", move || format!("{} dropped", d.load(Ordering::Relaxed))).await;
    let dropped_now = dropped.load(Ordering::Relaxed);
    report.add("connections_held", readers.len() as u64 - dropped_now);
    report.add("connections_dropped", dropped_now);
    report.rss_per_connection(before, after_ramp, readers.len());
    usage.finish(&mut report, None);
    let _ = stop_tx.send(true);
    for r in readers {
        let _ = r.await;
    }
    Ok(report)
}

/// `fanout` against NATS: `--subscribers` subscribers of one subject, one
/// publisher at `--rate` messages/s of `--size` bytes for `--duration` s.
pub(super) async fn fanout(args: &BenchArgs, server: SocketAddr) -> Result<Report> {
    check_open_files(args.subscribers)?;
    let peer = Peer::new(args, server).await?;
    let mut report =
        peer.report(&format!("fanout (NATS): one publisher, {} subscribers", args.subscribers), "fanout");
    report.add("subscribers", args.subscribers);
    report.add("rate_per_s", args.rate);
    report.add("size_bytes", args.size);
    report.add("duration_s", args.duration);
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let rss_start = peer.pid.as_deref().and_then(super::proc_sample);
    // A subject of this run's own, and the most messages it can publish.
    let subject = format!("{}.{}.fanout", args.room, std::process::id());
    let max_seq = (args.rate * args.duration).ceil() as u64 + 1;
    let (readers, failures) = subscribers(
        peer.addr,
        args.subscribers,
        args.concurrency,
        max_seq,
        |_| subject.clone(),
        &stop,
        &dropped,
    )
    .await;
    report.add("connect_failures", failures);
    let (mut publisher, _) = open(peer.addr, "").await.context("publisher")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = Usage::start(peer.pid.as_deref(), true);
    let pb = bar((args.rate * args.duration).round() as u64, "publishing");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let (mut sent, mut errors) = (0u64, 0u64);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let payload = stamped(sent + 1, args.size);
        let mut frame = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        match publisher.write_all(&frame).await {
            Ok(()) => sent += 1,
            Err(_) => errors += 1,
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    hold(args.drain, "draining", String::new).await;
    let _ = stop_tx.send(true);
    // A reader that did not come back (it panicked) still counts: what it
    // should have received is lost.
    let subscribed = readers.len() as u64;
    let mut received = Vec::with_capacity(readers.len());
    for r in readers {
        if let Ok(r) = r.await {
            received.push(r);
        }
    }
    let deliveries: u64 = received.iter().map(|r| r.delivered).sum();
    let expected = sent * subscribed;
    report.add("readers_failed", subscribed - received.len() as u64);
    report.add("published", sent);
    report.add("publish_errors", errors);
    let seen: Vec<&Received> = received.iter().collect();
    report.delivery_rows(expected, deliveries, expected.saturating_sub(deliveries), args.duration, &seen);
    report.add("disconnected", dropped.load(Ordering::Relaxed));
    latency_rows(&mut report, "", received.iter().flat_map(|r| r.latencies.iter().copied()).collect());
    usage.finish(&mut report, Some(deliveries));
    report.rss_growth(rss_start, peer.pid.as_deref().and_then(super::proc_sample));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Takes every operation off `input` fed in pieces cut at `cuts`.
    fn ops_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<ServerOp>, bool) {
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        for end in ends {
            buf.extend_from_slice(&input[at..end.max(at)]);
            at = end.max(at);
            loop {
                match next_op(&mut buf) {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => break,
                    Err(_) => return (ops, true),
                }
            }
        }
        (ops, false)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_parser_or_the_stamp_reader(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ops_in_pieces(&data, &[]);
            let _ = stamp_and_seq(&data);
        }

        #[test]
        fn how_the_bytes_are_cut_does_not_change_the_operations(
            payloads in proptest::collection::vec("[a-z ]{0,40}", 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut wire = b"INFO {}\r\nPING\r\n".to_vec();
            for p in &payloads {
                wire.extend_from_slice(format!("MSG s 1 {}\r\n{p}\r\n", p.len()).as_bytes());
            }
            let whole = ops_in_pieces(&wire, &[]);
            prop_assert_eq!(&whole, &ops_in_pieces(&wire, &cuts));
            prop_assert_eq!(whole.0.len(), payloads.len() + 2);
        }
    }

    #[test]
    fn operations_are_taken_whole_and_a_partial_one_waits_for_more() {
        let mut buf =
            BytesMut::from(&b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nMSG bench.fanout 1 5\r\nhello\r\nPI"[..]);
        assert_eq!(next_op(&mut buf), Ok(Some(ServerOp::Info)));
        assert_eq!(next_op(&mut buf), Ok(Some(ServerOp::Ok)));
        assert_eq!(next_op(&mut buf), Ok(Some(ServerOp::Msg(Bytes::from_static(b"hello")))));
        assert_eq!(next_op(&mut buf), Ok(None));
        buf.extend_from_slice(b"NG\r\nMSG s 1 reply.to 3\r\nab");
        assert_eq!(next_op(&mut buf), Ok(Some(ServerOp::Ping)));
        assert_eq!(next_op(&mut buf), Ok(None), "a payload not yet whole");
        buf.extend_from_slice(b"c\r\n-ERR 'Slow Consumer'\r\n");
        assert_eq!(next_op(&mut buf), Ok(Some(ServerOp::Msg(Bytes::from_static(b"abc")))));
        assert_eq!(next_op(&mut buf), Ok(Some(ServerOp::Err("'Slow Consumer'".into()))));
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_operations_are_errors() {
        assert!(next_op(&mut BytesMut::from(&b"MSG s 1 x\r\n"[..])).is_err());
        assert!(next_op(&mut BytesMut::from(&b"MSG s 1 2\r\nabXY"[..])).is_err());
        assert!(next_op(&mut BytesMut::from(&b"HELLO\r\n"[..])).is_err());
        assert!(next_op(&mut BytesMut::from(&b"MSG s 1 99999999\r\n"[..])).is_err());
        assert_eq!(
            next_op(&mut BytesMut::from(&b"MSG s\t1  3 \r\nabc\r\n"[..])),
            Ok(Some(ServerOp::Msg("abc".into())))
        );
    }

    #[test]
    fn this_process_knows_its_open_files_limit() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
        assert!(check_open_files(usize::MAX / 2).is_err());
        assert!(check_open_files(0).is_ok());
    }

    #[test]
    fn a_payload_carries_its_send_time_and_number() {
        let p = stamped(42, 120);
        assert_eq!(p.len(), 120);
        let (sent, seq) = stamp_and_seq(&p).expect("stamped");
        assert_eq!(seq, 42);
        assert!(sent <= now_us());
        assert_eq!(stamp_and_seq(b"short"), None);
        // A multi-byte character across a field boundary is not a stamp.
        let mut odd = "1".repeat(14).into_bytes();
        odd.extend_from_slice("é|".as_bytes());
        odd.extend_from_slice(&[b'0'; 20]);
        assert_eq!(stamp_and_seq(&odd), None);
    }
}
