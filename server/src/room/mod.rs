//! Rooms: one task per room owns its state; connections reach it only
//! through typed handles.
//!
//! * [`Rooms`] is the node's registry: it creates a room on its first join
//!   and drops it once it has been empty for a while.
//! * [`RoomHandle`] is a connection's way into a joined room: leave,
//!   presence, publish, recall, gift, like. Each call is a command to the room's task;
//!   answers come back as a [`Reply`], so a session can keep several in
//!   flight.
//! * [`Feed`] is a member's receiving end: the frames its room stream
//!   carries, in order (history a resume did not fit in its answer first,
//!   then the live events), and the room's online count and like total.
//!
//! Inside, `state` is the room as a plain state machine (split by concern),
//! `task` the only place it meets channels and timers, `fanout` the bounded
//! per-member outbox, `history` the room's kept events and `kinds` what each
//! kind of event is. None of them is visible outside this module.
//!
//! **Architecture Invariant:** the room task is the only writer of a room's
//! state, so sequencing needs no lock; per-member fan-out is a push into that
//! member's outbox. History reads go straight to the room's history and never
//! wait behind its live traffic.

mod archive;
mod fanout;
mod feed;
mod fleet;
mod handle;
mod history;
mod kinds;
mod likes;
mod registry;
mod state;
mod task;

pub use archive::{Archive, ArchiveCounters};
pub use fanout::{Drained, SLOTS, Slot};
pub use feed::Feed;
pub use handle::{JoinRequest, Joined, Reply, RoomHandle};
pub use registry::{HistoryRange, Lifecycle, RoomSummary, Rooms, UserScope};
pub use state::{
    AdminKind, AdminMessage, ChatRequest, ConnId, EVENT_KINDS, Filter, FlushStats, GiftRequest,
    GiftSequenced, QuizEvent, Resume, RoomInfo,
};

/// The room's parts, for the fan-out benchmarks (`benches/fanout.rs`), which
/// measure the state machine and the outboxes without a task or a socket.
/// Not an interface: nothing in the node uses it.
#[doc(hidden)]
pub mod internals {
    pub use super::fanout::{Item, Outbox, Shed};
    pub use super::history::HistoryLog;
    pub use super::state::{ChatRequest, Filter, RoomLimits, RoomState};
}
