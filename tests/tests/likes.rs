//! Likes end to end over real QUIC datagrams: the SDK's reports are counted
//! up to each user's cap and the rest flagged, the room's total reaches its
//! members and joiners, the platform reads it, and a report for a room the
//! session has not joined counts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomcast_client::Event;
use roomcast_protocol::datagram::ClientDatagram;
use roomcast_server::auth::Role;
use roomcast_tests::{TestServer, metric, wait_for};

/// Waits for `room`'s like total to reach `want`, failing if it passes it.
async fn wait_total(events: &mut roomcast_client::Events, room: &str, want: u64) {
    wait_for(events, |e| match e {
        Event::LikeTotal { room: r, total } if r == room => {
            assert!(*total <= want, "like total {total} beyond {want}");
            (*total == want).then_some(())
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_are_counted_up_to_each_users_cap_and_the_total_reaches_members_and_joiners() {
    // 10 taps a second with two seconds of burst: 20 count at once.
    let server = TestServer::start_with(|c| {
        c.likes.per_user_per_sec = 10.0;
        c.likes.burst_secs = 2.0;
    })
    .await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    assert_eq!(watcher.join("hearts").await.unwrap().like_total, 0);
    let (ann, _a) = server.connect("ann", Role::Viewer).await;
    ann.join("hearts").await.unwrap();
    let (bob, _b) = server.connect("bob", Role::Viewer).await;
    bob.join("hearts").await.unwrap();

    // An impossible burst: 20 count, 80 are flagged.
    ann.like("hearts", 100);
    wait_total(&mut events, "hearts", 20).await;
    // Another user's taps are under their own cap.
    for _ in 0..5 {
        bob.like("hearts", 1);
    }
    wait_total(&mut events, "hearts", 25).await;

    let scrape = server.scrape().await;
    assert_eq!(metric(&scrape, "roomcast_likes_total{reason=\"counted\"}"), Some(25.0), "{scrape}");
    assert_eq!(metric(&scrape, "roomcast_likes_total{reason=\"flagged\"}"), Some(80.0));

    let (cy, _c) = server.connect("cy", Role::Viewer).await;
    assert_eq!(cy.join("hearts").await.unwrap().like_total, 25, "a joiner gets the total at once");
    let info = server.admin("GET", "/v1/rooms/hearts", None).await;
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["like_total"], 25);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_for_a_room_not_joined_counts_nothing_and_keeps_the_connection() {
    let server = TestServer::start().await;
    let (watcher, mut events) = server.connect("wes", Role::Viewer).await;
    watcher.join("hearts").await.unwrap();
    let mut raw = server.raw_session("eve", Role::Viewer).await;
    raw.conn.send_datagram(ClientDatagram::LikeReport { room: "hearts".into(), taps: 7 }.encode()).unwrap();
    raw.conn
        .send_datagram(ClientDatagram::LikeReport { room: "not a room!".into(), taps: 7 }.encode())
        .unwrap();
    let scrape = async {
        loop {
            let s = server.scrape().await;
            if metric(&s, "roomcast_like_reports_total{reason=\"not_joined\"}") == Some(2.0) {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let scrape = tokio::time::timeout(roomcast_tests::WAIT, scrape).await.expect("both reports ignored");
    assert_eq!(metric(&scrape, "roomcast_likes_total{reason=\"counted\"}"), Some(0.0));
    // Still connected: once joined, its taps count.
    raw.join(2, roomcast_client::v1::Join { room: "hearts".into(), ..Default::default() }).await;
    raw.conn.send_datagram(ClientDatagram::LikeReport { room: "hearts".into(), taps: 7 }.encode()).unwrap();
    wait_total(&mut events, "hearts", 7).await;
    server.stop().await;
}
