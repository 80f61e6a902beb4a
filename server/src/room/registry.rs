//! The node's rooms, by id: created on first join, removed after they have
//! been empty for `empty_room_ttl_secs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use roomcast_protocol::{ErrorCode, RoomId, unix_ms, v1};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use super::archive::Archive;
use super::fanout::Outbox;
use super::feed::Feed;
use super::handle::{Command, JoinRequest, Joined, RoomHandle};
use super::history::{HistoryLog, MAX_FETCH};
use super::state::{AdminMessage, QuizEvent, RoomInfo, RoomState};
use super::task::run_room;
use crate::cluster::{Delivery, Fleet};

/// How long the node remembers that the platform closed a room.
const CLOSED_MEMORY: Duration = Duration::from_secs(24 * 3600);
use crate::config::RoomConfig;
use crate::metrics::Metrics;
use crate::webhooks::{HookEvent, Hooks, LeaveReason};

#[derive(Debug, Clone)]
struct Entry {
    handle: RoomHandle,
    history: Arc<HistoryLog>,
    stats: Arc<RoomStats>,
}

/// A live room's figures, written by its task after every step, so that
/// listing rooms asks no room anything.
#[derive(Debug, Default)]
pub(super) struct RoomStats {
    online: AtomicU64,
    members: AtomicU64,
    seq: AtomicU64,
}

impl RoomStats {
    pub(super) fn record(&self, state: &RoomState) {
        self.online.store(state.online_count(), Ordering::Relaxed);
        self.members.store(state.member_count() as u64, Ordering::Relaxed);
        self.seq.store(state.current_seq(), Ordering::Relaxed);
    }
}

/// Whether a room may be joined, as the platform decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Nothing decided: joining creates the room, unless the node requires
    /// rooms to be opened first.
    Auto,
    /// Opened by the platform or a host.
    Open,
    /// Closed by the platform: joins are refused with `ROOM_CLOSED` until
    /// it is opened again.
    Closed,
}

/// A live room, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: RoomId,
    pub online: u64,
    pub members: u64,
    pub current_seq: u64,
    pub lifecycle: Lifecycle,
}

/// Where a platform action on users applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserScope<'a> {
    Room(&'a RoomId),
    Node,
}

pub use roomcast_protocol::HistoryRange;

#[derive(Debug)]
pub struct Rooms {
    map: Mutex<HashMap<RoomId, Entry>>,
    /// The platform's decisions per room, kept while the room comes and
    /// goes. Bounded by what the platform opens and closes; closed rooms are
    /// forgotten a day after closing.
    lifecycle: Mutex<HashMap<RoomId, (Lifecycle, Instant)>>,
    pub(super) config: RoomConfig,
    pub(super) metrics: Arc<Metrics>,
    /// Where rooms report joins, leaves, emptiness and closing.
    pub(super) hooks: Hooks,
    /// Where sequenced events are kept for replay after the live.
    archive: Option<Arc<Archive>>,
    /// In a fleet: the shared log rooms follow.
    pub(super) fleet: Option<Fleet>,
}

impl Rooms {
    pub fn new(config: RoomConfig, metrics: Arc<Metrics>, hooks: Hooks) -> Arc<Self> {
        Self::with_archive(config, metrics, hooks, None)
    }

    /// Rooms whose sequenced events are also kept in `archive`, readable
    /// after the room is gone.
    pub fn with_archive(
        config: RoomConfig,
        metrics: Arc<Metrics>,
        hooks: Hooks,
        archive: Option<Arc<Archive>>,
    ) -> Arc<Self> {
        Self::build(config, metrics, hooks, archive, None)
    }

    /// Rooms that follow `fleet`'s shared log (see [`super::fleet`]), with
    /// `archive` on the node's disk.
    pub fn in_fleet(
        config: RoomConfig,
        metrics: Arc<Metrics>,
        hooks: Hooks,
        archive: Option<Arc<Archive>>,
        fleet: Fleet,
    ) -> Arc<Self> {
        Self::build(config, metrics, hooks, archive, Some(fleet))
    }

