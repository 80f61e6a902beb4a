//! Sequencing and the room's log.
//!
//! **Invariant:** `EventLog::sequence` is the only place a sequence number
//! is assigned on a node running alone. It appends the event to history and
//! to the log in the same step, so history and fan-out agree on every
//! number. In a fleet the node numbers nothing: `sequence` queues the
//! encoded event for Redis (`outgoing`), and the numbered events come back
//! through `EventLog::ingest`, which appends them to history and the log in
//! the same way. The log holds the
//! encoded events not yet pushed to every member; rounds read it through
//! each member's cursor and trim it once everyone has been served.

use std::sync::Arc;

use bytes::Bytes;
use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::{RoomId, v1};
use tokio::time::Instant;
use v1::room_event::Kind;

use super::super::archive::ArchiveSink;
use super::super::fanout::Shed;
use super::super::history::HistoryLog;
use super::super::kinds;
use super::ConnId;
use super::ranking::GiftTally;

/// An event in the room's log, waiting to be pushed to members.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) frame: Bytes,
    /// 0 for ephemeral events.
    pub(super) seq: u64,
    pub(super) host_visible: bool,
    pub(super) shed: Shed,
    /// A member that must not receive it (the subject of "user entered").
    pub(super) except: Option<ConnId>,
    /// When it was sequenced (sequenced events only).
    pub(super) at: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct EventLog {
    room: RoomId,
    /// Distinguishes message ids of this incarnation of the room from those
    /// of an earlier one with the same id.
    pub(super) epoch: u64,
    /// The last sequence number assigned.
    pub(super) seq: u64,
    pub(super) history: Arc<HistoryLog>,
    /// Events not yet pushed to every member; `events[0]` is at position
    /// `base`.
    pub(super) events: Vec<Pending>,
    pub(super) base: u64,
    /// Where the newest sequenced event went in the log; while it is at or
    /// after `base`, sequenced events wait.
    last_sequenced: Option<u64>,
    ephemeral_counter: u64,
    /// Wall-clock time of the latest event, for an online count that goes
    /// out with a round.
    pub(super) last_now_ms: u64,
    /// Events made since the last `take_counts`, by kind.
    counts: [u64; kinds::KINDS],
    /// In a fleet: the encoded events made here, for Redis to number.
    fleet: bool,
    pub(super) outgoing: Vec<Outgoing>,
}

/// An event made here for the fleet to number: encoded, and what it adds
/// to the room's gift ranking.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) bytes: Bytes,
    pub(crate) tally: Option<GiftTally>,
}

impl EventLog {
    pub(super) fn new(room: RoomId, epoch: u64, history: Arc<HistoryLog>) -> Self {
        Self {
            room,
            epoch,
            seq: 0,
            history,
            events: Vec::new(),
            base: 0,
            last_sequenced: None,
            ephemeral_counter: 0,
            last_now_ms: 0,
            counts: [0; kinds::KINDS],
            fleet: false,
            outgoing: Vec::new(),
        }
    }

    /// From now on Redis numbers this room's events: `sequence` only queues
    /// them, and the room follows the fleet's sequence from `last`.
    pub(super) fn join_fleet(&mut self, last: u64, epoch: u64) {
        self.fleet = true;
        self.seq = last;
        self.epoch = epoch;
    }

