//! Admission of new connections, on their first packet and before any
//! handshake work: a cap on the connections a node holds, and a cap on how
//! fast one IP address may open them. A connection turned away is refused
//! with QUIC's CONNECTION_REFUSED, which clients report at once (and the SDK
//! retries with backoff) instead of timing out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Addresses remembered at most; older windows are dropped past it.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
pub struct Gate {
    /// 0: no cap.
    max_connections: usize,
    /// 0: no limit.
    per_ip_per_sec: u32,
    open: Arc<AtomicUsize>,
    /// New connections per address in the current one-second window.
    recent: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds its most connections.
    Full,
    /// This address opened too many connections this second.
    TooFast,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "node_full",
            Self::TooFast => "ip_rate",
        }
    }
}

/// Held for as long as an admitted connection lives.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(max_connections: usize, per_ip_per_sec: u32) -> Self {
        Self { max_connections, per_ip_per_sec, open: Arc::default(), recent: Mutex::default() }
    }

    /// Admits a connection from `ip` at `now`, or says why not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        if self.max_connections > 0 && self.open.load(Ordering::Relaxed) >= self.max_connections {
            return Err(Refusal::Full);
        }
        if self.per_ip_per_sec > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= MAX_TRACKED {
                recent.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
            }
            let (start, count) = recent.entry(ip).or_insert((now, 0));
            if now.duration_since(*start) >= Duration::from_secs(1) {
                (*start, *count) = (now, 0);
            }
            if *count >= self.per_ip_per_sec {
                return Err(Refusal::TooFast);
            }
            *count += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Permit(self.open.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_live_connections_and_frees_a_place_when_one_ends() {
        let gate = Gate::new(2, 0);
        let now = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = gate.admit(ip, now).unwrap();
        let _b = gate.admit(ip, now).unwrap();
        assert_eq!(gate.admit(ip, now).unwrap_err(), Refusal::Full);
        drop(a);
        assert!(gate.admit(ip, now).is_ok());
    }

    #[test]
    fn one_address_is_limited_per_second_and_others_are_not() {
        let gate = Gate::new(0, 3);
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let permits: Vec<_> = (0..3).map(|_| gate.admit(a, t0).unwrap()).collect();
        assert_eq!(gate.admit(a, t0).unwrap_err(), Refusal::TooFast);
        assert!(gate.admit(b, t0).is_ok(), "another address");
        assert!(gate.admit(a, t0 + Duration::from_millis(1000)).is_ok(), "the next second");
        drop(permits);
    }
}
