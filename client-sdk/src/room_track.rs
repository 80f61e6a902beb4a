//! Per-room sequence tracking, as a plain state machine: no tokio, no quinn.
//!
//! [`RoomTracker`] is told what the connection brought (a join's answer, a
//! frame from a room stream, a lost connection) and queues what follows from
//! it: the events to hand to the app and the rejoins the driver must send
//! ([`Output`]). The driver drains the queue with
//! [`RoomTracker::poll_output`] after every input, so outputs keep the order
//! of the inputs that caused them.
//!
//! Per room it keeps the position (every sequenced event up to it was
//! delivered, dropped as a duplicate, reported missing or skipped by the
//! filter), the room's epoch, the join's filter and the recently delivered
//! message ids. While a join or rejoin is unanswered, the room's frames are
//! held back and replayed after the answer, so that `Joined.history` and the
//! room stream meet without overlap or hole.
//!
//! Invariant: no gap is ever hidden. A sequenced event is delivered, dropped
//! because it was already delivered, or named by an [`Event::Gap`].

use std::collections::{HashMap, VecDeque};

use roomcast_protocol::{ErrorCode, v1};

use crate::seq::{RecentIds, SeqCheck, check_seq};
use crate::{Error, Event};

/// Frames held for a room between its join request and its `Joined`.
const MAX_HELD: usize = 16 * 1024;

/// A decoded frame from a room stream (after its `RoomStreamStart`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RoomMsg {
    /// Boxed: an event is several times the size of the other variants, and
    /// up to `MAX_HELD` of these wait for a join.
    Event(Box<v1::RoomEvent>),
    /// Filtered-out events up to this sequence number were skipped.
    Advance(u64),
    /// The server could not queue `from..=to` for us; the stream has ended.
    Lagged { from: u64, to: u64 },
    /// The server removed us from the room (kicked, banned, room closed);
    /// the stream has ended.
    Removed { code: Option<ErrorCode>, reason: String },
}

/// What the driver must do, in this order.
#[derive(Debug, PartialEq)]
// Events are the common case; boxing them to shrink the rare rejoin would
// cost an allocation per event.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Output {
    /// Hand this to the app.
    Event(Event),
    /// Send this join, a rejoin at the room's position; pass its answer to
    /// [`RoomTracker::resumed`] or [`RoomTracker::resume_failed`]. The room's
    /// frames are held back until then.
    Rejoin(v1::Join),
}

/// The sequence state of every room the session has joined or is joining.
///
/// Its output queue is drained after every input, so it holds at most what
/// one input causes: a resume's history and the frames held for its room.
#[derive(Default)]
pub(crate) struct RoomTracker {
    rooms: HashMap<String, RoomTrack>,
    out: VecDeque<Output>,
}

impl RoomTracker {
    /// The next thing for the driver to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The app asked to join `room` (again, perhaps): track it afresh and hold
    /// its frames back until the answer.
    pub(crate) fn join_requested(&mut self, room: &str, filter: i32) {
        self.rooms.insert(room.to_string(), RoomTrack::joining(filter));
    }

    /// The app's join of `room` was answered. `Joined.history` goes to the
    /// app with the answer; the room stream continues after
    /// [`joined_position`], and what it held back is released now.
    pub(crate) fn joined(&mut self, room: &str, joined: &v1::Joined) {
        let Some(track) = self.rooms.get_mut(room) else { return };
        track.last_seq = joined_position(joined);
        track.epoch = Some(joined.epoch);
        for e in &joined.history {
            track.recent.insert(&e.message_id);
        }
        let held = track.joining.take().unwrap_or_default();
        self.release(room, held);
    }

