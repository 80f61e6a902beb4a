//! Per-user token buckets with a bounded table: the gift cap and the like
//! cap.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// A bounded table of per-user token buckets.
#[derive(Debug)]
pub struct RateTable {
    /// Tokens per second; 0 or less: no cap.
    rate: f64,
    /// Most tokens a bucket holds (its burst).
    burst: f64,
    max_tracked: usize,
    /// A `std::sync::Mutex`: the critical section is a map lookup and a
    /// subtraction, and nothing awaits in it.
    buckets: Mutex<HashMap<Box<str>, Bucket>>,
}

impl RateTable {
    /// `rate` tokens a second per user, up to `burst_secs` seconds' worth
    /// (at least one token) saved up; at most `max_tracked` users at once.
    pub fn new(rate: f64, burst_secs: f64, max_tracked: usize) -> Self {
        let burst = (rate * burst_secs).max(1.0);
        Self { rate, burst, max_tracked, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes up to `n` of `user`'s tokens and returns how many it got.
    pub fn take_up_to(&self, user: &str, n: u64, now: Instant) -> u64 {
        if self.rate <= 0.0 || n == 0 {
            return n;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.max_tracked {
            buckets.retain(|_, b| !b.full(now, self.rate, self.burst));
        }
        if buckets.len() >= self.max_tracked && !buckets.contains_key(user) {
            // Every tracked user is mid-burst: refuse newcomers rather than
            // grow without bound.
            return 0;
        }
        let bucket = buckets.entry(user.into()).or_insert(Bucket { tokens: self.burst, last: now });
        bucket.refill(now, self.rate, self.burst);
        let granted = (bucket.tokens.floor() as u64).min(n);
        bucket.tokens -= granted as f64;
        granted
    }
}

/// One user's tokens, as of `last`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }

    /// Refilled to the brim by `now`: the same as no bucket at all.
    fn full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * rate >= burst
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grants_the_burst_then_the_rate_and_nothing_beyond() {
        let t = RateTable::new(20.0, 2.0, 10);
        let now = Instant::now();
        assert_eq!(t.take_up_to("u", 100, now), 40, "two seconds' worth at once");
        assert_eq!(t.take_up_to("u", 100, now), 0);
        assert_eq!(t.take_up_to("u", 100, now + Duration::from_millis(500)), 10);
        assert_eq!(t.take_up_to("u", 5, now + Duration::from_secs(10)), 5);
        assert_eq!(t.take_up_to("v", 3, now), 3, "per user");
        assert_eq!(RateTable::new(0.0, 2.0, 10).take_up_to("u", 1_000_000, now), 1_000_000, "0: no cap");
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_users_whose_buckets_refilled() {
        let t = RateTable::new(1.0, 1.0, 2);
        let now = Instant::now();
        assert_eq!(t.take_up_to("a", 1, now), 1);
        assert_eq!(t.take_up_to("b", 1, now), 1);
        assert_eq!(t.take_up_to("c", 1, now), 0, "full of users mid-burst");
        assert_eq!(
            t.take_up_to("c", 1, now + Duration::from_secs(2)),
            1,
            "a and b refilled and were forgotten"
        );
    }
}
