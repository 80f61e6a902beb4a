//! A room's side of the fleet: what it makes goes to Redis to be numbered,
//! and what Redis numbered (its own events and other nodes') comes back to
//! be kept and fanned out.
//!
//! * On start the room subscribes to its channel, then learns the fleet's
//!   epoch and last sequence number and its newest events (`follow`).
//! * Events the room makes are handed, encoded, with the reply waiting for
//!   their number, to the room's publisher task ([`Publisher`]), which sends
//!   what has queued up to Redis in one call and completes the replies
//!   (`Numbered`). A room's events go to Redis in the order it made them.
//! * Deliveries pass through an [`Orderer`]: a repeat is dropped, a hole is
//!   read back from the stream before what follows it is taken.
//! * When Redis has lost the room's numbering (flushed, restarted without
//!   persistence, failed over behind, evicted), `sequence.lua` gives the
//!   room a new epoch numbered from 1. Every node sees it in the message
//!   ids of what arrives and goes on with the room's new incarnation
//!   (`RoomState::renumber`): no sequence number or message id is used
//!   twice, and nothing numbered afterwards is taken for a repeat.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use roomcast_protocol::{ErrorCode, RoomId, v1};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::archive::Archive;
use super::state::{GiftSequenced, Outgoing, RoomState};
use crate::cluster::{Arrival, Fleet, MAX_BATCH, Orderer};

/// Batches waiting for a room's publisher; beyond it a request is refused
/// with `UNAVAILABLE` rather than queued without bound.
const PUBLISH_QUEUE: usize = 1_024;

/// A reply that carries the sequence number Redis gave its event.
pub(super) trait Numbered: Sized + Send + 'static {
    fn numbered(self, seq: u64, message_id: String) -> Self;
}

impl Numbered for v1::ChatAck {
    fn numbered(self, seq: u64, message_id: String) -> Self {
        Self { seq, message_id, ..self }
    }
}

impl Numbered for v1::Recalled {
    fn numbered(self, seq: u64, _: String) -> Self {
        Self { seq, ..self }
    }
}

impl Numbered for GiftSequenced {
    fn numbered(self, seq: u64, message_id: String) -> Self {
        Self { seq, message_id, ..self }
    }
}

impl Numbered for u64 {
    fn numbered(self, seq: u64, _: String) -> Self {
        seq
    }
}

/// Completes a reply once its event is numbered, or fails it.
type Complete = Box<dyn FnOnce(Result<(u64, String), ErrorCode>) + Send>;

/// One command's events, and its reply.
struct Batch {
    events: Vec<Outgoing>,
    complete: Complete,
}

/// The sending end of a room's publisher.
#[derive(Debug, Clone)]
pub(super) struct Publisher {
    tx: mpsc::Sender<Batch>,
}

/// Where the room is in the fleet's numbering: its epoch and the last
/// sequence number it has taken in it, read together by the publisher.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    epoch: u64,
    seq: u64,
}

type SharedPosition = Arc<Mutex<Position>>;

fn read(position: &SharedPosition) -> Position {
    *position.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("events", &self.events.len()).finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts `room`'s publisher task.
    fn start(fleet: Fleet, room: RoomId, position: SharedPosition) -> Self {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish(fleet, room, position, rx));
        Self { tx }
    }

    /// Answers `reply` with `result` once the events the command made (the
    /// state's outgoing) are numbered; at once when it made none or failed.
    pub(super) fn answer<T: Numbered>(
        &self,
        state: &mut RoomState,
        reply: oneshot::Sender<Result<T, ErrorCode>>,
        result: Result<T, ErrorCode>,
    ) {
        let events = state.take_outgoing();
        let value = match result {
            Ok(value) if !events.is_empty() => value,
            other => {
                let _ = reply.send(other);
                return;
            }
        };
        let complete: Complete = Box::new(move |numbered| {
            let _ = reply.send(numbered.map(|(seq, id)| value.numbered(seq, id)));
        });
        if let Err(e) = self.tx.try_send(Batch { events, complete }) {
            let batch = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            };
            (batch.complete)(Err(ErrorCode::Unavailable));
        }
    }

    /// Sends what the room made without a reply waiting (a close's status).
    pub(super) fn send(&self, state: &mut RoomState) {
        let events = state.take_outgoing();
        if !events.is_empty() {
            let _ = self.tx.try_send(Batch { events, complete: Box::new(|_| {}) });
        }
    }
}

