//! Gifts charged by the platform's backend over the webhook ledger, against a
//! real HTTP backend on loopback that keeps balances and charges a key once:
//! a charge whose answer is late is retried with the same key and broadcast
//! once; repeats are answered by the node; a backend that keeps failing
//! answers LEDGER_UNAVAILABLE and broadcasts nothing. Also the embedded
//! ledger's "charged, not yet sequenced" recovery after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use roomcast_client::v1;
use roomcast_server::auth::Role;
use roomcast_server::config::LedgerConfig;
use roomcast_server::webhooks::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use roomcast_tests::{TestServer, sequenced, text, wait_for};
use serde_json::{Value, json};
use v1::room_event::Kind;

const SECRET: &str = "ledger-secret";
const ACCEPTED: i32 = v1::GiftOutcome::Accepted as i32;
const INSUFFICIENT: i32 = v1::GiftOutcome::InsufficientBalance as i32;
const UNAVAILABLE: i32 = v1::GiftOutcome::LedgerUnavailable as i32;

/// The platform's side: balances, the keys it charged, every call it got.
#[derive(Default)]
struct Books {
    balances: HashMap<String, u64>,
    charged: HashMap<(String, String), u64>,
    calls: Vec<Value>,
    /// Calls still to be answered late (after the node's timeout) or failed.
    slow: usize,
    failing: bool,
}

#[derive(Clone)]
struct Backend {
    url: String,
    books: Arc<Mutex<Books>>,
}

