//! A UDP relay on loopback between clients and a node, for failure tests: it
//! forwards datagrams both ways and can black-hole them, as a network that
//! drops out would, or lose a share of them at random and delay the rest,
//! as a weak mobile network does (this kernel has no netem).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};

/// Most clients one relay serves; datagrams from more are dropped.
const MAX_CLIENTS: usize = 64;

pub struct Relay {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    impair: Arc<Impairment>,
    task: JoinHandle<()>,
}

/// Loss and delay applied to every datagram, each way.
#[derive(Default)]
struct Impairment {
    /// Share of datagrams lost, in millionths.
    loss_ppm: AtomicU64,
    /// Delay range, ms: each datagram waits a uniform draw from it.
    delay_min_ms: AtomicU64,
    delay_max_ms: AtomicU64,
    /// xorshift state for the draws.
    rng: AtomicU64,
}

/// What becomes of one datagram.
enum Fate {
    Lost,
    Now,
    After(Duration),
}

impl Impairment {
    fn next(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    fn fate(&self) -> Fate {
        let loss = self.loss_ppm.load(Ordering::Relaxed);
        if loss > 0 && self.next() % 1_000_000 < loss {
            return Fate::Lost;
        }
        let (lo, hi) = (self.delay_min_ms.load(Ordering::Relaxed), self.delay_max_ms.load(Ordering::Relaxed));
        if hi == 0 {
            return Fate::Now;
        }
        Fate::After(Duration::from_millis(lo + self.next() % (hi - lo + 1)))
    }
}

/// Sends `data` to `to` on `socket` (or on its connected peer if `to` is
/// `None`) as `impair` decides: now, later, or never.
async fn forward(impair: &Impairment, socket: &Arc<UdpSocket>, data: &[u8], to: Option<SocketAddr>) {
    let delay = match impair.fate() {
        Fate::Lost => return,
        Fate::Now => {
            // In order, as a plain relay.
            let _ = match to {
                Some(to) => socket.send_to(data, to).await,
                None => socket.send(data).await,
            };
            return;
        }
        Fate::After(d) => d,
    };
    let (socket, data) = (socket.clone(), data.to_vec());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = match to {
            Some(to) => socket.send_to(&data, to).await,
            None => socket.send(&data).await,
        };
    });
}

impl Relay {
    /// Starts relaying from a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let impair =
            Arc::new(Impairment { rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15), ..Impairment::default() });
        let task = tokio::spawn(run(front, upstream, blocked.clone(), impair.clone()));
        Relay { addr, blocked, impair, task }
    }

    /// From now on, loses `loss` (0..1) of the datagrams each way at random
    /// and delays each of the rest by a uniform draw from `delay_ms`.
    pub fn impair(&self, loss: f64, delay_ms: std::ops::RangeInclusive<u64>) {
        self.impair.loss_ppm.store((loss.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
        self.impair.delay_min_ms.store(*delay_ms.start(), Ordering::Relaxed);
        self.impair.delay_max_ms.store((*delay_ms.end()).max(*delay_ms.start()), Ordering::Relaxed);
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

async fn run(front: Arc<UdpSocket>, upstream: SocketAddr, blocked: Arc<AtomicBool>, impair: Arc<Impairment>) {
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
            tasks.spawn(backward(back.clone(), front.clone(), client, blocked.clone(), impair.clone()));
            flows.insert(client, back);
        }
        if let Some(back) = flows.get(&client) {
            forward(&impair, back, &buf[..n], None).await;
        }
    }
}

/// Server to client, for one client.
async fn backward(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    blocked: Arc<AtomicBool>,
    impair: Arc<Impairment>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = back.recv(&mut buf).await {
        if !blocked.load(Ordering::SeqCst) {
            forward(&impair, &front, &buf[..n], Some(client)).await;
        }
    }
}
