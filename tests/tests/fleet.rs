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
use roomcast_server::cluster::{Arrival, Delivery, Fleet, Orderer};
use roomcast_tests::redis::RedisServer;
use tokio::sync::mpsc;

/// A node's link and what it receives.
async fn node(redis: &RedisServer) -> (Fleet, mpsc::Receiver<Delivery>, Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(1024);
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let fleet = Fleet::connect(&redis.url(), 1_000, tx, move || {
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
    // Both nodes send batches at once: 10 batches of 5 each.
    let mut sends = Vec::new();
    for (name, fleet) in [("a", a.clone()), ("b", b.clone())] {
        let room = room.clone();
        sends.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for batch in 0..10 {
                let events: Vec<Bytes> =
                    (0..5).map(|i| chat(&room, &format!("{name}-{batch}-{i}"))).collect();
                firsts.push(fleet.sequence(&room, 0xabc, &events).await.unwrap());
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
    a.sequence(&other, 1, &[chat(&other, "elsewhere")]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), b_rx.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_nodes_resubscribe_and_fill_the_hole_from_the_stream() {
    let mut redis = RedisServer::start().await;
    let room = RoomId::new("live:restart").unwrap();
    let (a, mut a_rx, _) = node(&redis).await;
    let (b, _b_rx, _) = node(&redis).await;
    a.subscribe(&room).await.unwrap();
    b.sequence(&room, 7, &[chat(&room, "one"), chat(&room, "two")]).await.unwrap();
    let before = follow(&a, &mut a_rx, &room, 2).await;
    assert_eq!(before.iter().map(text).collect::<Vec<_>>(), ["one", "two"]);

    redis.restart().await;
    // B's sends until it has reconnected fail; what it sends after counts.
    let mut sent = 0;
    for i in 0..200 {
        if b.sequence(&room, 7, &[chat(&room, &format!("after-{i}"))]).await.is_ok() {
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
    b.sequence(&room, 7, &[chat(&room, "live again")]).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), a_rx.recv()).await.unwrap().unwrap();
    assert_eq!(d.events.last().map(|e| e.seq), Some(6));
}
