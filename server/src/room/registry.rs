//! The node's rooms, by id: created on first join, removed after they have
//! been empty for `empty_room_ttl_secs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use roomcast_protocol::{ErrorCode, RoomId, v1};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use super::fanout::Outbox;
use super::feed::Feed;
use super::handle::{Command, JoinRequest, Joined, RoomHandle};
use super::history::{HistoryLog, MAX_FETCH};
use super::task::run_room;
use crate::config::RoomConfig;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
struct Entry {
    handle: RoomHandle,
    history: Arc<HistoryLog>,
}

/// Which of a room's kept events a history read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRange {
    /// The newest page.
    Latest,
    /// Events with `from <= seq <= to`.
    Seq { from: u64, to: u64 },
    /// Events whose media timestamp is in `from_ms..=to_ms`.
    Media { from_ms: u64, to_ms: u64 },
}

#[derive(Debug)]
pub struct Rooms {
    map: Mutex<HashMap<RoomId, Entry>>,
    pub(super) config: RoomConfig,
    pub(super) metrics: Arc<Metrics>,
}

impl Rooms {
    pub fn new(config: RoomConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { map: Mutex::default(), config, metrics })
    }

    /// Number of rooms alive on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // Nothing panics while holding the lock, so poison carries no meaning.
    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(self: &Arc<Self>, id: &RoomId) -> Entry {
        let mut map = self.lock();
        if let Some(e) = map.get(id)
            && !e.handle.tx.is_closed()
        {
            return e.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.command_queue.max(1));
        let history =
            HistoryLog::new(self.config.history_len, Duration::from_secs(self.config.history_max_age_secs));
        let entry = Entry { handle: RoomHandle { tx }, history };
        map.insert(id.clone(), entry.clone());
        self.metrics.rooms.set(map.len() as i64);
        let span = info_span!("room", room = %id);
        tokio::spawn(run_room(self.clone(), id.clone(), rx, entry.history.clone()).instrument(span));
        entry
    }

    /// Joins a room, creating it if needed.
    pub async fn join(self: &Arc<Self>, id: &RoomId, request: JoinRequest) -> Result<Joined, ErrorCode> {
        // A room that is shutting down for idleness drops the command; the
        // next attempt creates a fresh room.
        for _ in 0..3 {
            let Entry { handle, history } = self.entry(id);
            let outbox = Outbox::new(self.config.outbox_capacity);
            let (reply, rx) = oneshot::channel();
            let filter = request.filter;
            let cmd = Command::Join { request: request.clone(), outbox: outbox.clone(), reply };
            if handle.tx.send(cmd).await.is_err() {
                continue;
            }
            if let Ok(answer) = rx.await {
                let feed = Feed::new(outbox, history, &answer, filter);
                return Ok(Joined { answer, handle, feed });
            }
        }
        Err(ErrorCode::Internal)
    }

    /// Reads a live room's history straight from its log, without queueing
    /// behind the room's live traffic. At most `limit` events (0: the cap),
    /// and what fits in one answer; `NOT_FOUND` for a room not live here.
    pub fn history(&self, id: &RoomId, range: HistoryRange, limit: u32) -> Result<v1::History, ErrorCode> {
        let log = self.lock().get(id).map(|e| e.history.clone()).ok_or(ErrorCode::NotFound)?;
        let limit = if limit == 0 { MAX_FETCH } else { limit as usize };
        let now = Instant::now();
        let page = match range {
            HistoryRange::Latest => log.latest(now, limit),
            HistoryRange::Seq { from, to } => log.by_seq(now, from, to, limit),
            HistoryRange::Media { from_ms, to_ms } => log.by_media_time(now, from_ms, to_ms, limit),
        };
        Ok(v1::History {
            room: id.to_string(),
            events: page.events,
            oldest_seq: page.oldest_seq,
            truncated: page.truncated,
        })
    }

    /// Called by an empty room's task: removes it unless commands are waiting.
    pub(super) fn remove_if_idle(&self, id: &RoomId, rx: &mpsc::Receiver<Command>) -> bool {
        let mut map = self.lock();
        if !rx.is_empty() {
            return false;
        }
        map.remove(id);
        self.metrics.rooms.set(map.len() as i64);
        true
    }
}
