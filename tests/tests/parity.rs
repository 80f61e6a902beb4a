//! One room, one behaviour: each scenario here is written once and run
//! against a node alone and against a fleet of nodes on one real Redis,
//! with members and senders spread over the nodes. A behaviour that differs
//! between the two is a bug.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use roomcast_client::{Client, Events};
use roomcast_server::Config;
use roomcast_server::auth::Role;
use roomcast_tests::redis::RedisServer;
use roomcast_tests::{TestServer, wait_for};

/// Where a scenario runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One node: every "node" of the scenario is the same one.
    Node,
    /// Nodes sharing rooms through one Redis.
    Fleet,
}

/// A change to every node's configuration.
type Tweak = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// The nodes of a scenario.
struct Deployment {
    mode: Mode,
    nodes: Vec<TestServer>,
    redis: Option<RedisServer>,
    tweak: Tweak,
}

impl Deployment {
    /// `n` nodes (one, whatever `n`, in [`Mode::Node`]).
    async fn start(mode: Mode, n: usize) -> Self {
        Self::start_with(mode, n, |_| {}).await
    }

    /// Like [`Deployment::start`], every node's configuration changed by
    /// `tweak`.
    async fn start_with(mode: Mode, n: usize, tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        let tweak: Tweak = Arc::new(tweak);
        let mut d = Deployment { mode, nodes: Vec::new(), redis: None, tweak: tweak.clone() };
        match mode {
            Mode::Node => d.nodes.push(TestServer::start_with(|c| tweak(c)).await),
            Mode::Fleet => {
                d.redis = Some(RedisServer::start().await);
                for _ in 0..n {
                    d.add().await;
                }
            }
        }
        d
    }

    /// One more node, started now (the same one in [`Mode::Node`]);
    /// returns its index.
    async fn add(&mut self) -> usize {
        if let (Mode::Fleet, Some(redis)) = (self.mode, &self.redis) {
            let (url, tweak) = (redis.url(), self.tweak.clone());
            let secret = self.nodes.first().map(|n| n.secret.clone());
            let node = TestServer::start_with(move |c| {
                c.redis = Some(url);
                if let Some(secret) = secret {
                    c.auth.hs256_secret = Some(secret);
                }
                tweak(c);
            })
            .await;
            self.nodes.push(node);
        }
        self.nodes.len() - 1
    }

    /// Node `i` of the scenario.
    fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i % self.nodes.len()]
    }

    /// `user` connected to node `i`.
    async fn connect(&self, i: usize, user: &str, role: Role) -> (Client, Events) {
        let node = self.node(i);
        let token = self.nodes[0].token(user, role);
        Client::connect(node.client_config(token)).await.unwrap()
    }

    async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

/// Runs a scenario in every mode, each as a test of its own.
macro_rules! in_every_mode {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_one_node() {
                super::$scenario(super::Mode::Node).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_fleet() {
                super::$scenario(super::Mode::Fleet).await;
            }
        }
    };
}

