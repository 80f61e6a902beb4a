//! Rooms: one task per room owns its [`state::RoomState`]; connections talk
//! to it through a bounded channel of [`RoomCommand`]s.
//!
//! **Architecture Invariant:** the room task is the only writer of a room's
//! state, so sequencing needs no lock; per-member fan-out is a push into that
//! member's [`fanout::Outbox`]. History reads go straight to the room's
//! [`history::HistoryLog`] and never wait behind its live traffic.

pub mod fanout;
pub mod history;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use roomcast_protocol::{ErrorCode, RoomId, unix_ms, v1};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, info_span};

use crate::auth::Identity;
use crate::config::RoomConfig;
use crate::metrics::Metrics;
use fanout::Outbox;
use history::HistoryLog;
use state::{ChatOutcome, ChatRequest, ConnId, Filter, Resume, RoomLimits, RoomState};

/// Everything that can change a room. The room task handles them in arrival
/// order, one at a time.
#[derive(Debug)]
pub enum RoomCommand {
    Join {
        conn: ConnId,
        identity: Identity,
        outbox: Arc<Outbox>,
        resume: Option<Resume>,
        filter: Filter,
        reply: oneshot::Sender<v1::Joined>,
    },
    Leave {
        conn: ConnId,
    },
    Presence {
        conn: ConnId,
        present: bool,
    },
    Publish {
        conn: ConnId,
        chat: ChatRequest,
        reply: oneshot::Sender<Result<v1::ChatAck, ErrorCode>>,
    },
    Recall {
        conn: ConnId,
        message_id: String,
        reply: oneshot::Sender<Result<v1::Recalled, ErrorCode>>,
    },
}

/// A live room's command channel.
pub type RoomHandle = mpsc::Sender<RoomCommand>;

#[derive(Debug, Clone)]
struct Entry {
    handle: RoomHandle,
    history: Arc<HistoryLog>,
}

/// The node's rooms, by id. Rooms are created on first join and removed
/// after they have been empty for `empty_room_ttl_secs`.
#[derive(Debug)]
pub struct Rooms {
    map: Mutex<HashMap<RoomId, Entry>>,
    config: RoomConfig,
    metrics: Arc<Metrics>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(self: &Arc<Self>, id: &RoomId) -> Entry {
        let mut map = self.lock();
        if let Some(e) = map.get(id)
            && !e.handle.is_closed()
        {
            return e.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.command_queue.max(1));
        let history =
            HistoryLog::new(self.config.history_len, Duration::from_secs(self.config.history_max_age_secs));
        let entry = Entry { handle: tx, history };
        map.insert(id.clone(), entry.clone());
        self.metrics.rooms.set(map.len() as i64);
        let span = info_span!("room", room = %id);
        tokio::spawn(run_room(self.clone(), id.clone(), rx, entry.history.clone()).instrument(span));
        entry
    }

    /// The kept history of a live room (None if the room is not on this node).
    pub fn history(&self, id: &RoomId) -> Option<Arc<HistoryLog>> {
        self.lock().get(id).map(|e| e.history.clone())
    }

    /// Joins `conn` to a room, creating the room if needed. Returns the room's
    /// handle (for later commands) and its snapshot.
    pub async fn join(
        self: &Arc<Self>,
        id: &RoomId,
        conn: ConnId,
        identity: &Identity,
        outbox: &Arc<Outbox>,
        resume: Option<Resume>,
        filter: Filter,
    ) -> Result<(RoomHandle, v1::Joined), ErrorCode> {
        // A room that is shutting down for idleness drops the command; the
        // next attempt creates a fresh room.
        for _ in 0..3 {
            let handle = self.entry(id).handle;
            let (reply, rx) = oneshot::channel();
            let cmd = RoomCommand::Join {
                conn,
                identity: identity.clone(),
                outbox: outbox.clone(),
                resume,
                filter,
                reply,
            };
            if handle.send(cmd).await.is_err() {
                continue;
            }
            if let Ok(joined) = rx.await {
                return Ok((handle, joined));
            }
        }
        Err(ErrorCode::Internal)
    }

