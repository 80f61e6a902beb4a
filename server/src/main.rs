//! `roomcast-server`: runs a node, mints a development token, or prints
//! the effective configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use roomcast_server::Config;
use roomcast_server::auth::Role;
use roomcast_server::config::parse_duration;

/// roomcast: the interaction server for live-streaming rooms.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (defaults < file < environment < flags).
    #[arg(long, env = "ROOMCAST_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// UDP address to serve QUIC on.
    #[arg(long, env = "ROOMCAST_LISTEN", global = true)]
    listen: Option<SocketAddr>,
    /// Directory for the development certificate and secret.
    #[arg(long, env = "ROOMCAST_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain (with --key); default: a development certificate.
    #[arg(long, env = "ROOMCAST_TLS_CERT", requires = "key", global = true)]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, env = "ROOMCAST_TLS_KEY", requires = "cert", global = true)]
    key: Option<PathBuf>,
    /// HS256 secret for connection tokens; default: a development secret.
    #[arg(long, env = "ROOMCAST_TOKEN_SECRET", hide_env_values = true, global = true)]
    token_secret: Option<String>,
    /// ES256 public key (PEM) for connection tokens, instead of HS256.
    #[arg(long, env = "ROOMCAST_TOKEN_PUBLIC_KEY", global = true)]
    token_public_key: Option<PathBuf>,
    /// HTTP address for /metrics and /healthz (`off` to disable).
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN", global = true)]
    metrics_listen: Option<String>,
    /// HTTP address of the admin API and dashboard (`off` to disable).
    #[arg(long, env = "ROOMCAST_ADMIN_LISTEN", global = true)]
    admin_listen: Option<String>,
    /// Key the admin API accepts in `X-Api-Key` (and the dashboard as `?key=`).
    #[arg(long, env = "ROOMCAST_ADMIN_API_KEY", hide_env_values = true, global = true)]
    admin_api_key: Option<String>,
    /// Redis URL (`redis://host:port`): join a fleet that shares rooms through it.
    #[arg(long, env = "ROOMCAST_REDIS", global = true)]
    redis: Option<String>,
    /// `--redis` lists the seed nodes of a Redis Cluster, comma-separated.
    #[arg(long, env = "ROOMCAST_REDIS_CLUSTER", global = true)]
    redis_cluster: bool,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "ROOMCAST_HEARTBEAT_MS", global = true)]
    heartbeat_ms: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default). SIGTERM or Ctrl-C drains the node: new
    /// connections are refused, the open ones closed with SERVER_DRAINING
    /// once in-flight work has settled, within `drain.timeout_secs`.
    Serve,
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint a development token signed with the configured HS256 secret.
    Token {
        /// User id (`sub`).
        #[arg(long)]
        user: String,
        /// viewer, host or admin.
        #[arg(long, default_value = "viewer", value_parser = parse_role)]
        role: Role,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Credit a user's gift balance in the embedded ledger's journal
    /// (`gift-ledger.jsonl` in the data directory). Only while the node is
    /// stopped: a running node keeps balances in memory and would not see
    /// it. With the node running, use the admin API
    /// (`POST /v1/users/{user}/credit`).
    Credit {
        /// User id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Currency units to add.
        #[arg(long)]
        amount: u64,
    },
    /// The gift ledger's journal on disk.
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Rewrites a gift ledger journal that the node refuses to read, without
    /// its unreadable parts, keeping the journal as it was beside it
    /// (`<journal>.corrupt-<unix ms>`). A whole record found inside an
    /// unreadable line (appended after a torn one) is kept. Only while the
    /// node is stopped. Prints what was kept and dropped.
    Repair {
        /// The journal's file name in the data directory: `gift-ledger.jsonl`
        /// (the embedded ledger) or `gift-webhook-keys.jsonl` (the webhook
        /// ledger's keys).
        #[arg(long, default_value = roomcast_server::gifts::ledger::JOURNAL_FILE)]
        file: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Prints the effective configuration (defaults < file < environment <
    /// flags) as TOML, secrets masked.
    Print,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: use viewer, host or admin"))
}

impl Cli {
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Config::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c.tls.cert = Some(cert.clone());
            c.tls.key = Some(key.clone());
        }
        if let Some(v) = &self.token_secret {
            c.auth.hs256_secret = Some(v.clone());
        }
        if let Some(v) = &self.token_public_key {
            c.auth.es256_public_key = Some(v.clone());
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = if v == "off" { None } else { Some(v.parse().context("--metrics-listen")?) };
        }
        if let Some(v) = &self.admin_listen {
            c.admin.listen = if v == "off" { None } else { Some(v.parse().context("--admin-listen")?) };
        }
        if let Some(v) = &self.admin_api_key {
            c.admin.api_key = Some(v.clone());
        }
        if let Some(v) = &self.redis {
            c.redis = Some(v.clone());
        }
        if self.redis_cluster {
            c.fleet.cluster = true;
        }
        if let Some(v) = self.heartbeat_ms {
            c.presence.heartbeat_interval_ms = v;
        }
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let config = cli.config()?;
    match cli.command {
        Some(Command::Token { user, role, name, ttl }) => {
            let secret = roomcast_server::auth::hs256_secret(&config)?;
            println!("{}", roomcast_server::auth::mint_hs256(&secret, &user, &name, role, ttl));
            Ok(())
        }
        Some(Command::Ledger(LedgerCommand::Repair { file })) => repair_ledger(&config.data_dir.join(file)),
        Some(Command::Credit { user, amount }) => {
            anyhow::ensure!(amount > 0, "--amount must be at least 1");
            anyhow::ensure!(
                config.gifts.ledger.url.is_none(),
                "gifts.ledger.url is set: balances are kept by the backend; credit users there"
            );
            anyhow::ensure!(
                config.redis.is_none(),
                "in a fleet, balances are kept in its Redis: credit users through the admin API \
                 (POST /v1/users/USER/credit)"
            );
            let now = roomcast_protocol::unix_ms(std::time::SystemTime::now());
            let ttl = Duration::from_secs(config.gifts.key_ttl_secs);
            let ledger = roomcast_server::gifts::EmbeddedLedger::open(&config.data_dir, ttl, now)
                .with_context(|| format!("opening the gift ledger in {}", config.data_dir.display()))?;
            let balance = ledger.credit(&user, amount, now).context("crediting")?;
            println!("{user}: balance {balance} ({})", ledger.path().display());
            Ok(())
        }
        Some(Command::Config(ConfigCommand::Print)) => {
            print!("{}", config.to_masked_toml().context("printing the configuration")?);
            Ok(())
        }
        None | Some(Command::Serve) => serve(config).await,
    }
}

/// Resolves on the first SIGTERM (what process supervisors send) or Ctrl-C.
/// `roomcast-server ledger repair`.
fn repair_ledger(path: &std::path::Path) -> Result<()> {
    let now = roomcast_protocol::unix_ms(std::time::SystemTime::now());
    let report = roomcast_server::gifts::ledger::repair(path, now)
        .with_context(|| format!("repairing {}", path.display()))?;
    let Some(backup) = &report.backup else {
        println!("{}: every record reads ({} records); nothing to repair", path.display(), report.kept);
        return Ok(());
    };
    println!("{}: repaired; the journal as it was is kept in {}", path.display(), backup.display());
    println!("kept {} records as they were", report.kept);
    for (line, offset, op) in &report.salvaged {
        println!("line {line} (byte {offset}): kept a whole {op} record found after a torn one");
    }
    for (line, offset, text) in &report.dropped {
        println!("line {line} (byte {offset}): dropped {} bytes: {text}", text.len());
    }
    for (user, key) in &report.unsettled {
        println!(
            "user {user:?} key {key:?}: charged with no receipt; its next send is broadcast (once) as charged"
        );
    }
    Ok(())
}

async fn drain_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C drains");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: draining"),
        () = term => tracing::info!("SIGTERM: draining"),
    }
}

