//! `cross-node`: a fleet of two nodes and a Redis, all started for the
//! run. One publisher on node A; its `--subscribers` on A alone
//! (`one-node`), half on each (`split`), and all on B (`remote`), one room
//! per layout. Each layout reports what the subscribers received and how
//! late, both nodes' CPU per delivery, and Redis's CPU per room event, so
//! the cost of crossing nodes is the difference between the layouts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench::args::{BenchArgs, Endpoint};
use crate::bench::delivery::Received;
use crate::bench::proc::{ProcSample, Usage};
use crate::bench::progress::{bar, hold};
use crate::bench::publish::publish;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::spawn;
use crate::bench::target::Target;

/// Where a layout puts its subscribers.
#[derive(Debug, Clone, Copy)]
enum Layout {
    OneNode,
    Split,
    Remote,
}

impl Layout {
    fn label(self) -> &'static str {
        match self {
            Layout::OneNode => "one-node",
            Layout::Split => "split",
            Layout::Remote => "remote",
        }
    }

    /// How many of `n` subscribers go to node B.
    fn on_b(self, n: usize) -> usize {
        match self {
            Layout::OneNode => 0,
            Layout::Split => n / 2,
            Layout::Remote => n,
        }
    }
}

/// The fleet the run started: Redis and two nodes on it.
struct Fleet {
    a: Arc<Target>,
    b: Arc<Target>,
    redis_port: u16,
    _redis: spawn::Spawned,
}

