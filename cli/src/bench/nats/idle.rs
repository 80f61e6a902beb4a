//! `idle --peer nats`: `--connections` subscribers spread over `--rooms`
//! subjects, answering the server's pings (as NATS clients do), held for
//! `--duration` s.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Result;

use super::{Peer, check_open_files, protocol};
use crate::bench::args::BenchArgs;
use crate::bench::delivery::Readers;
use crate::bench::proc::Usage;
use crate::bench::progress::hold;
use crate::bench::report::{Report, round2};

pub(super) async fn run(args: &BenchArgs, server: SocketAddr) -> Result<Report> {
    check_open_files(args.connections)?;
    let peer = Peer::new(args, server).await?;
    let mut report = peer.report("idle (NATS): connections held", "idle");
    report.add("connections", args.connections);
    report.add("rooms", args.rooms);
    report.add("hold_s", args.duration);
    let readers = Readers::new();
    let before = peer.sample();
    let started = Instant::now();
    let rooms = args.rooms.max(1);
    let (tasks, failures) = protocol::subscribers(
        peer.addr,
        args.connections,
        args.concurrency,
        0,
        |i| format!("{}.{}.{}", args.room, std::process::id(), i % rooms),
        &readers,
    )
    .await;
    report.add("ramp_s", round2(started.elapsed().as_secs_f64()));
    report.add("connect_failures", failures);
    let after_ramp = peer.sample();
    let usage = Usage::start(peer.pid.as_deref(), true);
    hold(args.duration, "holding", || format!("{} dropped", readers.dropped())).await;
    let dropped_now = readers.dropped();
    report.add("connections_held", tasks.len() as u64 - dropped_now);
    report.add("connections_dropped", dropped_now);
    report.rss_per_connection(before, after_ramp, tasks.len());
    usage.finish(&mut report, None);
    readers.stop();
    for t in tasks {
        let _ = t.await;
    }
    Ok(report)
}