impl Backend {
    async fn start(balances: &[(&str, u64)]) -> Self {
        let books = Arc::new(Mutex::new(Books {
            balances: balances.iter().map(|(u, b)| ((*u).to_owned(), *b)).collect(),
            ..Books::default()
        }));
        let state = books.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let books = state.clone();
            async move {
                let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                if !webhooks::verify(
                    SECRET.as_bytes(),
                    &header(TIMESTAMP_HEADER),
                    &body,
                    &header(SIGNATURE_HEADER),
                ) {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                let call: Value = serde_json::from_slice(&body).unwrap();
                // The charge happens now; only the answer may come late.
                let (answer, late) = {
                    let mut b = books.lock().unwrap();
                    b.calls.push(call.clone());
                    if b.failing {
                        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
                    }
                    let late = b.slow > 0;
                    b.slow = b.slow.saturating_sub(1);
                    (b.apply(&call), late)
                };
                if late {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                (StatusCode::OK, answer.to_string())
            }
        };
        let app = Router::new().route("/charge", post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/charge", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, books }
    }

    fn config(&self) -> LedgerConfig {
        LedgerConfig {
            url: Some(self.url.clone()),
            secret: SECRET.into(),
            timeout_ms: 300,
            max_attempts: 3,
            backoff_base_ms: 10,
        }
    }

    fn calls(&self) -> Vec<Value> {
        self.books.lock().unwrap().calls.clone()
    }

    fn balance(&self, user: &str) -> u64 {
        self.books.lock().unwrap().balances.get(user).copied().unwrap_or(0)
    }
}

impl Books {
    /// A backend that charges each (user, key) at most once.
    fn apply(&mut self, call: &Value) -> Value {
        let user = call["user"].as_str().unwrap().to_owned();
        let key = call["key"].as_str().unwrap().to_owned();
        let amount = call["amount"].as_u64().unwrap();
        let balance = self.balances.get(&user).copied().unwrap_or(0);
        match call["op"].as_str().unwrap() {
            "debit" if self.charged.contains_key(&(user.clone(), key.clone())) => {
                json!({"outcome": "charged", "balance": balance})
            }
            "debit" if balance >= amount => {
                self.balances.insert(user.clone(), balance - amount);
                self.charged.insert((user, key), amount);
                json!({"outcome": "charged", "balance": balance - amount})
            }
            "debit" => json!({"outcome": "insufficient", "balance": balance}),
            "refund" => {
                let back = self.charged.remove(&(user.clone(), key)).unwrap_or(0);
                self.balances.insert(user, balance + back);
                json!({"outcome": "refunded", "balance": balance + back})
            }
            op => panic!("unknown op {op}"),
        }
    }
}

/// The room's sequenced events up to the chat `marker`, sent last.
async fn until_marker(events: &mut roomcast_client::Events, marker: &str) -> Vec<v1::RoomEvent> {
    let mut out = Vec::new();
    loop {
        let e = sequenced(events, 1).await.remove(0);
        let done = text(&e) == marker;
        out.push(e);
        if done {
            return out;
        }
    }
}

fn gifts(events: &[v1::RoomEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Gift(g)) => Some((e.seq, g.gift_id.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_backend_answer_is_retried_with_the_same_key_and_the_gift_broadcast_once() {
    let backend = Backend::start(&[("gia", 100)]).await;
    let ledger = backend.config();
    let server = TestServer::start_with(move |c| c.gifts.ledger = ledger).await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("paid").await.unwrap();
    let (gia, _gia_events) = server.connect("gia", Role::Viewer).await;
    gia.join("paid").await.unwrap();

    // The backend charges the first call but answers after the node gave up
    // waiting; the retry carries the same key and is answered at once.
    backend.books.lock().unwrap().slow = 1;
    let ack = gia.send_gift("paid", "heart", 2, "gia-1").await.unwrap();
    assert_eq!((ack.outcome, ack.balance), (ACCEPTED, 80), "{ack:?}");
    assert!(ack.seq > 0);
    let calls = backend.calls();
    assert!(calls.len() >= 2, "retried: {calls:?}");
    assert!(calls.iter().all(|c| *c == calls[0]), "every attempt is the same call: {calls:?}");
    assert_eq!(calls[0]["key"], "gia-1");
    assert_eq!(calls[0]["amount"], 20);
    assert_eq!(backend.balance("gia"), 80, "charged once");

    // A repeat is answered by the node with the first outcome.
    let repeat = gia.send_gift("paid", "heart", 2, "gia-1").await.unwrap();
    assert_eq!((repeat.outcome, repeat.seq, repeat.balance), (ACCEPTED, ack.seq, 80));
    assert_eq!(backend.calls().len(), calls.len(), "no call for a repeat");

    // The backend's own refusal.
    let poor = gia.send_gift("paid", "rocket", 1, "gia-2").await.unwrap();
    assert_eq!((poor.outcome, poor.balance), (INSUFFICIENT, 80));

    // A backend that keeps failing: the send is answered, nothing is charged
    // or broadcast, and the same key goes through once the backend is back.
    backend.books.lock().unwrap().failing = true;
    let down = gia.send_gift("paid", "rose", 1, "gia-3").await.unwrap();
    assert_eq!(down.outcome, UNAVAILABLE);
    backend.books.lock().unwrap().failing = false;
    let back = gia.send_gift("paid", "rose", 1, "gia-3").await.unwrap();
    assert_eq!((back.outcome, back.balance), (ACCEPTED, 79));

    watcher.send_chat("paid", "marker").await.unwrap();
    let seen = until_marker(&mut events, "marker").await;
    assert_eq!(gifts(&seen), [(ack.seq, "heart".to_owned()), (back.seq, "rose".to_owned())]);

    // Balances are the backend's: the node refuses to credit.
    let credit = server.admin("POST", "/v1/users/gia/credit", Some(r#"{"amount": 5}"#)).await;
    assert_eq!(credit.status, 409, "{}", credit.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_the_node_stopped_before_sequencing_is_sequenced_by_the_next_send_of_its_key() {
    let dir = std::env::temp_dir().join(format!("roomcast-gift-unsequenced-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The node charged the key and stopped before the room sequenced it: its
    // journal holds the debit and no receipt.
    {
        let ledger =
            roomcast_server::gifts::EmbeddedLedger::open(&dir, Duration::from_secs(86_400), 0).unwrap();
        ledger.credit("ren", 100, 0).unwrap();
        ledger.debit("ren", 10, "ren-1", roomcast_protocol::unix_ms(std::time::SystemTime::now())).unwrap();
    }
    let server = {
        let dir = dir.clone();
        TestServer::start_with(move |c| c.data_dir = dir).await
    };
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("again").await.unwrap();
    let (ren, _e) = server.connect("ren", Role::Viewer).await;
    ren.join("again").await.unwrap();
    let ack = ren.send_gift("again", "heart", 1, "ren-1").await.unwrap();
    assert_eq!((ack.outcome, ack.balance), (ACCEPTED, 90), "sequenced now, not charged again");
    assert!(ack.seq > 0, "{ack:?}");
    let repeat = ren.send_gift("again", "heart", 1, "ren-1").await.unwrap();
    assert_eq!((repeat.seq, repeat.balance), (ack.seq, 90));
    let event = wait_for(&mut events, |e| e.gift().map(|(m, _)| m.clone())).await;
    assert_eq!(event.seq, ack.seq);
    watcher.send_chat("again", "marker").await.unwrap();
    let seen = until_marker(&mut events, "marker").await;
    assert!(gifts(&seen).is_empty(), "broadcast once: {seen:?}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
