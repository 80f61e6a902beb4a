//! The wire contract (proto/roomcast/v1/roomcast.proto) as a client written
//! from it alone meets it: raw QUIC sessions, frame by frame, no SDK.

use std::time::Duration;

use roomcast_protocol::datagram::ClientDatagram;
use roomcast_protocol::{ErrorCode, MAX_DATAGRAM_BYTES, unix_ms, v1};
use roomcast_server::auth::Role;
use roomcast_tests::{FrameReader, RawSession, TestServer, WAIT};

use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

/// A node whose clients may stay silent for 20 s (5 s heartbeats): these
/// raw sessions send no heartbeats unless a test says so.
async fn node() -> TestServer {
    TestServer::start_with(|c| c.presence.heartbeat_interval_ms = 5_000).await
}

fn join(room: &str) -> v1::Join {
    v1::Join { room: room.into(), ..v1::Join::default() }
}

fn chat(room: &str, text: &str) -> Req {
    Req::SendChat(v1::SendChat { room: room.into(), text: text.into(), ..v1::SendChat::default() })
}

/// Sends a chat and returns the seq its acknowledgement assigns.
async fn send_chat(s: &mut RawSession, request_id: u32, room: &str, text: &str) -> u64 {
    match s.request(request_id, chat(room, text)).await {
        Resp::ChatAck(ack) => ack.seq,
        other => panic!("chat answered with {other:?}"),
    }
}

/// The next sequenced event on a room stream (ephemeral ones skipped);
/// `None` once the stream has ended.
async fn next_sequenced(stream: &mut FrameReader) -> Option<v1::RoomEvent> {
    while let Some(frame) = stream.room_frame().await {
        match frame.body {
            Some(v1::room_frame::Body::Event(e)) if e.seq > 0 => return Some(e),
            Some(v1::room_frame::Body::Event(_)) => {}
            other => panic!("unexpected room frame {other:?}"),
        }
    }
    None
}

