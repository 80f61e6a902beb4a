//! `slow-consumers`: the fan-out twice, once with every subscriber reading
//! and once with `--slow-share` of them stopped, so what the stopped ones
//! cost the others shows side by side.

use std::sync::Arc;

use anyhow::Result;

use super::fanout;
use crate::bench::args::BenchArgs;
use crate::bench::report::Report;
use crate::bench::target::Target;

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Vec<Report>> {
    let base = fanout::run(target, args, 0.0, "baseline").await?;
    let slow = fanout::run(target, args, args.slow_share, "slow").await?;
    Ok(vec![base, slow])
}
