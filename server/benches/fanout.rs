//! The fan-out path without sockets: one room, many subscribers.
//!
//! Each subscriber is an [`Outbox`]; a flush encodes the pending events once
//! and pushes the same bytes into every outbox. Divan reports time per
//! iteration and, through the item counter, pushes per second; time per
//! subscriber push is the iteration time divided by the subscriber count.
//!
//! ```text
//! cargo bench -p roomcast-server --bench fanout
//! ```

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use divan::Bencher;
use divan::counter::ItemsCount;
use roomcast_protocol::RoomId;
use roomcast_server::auth::{Identity, Role};
use roomcast_server::room::internals::{
    ChatRequest, Filter, HistoryLog, Item, Outbox, RoomLimits, RoomState, Shed,
};
use tokio::time::Instant;

fn main() {
    divan::main();
}

const HOST: u64 = 0;

fn limits() -> RoomLimits {
    RoomLimits {
        join_history: 20,
        viewer_page: 20,
        online_push_interval: Duration::from_secs(1),
        batch_window: Duration::ZERO,
        max_batch_window: Duration::ZERO,
        chat_budget_per_sec: 0,
        user_chat_per_sec: 0.0,
        entered_per_sec: 0,
        combo_window: Duration::from_secs(3),
    }
}

/// A room with a host and `viewers` subscribers, each with the default
/// 200-event outbox.
fn room(viewers: u64) -> (RoomState, Vec<Arc<Outbox>>) {
    let now = Instant::now();
    let mut room = RoomState::new(
        RoomId::new("bench").unwrap(),
        1,
        limits(),
        HistoryLog::new(1000, Duration::from_secs(300)),
    );
    let mut outboxes = Vec::new();
    for conn in 0..=viewers {
        let role = if conn == HOST { Role::Host } else { Role::Viewer };
        let who = Identity { user_id: format!("u{conn}").into(), name: format!("User {conn}").into(), role };
        let outbox = Outbox::new(200);
        room.join(conn, who, outbox.clone(), None, Filter::All, now, 0);
        outboxes.push(outbox);
    }
    (room, outboxes)
}

fn message(n: u64) -> ChatRequest {
    // About 120 bytes of text, like the end-to-end fan-out benchmark.
    ChatRequest { text: format!("{n:0>120}"), client_msg_id: format!("c{n}"), media_ts_ms: None }
}

/// What each connection's writer does: take everything queued.
fn drain_all(outboxes: &[Arc<Outbox>], scratch: &mut Vec<bytes::Bytes>) {
    for o in outboxes {
        o.try_drain(scratch);
        scratch.clear();
    }
}

/// One event sequenced and flushed to every subscriber (the flush's pushes
/// only; the writers' drains run outside the timed section).
#[divan::bench(args = [1_000, 10_000])]
fn publish_and_flush(bencher: Bencher, viewers: u64) {
    let (mut room, outboxes) = room(viewers);
    let mut scratch = Vec::new();
    let mut n = 0;
    bencher.counter(ItemsCount::new(viewers as usize + 1)).bench_local(|| {
        n += 1;
        let now = Instant::now();
        room.publish(HOST, message(n), now, 0).unwrap();
        room.flush(now);
        // Keep the outboxes from filling up: the room stays in its steady
        // state, where every subscriber keeps up.
        if n % 100 == 0 {
            drain_all(&outboxes, &mut scratch);
        }
    });
}

/// Ten events sequenced, then one flush: a busy room's batch costs one push
/// per subscriber, not ten.
#[divan::bench(args = [10_000])]
fn ten_events_one_flush(bencher: Bencher, viewers: u64) {
    let (mut room, outboxes) = room(viewers);
    let mut scratch = Vec::new();
    let mut n = 0;
    bencher.counter(ItemsCount::new(10 * (viewers as usize + 1))).bench_local(|| {
        let now = Instant::now();
        for _ in 0..10 {
            n += 1;
            room.publish(HOST, message(n), now, 0).unwrap();
        }
        room.flush(now);
        if n % 100 == 0 {
            drain_all(&outboxes, &mut scratch);
        }
    });
}

/// The writers' side: every subscriber of a 10,000-member room drains one
/// queued batch.
#[divan::bench(args = [10_000])]
fn drain_every_subscriber(bencher: Bencher, viewers: u64) {
    let (mut room, outboxes) = room(viewers);
    let mut scratch = Vec::new();
    let mut n = 0;
    bencher
        .counter(ItemsCount::new(viewers as usize + 1))
        .with_inputs(|| {
            n += 1;
            let now = Instant::now();
            room.publish(HOST, message(n), now, 0).unwrap();
            room.flush(now);
        })
        .bench_local_values(|()| drain_all(&outboxes, &mut scratch));
}

/// One push of shared bytes into one outbox: the per-subscriber unit cost.
#[divan::bench]
fn outbox_push(bencher: Bencher) {
    let outbox = Outbox::new(200);
    let frames = Bytes::from(vec![0u8; 160]);
    let mut scratch = Vec::new();
    let mut seq = 0;
    bencher.bench_local(|| {
        seq += 1;
        outbox.push(Item::Sequenced {
            frames: frames.clone(),
            first: seq,
            last: seq,
            events: 1,
            sequenced_at: None,
        });
        if seq % 100 == 0 {
            outbox.try_drain(&mut scratch);
            scratch.clear();
        }
    });
}

/// A push into a full outbox that must first shed a queued Low event.
#[divan::bench]
fn outbox_push_shedding(bencher: Bencher) {
    let low = Bytes::from_static(b"entered");
    let frames = Bytes::from(vec![0u8; 160]);
    bencher
        .with_inputs(|| {
            let outbox = Outbox::new(200);
            for _ in 0..200 {
                outbox.push(Item::Ephemeral { frame: low.clone(), shed: Shed::Low });
            }
            outbox
        })
        .bench_local_values(|outbox| {
            outbox.push(Item::Sequenced {
                frames: frames.clone(),
                first: 1,
                last: 1,
                events: 1,
                sequenced_at: None,
            });
            outbox
        });
}
