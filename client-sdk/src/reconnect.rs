//! Reconnection policy: which ends are worth connecting again after, how
//! long to wait before each attempt, and which address to try ([`Servers`]:
//! the next one in the list, skipping a draining node until its retry-after
//! hint has passed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::ErrorCode;
use tokio::time::Instant;

/// Reconnection schedule: attempt *n* waits between half and all of
/// `min(initial × 2^(n-1), max)`, at random.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Give up after this many failed attempts; `None` retries until closed.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(30), max_attempts: None }
    }
}

/// The app's answer to "which nodes now?", asked before each reconnect
/// attempt. It runs on the SDK's task: it should answer from what the app
/// already knows (a list it refreshes on its own), not wait on the network.
/// An empty answer keeps the addresses the SDK had.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>);

impl Resolver {
    pub fn new(f: impl Fn() -> Vec<SocketAddr> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn resolve(&self) -> Vec<SocketAddr> {
        (self.0)()
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver(..)")
    }
}

/// Close codes after which connecting again cannot help.
pub(crate) fn is_fatal(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::BadToken
                | ErrorCode::TokenExpired
                | ErrorCode::UnsupportedVersion
                | ErrorCode::Forbidden
                | ErrorCode::ProtocolViolation
                | ErrorCode::FrameTooLarge
        )
    )
}

/// The delay before reconnection attempt `attempt` (1-based): exponential,
/// capped, with "equal jitter" (half fixed, half random) so that a crowd
/// dropped at the same moment does not come back at the same moment.
pub(crate) fn backoff_delay(b: &Backoff, attempt: u32, random: u64) -> Duration {
    let exp = b.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(b.max).max(Duration::from_millis(1));
    let half = cap / 2;
    let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % jitter_ns.max(1))
}

/// The longest retry-after hint honoured: a node cannot keep a client away
/// for longer than this, whatever its close reason says.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The retry-after hint in a draining node's close reason: the number after
/// `retry_after_ms=`, in a phrase whose parts are separated by `;` or spaces
/// (the wire contract, `ERROR_CODE_SERVER_DRAINING`). None when absent or
/// malformed; capped at [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(reason: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(reason).ok()?;
    let ms = text
        .split(|c: char| c == ';' || c.is_whitespace())
        .find_map(|part| part.strip_prefix("retry_after_ms="))?
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

/// The addresses a session may connect to (the configured server first,
/// then its alternates), the one in use, and how long each is held back by
/// a draining node's retry-after hint. Sans-IO: time comes in as `now`.
#[derive(Debug)]
pub(crate) struct Servers {
    addrs: Vec<SocketAddr>,
    current: usize,
    /// Not to be connected to before this (one entry per address).
    held: Vec<Option<Instant>>,
}

impl Servers {
    pub(crate) fn new(server: SocketAddr, alternates: &[SocketAddr]) -> Self {
        let mut addrs = vec![server];
        for a in alternates {
            if !addrs.contains(a) {
                addrs.push(*a);
            }
        }
        let held = vec![None; addrs.len()];
        Self { addrs, current: 0, held }
    }

    /// Takes `addrs` (the resolver's answer) as the list to try from now on:
    /// hold-backs of addresses still in it are kept, and the next attempt
    /// goes to the address after the current one, or to the first when the
    /// current one is no longer listed. An empty list changes nothing.
    pub(crate) fn refresh(&mut self, addrs: &[SocketAddr]) {
        let mut fresh: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !fresh.contains(a) {
                fresh.push(*a);
            }
        }
        if fresh.is_empty() || fresh == self.addrs {
            return;
        }
        let current = self.current();
        self.held =
            fresh.iter().map(|a| self.addrs.iter().position(|b| b == a).and_then(|i| self.held[i])).collect();
        self.current = fresh.iter().position(|a| *a == current).unwrap_or(fresh.len() - 1);
        self.addrs = fresh;
    }

    /// The address of the current (or last) connection.
    pub(crate) fn current(&self) -> SocketAddr {
        self.addrs[self.current]
    }

    /// The current node asked not to be connected to again for `after`.
    pub(crate) fn hold_current(&mut self, now: Instant, after: Duration) {
        self.held[self.current] = Some(now + after);
    }

    /// Where the next attempt goes, and how long to wait before it: the next
    /// address after the current one (the current one last) that is not held
    /// back. Right after a drop (`just_dropped`), another address is tried at
    /// once; otherwise, and for the same address, after `backoff`. When every
    /// address is held back, the one released first, once it is.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        backoff: Duration,
        just_dropped: bool,
    ) -> (SocketAddr, Duration) {
        let n = self.addrs.len();
        let free = (1..=n).map(|k| (self.current + k) % n).find(|&i| self.held[i].is_none_or(|t| t <= now));
        let (index, delay) = match free {
            Some(i) if just_dropped && i != self.current => (i, Duration::ZERO),
            Some(i) => (i, backoff),
            None => {
                let (i, until) = (0..n)
                    .filter_map(|i| self.held[i].map(|t| (i, t)))
                    .min_by_key(|&(_, t)| t)
                    .unwrap_or((self.current, now));
                (i, until.saturating_duration_since(now).max(backoff))
            }
        };
        self.current = index;
        (self.addrs[index], delay)
    }
}