/// The publisher task: what has queued goes to Redis in one call; replies
/// are completed in order.
async fn publish(fleet: Fleet, room: RoomId, position: SharedPosition, mut rx: mpsc::Receiver<Batch>) {
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        let mut count = batches[0].events.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) => {
                    count += b.events.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        // A batch over MAX_BATCH events goes in several calls, in order.
        let events: Vec<&Outgoing> = batches.iter().flat_map(|b| b.events.iter()).collect();
        let mut numbered = Vec::with_capacity(events.len());
        let mut failed = false;
        for chunk in events.chunks(MAX_BATCH) {
            let at = read(&position);
            let bytes: Vec<Bytes> = chunk.iter().map(|o| o.bytes.clone()).collect();
            let gifts: Vec<(&str, &str, u64)> = chunk
                .iter()
                .filter_map(|o| o.tally.as_ref().map(|t| (t.user_id.as_str(), t.name.as_str(), t.value)))
                .collect();
            match fleet.sequence(&room, at.epoch, at.seq, &bytes, &gifts).await {
                Ok(s) => {
                    if s.renumbered {
                        warn!(room = %room, lost = %format!("{:x}", at.epoch), seen = at.seq, epoch = %s.epoch,
                            "the fleet's Redis had lost the room's numbering (flushed, restarted without \
                             persistence, failed over behind or evicted): the room takes a new epoch");
                    }
                    numbered.extend((0..chunk.len() as u64).map(|i| (s.first + i, s.epoch.clone())));
                }
                Err(e) => {
                    warn!(error = %e, room = %room, "events not sequenced: the fleet's Redis is unreachable");
                    failed = true;
                    break;
                }
            }
        }
        let mut next = numbered.into_iter();
        for b in batches {
            // A command's reply carries its first event's number.
            let mine: Vec<_> = next.by_ref().take(b.events.len()).collect();
            match mine.first() {
                Some((seq, epoch)) if !failed || mine.len() == b.events.len() => {
                    (b.complete)(Ok((*seq, format!("{epoch}-{seq}"))));
                }
                _ => (b.complete)(Err(ErrorCode::Unavailable)),
            }
        }
    }
}

/// What a room needs to follow the fleet: where it is in the sequence.
#[derive(Debug)]
pub(super) struct Following {
    pub(super) fleet: Fleet,
    pub(super) orderer: Orderer,
    pub(super) publisher: Publisher,
    /// The epoch and last sequence number taken, shared with the publisher.
    position: SharedPosition,
    /// Where a new incarnation's events are archived.
    archive: Option<Arc<Archive>>,
    /// `roomcast_fleet_rooms_renumbered_total`.
    renumbered: Counter,
    /// The room's last status when it started following was CLOSED: the
    /// platform closed it on some node.
    pub(super) closed: bool,
}

/// The reason of a closing `RoomStatus`, if `event` is one.
pub(super) fn closing(event: &v1::RoomEvent) -> Option<&str> {
    match &event.kind {
        Some(v1::room_event::Kind::RoomStatus(s)) if s.state == v1::RoomState::Closed as i32 => {
            Some(&s.reason)
        }
        _ => None,
    }
}

/// The epoch a numbered event's message id (`{epoch:x}-{seq}`) carries.
fn epoch_of(event: &v1::RoomEvent) -> Option<u64> {
    let (hex, _) = event.message_id.rsplit_once('-')?;
    u64::from_str_radix(hex, 16).ok()
}

/// Subscribes `room` and brings `state` to the fleet's position: its epoch,
/// last sequence number and newest `recent` events.
pub(super) async fn follow(
    fleet: &Fleet,
    room: &RoomId,
    state: &mut RoomState,
    local_epoch: u64,
    recent: usize,
    archive: Option<Arc<Archive>>,
    renumbered: Counter,
) -> Result<Following, crate::cluster::FleetError> {
    // Subscribe first: nothing numbered after the position read below is
    // missed; what arrives twice is dropped by the orderer.
    fleet.subscribe(room).await?;
    let epoch = fleet.epoch(room, local_epoch).await?;
    // The ranking so far and the number it holds gifts up to: gifts
    // numbered after it count as they arrive.
    let (ranking, last) = fleet.ranking(room).await?;
    let from = last.saturating_sub(recent as u64) + 1;
    let events = if last > 0 { fleet.replay(room, from, last).await? } else { Vec::new() };
    let closed = events.last().is_some_and(|e| closing(e).is_some());
    let now_ms = roomcast_protocol::unix_ms(std::time::SystemTime::now());
    state.join_fleet(last, epoch, events, tokio::time::Instant::now(), now_ms);
    state.seed_ranking(
        ranking
            .into_iter()
            .map(|(user_id, display_name, value)| v1::RankEntry {
                user: Some(v1::User { user_id, display_name, ..Default::default() }),
                value,
            })
            .collect(),
    );
    debug!(last, epoch, "room follows the fleet");
    let position = Arc::new(Mutex::new(Position { epoch, seq: last }));
    Ok(Following {
        fleet: fleet.clone(),
        orderer: Orderer::after(last),
        publisher: Publisher::start(fleet.clone(), room.clone(), position.clone()),
        position,
        archive,
        renumbered,
        closed,
    })
}

