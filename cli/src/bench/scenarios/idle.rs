//! `idle`: hold many joined, heartbeating connections spread over rooms,
//! and measure what each costs the node.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::bench::args::BenchArgs;
use crate::bench::proc::Usage;
use crate::bench::progress::hold;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::target::Target;

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let mut report = target.report(
        "idle: connections held",
        args,
        &[
            ("connections", args.connections.into()),
            ("rooms", args.rooms.into()),
            ("hold_s", args.duration.into()),
        ],
    );
    let rooms = Rooms::Spread { prefix: args.room.clone(), count: args.rooms };
    let plan = SessionPlan::new(target, args, rooms);
    let before = target.sample();
    let started = Instant::now();
    let opened = plan.watch("idle-", args.connections).await?;
    let ramp = started.elapsed().as_secs_f64();
    report.add("ramp_s", round2(ramp));
    report.add("connect_failures", opened.failures().len());
    if let Some(f) = opened.failures().first() {
        report.add("first_failure", f.clone());
    }
    let held_at_start = opened.joined();
    let after_ramp = target.sample();
    let usage = Usage::start(target.pid.as_deref(), false);
    hold(args.duration, "holding", || format!("{} dropped", plan.dropped())).await;
    let held = held_at_start as u64 - plan.dropped();
    report.add("connections_held", held);
    report.add("connections_dropped", plan.dropped());
    report.rss_per_connection(before, after_ramp, held_at_start);
    usage.finish(&mut report, None);
    opened.finish(&plan).await;
    Ok(report)
}