/// Credits `user` through node `i`'s admin API.
async fn credit(d: &Deployment, i: usize, user: &str, amount: u64) {
    let body = format!(r#"{{"amount": {amount}}}"#);
    let answer = d.node(i).admin("POST", &format!("/v1/users/{user}/credit"), Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// A node's whole ranking of `room` through its admin API.
async fn admin_ranking(node: &TestServer, room: &str) -> Vec<(String, u64)> {
    let answer = node.admin("GET", &format!("/v1/rooms/{room}/ranking"), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["user"]["user_id"].as_str().unwrap().to_owned(), e["value"].as_u64().unwrap()))
        .collect()
}

/// Waits until a ranking event on `events` shows `expected`, the final top.
async fn see_ranking(events: &mut Events, expected: &[(String, u64)]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let top = wait_for(events, |e| e.ranking().map(|(_, entries)| entries.to_vec())).await;
        let got: Vec<(String, u64)> = top
            .iter()
            .map(|e| (e.user.as_ref().map(|u| u.user_id.clone()).unwrap_or_default(), e.value))
            .collect();
        if got == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the final ranking never arrived: last {got:?}");
    }
}

/// Gifters on different nodes; every member on every node sees the same top
/// and every node's admin API answers the same whole ranking, a node that
/// starts carrying the room afterwards included.
async fn one_ranking_for_the_room(mode: Mode) {
    let mut d = Deployment::start(mode, 2).await;
    let mut watchers = Vec::new();
    for i in 0..2 {
        let (w, events) = d.connect(i, &format!("wes{i}"), Role::Viewer).await;
        w.join("rank").await.unwrap();
        watchers.push((w, events));
    }
    let mut gifters = Vec::new();
    for (i, user) in ["ann", "bob", "cat"].into_iter().enumerate() {
        credit(&d, i + 1, user, 1_000).await;
        let (client, _events) = d.connect(i, user, Role::Viewer).await;
        client.join("rank").await.unwrap();
        gifters.push(client);
    }
    // ann: 3 roses = 3; bob: a rocket = 500; cat: a heart and 2 roses = 12.
    for i in 0..3 {
        gifters[0].send_gift("rank", "rose", 1, &format!("ann-{i}")).await.unwrap();
    }
    gifters[1].send_gift("rank", "rocket", 1, "bob-0").await.unwrap();
    gifters[2].send_gift("rank", "heart", 1, "cat-0").await.unwrap();
    gifters[2].send_gift("rank", "rose", 2, "cat-1").await.unwrap();
    let expected: Vec<(String, u64)> =
        [("bob", 500), ("cat", 12), ("ann", 3)].iter().map(|(u, v)| (u.to_string(), *v)).collect();
    for (_, events) in &mut watchers {
        see_ranking(events, &expected).await;
    }
    for i in 0..2 {
        assert_eq!(admin_ranking(d.node(i), "rank").await, expected, "node {i}'s admin API");
    }
    // A node that starts carrying the room now starts from the totals.
    let late = d.add().await;
    let (lee, mut lee_events) = d.connect(late, "lee", Role::Viewer).await;
    lee.join("rank").await.unwrap();
    assert_eq!(admin_ranking(d.node(late), "rank").await, expected, "a node that joined the room late");
    // And counts what follows like every other node.
    gifters[0].send_gift("rank", "rocket", 1, "ann-big").await.unwrap();
    let after: Vec<(String, u64)> =
        [("ann", 503), ("bob", 500), ("cat", 12)].iter().map(|(u, v)| (u.to_string(), *v)).collect();
    see_ranking(&mut lee_events, &after).await;
    for (_, events) in &mut watchers {
        see_ranking(events, &after).await;
    }
    for i in [0, 1, late] {
        assert_eq!(admin_ranking(d.node(i), "rank").await, after, "node {i}'s admin API");
    }
    d.stop().await;
}

in_every_mode!(one_ranking_for_the_room);

/// Waits for `events` to say the session was removed from `room` with
/// `ROOM_CLOSED`.
async fn removed_as_closed(events: &mut Events, room: &str) {
    wait_for(events, |e| match e {
        roomcast_client::Event::Removed { room: r, code, .. } if r == room => Some(*code),
        _ => None,
    })
    .await
    .map(|code| assert_eq!(code, roomcast_protocol::ErrorCode::RoomClosed))
    .expect("a removal with a code");
}

/// Whether a join of `room` on node `i` is refused with `ROOM_CLOSED`.
async fn join_refused_as_closed(d: &Deployment, i: usize, user: &str, room: &str) -> bool {
    let (c, _e) = d.connect(i, user, Role::Viewer).await;
    let refused = matches!(
        c.join(room).await,
        Err(roomcast_client::Error::Refused { code: roomcast_protocol::ErrorCode::RoomClosed, .. })
    );
    c.close();
    refused
}

/// Closing through one node ends every node's members with `ROOM_CLOSED`
/// and every node refuses joins, one that never carried the room included;
/// opening through another node lets joins in on every node, into a new
/// incarnation numbered from 1.
async fn close_and_open_hold_on_every_node(mode: Mode) {
    let mut d = Deployment::start(mode, 2).await;
    let (host, _h) = d.connect(0, "hana", Role::Host).await;
    let first = host.join("stage").await.unwrap();
    let mut members = Vec::new();
    for i in 0..2 {
        let (m, events) = d.connect(i, &format!("vic{i}"), Role::Viewer).await;
        m.join("stage").await.unwrap();
        members.push((m, events));
    }
    host.send_chat("stage", "before").await.unwrap();

    let answer = d.node(0).admin("POST", "/v1/rooms/stage/close", Some(r#"{"reason":"show over"}"#)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    for (_, events) in &mut members {
        removed_as_closed(events, "stage").await;
    }
    for i in 0..2 {
        assert!(join_refused_as_closed(&d, i, &format!("late{i}"), "stage").await, "node {i} refuses joins");
    }
    let fresh = d.add().await;
    assert!(
        join_refused_as_closed(&d, fresh, "newcomer", "stage").await,
        "a node new to the room refuses too"
    );

    let answer = d.node(1).admin("POST", "/v1/rooms/stage/open", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut joined = Vec::new();
    for i in [0, 1, fresh] {
        let (m, events) = d.connect(i, &format!("back{i}"), Role::Viewer).await;
        let j = m.join("stage").await.unwrap();
        assert_eq!(j.current_seq, 0, "node {i}: a new incarnation, numbered from 1");
        assert_ne!(j.epoch, first.epoch, "node {i}: another epoch");
        joined.push((m, events));
    }
    let (host, _h) = d.connect(0, "hana", Role::Host).await;
    host.join("stage").await.unwrap();
    assert_eq!(host.send_chat("stage", "again").await.unwrap().seq, 1);
    for (_, events) in &mut joined {
        let e = roomcast_tests::sequenced(events, 1).await.remove(0);
        assert_eq!((e.seq, roomcast_tests::text(&e)), (1, "again"));
    }
    d.stop().await;
}

in_every_mode!(close_and_open_hold_on_every_node);

/// Every reason a member leaves reaches the platform's webhook once, from
/// whichever node the member was on: it left, it disconnected, it was
/// kicked or banned (through another node's admin API), its heartbeats
/// stopped, its node drained.
async fn every_leave_reason_reaches_the_webhook(mode: Mode) {
    let receiver = roomcast_tests::hooks::Receiver::answering(200).await;
    let hooks = receiver.config();
    let d = Deployment::start_with(mode, 2, move |c| c.webhooks = hooks.clone()).await;
    let room = "hooks";
    let mut clients = Vec::new();
    for (i, user) in ["lena", "dina", "kim", "bo"].into_iter().enumerate() {
        let (c, events) = d.connect(i, user, Role::Viewer).await;
        c.join(room).await.unwrap();
        clients.push((c, events));
    }
    // A session that stops heartbeating after its join.
    let token = d.nodes[0].token("hal", Role::Viewer);
    let mut silent = d.node(0).raw_hello(token, roomcast_protocol::PROTOCOL_VERSION).await;
    silent.welcome().await;
    let join = roomcast_client::v1::Join { room: room.into(), ..Default::default() };
    silent.join(2, join).await;
    // The drained member is on node 1 (the only node, alone).
    let (drained, mut drained_events) = d.connect(1, "dre", Role::Viewer).await;
    drained.join(room).await.unwrap();

    clients[0].0.leave(room).await.unwrap();
    clients[1].0.close();
    let kick = d.node(1).admin("POST", &format!("/v1/rooms/{room}/kicks/kim"), None).await;
    assert_eq!(kick.status, 200, "{}", kick.body);
    let ban = d.node(0).admin("PUT", &format!("/v1/rooms/{room}/bans/bo"), None).await;
    assert_eq!(ban.status, 200, "{}", ban.body);
    // Three heartbeat intervals (200 ms here) without one, then the
    // connection goes.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    drop(silent);
    let expected: Vec<(String, String)> = [
        ("lena", "left"),
        ("dina", "disconnect"),
        ("kim", "kicked"),
        ("bo", "banned"),
        ("hal", "heartbeat_loss"),
    ]
    .iter()
    .map(|(u, r)| (u.to_string(), r.to_string()))
    .collect();
    let deadline = tokio::time::Instant::now() + roomcast_tests::WAIT;
    loop {
        let mut left = roomcast_tests::hooks::seen_of(&receiver, "user_left");
        left.sort();
        let mut want = expected.clone();
        want.sort();
        if left == want {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "leaves seen: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Last, the drained node.
    assert!(d.node(1).drain().start());
    wait_for(&mut drained_events, |e| {
        matches!(e, roomcast_client::Event::Disconnected { .. } | roomcast_client::Event::Reconnecting { .. })
            .then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + roomcast_tests::WAIT;
    loop {
        let left = roomcast_tests::hooks::seen_of(&receiver, "user_left");
        let of_dre: Vec<&(String, String)> = left.iter().filter(|(u, _)| u == "dre").collect();
        if !of_dre.is_empty() {
            assert_eq!(of_dre, [&("dre".to_string(), "drain".to_string())], "one leave, for the drain");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leave for the drained member: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left = roomcast_tests::hooks::seen_of(&receiver, "user_left");
    assert_eq!(left.len(), expected.len() + 1, "one leave per member: {left:?}");
    assert!(receiver.seen().iter().all(|r| r.signed && r.fresh));
    drop(drained);
    d.stop().await;
}

in_every_mode!(every_leave_reason_reaches_the_webhook);
