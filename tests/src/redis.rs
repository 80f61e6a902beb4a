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
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("roomcast-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, dir, child: None };
        server.launch().await;
        server
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

    /// Kills it and leaves it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn launch(&mut self) {
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (scripts/redis.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && let Ok(n) = s.read(&mut buf).await
                    && buf[..n].starts_with(b"+PONG")
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