    /// The app's join of `room` failed (refused, not sent, or answered with
    /// something else): it is not joined.
    pub(crate) fn join_failed(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// The app left `room`.
    pub(crate) fn left(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// A rejoin of `room` was answered: reports what could not be replayed,
    /// replays `Joined.history`, says [`Event::Resumed`], then releases the
    /// frames held back meanwhile.
    ///
    /// When the room was recreated (another epoch, or numbering behind our
    /// position), its events start afresh and nothing counts as missed.
    pub(crate) fn resumed(&mut self, room: &str, joined: v1::Joined) {
        let Some(track) = self.rooms.get_mut(room) else { return };
        let same_room = track.epoch.is_none_or(|e| e == joined.epoch) && joined.current_seq >= track.last_seq;
        if !same_room {
            track.last_seq = 0;
            track.recent = RecentIds::default();
        }
        track.epoch = Some(joined.epoch);
        let held = track.joining.take().unwrap_or_default();
        // The room stream carries everything after this.
        let position = joined_position(&joined);
        let complete = joined.resumed;
        if !complete {
            // The history is the room's recent events, not those right after
            // our position: whatever lies between was lost.
            let from = track.last_seq;
            let first = joined.history.iter().map(|e| e.seq).find(|s| *s > from).unwrap_or(position + 1);
            if first > from + 1 && same_room {
                let gap = Event::Gap { room: room.to_string(), from: from + 1, to: first - 1 };
                self.out.push_back(Output::Event(gap));
            }
            track.last_seq = track.last_seq.max(first - 1);
        }
        let mut replayed = 0;
        for e in joined.history {
            // History skips only recalled events and those the filter leaves
            // out: a hole in it is not loss (what was lost before it is
            // reported above).
            if e.seq > 0 {
                track.last_seq = track.last_seq.max(e.seq - 1);
            }
            if track.deliver(room, e, &mut self.out) {
                replayed += 1;
            }
        }
        // Filtered-out events at the end of the history.
        track.last_seq = track.last_seq.max(position);
        self.out.push_back(Output::Event(Event::Resumed { room: room.to_string(), complete, replayed }));
        self.release(room, held);
    }

    /// A rejoin of `room` was refused: the room is no longer joined.
    pub(crate) fn resume_failed(&mut self, room: &str, error: Error) {
        if self.rooms.remove(room).is_some() {
            self.out.push_back(Output::Event(Event::ResumeFailed { room: room.to_string(), error }));
        }
    }

    /// A frame from `room`'s stream. Held back while the room's join is
    /// unanswered; ignored for a room that is not joined (one just left).
    pub(crate) fn room_msg(&mut self, room: &str, msg: RoomMsg) {
        let Some(track) = self.rooms.get_mut(room) else { return };
        if let Some(held) = &mut track.joining {
            // Past the bound, events are dropped (what follows them then
            // reports the gap), but never the `Lagged` that ends a stream: the
            // room would fall silent.
            if held.len() < MAX_HELD || matches!(msg, RoomMsg::Lagged { .. } | RoomMsg::Removed { .. }) {
                held.push(msg);
            }
            return;
        }
        match msg {
            RoomMsg::Event(e) => {
                track.deliver(room, *e, &mut self.out);
            }
            RoomMsg::Advance(seq) => track.last_seq = track.last_seq.max(seq),
            RoomMsg::Removed { code, reason } => {
                // The room is gone for us: nothing to resume.
                self.rooms.remove(room);
                self.out.push_back(Output::Event(Event::Removed { room: room.to_string(), code, reason }));
            }
            RoomMsg::Lagged { from, to } => {
                // A stale notice from a stream that a resume already covered.
                if to <= track.last_seq {
                    return;
                }
                let from = from.max(track.last_seq + 1);
                self.out.push_back(Output::Event(Event::Lagged { room: room.to_string(), from, to }));
                self.rejoin(room);
            }
        }
    }

    /// The connection ended. Rooms whose first join was still unanswered are
    /// forgotten: the app got an error for that join and decides.
    pub(crate) fn disconnected(&mut self) {
        self.rooms.retain(|_, t| t.epoch.is_some());
    }

    /// A new connection is up: rejoin every room at its position, in the
    /// order of their names.
    pub(crate) fn reconnected(&mut self) {
        let mut names: Vec<String> = self.rooms.keys().cloned().collect();
        names.sort();
        for room in names {
            self.rejoin(&room);
        }
    }

    fn rejoin(&mut self, room: &str) {
        let Some(track) = self.rooms.get_mut(room) else { return };
        // Frames of the old stream still held are covered by the rejoin.
        track.joining = Some(Vec::new());
        self.out.push_back(Output::Rejoin(v1::Join {
            room: room.to_string(),
            last_seq: Some(track.last_seq),
            filter: track.filter,
            epoch: track.epoch,
        }));
    }

    fn release(&mut self, room: &str, held: Vec<RoomMsg>) {
        for msg in held {
            self.room_msg(room, msg);
        }
    }
}

/// The position a join's answer leaves the room at: the room stream carries
/// the events after it. `Joined.next_seq` names the stream's first event
/// (0 from servers that predate it: right after `current_seq`). It never
/// reaches past `current_seq + 1`, which would skip events unreported.
fn joined_position(joined: &v1::Joined) -> u64 {
    match joined.next_seq {
        0 => joined.current_seq,
        next => (next - 1).min(joined.current_seq),
    }
}

/// A room as the tracker knows it.
struct RoomTrack {
    /// Everything up to here has been delivered, reported missing or skipped
    /// by the filter.
    last_seq: u64,
    /// `Joined.epoch` of the last answer; `None` until the first one.
    epoch: Option<u64>,
    filter: i32,
    /// Frames that arrived while a join or rejoin was unanswered.
    joining: Option<Vec<RoomMsg>>,
    recent: RecentIds,
}

impl RoomTrack {
    fn joining(filter: i32) -> Self {
        Self { last_seq: 0, epoch: None, filter, joining: Some(Vec::new()), recent: RecentIds::default() }
    }

    /// Queues a room event in order, dropping duplicates and reporting gaps.
    /// True if it was delivered.
    fn deliver(&mut self, room: &str, event: v1::RoomEvent, out: &mut VecDeque<Output>) -> bool {
        let check = check_seq(&mut self.last_seq, event.seq);
        if check == SeqCheck::Duplicate {
            return false;
        }
        // Reported even when the event itself turns out a duplicate by id:
        // the position has moved past the missing ones.
        if let SeqCheck::Gap { from, to } = check {
            out.push_back(Output::Event(Event::Gap { room: room.to_string(), from, to }));
        }
        if !self.recent.insert(&event.message_id) {
            return false;
        }
        out.push_back(Output::Event(Event::Message(event)));
        true
    }
}

#[cfg(test)]
mod tests;
