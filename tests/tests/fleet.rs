//! The fleet's shared log against a real `redis-server` started on a free
//! port: nodes sequencing a room's events at once get one gap-free sequence
//! that every subscribed node sees in order, history holds the same bytes,
//! and after Redis restarts the nodes resubscribe and fill what they missed
//! from the stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use roomcast_protocol::{RoomId, v1};
use roomcast_server::cluster::{Arrival, Delivery, Fleet, Options, Orderer};
use roomcast_tests::redis::RedisServer;
use tokio::sync::mpsc;

/// A node's link and what it receives.
async fn node(redis: &RedisServer) -> (Fleet, mpsc::Receiver<Delivery>, Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(1024);
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let fleet = Fleet::connect(&Options::new(redis.url(), 1_000), tx, move || {
        d.fetch_add(1, Ordering::Relaxed);
    })
    .await
    .unwrap();
    (fleet, rx, dropped)
}

/// A chat event as a node encodes it: everything but `seq` and `message_id`.
fn chat(room: &RoomId, text: &str) -> Bytes {
    let event = v1::RoomEvent {
        room: room.to_string(),
        server_time_ms: 1,
        priority: v1::Priority::High as i32,
        kind: Some(v1::room_event::Kind::Chat(v1::Chat { text: text.into(), client_msg_id: String::new() })),
        ..Default::default()
    };
    event.encode_to_vec().into()
}

fn text(e: &v1::RoomEvent) -> &str {
    match &e.kind {
        Some(v1::room_event::Kind::Chat(c)) => &c.text,
        _ => "",
    }
}

/// Receives `room`'s events until `n` have been taken in order, filling
/// holes from the stream as a node's room would.
async fn follow(
    fleet: &Fleet,
    rx: &mut mpsc::Receiver<Delivery>,
    room: &RoomId,
    n: usize,
) -> Vec<v1::RoomEvent> {
    let mut orderer = Orderer::after(0);
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a delivery").unwrap();
        assert_eq!(&d.room, room);
        for e in d.events {
            match orderer.arrive(e.seq) {
                Arrival::Next => out.push(e),
                Arrival::Repeat => {}
                Arrival::Hole { from, to } => {
                    out.extend(fleet.replay(room, from, to).await.unwrap());
                    orderer.filled(to);
                    assert_eq!(orderer.arrive(e.seq), Arrival::Next);
                    out.push(e);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sequencing_at_once_get_one_gap_free_sequence_seen_in_order_everywhere() {
    let redis = RedisServer::start().await;
    let room = RoomId::new("live:1").unwrap();
    let (a, mut a_rx, _) = node(&redis).await;
    let (b, mut b_rx, _) = node(&redis).await;
    a.subscribe(&room).await.unwrap();
    b.subscribe(&room).await.unwrap();
    // The room's epoch, as a room following the fleet takes it first.
    assert_eq!(a.epoch(&room, 0xabc).await.unwrap(), 0xabc);
    assert_eq!(b.epoch(&room, 0xdef).await.unwrap(), 0xabc, "the first proposal wins");
    // Both nodes send batches at once: 10 batches of 5 each.
    let mut sends = Vec::new();
    for (name, fleet) in [("a", a.clone()), ("b", b.clone())] {
        let room = room.clone();
        sends.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for batch in 0..10 {
                let events: Vec<Bytes> =
                    (0..5).map(|i| chat(&room, &format!("{name}-{batch}-{i}"))).collect();
                firsts.push(fleet.sequence(&room, 0xabc, 0, &events, &[]).await.unwrap());
            }
            firsts
        }));
    }
    let mut epochs = Vec::new();
    for s in sends {
        epochs.extend(s.await.unwrap().into_iter().map(|s| s.epoch));
    }
    assert!(epochs.iter().all(|e| *e == "abc"), "one epoch for the room: {epochs:?}");
    let seen_a = follow(&a, &mut a_rx, &room, 100).await;
    let seen_b = follow(&b, &mut b_rx, &room, 100).await;
    let seqs: Vec<u64> = seen_a.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "gap-free, in order");
    assert_eq!(seen_a, seen_b, "every node sees the same events in the same order");
    assert!(seen_a.iter().all(|e| e.message_id == format!("abc-{}", e.seq)));
    // Each node's own batches kept their order inside the sequence.
    for name in ["a", "b"] {
        let mine: Vec<&str> = seen_a.iter().map(text).filter(|t| t.starts_with(name)).collect();
        let mut sorted = mine.clone();
        sorted.sort_by_key(|t| {
            let p: Vec<u32> = t.split('-').skip(1).map(|n| n.parse().unwrap()).collect();
            (p[0], p[1])
        });
        assert_eq!(mine, sorted);
    }
    assert_eq!(a.replay(&room, 1, 100).await.unwrap(), seen_a, "history holds what was published");
    assert_eq!(b.current_seq(&room).await.unwrap(), 100);
    // A node that is not subscribed hears nothing.
    let other = RoomId::new("live:2").unwrap();
    a.sequence(&other, 1, 0, &[chat(&other, "elsewhere")], &[]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), b_rx.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_nodes_resubscribe_and_fill_the_hole_from_the_stream() {
    let mut redis = RedisServer::start().await;
    let room = RoomId::new("live:restart").unwrap();
    let (a, mut a_rx, _) = node(&redis).await;
    let (b, _b_rx, _) = node(&redis).await;
    a.subscribe(&room).await.unwrap();
    b.epoch(&room, 7).await.unwrap();
    b.sequence(&room, 7, 0, &[chat(&room, "one"), chat(&room, "two")], &[]).await.unwrap();
    let before = follow(&a, &mut a_rx, &room, 2).await;
    assert_eq!(before.iter().map(text).collect::<Vec<_>>(), ["one", "two"]);

    redis.restart().await;
    // B's sends until it has reconnected fail; what it sends after counts.
    let mut sent = 0;
    for i in 0..200 {
        if b.sequence(&room, 7, 2, &[chat(&room, &format!("after-{i}"))], &[]).await.is_ok() {
            sent += 1;
            if sent == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent, 3, "B reconnected");
    assert_eq!(b.current_seq(&room).await.unwrap(), 5, "the sequence survived the restart");
    // A may have missed some of them while resubscribing: it fills the hole.
    let mut orderer = Orderer::after(2);
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while orderer.last() < 5 {
        match tokio::time::timeout_at(deadline, a_rx.recv()).await {
            Ok(Some(d)) => {
                for e in d.events {
                    match orderer.arrive(e.seq) {
                        Arrival::Next => after.push(e.seq),
                        Arrival::Repeat => {}
                        Arrival::Hole { from, to } => {
                            after.extend(a.replay(&room, from, to).await.unwrap().iter().map(|e| e.seq));
                            orderer.filled(to);
                            orderer.arrive(e.seq);
                            after.push(e.seq);
                        }
                    }
                }
            }
            // Nothing arrives until the next publish on a resubscribed
            // channel: read the tail from the stream.
            _ => {
                let last = a.current_seq(&room).await.unwrap();
                after.extend(a.replay(&room, orderer.last() + 1, last).await.unwrap().iter().map(|e| e.seq));
                orderer.filled(last);
            }
        }
    }
    assert_eq!(after, [3, 4, 5]);
    // Subscribed again: the next event arrives live.
    b.sequence(&room, 7, 5, &[chat(&room, "live again")], &[]).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), a_rx.recv()).await.unwrap().unwrap();
    assert_eq!(d.events.last().map(|e| e.seq), Some(6));
}