async fn serve(config: Config) -> Result<()> {
    tracing_subscriber::fmt()
        // Logs to stderr: stdout carries what the node prints at start.
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROOMCAST_LOG")
                // quinn's per-connection spans are entered on every poll of its
                // drivers; below `warn` they cost CPU on every packet.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,quinn_proto=warn")),
        )
        .init();
    let (endpoint, cert) = roomcast_server::endpoint::bind(&config)?;
    let addr = endpoint.local_addr()?;
    // Every listener is bound here, so that what is printed is where each
    // one listens (a port 0 included).
    let metrics = match config.metrics_listen {
        Some(a) => {
            Some(roomcast_server::metrics::bind(a).await.with_context(|| format!("binding metrics on {a}"))?)
        }
        None => None,
    };
    let admin = match config.admin.listen {
        Some(a) => Some(
            roomcast_server::admin::bind(a).await.with_context(|| format!("binding the admin API on {a}"))?,
        ),
        None => None,
    };
    println!("roomcast listening on {addr} (QUIC, ALPN roomcast/1)");
    let kind = if cert.development { "development certificate" } else { "certificate" };
    println!("{kind}: {} (sha256 {})", cert.cert_path.display(), cert.fingerprint);
    match &metrics {
        Some(l) => {
            let m = l.local_addr()?;
            println!(
                "metrics: http://{m}/metrics (liveness http://{m}/healthz, readiness http://{m}/readyz)"
            );
        }
        None => println!("metrics: off"),
    }
    match &admin {
        Some(l) => {
            let a = l.local_addr()?;
            println!("admin API: http://{a}/v1 (OpenAPI http://{a}/openapi.json)");
            println!("dashboard: http://{a}/dashboard");
        }
        None => println!("admin API and dashboard: off"),
    }
    if config.auth.es256_public_key.is_none() {
        println!("development token: roomcast-server token --user alice [--role viewer|host|admin]");
    }
    let drain = roomcast_server::Drain::new();
    roomcast_server::serve_with_drain(config, endpoint, metrics, admin, drain, drain_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_secrets_are_masked() {
        let path = std::env::temp_dir().join(format!("roomcast-config-test-{}.toml", std::process::id()));
        let file =
            "listen = \"127.0.0.1:5000\"\n[auth]\nhs256_secret = \"from-file\"\n[drain]\ntimeout_secs = 30\n";
        std::fs::write(&path, file).unwrap();
        let args = ["roomcast-server", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:6000"];
        let config = Cli::try_parse_from(args).unwrap().config().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(config.listen.port(), 6000, "the flag wins over the file");
        assert_eq!(config.drain.timeout_secs, 30, "the file wins over the defaults");
        let text = config.to_masked_toml().unwrap();
        assert!(!text.contains("from-file"), "{text}");
        assert!(text.contains("listen = \"127.0.0.1:6000\""), "{text}");
    }
}
