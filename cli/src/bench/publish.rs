//! Publishing into a room through an SDK session: stamped chats at a steady
//! rate, and what became of each.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use roomcast_client::{Client, v1};
use tokio::task::JoinSet;

use super::delivery::stamped;

/// What a publisher sent.
#[derive(Default)]
pub(crate) struct Published {
    pub(crate) sent: u64,
    pub(crate) seqs: Vec<u64>,
    pub(crate) sampled: u64,
    pub(crate) rate_limited: u64,
    pub(crate) errors: u64,
    /// Send-to-ack times of acknowledged sends, µs.
    pub(crate) ack_latencies: Vec<u64>,
}

/// Sends stamped messages at `rate` per second for `secs`, without waiting
/// for one ack before the next send.
pub(crate) async fn publish(
    client: &Client,
    room: &str,
    rate: f64,
    size: usize,
    secs: f64,
    pb: Option<&ProgressBar>,
) -> Published {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    let mut p = Published::default();
    let take =
        |p: &mut Published,
         r: Result<Result<(v1::ChatAck, u64), roomcast_client::Error>, tokio::task::JoinError>| {
            if let Ok(Ok((_, took))) = &r {
                p.ack_latencies.push(*took);
            }
            match r {
                Ok(Ok((ack, _))) if ack.broadcast => p.seqs.push(ack.seq),
                Ok(Ok(_)) => p.sampled += 1,
                Ok(Err(e)) if e.code() == Some(roomcast_protocol::ErrorCode::RateLimited) => {
                    p.rate_limited += 1
                }
                _ => p.errors += 1,
            }
        };
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let (c, room) = (client.clone(), room.to_string());
        set.spawn(async move {
            let started = Instant::now();
            c.send_chat(&room, &stamped(size)).await.map(|ack| (ack, started.elapsed().as_micros() as u64))
        });
        p.sent += 1;
        if let Some(pb) = pb {
            pb.inc(1);
        }
        while let Some(r) = set.try_join_next() {
            take(&mut p, r);
        }
    }
    while let Some(r) = set.join_next().await {
        take(&mut p, r);
    }
    p
}
