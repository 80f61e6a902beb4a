//! What a client or backend written from the published contract alone
//! (the proto, README.md and the served OpenAPI document) relies on: every
//! error code the admin API answers with is listed, with its status, in
//! the document and the README; the value ranges the schemas state are the
//! ones the node enforces, at both ends; quiz input errors use a listed
//! code; an empty text is refused with one code on both paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use roomcast_client::v1;
use roomcast_server::admin::errors::ApiCode;
use roomcast_server::auth::Role;
use roomcast_tests::TestServer;
use serde_json::{Value, json};

fn doc() -> Value {
    serde_json::to_value(roomcast_server::admin::openapi()).unwrap()
}

/// Every `` `UPPER_CASE` `` word in `text`.
fn quoted_codes(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.len() > 2 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// The code and status of an admin answer.
async fn refused(server: &TestServer, method: &str, path: &str, body: Value) -> (u16, String) {
    let answer = server.admin(method, path, Some(&body.to_string())).await;
    let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    (answer.status, v["error"]["code"].as_str().unwrap_or("").to_string())
}

#[test]
fn every_code_a_route_documents_is_in_the_stable_list_of_error_detail() {
    let doc = doc();
    let code = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
    let listed: BTreeSet<String> =
        code["enum"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    let all: BTreeSet<String> = ApiCode::ALL.iter().map(|c| c.as_str().to_string()).collect();
    assert_eq!(listed, all, "ErrorDetail.code lists every code the node answers with");
    let description = code["description"].as_str().unwrap();
    for c in ApiCode::ALL {
        let entry = format!("`{}` {}", c.as_str(), c.status().as_u16());
        assert!(description.contains(&entry), "ErrorDetail.code names {entry}: {description}");
    }
    // Every code any answer of any route names is a listed one, and comes
    // with the status the list gives it.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, answer) in op["responses"].as_object().unwrap() {
                let text = answer["description"].as_str().unwrap_or("");
                for named in quoted_codes(text) {
                    let code = ApiCode::ALL.iter().find(|c| c.as_str() == named);
                    let code = code
                        .unwrap_or_else(|| panic!("{method} {path} {status} names `{named}`, not listed"));
                    assert_eq!(
                        code.status().as_u16().to_string(),
                        *status,
                        "{method} {path}: `{named}` under {status}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_readme_lists_every_admin_error_code_with_its_status() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let flat: String = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&ApiCode::listing()),
        "README.md lists the admin API's codes as the node does: {}",
        ApiCode::listing()
    );
}

#[test]
fn the_reveal_documents_no_quiz_among_its_404s() {
    let doc = doc();
    let reveal = &doc["paths"]["/v1/rooms/{room}/quiz/questions/{question_id}/reveal"]["post"];
    let text = reveal["responses"]["404"]["description"].as_str().unwrap();
    let codes = quoted_codes(text);
    for code in ["NO_QUIZ", "NO_QUESTION", "NOT_FOUND"] {
        assert!(codes.iter().any(|c| c == code), "the reveal's 404 names {code}: {text}");
    }
}

/// A schema's property, from the served document.
fn property<'a>(doc: &'a Value, schema: &str, name: &str) -> &'a Value {
    let p = &doc["components"]["schemas"][schema]["properties"][name];
    assert!(!p.is_null(), "{schema}.{name} is in the document");
    p
}

fn number(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} stated in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiz_ranges_are_in_the_schemas_and_the_node_holds_both_ends_with_invalid_request() {
    let doc = doc();
    let server = TestServer::start().await;

    // Rounds: the schema's minimum and maximum are taken; one past either
    // end is 422 INVALID_REQUEST.
    let rounds = property(&doc, "CreateQuiz", "rounds");
    let (min, max) = (number(rounds, "minimum"), number(rounds, "maximum"));
    assert_eq!((min, max), (1, 100));
    for bad in [min - 1, max + 1] {
        let got = refused(&server, "POST", "/v1/rooms/r0/quiz", json!({"rounds": bad})).await;
        assert_eq!(got, (422, "INVALID_REQUEST".to_string()), "rounds {bad}");
    }
    for (room, good) in [("r1", min), ("r2", max)] {
        let answer = server
            .admin("POST", &format!("/v1/rooms/{room}/quiz"), Some(&json!({"rounds": good}).to_string()))
            .await;
        assert_eq!(answer.status, 201, "rounds {good}: {}", answer.body);
    }

    // Questions: options, text, correct and window, at and past each end.
    let options = property(&doc, "StartQuestion", "options");
    let (min_opts, max_opts) = (number(options, "minItems") as usize, number(options, "maxItems") as usize);
    assert_eq!((min_opts, max_opts), (2, 10));
    let text = property(&doc, "StartQuestion", "text");
    assert_eq!((number(text, "minLength"), number(text, "maxLength")), (1, 512));
    let correct = property(&doc, "StartQuestion", "correct");
    assert_eq!((number(correct, "minimum"), number(correct, "maximum")), (0, max_opts as u64 - 1));
    let window = property(&doc, "StartQuestion", "answer_window_ms");
    let (min_window, max_window) = (number(window, "minimum"), number(window, "maximum"));

    // Joined, so that the room is live and its questions can be sequenced.
    let mut raw = server.raw_session("watcher", Role::Viewer).await;
    raw.join(2, v1::Join { room: "r1".into(), ..Default::default() }).await;
    let question = |text: &str, n: usize, correct: u64, window: u64| {
        let options: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
        json!({"text": text, "options": options, "correct": correct, "media_ts_ms": 0, "answer_window_ms": window})
    };
    let path = "/v1/rooms/r1/quiz/questions";
    let bad = [
        ("one option", question("q", min_opts - 1, 0, 10_000)),
        ("too many options", question("q", max_opts + 1, 0, 10_000)),
        ("empty text", question("", 3, 0, 10_000)),
        ("text too long", question(&"x".repeat(513), 3, 0, 10_000)),
        ("correct out of range", question("q", 3, 3, 10_000)),
        ("window 0", question("q", 3, 0, min_window - 1)),
        ("window too long", question("q", 3, 0, max_window + 1)),
    ];
    for (what, body) in bad {
        assert_eq!(
            refused(&server, "POST", path, body).await,
            (422, "INVALID_REQUEST".to_string()),
            "{what}"
        );
    }
    let at_the_ends = question(&"x".repeat(512), max_opts, max_opts as u64 - 1, max_window);
    let answer = server.admin("POST", path, Some(&at_the_ends.to_string())).await;
    assert_eq!(answer.status, 200, "every value at its end is taken: {}", answer.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ranges_in_the_schemas_are_the_ones_the_node_holds() {
    let doc = doc();
    let server = TestServer::start().await;
    let amount = property(&doc, "CreditRequest", "amount");
    let (min, max) = (number(amount, "minimum"), number(amount, "maximum"));
    assert_eq!((min, max), (1, 1_000_000_000_000));
    for bad in [min - 1, max + 1] {
        let got = refused(&server, "POST", "/v1/users/ann/credit", json!({"amount": bad})).await;
        assert_eq!(got, (422, "INVALID_REQUEST".to_string()), "amount {bad}");
    }
    let answer =
        server.admin("POST", "/v1/users/ann/credit", Some(&json!({"amount": max}).to_string())).await;
    assert_eq!(answer.status, 200, "amount {max}: {}", answer.body);

    let duration = property(&doc, "SanctionRequest", "duration_secs");
    let (min, max) = (number(duration, "minimum"), number(duration, "maximum"));
    for bad in [min - 1, max + 1] {
        let got = refused(&server, "PUT", "/v1/node/mutes/ann", json!({"duration_secs": bad})).await;
        assert_eq!(got, (422, "INVALID_REQUEST".to_string()), "duration {bad}");
    }
    let answer =
        server.admin("PUT", "/v1/node/mutes/ann", Some(&json!({"duration_secs": max}).to_string())).await;
    assert!((200..300).contains(&answer.status), "duration {max}: {}", answer.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_text_is_message_too_long_from_the_admin_api_and_on_the_wire() {
    let server = TestServer::start().await;
    let mut raw = server.raw_session("ann", Role::Viewer).await;
    raw.join(2, v1::Join { room: "lobby".into(), ..Default::default() }).await;
    let chat = v1::SendChat { room: "lobby".into(), text: String::new(), ..Default::default() };
    match raw.request(3, v1::client_frame::Body::SendChat(chat)).await {
        v1::server_frame::Body::Error(e) => assert_eq!(e.code, v1::ErrorCode::MessageTooLong as i32, "{e:?}"),
        other => panic!("an empty chat answered with {other:?}"),
    }
    let got =
        refused(&server, "POST", "/v1/rooms/lobby/messages", json!({"kind": "system", "text": ""})).await;
    assert_eq!(got, (422, "MESSAGE_TOO_LONG".to_string()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_without_a_quiz_is_404_no_quiz() {
    let server = TestServer::start().await;
    let got = refused(&server, "POST", "/v1/rooms/lobby/quiz/questions/q1/reveal", Value::Null).await;
    assert_eq!(got, (404, "NO_QUIZ".to_string()));
    server.stop().await;
}

/// The room's like total as the admin API reads it, once it is not 0.
async fn like_total_once_counted(server: &TestServer, room: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + roomcast_tests::WAIT;
    loop {
        let info = server.admin("GET", &format!("/v1/rooms/{room}"), None).await;
        let info: Value = serde_json::from_str(&info.body).unwrap();
        let total = info["like_total"].as_u64().unwrap_or(0);
        if total > 0 {
            return total;
        }
        assert!(tokio::time::Instant::now() < deadline, "no like counted in {room}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The like cap as the contract states it, with the node's defaults: a
/// token bucket of 20 taps a second holding two seconds' worth, full for a
/// user the node has not seen, so a fresh user's first report counts 40
/// taps exactly; what comes after is counted at no more than 20 a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_users_first_like_report_counts_40_taps_then_20_a_second() {
    use roomcast_protocol::datagram::ClientDatagram;
    let server = TestServer::start().await;
    let mut raw = server.raw_session("lia", Role::Viewer).await;
    raw.join(2, v1::Join { room: "likes".into(), ..Default::default() }).await;
    let report = |taps| ClientDatagram::LikeReport { room: "likes".into(), taps }.encode();
    let first_sent = std::time::Instant::now();
    raw.conn.send_datagram(report(1_000)).unwrap();
    assert_eq!(
        like_total_once_counted(&server, "likes").await,
        40,
        "the burst: two seconds' worth, full at start"
    );
    raw.conn.send_datagram(report(1_000)).unwrap();
    // The second report's taps come from what refilled since the first,
    // at most 20 a second of the time between the two sends (bounded here
    // by the time since the first was sent, once the second is counted).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut total = 40;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        total = like_total_once_counted(&server, "likes").await;
    }
    let elapsed = first_sent.elapsed().as_secs_f64();
    assert!(
        (total - 40) as f64 <= 20.0 * elapsed + 1.0,
        "{} taps counted from the second report after {elapsed:.2} s",
        total - 40
    );
    server.stop().await;
}

/// The gift cap as the contract states it, with the node's defaults: a
/// token bucket of 30 sends a second holding one second's worth, full for
/// a user the node has not seen. A fresh user's burst of 60 sends has its
/// first 30 accepted, and no more than the refill adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_users_gift_burst_gets_30_then_30_a_second() {
    let server = TestServer::start().await;
    let credited = server.admin("POST", "/v1/users/gil/credit", Some(r#"{"amount":100000}"#)).await;
    assert_eq!(credited.status, 200, "{}", credited.body);
    let (client, _events) = server.connect("gil", Role::Viewer).await;
    client.join("gifts").await.unwrap();
    let started = std::time::Instant::now();
    let mut sends = Vec::new();
    for i in 0..60 {
        let c = client.clone();
        sends.push(tokio::spawn(async move {
            c.send_gift("gifts", "rose", 1, &format!("gil-{i}")).await.unwrap()
        }));
    }
    let mut accepted = 0u32;
    let mut limited = 0u32;
    for s in sends {
        let ack = s.await.unwrap();
        match v1::GiftOutcome::try_from(ack.outcome) {
            Ok(v1::GiftOutcome::Accepted) => accepted += 1,
            Ok(v1::GiftOutcome::RateLimited) => limited += 1,
            other => panic!("{other:?}: {ack:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(accepted >= 30, "the burst, full at start: {accepted} accepted");
    assert!(
        f64::from(accepted) <= 30.0 + 30.0 * elapsed + 1.0,
        "{accepted} accepted in {elapsed:.2} s: no more than the burst and the refill"
    );
    assert_eq!(accepted + limited, 60);
    server.stop().await;
}
