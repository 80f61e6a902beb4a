//! Servers a run starts for itself (`--spawn`): a roomcast node or a
//! nats-server on a free loopback port, pinned to `--server-cpus` if given,
//! and stopped when the run ends.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roomcast_client::Trust;

use super::args::BenchArgs;
use super::http::Admin;

/// A server process this run started. Dropping it kills the process and
/// removes the data directory it was given.
pub(crate) struct Spawned {
    child: Child,
    data_dir: Option<PathBuf>,
}

impl Spawned {
    /// Its PID, as /proc names it.
    pub(crate) fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// How it exited, if it has.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A command that runs `exe`, under `taskset -c CPUS` if `cpus` is given.
fn pinned(exe: impl AsRef<OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// A node started for the run: where it listens, the certificate it
/// serves, the secret it verifies tokens with, and its admin API and
/// metrics endpoint.
pub(crate) struct SpawnedNode {
    pub(crate) addr: SocketAddr,
    pub(crate) trust: Trust,
    pub(crate) secret: String,
    pub(crate) admin: Admin,
    pub(crate) metrics: SocketAddr,
    pub(crate) process: Spawned,
}

/// A free loopback TCP port.
fn free_tcp() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts the `roomcast-server` next to this binary on a free loopback
/// port, with a data directory, token secret and admin API key of its own
/// (and `config` as its configuration file, if given), and waits until it
/// serves. `extra` arguments go to it too; `tag` tells apart the data
/// directories of nodes one run starts.
pub(crate) async fn node(
    args: &BenchArgs,
    config: Option<&std::path::Path>,
    extra: &[String],
    tag: &str,
) -> Result<SpawnedNode> {
    let dir = std::env::temp_dir().join(format!("roomcast-bench-{}{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let secret = random_hex(32);
    let admin = Admin { addr: free_tcp()?, key: random_hex(24) };
    let metrics = free_tcp()?;
    if config.is_some() && args.server_args.iter().any(|a| a.starts_with("--config")) {
        bail!("this run writes the node's configuration file itself: drop --server-arg=--config");
    }
    let exe = std::env::current_exe()?.with_file_name("roomcast-server");
    if !exe.exists() {
        bail!("{} not found: build it (cargo build --release)", exe.display());
    }
    let child = pinned(&exe, args.server_cpus.as_deref())
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&dir)
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .arg("--admin-listen")
        .arg(admin.addr.to_string())
        .args(config.map(|c| format!("--config={}", c.display())))
        .args(&args.server_args)
        .args(extra)
        .env("ROOMCAST_TOKEN_SECRET", &secret)
        .env("ROOMCAST_ADMIN_API_KEY", &admin.key)
        .env_remove("ROOMCAST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting roomcast-server")?;
    let process = Spawned { child, data_dir: Some(dir.clone()) };
    let cert = dir.join(roomcast_protocol::dev::CERT_FILE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cert.exists() {
        if Instant::now() > deadline {
            bail!("the spawned server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The certificate is written before the socket is bound.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let trust = Trust::pinned_cert_file(&cert)?;
    Ok(SpawnedNode { addr, trust, secret, admin, metrics, process })
}

/// Starts `--nats-server` on a free loopback port and waits until it
/// accepts connections.
pub(crate) async fn nats(args: &BenchArgs) -> Result<(SocketAddr, Spawned)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = pinned(&args.nats_server, args.server_cpus.as_deref())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (is it installed?)", args.nats_server))?;
    let mut process = Spawned { child, data_dir: None };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = process.exited() {
            bail!("the spawned nats-server exited: {status}");
        }
        if Instant::now() > deadline {
            bail!("the spawned nats-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((addr, process))
}

/// Starts `--redis-server` on a free loopback port, pinned to
/// `--redis-cpus` if given, with nothing kept on disk, and waits until it
/// answers. Returns its URL.
pub(crate) async fn redis(args: &BenchArgs) -> Result<(String, Spawned)> {
    let port = free_tcp()?.port();
    let child = pinned(&args.redis_server, args.redis_cpus.as_deref())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (scripts/redis.sh installs it)", args.redis_server))?;
    let mut process = Spawned { child, data_dir: None };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if let Some(status) = process.exited() {
            bail!("the spawned redis-server exited: {status}");
        }
        if Instant::now() > deadline {
            bail!("the spawned redis-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((format!("redis://127.0.0.1:{port}"), process))
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