impl Following {
    /// Takes a delivery's events in sequence order, reading any hole back
    /// from the stream first. Returns the reason of a closing status taken
    /// (the platform closed the room on some node), if one was.
    pub(super) async fn ingest(
        &mut self,
        room: &RoomId,
        state: &mut RoomState,
        events: Vec<v1::RoomEvent>,
    ) -> Option<String> {
        let now = tokio::time::Instant::now();
        let mut closed = None;
        for e in events {
            let epoch = read(&self.position).epoch;
            if let Some(new) = epoch_of(&e).filter(|e| *e != epoch) {
                self.renumber(room, state, epoch, new, now);
            }
            if let Some(v1::room_event::Kind::QuizResult(r)) = &e.kind {
                // This node's players read their verdicts.
                self.fleet.quiz_revealed(room, r);
            }
            let seq = e.seq;
            if let Some(reason) = closing(&e) {
                closed = Some((seq, reason.to_string()));
            }
            match self.orderer.arrive(seq) {
                Arrival::Repeat => {
                    closed = closed.filter(|(s, _)| *s != seq);
                }
                Arrival::Next => state.ingest(e, now),
                Arrival::Hole { from, to } => {
                    match tokio::time::timeout(Duration::from_secs(2), self.fleet.replay(room, from, to))
                        .await
                    {
                        Ok(Ok(missed)) => {
                            let epoch = read(&self.position).epoch;
                            for m in missed {
                                // The stream of another incarnation (Redis
                                // lost the room meanwhile) fills no hole.
                                if m.seq >= from && m.seq <= to && epoch_of(&m) == Some(epoch) {
                                    if let Some(v1::room_event::Kind::QuizResult(r)) = &m.kind {
                                        self.fleet.quiz_revealed(room, r);
                                    }
                                    state.ingest(m, now);
                                }
                            }
                        }
                        _ => warn!(room = %room, from, to, "hole in the room's sequence not read back"),
                    }
                    // Members see the rest; a hole the stream could not
                    // fill shows as a gap they resume over.
                    self.orderer.filled(to);
                    if self.orderer.arrive(e.seq) == Arrival::Next {
                        state.ingest(e, now);
                    }
                }
            }
        }
        let mut position = self.position.lock().unwrap_or_else(PoisonError::into_inner);
        position.seq = state.last_seq();
        closed.map(|(_, reason)| reason)
    }

    /// Reads what the room's stream holds beyond what the room has taken,
    /// and takes it: after the connection to Redis dropped, the channel may
    /// have missed it, and nothing else brings it until the room's next
    /// event. A new epoch (Redis lost the room meanwhile) is read from 1.
    pub(super) async fn catch_up(&mut self, room: &RoomId, state: &mut RoomState) -> Option<String> {
        let (epoch, last) = match self.fleet.position(room).await {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, room = %room, "room not caught up with its stream");
                return None;
            }
        };
        let followed = read(&self.position).epoch;
        let from = if epoch != followed && epoch != 0 { 1 } else { self.orderer.last() + 1 };
        if last < from {
            return None;
        }
        match self.fleet.replay(room, from, last).await {
            Ok(events) => self.ingest(room, state, events).await,
            Err(e) => {
                debug!(error = %e, room = %room, "room not caught up with its stream");
                None
            }
        }
    }

    /// The room goes on as its new incarnation `new` (see the module docs).
    fn renumber(
        &mut self,
        room: &RoomId,
        state: &mut RoomState,
        old: u64,
        new: u64,
        now: tokio::time::Instant,
    ) {
        warn!(room = %room, old = %format!("{old:x}"), new = %format!("{new:x}"),
            "the room's numbering restarted in the fleet (its Redis had lost it): members resume incomplete");
        self.renumbered.inc();
        self.orderer = Orderer::after(0);
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = Position { epoch: new, seq: 0 };
        state.renumber(new, self.archive.as_ref().map(|a| a.sink(room, new)), now);
    }
}
