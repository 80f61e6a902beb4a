//! The scenarios run against a roomcast node, one per file.

mod chat_storm;
mod fanout;
mod idle;
mod join_storm;
mod slow_consumers;

use std::sync::Arc;

use anyhow::Result;

use super::args::{BenchArgs, Scenario};
use super::report::Report;
use super::target::Target;

/// Runs `args.scenario` against `target`: one report, or two for
/// slow-consumers.
pub(crate) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Vec<Report>> {
    match args.scenario {
        Scenario::Idle => idle::run(target, args).await.map(|r| vec![r]),
        Scenario::JoinStorm => join_storm::run(target, args).await.map(|r| vec![r]),
        Scenario::Fanout => fanout::run(target, args, 0.0, "fanout").await.map(|r| vec![r]),
        Scenario::ChatStorm => chat_storm::run(target, args).await.map(|r| vec![r]),
        Scenario::SlowConsumers => slow_consumers::run(target, args).await,
    }
}
