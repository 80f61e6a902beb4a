//! `join-storm`: connect, authenticate and join one room as fast as the
//! node lets a crowd in.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::bench::args::BenchArgs;
use crate::bench::proc::Usage;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::target::Target;

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let mut report = target.report(
        "join-storm: connect, authenticate, join one room",
        args,
        &[("connections", args.connections.into()), ("concurrency", args.concurrency.into())],
    );
    let plan = SessionPlan::new(target, args, Rooms::One(args.room.clone()));
    let usage = Usage::start(target.pid.as_deref(), false);
    let started = Instant::now();
    let opened = plan.watch("joiner-", args.connections).await?;
    let wall = started.elapsed().as_secs_f64();
    let ok = opened.joined();
    report.add("joined", ok);
    report.add("failures", opened.failures().len());
    if let Some(f) = opened.failures().first() {
        report.add("first_failure", f.clone());
    }
    report.add("wall_s", round2(wall));
    report.add("joins_per_s", round2(ok as f64 / wall.max(1e-9)));
    report.latency_rows("join_", opened.latencies().to_vec());
    usage.finish(&mut report, None);
    opened.finish(&plan).await;
    Ok(report)
}
