//! The admin HTTP API end to end: a real node on loopback, real HTTP/1.1 on
//! its admin listener, and real SDK clients watching what it does.

use std::collections::HashSet;
use std::time::Duration;

use roomcast_client::{ChatMessage, Event, v1};
use roomcast_protocol::ErrorCode;
use roomcast_server::auth::Role;
use roomcast_tests::{HttpAnswer, TestServer, WAIT, metric, sequenced, text, wait_for};
use serde_json::{Value, json};

fn body(answer: &HttpAnswer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
}

/// Asserts an error answer: its status, its JSON content type and its code.
fn assert_error(answer: &HttpAnswer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(answer.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{answer:?}");
    let v = body(answer);
    assert_eq!(v["error"]["code"], code, "{answer:?}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
}

async fn ok(server: &TestServer, method: &str, path: &str, json: Option<Value>) -> Value {
    let text = json.map(|j| j.to_string());
    let answer = server.admin(method, path, text.as_deref()).await;
    assert!((200..300).contains(&answer.status), "{method} {path}: {answer:?}");
    if answer.body.is_empty() { Value::Null } else { body(&answer) }
}

/// The room's sequence number and kept events, as the API reports them:
/// what "nothing changed" is checked against.
async fn snapshot(server: &TestServer, room: &str) -> (Value, Value) {
    let info = ok(server, "GET", &format!("/v1/rooms/{room}"), None).await;
    let history = ok(server, "GET", &format!("/v1/rooms/{room}/history"), None).await;
    (info["current_seq"].clone(), history["events"].clone())
}

// ---------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Follows a local `$ref` (`#/components/schemas/X`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Structural checks of an OpenAPI 3.1 document; returns every problem
/// found (none: valid as far as these checks go).
fn openapi_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    if !doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")) {
        problem(format!("openapi is {:?}, not 3.1.x", doc["openapi"]));
    }
    if !doc["info"]["title"].is_string() || !doc["info"]["version"].is_string() {
        problem("info needs a title and a version".into());
    }
    let schemes = doc["components"]["securitySchemes"].as_object();
    let check_security = |security: &Value, at: &str, problem: &mut dyn FnMut(String)| {
        for requirement in security.as_array().into_iter().flatten() {
            for name in requirement.as_object().into_iter().flatten().map(|(k, _)| k) {
                if !schemes.is_some_and(|s| s.contains_key(name)) {
                    problem(format!("{at}: security scheme {name} is not defined"));
                }
            }
        }
    };
    check_security(&doc["security"], "document", &mut problem);
    let Some(paths) = doc["paths"].as_object().filter(|p| !p.is_empty()) else {
        problem("no paths".into());
        return problems;
    };
    let mut operation_ids = HashSet::new();
    for (path, item) in paths {
        if !path.starts_with('/') {
            problem(format!("path {path} does not start with /"));
        }
        let templated: Vec<&str> =
            path.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name)).collect();
        let mut any = false;
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            any = true;
            let at = format!("{} {path}", method.to_uppercase());
            match op["operationId"].as_str() {
                Some(id) if operation_ids.insert(id.to_string()) => {}
                other => problem(format!("{at}: operationId {other:?} missing or repeated")),
            }
            let responses = op["responses"].as_object().filter(|r| !r.is_empty());
            if responses.is_none() {
                problem(format!("{at}: no responses"));
            }
            for (status, response) in responses.into_iter().flatten() {
                let code_ok = status == "default"
                    || status.parse::<u16>().is_ok_and(|c| (100..600).contains(&c))
                    || matches!(status.as_str(), "1XX" | "2XX" | "3XX" | "4XX" | "5XX");
                if !code_ok {
                    problem(format!("{at}: response key {status} is not a status"));
                }
                let response = match response["$ref"].as_str() {
                    Some(r) => resolve(doc, r).unwrap_or(&Value::Null),
                    None => response,
                };
                if !response["description"].is_string() {
                    problem(format!("{at} {status}: a response needs a description"));
                }
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let located = p["name"].is_string()
                    && matches!(p["in"].as_str(), Some("path" | "query" | "header" | "cookie"));
                if !located {
                    problem(format!("{at}: a parameter needs a name and a location: {p}"));
                }
                if p["in"] == "path" && p["required"] != true {
                    problem(format!("{at}: path parameter {} must be required", p["name"]));
                }
            }
            for name in &templated {
                if !params.iter().any(|p| p["in"] == "path" && p["name"] == *name) {
                    problem(format!("{at}: path parameter {name} is not described"));
                }
            }
            if let Some(b) = op.get("requestBody")
                && b["content"].as_object().is_none_or(|c| c.is_empty())
            {
                problem(format!("{at}: a request body needs content"));
            }
            check_security(&op["security"], &at, &mut problem);
        }
        if !any {
            problem(format!("{path}: no operations"));
        }
    }
    // Every reference resolves.
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str)
                    && resolve(doc, r).is_none()
                {
                    problem(format!("$ref {r} does not resolve"));
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    problems
}

