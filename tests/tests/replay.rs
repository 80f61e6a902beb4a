//! Replay after the live on the embedded default: once a room has emptied
//! and gone, and after the node restarts, its history is still readable by
//! sequence range and by media time, from the SDK and the admin API,
//! without the messages that were recalled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use roomcast_client::{ChatMessage, HistoryRange, v1};
use roomcast_server::auth::Role;
use roomcast_tests::{TestServer, text};

fn texts(h: &v1::History) -> Vec<&str> {
    h.events.iter().map(text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_history_outlives_the_room_and_the_node() {
    let dir = std::env::temp_dir().join(format!("roomcast-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = {
        let dir = dir.clone();
        move || {
            let dir = dir.clone();
            TestServer::start_with(move |c| {
                c.data_dir = dir;
                c.room.empty_room_ttl_secs = 0;
            })
        }
    };
    let server = start().await;
    let (host, _events) = server.connect("hana", Role::Host).await;
    host.join("show").await.unwrap();
    let mut ids = Vec::new();
    for (i, media) in [1_000u64, 2_000, 3_000, 4_000].iter().enumerate() {
        let msg = ChatMessage {
            room: "show".into(),
            text: format!("line {i}"),
            media_ts_ms: Some(*media),
            ..ChatMessage::default()
        };
        ids.push(host.send(msg).await.unwrap().message_id);
    }
    host.recall("show", &ids[1]).await.unwrap();
    host.leave("show").await.unwrap();
    // The room empties and goes.
    let mut gone = false;
    for _ in 0..100 {
        if server.admin("GET", "/v1/rooms/show", None).await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the empty room went");

    let (viewer, _v) = server.connect("vic", Role::Viewer).await;
    let all = viewer.fetch_history("show", HistoryRange::Seq { from: 1, to: u64::MAX }, 0).await.unwrap();
    assert_eq!(
        texts(&all),
        ["line 0", "line 2", "line 3", ""],
        "the recalled line is left out; its notice kept"
    );
    let media =
        viewer.fetch_history("show", HistoryRange::Media { from_ms: 2_500, to_ms: 4_000 }, 0).await.unwrap();
    assert_eq!(texts(&media), ["line 2", "line 3"]);
    let admin = server.admin("GET", "/v1/rooms/show/history", None).await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert!(admin.body.contains("line 3") && !admin.body.contains("line 1"));
    viewer.close();
    server.stop().await;

    // After a restart.
    let server = start().await;
    let (viewer, _v) = server.connect("vic", Role::Viewer).await;
    let again =
        viewer.fetch_history("show", HistoryRange::Media { from_ms: 0, to_ms: 1_500 }, 0).await.unwrap();
    assert_eq!(texts(&again), ["line 0"]);
    let none = viewer.fetch_history("never-live", HistoryRange::Latest, 0).await.unwrap_err();
    assert!(
        matches!(none, roomcast_client::Error::Refused { code: roomcast_protocol::ErrorCode::NotFound, .. }),
        "{none:?}"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
