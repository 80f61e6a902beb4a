//! `like-storm`: a host chats into a room of `--subscribers` viewers for
//! `--duration` seconds, then for as long again while every viewer also
//! reports `--like-taps` likes a second. Reports what the likes cost the
//! node per report (its CPU time in the second phase less the first),
//! whether the total it broadcast equals the taps it counted, and the
//! viewers' chat latency with and without the storm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bench::args::BenchArgs;
use crate::bench::http;
use crate::bench::proc::{ProcSample, proc_sample};
use crate::bench::progress::{bar, hold};
use crate::bench::publish::publish;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::target::Target;

/// The node's CPU time between two samples, in seconds.
fn cpu_between(a: &Option<ProcSample>, b: &Option<ProcSample>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(b.cpu.saturating_sub(a.cpu).as_secs_f64()),
        _ => None,
    }
}

/// The p99 of latencies `lat` (µs), in ms.
fn p99_ms(mut lat: Vec<u64>) -> f64 {
    lat.sort_unstable();
    let i = ((lat.len().saturating_sub(1)) as f64 * 0.99).round() as usize;
    lat.get(i).map_or(0.0, |us| round2(*us as f64 / 1000.0))
}

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let room = format!("{}-likes", args.room);
    let mut report = target.report(
        &format!("like-storm: {} viewers report likes while a host chats", args.subscribers),
        args,
        &[
            ("viewers", args.subscribers.into()),
            ("taps_per_viewer_per_s", args.like_taps.into()),
            ("chat_rate_per_s", args.rate.into()),
            ("size_bytes", args.size.into()),
            ("phase_s", args.duration.into()),
        ],
    );
    let metrics = target.metrics.context("like-storm reads the node's metrics: use --spawn, or --metrics")?;
    let plan = SessionPlan::new(target, args, Rooms::One(room.clone()));
    let viewers = plan.open("like-viewer-", args.subscribers).await;
    report.add("connect_failures", viewers.failures.len());
    let host = target.host("like-host").await?;
    host.join(&room).await.context("host join")?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Phase 1: chat alone.
    let before = target.sample();
    let own_before = proc_sample("self");
    let pb = bar((args.rate * args.duration).round() as u64, "chat alone");
    let calm = publish(&host, &room, args.rate, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    let between = target.sample();
    let own_between = proc_sample("self");

    // Phase 2: the same chat, and every viewer's likes once a second.
    plan.split_latencies_now();
    let clients: Vec<_> = viewers.sessions.iter().map(|(_, s)| s.client.clone()).collect();
    let (taps, secs, like_room) = (args.like_taps, args.duration, room.clone());
    // Viewers tap independently: each second's like calls are spread over
    // the second in 20 groups, as uncorrelated users' reports would be.
    let storm = tokio::spawn(async move {
        const GROUPS: usize = 20;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / GROUPS as u32);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let group = clients.len().div_ceil(GROUPS).max(1);
        let mut calls = 0u64;
        for g in (0..GROUPS).cycle() {
            tick.tick().await;
            if Instant::now() >= end {
                break;
            }
            for c in clients.iter().skip(g * group).take(group) {
                c.like(&like_room, taps);
                calls += 1;
            }
        }
        calls
    });
    let pb = bar((args.rate * args.duration).round() as u64, "chat + likes");
    let stormy = publish(&host, &room, args.rate, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    let like_calls = storm.await?;
    let after = target.sample();
    let own_after = proc_sample("self");
    // Reports sent in the last second, and the last total's push.
    hold(args.drain.max(3.0), "draining", String::new).await;

    let exposition = http::metrics(metrics).await?;
    let counted = http::sample(&exposition, "roomcast_likes_total{reason=\"counted\"}").unwrap_or(0.0) as u64;
    let flagged = http::sample(&exposition, "roomcast_likes_total{reason=\"flagged\"}").unwrap_or(0.0) as u64;
    let reports =
        http::sample(&exposition, "roomcast_like_reports_total{reason=\"joined\"}").unwrap_or(0.0) as u64;
    let admin_total = match &target.admin {
        Some(admin) => admin.json("GET", &format!("/v1/rooms/{room}"), None).await?["like_total"].as_u64(),
        None => None,
    };
    let received = plan.finish(viewers.sessions).await;
    let broadcast = received.iter().map(|(_, r)| r.like_total).max().unwrap_or(0);
    let with_final = received.iter().filter(|(_, r)| r.like_total == counted).count();

    report.add("like_calls", like_calls);
    report.add("taps_sent", like_calls * u64::from(args.like_taps));
    report.add("like_reports_received", reports);
    report.add("taps_counted", counted);
    report.add("taps_flagged", flagged);
    report.add("like_total_broadcast", broadcast);
    report.add("like_total_admin", admin_total);
    report.add("total_matches_counted", broadcast == counted && admin_total.is_none_or(|t| t == counted));
    report.add("viewers_with_final_total", with_final);
    let cpu_calm = cpu_between(&before, &between);
    let cpu_storm = cpu_between(&between, &after);
    report.add("server_cpu_s_chat_alone", cpu_calm.map(round2));
    report.add("server_cpu_s_chat_and_likes", cpu_storm.map(round2));
    let phase = |a: &Option<ProcSample>, b: &Option<ProcSample>| {
        let secs = match (a, b) {
            (Some(a), Some(b)) => b.at.duration_since(a.at).as_secs_f64().max(1e-9),
            _ => 1.0,
        };
        cpu_between(a, b).map(|c| round2(100.0 * c / secs))
    };
    report.add("server_cpu_pct_chat_alone", phase(&before, &between));
    report.add("server_cpu_pct_chat_and_likes", phase(&between, &after));
    report.add("generator_cpu_pct_chat_alone", phase(&own_before, &own_between));
    report.add("generator_cpu_pct_chat_and_likes", phase(&own_between, &own_after));
    if let (Some(a), Some(b)) = (cpu_calm, cpu_storm)
        && reports > 0
    {
        report.add("server_cpu_us_per_like_report", round2((b - a).max(0.0) * 1e6 / reports as f64));
    }
    report.add("chats_sent", calm.sent + stormy.sent);
    let calm_lat: Vec<u64> = received.iter().flat_map(|(_, r)| r.latencies.iter().copied()).collect();
    let storm_lat: Vec<u64> =
        received.iter().flat_map(|(_, r)| r.latencies_after_split.iter().copied()).collect();
    let (p99_calm, p99_storm) = (p99_ms(calm_lat.clone()), p99_ms(storm_lat.clone()));
    report.latency_rows("chat_alone_", calm_lat);
    report.latency_rows("chat_with_likes_", storm_lat);
    report.add("chat_p99_ratio", if p99_calm > 0.0 { round2(p99_storm / p99_calm) } else { 0.0 });
    report.add("gaps_reported", received.iter().map(|(_, r)| r.gaps).sum::<u64>());
    report.add("lagged", received.iter().map(|(_, r)| r.lags).sum::<u64>());
    report.add("disconnected", plan.dropped());
    host.close();
    Ok(report)
}
