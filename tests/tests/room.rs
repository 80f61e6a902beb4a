//! A live room end to end: ordering, presence, history, over real QUIC.

use std::collections::HashSet;

use roomcast_client::{ChatMessage, Event, v1};
use roomcast_server::auth::Role;
use roomcast_tests::{TestServer, sequenced, text, wait_for, wait_online};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_see_every_chat_in_the_same_order() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for user in ["ann", "ben", "cat"] {
        let (c, e) = server.connect(user, Role::Viewer).await;
        let joined = c.join("stage").await.unwrap();
        assert_eq!(joined.current_seq, 0);
        clients.push((c, e));
    }
    // All three send at once, from their own connections.
    let per_client = 15;
    let mut sends = Vec::new();
    for (c, _) in &clients {
        let c = c.clone();
        sends.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_client {
                seqs.push(c.send_chat("stage", &format!("msg {i}")).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut acked = HashSet::new();
    for s in sends {
        let seqs = s.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one sender's acks increase: {seqs:?}");
        acked.extend(seqs);
    }
    let total = per_client * 3;
    assert_eq!(acked, (1..=total as u64).collect::<HashSet<_>>(), "every ack got a distinct seq, no holes");

    let mut orders = Vec::new();
    for (_, events) in &mut clients {
        let got = sequenced(events, total).await;
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
        orders.push(got.iter().map(|e| (e.message_id.clone(), text(e).to_string())).collect::<Vec<_>>());
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_carries_sender_kind_media_timestamp_and_is_acked_once_per_client_id() {
    let server = TestServer::start().await;
    let (host, _host_events) = server.connect("hana", Role::Host).await;
    let (viewer, mut events) = server.connect("vic", Role::Viewer).await;
    host.join("show").await.unwrap();
    viewer.join("show").await.unwrap();
    let msg = ChatMessage {
        room: "show".into(),
        text: "welcome!".into(),
        client_msg_id: "hana-1".into(),
        media_ts_ms: Some(61_000),
    };
    let ack = host.send(msg.clone()).await.unwrap();
    let again = host.send(msg).await.unwrap();
    assert_eq!(ack, again, "a retried send is acknowledged with the same seq");
    let got = sequenced(&mut events, 1).await.remove(0);
    assert_eq!(got.seq, ack.seq);
    assert_eq!(got.message_id, ack.message_id);
    assert_eq!(got.media_ts_ms, Some(61_000));
    assert_eq!(got.priority, v1::Priority::High as i32);
    assert!(matches!(got.kind, Some(v1::room_event::Kind::HostMessage(_))));
    let sender = got.sender.unwrap();
    assert_eq!((sender.user_id.as_str(), sender.role), ("hana", v1::Role::Host as i32));
    // The duplicate was not broadcast: the next event is the next message.
    viewer.send_chat("show", "hi").await.unwrap();
    let next = sequenced(&mut events, 1).await.remove(0);
    assert_eq!((next.seq, text(&next)), (ack.seq + 1, "hi"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_count_follows_joins_leaves_and_heartbeat_loss() {
    let server = TestServer::start().await;
    let (a, mut a_events) = server.connect("a", Role::Viewer).await;
    assert_eq!(a.join("hall").await.unwrap().online_count, 1);

    let (b, _b_events) = server.connect("b", Role::Viewer).await;
    let joined = b.join("hall").await.unwrap();
    assert_eq!(joined.online_count, 2);
    assert!(joined.viewers.iter().any(|u| u.user_id == "a"));
    // a hears both that b entered (an ephemeral event on the room stream)
    // and the new count (a datagram), in whichever order they arrive.
    let (mut entered, mut counted) = (false, false);
    wait_for(&mut a_events, |e| {
        match e {
            Event::OnlineCount { room, count: 2 } if room == "hall" => counted = true,
            Event::Message(m) => {
                if let Some(v1::room_event::Kind::UserEntered(u)) = &m.kind {
                    assert_eq!(m.seq, 0, "user entered is ephemeral");
                    entered |= u.user.as_ref().is_some_and(|u| u.user_id == "b");
                }
            }
            _ => {}
        }
        (entered && counted).then_some(())
    })
    .await;

    b.leave("hall").await.unwrap();
    wait_online(&mut a_events, "hall", 1).await;

    // A client that stops heartbeating drops out of presence after three
    // missed intervals, though its connection is still open.
    let mut quiet = server.client_config(server.token("q", Role::Viewer));
    quiet.heartbeats = false;
    let (q, _q_events) = roomcast_client::Client::connect(quiet).await.unwrap();
    assert_eq!(q.join("hall").await.unwrap().online_count, 2);
    wait_online(&mut a_events, "hall", 2).await;
    wait_online(&mut a_events, "hall", 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_recent_history_and_a_resume_gets_what_it_missed() {
    let server = TestServer::start().await;
    let (a, _a_events) = server.connect("a", Role::Viewer).await;
    a.join("talk").await.unwrap();
    for i in 1..=5 {
        a.send_chat("talk", &format!("line {i}")).await.unwrap();
    }
    let (late, mut late_events) = server.connect("late", Role::Viewer).await;
    let joined = late.join("talk").await.unwrap();
    assert_eq!(joined.current_seq, 5);
    assert!(!joined.resumed);
    let texts: Vec<_> = joined.history.iter().map(text).collect();
    assert_eq!(texts, ["line 1", "line 2", "line 3", "line 4", "line 5"]);

    // Live events continue right after the history.
    a.send_chat("talk", "line 6").await.unwrap();
    let live = sequenced(&mut late_events, 1).await.remove(0);
    assert_eq!((live.seq, text(&live)), (6, "line 6"));

    // A reconnecting client that saw up to seq 3 gets exactly 4..=6.
    let (back, _) = server.connect("back", Role::Viewer).await;
    let resumed = back.join_at("talk", Some(3)).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_rules_are_refused_and_the_connection_stays_up() {
    let server = TestServer::start_with(|c| {
        c.limits.max_rooms_per_conn = 2;
        c.limits.max_message_bytes = 10;
    })
    .await;
    let (c, _events) = server.connect("u", Role::Viewer).await;
    use roomcast_protocol::ErrorCode;
    fn code<T: std::fmt::Debug>(r: Result<T, roomcast_client::Error>) -> Option<ErrorCode> {
        r.unwrap_err().code()
    }
    assert_eq!(code(c.send_chat("nowhere", "hi").await), Some(ErrorCode::NotJoined));
    assert_eq!(code(c.join("bad room!").await), Some(ErrorCode::InvalidRoom));
    c.join("one").await.unwrap();
    c.join("two").await.unwrap();
    assert_eq!(code(c.join("three").await), Some(ErrorCode::TooManyRooms));
    assert_eq!(code(c.send_chat("one", "far too long a text").await), Some(ErrorCode::MessageTooLong));
    assert_eq!(code(c.send_chat("one", "").await), Some(ErrorCode::MessageTooLong));
    assert_eq!(code(c.leave("three").await), Some(ErrorCode::NotJoined));
    // Still connected and working.
    assert_eq!(c.send_chat("one", "ok").await.unwrap().seq, 1);
    c.leave("two").await.unwrap();
    c.join("three").await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_driver_per_core_carries_one_room_across_its_drivers() {
    // Three drivers on one address: the kernel spreads the twelve clients'
    // sockets over them, and the room is one room whichever driver holds a
    // member.
    let server = TestServer::start_with(|c| c.limits.drivers = 3).await;
    let mut clients = Vec::new();
    for i in 0..12 {
        let (c, e) = server.connect(&format!("u{i}"), Role::Viewer).await;
        c.join("hall").await.unwrap();
        clients.push((c, e));
    }
    for (_, events) in &mut clients {
        wait_online(events, "hall", 12).await;
    }
    for (c, _) in &clients {
        c.send_chat("hall", "hi").await.unwrap();
    }
    let mut orders = Vec::new();
    for (_, events) in &mut clients {
        let got = sequenced(events, 12).await;
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<u64>>());
        orders.push(got.iter().map(|e| e.message_id.clone()).collect::<Vec<_>>());
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "one order for every member");
    let metrics = server.scrape().await;
    assert!(metrics.contains("roomcast_edge_steered_datagrams_total"), "the steering counter is exported");
    server.stop().await;
}
