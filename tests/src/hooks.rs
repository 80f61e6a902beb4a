//! A webhook receiver on a loopback port: a real HTTP server that records
//! every POST, checks its signature, and answers as a test scripts it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use roomcast_server::config::WebhooksConfig;
use roomcast_server::webhooks::{self, DEFAULT_TOLERANCE, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde_json::Value;

/// The secret receivers verify signatures with.
pub const SECRET: &str = "whsec-test";

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Signature valid under `SECRET` for the timestamp and body as sent.
    pub signed: bool,
    /// Timestamp within the tolerance a receiver should apply.
    pub fresh: bool,
    pub events: Vec<Value>,
}

impl Received {
    pub fn ids(&self) -> Vec<String> {
        self.events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    }
}

/// A webhook receiver on a loopback port. It answers with the statuses in
/// `script` first, then with `then`; with `hang`, it never answers.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

pub struct Behaviour {
    pub script: Vec<u16>,
    pub then: u16,
    pub hang: bool,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(behaviour.script)));
        let log = seen.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            let script = script.clone();
            async move {
                let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
                let payload: Value = serde_json::from_slice(&body).expect("body is JSON");
                log.lock().unwrap().push(Received {
                    signed: webhooks::verify(SECRET.as_bytes(), &timestamp, &body, &signature),
                    fresh: webhooks::fresh(&timestamp, SystemTime::now(), DEFAULT_TOLERANCE),
                    events: payload["events"].as_array().expect("an events array").clone(),
                });
                if behaviour.hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let status = script.lock().unwrap().pop_front().unwrap_or(behaviour.then);
                StatusCode::from_u16(status).unwrap()
            }
        };
        let app = Router::new().route("/hooks", post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    pub async fn answering(status: u16) -> Self {
        Self::start(Behaviour { script: vec![], then: status, hang: false }).await
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub fn config(&self) -> WebhooksConfig {
        WebhooksConfig {
            url: Some(self.url.clone()),
            secret: SECRET.into(),
            backoff_base_ms: 20,
            ..WebhooksConfig::default()
        }
    }
}

/// The events of type `kind` seen so far, as (user, reason) pairs.
pub fn seen_of(receiver: &Receiver, kind: &str) -> Vec<(String, String)> {
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_owned();
    receiver
        .seen()
        .iter()
        .flat_map(|r| r.events.clone())
        .filter(|e| e["type"] == kind)
        .map(|e| (field(&e, "user"), field(&e, "reason")))
        .collect()
}