    /// Appends an event the fleet numbered (the next in sequence: the
    /// caller checked) to history and, when anyone is subscribed, to the log.
    pub(super) fn ingest(&mut self, event: v1::RoomEvent, subscribed: bool, now: Instant) {
        let Some(kind) = &event.kind else { return };
        self.counts[kinds::index(kind)] += 1;
        if let Kind::Recall(r) = kind {
            // Every node forgets the recalled message, as the one that
            // recalled it did.
            self.history.remove(&r.message_id);
        }
        self.seq = event.seq;
        if subscribed {
            let frame =
                encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event.clone())) });
            self.last_sequenced = Some(self.end());
            self.events.push(Pending {
                frame,
                seq: event.seq,
                host_visible: kinds::host_visible(kind),
                shed: Shed::Normal,
                at: Some(now),
                except: None,
            });
        }
        self.last_now_ms = self.last_now_ms.max(event.server_time_ms);
        self.history.push(now, event);
    }

    /// Assigns the next sequence number, keeps the event in history and,
    /// when anyone is subscribed, queues its encoded frame for the next
    /// round.
    pub(super) fn sequence(
        &mut self,
        kind: Kind,
        sender: Option<v1::User>,
        media_ts_ms: Option<u64>,
        subscribed: bool,
        now: Instant,
        now_ms: u64,
    ) -> v1::RoomEvent {
        if self.fleet {
            // Redis numbers it; it comes back through `ingest`.
            let event = v1::RoomEvent {
                room: self.room.to_string(),
                seq: 0,
                message_id: String::new(),
                server_time_ms: now_ms,
                media_ts_ms,
                priority: kinds::priority(&kind) as i32,
                sender,
                kind: Some(kind),
            };
            let tally = GiftTally::of(&event);
            self.outgoing.push(Outgoing { bytes: prost::Message::encode_to_vec(&event).into(), tally });
            return event;
        }
        self.seq += 1;
        self.counts[kinds::index(&kind)] += 1;
        let host_visible = kinds::host_visible(&kind);
        let event = v1::RoomEvent {
            room: self.room.to_string(),
            seq: self.seq,
            message_id: format!("{:x}-{}", self.epoch, self.seq),
            server_time_ms: now_ms,
            media_ts_ms,
            priority: kinds::priority(&kind) as i32,
            sender,
            kind: Some(kind),
        };
        let frame = encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event.clone())) });
        if subscribed {
            self.last_sequenced = Some(self.end());
            self.events.push(Pending {
                frame,
                seq: self.seq,
                host_visible,
                shed: Shed::Normal,
                except: None,
                at: Some(now),
            });
        }
        self.history.push(now, event.clone());
        self.last_now_ms = now_ms;
        event
    }

    /// Queues an ephemeral event (no sequence number, never kept) for the
    /// next round, for every member but `except`.
    pub(super) fn ephemeral(
        &mut self,
        kind: Kind,
        sender: Option<v1::User>,
        subscribed: bool,
        now_ms: u64,
        except: Option<ConnId>,
    ) {
        self.ephemeral_counter += 1;
        self.counts[kinds::index(&kind)] += 1;
        self.last_now_ms = now_ms;
        let priority = kinds::priority(&kind);
        let event = v1::RoomEvent {
            room: self.room.to_string(),
            seq: 0,
            message_id: format!("{:x}-e{}", self.epoch, self.ephemeral_counter),
            server_time_ms: now_ms,
            media_ts_ms: None,
            priority: priority as i32,
            sender,
            kind: Some(kind),
        };
        let frame = encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Event(event)) });
        if subscribed {
            self.events.push(Pending {
                frame,
                seq: 0,
                host_visible: false,
                shed: kinds::shed(priority),
                except,
                at: None,
            });
        }
    }

    /// Events made since the previous call, by kind (see `kinds::NAMES`).
    pub(super) fn take_counts(&mut self) -> [u64; kinds::KINDS] {
        std::mem::take(&mut self.counts)
    }

    /// Log position after the newest event.
    pub(super) fn end(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether the log holds sequenced events (not only ephemeral).
    pub(super) fn has_sequenced(&self) -> bool {
        self.last_sequenced.is_some_and(|at| at >= self.base)
    }

    /// The events from log position `at` on.
    pub(super) fn since(&self, at: u64) -> &[Pending] {
        &self.events[(at - self.base) as usize..]
    }

    /// Starts a new incarnation `epoch`, numbered from 1: the log's events
    /// (already pushed: the caller flushed) and the history are dropped, and
    /// what is sequenced from now on is archived in `archive`.
    pub(super) fn renumber(&mut self, epoch: u64, archive: Option<ArchiveSink>) {
        self.trim_before(self.end());
        self.epoch = epoch;
        self.seq = 0;
        self.history.renew(archive);
    }

    /// Forgets the events before position `oldest`.
    pub(super) fn trim_before(&mut self, oldest: u64) {
        self.events.drain(..(oldest - self.base) as usize);
        self.base = oldest;
    }
}
