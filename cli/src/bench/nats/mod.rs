//! `roomcast bench fanout --peer nats`: the same fan-out against a NATS
//! server, so the node's figures sit next to a peer's measured the same way
//! on the same machine: one publisher, N subscribers of one subject, stamped
//! payloads, the server's CPU time from /proc.
//!
//! It speaks NATS's text protocol over TCP itself (`protocol`), so the
//! generator pays no client library's overhead beyond reading the sockets.

mod fanout;
mod idle;
mod protocol;

use std::net::SocketAddr;

use anyhow::{Result, bail};

use super::args::{BenchArgs, Scenario};
use super::proc::{ProcSample, proc_sample};
use super::report::Report;
use super::spawn::{self, Spawned};

/// Runs `args.scenario` against the NATS server at `server`, or one it
/// starts (`--spawn`).
pub(crate) async fn run(args: &BenchArgs, server: SocketAddr) -> Result<Report> {
    match args.scenario {
        Scenario::Fanout => fanout::run(args, server).await,
        Scenario::Idle => idle::run(args, server).await,
        _ => bail!("--peer nats runs the fanout and idle scenarios only"),
    }
}

/// A NATS server to measure, and maybe one we started.
struct Peer {
    addr: SocketAddr,
    pid: Option<String>,
    /// Stopped when the peer is dropped.
    _spawned: Option<Spawned>,
}

impl Peer {
    async fn new(args: &BenchArgs, server: SocketAddr) -> Result<Self> {
        if !args.spawn {
            return Ok(Self { addr: server, pid: args.server_pid.map(|p| p.to_string()), _spawned: None });
        }
        let (addr, process) = spawn::nats(args).await?;
        Ok(Self { addr, pid: Some(process.pid()), _spawned: Some(process) })
    }

    /// The server's CPU time and memory now, if its PID is known.
    fn sample(&self) -> Option<ProcSample> {
        self.pid.as_deref().and_then(proc_sample)
    }

    /// A report on this server, headed with the scenario and where it ran.
    fn report(&self, title: &str, scenario: &str) -> Report {
        let mut report = Report::new(title);
        report.add("scenario", scenario);
        report.add("peer", "nats");
        report.add("server", self.addr.to_string());
        report.add("server_pid", self.pid.clone().map(serde_json::Value::from).unwrap_or_default());
        report
    }
}

/// This process's limit on open files (the soft limit), from /proc.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Refuses a run that needs more TCP connections than this process may open
/// files: each is a socket, and a run that hits the limit fails to connect
/// some and cannot read /proc either.
fn check_open_files(connections: usize) -> Result<()> {
    if let Some(limit) = open_files_limit()
        && connections as u64 + 64 > limit
    {
        bail!(
            "{connections} TCP connections need more open files than this process may have ({limit}); raise `ulimit -n`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_knows_its_open_files_limit() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
        assert!(check_open_files(usize::MAX / 2).is_err());
        assert!(check_open_files(0).is_ok());
    }
}
