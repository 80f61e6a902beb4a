//! A room's like total: added to by its members' sessions directly, without
//! a command per report; the room task is woken once per change and pushes
//! the total to members as a datagram, paced like the online count.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The running total, shared by the room's handle and its task.
#[derive(Debug, Default)]
pub(super) struct LikeCounter {
    total: AtomicU64,
    /// Changed since the task last read it; only the change that sets it
    /// wakes the task, so a storm of reports costs one wake per push.
    dirty: AtomicBool,
    changed: Notify,
}

impl LikeCounter {
    /// Adds `taps` counted likes.
    pub(super) fn add(&self, taps: u64) {
        if taps == 0 {
            return;
        }
        self.total.fetch_add(taps, Ordering::Relaxed);
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }

    /// The total so far.
    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Resolves once likes were added since the last [`LikeCounter::take`].
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The total, marking it read: the next add wakes the task again.
    pub(super) fn take(&self) -> u64 {
        self.dirty.store(false, Ordering::Release);
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn only_the_first_add_after_a_take_wakes_the_task() {
        let c = LikeCounter::default();
        c.add(3);
        c.add(4);
        c.add(0);
        tokio::time::timeout(Duration::from_secs(1), c.changed()).await.expect("woken by the first add");
        assert_eq!(c.take(), 7);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), c.changed()).await.is_err(),
            "no wake without an add since the take"
        );
        c.add(1);
        tokio::time::timeout(Duration::from_secs(1), c.changed()).await.expect("woken again");
        assert_eq!(c.total(), 8);
    }
}