/// A heartbeat datagram padded to exactly `len` bytes with an unknown field,
/// which a protobuf decoder skips: valid in every respect but its size.
fn heartbeat_of(len: usize) -> Vec<u8> {
    let mut wire =
        ClientDatagram::Heartbeat { client_time_ms: unix_ms(std::time::SystemTime::now()) }.encode().to_vec();
    // Field 15, length-delimited; a two-byte varint length (128..16,384).
    let pad = len - wire.len() - 3;
    assert!((128..16_384).contains(&pad));
    wire.extend_from_slice(&[(15 << 3) | 2, (pad as u8 & 0x7f) | 0x80, (pad >> 7) as u8]);
    wire.resize(len, b'x');
    assert_eq!(ClientDatagram::decode(wire.clone().into()).is_ok(), len <= MAX_DATAGRAM_BYTES);
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_stream_is_open_by_the_time_its_joined_answer_is_read() {
    let server = node().await;
    let mut s = server.raw_session("ann", Role::Viewer).await;
    let joined = s.join(2, join("lobby")).await;
    assert_eq!((joined.room.as_str(), joined.current_seq, joined.next_seq), ("lobby", 0, 1));
    // The server opens the stream before it writes the answer, so a client
    // must expect the stream (and its frames) first: here it is already
    // there to accept, without waiting.
    let recv = tokio::time::timeout(Duration::ZERO, s.conn.accept_uni())
        .await
        .expect("the room stream arrives with or before its Joined")
        .unwrap();
    let mut stream = FrameReader::new(recv);
    let start = stream.room_frame().await;
    let expected = v1::RoomStreamStart { room: "lobby".into() };
    assert_eq!(start, Some(v1::RoomFrame { body: Some(v1::room_frame::Body::Start(expected)) }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_open_one_bidirectional_stream_and_the_server_one_unidirectional_per_room() {
    let server = node().await;
    let mut s = server.raw_session("ben", Role::Viewer).await;
    // The server's transport parameters leave no room for a second
    // bidirectional stream or any unidirectional one: QUIC flow control
    // holds this client's attempts back.
    let wait = Duration::from_millis(500);
    assert!(tokio::time::timeout(wait, s.conn.open_bi()).await.is_err(), "a second control stream");
    assert!(tokio::time::timeout(wait, s.conn.open_uni()).await.is_err(), "a client unidirectional stream");

    // One stream per joined room, each named by its first frame.
    s.join(2, join("a")).await;
    s.join(3, join("b")).await;
    let (first, _a) = s.accept_room_stream().await;
    let (second, _b) = s.accept_room_stream().await;
    let mut rooms = [first, second];
    rooms.sort();
    assert_eq!(rooms, ["a", "b"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_joined_room_again_finishes_its_stream_and_opens_a_new_one() {
    let server = node().await;
    let mut s = server.raw_session("hana", Role::Host).await;
    let first = s.join(2, join("stage")).await;
    let (_, mut old) = s.accept_room_stream().await;
    assert_eq!(send_chat(&mut s, 3, "stage", "one").await, 1);
    assert_eq!(next_sequenced(&mut old).await.map(|e| e.seq), Some(1));

    // A rejoin that resumes after seq 1: answered like any resume.
    let resume = v1::Join { last_seq: Some(1), epoch: Some(first.epoch), ..join("stage") };
    let again = s.join(4, resume).await;
    assert!(again.resumed, "{again:?}");
    assert_eq!((again.current_seq, again.next_seq, again.online_count), (1, 2, 1));
    assert!(again.history.is_empty(), "nothing was missed");

    // The old stream ends, and a new one carries the room from here.
    assert_eq!(next_sequenced(&mut old).await, None, "the old stream is finished");
    let (room, mut new) = s.accept_room_stream().await;
    assert_eq!(room, "stage");
    assert_eq!(send_chat(&mut s, 5, "stage", "two").await, 2);
    assert_eq!(next_sequenced(&mut new).await.map(|e| e.seq), Some(2));

    // A rejoin refused for what it asks changes nothing: still joined, and
    // the stream carries on.
    let bad = Req::Join(v1::Join { filter: 99, ..join("stage") });
    match s.request(6, bad).await {
        Resp::Error(e) => assert_eq!(e.code, ErrorCode::ProtocolViolation.to_proto() as i32),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(send_chat(&mut s, 7, "stage", "three").await, 3);
    assert_eq!(next_sequenced(&mut new).await.map(|e| e.seq), Some(3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_quiet_connection_up_and_silence_ends_it_at_the_idle_timeout() {
    // 200 ms heartbeats and 3 missed ones: an idle timeout of 800 ms.
    let server = TestServer::start().await;
    let mut s = server.raw_session("quiet", Role::Viewer).await;
    s.join(2, join("hush")).await;
    let interval = Duration::from_millis(200);

    // Two seconds of nothing but heartbeats, well past the idle timeout.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut last_sent;
    loop {
        s.conn.send_datagram(ClientDatagram::Heartbeat { client_time_ms: 0 }.encode()).unwrap();
        last_sent = tokio::time::Instant::now();
        if last_sent >= until {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    assert!(s.conn.close_reason().is_none(), "closed while heartbeating: {:?}", s.conn.close_reason());

    // Then silence: QUIC's idle timeout (the node's 800 ms, the smaller of
    // the two peers' values) ends the connection, without a close frame.
    let reason = tokio::time::timeout(WAIT, s.conn.closed()).await.expect("still open after WAIT");
    let after = last_sent.elapsed();
    assert!(matches!(reason, quinn::ConnectionError::TimedOut), "{reason}");
    let expected = Duration::from_millis(800);
    assert!(
        after >= expected - interval / 2 && after < expected * 4,
        "timed out {after:?} after the last heartbeat"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_of_the_maximum_size_is_accepted() {
    let server = node().await;
    let mut s = server.raw_session("dee", Role::Viewer).await;
    assert!(s.conn.max_datagram_size().is_some_and(|m| m > MAX_DATAGRAM_BYTES), "the path carries it");
    s.conn.send_datagram(heartbeat_of(MAX_DATAGRAM_BYTES).into()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.join(2, join("r")).await;
    assert!(s.conn.close_reason().is_none(), "{:?}", s.conn.close_reason());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_over_the_maximum_size_closes_the_connection_with_frame_too_large() {
    let server = node().await;
    let s = server.raw_session("dee", Role::Viewer).await;
    s.conn.send_datagram(heartbeat_of(MAX_DATAGRAM_BYTES + 1).into()).unwrap();
    let code = match tokio::time::timeout(WAIT, s.conn.closed()).await.expect("server did not close") {
        quinn::ConnectionError::ApplicationClosed(c) => ErrorCode::from_code(c.error_code.into_inner()),
        other => panic!("closed without an application code: {other}"),
    };
    assert_eq!(code, Some(ErrorCode::FrameTooLarge));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_stream_is_advanced_over_trailing_left_out_events_without_waiting_for_the_next_shown_one()
{
    let server = node().await;
    let mut watcher = server.raw_session("wes", Role::Viewer).await;
    let host_only = v1::Join { filter: v1::JoinFilter::HostOnly as i32, ..join("show") };
    watcher.join(2, host_only).await;
    let (_, mut stream) = watcher.accept_room_stream().await;
    let mut talker = server.raw_session("tal", Role::Viewer).await;
    talker.join(2, join("show")).await;

    // Viewer chat is left out of a host-only view; no host message follows.
    assert_eq!(send_chat(&mut talker, 3, "show", "hi").await, 1);
    let sent = tokio::time::Instant::now();
    let frame = loop {
        match stream.room_frame().await.expect("room stream ended").body {
            Some(v1::room_frame::Body::Event(e)) if e.seq == 0 => {}
            other => break other,
        }
    };
    assert_eq!(frame, Some(v1::room_frame::Body::Advance(v1::SeqAdvance { seq: 1 })));
    // Within a batching window (20 ms here), give or take a loaded machine.
    assert!(sent.elapsed() < Duration::from_secs(1), "advanced after {:?}", sent.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carrying_history_stay_within_64_kib_and_say_where_the_rest_is() {
    let server = node().await;
    let mut host = server.raw_session("hal", Role::Host).await;
    let joined = host.join(2, join("big")).await;
    // About 130 KB of messages: twice what one server frame may carry. Every
    // frame below is read with the contract's 64 KiB bound.
    let long = "x".repeat(400);
    let total = 300;
    for i in 1..=total {
        assert_eq!(send_chat(&mut host, 2 + i as u32, "big", &format!("{i} {long}")).await, i);
    }

    // A fresh join: the newest `join_history` (20) events.
    let mut fresh = server.raw_session("fay", Role::Viewer).await;
    let j = fresh.join(2, join("big")).await;
    let seqs: Vec<u64> = j.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (total - 19..=total).collect::<Vec<_>>());
    assert_eq!((j.current_seq, j.next_seq, j.resumed), (total, total + 1, false));

    // A resume from the start: the oldest missed events that fit, then the
    // rest first on the room stream, from `next_seq`.
    let mut back = server.raw_session("bo", Role::Viewer).await;
    let resume = v1::Join { last_seq: Some(0), epoch: Some(joined.epoch), ..join("big") };
    let j = back.join(2, resume).await;
    assert!(j.resumed);
    let kept = j.history.len() as u64;
    assert!(kept > 0 && kept < total, "{kept} events in the answer");
    assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=kept).collect::<Vec<_>>());
    assert_eq!((j.current_seq, j.next_seq), (total, kept + 1));
    let (_, mut stream) = back.accept_room_stream().await;
    for seq in kept + 1..=total {
        assert_eq!(next_sequenced(&mut stream).await.map(|e| e.seq), Some(seq));
    }

    // A history page is cut to fit too; `truncated` says to ask again from
    // the last seq + 1, until the whole range is read.
    let mut reader = server.raw_session("rex", Role::Viewer).await;
    let (mut next, mut pages, mut read) = (1, 0, Vec::new());
    let mut cut_pages: Vec<Vec<v1::RoomEvent>> = Vec::new();
    let mut page_starts = Vec::new();
    loop {
        let range = v1::fetch_history::Range::Seq(v1::SeqRange { from: next, to: u64::MAX });
        let fetch = v1::FetchHistory { room: "big".into(), range: Some(range), limit: 0 };
        let page = match reader.request(2 + pages, Req::FetchHistory(fetch)).await {
            Resp::History(h) => h,
            other => panic!("fetch answered with {other:?}"),
        };
        pages += 1;
        read.extend(page.events.iter().map(|e| e.seq));
        page_starts.push(page.events.first().cloned());
        if !page.truncated {
            break;
        }
        cut_pages.push(page.events.clone());
        next = page.events.last().expect("a truncated page has events").seq + 1;
    }
    assert!(pages > 1, "130 KB do not fit one page");
    assert_eq!(read, (1..=total).collect::<Vec<_>>());
    // Each page cut by size is exactly what the contract's rule predicts: as
    // many events as keep the sum of their costs within 48 KiB, the next
    // one past it.
    for (i, page) in cut_pages.iter().enumerate() {
        let used: usize = page.iter().map(page_cost).sum();
        let next = page_starts[i + 1].as_ref().expect("the next page starts with an event");
        assert!(used <= PAGE_BUDGET, "page {i}: {used} bytes");
        assert!(used + page_cost(next) > PAGE_BUDGET, "page {i} stopped short: {used} + {}", page_cost(next));
    }
    // The resume's `Joined.history` above was cut by the same rule.
    let resumed: Vec<v1::RoomEvent> = read_resume_history(&server, &joined).await;
    let used: usize = resumed.iter().map(page_cost).sum();
    assert!(used <= PAGE_BUDGET, "{used} bytes in Joined.history");
    server.stop().await;
}

/// The contract's page budget: 48 KiB of event costs.
const PAGE_BUDGET: usize = 49_152;

/// What one event costs a page, by the contract's rule: its encoded length,
/// the varint of that length, and one byte.
fn page_cost(e: &v1::RoomEvent) -> usize {
    use prost::Message;
    let len = e.encoded_len();
    len + prost::length_delimiter_len(len) + 1
}

/// The history of a resume from the start of `joined`'s room.
async fn read_resume_history(server: &TestServer, joined: &v1::Joined) -> Vec<v1::RoomEvent> {
    let mut again = server.raw_session("ria", Role::Viewer).await;
    let resume = v1::Join { last_seq: Some(0), epoch: Some(joined.epoch), ..join("big") };
    again.join(2, resume).await.history
}
