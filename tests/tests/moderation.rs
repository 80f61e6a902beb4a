//! Moderation that needs no admin call: the banned-words check (refused or
//! masked, reloaded from its file without a restart), rooms that must be
//! opened before viewers join, and the node's connection gate.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use roomcast_client::Event;
use roomcast_protocol::ErrorCode;
use roomcast_server::auth::Role;
use roomcast_server::config::WordAction;
use roomcast_tests::{TestServer, WAIT, sequenced, text, wait_for};

fn code<T: std::fmt::Debug>(r: Result<T, roomcast_client::Error>) -> Option<ErrorCode> {
    r.unwrap_err().code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_words_are_refused_before_sequencing_and_the_list_reloads_without_a_restart() {
    let words = std::env::temp_dir().join(format!("roomcast-words-{}", std::process::id()));
    std::fs::write(&words, "spam\n").unwrap();
    let path = words.clone();
    let server = TestServer::start_with(move |c| {
        c.moderation.banned_words_file = Some(path);
        c.moderation.banned_words_action = WordAction::Refuse;
    })
    .await;
    let (viewer, _v) = server.connect("v", Role::Viewer).await;
    let (host, mut events) = server.connect("h", Role::Host).await;
    viewer.join("r").await.unwrap();
    host.join("r").await.unwrap();
    // The watcher reads the file shortly after the node starts: a send
    // before that is taken like any other.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut taken_before = 0;
    loop {
        match viewer.send_chat("r", "buy SPAM here").await {
            Err(e) if e.code() == Some(ErrorCode::MessageRefused) => break,
            Ok(_) => taken_before += 1,
            other => assert!(tokio::time::Instant::now() < deadline, "never refused: {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ack = viewer.send_chat("r", "hello").await.unwrap();
    let got = sequenced(&mut events, taken_before + 1).await;
    let last = got.last().unwrap();
    assert_eq!((last.seq, text(last)), (ack.seq, "hello"));
    assert_eq!(ack.seq, taken_before as u64 + 1, "refused messages took no sequence number");

    // A new word, no restart.
    std::fs::write(&words, "spam\neggs\n").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match viewer.send_chat("r", "green eggs").await {
            Err(e) if e.code() == Some(ErrorCode::MessageRefused) => break,
            Ok(_) => {
                // Sent before the reload: the host sees it; keep the stream read.
                sequenced(&mut events, 1).await;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the new list was never loaded");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    server.stop().await;
    let _ = std::fs::remove_file(&words);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_words_are_starred_out_and_the_rest_is_sent() {
    let server = TestServer::start_with(|c| {
        c.moderation.banned_words = vec!["darn".into()];
        c.moderation.banned_words_action = WordAction::Mask;
    })
    .await;
    let (viewer, _v) = server.connect("v", Role::Viewer).await;
    let (host, mut events) = server.connect("h", Role::Host).await;
    viewer.join("r").await.unwrap();
    host.join("r").await.unwrap();
    viewer.send_chat("r", "oh DARN it").await.unwrap();
    assert_eq!(text(&sequenced(&mut events, 1).await[0]), "oh **** it");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_must_be_opened_refuses_viewers_until_a_host_joins() {
    let server = TestServer::start_with(|c| c.room.require_open = true).await;
    let (viewer, _v) = server.connect("v", Role::Viewer).await;
    let (host, _h) = server.connect("h", Role::Host).await;
    assert_eq!(code(viewer.join("show").await), Some(ErrorCode::RoomClosed));
    host.join("show").await.unwrap();
    viewer.join("show").await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_connections_past_its_cap_and_lets_one_in_when_a_place_frees() {
    let server = TestServer::start_with(|c| c.moderation.max_connections = 1).await;
    let (first, mut first_events) = server.connect("a", Role::Viewer).await;
    let mut config = server.client_config(server.token("b", Role::Viewer));
    config.reconnect = None;
    config.connect_timeout = Duration::from_secs(2);
    let err = roomcast_client::Client::connect(config.clone()).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    first.close();
    wait_for(&mut first_events, |e| matches!(e, Event::Disconnected { .. }).then_some(())).await;
    // The node notices the close on its side shortly after.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match roomcast_client::Client::connect(config.clone()).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "never let in: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
