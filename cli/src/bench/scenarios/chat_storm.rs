//! `chat-storm`: many viewers chat past the room's chat budget at once,
//! while a host keeps talking; whether the sequence stays gap-free and every
//! watcher gets all of it, and how late the host's messages arrive.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinSet;

use crate::bench::args::BenchArgs;
use crate::bench::proc::Usage;
use crate::bench::progress::{bar, hold};
use crate::bench::publish::{Published, publish};
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::target::Target;

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let room = format!("{}-storm", args.room);
    let mut report = target.report(
        "chat-storm: viewers exceed the room's chat budget",
        args,
        &[
            ("watchers", args.subscribers.into()),
            ("senders", args.senders.into()),
            ("sender_rate_per_s", args.sender_rate.into()),
            ("duration_s", args.duration.into()),
        ],
    );
    // Watchers and senders alike count only the host's messages' latency
    // (the senders' counts are not reported).
    let plan = SessionPlan::new(target, args, Rooms::One(room.clone())).with_host_only_latency();
    let watchers = plan.open("watcher-", args.subscribers).await;
    let senders = plan.open("sender-", args.senders).await;
    let host = target.host("storm-host").await?;
    host.join(&room).await.context("host join")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = Usage::start(target.pid.as_deref(), false);
    let mut storm = JoinSet::new();
    for (i, (_, s)) in senders.sessions.iter().enumerate() {
        let (c, room, size, rate, secs) =
            (s.client.clone(), room.clone(), args.size, args.sender_rate, args.duration);
        // Spread the senders' phases over one period.
        let phase =
            Duration::from_secs_f64(i as f64 / senders.sessions.len().max(1) as f64 / rate.max(0.001));
        storm.spawn(async move {
            tokio::time::sleep(phase).await;
            publish(&c, &room, rate, size, secs, None).await
        });
    }
    let pb = bar((2.0 * args.duration).round() as u64, "storming");
    let host_pub = publish(&host, &room, 2.0, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    let mut viewers = Published::default();
    while let Some(p) = storm.join_next().await {
        let p = p?;
        viewers.sent += p.sent;
        viewers.sampled += p.sampled;
        viewers.rate_limited += p.rate_limited;
        viewers.errors += p.errors;
        viewers.seqs.extend(p.seqs);
    }
    hold(args.drain, "draining", String::new).await;
    let received = plan.finish(watchers.sessions).await;
    plan.finish(senders.sessions).await;
    let mut all: Vec<u64> = viewers.seqs.iter().chain(host_pub.seqs.iter()).copied().collect();
    all.sort_unstable();
    let contiguous = all.windows(2).all(|w| w[1] == w[0] + 1);
    let gaps: u64 = received.iter().map(|(_, r)| r.gaps).sum();
    let disorder: u64 = received.iter().map(|(_, r)| r.out_of_order + r.duplicates).sum();
    let complete = received.iter().all(|(_, r)| all.iter().all(|s| r.has(*s)));
    report.add("viewer_chats_sent", viewers.sent);
    report.add("viewer_chats_broadcast", viewers.seqs.len());
    report.add("viewer_chats_sampled", viewers.sampled);
    report.add("viewer_chats_rate_limited", viewers.rate_limited);
    report.add("viewer_chat_errors", viewers.errors);
    let decided = (viewers.seqs.len() as u64 + viewers.sampled).max(1);
    report.add("sampled_share", round2(viewers.sampled as f64 / decided as f64));
    report.add("broadcast_chats_per_s", round2(viewers.seqs.len() as f64 / args.duration.max(1e-9)));
    report.add("host_messages_sent", host_pub.sent);
    report.add("host_messages_sampled", host_pub.sampled);
    report.add("seqs_gap_free", contiguous && gaps == 0 && disorder == 0);
    report.add("watchers_complete", complete);
    report.add("gaps_reported", gaps);
    report.add("deliveries", received.iter().map(|(_, r)| r.delivered).sum::<u64>());
    report.latency_rows("host_", received.iter().flat_map(|(_, r)| r.latencies.iter().copied()).collect());
    let deliveries = received.iter().map(|(_, r)| r.delivered).sum::<u64>();
    usage.finish(&mut report, Some(deliveries));
    host.close();
    Ok(report)
}
