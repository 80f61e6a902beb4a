//! Hot rooms end to end, over real QUIC: slow readers, chat budgets,
//! concurrent senders, resume after a dropped connection, recall, history
//! and the host-only view.

use std::collections::HashSet;
use std::time::Duration;

use roomcast_client::{ChatMessage, Event, Events, HistoryRange, JoinOptions, v1};
use roomcast_protocol::ErrorCode;
use roomcast_server::auth::Role;
use roomcast_tests::relay::Relay;
use roomcast_tests::{TestServer, WAIT, metric, sequenced, text, wait_for};
use v1::room_event::Kind;

/// Every event until `pred` holds for the collected list, with a deadline.
async fn collect_until(events: &mut Events, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut out = Vec::new();
    while !done(&out) {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; got so far: {:?}", summary(&out)))
            .expect("event stream ended");
        out.push(e);
    }
    out
}

/// Sequence numbers of the sequenced messages among `events`, in order.
fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.seq > 0 => Some(m.seq),
            _ => None,
        })
        .collect()
}

/// A compact description of events, for failure messages.
fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Message(m) => format!("#{}", m.seq),
            other => format!("{other:?}"),
        })
        .collect()
}

fn has_all(events: &[Event], n: u64) -> bool {
    seqs(events).last() == Some(&n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_lags_alone_and_then_resumes_completely() {
    let server = TestServer::start_with(|c| {
        c.room.outbox_capacity = 20;
        c.room.history_len = 2000;
    })
    .await;
    let (host, _h) = server.connect("host", Role::Host).await;
    let (fast, mut fast_events) = server.connect("fast", Role::Viewer).await;
    // A reader that stops reading: small buffers, so that it falls behind
    // after a few hundred events rather than a few thousand.
    let (slow, mut slow_events) = server
        .connect_with("slow", Role::Viewer, |c| {
            c.event_buffer = 16;
            c.stream_receive_window = Some(4096);
        })
        .await;
    for c in [&host, &fast, &slow] {
        c.join("hot").await.unwrap();
    }
    let n = 1200u64;
    for i in 1..=n {
        assert_eq!(host.send_chat("hot", &format!("message {i:04}")).await.unwrap().seq, i);
    }
    // The fast reader gets everything while the slow one reads nothing.
    let got = sequenced(&mut fast_events, n as usize).await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    let lagged = metric(&server.scrape().await, "roomcast_subscribers_lagged_total").unwrap();
    assert!(lagged >= 1.0, "the slow reader's outbox overflowed");

    // Now it reads: a lag notice, a complete resume, every message once, in order.
    let count = |ev: &[Event], f: fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count();
    let events = collect_until(&mut slow_events, |ev| {
        let lags = count(ev, |e| matches!(e, Event::Lagged { .. }));
        has_all(ev, n) && lags > 0 && count(ev, |e| matches!(e, Event::Resumed { .. })) == lags
    })
    .await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Gap { .. })),
        "a lag is resumed, never a gap: {:?}",
        summary(&events)
    );
    assert!(events.iter().any(|e| matches!(e, Event::Lagged { .. })), "{:?}", summary(&events));
    let resumes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Resumed { complete, .. } => Some(*complete),
            _ => None,
        })
        .collect();
    assert!(!resumes.is_empty() && resumes.iter().all(|c| *c), "complete resumes: {resumes:?}");
    assert_eq!(seqs(&events), (1..=n).collect::<Vec<_>>());
    let exposition = server.scrape().await;
    assert!(metric(&exposition, "roomcast_dropped_events_total{reason=\"lagged\"}").unwrap() > 0.0);
    // Still live afterwards.
    host.send_chat("hot", "after").await.unwrap();
    let after = sequenced(&mut slow_events, 1).await;
    assert_eq!((after[0].seq, text(&after[0])), (n + 1, "after"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_budget_samples_viewer_chat_but_never_host_or_system_messages() {
    let server = TestServer::start_with(|c| c.room.chat_budget_per_sec = 5).await;
    let (watcher, mut events) = server.connect("watcher", Role::Viewer).await;
    watcher.join("star").await.unwrap();
    let (host, _h) = server.connect("host", Role::Host).await;
    let (admin, _a) = server.connect("ops", Role::Admin).await;
    host.join("star").await.unwrap();
    admin.join("star").await.unwrap();
    let mut viewers = Vec::new();
    for i in 0..10 {
        let (c, e) = server.connect(&format!("fan{i}"), Role::Viewer).await;
        c.join("star").await.unwrap();
        viewers.push((c, e));
    }
    // Everyone at once; host and admin interleaved with the storm.
    let mut tasks = Vec::new();
    for (i, (c, _)) in viewers.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for j in 0..3 {
                acks.push((Role::Viewer, c.send_chat("star", &format!("fan{i} #{j}")).await.unwrap()));
            }
            acks
        }));
    }
    for (role, c) in [(Role::Host, host.clone()), (Role::Admin, admin.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for j in 0..5 {
                acks.push((role, c.send_chat("star", &format!("{role:?} #{j}")).await.unwrap()));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    for (role, ack) in &acks {
        if *role != Role::Viewer {
            assert!(ack.broadcast && ack.seq > 0, "{role:?} is never sampled: {ack:?}");
        } else if !ack.broadcast {
            assert_eq!((ack.seq, ack.message_id.as_str()), (0, ""), "sampled before sequencing");
        }
    }
    let viewer_broadcast = acks.iter().filter(|(r, a)| *r == Role::Viewer && a.broadcast).count();
    // The burst is the budget, plus what refills while the storm lasts.
    assert!((5..=10).contains(&viewer_broadcast), "{viewer_broadcast} of 30 viewer messages broadcast");
    let broadcast: HashSet<u64> = acks.iter().filter(|(_, a)| a.broadcast).map(|(_, a)| a.seq).collect();
    let total = broadcast.len() as u64;
    assert_eq!(broadcast, (1..=total).collect(), "sampling leaves no holes in the sequence");
    let got = sequenced(&mut events, total as usize).await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    let sampled = metric(&server.scrape().await, "roomcast_chat_refused_total{reason=\"sampled\"}").unwrap();
    assert_eq!(sampled as usize, 30 - viewer_broadcast);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_rate_and_length_limits_answer_with_their_codes() {
    let server = TestServer::start_with(|c| {
        c.room.user_chat_per_sec = 1.0;
        c.limits.max_message_bytes = 100;
    })
    .await;
    let (viewer, _e) = server.connect("quick", Role::Viewer).await;
    viewer.join("r").await.unwrap();
    assert!(viewer.send_chat("r", "one").await.unwrap().broadcast);
    let err = viewer.send_chat("r", "two").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
    let err = viewer.send_chat("r", &"x".repeat(101)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLong), "{err}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(viewer.send_chat("r", "three").await.unwrap().broadcast, "the rate refills");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_stay_consecutive_under_many_concurrent_senders() {
    let server = TestServer::start().await;
    let (watcher, mut events) = server.connect("watcher", Role::Viewer).await;
    watcher.join("busy").await.unwrap();
    let (senders, per_sender) = (24, 10);
    let mut tasks = Vec::new();
    for i in 0..senders {
        let (c, e) = server.connect(&format!("s{i}"), Role::Viewer).await;
        c.join("busy").await.unwrap();
        tasks.push(tokio::spawn(async move {
            let _keep = e;
            let mut seqs = Vec::new();
            for j in 0..per_sender {
                seqs.push(c.send_chat("busy", &format!("s{i}-{j}")).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    all.sort_unstable();
    let total = (senders * per_sender) as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "each seq assigned exactly once");
    let got = sequenced(&mut events, total as usize).await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), all);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_many_chats_in_flight_are_each_answered_with_their_own_seq() {
    let server = TestServer::start().await;
    let (watcher, mut events) = server.connect("watcher", Role::Viewer).await;
    watcher.join("pipelined").await.unwrap();
    let (host, _host_events) = server.connect("host", Role::Host).await;
    host.join("pipelined").await.unwrap();
    // More than a session keeps in flight at once, all sent before any answer.
    let n = 150;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = host.clone();
        tasks.spawn(async move { (i, c.send_chat("pipelined", &format!("m{i}")).await) });
    }
    let mut by_seq = std::collections::BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, ack) = done.unwrap();
        let ack = ack.unwrap_or_else(|e| panic!("chat {i} failed: {e}"));
        assert!(ack.broadcast, "host chat is never sampled");
        assert!(by_seq.insert(ack.seq, format!("m{i}")).is_none(), "seq {} acknowledged twice", ack.seq);
    }
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (1..=n as u64).collect::<Vec<_>>());
    for e in sequenced(&mut events, n).await {
        assert_eq!(
            by_seq.get(&e.seq).map(String::as_str),
            Some(text(&e)),
            "the ack for #{} named another message",
            e.seq
        );
    }
    server.stop().await;
}

/// A viewer behind a relay that will drop out, reconnecting quickly.
async fn viewer_behind(server: &TestServer, relay: &Relay) -> (roomcast_client::Client, Events) {
    server.connect_behind(relay, "mobile").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_network_drops_out_the_sdk_reconnects_and_loses_nothing() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.addr).await;
    let (host, _h) = server.connect("host", Role::Host).await;
    host.join("live").await.unwrap();
    let (viewer, mut events) = viewer_behind(&server, &relay).await;
    let first_session = viewer.welcome().session_id.clone();
    viewer.join("live").await.unwrap();
    for i in 1..=5 {
        host.send_chat("live", &format!("before {i}")).await.unwrap();
    }
    assert_eq!(sequenced(&mut events, 5).await.last().unwrap().seq, 5);

    relay.block(true);
    for i in 6..=15 {
        host.send_chat("live", &format!("during {i}")).await.unwrap();
    }
    wait_for(&mut events, |e| matches!(e, Event::Reconnecting { .. }).then_some(())).await;
    relay.block(false);

    let got = collect_until(&mut events, |ev| ev.iter().any(|e| matches!(e, Event::Resumed { .. }))).await;
    assert!(got.iter().any(|e| matches!(e, Event::Reconnected { .. })), "{:?}", summary(&got));
    assert!(!got.iter().any(|e| matches!(e, Event::Gap { .. })), "{:?}", summary(&got));
    assert_eq!(seqs(&got), (6..=15).collect::<Vec<_>>(), "every missed message, once, in order");
    assert!(
        matches!(got.last(), Some(Event::Resumed { complete: true, replayed: 10, .. })),
        "{:?}",
        summary(&got)
    );
    assert_ne!(viewer.welcome().session_id, first_session, "a new session");

    host.send_chat("live", "after").await.unwrap();
    let after = sequenced(&mut events, 1).await;
    assert_eq!((after[0].seq, text(&after[0])), (16, "after"));
    viewer.send_chat("live", "i am back").await.unwrap();
    let text = server.scrape().await;
    assert!(
        metric(&text, "roomcast_tls_resumptions_total").unwrap() >= 1.0,
        "the reconnection resumed TLS with the node's ticket: {text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_too_big_for_one_answer_continues_on_the_room_stream_without_loss() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.addr).await;
    let (host, _h) = server.connect("host", Role::Host).await;
    host.join("live").await.unwrap();
    let (viewer, mut events) = viewer_behind(&server, &relay).await;
    viewer.join("live").await.unwrap();
    host.send_chat("live", "first").await.unwrap();
    sequenced(&mut events, 1).await;
    relay.block(true);
    // About 400 KB of missed chat: far more than one 64 KiB answer.
    let long = "x".repeat(400);
    for i in 2..=900 {
        host.send_chat("live", &format!("{i} {long}")).await.unwrap();
    }
    wait_for(&mut events, |e| matches!(e, Event::Reconnecting { .. }).then_some(())).await;
    relay.block(false);
    let got = collect_until(&mut events, |ev| has_all(ev, 900)).await;
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. } | Event::Lagged { .. })),
        "{:?}",
        summary(&got)
    );
    assert_eq!(seqs(&got), (2..=900).collect::<Vec<_>>(), "every missed message, once, in order");
    let resumed = got.iter().find_map(|e| match e {
        Event::Resumed { complete, replayed, .. } => Some((*complete, *replayed)),
        _ => None,
    });
    let (complete, replayed) = resumed.expect("a Resumed event");
    assert!(complete && replayed < 899, "the answer carried part ({replayed}), the stream the rest");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_history_window_says_what_was_lost() {
    let server = TestServer::start_with(|c| c.room.history_len = 4).await;
    let relay = Relay::start(server.addr).await;
    let (host, _h) = server.connect("host", Role::Host).await;
    host.join("live").await.unwrap();
    let (viewer, mut events) = viewer_behind(&server, &relay).await;
    viewer.join("live").await.unwrap();
    host.send_chat("live", "one").await.unwrap();
    sequenced(&mut events, 1).await;
    relay.block(true);
    for i in 2..=11 {
        host.send_chat("live", &format!("m{i}")).await.unwrap();
    }
    wait_for(&mut events, |e| matches!(e, Event::Reconnecting { .. }).then_some(())).await;
    relay.block(false);
    let got = collect_until(&mut events, |ev| ev.iter().any(|e| matches!(e, Event::Resumed { .. }))).await;
    let gaps: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            Event::Gap { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, [(2, 7)], "{:?}", summary(&got));
    assert_eq!(seqs(&got), [8, 9, 10, 11], "the recent history that is kept");
    assert!(matches!(got.last(), Some(Event::Resumed { complete: false, .. })));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_reaches_everyone_and_removes_the_message_from_history() {
    let server = TestServer::start().await;
    let (author, _a) = server.connect("author", Role::Viewer).await;
    let (other, mut events) = server.connect("other", Role::Viewer).await;
    let (host, _h) = server.connect("host", Role::Host).await;
    for c in [&author, &other, &host] {
        c.join("r").await.unwrap();
    }
    let oops = author.send_chat("r", "oops").await.unwrap();
    let rude = author.send_chat("r", "rude").await.unwrap();
    let kept = author.send_chat("r", "fine").await.unwrap();
    let err = other.recall("r", &oops.message_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "only the sender, a host or an admin");
    author.recall("r", &oops.message_id).await.unwrap();
    host.recall("r", &rude.message_id).await.unwrap();
    let err = host.recall("r", &rude.message_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    let got = sequenced(&mut events, 5).await;
    let recalled: Vec<_> = got
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Recall(r)) => Some(r.message_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recalled, [oops.message_id.clone(), rude.message_id.clone()]);

    let h = other.fetch_history("r", HistoryRange::Seq { from: 1, to: u64::MAX }, 0).await.unwrap();
    let ids: Vec<_> = h.events.iter().map(|e| e.message_id.as_str()).collect();
    assert!(!ids.contains(&oops.message_id.as_str()) && !ids.contains(&rude.message_id.as_str()));
    assert!(ids.contains(&kept.message_id.as_str()));
    // A late joiner's history no longer has them either.
    let (late, _l) = server.connect("late", Role::Viewer).await;
    let joined = late.join("r").await.unwrap();
    assert!(joined.history.iter().all(|e| text(e) != "oops" && text(e) != "rude"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_only_view_gets_host_and_system_messages_without_gaps() {
    let server = TestServer::start().await;
    let (host, _h) = server.connect("host", Role::Host).await;
    let (admin, _a) = server.connect("ops", Role::Admin).await;
    let (chatter, _c) = server.connect("chatter", Role::Viewer).await;
    let (focused, mut events) = server.connect("focused", Role::Viewer).await;
    for c in [&host, &admin, &chatter] {
        c.join("talk").await.unwrap();
    }
    chatter.send_chat("talk", "early chat").await.unwrap();
    host.send_chat("talk", "early host").await.unwrap();
    let opts = JoinOptions { filter: v1::JoinFilter::HostOnly, ..JoinOptions::default() };
    let joined = focused.join_with("talk", opts).await.unwrap();
    assert_eq!(joined.history.iter().map(text).collect::<Vec<_>>(), ["early host"]);
    for i in 0..4 {
        chatter.send_chat("talk", &format!("chat {i}")).await.unwrap();
        chatter.send_chat("talk", &format!("chat {i}b")).await.unwrap();
        if i % 2 == 0 {
            host.send_chat("talk", &format!("host {i}")).await.unwrap();
        } else {
            admin.send_chat("talk", &format!("notice {i}")).await.unwrap();
        }
    }
    chatter.send_chat("talk", "last chat").await.unwrap();
    let last = host.send_chat("talk", "host last").await.unwrap();
    let got = collect_until(&mut events, |ev| {
        ev.iter().any(|e| matches!(e, Event::Message(m) if m.seq == last.seq))
    })
    .await;
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "filtered events are not loss: {:?}",
        summary(&got)
    );
    let texts: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.seq > 0 => Some(text(m).to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["host 0", "notice 1", "host 2", "notice 3", "host last"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_fetched_by_sequence_range_and_by_media_time() {
    let server = TestServer::start().await;
    let (host, _h) = server.connect("host", Role::Host).await;
    host.join("vod").await.unwrap();
    for i in 1..=10u64 {
        let msg = ChatMessage {
            room: "vod".into(),
            text: format!("at {}s", i * 10),
            media_ts_ms: Some(i * 10_000),
            ..ChatMessage::default()
        };
        host.send(msg).await.unwrap();
    }
    host.send_chat("vod", "no timestamp").await.unwrap();
    // Anyone may fetch, joined or not (danmaku replay after the live).
    let (replay, _r) = server.connect("replayer", Role::Viewer).await;
    let h = replay.fetch_history("vod", HistoryRange::Seq { from: 3, to: 5 }, 0).await.unwrap();
    assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!((h.oldest_seq, h.truncated), (1, false));
    let h =
        replay.fetch_history("vod", HistoryRange::Media { from_ms: 25_000, to_ms: 60_000 }, 0).await.unwrap();
    assert_eq!(h.events.iter().map(text).collect::<Vec<_>>(), ["at 30s", "at 40s", "at 50s", "at 60s"]);
    let h = replay.fetch_history("vod", HistoryRange::Seq { from: 1, to: u64::MAX }, 4).await.unwrap();
    assert_eq!((h.events.len(), h.truncated), (4, true));
    let h = replay.fetch_history("vod", HistoryRange::Seq { from: 5, to: u64::MAX }, 0).await.unwrap();
    assert_eq!(h.events.last().map(text), Some("no timestamp"));
    let h = replay.fetch_history("vod", HistoryRange::Latest, 2).await.unwrap();
    assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [10, 11], "the newest page");
    assert!(h.truncated, "older events are left");
    let err = replay.fetch_history("never-used", HistoryRange::Seq { from: 1, to: 9 }, 0).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "a room not live here: {err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_reports_connections_rooms_and_deliveries() {
    let server = TestServer::start().await;
    let (a, mut events) = server.connect("a", Role::Viewer).await;
    let (b, _b) = server.connect("b", Role::Viewer).await;
    a.join("m").await.unwrap();
    b.join("m").await.unwrap();
    b.send_chat("m", "hello").await.unwrap();
    sequenced(&mut events, 1).await;
    // The room records a round's counts right after its pushes, which may
    // be a moment after the first member has read them.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut text = server.scrape().await;
    while metric(&text, "roomcast_deliveries_total").unwrap_or(0.0) < 2.0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = server.scrape().await;
    }
    assert_eq!(metric(&text, "roomcast_connections"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "roomcast_rooms"), Some(1.0), "{text}");
    assert!(metric(&text, "roomcast_deliveries_total").unwrap() >= 2.0, "{text}");
    assert!(metric(&text, "roomcast_outbox_wait_seconds_count").unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "roomcast_sequenced_to_write_seconds_count").unwrap() >= 1.0, "{text}");
    assert_eq!(metric(&text, "roomcast_joins_total"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "roomcast_handshakes_total"), Some(2.0), "{text}");
    assert!(text.contains("roomcast_room_events_total{kind=\"chat\"} 1"), "{text}");
    a.leave("m").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server.scrape().await.contains("roomcast_leaves_total{reason=\"left\"} 1") {
        assert!(tokio::time::Instant::now() < deadline, "the leave was not counted by its reason");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
