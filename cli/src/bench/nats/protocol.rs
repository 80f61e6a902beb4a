//! The NATS client the peer runs use: NATS's text protocol over TCP
//! (`CONNECT`, `SUB`, `PUB`, `PING`/`PONG` out; `INFO`, `MSG`, `PING`,
//! `PONG`, `+OK`, `-ERR` in), stamped payloads, and subscribers that count
//! what they receive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::bench::delivery::{ReaderEnd, Readers, Received, now_us};
use crate::bench::progress::bar;

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
pub(super) fn stamped(seq: u64, size: usize) -> Vec<u8> {
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

/// Opens a connection, sends `CONNECT` and `then`, and waits for the `PONG`
/// that answers the trailing `PING`: whatever `then` asked for is in force.
pub(super) async fn open(addr: SocketAddr, then: &str) -> Result<(TcpStream, BytesMut)> {
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

/// Reads one subscriber's messages until the stop. Numbers above `max_seq`
/// are not this run's (another publisher on the subject) and are ignored,
/// which also bounds the set of numbers seen.
async fn subscribe(mut s: TcpStream, mut buf: BytesMut, max_seq: u64, end: ReaderEnd) -> Received {
    let ReaderEnd { mut stop, dropped, .. } = end;
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

/// Opens `n` subscribers (`concurrency` at a time), subscriber `i` to
/// `subject(i)`, each read by its own task until `readers` stop (counting
/// messages numbered up to `max_seq`); and how many could not connect.
pub(super) async fn subscribers(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    max_seq: u64,
    subject: impl Fn(usize) -> String,
    readers: &Readers,
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
    let mut tasks = Vec::with_capacity(n);
    let mut failures = 0u64;
    while let Some(opened) = opening.join_next().await {
        pb.inc(1);
        match opened {
            Ok(Ok((s, buf))) => tasks.push(tokio::spawn(subscribe(s, buf, max_seq, readers.end()))),
            _ => failures += 1,
        }
    }
    pb.finish_and_clear();
    (tasks, failures)
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
