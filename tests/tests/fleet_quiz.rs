//! A live quiz across a fleet, against a real `redis-server`: the platform
//! drives it through any node's admin API, players on every node answer it
//! once each fleet-wide, the counts are exact, and each player hears its own
//! verdict from its own node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::SystemTime;

use roomcast_client::{Client, Event, Events, v1};
use roomcast_protocol::unix_ms;
use roomcast_server::auth::Role;
use roomcast_tests::redis::RedisServer;
use roomcast_tests::{TestServer, wait_for};
use serde_json::{Value, json};

const ACCEPTED: i32 = v1::AnswerOutcome::Accepted as i32;
const ALREADY: i32 = v1::AnswerOutcome::AlreadyAnswered as i32;
const ELIMINATED: i32 = v1::AnswerOutcome::Eliminated as i32;

async fn admin(node: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let answer = node.admin(method, path, body.as_deref()).await;
    assert!((200..300).contains(&answer.status), "{method} {path}: {} {}", answer.status, answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

async fn ask(node: &TestServer, room: &str, correct: u32) -> String {
    let body = json!({
        "text": "Which is prime?",
        "options": ["4", "7", "9"],
        "correct": correct,
        "media_ts_ms": 60_000,
        "answer_window_ms": 10_000,
        "latest_display_ms": unix_ms(SystemTime::now()) + 1_000,
    });
    let q = admin(node, "POST", &format!("/v1/rooms/{room}/quiz/questions"), Some(body)).await;
    q["question_id"].as_str().unwrap().to_string()
}

async fn verdict(events: &mut Events) -> v1::QuizVerdict {
    wait_for(events, |e| match e {
        Event::QuizVerdict(v) => Some(v.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_every_node_answer_one_quiz_once_each_and_hear_their_verdicts() {
    let redis = RedisServer::start().await;
    let a = TestServer::in_fleet(&redis.url(), None).await;
    let b = TestServer::in_fleet(&redis.url(), Some(&a.secret)).await;
    let connect =
        |node: &TestServer, user: &str| Client::connect(node.client_config(a.token(user, Role::Viewer)));
    let (host, _h) = Client::connect(a.client_config(a.token("hana", Role::Host))).await.unwrap();
    host.join("show").await.unwrap();
    let (ann, mut ann_events) = connect(&a, "ann").await.unwrap();
    let (bob, mut bob_events) = connect(&b, "bob").await.unwrap();
    let (cy, mut cy_events) = connect(&b, "cy").await.unwrap();
    let (bob_again, _b2) = connect(&a, "bob").await.unwrap();
    for c in [&ann, &bob, &cy, &bob_again] {
        c.join("show").await.unwrap();
    }

    // Created and asked through A, answered on both nodes.
    let quiz = admin(&a, "POST", "/v1/rooms/show/quiz", Some(json!({"rounds": 2}))).await;
    assert_eq!(quiz["asked"], 0);
    let q1 = ask(&a, "show", 1).await;
    assert_eq!(ann.answer("show", &q1, 1).await.unwrap().outcome, ACCEPTED);
    assert_eq!(bob.answer("show", &q1, 0).await.unwrap().outcome, ACCEPTED);
    assert_eq!(cy.answer("show", &q1, 1).await.unwrap().outcome, ACCEPTED);
    // Bob again, through the other node: his first answer stands.
    let again = bob_again.answer("show", &q1, 1).await.unwrap();
    assert_eq!((again.outcome, again.option), (ALREADY, 0));
    let status = admin(&b, "GET", "/v1/rooms/show/quiz", None).await;
    assert_eq!((status["players"].clone(), status["open_question"].clone()), (json!(3), json!(q1)));

    // Revealed through B: exact counts, and every player's verdict from
    // their own node.
    let reveal = admin(&b, "POST", &format!("/v1/rooms/show/quiz/questions/{q1}/reveal"), None).await;
    assert_eq!(reveal["counts"], json!([1, 2, 0]));
    assert_eq!(reveal["remaining"], 2);
    let (va, vb, vc) =
        (verdict(&mut ann_events).await, verdict(&mut bob_events).await, verdict(&mut cy_events).await);
    assert!(va.correct && va.still_in, "{va:?}");
    assert!(!vb.correct && !vb.still_in, "{vb:?}");
    assert!(vc.correct && vc.still_in && vc.room == "show", "{vc:?}");

    // Bob is out; a newcomer after the first reveal is out from the start.
    let q2 = ask(&b, "show", 2).await;
    assert_eq!(bob.answer("show", &q2, 2).await.unwrap().outcome, ELIMINATED);
    let (dee, _d) = connect(&b, "dee").await.unwrap();
    dee.join("show").await.unwrap();
    assert_eq!(dee.answer("show", &q2, 2).await.unwrap().outcome, ELIMINATED);
    assert_eq!(ann.answer("show", &q2, 2).await.unwrap().outcome, ACCEPTED);
    assert_eq!(cy.answer("show", &q2, 0).await.unwrap().outcome, ACCEPTED);
    let reveal = admin(&a, "POST", &format!("/v1/rooms/show/quiz/questions/{q2}/reveal"), None).await;
    assert_eq!((reveal["counts"].clone(), reveal["last"].clone()), (json!([1, 0, 1]), json!(true)));
    assert!(!verdict(&mut cy_events).await.still_in);
    let ended = admin(&b, "DELETE", "/v1/rooms/show/quiz", None).await;
    assert_eq!(ended["winners"], json!(["ann"]));

    // The room's next quiz starts clean: last quiz's answers and standings
    // count for nothing.
    admin(&a, "POST", "/v1/rooms/show/quiz", Some(json!({"rounds": 1}))).await;
    let next = ask(&b, "show", 0).await;
    assert_eq!(bob.answer("show", &next, 0).await.unwrap().outcome, ACCEPTED, "bob plays again");
    assert_eq!(ann.answer("show", &next, 0).await.unwrap().outcome, ACCEPTED);
    let reveal = admin(&a, "POST", &format!("/v1/rooms/show/quiz/questions/{next}/reveal"), None).await;
    assert_eq!((reveal["counts"].clone(), reveal["remaining"].clone()), (json!([2, 0, 0]), json!(2)));
    a.stop().await;
    b.stop().await;
}

/// In a fleet too, a player on a bare QUIC connection that sends nothing
/// after answering (heartbeats a minute apart, so no presence check wakes
/// its session) is told its verdict at the reveal, revealed through another
/// node, not at its next packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_player_that_sends_nothing_after_answering_gets_its_verdict_at_the_reveal() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start_with(|c| {
        c.redis = Some(url.clone());
        c.presence.heartbeat_interval_ms = 60_000;
    })
    .await;
    let b = TestServer::in_fleet(&redis.url(), Some(&a.secret)).await;
    let mut raw = a.raw_session("ann", Role::Viewer).await;
    raw.join(2, v1::Join { room: "silent".into(), ..Default::default() }).await;
    // The room is live on B too, where the platform drives the quiz.
    let (host, _h) = Client::connect(b.client_config(a.token("hana", Role::Host))).await.unwrap();
    host.join("silent").await.unwrap();
    admin(&b, "POST", "/v1/rooms/silent/quiz", Some(json!({"rounds": 1}))).await;
    let q = ask(&b, "silent", 1).await;
    let body = v1::client_frame::Body::SubmitAnswer(v1::SubmitAnswer {
        room: "silent".into(),
        question_id: q.clone(),
        option: 1,
    });
    match raw.request(3, body).await {
        v1::server_frame::Body::AnswerAck(ack) => assert_eq!(ack.outcome, ACCEPTED),
        other => panic!("answer answered with {other:?}"),
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    admin(&b, "POST", &format!("/v1/rooms/silent/quiz/questions/{q}/reveal"), None).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let verdict = loop {
        match tokio::time::timeout_at(deadline, raw.control.server_frame()).await {
            Ok(Some(v1::ServerFrame {
                request_id: 0,
                body: Some(v1::server_frame::Body::QuizVerdict(v)),
            })) => {
                break v;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no verdict within 5 s of the reveal"),
        }
    };
    assert!(verdict.correct && verdict.still_in && verdict.room == "silent", "{verdict:?}");
    a.stop().await;
    b.stop().await;
}

/// The same quiz rules in a fleet: the platform drives the quiz through one
/// node while the players, silent but for their answers, are on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stated_quiz_rules_hold_in_a_fleet() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start_with(|c| {
        c.redis = Some(url.clone());
        c.presence.heartbeat_interval_ms = 60_000;
    })
    .await;
    let b = TestServer::in_fleet(&redis.url(), Some(&a.secret)).await;
    let (host, _h) = Client::connect(b.client_config(a.token("hana", Role::Host))).await.unwrap();
    host.join("rules").await.unwrap();
    roomcast_tests::quiz_rules::quiz_rules_hold(&b, &a, "rules").await;
    a.stop().await;
    b.stop().await;
}
