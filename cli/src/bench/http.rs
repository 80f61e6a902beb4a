//! The node's HTTP side as a run uses it: the admin API (credits, a room's
//! figures) and the metrics endpoint, over plain HTTP/1 on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where the node's admin API listens, and the API key it takes.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) addr: SocketAddr,
    pub(crate) key: String,
}

/// `method path` on `addr` with `headers` and `body`: the status and the
/// body as text, within 10 s.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("{method} {path}: no answer in 10 s"))?
        .with_context(|| format!("{method} {path}"))
}

impl Admin {
    /// `method path` with the API key, and `json` as the body if given; the
    /// answer must be 2xx and JSON.
    pub(crate) async fn json(
        &self,
        method: &str,
        path: &str,
        json: Option<String>,
    ) -> Result<serde_json::Value> {
        let mut headers = vec![("X-Api-Key", self.key.as_str())];
        if json.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let (status, body) = call(self.addr, method, path, &headers, json).await?;
        anyhow::ensure!((200..300).contains(&status), "{method} {path}: {status} {body}");
        serde_json::from_str(&body).with_context(|| format!("{method} {path}: not JSON: {body}"))
    }

    /// Credits `user` with `amount` and returns the new balance.
    pub(crate) async fn credit(&self, user: &str, amount: u64) -> Result<u64> {
        let answer = self
            .json("POST", &format!("/v1/users/{user}/credit"), Some(format!(r#"{{"amount":{amount}}}"#)))
            .await?;
        answer["balance"].as_u64().context("a credit answer without a balance")
    }
}

/// The node's metrics exposition, from `addr`.
pub(crate) async fn metrics(addr: SocketAddr) -> Result<String> {
    let (status, body) = call(addr, "GET", "/metrics", &[], None).await?;
    anyhow::ensure!(status == 200, "GET /metrics: {status}");
    Ok(body)
}

/// The value of the sample `name` (labels included, as printed) in a
/// metrics exposition.
pub(crate) fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