/// Random bits from the system's generator, for jitter and id prefixes.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: None };
        for attempt in 1..40 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1).min(16))).min(b.max);
            for random in [0, 1, 12_345_678, u64::MAX] {
                let d = backoff_delay(&b, attempt, random);
                assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?} outside {:?}..={cap:?}", cap / 2);
            }
        }
        assert_ne!(backoff_delay(&b, 3, 1), backoff_delay(&b, 3, 987_654_321), "jittered");
    }

    #[test]
    fn retry_after_is_read_from_the_close_reason_and_bounded() {
        assert_eq!(retry_after(b"server draining; retry_after_ms=5000"), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(b"retry_after_ms=250"), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(b"retry_after_ms=99999999999"), Some(MAX_RETRY_AFTER));
        for bad in [
            &b"server draining"[..],
            b"retry_after_ms=",
            b"retry_after_ms=-1",
            b"retry_after_ms=1e3",
            b"\xff",
        ] {
            assert_eq!(retry_after(bad), None, "{bad:?}");
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_drained_node_is_left_for_another_at_once_and_revisited_after_its_hint() {
        let now = Instant::now();
        let backoff = Duration::from_millis(300);
        let mut s = Servers::new(addr(1), &[addr(2), addr(1)]);
        s.hold_current(now, Duration::from_secs(5));
        assert_eq!(s.next(now, backoff, true), (addr(2), Duration::ZERO), "the other node, at once");
        // The other node fails too: node 1 is still held back.
        assert_eq!(s.next(now, backoff, false), (addr(2), backoff));
        let later = now + Duration::from_secs(6);
        assert_eq!(s.next(later, backoff, false), (addr(1), backoff), "held back no longer");
    }

    #[test]
    fn a_single_node_is_retried_no_sooner_than_its_hint() {
        let now = Instant::now();
        let mut s = Servers::new(addr(1), &[]);
        assert_eq!(s.next(now, Duration::from_millis(300), true), (addr(1), Duration::from_millis(300)));
        s.hold_current(now, Duration::from_secs(5));
        assert_eq!(s.next(now, Duration::from_millis(300), true), (addr(1), Duration::from_secs(5)));
        assert_eq!(
            s.next(now, Duration::from_secs(9), true),
            (addr(1), Duration::from_secs(9)),
            "backoff if longer"
        );
    }

    #[test]
    fn a_resolvers_list_replaces_the_addresses_and_keeps_their_hold_backs() {
        let now = Instant::now();
        let backoff = Duration::from_millis(300);
        let mut s = Servers::new(addr(1), &[addr(2)]);
        s.hold_current(now, Duration::from_secs(5));
        // Node 1 died; the app now knows of 3 and 4 only.
        s.refresh(&[addr(3), addr(4), addr(3)]);
        assert_eq!(s.next(now, backoff, true), (addr(3), Duration::ZERO), "the first listed, at once");
        assert_eq!(s.next(now, backoff, false), (addr(4), backoff));
        // A list that keeps a held-back node keeps it held back.
        let mut s = Servers::new(addr(1), &[addr(2)]);
        s.hold_current(now, Duration::from_secs(5));
        s.refresh(&[addr(2), addr(1)]);
        assert_eq!(s.next(now, backoff, true), (addr(2), Duration::ZERO));
        assert_eq!(s.next(now, backoff, false), (addr(2), backoff), "node 1 is still held back");
        s.refresh(&[]);
        assert_eq!(s.current(), addr(2), "an empty answer changes nothing");
    }

    #[test]
    fn refused_tokens_and_protocol_errors_are_never_retried() {
        for code in [ErrorCode::BadToken, ErrorCode::TokenExpired, ErrorCode::ProtocolViolation] {
            assert!(is_fatal(Some(code)), "{code}");
        }
        for code in [None, Some(ErrorCode::ServerDraining), Some(ErrorCode::Internal)] {
            assert!(!is_fatal(code), "{code:?}");
        }
    }
}
