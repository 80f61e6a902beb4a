//! What the `roomcast-server` binary tells its operator when it starts:
//! where every listener it opens listens (QUIC, metrics with its health
//! and readiness paths, the admin API, its OpenAPI document and the
//! dashboard), as the addresses really bound, and each one answers there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use roomcast_tests::WAIT;
use roomcast_tests::binary::{server_binary, wait_child};

/// The first `http://` URL on `line`.
fn url(line: &str) -> String {
    let start = line.find("http://").unwrap_or_else(|| panic!("no URL in {line:?}"));
    line[start..].split_whitespace().next().unwrap().trim_end_matches(')').to_string()
}

/// The status and body of `GET url`, with `key` as the admin API key.
async fn get(url: &str, key: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The server process, killed if the test ends before it stops it (a
/// failed assertion), so that no node outlives its test.
struct Node(Option<std::process::Child>);

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_every_listener_it_opens_and_each_answers_there() {
    let binary = tokio::task::spawn_blocking(server_binary).await.unwrap();
    let dir = std::env::temp_dir().join(format!("roomcast-listeners-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = "listeners-admin-key";
    let mut child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--token-secret", "listeners-secret"])
        .arg("--data-dir")
        .arg(&dir)
        .env("ROOMCAST_ADMIN_API_KEY", key)
        .env("ROOMCAST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut node = Node(Some(child));
    let lines = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut seen = Vec::new();
            // Everything up to the token hint, the last line printed at start.
            for line in lines.by_ref() {
                let line = line.unwrap();
                let last = line.starts_with("development token");
                seen.push(line);
                if last {
                    break;
                }
            }
            std::thread::spawn(move || lines.for_each(drop));
            seen
        }),
    )
    .await
    .expect("the server did not start")
    .unwrap();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:#?}"))
    };
    assert!(find("roomcast listening on ").contains("127.0.0.1:"), "{lines:#?}");
    let metrics = find("metrics: ");
    let admin = find("admin API: ");
    let dashboard = find("dashboard: ");
    assert!(!metrics.contains(":0/") && !admin.contains(":0/"), "the bound ports, not 0: {lines:#?}");

    let metrics_url = url(metrics);
    let base = metrics_url.trim_end_matches("/metrics");
    assert!(
        metrics.contains(&format!("{base}/healthz")) && metrics.contains(&format!("{base}/readyz")),
        "{metrics}"
    );
    assert_eq!(get(&metrics_url, key).await.0, 200, "{metrics_url}");
    assert_eq!(get(&format!("{base}/readyz"), key).await, (200, "ready\n".to_string()));
    let openapi = admin.split("OpenAPI ").nth(1).map(url).expect("the OpenAPI URL");
    assert_eq!(get(&openapi, key).await.0, 200, "{openapi}");
    let (status, _) = get(&format!("{}/rooms", url(admin)), key).await;
    assert_eq!(status, 200, "the admin API at {}", url(admin));
    assert_eq!(get(&url(dashboard), key).await.0, 200, "{dashboard}");

    let mut child = node.0.take().unwrap();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status =
        tokio::task::spawn_blocking(move || wait_child(&mut child, Duration::from_secs(12))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