mod rooms_across_nodes {
    use roomcast_client::{ChatMessage, Event, HistoryRange};
    use roomcast_server::auth::Role;
    use roomcast_tests::{TestServer, sequenced, text};

    use super::*;

    async fn fleet_node(redis: &RedisServer) -> TestServer {
        let url = redis.url();
        TestServer::start_with(move |c| c.redis = Some(url)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_on_different_nodes_see_one_sequence_and_late_joiners_get_its_history() {
        let redis = RedisServer::start().await;
        let a = fleet_node(&redis).await;
        let b = fleet_node(&redis).await;
        let (host, _host_events) = a.connect("hana", Role::Host).await;
        host.join("show").await.unwrap();
        let (viewer_a, mut on_a) = a.connect("ann", Role::Viewer).await;
        viewer_a.join("show").await.unwrap();
        let (viewer_b, mut on_b) = b.connect("bob", Role::Viewer).await;
        viewer_b.join("show").await.unwrap();

        let mut acks = Vec::new();
        for i in 0..5 {
            acks.push(host.send_chat("show", &format!("from a {i}")).await.unwrap());
        }
        acks.push(viewer_b.send_chat("show", "from b").await.unwrap());
        let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "numbered by the fleet, in the order sent");
        let got_a = sequenced(&mut on_a, 6).await;
        let got_b = sequenced(&mut on_b, 6).await;
        assert_eq!(got_a.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(got_a, got_b, "both nodes' members got the same events");
        assert_eq!(text(&got_b[5]), "from b");
        assert_eq!(got_b[0].message_id, acks[0].message_id);

        // A third node's joiner gets the room's history from the fleet.
        let c = fleet_node(&redis).await;
        let (late, _late_events) = c.connect("cy", Role::Viewer).await;
        let joined = late.join("show").await.unwrap();
        assert_eq!(joined.current_seq, 6);
        assert_eq!(joined.history.iter().map(text).collect::<Vec<_>>()[5], "from b");
        let page = late.fetch_history("show", HistoryRange::Seq { from: 2, to: 3 }, 0).await.unwrap();
        assert_eq!(page.events.iter().map(text).collect::<Vec<_>>(), ["from a 1", "from a 2"]);
        let from_c =
            late.send(ChatMessage { room: "show".into(), text: "from c".into(), ..Default::default() });
        assert_eq!(from_c.await.unwrap().seq, 7);
        let seventh = roomcast_tests::wait_for(&mut on_a, |e| match e {
            Event::Message(m) if m.seq == 7 => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text(&seventh), "from c");

        // A gift charged on B and a recall made on A reach the other node.
        let credit = b.admin("POST", "/v1/users/bob/credit", Some(r#"{"amount": 50}"#)).await;
        assert_eq!(credit.status, 200, "{}", credit.body);
        let gift = viewer_b.send_gift("show", "heart", 1, "bob-1").await.unwrap();
        assert_eq!((gift.seq, gift.balance), (8, 40));
        let on_a_gift = roomcast_tests::wait_for(&mut on_a, |e| e.gift().map(|(m, _)| m.clone())).await;
        assert_eq!((on_a_gift.seq, on_a_gift.message_id.clone()), (8, gift.message_id.clone()));
        let recalled = host.recall("show", &acks[0].message_id).await.unwrap();
        assert_eq!(recalled.seq, 9);
        roomcast_tests::wait_for(&mut on_b, |e| match e {
            Event::Message(m) if m.seq == 9 => Some(()),
            _ => None,
        })
        .await;
        let page = viewer_b.fetch_history("show", HistoryRange::Seq { from: 1, to: 3 }, 0).await.unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3],
            "the recalled message is gone on B too"
        );
        for s in [a, b, c] {
            s.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_a_node_refuses_what_it_cannot_sequence_and_recovers_after() {
    use roomcast_client::Error;
    use roomcast_protocol::ErrorCode;
    use roomcast_server::auth::Role;
    use roomcast_tests::TestServer;

    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let node = TestServer::start_with(move |c| c.redis = Some(url)).await;
    let (host, _events) = node.connect("hana", Role::Host).await;
    host.join("up").await.unwrap();
    assert_eq!(host.send_chat("up", "before").await.unwrap().seq, 1);

    redis.kill();
    let refused = host.send_chat("up", "while down").await.unwrap_err();
    assert!(matches!(refused, Error::Refused { code: ErrorCode::Unavailable, .. }), "{refused:?}");
    let (viewer, _v) = node.connect("vic", Role::Viewer).await;
    let join = viewer.join("new-room").await.unwrap_err();
    assert!(matches!(join, Error::Refused { code: ErrorCode::Unavailable, .. }), "{join:?}");

    redis.restart().await;
    let mut after = None;
    for _ in 0..100 {
        if let Ok(ack) = host.send_chat("up", "after").await {
            after = Some(ack);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after.expect("chat works again").seq, 2, "nothing was numbered while Redis was down");
    viewer.join("new-room").await.expect("a new room can follow the fleet again");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_online_entry_counts_until_it_stops_reporting() {
    let redis = RedisServer::start().await;
    let room = RoomId::new("live:online").unwrap();
    let (a, _a_rx, _) = node(&redis).await;
    let (b, _b_rx, _) = node(&redis).await;
    // Long enough that a busy machine does not let an entry lapse between
    // two reports of this test.
    let ttl = Duration::from_millis(1_500);
    let others = |c: roomcast_server::cluster::FleetCounts| c.others_online;
    // Each report carries the likes its room instance counted so far.
    let likes = |instance, total| roomcast_server::cluster::LikesCounted { instance, total };
    assert_eq!(others(a.report(&room, 5, likes(1, 0), &[], 0, ttl).await.unwrap()), 0);
    assert_eq!(others(b.report(&room, 2, likes(1, 0), &[], 0, ttl).await.unwrap()), 5, "B hears of A's five");
    assert_eq!(others(a.report(&room, 4, likes(1, 0), &[], 0, ttl).await.unwrap()), 2);
    // A dies: it reports no more, and its entry lapses.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    assert_eq!(others(b.report(&room, 2, likes(1, 0), &[], 0, ttl).await.unwrap()), 0);
    assert_eq!(
        others(a.report(&room, 0, likes(1, 0), &[], 0, ttl).await.unwrap()),
        2,
        "0 removes an entry without adding one"
    );
    // Likes add up across the nodes' room instances; a total sent twice
    // (a report repeated after a lost answer) counts once.
    assert_eq!(a.report(&room, 1, likes(1, 30), &[], 0, ttl).await.unwrap().like_total, 30);
    assert_eq!(b.report(&room, 1, likes(1, 12), &[], 0, ttl).await.unwrap().like_total, 42);
    assert_eq!(a.report(&room, 1, likes(1, 30), &[], 0, ttl).await.unwrap().like_total, 42);
    assert_eq!(a.report(&room, 1, likes(1, 35), &[], 0, ttl).await.unwrap().like_total, 47);
    // A room that closed and opened again on A keeps what it counted before.
    assert_eq!(a.report(&room, 1, likes(2, 3), &[], 0, ttl).await.unwrap().like_total, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_the_online_count_of_the_whole_fleet() {
    use roomcast_server::auth::Role;
    use roomcast_tests::{TestServer, wait_online};

    let redis = RedisServer::start().await;
    let start = |url: String| TestServer::start_with(move |c| c.redis = Some(url));
    let a = start(redis.url()).await;
    let b = start(redis.url()).await;
    let (ann, _ann_events) = a.connect("ann", Role::Viewer).await;
    ann.join("crowd").await.unwrap();
    let (al, _al_events) = a.connect("al", Role::Viewer).await;
    al.join("crowd").await.unwrap();
    let (bob, mut on_b) = b.connect("bob", Role::Viewer).await;
    bob.join("crowd").await.unwrap();
    wait_online(&mut on_b, "crowd", 3).await;
    ann.leave("crowd").await.unwrap();
    al.leave("crowd").await.unwrap();
    wait_online(&mut on_b, "crowd", 1).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_node_drains_moves_to_another_and_misses_nothing() {
    use roomcast_client::{Backoff, Client, ClientConfig, Event};
    use roomcast_server::auth::Role;
    use roomcast_tests::{TestServer, sequenced, text, wait_for};

    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start_with({
        let url = url.clone();
        move |c| {
            c.redis = Some(url);
            c.drain.settle_ms = 300;
        }
    })
    .await;
    let secret = a.secret.clone();
    let b = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.auth.hs256_secret = Some(secret);
    })
    .await;
    let mut config =
        ClientConfig::new(a.addr, a.token("vic", Role::Viewer), roomcast_tests::trust_all(&[&a, &b]));
    config.alternates = vec![b.addr];
    config.reconnect = Some(Backoff { initial: Duration::from_millis(100), ..Backoff::default() });
    let (viewer, mut events) = Client::connect(config).await.unwrap();
    viewer.join("show").await.unwrap();
    // The host is on B and keeps talking while the viewer's node drains.
    // B takes A's tokens (the platform's one secret).
    let (host, _h) = Client::connect(b.client_config(a.token("hana", Role::Host))).await.unwrap();
    host.join("show").await.unwrap();
    let talk = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..30 {
            seqs.push(host.send_chat("show", &format!("line {i}")).await.unwrap().seq);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        seqs
    });
    assert_eq!(text(&sequenced(&mut events, 1).await[0]), "line 0");
    a.drain().start();
    wait_for(&mut events, |e| matches!(e, Event::Reconnected { .. }).then_some(())).await;
    let seqs = talk.await.unwrap();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    // Everything after line 0, once, in order, with no gap: B resumed the
    // viewer from the fleet's history.
    let mut got = Vec::new();
    let mut complete = None;
    while got.len() < 29 || complete.is_none() {
        let e = wait_for(&mut events, |e| match e {
            Event::Message(m) if m.seq > 0 => Some(Ok(m.seq)),
            Event::Resumed { complete, .. } => Some(Err(*complete)),
            Event::Gap { from, to, .. } => panic!("gap {from}..={to}"),
            _ => None,
        })
        .await;
        match e {
            Ok(seq) => got.push(seq),
            Err(c) => complete = Some(c),
        }
    }
    assert_eq!(complete, Some(true), "the resume on the other node was complete");
    assert_eq!(got, (2..=30).collect::<Vec<_>>());
    assert_eq!(viewer.server(), b.addr);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_quiz_nudges_name_the_number_redis_gave_the_question() {
    use roomcast_protocol::datagram::ServerDatagram;
    use roomcast_server::auth::Role;
    use roomcast_tests::TestServer;

    let redis = RedisServer::start().await;
    let url = redis.url();
    let node = TestServer::start_with({
        let url = url.clone();
        move |c| c.redis = Some(url)
    })
    .await;
    let url_third = url.clone();
    let other = TestServer::start_with(move |c| c.redis = Some(url)).await;
    let mut raw = node.raw_session("raw", Role::Viewer).await;
    raw.join(2, v1::Join { room: "quiz".into(), ..Default::default() }).await;
    // A member on another node, where the question was not started.
    let mut far = other.raw_session("far", Role::Viewer).await;
    far.join(2, v1::Join { room: "quiz".into(), ..Default::default() }).await;
    let created = node.admin("POST", "/v1/rooms/quiz/quiz", Some(r#"{"rounds": 1}"#)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let question =
        r#"{"text": "?", "options": ["a", "b"], "correct": 0, "media_ts_ms": 0, "answer_window_ms": 3000}"#;
    let started = node.admin("POST", "/v1/rooms/quiz/quiz/questions", Some(question)).await;
    let started: serde_json::Value = serde_json::from_str(&started.body).unwrap();
    let seq = started["seq"].as_u64().unwrap();
    assert!(seq > 0);
    for session in [&raw, &far] {
        let nudge = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(ServerDatagram::QuizNudge { seq, .. }) =
                    ServerDatagram::decode(session.conn.read_datagram().await.unwrap())
                {
                    return seq;
                }
            }
        })
        .await
        .expect("a nudge on both nodes");
        assert_eq!(nudge, seq);
    }
    // A joiner on the other node gets the open question with its number.
    let mut late = other.raw_session("late", Role::Viewer).await;
    let joined = late.join(2, v1::Join { room: "quiz".into(), ..Default::default() }).await;
    assert_eq!(joined.open_question.map(|e| e.seq), Some(seq));
    // So does a joiner on a node whose room begins to follow mid-question.
    let third = TestServer::start_with(move |c| c.redis = Some(url_third)).await;
    let mut latest = third.raw_session("latest", Role::Viewer).await;
    let joined = latest.join(2, v1::Join { room: "quiz".into(), ..Default::default() }).await;
    assert_eq!(joined.open_question.map(|e| e.seq), Some(seq), "caught up from the stream");
    node.stop().await;
    other.stop().await;
    third.stop().await;
}

/// A node whose Redis connection dropped reads what was published before
/// its subscription came back from the room's stream once Redis answers
/// again, without waiting for the room's next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_connection_dropped_reads_what_its_channel_missed_without_a_next_event() {
    use roomcast_server::auth::Role;
    use roomcast_tests::{TestServer, sequenced};

    let redis = RedisServer::start().await;
    let url = redis.url();
    let b = TestServer::start_with(move |c| c.redis = Some(url)).await;
    let (viewer, mut seen) = b.connect("vic", Role::Viewer).await;
    let joined = viewer.join("quiet").await.unwrap();
    let room = RoomId::new("quiet").unwrap();
    // Another node, as the fleet's shared log sees it.
    let (a, _a_rx, _) = node(&redis).await;
    a.sequence(&room, joined.epoch, 0, &[chat(&room, "before")], &[]).await.unwrap();
    assert_eq!(roomcast_tests::text(&sequenced(&mut seen, 1).await[0]), "before");

    // In one step for every other client: the node's connection is cut,
    // and the room's next event is numbered, kept and published, as the
    // sequencing script does. The node cannot have heard it.
    let id = format!("{:x}-2", joined.epoch);
    let event = v1::RoomEvent::decode(chat(&room, "while away")).unwrap();
    let event = v1::RoomEvent { seq: 2, message_id: id, ..event }.encode_to_vec();
    let mut batch = (event.len() as u32).to_be_bytes().to_vec();
    batch.extend_from_slice(&event);
    let arg = |s: &str| s.as_bytes().to_vec();
    let answer = redis
        .transaction(&[
            vec![arg("CLIENT"), arg("KILL"), arg("TYPE"), arg("normal")],
            vec![arg("CLIENT"), arg("KILL"), arg("TYPE"), arg("pubsub")],
            vec![arg("SET"), arg("rc:{quiet}:seq"), arg("2")],
            vec![arg("XADD"), arg("rc:{quiet}:log"), arg("2-1"), arg("e"), event],
            vec![arg("PUBLISH"), arg("rc:{quiet}:events"), batch],
        ])
        .await;
    assert!(answer.ends_with(":0\r\n"), "the publish reached no subscriber: {answer:?}");
    // Nothing more is said in the room.
    let got = sequenced(&mut seen, 1).await.remove(0);
    assert_eq!((got.seq, roomcast_tests::text(&got)), (2, "while away"));
    b.stop().await;
}
