//! Rooms: one task per room owns its [`state::RoomState`]; connections talk
//! to it through a bounded channel of [`RoomCommand`]s.
//!
//! **Architecture Invariant:** the room task is the only writer of a room's
//! state, so sequencing needs no lock; per-member fan-out is a push into that
//! member's [`fanout::Outbox`].

pub mod fanout;
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
use fanout::Outbox;
use state::{ChatRequest, ConnId, RoomLimits, RoomState};

/// Everything that can change a room. The room task handles them in arrival
/// order, one at a time.
#[derive(Debug)]
pub enum RoomCommand {
    Join {
        conn: ConnId,
        identity: Identity,
        outbox: Arc<Outbox>,
        last_seq: Option<u64>,
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
}

/// A live room's command channel.
pub type RoomHandle = mpsc::Sender<RoomCommand>;

/// The node's rooms, by id. Rooms are created on first join and removed
/// after they have been empty for `empty_room_ttl_secs`.
#[derive(Debug)]
pub struct Rooms {
    map: Mutex<HashMap<RoomId, RoomHandle>>,
    config: RoomConfig,
}

impl Rooms {
    pub fn new(config: RoomConfig) -> Arc<Self> {
        Arc::new(Self { map: Mutex::default(), config })
    }

    /// Number of rooms alive on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, RoomHandle>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(self: &Arc<Self>, id: &RoomId) -> RoomHandle {
        let mut map = self.lock();
        if let Some(h) = map.get(id)
            && !h.is_closed()
        {
            return h.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.command_queue.max(1));
        map.insert(id.clone(), tx.clone());
        let rooms = self.clone();
        let id = id.clone();
        let span = info_span!("room", room = %id);
        tokio::spawn(run_room(rooms, id, rx).instrument(span));
        tx
    }

    /// Joins `conn` to a room, creating the room if needed. Returns the room's
    /// handle (for later commands) and its snapshot.
    pub async fn join(
        self: &Arc<Self>,
        id: &RoomId,
        conn: ConnId,
        identity: &Identity,
        outbox: &Arc<Outbox>,
        last_seq: Option<u64>,
    ) -> Result<(RoomHandle, v1::Joined), ErrorCode> {
        // A room that is shutting down for idleness drops the command; the
        // next attempt creates a fresh room.
        for _ in 0..3 {
            let handle = self.handle(id);
            let (reply, rx) = oneshot::channel();
            let cmd = RoomCommand::Join {
                conn,
                identity: identity.clone(),
                outbox: outbox.clone(),
                last_seq,
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
        true
    }
}

fn limits(c: &RoomConfig) -> RoomLimits {
    RoomLimits {
        history_len: c.history_len,
        join_history: c.join_history,
        viewer_page: c.viewer_page,
        online_push_interval: Duration::from_millis(c.online_push_interval_ms),
    }
}

async fn run_room(rooms: Arc<Rooms>, id: RoomId, mut rx: mpsc::Receiver<RoomCommand>) {
    let empty_ttl = Duration::from_secs(rooms.config.empty_room_ttl_secs);
    let epoch = unix_ms(SystemTime::now());
    let mut state = RoomState::new(id.clone(), epoch, limits(&rooms.config));
    let mut empty_since = Some(Instant::now());
    debug!("room opened");
    loop {
        let online_due = state.online_due();
        let expiry = empty_since.map(|t| t + empty_ttl);
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let now_ms = unix_ms(SystemTime::now());
                match cmd {
                    RoomCommand::Join { conn, identity, outbox, last_seq, reply } => {
                        let joined = state.join(conn, identity, outbox, last_seq, now_ms);
                        // The joiner may have gone already; its leave follows.
                        let _ = reply.send(joined);
                    }
                    RoomCommand::Leave { conn } => {
                        state.leave(conn);
                    }
                    RoomCommand::Presence { conn, present } => state.set_present(conn, present),
                    RoomCommand::Publish { conn, chat, reply } => {
                        let _ = reply.send(state.publish(conn, chat, now_ms));
                    }
                }
                empty_since = match (state.is_empty(), empty_since) {
                    (true, None) => Some(Instant::now()),
                    (true, since) => since,
                    (false, _) => None,
                };
            }
            () = sleep_until(online_due.unwrap_or_else(Instant::now)), if online_due.is_some() => {
                state.push_online(Instant::now(), unix_ms(SystemTime::now()));
            }
            () = sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                if rooms.remove_if_idle(&id, &rx) {
                    break;
                }
            }
        }
    }
    debug!(seq = state.current_seq(), "room closed");
}
