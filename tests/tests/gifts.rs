//! Gifts end to end over real QUIC: charged exactly once through the
//! embedded ledger, never overdrawn, kept across a restart, never sampled by
//! the chat budget, and counted in combos.

use std::collections::HashSet;

use roomcast_client::{Client, Error, Event, v1};
use roomcast_protocol::ErrorCode;
use roomcast_server::auth::Role;
use roomcast_tests::{TestServer, sequenced, wait_for};
use v1::room_event::Kind;

const ACCEPTED: i32 = v1::GiftOutcome::Accepted as i32;
const INSUFFICIENT: i32 = v1::GiftOutcome::InsufficientBalance as i32;

/// Credits `user` through the admin API and returns the new balance.
async fn credit(server: &TestServer, user: &str, amount: u64) -> u64 {
    let body = format!(r#"{{"amount": {amount}}}"#);
    let answer = server.admin("POST", &format!("/v1/users/{user}/credit"), Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON answer");
    json["balance"].as_u64().expect("a balance")
}

/// The next gift event on `events`.
async fn next_gift(events: &mut roomcast_client::Events) -> (v1::RoomEvent, v1::Gift) {
    wait_for(events, |e| e.gift().map(|(m, g)| (m.clone(), g.clone()))).await
}

/// The sequenced events up to and including the chat `marker`, which the
/// test sends last: everything the room sequenced before it.
async fn until_marker(events: &mut roomcast_client::Events, marker: &str) -> Vec<v1::RoomEvent> {
    let mut out = Vec::new();
    loop {
        let e = sequenced(events, 1).await.remove(0);
        let done = matches!(&e.kind, Some(Kind::Chat(c)) if c.text == marker);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn gifts_in(events: &[v1::RoomEvent]) -> Vec<&v1::Gift> {
    events.iter().filter_map(|e| if let Some(Kind::Gift(g)) = &e.kind { Some(g) } else { None }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_sends_charge_once_and_broadcast_once() {
    let server = TestServer::start().await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("duo").await.unwrap();
    assert_eq!(credit(&server, "gia", 100).await, 100);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (c, e) = server.connect("gia", Role::Viewer).await;
        c.join("duo").await.unwrap();
        sessions.push((c, e));
    }
    let mut sends = Vec::new();
    for (c, _) in &sessions {
        for _ in 0..3 {
            let c: Client = c.clone();
            sends.push(tokio::spawn(async move { c.send_gift("duo", "heart", 1, "gia-1").await.unwrap() }));
        }
    }
    let mut acks = Vec::new();
    for s in sends {
        acks.push(s.await.unwrap());
    }
    assert!(acks.iter().all(|a| a.outcome == ACCEPTED), "{acks:?}");
    assert!(acks.iter().all(|a| a.balance == 90), "charged once: {acks:?}");
    let seqs: HashSet<u64> = acks.iter().map(|a| a.seq).filter(|s| *s > 0).collect();
    assert_eq!(seqs.len(), 1, "every answer names the one gift: {acks:?}");

    watcher.send_chat("duo", "marker").await.unwrap();
    let seen = until_marker(&mut events, "marker").await;
    let gifts = gifts_in(&seen);
    assert_eq!(gifts.len(), 1, "broadcast once: {seen:?}");
    assert_eq!((gifts[0].gift_id.as_str(), gifts[0].value), ("heart", 10));
    // The next send with a new key is charged from what is left.
    let next = sessions[0].0.send_gift("duo", "heart", 1, "gia-2").await.unwrap();
    assert_eq!((next.outcome, next.balance), (ACCEPTED, 80));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_by_one_user_never_overdraw() {
    let server = TestServer::start().await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("rush").await.unwrap();
    credit(&server, "max", 55).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let (c, e) = server.connect("max", Role::Viewer).await;
        c.join("rush").await.unwrap();
        sessions.push((c, e));
    }
    let mut sends = Vec::new();
    for (n, (c, _)) in sessions.iter().enumerate() {
        for i in 0..5 {
            let c = c.clone();
            let key = format!("max-{n}-{i}");
            sends.push(tokio::spawn(async move { c.send_gift("rush", "heart", 1, &key).await.unwrap() }));
        }
    }
    let mut acks = Vec::new();
    for s in sends {
        acks.push(s.await.unwrap());
    }
    let accepted: Vec<_> = acks.iter().filter(|a| a.outcome == ACCEPTED).collect();
    let refused: Vec<_> = acks.iter().filter(|a| a.outcome == INSUFFICIENT).collect();
    assert_eq!((accepted.len(), refused.len()), (5, 15), "{acks:?}");
    let mut balances: Vec<u64> = accepted.iter().map(|a| a.balance).collect();
    balances.sort_unstable();
    assert_eq!(balances, vec![5, 15, 25, 35, 45], "each charge saw the one before");
    assert!(refused.iter().all(|a| a.balance == 5 || a.balance >= 10), "{refused:?}");

    watcher.send_chat("rush", "marker").await.unwrap();
    let seen = until_marker(&mut events, "marker").await;
    assert_eq!(gifts_in(&seen).len(), 5);
    let last = sessions[0].0.send_gift("rush", "rose", 5, "max-last").await.unwrap();
    assert_eq!((last.outcome, last.balance), (ACCEPTED, 0));
    let broke = sessions[0].0.send_gift("rush", "rose", 1, "max-broke").await.unwrap();
    assert_eq!((broke.outcome, broke.balance), (INSUFFICIENT, 0), "never below zero");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_gift_is_refused_and_charges_nothing() {
    let server = TestServer::start().await;
    credit(&server, "uma", 10).await;
    let (c, _events) = server.connect("uma", Role::Viewer).await;
    c.join("shop").await.unwrap();
    let ack = c.send_gift("shop", "unicorn", 1, "uma-1").await.unwrap();
    assert_eq!(ack.outcome, v1::GiftOutcome::UnknownGift as i32);
    assert_eq!(ack.seq, 0);
    let ack = c.send_gift("shop", "rose", 1, "uma-2").await.unwrap();
    assert_eq!((ack.outcome, ack.balance), (ACCEPTED, 9));
    // A request the contract forbids is an error answer, not a charge.
    for (count, key) in [(1, ""), (0, "uma-3")] {
        let err = c.send_gift("shop", "rose", count, key).await.unwrap_err();
        assert!(matches!(err, Error::Refused { code: ErrorCode::ProtocolViolation, .. }), "{err:?}");
    }
    let ack = c.send_gift("shop", "rose", 1, "uma-4").await.unwrap();
    assert_eq!(ack.balance, 8, "the refused requests charged nothing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_balances_and_accepted_keys() {
    let dir = std::env::temp_dir().join(format!("roomcast-gift-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = {
        let dir = dir.clone();
        let server = TestServer::start_with(move |c| c.data_dir = dir).await;
        credit(&server, "ren", 100).await;
        let (c, _events) = server.connect("ren", Role::Viewer).await;
        c.join("again").await.unwrap();
        let ack = c.send_gift("again", "heart", 2, "ren-1").await.unwrap();
        assert_eq!((ack.outcome, ack.balance), (ACCEPTED, 80));
        c.close();
        server.stop().await;
        ack
    };
    let server = {
        let dir = dir.clone();
        TestServer::start_with(move |c| c.data_dir = dir).await
    };
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("again").await.unwrap();
    let (c, _events) = server.connect("ren", Role::Viewer).await;
    c.join("again").await.unwrap();
    let repeat = c.send_gift("again", "heart", 2, "ren-1").await.unwrap();
    assert_eq!(
        repeat,
        v1::GiftAck { server_time_ms: repeat.server_time_ms, ..first.clone() },
        "the first outcome"
    );
    let next = c.send_gift("again", "heart", 1, "ren-2").await.unwrap();
    assert_eq!((next.outcome, next.balance), (ACCEPTED, 70), "the balance survived, charged once");
    // The repeat was not broadcast: the first gift this room sequences is ren-2's.
    let (event, gift) = next_gift(&mut events).await;
    assert_eq!((event.seq, gift.count), (next.seq, 1));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gifts_are_never_sampled_by_the_chat_budget() {
    let server = TestServer::start_with(|c| c.room.chat_budget_per_sec = 1).await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("busy").await.unwrap();
    credit(&server, "bea", 100).await;
    let (c, _e) = server.connect("bea", Role::Viewer).await;
    c.join("busy").await.unwrap();
    let mut broadcast_chats = 0;
    for i in 0..6 {
        if c.send_chat("busy", &format!("chat {i}")).await.unwrap().broadcast {
            broadcast_chats += 1;
        }
        let ack = c.send_gift("busy", "rose", 1, &format!("bea-{i}")).await.unwrap();
        assert_eq!(ack.outcome, ACCEPTED);
        assert!(ack.seq > 0);
    }
    assert!(broadcast_chats < 6, "the chat budget sampled some chat");
    for _ in 0..6 {
        let (event, _) = next_gift(&mut events).await;
        assert_eq!(event.priority, v1::Priority::High as i32);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_repeats_of_one_gift_run_one_combo() {
    let server = TestServer::start().await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("combo").await.unwrap();
    credit(&server, "cai", 100).await;
    let (c, _e) = server.connect("cai", Role::Viewer).await;
    c.join("combo").await.unwrap();
    let mut acks = Vec::new();
    for i in 0..3 {
        acks.push(c.send_gift("combo", "rose", 1, &format!("cai-{i}")).await.unwrap());
    }
    let counts: Vec<u32> = acks.iter().map(|a| a.combo_count).collect();
    assert_eq!(counts, vec![1, 2, 3]);
    assert!(acks.iter().all(|a| a.combo_id == acks[0].combo_id && !a.combo_id.is_empty()));
    let other = c.send_gift("combo", "heart", 1, "cai-h").await.unwrap();
    assert_eq!(other.combo_count, 1);
    assert_ne!(other.combo_id, acks[0].combo_id, "another gift is another combo");
    for (i, ack) in acks.iter().enumerate() {
        let (event, gift) = next_gift(&mut events).await;
        assert_eq!(event.seq, ack.seq);
        assert_eq!((gift.combo_id.as_str(), gift.combo_count), (ack.combo_id.as_str(), i as u32 + 1));
        assert_eq!(event.sender.as_ref().map(|s| s.user_id.as_str()), Some("cai"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_gift_cap_refuses_without_charging() {
    let server = TestServer::start_with(|c| c.gifts.per_user_per_sec = 2.0).await;
    credit(&server, "rai", 100).await;
    let (c, _e) = server.connect("rai", Role::Viewer).await;
    c.join("capped").await.unwrap();
    let mut outcomes = Vec::new();
    for i in 0..4 {
        outcomes.push(c.send_gift("capped", "rose", 1, &format!("rai-{i}")).await.unwrap());
    }
    let limited = outcomes.iter().filter(|a| a.outcome == v1::GiftOutcome::RateLimited as i32).count();
    assert!(limited >= 1, "{outcomes:?}");
    let accepted: Vec<_> = outcomes.iter().filter(|a| a.outcome == ACCEPTED).collect();
    assert_eq!(accepted.last().map(|a| a.balance), Some(100 - accepted.len() as u64));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_read_the_catalogue_cheapest_first_without_joining() {
    let server = TestServer::start().await;
    let (client, _events) = server.connect("cora", Role::Viewer).await;
    let catalogue = client.gift_catalogue().await.unwrap();
    let got: Vec<(&str, u64)> = catalogue.gifts.iter().map(|g| (g.id.as_str(), g.price)).collect();
    assert_eq!(got, [("rose", 1), ("heart", 10), ("rocket", 500)], "the default catalogue");
    assert!(catalogue.gifts.iter().all(|g| !g.name.is_empty()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_network_drops_out_gets_every_gift_on_resume() {
    let server = TestServer::start().await;
    let relay = roomcast_tests::relay::Relay::start(server.addr).await;
    credit(&server, "gus", 1_000).await;
    let (gifter, _g) = server.connect("gus", Role::Viewer).await;
    gifter.join("show").await.unwrap();
    let (viewer, mut events) = server.connect_behind(&relay, "mo").await;
    viewer.join("show").await.unwrap();
    let first = gifter.send_gift("show", "rose", 1, "gus-0").await.unwrap();
    assert_eq!(next_gift(&mut events).await.0.seq, first.seq);
    relay.block(true);
    let mut acks = Vec::new();
    for i in 1..=5 {
        acks.push(gifter.send_gift("show", "heart", 1, &format!("gus-{i}")).await.unwrap().seq);
    }
    wait_for(&mut events, |e| matches!(e, Event::Reconnecting { .. }).then_some(())).await;
    relay.block(false);
    let mut got = Vec::new();
    while got.len() < acks.len() {
        got.push(next_gift(&mut events).await.0.seq);
    }
    assert_eq!(got, acks, "every gift sent while away, once, in order");
    server.stop().await;
}

/// Repeats of one idempotency key sent at once from three sessions, most of
/// them while the first is still being sequenced: every answer is ACCEPTED
/// with the same `seq`, `message_id`, `combo_id` and `combo_count`, all
/// set, as `GiftAck` documents for ACCEPTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_repeat_of_a_key_is_answered_with_the_first_sends_seq_message_id_and_combo() {
    // No gift cap: every send of a key reaches the ledger.
    let server = TestServer::start_with(|c| c.gifts.per_user_per_sec = 0.0).await;
    assert_eq!(credit(&server, "gus", 1_000).await, 1_000);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (c, e) = server.connect("gus", Role::Viewer).await;
        c.join("repeats").await.unwrap();
        sessions.push((c, e));
    }
    for round in 0..3 {
        let key = format!("gus-{round}");
        let mut sends = Vec::new();
        for (c, _) in &sessions {
            for _ in 0..4 {
                let (c, key): (Client, String) = (c.clone(), key.clone());
                sends.push(tokio::spawn(
                    async move { c.send_gift("repeats", "heart", 1, &key).await.unwrap() },
                ));
            }
        }
        let mut acks = Vec::new();
        for s in sends {
            acks.push(s.await.unwrap());
        }
        let first = &acks[0];
        assert!(
            first.outcome == ACCEPTED
                && first.seq > 0
                && !first.message_id.is_empty()
                && !first.combo_id.is_empty()
                && first.combo_count >= 1,
            "{first:?}"
        );
        for a in &acks {
            assert_eq!(
                (a.outcome, a.seq, &a.message_id, &a.combo_id, a.combo_count, a.balance),
                (ACCEPTED, first.seq, &first.message_id, &first.combo_id, first.combo_count, first.balance),
                "every repeat answers as the first: {acks:?}"
            );
        }
    }
    server.stop().await;
}