    /// Called by an empty room's task: removes it unless commands are waiting.
    fn remove_if_idle(&self, id: &RoomId, rx: &mpsc::Receiver<RoomCommand>) -> bool {
        let mut map = self.lock();
        if !rx.is_empty() {
            return false;
        }
        map.remove(id);
        self.metrics.rooms.set(map.len() as i64);
        true
    }
}

fn limits(c: &RoomConfig) -> RoomLimits {
    RoomLimits {
        join_history: c.join_history,
        viewer_page: c.viewer_page,
        online_push_interval: Duration::from_millis(c.online_push_interval_ms),
        batch_window: Duration::from_millis(c.batch_window_ms),
        max_batch_window: Duration::from_millis(c.max_batch_window_ms),
        chat_budget_per_sec: c.chat_budget_per_sec,
        user_chat_per_sec: c.user_chat_per_sec,
        entered_per_sec: c.entered_per_sec,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

async fn run_room(
    rooms: Arc<Rooms>,
    id: RoomId,
    mut rx: mpsc::Receiver<RoomCommand>,
    history: Arc<HistoryLog>,
) {
    let empty_ttl = Duration::from_secs(rooms.config.empty_room_ttl_secs);
    let epoch = unix_ms(SystemTime::now());
    let metrics = rooms.metrics.clone();
    let mut state = RoomState::new(id.clone(), epoch, limits(&rooms.config), history);
    let mut empty_since = Some(Instant::now());
    debug!("room opened");
    loop {
        let now = Instant::now();
        let flush_at = state.flush_due(now);
        let online_at = state.online_due(now);
        let expiry = empty_since.map(|t| t + empty_ttl);
        tokio::select! {
            biased;
            () = sleep_until(flush_at.unwrap_or_else(far_future)), if flush_at.is_some() => {
                state.tick(Instant::now());
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                handle(&mut state, cmd, &metrics);
                empty_since = match (state.is_empty(), empty_since) {
                    (true, None) => Some(Instant::now()),
                    (true, since) => since,
                    (false, _) => None,
                };
            }
            () = sleep_until(online_at.unwrap_or_else(far_future)), if online_at.is_some() => {
                state.push_online(Instant::now(), unix_ms(SystemTime::now()));
            }
            () = sleep_until(expiry.unwrap_or_else(far_future)), if expiry.is_some() => {
                if rooms.remove_if_idle(&id, &rx) {
                    break;
                }
            }
        }
        // A tick that is due now (a quiet room's lone message) goes out
        // before the next command is read.
        let now = Instant::now();
        if state.flush_due(now).is_some_and(|t| t <= now) {
            state.tick(now);
        }
        metrics.record_flush(state.take_stats());
    }
    debug!(seq = state.current_seq(), "room closed");
}

fn handle(state: &mut RoomState, cmd: RoomCommand, metrics: &Metrics) {
    let now = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    match cmd {
        RoomCommand::Join { conn, identity, outbox, resume, filter, reply } => {
            let joined = state.join(conn, identity, outbox, resume, filter, now, now_ms);
            // The joiner may have gone already; its leave follows.
            let _ = reply.send(joined);
        }
        RoomCommand::Leave { conn } => {
            state.leave(conn);
        }
        RoomCommand::Presence { conn, present } => state.set_present(conn, present),
        RoomCommand::Publish { conn, chat, reply } => {
            let result = match state.publish(conn, chat, now, now_ms) {
                Ok((ack, ChatOutcome::Broadcast)) => {
                    metrics.events_sequenced.inc();
                    Ok(ack)
                }
                Ok((ack, ChatOutcome::Sampled)) => {
                    metrics.chat_sampled.inc();
                    Ok(ack)
                }
                Err(ErrorCode::RateLimited) => {
                    metrics.chat_rate_limited.inc();
                    Err(ErrorCode::RateLimited)
                }
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
        RoomCommand::Recall { conn, message_id, reply } => {
            let result = state.recall(conn, &message_id, now, now_ms);
            if result.is_ok() {
                metrics.events_sequenced.inc();
            }
            let _ = reply.send(result);
        }
    }
}
