//! `roomcast bench SCENARIO`: the load generator.
//!
//! One process opens many SDK sessions, multiplexed over a few UDP sockets,
//! drives a scenario for a bounded time, and reports a table and one JSON
//! line. With the server's PID (or a server it starts itself) it also reports
//! the server's CPU time and memory from /proc, so every figure comes with
//! what it cost.
//!
//! - `args`: the command line (`BenchArgs`, `Scenario`, `PeerServer`).
//! - `target`: the node under test (`Target`: trust, tokens, shared sockets);
//!   `spawn` starts a node or a nats-server for the run, pinned if asked.
//! - `session`: many SDK sessions over those sockets (`SessionPlan`), and
//!   `publish`, stamped chats at a rate.
//! - `delivery`: what subscribers received (`Received`), payload stamps,
//!   and the readers' stop signal (`Readers`).
//! - `proc`: CPU time, memory and socket backlogs from /proc (`Usage`).
//! - `report`: `Report`, the table and the JSON line; `progress`: bars.
//! - `scenarios`: one file per scenario against the node; `nats`: the NATS
//!   peer, its protocol client and its scenarios.

mod args;
mod delivery;
mod http;
mod nats;
mod proc;
mod progress;
mod publish;
mod report;
mod scenarios;
mod session;
mod spawn;
mod target;
mod watchers;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use args::PeerServer;
pub(crate) use args::{BenchArgs, Endpoint};
use target::Target;

pub(crate) async fn run(ep: Endpoint, args: BenchArgs) -> Result<()> {
    let _ = delivery::now_us();
    let limit = Duration::from_secs_f64(args.timeout);
    if args.peer == PeerServer::Nats {
        let report = tokio::time::timeout(limit, nats::run(&args, ep.server))
            .await
            .context("the run took longer than --timeout")??;
        report.print();
        return Ok(());
    }
    if args.scenario == args::Scenario::CrossNode {
        let reports = tokio::time::timeout(limit, scenarios::cross_node::run(&ep, &args))
            .await
            .context("the run took longer than --timeout")??;
        for r in &reports {
            r.print();
        }
        return Ok(());
    }
    let setup = scenarios::Setup::new(&args).await?;
    let target = Arc::new(Target::new(&ep, &args, setup.config()).await?);
    let reports = tokio::time::timeout(limit, scenarios::run(&target, &args, &setup))
        .await
        .context("the run took longer than --timeout")??;
    for r in &reports {
        r.print();
    }
    // Let the connections' closes reach the server.
    for e in &target.endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    Ok(())
}
