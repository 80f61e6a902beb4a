//! A real `redis-server` for fleet tests, started on a free loopback port
//! with its data in a directory of its own (append-only file on, so a
//! restart keeps what was written), and killed when dropped. When no
//! `redis-server` is installed, the first start runs `scripts/redis.sh`,
//! which installs it, so `cargo test --workspace` needs nothing by hand.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub async fn start() -> RedisServer {
        let mut server = Self::stopped();
        server.launch().await;
        server
    }

    /// One that is not running yet, on a free port: [`RedisServer::restart`]
    /// starts it.
    pub fn stopped() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("roomcast-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer { port, dir, child: None }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would) and starts it again on the same port,
    /// from its append-only file.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Forgets everything it holds (`FLUSHALL`), as a Redis without
    /// persistence does when it restarts.
    pub async fn flushall(&self) {
        assert!(command(self.port, "FLUSHALL").await.starts_with("+OK"), "FLUSHALL");
    }

    /// Kills it and starts it again on the same port with nothing on disk:
    /// a restart without persistence.
    pub async fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.launch().await;
    }

    /// Runs `commands` (each a list of arguments, binary-safe) in one
    /// `MULTI`/`EXEC` and returns the raw answer: what happens in it happens
    /// at once for every other client.
    pub async fn transaction(&self, commands: &[Vec<Vec<u8>>]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = Vec::new();
        let mut push = |args: &[Vec<u8>]| {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        };
        push(&[b"MULTI".to_vec()]);
        for c in commands {
            push(c);
        }
        push(&[b"EXEC".to_vec()]);
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        s.write_all(&out).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 4096];
        // The answer ends with EXEC's array; read until it has arrived.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&answer).contains(&format!("*{}\r\n", commands.len())) {
            assert!(Instant::now() < deadline, "no answer to the transaction");
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
            answer.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Kills it and leaves it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn launch(&mut self) {
        self.child = Some(launch(self.port, &self.dir, &[]).await);
    }
}

/// Starts `redis-server` on `port` with its data in `dir` (and `extra`
/// arguments), and waits until it answers.
async fn launch(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let child = Command::new(redis_server())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting redis-server (scripts/redis.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !command(port, "PING").await.starts_with("+PONG") {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Sends one inline command to the Redis on `port` and returns the start of
/// its answer (empty if it could not be reached).
async fn command(port: u16, line: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return String::new() };
    let mut buf = vec![0u8; 4096];
    if s.write_all(format!("{line}\r\n").as_bytes()).await.is_err() {
        return String::new();
    }
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

/// A Redis Cluster of three masters on free loopback ports, the 16,384
/// slots split evenly between them, killed when dropped.
pub struct RedisCluster {
    ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl RedisCluster {
    /// Starts the three, joins them, and waits until the cluster is ok.
    pub async fn start() -> RedisCluster {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            // Each node's cluster bus listens on its port + 10,000.
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if port < 55_000
                && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
                && !ports.contains(&port)
            {
                ports.push(port);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("roomcast-redis-cluster-{}-{}", std::process::id(), ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        let mut children = Vec::new();
        for port in &ports {
            let d = dir.join(port.to_string());
            std::fs::create_dir_all(&d).unwrap();
            children.push(
                launch(*port, &d, &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]).await,
            );
        }
        let cluster = RedisCluster { ports, dir, children };
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (port, (from, to)) in cluster.ports.iter().zip(ranges) {
            let answer = command(*port, &format!("CLUSTER ADDSLOTSRANGE {from} {to}")).await;
            assert!(answer.starts_with("+OK"), "slots {from}-{to} on {port}: {answer}");
        }
        for port in &cluster.ports[1..] {
            let answer = command(cluster.ports[0], &format!("CLUSTER MEET 127.0.0.1 {port}")).await;
            assert!(answer.starts_with("+OK"), "meet {port}: {answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for port in &cluster.ports {
                let info = command(*port, "CLUSTER INFO").await;
                ok &= info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3");
            }
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not form");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// The seed nodes, comma-separated, as `--redis` takes them with
    /// `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Which of the three serves `key`'s slot, by port.
    pub async fn owner_of(&self, key: &str) -> u16 {
        let slot = command(self.ports[0], &format!("CLUSTER KEYSLOT {key}")).await;
        let slot: u16 = slot.trim().trim_start_matches(':').parse().expect("a slot");
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        let i = ranges.iter().position(|(a, b)| (*a..=*b).contains(&slot)).expect("a range");
        self.ports[i]
    }

    /// Commands the node on `port` has run, from `INFO commandstats`.
    pub async fn commandstats(&self, port: u16) -> String {
        command(port, "INFO commandstats").await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `redis-server` to run: `ROOMCAST_REDIS_SERVER`, else the path
/// `scripts/redis.sh` prints (it installs Redis first when it is missing;
/// run once per test process).
fn redis_server() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Ok(path) = std::env::var("ROOMCAST_REDIS_SERVER") {
        return path;
    }
    PATH.get_or_init(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/redis.sh");
        assert!(out.status.success(), "scripts/redis.sh could not provide redis-server");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}
