//! Webhooks against a real HTTP receiver on loopback: signed delivery, the
//! same event ids again after failures (at least once), no retry of a
//! refusal, a full queue that drops and counts without waiting, nothing at
//! all without a URL, and a shutdown that sends what was queued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use roomcast_protocol::RoomId;
use roomcast_server::auth::Role;
use roomcast_server::config::WebhooksConfig;
use roomcast_server::metrics::Metrics;
use roomcast_server::webhooks::{self, Dispatcher, FlagAction, HookEvent, Hooks, LeaveReason};
use roomcast_tests::WAIT;
use roomcast_tests::hooks::{Behaviour, Received, Receiver, seen_of};
use serde_json::Value;

const EPOCH: u64 = 0x1_8c2f_00aa;

/// Polls `done` until it holds, for at most [`WAIT`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn room() -> RoomId {
    RoomId::new("room-1").unwrap()
}

fn left(user: &str, reason: LeaveReason) -> HookEvent {
    HookEvent::UserLeft { room: room(), user: user.into(), conn: 9, reason }
}

fn start(config: &WebhooksConfig, metrics: &Metrics) -> (Hooks, Dispatcher) {
    webhooks::start(config, metrics, EPOCH).unwrap()
}

#[tokio::test]
async fn events_arrive_signed_with_unique_ids_in_emission_order() {
    let receiver = Receiver::answering(200).await;
    let metrics = Metrics::new();
    let (hooks, dispatcher) = start(&receiver.config(), &metrics);
    hooks.emit(HookEvent::UserJoined { room: room(), user: "u1".into(), role: Role::Host, conn: 9 });
    hooks.emit(left("u1", LeaveReason::HeartbeatLoss));
    hooks.emit(HookEvent::RoomEmpty { room: room() });
    hooks.emit(HookEvent::RoomClosed { room: room(), by: "node".into() });
    hooks.emit(HookEvent::MessageFlagged {
        room: room(),
        user: "u2".into(),
        text: "spam".into(),
        action: FlagAction::Refused,
    });
    until("5 events", || receiver.seen().iter().map(|r| r.events.len()).sum::<usize>() == 5).await;

    let seen = receiver.seen();
    assert!(seen.iter().all(|r| r.signed), "every POST carries a valid signature: {seen:?}");
    assert!(seen.iter().all(|r| r.fresh), "every timestamp is current");
    let events: Vec<Value> = seen.iter().flat_map(|r| r.events.clone()).collect();
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (1..=5).map(|n| format!("{EPOCH:x}-{n}")).collect();
    assert_eq!(ids, expected, "ids are the node epoch and a counter");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user_joined", "user_left", "room_empty", "room_closed", "message_flagged"]);
    assert_eq!(events[0]["role"], "host");
    assert_eq!(events[1]["reason"], "heartbeat_loss");
    assert_eq!(events[4]["action"], "refused");
    assert!(events.iter().all(|e| e["room"] == "room-1" && e["ts_ms"].as_u64().unwrap() > 1_600_000_000_000));

    until("the ok count", || metrics.webhooks.ok.get() == 5).await;
    assert_eq!(metrics.webhooks.queue_depth.get(), 0);
    assert_eq!((metrics.webhooks.retried.get(), metrics.webhooks.failed.get()), (0, 0));
    dispatcher.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_same_event_ids_again_until_it_accepts() {
    let receiver = Receiver::start(Behaviour { script: vec![500, 500], then: 200, hang: false }).await;
    let metrics = Metrics::new();
    let (hooks, dispatcher) = start(&receiver.config(), &metrics);
    // A current-thread runtime: the dispatcher runs only once we await, so
    // the three events go out as one batch.
    for user in ["a", "b", "c"] {
        hooks.emit(left(user, LeaveReason::Disconnect));
    }
    until("the third attempt to be accepted", || metrics.webhooks.ok.get() == 3).await;

    let seen = receiver.seen();
    assert_eq!(seen.len(), 3, "two failures, then success: {seen:?}");
    let ids: Vec<Vec<String>> = seen.iter().map(Received::ids).collect();
    assert_eq!(ids[0].len(), 3);
    assert!(ids.iter().all(|attempt| *attempt == ids[0]), "every attempt carries the same ids: {ids:?}");
    assert!(seen.iter().all(|r| r.signed && r.fresh), "each attempt is signed afresh");
    assert_eq!(metrics.webhooks.retried.get(), 6, "3 events retried twice");
    assert_eq!(metrics.webhooks.failed.get(), 0);
    assert!(metrics.encode().contains("roomcast_webhook_deliveries_total{outcome=\"retried\"} 6"));
    dispatcher.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_receiver_refusing_with_400_is_not_retried() {
    let receiver = Receiver::answering(400).await;
    let metrics = Metrics::new();
    let (hooks, dispatcher) = start(&receiver.config(), &metrics);
    hooks.emit(left("a", LeaveReason::Kicked));
    hooks.emit(left("b", LeaveReason::Banned));
    until("the batch to be given up", || metrics.webhooks.failed.get() == 2).await;
    // Several backoff periods (20, 40, 80 ms) in which a retry would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 1, "a 400 is permanent");
    assert_eq!((metrics.webhooks.retried.get(), metrics.webhooks.ok.get()), (0, 0));
    dispatcher.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_gets_max_attempts_then_the_events_are_failed() {
    let receiver = Receiver::answering(503).await;
    let metrics = Metrics::new();
    let config = WebhooksConfig { max_attempts: 3, ..receiver.config() };
    let (hooks, dispatcher) = start(&config, &metrics);
    hooks.emit(left("a", LeaveReason::Drain));
    until("the event to be given up", || metrics.webhooks.failed.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 3);
    assert_eq!(metrics.webhooks.retried.get(), 2);
    dispatcher.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_emit_never_waits() {
    let receiver = Receiver::start(Behaviour { script: vec![], then: 200, hang: true }).await;
    let metrics = Metrics::new();
    let config = WebhooksConfig { queue_capacity: 8, batch_max: 1, timeout_ms: 60_000, ..receiver.config() };
    let (hooks, dispatcher) = start(&config, &metrics);
    // The dispatcher takes this one and waits on a receiver that never
    // answers, so nothing leaves the queue from here on.
    hooks.emit(left("first", LeaveReason::Left));
    until("the first POST to reach the receiver", || receiver.seen().len() == 1).await;

    let began = Instant::now();
    for n in 0..1000 {
        hooks.emit(left(&format!("u{n}"), LeaveReason::Left));
    }
    let took = began.elapsed();
    assert!(took < Duration::from_millis(500), "1,000 emits into a full queue took {took:?}");
    assert_eq!(metrics.webhooks.queue_depth.get(), 8, "the queue holds its capacity");
    assert_eq!(metrics.webhooks.dropped.get(), 1000 - 8, "every event beyond it is counted");
    assert!(metrics.encode().contains("roomcast_webhook_queue_depth 8"));
    dispatcher.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn with_no_url_configured_nothing_is_queued_or_sent() {
    let receiver = Receiver::answering(200).await;
    let metrics = Metrics::new();
    let config = WebhooksConfig { url: None, ..receiver.config() };
    let (hooks, dispatcher) = start(&config, &metrics);
    assert!(!hooks.is_enabled());
    for user in ["a", "b", "c"] {
        hooks.emit(left(user, LeaveReason::Left));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.seen().is_empty());
    let w = &metrics.webhooks;
    assert_eq!((w.ok.get(), w.dropped.get(), w.failed.get(), w.queue_depth.get()), (0, 0, 0, 0));
    dispatcher.shutdown(WAIT).await;
}

#[tokio::test]
async fn shutdown_sends_what_was_queued_and_later_events_are_dropped() {
    let receiver = Receiver::answering(200).await;
    let metrics = Metrics::new();
    let (hooks, dispatcher) = start(&receiver.config(), &metrics);
    for user in ["a", "b", "c", "d"] {
        hooks.emit(left(user, LeaveReason::Drain));
    }
    // Nothing has been sent yet (current-thread runtime); shutdown must.
    dispatcher.shutdown(WAIT).await;
    assert_eq!(receiver.seen().iter().map(|r| r.events.len()).sum::<usize>(), 4);
    assert_eq!(metrics.webhooks.ok.get(), 4);
    hooks.emit(left("late", LeaveReason::Drain));
    assert_eq!(metrics.webhooks.dropped.get(), 1, "an event after shutdown is counted as dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_joins_leaves_with_their_reasons_an_empty_room_and_flagged_chat() {
    let receiver = Receiver::answering(200).await;
    let config = receiver.config();
    let server = roomcast_tests::TestServer::start_with(move |c| {
        c.webhooks = config;
        c.moderation.banned_words = vec!["spam".into()];
    })
    .await;
    let (a, _a) = server.connect("ann", Role::Viewer).await;
    let (b, mut b_events) = server.connect("bob", Role::Viewer).await;
    a.join("stage").await.unwrap();
    b.join("stage").await.unwrap();
    let refused = b.send_chat("stage", "spam spam").await.unwrap_err();
    assert_eq!(refused.code(), Some(roomcast_protocol::ErrorCode::MessageRefused));
    a.leave("stage").await.unwrap();
    b.close();
    roomcast_tests::wait_for(&mut b_events, |e| {
        matches!(e, roomcast_client::Event::Disconnected { .. }).then_some(())
    })
    .await;
    until("the room to be reported empty", || !seen_of(&receiver, "room_empty").is_empty()).await;
    let joined = seen_of(&receiver, "user_joined");
    assert_eq!(joined.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["ann", "bob"]);
    let left = seen_of(&receiver, "user_left");
    assert_eq!(
        left,
        [("ann".into(), "left".into()), ("bob".into(), "disconnect".into())],
        "one leave each, with its reason"
    );
    let flagged: Vec<Value> = receiver
        .seen()
        .iter()
        .flat_map(|r| r.events.clone())
        .filter(|e| e["type"] == "message_flagged")
        .collect();
    assert_eq!((flagged.len(), flagged[0]["action"].as_str()), (1, Some("refused")));
    assert!(receiver.seen().iter().all(|r| r.signed && r.fresh));
    server.stop().await;
}