/// The answer to one inline command to the Redis on `port`.
async fn redis_info(port: u16, section: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("INFO {section}\r\n").as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 16 << 10];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Redis's own CPU seconds (user and system, from `INFO cpu`, to the
/// microsecond: /proc counts in 10 ms ticks, too coarse for a few hundred
/// events).
async fn redis_cpu(port: u16) -> Option<f64> {
    let text = redis_info(port, "cpu").await?;
    let field = |name: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Calls and microseconds of the scripts Redis ran so far (`EVALSHA`, from
/// `INFO commandstats`): the time inside the scripts, without the
/// network and protocol work around them.
async fn redis_scripts(port: u16) -> Option<(u64, u64)> {
    let text = redis_info(port, "commandstats").await?;
    let line = text.lines().find(|l| l.starts_with("cmdstat_evalsha:"))?;
    let field = |name: &str| -> Option<u64> {
        line.split([':', ',']).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some((field("calls")?, field("usec")?))
}

pub(crate) async fn run(ep: &Endpoint, args: &BenchArgs) -> Result<Vec<Report>> {
    if !args.spawn {
        bail!("cross-node starts its own Redis and nodes: pass --spawn");
    }
    let (url, redis) = spawn::redis(args).await?;
    let extra = ["--redis".to_string(), url];
    let a = Target::spawned(ep, args, spawn::node(args, None, &extra, "-a").await?)?;
    let b = Target::spawned(ep, args, spawn::node(args, None, &extra, "-b").await?)?;
    let redis_port = extra[1].rsplit(':').next().and_then(|p| p.parse().ok()).context("redis port")?;
    let fleet = Fleet { a: Arc::new(a), b: Arc::new(b), redis_port, _redis: redis };
    let mut reports = Vec::new();
    for layout in [Layout::OneNode, Layout::Split, Layout::Remote] {
        reports.push(phase(&fleet, args, layout).await?);
    }
    Ok(reports)
}

/// CPU seconds a process spent between two samples.
fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu.saturating_sub(a?.cpu).as_secs_f64())
}

async fn phase(fleet: &Fleet, args: &BenchArgs, layout: Layout) -> Result<Report> {
    let label = layout.label();
    let room = format!("{}-cross-{label}", args.room);
    let n_b = layout.on_b(args.subscribers);
    let n_a = args.subscribers - n_b;
    let mut report = fleet.a.report(
        &format!("cross-node {label}: publisher on A, {n_a} subscribers on A, {n_b} on B"),
        args,
        &[
            ("run", label.into()),
            ("subscribers_on_a", n_a.into()),
            ("subscribers_on_b", n_b.into()),
            ("rate_per_s", args.rate.into()),
            ("size_bytes", args.size.into()),
            ("duration_s", args.duration.into()),
        ],
    );
    report.add("node_b", fleet.b.addr.to_string());
    let plan_a = SessionPlan::new(&fleet.a, args, Rooms::One(room.clone()));
    let plan_b = SessionPlan::new(&fleet.b, args, Rooms::One(room.clone()));
    let opened_a = plan_a.watch(&format!("{label}-a-"), n_a).await?;
    let opened_b = plan_b.watch(&format!("{label}-b-"), n_b).await?;
    report.add("connect_failures", opened_a.failures().len() + opened_b.failures().len());
    let publisher = fleet.a.host(&format!("{label}-publisher")).await?;
    publisher.join(&room).await.context("publisher join")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Redis's background (pings, online-count reports) with the room quiet,
    // taken out of its cost per event.
    const QUIET: Duration = Duration::from_secs(2);
    let quiet0 = redis_cpu(fleet.redis_port).await;
    tokio::time::sleep(QUIET).await;
    let background = match (quiet0, redis_cpu(fleet.redis_port).await) {
        (Some(a), Some(b)) => (b - a).max(0.0) / QUIET.as_secs_f64(),
        _ => 0.0,
    };

    let usage = Usage::start(fleet.a.pid.as_deref(), false);
    let b0 = fleet.b.sample();
    let (r0, r0_at) = (redis_cpu(fleet.redis_port).await, std::time::Instant::now());
    let scripts0 = redis_scripts(fleet.redis_port).await;
    let pb = bar((args.rate * args.duration).round() as u64, "publishing");
    let published = publish(&publisher, &room, args.rate, args.size, args.duration, Some(&pb)).await;
    pb.finish_and_clear();
    hold(args.drain, "draining", String::new).await;
    let (r1, b1) = (redis_cpu(fleet.redis_port).await, fleet.b.sample());
    let redis_secs = r0_at.elapsed().as_secs_f64().max(1e-9);
    let scripts1 = redis_scripts(fleet.redis_port).await;
    let a_cpu = usage.server.and_then(|s| cpu_between(Some(s), fleet.a.sample()));

    let got_a = opened_a.finish(&plan_a).await;
    let got_b = opened_b.finish(&plan_b).await;
    let all: Vec<&Received> = got_a.iter().chain(got_b.iter()).map(|(_, r)| r).collect();
    let deliveries: u64 = all.iter().map(|r| r.delivered).sum();
    let expected = published.seqs.len() as u64 * all.len() as u64;
    let got: u64 = all.iter().map(|r| published.seqs.iter().filter(|s| r.has(**s)).count() as u64).sum();
    report.add("published", published.sent);
    report.add("publish_errors", published.errors);
    report.latency_rows("publish_ack_", published.ack_latencies.clone());
    report.delivery_rows(expected, deliveries, expected.saturating_sub(got), args.duration, &all);
    report.add("gaps_reported", all.iter().map(|r| r.gaps).sum::<u64>());
    report.add("disconnected", plan_a.dropped() + plan_b.dropped());
    report.latency_rows("", all.iter().flat_map(|r| r.latencies.iter().copied()).collect());
    for (side, got) in [("a_", &got_a), ("b_", &got_b)] {
        if !got.is_empty() {
            report.latency_rows(side, got.iter().flat_map(|(_, r)| r.latencies.iter().copied()).collect());
        }
    }
    let b_cpu = cpu_between(b0, b1);
    if let (Some(a), Some(b)) = (a_cpu, b_cpu) {
        report.add("node_b_cpu_s", round2(b));
        report.add("nodes_cpu_us_per_delivery", round2((a + b) * 1e6 / deliveries.max(1) as f64));
    }
    if let (Some(r0), Some(r1)) = (r0, r1) {
        let cpu = (r1 - r0).max(0.0);
        let secs = redis_secs;
        let events = published.seqs.len().max(1) as f64;
        report.add("redis_cpu_pct", round2(100.0 * cpu / secs));
        report.add("redis_quiet_cpu_pct", round2(100.0 * background));
        report.add("redis_cpu_us_per_event", round2((cpu - background * secs).max(0.0) * 1e6 / events));
    }
    if let (Some((c0, u0)), Some((c1, u1))) = (scripts0, scripts1) {
        report.add("redis_script_calls", c1.saturating_sub(c0));
        report.add(
            "redis_script_us_per_call",
            round2(u1.saturating_sub(u0) as f64 / (c1.saturating_sub(c0)).max(1) as f64),
        );
    }
    usage.finish(&mut report, Some(deliveries));
    publisher.close();
    Ok(report)
}