/// Every documented operation, with its path's parameters filled in.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let concrete = path.replace("{room}", "stage").replace("{user}", "ann").replace("{message_id}", "m1");
        for method in METHODS {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), concrete.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_is_a_valid_openapi_3_1_document_of_every_route() {
    let server = TestServer::start().await;
    // Served without credentials.
    let answer = server.admin_raw("GET", "/openapi.json", &[], b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    let doc = body(&answer);
    assert_eq!(openapi_problems(&doc), Vec::<String>::new());
    assert_eq!(doc, serde_json::to_value(roomcast_server::admin::openapi()).unwrap(), "served as generated");

    // The checks catch a broken document.
    let mut broken = doc.clone();
    broken["components"]["schemas"].as_object_mut().unwrap().remove("ErrorBody");
    assert!(openapi_problems(&broken).iter().any(|p| p.contains("ErrorBody")), "a dangling $ref is found");
    let mut broken = doc.clone();
    broken["openapi"] = json!("3.0.3");
    assert!(!openapi_problems(&broken).is_empty(), "the version is checked");
    let mut broken = doc.clone();
    broken["paths"]["/v1/rooms"]["get"]["responses"] = json!({});
    assert!(!openapi_problems(&broken).is_empty(), "an operation without responses is found");

    // Every route the issue asks for is documented.
    let ops: HashSet<(String, String)> = operations(&doc).into_iter().collect();
    for (method, path) in [
        ("GET", "/v1/rooms"),
        ("GET", "/v1/rooms/stage"),
        ("GET", "/v1/rooms/stage/history"),
        ("POST", "/v1/rooms/stage/messages"),
        ("DELETE", "/v1/rooms/stage/messages/m1"),
        ("POST", "/v1/rooms/stage/open"),
        ("POST", "/v1/rooms/stage/close"),
        ("GET", "/v1/rooms/stage/sanctions"),
        ("PUT", "/v1/rooms/stage/mutes/ann"),
        ("DELETE", "/v1/rooms/stage/mutes/ann"),
        ("PUT", "/v1/rooms/stage/bans/ann"),
        ("DELETE", "/v1/rooms/stage/bans/ann"),
        ("POST", "/v1/rooms/stage/kicks/ann"),
        ("GET", "/v1/node/sanctions"),
        ("PUT", "/v1/node/mutes/ann"),
        ("DELETE", "/v1/node/mutes/ann"),
        ("PUT", "/v1/node/bans/ann"),
        ("DELETE", "/v1/node/bans/ann"),
        ("POST", "/v1/node/kicks/ann"),
        ("POST", "/v1/node/drain"),
        ("GET", "/openapi.json"),
    ] {
        assert!(ops.contains(&(method.to_string(), path.to_string())), "{method} {path} is not documented");
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_the_document_refuses_missing_wrong_and_non_admin_credentials_and_changes_nothing() {
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("ann", Role::Viewer).await;
    viewer.join("stage").await.unwrap();
    viewer.send_chat("stage", "before").await.unwrap();
    let before = snapshot(&server, "stage").await;

    let doc = body(&server.admin_raw("GET", "/openapi.json", &[], b"").await);
    let host_token = format!("Bearer {}", server.token("hana", Role::Host));
    let forged = format!(
        "Bearer {}",
        roomcast_server::auth::mint_hs256(b"not-the-key", "ops", "", Role::Admin, Duration::from_secs(60))
    );
    let json = ("Content-Type", "application/json");
    let payload = br#"{"kind":"system","text":"should not appear"}"#;
    let ops = operations(&doc);
    assert!(ops.len() >= 20, "{ops:?}");
    for (method, path) in ops {
        if path == "/openapi.json" {
            continue;
        }
        let nothing = server.admin_raw(&method, &path, &[json], payload).await;
        assert_error(&nothing, 401, "UNAUTHORIZED");
        let wrong_key = server.admin_raw(&method, &path, &[("X-Api-Key", "wrong"), json], payload).await;
        assert_error(&wrong_key, 401, "UNAUTHORIZED");
        let forged = server.admin_raw(&method, &path, &[("Authorization", &forged), json], payload).await;
        assert_error(&forged, 401, "UNAUTHORIZED");
        let host = server.admin_raw(&method, &path, &[("Authorization", &host_token), json], payload).await;
        assert_error(&host, 403, "FORBIDDEN");
    }
    // Nothing was published, closed, sanctioned or drained.
    assert_eq!(snapshot(&server, "stage").await, before);
    assert!(!server.drain().is_draining());
    assert_eq!(ok(&server, "GET", "/v1/rooms/stage/sanctions", None).await["sanctions"], json!([]));
    assert_eq!(ok(&server, "GET", "/v1/node/sanctions", None).await["sanctions"], json!([]));
    viewer.send_chat("stage", "still here").await.unwrap();
    let got = sequenced(&mut events, 2).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["before", "still here"], "no notice in between");

    // An admin JWT signed with the node's key is let in.
    let admin = format!("Bearer {}", server.token("ops", Role::Admin));
    let answer = server.admin_raw("GET", "/v1/rooms", &[("Authorization", &admin)], b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Publishing and recalling
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_notice_and_host_message_reach_a_watching_client_with_the_answered_seq() {
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("vic", Role::Viewer).await;
    viewer.join("show").await.unwrap();

    let notice =
        ok(&server, "POST", "/v1/rooms/show/messages", Some(json!({"kind": "system", "text": "welcome"})))
            .await;
    let got = sequenced(&mut events, 1).await.remove(0);
    assert_eq!(got.seq, notice["seq"].as_u64().unwrap());
    assert_eq!(got.message_id, notice["message_id"].as_str().unwrap());
    assert!(
        matches!(&got.kind, Some(v1::room_event::Kind::SystemNotice(n)) if n.text == "welcome"),
        "{got:?}"
    );

    let host_msg = json!({
        "kind": "host",
        "text": "we start at nine",
        "media_ts_ms": 61_000,
        "client_msg_id": "backend-7",
        "sender": {"user_id": "hana", "display_name": "Hana"}
    });
    let first = ok(&server, "POST", "/v1/rooms/show/messages", Some(host_msg.clone())).await;
    let retry = ok(&server, "POST", "/v1/rooms/show/messages", Some(host_msg)).await;
    assert_eq!(first["seq"], retry["seq"], "a retry with the same client id gets the same seq");
    assert_eq!(first["seq"].as_u64(), Some(notice["seq"].as_u64().unwrap() + 1));
    let got = sequenced(&mut events, 1).await.remove(0);
    assert_eq!(got.seq, first["seq"].as_u64().unwrap());
    assert_eq!(got.media_ts_ms, Some(61_000));
    assert!(matches!(&got.kind, Some(v1::room_event::Kind::HostMessage(h)) if h.text == "we start at nine"));
    let sender = got.sender.unwrap();
    assert_eq!((sender.user_id.as_str(), sender.role), ("hana", v1::Role::Host as i32));
    // The retry was not published twice: the next event is the next message.
    viewer.send_chat("show", "hi").await.unwrap();
    let next = sequenced(&mut events, 1).await.remove(0);
    assert_eq!((next.seq, text(&next)), (first["seq"].as_u64().unwrap() + 1, "hi"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_message_leaves_history_and_members_are_told() {
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("vic", Role::Viewer).await;
    viewer.join("show").await.unwrap();
    let ack = viewer.send_chat("show", "oops").await.unwrap();
    sequenced(&mut events, 1).await;

    let recalled = ok(&server, "DELETE", &format!("/v1/rooms/show/messages/{}", ack.message_id), None).await;
    assert_eq!(recalled["message_id"], ack.message_id.as_str());
    let notice = sequenced(&mut events, 1).await.remove(0);
    assert_eq!(notice.seq, recalled["seq"].as_u64().unwrap());
    assert!(
        matches!(&notice.kind, Some(v1::room_event::Kind::Recall(r)) if r.message_id == ack.message_id),
        "{notice:?}"
    );
    let history = ok(&server, "GET", "/v1/rooms/show/history", None).await;
    let ids: Vec<&str> =
        history["events"].as_array().unwrap().iter().filter_map(|e| e["message_id"].as_str()).collect();
    assert!(!ids.contains(&ack.message_id.as_str()), "recalled message still in history: {history}");

    // Recalling it again, or a message that never was, is NOT_FOUND.
    let again = server.admin("DELETE", &format!("/v1/rooms/show/messages/{}", ack.message_id), None).await;
    assert_error(&again, 404, "NOT_FOUND");
    assert_error(&server.admin("DELETE", "/v1/rooms/show/messages/nope", None).await, 404, "NOT_FOUND");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Rooms: list, info, history, open, close
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_busiest_first_and_info_counts_members_per_role() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for (user, role, room) in [
        ("a1", Role::Viewer, "quiet"),
        ("b1", Role::Viewer, "busy"),
        ("b2", Role::Viewer, "busy"),
        ("b3", Role::Viewer, "busy"),
        ("bh", Role::Host, "busy"),
        ("ba", Role::Admin, "busy"),
        ("m1", Role::Viewer, "middle"),
        ("m2", Role::Viewer, "middle"),
    ] {
        let (c, e) = server.connect(user, role).await;
        c.join(room).await.unwrap();
        clients.push((c, e));
    }
    // Online counts follow heartbeats; wait until the node sees them all.
    let deadline = tokio::time::Instant::now() + WAIT;
    let list = loop {
        let list = ok(&server, "GET", "/v1/rooms", None).await;
        let online: Vec<u64> =
            list["rooms"].as_array().unwrap().iter().map(|r| r["online"].as_u64().unwrap()).collect();
        if online == [5, 2, 1] {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "online counts never settled: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> =
        list["rooms"].as_array().unwrap().iter().map(|r| r["room"].as_str().unwrap()).collect();
    assert_eq!(names, ["busy", "middle", "quiet"]);
    assert_eq!(list["total"], 3);
    let limited = ok(&server, "GET", "/v1/rooms?limit=1", None).await;
    assert_eq!((limited["rooms"].as_array().unwrap().len(), &limited["total"]), (1, &json!(3)));
    assert_eq!(limited["rooms"][0]["room"], "busy");

    let info = ok(&server, "GET", "/v1/rooms/busy", None).await;
    assert_eq!(info["by_role"], json!({"viewers": 3, "hosts": 1, "admins": 1}));
    assert_eq!((&info["online"], &info["members"], &info["users_total"]), (&json!(5), &json!(5), &json!(5)));
    assert_eq!(info["users"].as_array().unwrap().len(), 5);
    // Paged: two pages of 3 and 2, together every user once.
    let p1 = ok(&server, "GET", "/v1/rooms/busy?offset=0&limit=3", None).await;
    let p2 = ok(&server, "GET", "/v1/rooms/busy?offset=3&limit=3", None).await;
    let mut users: Vec<String> = [&p1, &p2]
        .iter()
        .flat_map(|p| {
            p["users"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!((p1["users"].as_array().unwrap().len(), p2["users"].as_array().unwrap().len()), (3, 2));
    users.sort();
    assert_eq!(users, ["b1", "b2", "b3", "ba", "bh"]);
    assert_error(&server.admin("GET", "/v1/rooms/nowhere", None).await, 404, "NOT_FOUND");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_by_sequence_range_and_by_media_range() {
    let server = TestServer::start().await;
    let (host, _events) = server.connect("hana", Role::Host).await;
    host.join("replay").await.unwrap();
    for i in 1..=6u64 {
        let msg = ChatMessage {
            room: "replay".into(),
            text: format!("m{i}"),
            client_msg_id: format!("c{i}"),
            media_ts_ms: Some(i * 10_000),
        };
        host.send(msg).await.unwrap();
    }
    let texts = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["body"]["text"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let seqs = |v: &Value| -> Vec<u64> {
        v["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    let all = ok(&server, "GET", "/v1/rooms/replay/history", None).await;
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
    assert_eq!(all["events"][0]["body"]["type"], "host_message");
    assert_eq!(all["events"][0]["sender"]["user_id"], "hana");
    let by_seq = ok(&server, "GET", "/v1/rooms/replay/history?from_seq=2&to_seq=4", None).await;
    assert_eq!(texts(&by_seq), ["m2", "m3", "m4"]);
    let by_media = ok(&server, "GET", "/v1/rooms/replay/history?from_ms=25000&to_ms=50000", None).await;
    assert_eq!(texts(&by_media), ["m3", "m4", "m5"]);
    assert_eq!(by_media["events"][0]["media_ts_ms"], 30_000);
    let limited = ok(&server, "GET", "/v1/rooms/replay/history?from_seq=1&limit=2", None).await;
    assert_eq!((seqs(&limited), &limited["truncated"]), (vec![1, 2], &json!(true)));
    // Both kinds of range at once, or a range backwards, is refused.
    let both = server.admin("GET", "/v1/rooms/replay/history?from_seq=1&from_ms=0", None).await;
    assert_error(&both, 422, "INVALID_REQUEST");
    let backwards = server.admin("GET", "/v1/rooms/replay/history?from_seq=5&to_seq=2", None).await;
    assert_error(&backwards, 422, "INVALID_REQUEST");
    let junk = server.admin("GET", "/v1/rooms/replay/history?from_seq=abc", None).await;
    assert_error(&junk, 400, "BAD_REQUEST");
    assert_error(&server.admin("GET", "/v1/rooms/elsewhere/history", None).await, 404, "NOT_FOUND");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_room_ends_members_streams_and_refuses_joins_until_it_is_opened() {
    // A reopened room replaces the closed one at once, with a new epoch.
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("vic", Role::Viewer).await;
    viewer.join("gig").await.unwrap();
    viewer.send_chat("gig", "hello").await.unwrap();

    let closed = ok(&server, "POST", "/v1/rooms/gig/close", Some(json!({"reason": "show over"}))).await;
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["final_seq"], 2, "the chat, then the closing status: {closed}");
    let removed = wait_for(&mut events, |e| match e {
        Event::Removed { room, code, reason } if room == "gig" => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(removed.0, Some(ErrorCode::RoomClosed));
    let err = viewer.join("gig").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RoomClosed), "{err}");
    // Publishing into a closed room is refused.
    let refused =
        server.admin("POST", "/v1/rooms/gig/messages", Some(r#"{"kind":"system","text":"x"}"#)).await;
    assert_error(&refused, 409, "ROOM_CLOSED");
    let info = ok(&server, "GET", "/v1/rooms/gig", None).await;
    assert_eq!((&info["state"], &info["current_seq"]), (&json!("closed"), &json!(2)));

    let opened = ok(&server, "POST", "/v1/rooms/gig/open", None).await;
    assert_eq!(opened["state"], "open");
    let again = viewer.join("gig").await.unwrap();
    assert_eq!(again.current_seq, 0, "a fresh incarnation");
    let info = ok(&server, "GET", "/v1/rooms/gig", None).await;
    assert_eq!((&info["state"], &info["members"]), (&json!("open"), &json!(1)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_room_exists_before_anyone_joins_and_keeps_what_was_published() {
    let server = TestServer::start().await;
    assert_error(&server.admin("GET", "/v1/rooms/premiere", None).await, 404, "NOT_FOUND");
    assert_eq!(ok(&server, "POST", "/v1/rooms/premiere/open", None).await["state"], "open");
    let info = ok(&server, "GET", "/v1/rooms/premiere", None).await;
    assert_eq!((&info["state"], &info["members"]), (&json!("open"), &json!(0)));
    let ack =
        ok(&server, "POST", "/v1/rooms/premiere/messages", Some(json!({"kind": "system", "text": "soon"})))
            .await;
    assert_eq!(ack["seq"], 1);
    let (viewer, _events) = server.connect("early", Role::Viewer).await;
    let joined = viewer.join("premiere").await.unwrap();
    assert_eq!(joined.current_seq, 1);
    assert_eq!(joined.history.iter().map(text).collect::<Vec<_>>(), ["soon"]);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Moderation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_viewer_is_refused_with_muted_until_unmuted_or_expired() {
    let server = TestServer::start().await;
    let (viewer, _events) = server.connect("loud", Role::Viewer).await;
    viewer.join("talk").await.unwrap();
    viewer.send_chat("talk", "first").await.unwrap();

    let muted = ok(&server, "PUT", "/v1/rooms/talk/mutes/loud", Some(json!({"reason": "spam"}))).await;
    assert_eq!(muted["sanction"]["kind"], "mute");
    assert_eq!(muted["sanction"]["until_ms"], Value::Null);
    let err = viewer.send_chat("talk", "more").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Muted), "{err}");
    let list = ok(&server, "GET", "/v1/rooms/talk/sanctions", None).await;
    assert_eq!(list["sanctions"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&list["sanctions"][0]["user"], &list["sanctions"][0]["reason"]),
        (&json!("loud"), &json!("spam"))
    );

    assert_eq!(server.admin("DELETE", "/v1/rooms/talk/mutes/loud", None).await.status, 204);
    viewer.send_chat("talk", "back").await.unwrap();
    assert_error(&server.admin("DELETE", "/v1/rooms/talk/mutes/loud", None).await, 404, "NOT_FOUND");

    // A node-wide mute with an expiry: refused, then let through once it ends.
    let muted = ok(&server, "PUT", "/v1/node/mutes/loud", Some(json!({"duration_secs": 1}))).await;
    assert!(muted["sanction"]["until_ms"].as_u64().is_some());
    assert_eq!(viewer.send_chat("talk", "x").await.unwrap_err().code(), Some(ErrorCode::Muted));
    assert_eq!(
        ok(&server, "GET", "/v1/node/sanctions", None).await["sanctions"].as_array().unwrap().len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    viewer.send_chat("talk", "after").await.unwrap();
    assert_eq!(ok(&server, "GET", "/v1/node/sanctions", None).await["sanctions"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_or_banned_client_loses_the_room_and_its_rejoin_is_refused() {
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("troll", Role::Viewer).await;
    let (other, _other_events) = server.connect("fine", Role::Viewer).await;
    viewer.join("hall").await.unwrap();
    other.join("hall").await.unwrap();

    let kicked =
        ok(&server, "POST", "/v1/rooms/hall/kicks/troll", Some(json!({"reason": "calm down"}))).await;
    assert_eq!(kicked["removed"], 1);
    assert_eq!(kicked["sanction"]["kind"], "ban");
    assert!(kicked["sanction"]["until_ms"].as_u64().is_some(), "a kick ends");
    let (code, reason) = wait_for(&mut events, |e| match e {
        Event::Removed { room, code, reason } if room == "hall" => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!((code, reason.as_str()), (Some(ErrorCode::Banned), "calm down"));
    assert_eq!(viewer.join("hall").await.unwrap_err().code(), Some(ErrorCode::Banned));
    // Other rooms and other users are untouched.
    viewer.join("elsewhere").await.unwrap();
    other.send_chat("hall", "still in").await.unwrap();
    let bans = ok(&server, "GET", "/v1/rooms/hall/sanctions", None).await;
    assert_eq!(bans["sanctions"][0]["user"], "troll");

    // Lifting it lets the user back; a node-wide ban removes it everywhere.
    assert_eq!(server.admin("DELETE", "/v1/rooms/hall/bans/troll", None).await.status, 204);
    viewer.join("hall").await.unwrap();
    let banned = ok(&server, "PUT", "/v1/node/bans/troll", None).await;
    assert_eq!(banned["removed"], 2, "both rooms: {banned}");
    for _ in 0..2 {
        wait_for(&mut events, |e| {
            matches!(e, Event::Removed { code: Some(ErrorCode::Banned), .. }).then_some(())
        })
        .await;
    }
    assert_eq!(viewer.join("third").await.unwrap_err().code(), Some(ErrorCode::Banned));
    assert_eq!(server.admin("DELETE", "/v1/node/bans/troll", None).await.status, 204);
    viewer.join("third").await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_endpoint_drains_the_node() {
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("vic", Role::Viewer).await;
    viewer.join("last").await.unwrap();
    let answer = server.admin("POST", "/v1/node/drain", None).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(body(&answer)["started"], true);
    assert!(server.drain().is_draining());
    let code = wait_for(&mut events, |e| match e {
        Event::Reconnecting { code, .. } | Event::Disconnected { code, .. } => Some(*code),
        _ => None,
    });
    let code = tokio::time::timeout(WAIT, code).await;
    assert!(matches!(code, Ok(Some(ErrorCode::ServerDraining))), "{code:?}");
    server.finished().await.unwrap();
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_error_with_a_stable_code_and_changes_nothing() {
    let server = TestServer::start().await;
    let (viewer, mut events) = server.connect("vic", Role::Viewer).await;
    viewer.join("stage").await.unwrap();
    viewer.send_chat("stage", "before").await.unwrap();
    let before = snapshot(&server, "stage").await;
    let key = ("X-Api-Key", server.admin_key.as_str());
    let json_type = ("Content-Type", "application/json");
    let post = |body: &'static [u8], headers: Vec<(&'static str, &'static str)>| {
        let server = &server;
        async move {
            let mut h = vec![key];
            h.extend(headers);
            server.admin_raw("POST", "/v1/rooms/stage/messages", &h, body).await
        }
    };

    assert_error(&post(br#"{"kind":"system","text":"x""#, vec![json_type]).await, 400, "BAD_REQUEST");
    assert_error(&post(b"not json at all", vec![json_type]).await, 400, "BAD_REQUEST");
    assert_error(&post(br#"{"kind":"loud","text":"x"}"#, vec![json_type]).await, 422, "INVALID_REQUEST");
    assert_error(&post(br#"{"kind":"system"}"#, vec![json_type]).await, 422, "INVALID_REQUEST");
    assert_error(
        &post(br#"{"kind":"system","text":"x","extra":1}"#, vec![json_type]).await,
        422,
        "INVALID_REQUEST",
    );
    // An empty text, as an empty chat on the wire: MESSAGE_TOO_LONG.
    assert_error(&post(br#"{"kind":"system","text":""}"#, vec![json_type]).await, 422, "MESSAGE_TOO_LONG");
    assert_error(&post(br#"{"kind":"system","text":"x"}"#, vec![]).await, 415, "UNSUPPORTED_MEDIA_TYPE");
    assert_error(
        &post(br#"{"kind":"system","text":"x"}"#, vec![("Content-Type", "text/plain")]).await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    let long = json!({"kind": "system", "text": "x".repeat(513)}).to_string();
    let answer = server.admin("POST", "/v1/rooms/stage/messages", Some(&long)).await;
    assert_error(&answer, 422, "MESSAGE_TOO_LONG");
    // A body over the 64 KiB limit, valid JSON otherwise.
    let huge = json!({"kind": "system", "text": "x".repeat(65 * 1024)}).to_string();
    let answer = server.admin("POST", "/v1/rooms/stage/messages", Some(&huge)).await;
    assert_error(&answer, 413, "PAYLOAD_TOO_LARGE");
    // A sanction with a malformed body is not recorded.
    let answer = server.admin("PUT", "/v1/rooms/stage/mutes/vic", Some(r#"{"duration_secs":"#)).await;
    assert_error(&answer, 400, "BAD_REQUEST");
    let answer = server.admin("PUT", "/v1/rooms/stage/bans/vic", Some(r#"{"duration_secs":0}"#)).await;
    assert_error(&answer, 422, "INVALID_REQUEST");
    let answer = server
        .admin("POST", "/v1/rooms/stage/close", Some(&json!({"reason": "r".repeat(300)}).to_string()))
        .await;
    assert_error(&answer, 422, "INVALID_REQUEST");
    // Unknown and invalid rooms, unknown routes and methods.
    let answer =
        server.admin("POST", "/v1/rooms/nowhere/messages", Some(r#"{"kind":"system","text":"x"}"#)).await;
    assert_error(&answer, 404, "NOT_FOUND");
    assert_error(&server.admin("GET", "/v1/rooms/bad%20room", None).await, 400, "INVALID_ROOM");
    assert_error(&server.admin("GET", "/v1/nothing-here", None).await, 404, "NOT_FOUND");
    assert_error(&server.admin("PATCH", "/v1/rooms", None).await, 405, "METHOD_NOT_ALLOWED");

    // Nothing changed: the room's events, its state, the sanctions.
    assert_eq!(snapshot(&server, "stage").await, before);
    assert_eq!(ok(&server, "GET", "/v1/rooms/stage/sanctions", None).await["sanctions"], json!([]));
    assert_eq!(ok(&server, "GET", "/v1/rooms/stage", None).await["state"], "auto");
    assert!(
        ok(&server, "GET", "/v1/rooms", None).await["rooms"].as_array().unwrap().len() == 1,
        "no room made"
    );
    viewer.send_chat("stage", "after").await.unwrap();
    let got = sequenced(&mut events, 2).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["before", "after"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_are_counted_by_route_and_status() {
    let server = TestServer::start().await;
    ok(&server, "GET", "/v1/rooms", None).await;
    ok(&server, "GET", "/v1/rooms", None).await;
    server.admin_raw("GET", "/v1/rooms", &[], b"").await;
    server.admin("GET", "/v1/rooms/nowhere", None).await;
    server.admin("GET", "/v1/nothing-here", None).await;
    let text = server.scrape().await;
    let count = |labels: &str| metric(&text, &format!("roomcast_admin_requests_total{{{labels}}}"));
    assert_eq!(count(r#"method="GET",route="/v1/rooms",status="200""#), Some(2.0), "{text}");
    assert_eq!(count(r#"method="GET",route="/v1/rooms",status="401""#), Some(1.0));
    assert_eq!(count(r#"method="GET",route="/v1/rooms/{room}",status="404""#), Some(1.0));
    assert_eq!(count(r#"method="GET",route="unmatched",status="404""#), Some(1.0));
    server.stop().await;
}
