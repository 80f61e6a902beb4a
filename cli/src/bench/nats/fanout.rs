//! `fanout --peer nats`: `--subscribers` subscribers of one subject, one
//! publisher at `--rate` messages/s of `--size` bytes for `--duration` s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;

use super::{Peer, check_open_files, protocol};
use crate::bench::args::BenchArgs;
use crate::bench::delivery::{Readers, Received};
use crate::bench::proc::Usage;
use crate::bench::progress::{bar, hold};
use crate::bench::report::Report;

pub(super) async fn run(args: &BenchArgs, server: SocketAddr) -> Result<Report> {
    check_open_files(args.subscribers)?;
    let peer = Peer::new(args, server).await?;
    let mut report =
        peer.report(&format!("fanout (NATS): one publisher, {} subscribers", args.subscribers), "fanout");
    report.add("subscribers", args.subscribers);
    report.add("rate_per_s", args.rate);
    report.add("size_bytes", args.size);
    report.add("duration_s", args.duration);
    let readers = Readers::new();
    let rss_start = peer.sample();
    // A subject of this run's own, and the most messages it can publish.
    let subject = format!("{}.{}.fanout", args.room, std::process::id());
    let max_seq = (args.rate * args.duration).ceil() as u64 + 1;
    let (tasks, failures) = protocol::subscribers(
        peer.addr,
        args.subscribers,
        args.concurrency,
        max_seq,
        |_| subject.clone(),
        &readers,
    )
    .await;
    report.add("connect_failures", failures);
    let (mut publisher, _) = protocol::open(peer.addr, "").await.context("publisher")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = Usage::start(peer.pid.as_deref(), true);
    let pb = bar((args.rate * args.duration).round() as u64, "publishing");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let (mut sent, mut errors) = (0u64, 0u64);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let payload = protocol::stamped(sent + 1, args.size);
        let mut frame = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        match publisher.write_all(&frame).await {
            Ok(()) => sent += 1,
            Err(_) => errors += 1,
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    hold(args.drain, "draining", String::new).await;
    readers.stop();
    // A reader that did not come back (it panicked) still counts: what it
    // should have received is lost.
    let subscribed = tasks.len() as u64;
    let mut received = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            received.push(r);
        }
    }
    let deliveries: u64 = received.iter().map(|r| r.delivered).sum();
    let expected = sent * subscribed;
    report.add("readers_failed", subscribed - received.len() as u64);
    report.add("published", sent);
    report.add("publish_errors", errors);
    let seen: Vec<&Received> = received.iter().collect();
    report.delivery_rows(expected, deliveries, expected.saturating_sub(deliveries), args.duration, &seen);
    report.add("disconnected", readers.dropped());
    report.latency_rows("", received.iter().flat_map(|r| r.latencies.iter().copied()).collect());
    usage.finish(&mut report, Some(deliveries));
    report.rss_growth(rss_start, peer.sample());
    Ok(report)
}
