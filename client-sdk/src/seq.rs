//! The two checks every room event passes: where its sequence
//! number stands against the room's position, and whether its message id
//! was delivered lately.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Message ids remembered per room for de-duplication.
const RECENT_IDS: usize = 64;

/// The message ids most recently delivered in a room, hashed, to drop an
/// event delivered twice (for example once live and once in a resume).
#[derive(Default)]
pub(crate) struct RecentIds {
    ring: Vec<u64>,
    next: usize,
}

impl RecentIds {
    /// Remembers `id`; false if it was already there.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id);
        if self.ring.contains(&h) {
            return false;
        }
        if self.ring.len() < RECENT_IDS {
            self.ring.push(h);
        } else {
            self.ring[self.next] = h;
            self.next = (self.next + 1) % RECENT_IDS;
        }
        true
    }
}

/// Where an arriving event stands in its room's sequence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// Deliver it: the next sequenced event, or an ephemeral one (seq 0).
    Next,
    /// Already delivered (from history or an earlier stream): drop it.
    Duplicate,
    /// Deliver it, after reporting that `from..=to` never arrived.
    Gap { from: u64, to: u64 },
}

/// Advances `last_seq` past `seq` and says what that means.
pub(crate) fn check_seq(last_seq: &mut u64, seq: u64) -> SeqCheck {
    if seq == 0 {
        return SeqCheck::Next;
    }
    if seq <= *last_seq {
        return SeqCheck::Duplicate;
    }
    let expected = *last_seq + 1;
    *last_seq = seq;
    if seq == expected { SeqCheck::Next } else { SeqCheck::Gap { from: expected, to: seq - 1 } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_check_delivers_in_order_drops_duplicates_and_reports_gaps() {
        let mut last = 5;
        assert_eq!(check_seq(&mut last, 6), SeqCheck::Next);
        assert_eq!(check_seq(&mut last, 6), SeqCheck::Duplicate);
        assert_eq!(check_seq(&mut last, 3), SeqCheck::Duplicate);
        assert_eq!(check_seq(&mut last, 0), SeqCheck::Next, "ephemeral events never count");
        assert_eq!(last, 6);
        assert_eq!(check_seq(&mut last, 9), SeqCheck::Gap { from: 7, to: 8 });
        assert_eq!(last, 9);
        assert_eq!(check_seq(&mut last, 10), SeqCheck::Next);
    }

    #[test]
    fn recent_ids_drop_repeats_within_the_window() {
        let mut r = RecentIds::default();
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert(""), "events without an id are never duplicates");
        assert!(r.insert(""));
        for i in 0..RECENT_IDS {
            assert!(r.insert(&format!("x{i}")));
        }
        assert!(r.insert("a"), "forgotten once the window moved on");
    }
}
