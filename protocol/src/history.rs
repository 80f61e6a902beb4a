//! Which part of a room's kept history a read wants, as a domain type: the
//! schema's optional `FetchHistory.range` oneof, converted once at the edge.

use crate::v1;
use v1::fetch_history::Range;

/// Which of a room's kept events a history read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRange {
    /// The newest page (a `FetchHistory` without a range).
    Latest,
    /// Events with `from <= seq <= to`.
    Seq { from: u64, to: u64 },
    /// Events whose media timestamp is in `from_ms..=to_ms` (danmaku replay).
    Media { from_ms: u64, to_ms: u64 },
}

impl HistoryRange {
    /// The range a `FetchHistory` asks for.
    pub fn from_proto(range: Option<Range>) -> Self {
        match range {
            None => Self::Latest,
            Some(Range::Seq(r)) => Self::Seq { from: r.from, to: r.to },
            Some(Range::Media(m)) => Self::Media { from_ms: m.from_ms, to_ms: m.to_ms },
        }
    }

    /// The `FetchHistory.range` that asks for it.
    pub fn to_proto(self) -> Option<Range> {
        match self {
            Self::Latest => None,
            Self::Seq { from, to } => Some(Range::Seq(v1::SeqRange { from, to })),
            Self::Media { from_ms, to_ms } => Some(Range::Media(v1::MediaRange { from_ms, to_ms })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_survives_the_round_trip() {
        for r in [
            HistoryRange::Latest,
            HistoryRange::Seq { from: 3, to: 9 },
            HistoryRange::Media { from_ms: 5, to_ms: 60_000 },
        ] {
            assert_eq!(HistoryRange::from_proto(r.to_proto()), r);
        }
        assert_eq!(HistoryRange::Latest.to_proto(), None, "no range is the newest page");
    }
}
