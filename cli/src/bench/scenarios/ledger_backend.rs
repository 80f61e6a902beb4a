//! A stand-in for the platform's backend for gift-burst's webhook-ledger
//! run: it checks each charging POST's signature, keeps balances, charges a
//! (user, key) once, and answers after a fixed delay, as a backend with a
//! database behind it would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use roomcast_server::webhooks::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};
use serde_json::{Value, json};

/// The backend's books and what it was asked.
#[derive(Debug, Default)]
pub(crate) struct Books {
    balances: HashMap<String, u64>,
    charged: HashMap<(String, String), u64>,
    /// Charging calls, retries included.
    pub(crate) calls: u64,
    /// Calls whose signature did not verify (refused with 401).
    pub(crate) bad_signatures: u64,
}

impl Books {
    pub(crate) fn balance(&self, user: &str) -> u64 {
        self.balances.get(user).copied().unwrap_or(0)
    }

    fn apply(&mut self, call: &Value) -> Option<Value> {
        let user = call["user"].as_str()?.to_owned();
        let key = call["key"].as_str()?.to_owned();
        let amount = call["amount"].as_u64()?;
        let balance = self.balance(&user);
        Some(match call["op"].as_str()? {
            "debit" if self.charged.contains_key(&(user.clone(), key.clone())) => {
                json!({"outcome": "charged", "balance": balance})
            }
            "debit" if balance >= amount => {
                self.balances.insert(user.clone(), balance - amount);
                self.charged.insert((user, key), amount);
                json!({"outcome": "charged", "balance": balance - amount})
            }
            "debit" => json!({"outcome": "insufficient", "balance": balance}),
            "refund" => {
                let back = self.charged.remove(&(user.clone(), key)).unwrap_or(0);
                self.balances.insert(user, balance + back);
                json!({"outcome": "refunded", "balance": balance + back})
            }
            _ => return None,
        })
    }
}

/// The running backend.
pub(crate) struct Backend {
    pub(crate) url: String,
    pub(crate) secret: String,
    pub(crate) books: Arc<Mutex<Books>>,
}

impl Backend {
    /// Starts on a free loopback port, answering each call `delay` after it
    /// arrives, with `balances` to start from.
    pub(crate) async fn start(delay: Duration, balances: &[(String, u64)]) -> Result<Self> {
        let secret = format!("bench-ledger-{}", std::process::id());
        let books =
            Arc::new(Mutex::new(Books { balances: balances.iter().cloned().collect(), ..Books::default() }));
        let (state, key) = (books.clone(), secret.clone());
        let handler = move |headers: HeaderMap, body: Bytes| {
            let (books, key) = (state.clone(), key.clone());
            async move {
                let header = |n| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let signed =
                    verify(key.as_bytes(), &header(TIMESTAMP_HEADER), &body, &header(SIGNATURE_HEADER));
                let answer = {
                    let mut b = books.lock().unwrap_or_else(PoisonError::into_inner);
                    b.calls += 1;
                    if !signed {
                        b.bad_signatures += 1;
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    let call: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    b.apply(&call)
                };
                tokio::time::sleep(delay).await;
                match answer {
                    Some(a) => (StatusCode::OK, a.to_string()),
                    None => (StatusCode::BAD_REQUEST, String::new()),
                }
            }
        };
        let app = Router::new().route("/charge", post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url: format!("http://{addr}/charge"), secret, books })
    }

    /// A node configuration file that charges gifts through this backend,
    /// written to `path`.
    pub(crate) fn write_config(&self, path: &std::path::Path) -> Result<()> {
        let toml = format!(
            "[gifts.ledger]\nurl = \"{}\"\nsecret = \"{}\"\ntimeout_ms = 2000\nmax_attempts = 3\n",
            self.url, self.secret
        );
        std::fs::write(path, toml).with_context(|| format!("writing {}", path.display()))
    }
}