    fn build(
        config: RoomConfig,
        metrics: Arc<Metrics>,
        hooks: Hooks,
        archive: Option<Arc<Archive>>,
        fleet: Option<Fleet>,
    ) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::default(),
            lifecycle: Mutex::default(),
            config,
            metrics,
            hooks,
            archive,
            fleet,
        })
    }

    /// Hands events the fleet numbered to their room, if it is live here.
    /// A room whose queue is full misses them and reads them back from the
    /// stream when the next delivery shows the hole.
    pub fn deliver(&self, delivery: Delivery) {
        let handle = self.lock().get(&delivery.room).map(|e| e.handle.clone());
        if let Some(handle) = handle
            && handle.tx.try_send(Command::Ingest { events: delivery.events }).is_err()
        {
            debug!(room = %delivery.room, "delivery dropped: the room is behind");
        }
    }

    /// Asks every live room to read what its stream holds beyond what it
    /// has taken (the fleet's Redis answers again after the connection
    /// dropped, and subscriptions may have missed events meanwhile).
    pub fn catch_up(&self) {
        let handles: Vec<RoomHandle> = self.lock().values().map(|e| e.handle.clone()).collect();
        for handle in handles {
            let _ = handle.tx.try_send(Command::CatchUp);
        }
    }

    /// The fleet these rooms follow, if any.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
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
        // The room's epoch: message ids and its archive file carry it.
        let epoch = unix_ms(SystemTime::now());
        let (len, age) = (self.config.history_len, Duration::from_secs(self.config.history_max_age_secs));
        let history = match &self.archive {
            Some(archive) => HistoryLog::archived(len, age, archive.sink(id, epoch)),
            None => HistoryLog::new(len, age),
        };
        let handle = RoomHandle { tx, likes: Arc::default() };
        let entry = Entry { handle, history, stats: Arc::default() };
        map.insert(id.clone(), entry.clone());
        self.metrics.rooms.set(map.len() as i64);
        let span = info_span!("room", room = %id);
        let task = run_room(
            self.clone(),
            id.clone(),
            epoch,
            rx,
            entry.history.clone(),
            entry.stats.clone(),
            entry.handle.likes.clone(),
        );
        tokio::spawn(task.instrument(span));
        entry
    }

    /// Where rooms' sequenced events are archived, if anywhere.
    pub(super) fn archive(&self) -> Option<&Arc<Archive>> {
        self.archive.as_ref()
    }

    /// The live room `id`, if any.
    fn live(&self, id: &RoomId) -> Result<Entry, ErrorCode> {
        self.lock().get(id).filter(|e| !e.handle.tx.is_closed()).cloned().ok_or(ErrorCode::NotFound)
    }

    fn lifecycle_of(&self, id: &RoomId) -> Lifecycle {
        let map = self.lifecycle.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(id).map_or(Lifecycle::Auto, |(l, _)| *l)
    }

    fn set_lifecycle(&self, id: &RoomId, l: Lifecycle) {
        let mut map = self.lifecycle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, (l, at)| *l != Lifecycle::Closed || now.duration_since(*at) < CLOSED_MEMORY);
        map.insert(id.clone(), (l, now));
    }

    /// Whether `who` may join `id` as the platform decided; a host's (or
    /// admin's) join opens a room the node requires to be opened. In a
    /// fleet the platform may have decided on another node: a room this
    /// node knows closed, or one it must see opened first, is looked up in
    /// the fleet (a join into an open room asks nothing), and a room
    /// another node reopened replaces its closed incarnation here.
    async fn admit(self: &Arc<Self>, id: &RoomId, who: &crate::auth::Identity) -> Result<(), ErrorCode> {
        let local = self.lifecycle_of(id);
        let needs_open = local == Lifecycle::Auto && self.config.require_open;
        if let Some(fleet) = &self.fleet
            && (local == Lifecycle::Closed || needs_open)
        {
            match fleet.closed(id).await.map_err(|_| ErrorCode::Unavailable)? {
                Some(false) => {
                    if local == Lifecycle::Closed {
                        self.forget_closed(id);
                    }
                    self.set_lifecycle(id, Lifecycle::Open);
                    return Ok(());
                }
                Some(true) => {
                    self.set_lifecycle(id, Lifecycle::Closed);
                    return Err(ErrorCode::RoomClosed);
                }
                None if local == Lifecycle::Closed => return Err(ErrorCode::RoomClosed),
                None => {}
            }
        }
        match local {
            Lifecycle::Closed => Err(ErrorCode::RoomClosed),
            Lifecycle::Open => Ok(()),
            Lifecycle::Auto if !self.config.require_open => Ok(()),
            Lifecycle::Auto if who.role != crate::auth::Role::Viewer => {
                self.open_in_fleet(id).await?;
                self.set_lifecycle(id, Lifecycle::Open);
                Ok(())
            }
            Lifecycle::Auto => Err(ErrorCode::RoomClosed),
        }
    }

    /// Drops a closed incarnation from the map: it was emptied when it
    /// closed, and its task ends on its own without touching the next one.
    fn forget_closed(&self, id: &RoomId) {
        let mut map = self.lock();
        map.remove(id);
        self.metrics.rooms.set(map.len() as i64);
    }

    /// In a fleet: opens `id` for every node (`Fleet::open`).
    async fn open_in_fleet(&self, id: &RoomId) -> Result<(), ErrorCode> {
        match &self.fleet {
            Some(fleet) => fleet.open(id).await.map(drop).map_err(|_| ErrorCode::Unavailable),
            None => Ok(()),
        }
    }

    /// The room's task learned from the fleet that the platform closed it
    /// (its closing status came from another node).
    pub(super) fn closed_elsewhere(&self, id: &RoomId) {
        self.set_lifecycle(id, Lifecycle::Closed);
    }

    /// Whether another incarnation of `id` than the one whose figures are
    /// `stats` is live here now.
    pub(super) fn has_successor(&self, id: &RoomId, stats: &Arc<RoomStats>) -> bool {
        self.lock().get(id).is_some_and(|e| !Arc::ptr_eq(&e.stats, stats) && !e.handle.tx.is_closed())
    }

    /// The live rooms, busiest (most online) first.
    pub fn list(&self) -> Vec<RoomSummary> {
        let entries: Vec<(RoomId, Entry)> =
            self.lock().iter().map(|(id, e)| (id.clone(), e.clone())).collect();
        let mut out: Vec<RoomSummary> = entries
            .into_iter()
            .map(|(room, e)| RoomSummary {
                lifecycle: self.lifecycle_of(&room),
                room,
                online: e.stats.online.load(Ordering::Relaxed),
                members: e.stats.members.load(Ordering::Relaxed),
                current_seq: e.stats.seq.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| (b.online, b.members, &a.room).cmp(&(a.online, a.members, &b.room)));
        out
    }

    /// A live room's figures and a page of its present users.
    pub async fn info(
        &self,
        id: &RoomId,
        offset: usize,
        limit: usize,
    ) -> Result<(RoomInfo, Lifecycle), ErrorCode> {
        let e = self.live(id)?;
        let info =
            e.handle.call(|reply| Command::Info { offset, limit, reply }).await.ok_or(ErrorCode::NotFound)?;
        Ok((info, self.lifecycle_of(id)))
    }

    /// A live room's whole gift ranking, highest first.
    pub async fn ranking(&self, id: &RoomId) -> Result<Vec<v1::RankEntry>, ErrorCode> {
        let e = self.live(id)?;
        e.handle.call(|reply| Command::Ranking { reply }).await.ok_or(ErrorCode::NotFound)
    }

    /// Publishes a message from the platform into a live room.
    pub async fn publish(&self, id: &RoomId, msg: AdminMessage) -> Result<v1::ChatAck, ErrorCode> {
        if self.lifecycle_of(id) == Lifecycle::Closed {
            return Err(ErrorCode::RoomClosed);
        }
        let e = self.live(id)?;
        let (reply, rx) = oneshot::channel();
        e.handle.tx.send(Command::AdminPublish { msg, reply }).await.map_err(|_| ErrorCode::NotFound)?;
        rx.await.unwrap_or(Err(ErrorCode::Internal))
    }

    /// Sequences a quiz event in a live room and returns its sequence number.
    pub async fn quiz_event(&self, id: &RoomId, event: QuizEvent) -> Result<u64, ErrorCode> {
        if self.lifecycle_of(id) == Lifecycle::Closed {
            return Err(ErrorCode::RoomClosed);
        }
        let e = self.live(id)?;
        let (reply, rx) = oneshot::channel();
        e.handle.tx.send(Command::Quiz { event, reply }).await.map_err(|_| ErrorCode::NotFound)?;
        rx.await.unwrap_or(Err(ErrorCode::Internal))
    }

    /// Recalls any kept message of a live room.
    pub async fn recall(&self, id: &RoomId, message_id: &str) -> Result<v1::Recalled, ErrorCode> {
        let e = self.live(id)?;
        let (reply, rx) = oneshot::channel();
        let cmd = Command::AdminRecall { message_id: message_id.to_string(), reply };
        e.handle.tx.send(cmd).await.map_err(|_| ErrorCode::NotFound)?;
        rx.await.unwrap_or(Err(ErrorCode::Internal))
    }

    /// Opens a room: it is created now (so the platform can publish before
    /// anyone joins), and joins are let in even when the node requires
    /// opening. A closed room opens again with a new epoch once its old
    /// incarnation has gone.
    /// In a fleet the room opens on every node, and a closed one starts its
    /// new incarnation there too.
    pub async fn open(self: &Arc<Self>, id: &RoomId) -> Result<(), ErrorCode> {
        self.open_in_fleet(id).await?;
        if self.lifecycle_of(id) == Lifecycle::Closed {
            self.forget_closed(id);
        }
        self.set_lifecycle(id, Lifecycle::Open);
        let _ = self.entry(id);
        Ok(())
    }

    /// Closes a room: joins are refused from now on, and a live room sends
    /// its members a final `RoomStatus` and removes them. Returns the final
    /// sequence number (0 when the room was not live). In a fleet every node
    /// refuses joins, and the closing status goes through the room's log
    /// (the room is followed here for it if it was not), so every node that
    /// carries the room removes its members.
    pub async fn close(self: &Arc<Self>, id: &RoomId, reason: &str) -> Result<u64, ErrorCode> {
        if let Some(fleet) = &self.fleet {
            fleet.close(id, CLOSED_MEMORY).await.map_err(|_| ErrorCode::Unavailable)?;
        }
        self.set_lifecycle(id, Lifecycle::Closed);
        self.hooks.emit(HookEvent::RoomClosed { room: id.clone(), by: "admin".into() });
        let e = match (self.live(id), &self.fleet) {
            (Ok(e), _) => e,
            (Err(_), Some(_)) => self.entry(id),
            (Err(_), None) => return Ok(0),
        };
        Ok(e.handle.call(|reply| Command::Close { reason: reason.to_string(), reply }).await.unwrap_or(0))
    }

    /// Removes every connection of `user` from one room or from every room,
    /// each with a `Removed` notice carrying `code`, as a ban. Returns how
    /// many were removed.
    pub async fn remove_user(
        &self,
        scope: UserScope<'_>,
        user: &str,
        code: ErrorCode,
        reason: &str,
    ) -> usize {
        self.remove(scope, user, code, reason, LeaveReason::Banned).await
    }

    /// [`Self::remove_user`] for a kick: the same removal, reported to the
    /// platform's webhooks as a kick.
    pub async fn kick_user(&self, scope: UserScope<'_>, user: &str, reason: &str) -> usize {
        self.remove(scope, user, ErrorCode::Banned, reason, LeaveReason::Kicked).await
    }

    async fn remove(
        &self,
        scope: UserScope<'_>,
        user: &str,
        code: ErrorCode,
        reason: &str,
        leave: LeaveReason,
    ) -> usize {
        let handles: Vec<RoomHandle> = match scope {
            UserScope::Room(id) => self.live(id).map(|e| vec![e.handle]).unwrap_or_default(),
            UserScope::Node => self.lock().values().map(|e| e.handle.clone()).collect(),
        };
        let mut removed = 0;
        for h in handles {
            let (user, reason) = (user.to_string(), reason.to_string());
            removed +=
                h.call(|reply| Command::RemoveUser { user, code, reason, leave, reply }).await.unwrap_or(0);
        }
        removed
    }

    /// Joins a room, creating it if needed.
    pub async fn join(self: &Arc<Self>, id: &RoomId, request: JoinRequest) -> Result<Joined, ErrorCode> {
        self.admit(id, &request.identity).await?;
        // A room that is shutting down for idleness drops the command; the
        // next attempt creates a fresh room.
        for _ in 0..3 {
            let Entry { handle, history, .. } = self.entry(id);
            let outbox = Outbox::new(self.config.outbox_capacity);
            let (reply, rx) = oneshot::channel();
            let filter = request.filter;
            let cmd = Command::Join { request: request.clone(), outbox: outbox.clone(), reply };
            if handle.tx.send(cmd).await.is_err() {
                continue;
            }
            if let Ok(answer) = rx.await {
                let answer = answer?;
                let feed = Feed::new(outbox, history, &answer, filter);
                return Ok(Joined { answer, handle, feed });
            }
        }
        Err(ErrorCode::Internal)
    }

    /// Reads a live room's history straight from its log, without queueing
    /// behind the room's live traffic. At most `limit` events (0: the cap),
    /// and what fits in one answer; `NOT_FOUND` for a room not live here.
    /// A page of a room's history: from the live room, or, once the room is
    /// gone, from the archive. Neither waits behind live traffic.
    pub async fn history(
        &self,
        id: &RoomId,
        range: HistoryRange,
        limit: u32,
    ) -> Result<v1::History, ErrorCode> {
        let limit = if limit == 0 { MAX_FETCH } else { limit as usize };
        let live = self.lock().get(id).map(|e| e.history.clone());
        let Some(log) = live else {
            let archive = self.archive.as_ref().ok_or(ErrorCode::NotFound)?;
            let page = archive.read(id, range, limit).await.ok_or(ErrorCode::NotFound)?;
            return Ok(v1::History {
                room: id.to_string(),
                events: page.events,
                oldest_seq: page.oldest_seq,
                truncated: page.truncated,
            });
        };
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
    /// A room replaced by a new incarnation (a reopened room) only ends its
    /// own task: `stats` tells the entry it belongs to.
    pub(super) fn remove_if_idle(
        &self,
        id: &RoomId,
        rx: &mpsc::Receiver<Command>,
        stats: &Arc<RoomStats>,
    ) -> bool {
        let mut map = self.lock();
        if !rx.is_empty() {
            return false;
        }
        if map.get(id).is_some_and(|e| Arc::ptr_eq(&e.stats, stats)) {
            map.remove(id);
            self.metrics.rooms.set(map.len() as i64);
        }
        true
    }
}
