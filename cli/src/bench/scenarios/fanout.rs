//! `fanout`: one publisher into a room of `--subscribers`, and what every
//! subscriber received, how late, and at what cost to the node.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bench::args::BenchArgs;
use crate::bench::delivery::Received;
use crate::bench::proc::Usage;
use crate::bench::progress::{bar, hold};
use crate::bench::publish::publish;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan, SlowEvery};
use crate::bench::target::Target;

/// One fan-out run, `label`led, with `slow_share` of the subscribers not
/// reading; deliveries are counted over the others.
pub(super) async fn run(
    target: &Arc<Target>,
    args: &BenchArgs,
    slow_share: f64,
    label: &str,
) -> Result<Report> {
    let room = format!("{}-{label}", args.room);
    let mut report = target.report(
        &format!("{label}: one publisher, {} subscribers", args.subscribers),
        args,
        &[
            ("run", label.into()),
            ("subscribers", args.subscribers.into()),
            ("rate_per_s", args.rate.into()),
            ("size_bytes", args.size.into()),
            ("duration_s", args.duration.into()),
            ("slow_share", slow_share.into()),
        ],
    );
    let plan =
        SessionPlan::new(target, args, Rooms::One(room.clone())).with_slow(SlowEvery::share(slow_share));
    let rss_start = target.sample();
    let opened = plan.watch(&format!("{label}-sub-"), args.subscribers).await?;
    report.add("connect_failures", opened.failures().len());
    let publisher = target.host(&format!("{label}-publisher")).await?;
    publisher.join(&room).await.context("publisher join")?;
    // Let the joins' side effects (entered notices, online counts) settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rx0 = opened.rx_counts().await;
    let usage = Usage::start(target.pid.as_deref(), false);
    let pb = bar((args.rate * args.duration).round() as u64, "publishing");
    let published = publish(&publisher, &room, args.rate, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    hold(args.drain, "draining", String::new).await;
    let window = usage.server.map(|s| s.at.elapsed().as_secs_f64()).unwrap_or(args.duration + args.drain);
    let rx1 = opened.rx_counts().await;
    let received = opened.finish(&plan).await;
    let deliveries: u64 = received.iter().map(|(_, r)| r.delivered).sum();
    let healthy: Vec<&Received> =
        received.iter().filter(|(i, _)| !plan.is_slow(*i)).map(|(_, r)| r).collect();
    let expected = published.seqs.len() as u64 * healthy.len() as u64;
    let got: u64 = healthy.iter().map(|r| published.seqs.iter().filter(|s| r.has(**s)).count() as u64).sum();
    report.add("published", published.sent);
    report.add("publish_errors", published.errors);
    report.latency_rows("publish_ack_", published.ack_latencies.clone());
    let stats = publisher.connection_stats();
    report.add("publisher_rtt_ms", round2(stats.path.rtt.as_secs_f64() * 1e3));
    report.add("publisher_cwnd", stats.path.cwnd);
    report.add("publisher_lost_packets", stats.path.lost_packets);
    report.add("healthy_subscribers", healthy.len());
    report.add("slow_subscribers", received.len() - healthy.len());
    report.delivery_rows(expected, deliveries, expected.saturating_sub(got), args.duration, &healthy);
    report.add("gaps_reported", healthy.iter().map(|r| r.gaps).sum::<u64>());
    report.add("lagged_healthy", healthy.iter().map(|r| r.lags).sum::<u64>());
    report.add("disconnected", plan.dropped());
    let packets = rx1.datagrams - rx0.datagrams;
    report.add("packets_to_subscribers_per_s", round2(packets as f64 / window));
    report.add("packets_per_delivery", round2(packets as f64 / deliveries.max(1) as f64));
    report.add("stream_frames_to_subscribers", rx1.streams - rx0.streams);
    report.add("ping_frames_to_subscribers", rx1.pings - rx0.pings);
    report.latency_rows("", healthy.iter().flat_map(|r| r.latencies.iter().copied()).collect());
    report.latency_rows(
        "sequenced_to_receive_",
        healthy.iter().flat_map(|r| r.fanout_latencies.iter().copied()).collect(),
    );
    usage.finish(&mut report, Some(deliveries));
    report.rss_growth(rss_start, target.sample());
    publisher.close();
    Ok(report)
}
