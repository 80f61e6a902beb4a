//! Every connection's next deadline in one heap.
//!
//! A connection's deadline moves with most packets (idle, loss and ACK
//! timers), so entries are never removed in place: a new deadline is pushed,
//! and a popped entry counts only if it is still the connection's deadline
//! (the caller checks). Stale entries cost one pop each, and the heap is
//! rebuilt from the live deadlines when they outnumber them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines by connection index.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    /// Connection `index` is due at `at` (it may already have other entries).
    pub(crate) fn push(&mut self, at: Instant, index: usize) {
        self.heap.push(Reverse((at, index)));
    }

    /// The earliest entry, stale or not.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The earliest entry due at or before `now`, taken out.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Entries, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the given live deadlines.
    pub(crate) fn rebuild(&mut self, live: impl Iterator<Item = (Instant, usize)>) {
        self.heap = live.map(Reverse).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_come_out_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.push(t0 + Duration::from_millis(30), 3);
        timers.push(t0 + Duration::from_millis(10), 1);
        timers.push(t0 + Duration::from_millis(20), 2);
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(timers.pop_due(t0), None);
        let due: Vec<usize> =
            std::iter::from_fn(|| timers.pop_due(t0 + Duration::from_millis(25))).map(|(_, i)| i).collect();
        assert_eq!(due, [1, 2]);
        assert_eq!(timers.len(), 1);
        timers.rebuild([(t0 + Duration::from_millis(5), 9)].into_iter());
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(5)), Some((t0 + Duration::from_millis(5), 9)));
        assert_eq!(timers.next(), None);
    }
}
