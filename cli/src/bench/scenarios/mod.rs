//! The scenarios run against a roomcast node, one per file.

mod chat_storm;
pub(crate) mod cross_node;
mod fanout;
mod gift_burst;
mod idle;
mod join_storm;
mod ledger_backend;
mod like_storm;
mod quiz_burst;
mod slow_consumers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ledger_backend::Backend;

use super::args::{BenchArgs, Scenario};
use super::report::Report;
use super::target::Target;

/// What a scenario needs in place before the node starts: gift-burst's
/// stand-in backend for the webhook ledger, and the node configuration that
/// points at it.
#[derive(Default)]
pub(crate) struct Setup {
    config: Option<PathBuf>,
    backend: Option<Backend>,
}

impl Setup {
    pub(crate) async fn new(args: &BenchArgs) -> Result<Self> {
        let (Scenario::GiftBurst, Some(delay)) = (args.scenario, args.ledger_delay_ms) else {
            return Ok(Self::default());
        };
        let balances: Vec<_> =
            (0..args.senders).map(|i| (gift_burst::sender(i), gift_burst::INITIAL_BALANCE)).collect();
        let backend = Backend::start(Duration::from_millis(delay), &balances).await?;
        let path = std::env::temp_dir().join(format!("roomcast-bench-{}.toml", std::process::id()));
        backend.write_config(&path)?;
        Ok(Self { config: Some(path), backend: Some(backend) })
    }

    /// The node's configuration file, for a node the run spawns.
    pub(crate) fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs `args.scenario` against `target`: one report, or two for
/// slow-consumers.
pub(crate) async fn run(target: &Arc<Target>, args: &BenchArgs, setup: &Setup) -> Result<Vec<Report>> {
    match args.scenario {
        Scenario::GiftBurst => gift_burst::run(target, args, setup.backend.as_ref()).await.map(|r| vec![r]),
        Scenario::LikeStorm => like_storm::run(target, args).await.map(|r| vec![r]),
        Scenario::QuizBurst => quiz_burst::run(target, args).await.map(|r| vec![r]),
        Scenario::Idle => idle::run(target, args).await.map(|r| vec![r]),
        Scenario::JoinStorm => join_storm::run(target, args).await.map(|r| vec![r]),
        Scenario::Fanout => fanout::run(target, args, 0.0, "fanout").await.map(|r| vec![r]),
        Scenario::ChatStorm => chat_storm::run(target, args).await.map(|r| vec![r]),
        Scenario::SlowConsumers => slow_consumers::run(target, args).await,
        Scenario::CrossNode => anyhow::bail!("cross-node starts its own nodes (scenarios::cross_node::run)"),
    }
}
