//! A fleet's faults and its cluster mode, against real `redis-server`
//! processes the tests start on free ports: a node that starts before its
//! Redis, a node killed mid-show, and rooms on a three-master Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use roomcast_client::{Backoff, Client, ClientConfig, Error, Event, HistoryRange, Resolver};
use roomcast_protocol::ErrorCode;
use roomcast_server::auth::Role;
use roomcast_tests::redis::{RedisCluster, RedisServer};
use roomcast_tests::{TestServer, sequenced, text, wait_for, wait_online};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_is_not_up_refuses_joins_until_it_answers() {
    let mut redis = RedisServer::stopped();
    let url = redis.url();
    let node = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.fleet.unreachable_after_ms = 1_000;
    })
    .await;
    let (viewer, _events) = node.connect("vic", Role::Viewer).await;
    let refused = viewer.join("early").await.unwrap_err();
    assert!(matches!(refused, Error::Refused { code: ErrorCode::Unavailable, .. }), "{refused:?}");

    redis.restart().await;
    let mut joined = None;
    for _ in 0..100 {
        if let Ok(j) = viewer.join("early").await {
            joined = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(joined.expect("joins are taken once Redis answers").current_seq, 0);
    let (host, _h) = node.connect("hana", Role::Host).await;
    host.join("early").await.unwrap();
    assert_eq!(host.send_chat("early", "first").await.unwrap().seq, 1);

    // Redis gone for longer than the bound: even a live room takes no one.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (late, _l) = node.connect("lee", Role::Viewer).await;
    let refused = late.join("early").await.unwrap_err();
    assert!(matches!(refused, Error::Refused { code: ErrorCode::Unavailable, .. }), "{refused:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_viewers_resume_on_another_and_its_count_expires() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start_killable_with({
        let url = url.clone();
        move |c| c.redis = Some(url)
    })
    .await;
    let b = TestServer::in_fleet(&url, Some(&a.secret)).await;
    // Vic moves to B when A dies, which the app's resolver names; Al does
    // not reconnect at all.
    let mut config =
        ClientConfig::new(a.addr, a.token("vic", Role::Viewer), roomcast_tests::trust_all(&[&a, &b]));
    let b_addr = b.addr;
    config.resolver = Some(Resolver::new(move || vec![b_addr]));
    config.idle_timeout = Duration::from_secs(1);
    config.reconnect = Some(Backoff { initial: Duration::from_millis(100), ..Backoff::default() });
    let (vic, mut events) = Client::connect(config).await.unwrap();
    vic.join("show").await.unwrap();
    let (al, _al_events) = a.connect("al", Role::Viewer).await;
    al.join("show").await.unwrap();
    // B takes A's tokens (the platform's one secret).
    let (bob, mut on_b) = Client::connect(b.client_config(a.token("bob", Role::Viewer))).await.unwrap();
    bob.join("show").await.unwrap();
    let (host, _h) = Client::connect(b.client_config(a.token("hana", Role::Host))).await.unwrap();
    host.join("show").await.unwrap();
    wait_online(&mut on_b, "show", 4).await;

    let talk = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..40 {
            seqs.push(host.send_chat("show", &format!("line {i}")).await.unwrap().seq);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seqs
    });
    assert_eq!(text(&sequenced(&mut events, 1).await[0]), "line 0");
    a.kill();
    // A's entry stops being renewed and expires: the count drops Al (and
    // Vic until he is back on B).
    wait_online(&mut on_b, "show", 3).await;
    wait_for(&mut events, |e| matches!(e, Event::Reconnected { .. }).then_some(())).await;
    assert_eq!(vic.server(), b.addr);
    let seqs = talk.await.unwrap();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let mut got = Vec::new();
    let mut complete = None;
    while got.len() < 39 || complete.is_none() {
        let e = wait_for(&mut events, |e| match e {
            Event::Message(m) if m.seq > 0 => Some(Ok(m.seq)),
            Event::Resumed { complete, .. } => Some(Err(*complete)),
            Event::Gap { from, to, .. } => panic!("gap {from}..={to}"),
            _ => None,
        })
        .await;
        match e {
            Ok(seq) => got.push(seq),
            Err(c) => complete = Some(c),
        }
    }
    assert_eq!(complete, Some(true), "the resume on B was complete");
    assert_eq!(got, (2..=40).collect::<Vec<_>>(), "everything after line 0, once, in order");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_rooms_share_one_sequence_through_their_own_shard() {
    let cluster = RedisCluster::start().await;
    let start = |urls: String| {
        TestServer::start_with(move |c| {
            c.redis = Some(urls);
            c.fleet.cluster = true;
        })
    };
    let a = start(cluster.urls()).await;
    let b = start(cluster.urls()).await;
    // Rooms whose keys live on different masters.
    let rooms = ["show", "news", "quiz-night", "match-7"];
    let mut owners = Vec::new();
    for r in rooms {
        owners.push(cluster.owner_of(&format!("rc:{{{r}}}:seq")).await);
    }
    owners.sort_unstable();
    owners.dedup();
    assert!(owners.len() >= 2, "the rooms span masters: {owners:?}");

    let (host, _h) = a.connect("hana", Role::Host).await;
    let (viewer, mut on_b) = b.connect("bob", Role::Viewer).await;
    for r in rooms {
        host.join(r).await.unwrap();
        viewer.join(r).await.unwrap();
    }
    for i in 0..3 {
        for r in rooms {
            let ack = host.send_chat(r, &format!("{r} {i}")).await.unwrap();
            assert_eq!(ack.seq, i + 1, "{r}: numbered by its shard");
        }
    }
    let got = sequenced(&mut on_b, 3 * rooms.len()).await;
    for r in rooms {
        let mine: Vec<(u64, &str)> = got.iter().filter(|e| e.room == r).map(|e| (e.seq, text(e))).collect();
        let want: Vec<(u64, String)> = (0..3).map(|i| (i + 1, format!("{r} {i}"))).collect();
        assert_eq!(mine, want.iter().map(|(s, t)| (*s, t.as_str())).collect::<Vec<_>>(), "{r} on B");
    }
    // Each room's events were published on its own master, sharded.
    for r in rooms {
        let owner = cluster.owner_of(&format!("rc:{{{r}}}:seq")).await;
        let stats = cluster.commandstats(owner).await;
        assert!(stats.contains("cmdstat_spublish:"), "{r}'s master ran SPUBLISH: {stats}");
        assert!(!stats.contains("cmdstat_publish:"), "no cluster-wide PUBLISH: {stats}");
    }
    // The shared state works on the cluster too: a balance, a quiz, a mute.
    let credit = a.admin("POST", "/v1/users/bob/credit", Some(r#"{"amount": 30}"#)).await;
    assert_eq!(credit.status, 200, "{}", credit.body);
    let gift = viewer.send_gift("show", "heart", 1, "bob-1").await.unwrap();
    assert_eq!(gift.balance, 20);
    assert_eq!(a.admin("POST", "/v1/rooms/show/quiz", Some(r#"{"rounds": 1}"#)).await.status, 201);
    let q = a
        .admin(
            "POST",
            "/v1/rooms/show/quiz/questions",
            Some(r#"{"text": "?", "options": ["a", "b"], "correct": 1, "media_ts_ms": 0}"#),
        )
        .await;
    let qid = serde_json::from_str::<serde_json::Value>(&q.body).unwrap()["question_id"]
        .as_str()
        .unwrap()
        .to_string();
    let answered = viewer.answer("show", &qid, 1).await.unwrap();
    assert_eq!(answered.outcome, roomcast_client::v1::AnswerOutcome::Accepted as i32);
    let reveal = b.admin("POST", &format!("/v1/rooms/show/quiz/questions/{qid}/reveal"), None).await;
    assert!(reveal.body.contains(r#""counts":[0,1]"#), "{}", reveal.body);
    assert_eq!(a.admin("PUT", "/v1/rooms/news/mutes/bob", None).await.status, 200);
    let mut muted = None;
    for _ in 0..50 {
        match viewer.send_chat("news", "x").await {
            Err(e) => {
                muted = e.code();
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert_eq!(muted, Some(ErrorCode::Muted));
    let page = viewer.fetch_history("news", HistoryRange::Seq { from: 2, to: 3 }, 0).await.unwrap();
    assert_eq!(
        page.events.iter().map(text).collect::<Vec<_>>(),
        ["news 1", "news 2"],
        "history from its shard"
    );
    a.stop().await;
    b.stop().await;
}

/// Chats `texts` as `host` in `room`, each retried until the fleet's Redis
/// answers (it may be restarting), and returns the acknowledgements.
async fn chat_through(host: &Client, room: &str, texts: &[&str]) -> Vec<roomcast_client::v1::ChatAck> {
    let mut acks = Vec::new();
    for text in texts {
        let mut ack = None;
        for _ in 0..100 {
            match host.send_chat(room, text).await {
                Ok(a) => {
                    ack = Some(a);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        acks.push(ack.expect("the fleet's Redis answers again"));
    }
    acks
}

/// Waits until `events` has delivered chats with every one of `texts` and,
/// with `rejoin`, a rejoin's answer (the SDK replays a rejoin's history
/// before it says `Resumed`); returns what arrived meanwhile (texts with
/// their sequence numbers, and `resumed complete=…` for each rejoin).
async fn receive_all(events: &mut roomcast_client::Events, texts: &[&str], rejoin: bool) -> Vec<String> {
    let mut missing: Vec<&str> = texts.to_vec();
    let mut seen: Vec<String> = Vec::new();
    while !missing.is_empty() || (rejoin && !seen.iter().any(|s| s.starts_with("resumed"))) {
        let got = wait_for(events, |e| match e {
            Event::Message(m) if m.seq > 0 => Some(format!("{}#{}", text(m), m.seq)),
            Event::Lagged { from, to, .. } => Some(format!("lagged {from}..={to}")),
            Event::Resumed { complete, .. } => Some(format!("resumed complete={complete}")),
            _ => None,
        })
        .await;
        missing.retain(|t| !got.starts_with(&format!("{t}#")));
        seen.push(got);
    }
    seen
}

/// Whether a rejoin in `seen` was told its resume is incomplete.
fn told_incomplete(seen: &[String]) -> bool {
    seen.iter().any(|s| s == "resumed complete=false")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_forgets_the_room_gets_a_new_epoch_and_nothing_acknowledged_is_dropped() {
    let mut redis = RedisServer::start().await;
    let a = TestServer::in_fleet(&redis.url(), None).await;
    let b = TestServer::in_fleet(&redis.url(), Some(&a.secret)).await;
    let (host, _h) = a.connect("hana", Role::Host).await;
    host.join("talk").await.unwrap();
    let (viewer, mut seen) = Client::connect(b.client_config(a.token("vic", Role::Viewer))).await.unwrap();
    viewer.join("talk").await.unwrap();

    let first = chat_through(&host, "talk", &["one", "two", "three"]).await;
    assert_eq!(first.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let got = receive_all(&mut seen, &["one", "two", "three"], false).await;
    assert_eq!(got, ["one#1", "two#2", "three#3"]);
    let mut ids: Vec<String> = first.iter().map(|a| a.message_id.clone()).collect();

    // Redis loses everything (FLUSHALL; a failover to an empty replica or an
    // eviction look the same to the fleet).
    redis.flushall().await;
    let flushed = chat_through(&host, "talk", &["four", "five", "six"]).await;
    ids.extend(flushed.iter().map(|a| a.message_id.clone()));
    let epoch = |id: &str| id.split_once('-').map(|(e, _)| e.to_string()).unwrap();
    assert_ne!(epoch(&flushed[0].message_id), epoch(&first[0].message_id), "a new epoch");
    assert_eq!(flushed.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3], "numbered from 1 in it");
    let got = receive_all(&mut seen, &["four", "five", "six"], true).await;
    assert!(told_incomplete(&got), "told the resume is incomplete: {got:?}");

    // Redis restarts with nothing on disk.
    redis.restart_empty().await;
    let restarted = chat_through(&host, "talk", &["seven", "eight"]).await;
    ids.extend(restarted.iter().map(|a| a.message_id.clone()));
    assert_ne!(epoch(&restarted[0].message_id), epoch(&flushed[0].message_id), "another epoch");
    // A node whose subscription came back after these were published
    // reads them from the stream once Redis answers again; nothing more is
    // said in the room.
    let got = receive_all(&mut seen, &["seven", "eight"], true).await;
    assert!(told_incomplete(&got), "told the resume is incomplete: {got:?}");

    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no message id is used twice: {ids:?}");
    for node in [&a, &b] {
        let renumbered =
            roomcast_tests::metric(&node.scrape().await, "roomcast_fleet_rooms_renumbered_total");
        assert_eq!(renumbered, Some(2.0), "each node's room took each new epoch once");
    }
    // A newcomer joins the new incarnation.
    let (late, _l) = Client::connect(b.client_config(a.token("lee", Role::Viewer))).await.unwrap();
    let joined = late.join("talk").await.unwrap();
    assert_eq!(format!("{:x}", joined.epoch), epoch(&restarted[0].message_id));
    assert_eq!(joined.current_seq, 2);
    a.stop().await;
    b.stop().await;
}

/// `/readyz` and the Redis gauges of a node, polled until `want` holds or
/// the harness's wait runs out.
async fn until_ready_is(node: &TestServer, want: u16) -> (String, String) {
    let deadline = tokio::time::Instant::now() + roomcast_tests::WAIT;
    loop {
        let (status, body) = node.http_get("/readyz").await;
        if status == want {
            return (body, node.scrape().await);
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed {status} {body:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Readiness follows whether the node can take joins: a fleet node whose
/// Redis does not answer (not started yet, then killed) is not ready while
/// it refuses joins, and is again once Redis answers; `roomcast_redis_up`
/// and `roomcast_redis_ping_rtt_seconds` say so. A node alone exports no
/// Redis gauges and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_the_redis_gauges_follow_whether_the_fleets_redis_answers() {
    let mut redis = RedisServer::stopped();
    let url = redis.url();
    let node = TestServer::start_with(move |c| {
        c.redis = Some(url);
        c.fleet.unreachable_after_ms = 1_000;
    })
    .await;
    // Redis on a closed port: joins refused, and the node says it is not ready.
    let (body, scrape) = until_ready_is(&node, 503).await;
    assert_eq!(body, "redis unreachable\n");
    assert_eq!(roomcast_tests::metric(&scrape, "roomcast_redis_up"), Some(0.0), "{scrape}");
    let (viewer, _events) = node.connect("vic", Role::Viewer).await;
    let refused = viewer.join("ready").await.unwrap_err();
    assert!(matches!(refused, Error::Refused { code: ErrorCode::Unavailable, .. }), "{refused:?}");

    // Redis up: ready, up, a round trip measured, and joins taken.
    redis.restart().await;
    let (body, scrape) = until_ready_is(&node, 200).await;
    assert_eq!(body, "ready\n");
    assert_eq!(roomcast_tests::metric(&scrape, "roomcast_redis_up"), Some(1.0), "{scrape}");
    let rtt = roomcast_tests::metric(&scrape, "roomcast_redis_ping_rtt_seconds").expect("a round trip");
    assert!(rtt > 0.0 && rtt < 5.0, "{rtt}");
    viewer.join("ready").await.unwrap();

    // Redis gone past the bound: not ready again, and down.
    redis.kill();
    let (body, scrape) = until_ready_is(&node, 503).await;
    assert_eq!(body, "redis unreachable\n");
    assert_eq!(roomcast_tests::metric(&scrape, "roomcast_redis_up"), Some(0.0), "{scrape}");
    let (late, _l) = node.connect("lee", Role::Viewer).await;
    assert!(late.join("ready").await.is_err(), "not ready, and joins are refused");
    node.stop().await;

    let alone = TestServer::start().await;
    assert_eq!(alone.http_get("/readyz").await, (200, "ready\n".to_string()));
    let scrape = alone.scrape().await;
    assert!(!scrape.contains("roomcast_redis"), "a node alone has no Redis gauges: {scrape}");
    alone.stop().await;
}
