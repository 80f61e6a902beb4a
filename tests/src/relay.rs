//! A UDP relay on loopback between clients and a node, for failure tests: it
//! forwards datagrams both ways and can black-hole them, as a network that
//! drops out would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};

/// Most clients one relay serves; datagrams from more are dropped.
const MAX_CLIENTS: usize = 64;

pub struct Relay {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying from a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(front, upstream, blocked.clone()));
        Relay { addr, blocked, task }
    }

    /// Where clients should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram, both ways, until unblocked.
    pub fn block(&self, on: bool) {
        self.blocked.store(on, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(front: Arc<UdpSocket>, upstream: SocketAddr, blocked: Arc<AtomicBool>) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    // Dropping the set (when this task is aborted) aborts the flows' tasks.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, client)) = front.recv_from(&mut buf).await {
        if blocked.load(Ordering::SeqCst) {
            continue;
        }
        if !flows.contains_key(&client) {
            if flows.len() >= MAX_CLIENTS {
                continue;
            }
            let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else { continue };
            if back.connect(upstream).await.is_err() {
                continue;
            }
            let back = Arc::new(back);
            tasks.spawn(backward(back.clone(), front.clone(), client, blocked.clone()));
            flows.insert(client, back);
        }
        if let Some(back) = flows.get(&client) {
            let _ = back.send(&buf[..n]).await;
        }
    }
}

/// Server to client, for one client.
async fn backward(back: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr, blocked: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = back.recv(&mut buf).await {
        if !blocked.load(Ordering::SeqCst) {
            let _ = front.send_to(&buf[..n], client).await;
        }
    }
}
