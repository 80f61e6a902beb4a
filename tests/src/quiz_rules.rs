//! The quiz rules the contract states, as one scenario on bare QUIC
//! sessions, run against one node (tests/quiz.rs) and a fleet
//! (tests/fleet_quiz.rs): who is a player, that a missed answer spends a
//! revive card, that a user refused as ELIMINATED gets no verdicts, which
//! outcome wins when several apply, and that every verdict arrives within
//! the stated bound after its reveal without the player sending anything.

use std::time::{Duration, SystemTime};

use roomcast_protocol::{unix_ms, v1};
use roomcast_server::auth::Role;
use serde_json::{Value, json};

use crate::{RawSession, TestServer};

/// The bound the contract states for a verdict after its reveal, plus
/// slack for a loaded test machine.
pub const VERDICT_WITHIN: Duration = Duration::from_secs(3);

use v1::AnswerOutcome as O;

async fn admin(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let answer = server.admin(method, path, body.as_deref()).await;
    assert!((200..300).contains(&answer.status), "{method} {path}: {} {}", answer.status, answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// A player on a bare session: it answers, and otherwise sends nothing.
struct Player {
    raw: RawSession,
    next_rid: u32,
    verdicts: Vec<v1::QuizVerdict>,
}

impl Player {
    async fn join(server: &TestServer, user: &str, room: &str) -> Self {
        let mut raw = server.raw_session(user, Role::Viewer).await;
        raw.join(2, v1::Join { room: room.into(), ..Default::default() }).await;
        Self { raw, next_rid: 3, verdicts: Vec::new() }
    }

    /// Answers and returns the outcome and the option on record; verdicts
    /// read on the way are kept.
    async fn answer(&mut self, room: &str, qid: &str, option: u32) -> (O, u32) {
        let rid = self.next_rid;
        self.next_rid += 1;
        let body = v1::client_frame::Body::SubmitAnswer(v1::SubmitAnswer {
            room: room.into(),
            question_id: qid.into(),
            option,
        });
        self.raw.send(rid, body).await;
        loop {
            let frame = tokio::time::timeout(crate::WAIT, self.raw.control.server_frame())
                .await
                .expect("no answer in time")
                .expect("control stream ended");
            match frame.body {
                Some(v1::server_frame::Body::QuizVerdict(v)) if frame.request_id == 0 => {
                    self.verdicts.push(v)
                }
                Some(v1::server_frame::Body::AnswerAck(a)) if frame.request_id == rid => {
                    return (O::try_from(a.outcome).unwrap(), a.option);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The verdict on `qid`, if one comes within `within`.
    async fn verdict(&mut self, qid: &str, within: Duration) -> Option<v1::QuizVerdict> {
        if let Some(i) = self.verdicts.iter().position(|v| v.question_id == qid) {
            return Some(self.verdicts.remove(i));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.raw.control.server_frame()).await.ok()??;
            match frame.body {
                Some(v1::server_frame::Body::QuizVerdict(v)) if v.question_id == qid => return Some(v),
                Some(v1::server_frame::Body::QuizVerdict(v)) => self.verdicts.push(v),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

async fn ask(server: &TestServer, room: &str, correct: u32, window_ms: u32) -> String {
    let body = json!({
        "text": "Which is prime?",
        "options": ["4", "7", "9"],
        "correct": correct,
        "media_ts_ms": 60_000,
        "answer_window_ms": window_ms,
        "latest_display_ms": unix_ms(SystemTime::now()) + 1_000,
    });
    let q = admin(server, "POST", &format!("/v1/rooms/{room}/quiz/questions"), Some(body)).await;
    q["question_id"].as_str().unwrap().to_string()
}

async fn reveal(server: &TestServer, room: &str, qid: &str) -> Value {
    admin(server, "POST", &format!("/v1/rooms/{room}/quiz/questions/{qid}/reveal"), None).await
}

/// The scenario. `admin_node` takes the platform's calls; `player_node`
/// holds the players (the same node, or another in a fleet). The room must
/// be live on `admin_node` (a member there) for questions to start.
pub async fn quiz_rules_hold(admin_node: &TestServer, player_node: &TestServer, room: &str) {
    let mut ann = Player::join(player_node, "ann", room).await;
    let mut bob = Player::join(player_node, "bob", room).await;
    let mut cy = Player::join(player_node, "cy", room).await;
    admin(
        admin_node,
        "POST",
        &format!("/v1/rooms/{room}/quiz"),
        Some(json!({"rounds": 3, "revive_cards": 1, "stream_delay_ms": 0})),
    )
    .await;

    // Round 1: Ann and Bob answer and so become players; Cy does not.
    let q1 = ask(admin_node, room, 1, 30_000).await;
    assert_eq!(ann.answer(room, &q1, 1).await, (O::Accepted, 1));
    assert_eq!(bob.answer(room, &q1, 1).await, (O::Accepted, 1));
    // Ann's second session: her first answer stands, and this session too
    // hears her verdicts.
    let mut ann_too = Player::join(player_node, "ann", room).await;
    assert_eq!(ann_too.answer(room, &q1, 0).await, (O::AlreadyAnswered, 1));
    let r = reveal(admin_node, room, &q1).await;
    assert_eq!(r["remaining"], 2, "players still in: users with an accepted answer, not eliminated");
    for p in [&mut ann, &mut bob, &mut ann_too] {
        let v = p.verdict(&q1, VERDICT_WITHIN).await.expect("a player's verdict within the bound");
        assert!(v.correct && v.still_in && !v.revive_used && v.revives_left == 1, "{v:?}");
    }

    // Round 2: Bob misses it and spends his revive card; Cy answers for the
    // first time after a reveal and is refused as eliminated.
    let q2 = ask(admin_node, room, 1, 30_000).await;
    assert_eq!(ann.answer(room, &q2, 1).await, (O::Accepted, 1));
    assert_eq!(cy.answer(room, &q2, 1).await, (O::Eliminated, 0));
    let r = reveal(admin_node, room, &q2).await;
    assert_eq!(r["remaining"], 2, "Bob is still in on his card; Cy never was a player");
    let v = bob.verdict(&q2, VERDICT_WITHIN).await.expect("the missed answer's verdict");
    assert!(
        !v.correct && v.still_in && v.revive_used && v.revives_left == 0,
        "a missed answer spends a card: {v:?}"
    );
    assert!(ann.verdict(&q2, VERDICT_WITHIN).await.is_some());
    assert!(
        cy.verdict(&q2, Duration::from_millis(500)).await.is_none(),
        "a user refused as ELIMINATED gets no verdict"
    );

    // Round 3, a short window: Ann answers in time; after the window her
    // repeat is ALREADY_ANSWERED (not TOO_LATE) with her first option, and
    // Cy's answer is TOO_LATE (not ELIMINATED). Bob answers wrong in time
    // and, with no card left, is out.
    let q3 = ask(admin_node, room, 2, 1_000).await;
    assert_eq!(ann.answer(room, &q3, 2).await, (O::Accepted, 2));
    assert_eq!(bob.answer(room, &q3, 0).await, (O::Accepted, 0));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(ann.answer(room, &q3, 0).await, (O::AlreadyAnswered, 2));
    assert_eq!(cy.answer(room, &q3, 2).await, (O::TooLate, 0));
    let r = reveal(admin_node, room, &q3).await;
    assert_eq!((r["remaining"].clone(), r["last"].clone()), (json!(1), json!(true)));
    let v = bob.verdict(&q3, VERDICT_WITHIN).await.expect("the eliminating verdict");
    assert!(!v.still_in && !v.revive_used, "{v:?}");
    let v = ann.verdict(&q3, VERDICT_WITHIN).await.expect("the winner's verdict");
    assert!(v.correct && v.still_in, "{v:?}");
    assert!(cy.verdict(&q3, Duration::from_millis(500)).await.is_none());
    let ended = admin(admin_node, "DELETE", &format!("/v1/rooms/{room}/quiz"), None).await;
    assert_eq!(ended["winners"], json!(["ann"]));
}
