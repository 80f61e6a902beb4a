//! The roomcast node a run measures: where it is, how to trust it and mint
//! its tokens, the UDP sockets the generator's sessions share, and the node
//! itself if the run started it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use roomcast_client::{Client, ClientConfig, Trust};
use serde_json::{Value, json};

use super::args::{BenchArgs, Endpoint};
use super::http::Admin;
use super::proc::{ProcSample, proc_sample};
use super::report::Report;
use super::spawn::{self, Spawned};

/// Receive and send buffer of each of the generator's UDP sockets.
pub(crate) const SOCKET_BUFFER: usize = 16 << 20;

/// A node to measure, and maybe one we started.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    server_name: String,
    trust: Trust,
    secret: Vec<u8>,
    pub(crate) pid: Option<String>,
    /// The node's admin API, if known (always for a spawned node).
    pub(crate) admin: Option<Admin>,
    /// The node's metrics endpoint, if known.
    pub(crate) metrics: Option<SocketAddr>,
    /// Stopped when the target is dropped.
    _spawned: Option<Spawned>,
    /// The sockets sessions are spread over, in turn.
    pub(crate) endpoints: Vec<quinn::Endpoint>,
    next: AtomicUsize,
}

/// What is known of a node before its sockets are bound.
struct Found {
    addr: SocketAddr,
    trust: Option<Trust>,
    secret: Option<String>,
    pid: Option<String>,
    spawned: Option<Spawned>,
    admin: Option<Admin>,
    metrics: Option<SocketAddr>,
}

/// The unspecified address of `server`'s family, port 0: where a client socket binds.
pub(crate) fn any_addr(server: &SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = if server.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, 0)
}

impl Target {
    /// The node the options point at, or (with `--spawn`) one started for
    /// the run, with `config` as its configuration file if given.
    pub(crate) async fn new(
        ep: &Endpoint,
        args: &BenchArgs,
        config: Option<&std::path::Path>,
    ) -> Result<Self> {
        if args.spawn {
            return Self::spawned(ep, args, spawn::node(args, config, &[], "").await?);
        }
        let found = Found {
            addr: ep.server,
            trust: ep.trust.clone(),
            secret: args.secret.clone(),
            pid: args.server_pid.map(|p| p.to_string()),
            spawned: None,
            admin: args.admin.map(|addr| Admin { addr, key: args.admin_key.clone().unwrap_or_default() }),
            metrics: args.metrics,
        };
        Self::build(ep, args, found)
    }

    /// A node this run started.
    pub(crate) fn spawned(ep: &Endpoint, args: &BenchArgs, node: spawn::SpawnedNode) -> Result<Self> {
        let found = Found {
            addr: node.addr,
            trust: Some(node.trust),
            secret: Some(node.secret),
            pid: Some(node.process.pid()),
            spawned: Some(node.process),
            admin: Some(node.admin),
            metrics: Some(node.metrics),
        };
        Self::build(ep, args, found)
    }

    fn build(ep: &Endpoint, args: &BenchArgs, found: Found) -> Result<Self> {
        let Found { addr, trust, secret, pid, spawned, admin, metrics } = found;
        let trust = match trust {
            Some(t) => t,
            None => {
                let path = roomcast_protocol::dev::default_data_dir().join(roomcast_protocol::dev::CERT_FILE);
                Trust::pinned_cert_file(&path)
                    .context("pass --cert, --fingerprint or --ca to trust the server")?
            }
        };
        let secret = match secret {
            Some(s) => s.into_bytes(),
            None => {
                let path =
                    roomcast_protocol::dev::default_data_dir().join(roomcast_protocol::dev::SECRET_FILE);
                let s = std::fs::read_to_string(&path).with_context(|| {
                    format!("no --secret and no development secret at {}", path.display())
                })?;
                s.trim().as_bytes().to_vec()
            }
        };
        let mut endpoints = Vec::new();
        for _ in 0..args.sockets.max(1) {
            endpoints.push(bind_endpoint(any_addr(&addr))?);
        }
        Ok(Self {
            addr,
            server_name: ep.server_name.clone(),
            trust,
            secret,
            pid,
            admin,
            metrics,
            _spawned: spawned,
            endpoints,
            next: AtomicUsize::new(0),
        })
    }

    pub(crate) fn token(&self, user: &str, role: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + 24 * 3600)
            .unwrap_or(u64::MAX);
        let claims = json!({ "sub": user, "name": user, "role": role, "exp": exp });
        let key = jsonwebtoken::EncodingKey::from_secret(&self.secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
    }

    /// A session's configuration for `user` as `role`, on the next of the
    /// shared sockets.
    pub(crate) fn config(&self, user: &str, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.addr, self.token(user, role), self.trust.clone());
        c.server_name = self.server_name.clone();
        c.client_name = "roomcast-bench".into();
        c.event_buffer = 256;
        c.reconnect = None;
        c.connect_timeout = Duration::from_secs(20);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        c.endpoint = Some(self.endpoints[i].clone());
        c
    }

    /// A host client on a socket of its own, its events read and dropped, as
    /// a host's app would: its packets do not queue behind a thousand
    /// viewers' in a shared socket, and its event buffer never fills up and
    /// stops it reading its acks.
    pub(crate) async fn host(&self, user: &str) -> Result<Client> {
        self.client_on_own_socket(user, "host").await
    }

    /// A client for `user` as `role` on a socket of its own, its events read
    /// and dropped (see [`Target::host`]).
    pub(crate) async fn client_on_own_socket(&self, user: &str, role: &str) -> Result<Client> {
        let mut config = self.config(user, role);
        config.endpoint = Some(bind_endpoint(any_addr(&self.addr))?);
        let (client, mut events) =
            Client::connect(config).await.with_context(|| format!("{user} connect"))?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        Ok(client)
    }

    /// The node's CPU time and memory now, if its PID is known.
    pub(crate) fn sample(&self) -> Option<ProcSample> {
        self.pid.as_deref().and_then(proc_sample)
    }

    /// A report on this node, headed with the scenario, where it ran, and
    /// the run's parameters `keys`.
    pub(crate) fn report(&self, title: &str, args: &BenchArgs, keys: &[(&str, Value)]) -> Report {
        let mut report = Report::new(title);
        report.add("scenario", format!("{:?}", args.scenario).to_lowercase());
        report.add("server", self.addr.to_string());
        report.add("server_pid", self.pid.clone().map(Value::from).unwrap_or(Value::Null));
        report.add("sockets", self.endpoints.len());
        for (k, v) in keys {
            report.add(k, v.clone());
        }
        report
    }
}

/// A client endpoint (one UDP socket) shared by many sessions, with large
/// buffers: many connections over one socket receive in bursts, which a
/// small buffer drops.
fn bind_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint> {
    let socket = roomcast_server::endpoint::udp_socket(addr, SOCKET_BUFFER)
        .with_context(|| format!("binding UDP {addr}"))?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?)
}
