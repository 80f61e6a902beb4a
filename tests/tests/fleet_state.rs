//! What a fleet's nodes share through a real `redis-server`: one gift
//! ledger (one balance per user, each idempotency key charged once whichever
//! node it reaches), one like total and viewer page per room, sanctions
//! that hold on every node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use roomcast_client::{Client, Event, v1};
use roomcast_server::auth::Role;
use roomcast_tests::redis::RedisServer;
use roomcast_tests::{TestServer, wait_for};

const ACCEPTED: i32 = v1::GiftOutcome::Accepted as i32;
const INSUFFICIENT: i32 = v1::GiftOutcome::InsufficientBalance as i32;

/// Two fleet nodes on `redis` that take the same tokens (the platform's one
/// secret): A's.
async fn two_nodes(redis: &RedisServer) -> (TestServer, TestServer) {
    let a = TestServer::in_fleet(&redis.url(), None).await;
    let b = TestServer::in_fleet(&redis.url(), Some(&a.secret)).await;
    (a, b)
}

/// A client of `node` for `user`, with A's token.
async fn on(node: &TestServer, a: &TestServer, user: &str) -> (Client, roomcast_client::Events) {
    Client::connect(node.client_config(a.token(user, Role::Viewer))).await.unwrap()
}

async fn credit(node: &TestServer, user: &str, amount: u64) -> u64 {
    let body = format!(r#"{{"amount": {amount}}}"#);
    let answer = node.admin("POST", &format!("/v1/users/{user}/credit"), Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    json["balance"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_balance_and_gift_keys_are_the_fleets_not_a_nodes() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    assert_eq!(credit(&a, "max", 55).await, 55);
    assert_eq!(credit(&b, "max", 45).await, 100, "B credits the balance A credited");

    let (on_a, _ea) = on(&a, &a, "max").await;
    let (on_b, _eb) = on(&b, &a, "max").await;
    on_a.join("rush").await.unwrap();
    on_b.join("rush").await.unwrap();
    // The same key sent to both nodes at once: charged once, one sequence
    // number, whichever node charged it.
    let (x, y) = tokio::join!(
        on_a.send_gift("rush", "heart", 1, "max-1"),
        on_b.send_gift("rush", "heart", 1, "max-1")
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!((x.outcome, y.outcome), (ACCEPTED, ACCEPTED));
    assert_eq!((x.balance, y.balance), (90, 90), "charged once");
    let first = on_a.send_gift("rush", "heart", 1, "max-1").await.unwrap();
    assert!(first.seq > 0 && first.seq == x.seq.max(y.seq), "a repeat names the first send: {first:?}");
    let again = on_b.send_gift("rush", "heart", 1, "max-1").await.unwrap();
    assert_eq!((again.seq, again.balance), (first.seq, 90));

    // Distinct keys from both nodes at once never overdraw: 90 buys nine.
    let mut sends = Vec::new();
    for i in 0..20 {
        let c = if i % 2 == 0 { on_a.clone() } else { on_b.clone() };
        sends.push(tokio::spawn(
            async move { c.send_gift("rush", "heart", 1, &format!("k-{i}")).await.unwrap() },
        ));
    }
    let mut acks = Vec::new();
    for s in sends {
        acks.push(s.await.unwrap());
    }
    let accepted = acks.iter().filter(|a| a.outcome == ACCEPTED).count();
    let refused = acks.iter().filter(|a| a.outcome == INSUFFICIENT).count();
    assert_eq!((accepted, refused), (9, 11), "{acks:?}");
    let mut balances: Vec<u64> = acks.iter().filter(|a| a.outcome == ACCEPTED).map(|a| a.balance).collect();
    balances.sort_unstable();
    assert_eq!(balances, (0..9).map(|i| i * 10).collect::<Vec<_>>(), "each charge saw the one before");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_like_total_and_viewer_page_span_every_node() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let (ann, mut on_a) = on(&a, &a, "ann").await;
    let (bob, mut on_b) = on(&b, &a, "bob").await;
    ann.join("hearts").await.unwrap();
    bob.join("hearts").await.unwrap();
    ann.like("hearts", 5);
    bob.like("hearts", 7);
    for events in [&mut on_a, &mut on_b] {
        wait_for(events, |e| match e {
            Event::LikeTotal { room, total } if room == "hearts" && *total == 12 => Some(()),
            _ => None,
        })
        .await;
    }
    // A joiner on either node starts from the fleet's total, and its first
    // page of viewers names the users of both nodes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cy, _c) = on(&b, &a, "cy").await;
    let joined = cy.join("hearts").await.unwrap();
    assert_eq!(joined.like_total, 12);
    let mut page: Vec<&str> = joined.viewers.iter().map(|u| u.user_id.as_str()).collect();
    page.sort_unstable();
    assert_eq!(page, ["ann", "bob", "cy"], "A's ann on B's page");

    // The platform asks which nodes carry the room, busiest first, to send
    // its next viewers there.
    let want = serde_json::json!([
        {"address": b.addr.to_string(), "online": 2},
        {"address": a.addr.to_string(), "online": 1},
    ]);
    let mut nodes = serde_json::Value::Null;
    for _ in 0..50 {
        let answer = a.admin("GET", "/v1/rooms/hearts/nodes", None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        nodes = serde_json::from_str::<serde_json::Value>(&answer.body).unwrap()["nodes"].clone();
        if nodes == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(nodes, want);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutes_and_bans_made_on_one_node_hold_on_every_node() {
    use roomcast_protocol::ErrorCode;

    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let (troll, mut on_b) = on(&b, &a, "troll").await;
    troll.join("hall").await.unwrap();
    troll.send_chat("hall", "hello").await.unwrap();

    // Muted through A's admin API: refused on B.
    let muted = a.admin("PUT", "/v1/rooms/hall/mutes/troll", Some(r#"{"reason": "spam"}"#)).await;
    assert_eq!(muted.status, 200, "{}", muted.body);
    let mut refused = None;
    for _ in 0..50 {
        match troll.send_chat("hall", "more").await {
            Err(e) => {
                refused = e.code();
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(refused, Some(ErrorCode::Muted), "the mute reached B");
    let listed = b.admin("GET", "/v1/rooms/hall/sanctions", None).await;
    assert!(listed.body.contains("troll"), "B lists A's mute: {}", listed.body);
    // Lifted through B: chat passes again.
    assert_eq!(b.admin("DELETE", "/v1/rooms/hall/mutes/troll", None).await.status, 204);
    troll.send_chat("hall", "back").await.expect("unmuted");

    // Kicked through A: B removes the member and refuses the rejoin.
    let kicked = a.admin("POST", "/v1/rooms/hall/kicks/troll", Some(r#"{"reason": "calm down"}"#)).await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    let (code, reason) = wait_for(&mut on_b, |e| match e {
        Event::Removed { room, code, reason } if room == "hall" => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!((code, reason.as_str()), (Some(ErrorCode::Banned), "calm down"));
    assert_eq!(troll.join("hall").await.unwrap_err().code(), Some(ErrorCode::Banned));

    // A node started later learns what is in force from Redis.
    let c = TestServer::in_fleet(&redis.url(), Some(&a.secret)).await;
    let (late, _l) = on(&c, &a, "troll").await;
    let mut code = None;
    for _ in 0..50 {
        match late.join("hall").await {
            Err(e) => {
                code = e.code();
                break;
            }
            Ok(_) => {
                let _ = late.leave("hall").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(code, Some(ErrorCode::Banned), "the new node refuses the kicked user");
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_in_flight_is_refunded_or_let_go_only_by_the_send_that_holds_it() {
    use roomcast_server::cluster::{Fleet, FleetLedger, Options};
    use roomcast_server::gifts::{Charge, DebitOutcome, Receipt};

    let redis = RedisServer::start().await;
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let fleet = Fleet::connect(&Options::new(redis.url(), 100), tx, || {}).await.unwrap();
    let ledger = FleetLedger::new(fleet, Duration::from_secs(3600));
    assert_eq!(ledger.credit("gia", 100, 1).await.unwrap(), 100);
    let charge = |key: &str, now_ms| Charge {
        user: "gia".into(),
        key: key.into(),
        amount: 10,
        room: "r".into(),
        gift_id: "heart".into(),
        count: 1,
        now_ms,
    };
    let now = roomcast_protocol::unix_ms(std::time::SystemTime::now());
    let first = charge("k1", now);
    assert_eq!(ledger.debit(&first).await.unwrap(), DebitOutcome::Charged { balance: 90 });
    // A repeat while the first send holds the key: accepted, nothing charged,
    // no receipt yet.
    let repeat = charge("k1", now + 5);
    assert_eq!(ledger.debit(&repeat).await.unwrap(), DebitOutcome::Repeat { balance: 90, receipt: None });
    // The repeat's refund or release changes nothing; the first's does.
    assert_eq!(ledger.refund(&repeat).await.unwrap(), 90, "not the repeat's to refund");
    ledger.release(&repeat).await.unwrap();
    assert_eq!(ledger.debit(&repeat).await.unwrap(), DebitOutcome::Repeat { balance: 90, receipt: None });
    assert_eq!(ledger.refund(&first).await.unwrap(), 100, "the first send's refund");

    // Let go by its send: the next send of the key sequences it without a
    // second charge, and its receipt answers every repeat after.
    let second = charge("k2", now + 10);
    assert_eq!(ledger.debit(&second).await.unwrap(), DebitOutcome::Charged { balance: 90 });
    ledger.release(&second).await.unwrap();
    let retry = charge("k2", now + 20);
    assert_eq!(
        ledger.debit(&retry).await.unwrap(),
        DebitOutcome::Charged { balance: 90 },
        "handed back, not charged"
    );
    let receipt = Receipt { seq: 7, message_id: "e-7".into(), combo_id: String::new(), combo_count: 1 };
    ledger.settle("gia", "k2", &receipt).await.unwrap();
    assert_eq!(
        ledger.debit(&charge("k2", now + 30)).await.unwrap(),
        DebitOutcome::Repeat { balance: 90, receipt: Some(receipt) }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_names_itself_as_the_rooms_node() {
    let node = TestServer::start().await;
    let (ann, _e) = node.connect("ann", Role::Viewer).await;
    ann.join("solo").await.unwrap();
    let answer = node.admin("GET", "/v1/rooms/solo/nodes", None).await;
    let nodes = serde_json::from_str::<serde_json::Value>(&answer.body).unwrap()["nodes"].clone();
    assert_eq!(nodes, serde_json::json!([{"address": node.addr.to_string(), "online": 1}]));
    let none = node.admin("GET", "/v1/rooms/nowhere/nodes", None).await;
    assert!(none.body.contains(r#""nodes":[]"#), "{}", none.body);
    node.stop().await;
}
