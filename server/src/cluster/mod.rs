//! The fleet's shared log on Redis: one sequence per room across every
//! node, kept in a Redis stream and published on the room's channel in the
//! same atomic step (`sequence.lua`), so every node sees a room's events in
//! sequence order and history holds exactly what was published.
//!
//! * [`Fleet`] is a node's link: [`Fleet::sequence`] hands a batch of a
//!   room's encoded events to Redis, which numbers them; a node subscribes
//!   to a room's channel ([`Fleet::subscribe`]) while it has members there,
//!   and what arrives is decoded once and handed on as a [`Delivery`];
//!   [`Fleet::replay`] reads a range back from the stream.
//! * [`Orderer`] is the per-room check on what arrives: events in sequence
//!   order pass, a repeat is dropped, and a hole (a message lost while Redis
//!   was unreachable, or a delivery dropped because the node was behind) is
//!   named so the caller replays it from the stream before going on.
//!
//! Keys are hash-tagged by room (`rc:{ROOM}:…`), so a Redis Cluster keeps a
//! room's keys and its (sharded) channel in one slot; `link` hides whether
//! the node talks to one Redis or a cluster. This module is the only one
//! that imports `redis`.

mod ledger;
mod link;
mod quiz;
mod sanctions;
mod settings;

pub use ledger::FleetLedger;
pub use quiz::Revealed;
pub use sanctions::{RELOAD_EVERY, SanctionAction, SanctionChange};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use link::Link;
use prost::Message;
use redis::{AsyncCommands, PushInfo, Script};
use roomcast_protocol::{MAX_SERVER_FRAME_BYTES, RoomId, v1};
use tokio::sync::mpsc;

/// Most deliveries waiting for the node; beyond it a delivery is dropped
/// and counted, and the rooms it was for fill the hole from the stream.
pub const DELIVERY_QUEUE: usize = 4_096;

/// Sanction changes waiting for the node.
const SANCTION_QUEUE: usize = 1_024;

/// Most events one `sequence` call carries.
pub const MAX_BATCH: usize = 256;

/// The room's keys and channel.
fn keys(room: &RoomId) -> [String; 4] {
    let r = room.as_str();
    [
        format!("rc:{{{r}}}:seq"),
        format!("rc:{{{r}}}:log"),
        format!("rc:{{{r}}}:epoch"),
        format!("rc:{{{r}}}:events"),
    ]
}

/// Where each node's last batch (or report) number in a room is kept, so a
/// script run twice by a client library's retry changes nothing the second
/// time.
fn done_key(room: &RoomId, what: &str) -> String {
    format!("rc:{{{}}}:{what}", room.as_str())
}

/// The room a channel name is for.
fn room_of(channel: &str) -> Option<RoomId> {
    let inner = channel.strip_prefix("rc:{")?.strip_suffix("}:events")?;
    RoomId::new(inner).ok()
}

/// How long a room's like total outlives its last report.
const LIKES_TTL: Duration = Duration::from_secs(24 * 3600);

/// The likes one room instance (a room's life on one node) has counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LikesCounted {
    /// The room's epoch on this node.
    pub instance: u64,
    /// Every like it counted so far.
    pub total: u64,
}

/// A node that carries a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomNode {
    /// Where clients reach it (empty if it does not say).
    pub address: String,
    /// The room's users present there.
    pub online: u64,
}

/// A room's figures across the fleet, as a report returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCounts {
    /// Users present on the other nodes.
    pub others_online: u64,
    /// The room's like total, every node's counted likes included.
    pub like_total: u64,
    /// The first page of the other nodes' users, node by node, when the
    /// report asked for it.
    pub others_page: Option<Vec<v1::User>>,
}

/// Events of one room as they arrived on its channel, in sequence order
/// within the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub room: RoomId,
    pub events: Vec<v1::RoomEvent>,
}

/// One user's place in a room's gift ranking: user id, name, value given.
pub type RankTotal = (String, String, u64);

/// What Redis made of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// The first event's sequence number; the rest follow it.
    pub first: u64,
    /// The room's epoch (hex), the same on every node.
    pub epoch: String,
    /// Redis had lost the room's numbering: `epoch` is a new one, numbered
    /// from 1.
    pub renumbered: bool,
}

/// Why the fleet could not do something.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("undecodable event from redis: {0}")]
    Decode(String),
    #[error("a batch holds 1 to {MAX_BATCH} events")]
    Batch,
    #[error("the fleet's Redis does not answer")]
    Unreachable,
}

/// How a node reaches the fleet's Redis.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://host:port`, or with `cluster` the seed nodes, comma-separated.
    pub redis: String,
    /// The URL names a Redis Cluster: rooms' channels are sharded.
    pub cluster: bool,
    /// Stream entries kept per room (approximately).
    pub history_len: usize,
    /// How long Redis may go unanswered before the node refuses joins.
    pub unreachable_after: Duration,
    /// The address clients reach this node at, named to the platform with
    /// the rooms it carries (`Fleet::room_nodes`); empty if unknown.
    pub advertise: String,
}

impl Options {
    /// A single Redis at `url`, with the defaults.
    pub fn new(url: impl Into<String>, history_len: usize) -> Self {
        Self {
            redis: url.into(),
            cluster: false,
            history_len,
            unreachable_after: Duration::from_secs(3),
            advertise: String::new(),
        }
    }
}

/// A node's link to the fleet's Redis (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    link: Arc<Link>,
    script: Arc<Script>,
    online: Arc<Script>,
    /// `PUBLISH`, or `SPUBLISH` in a cluster.
    publish: &'static str,
    /// This node's id in the rooms' online entries.
    node: Arc<str>,
    /// Stream entries kept per room (approximately).
    history_len: usize,
    /// Sanction changes as they arrive, until the node takes the receiver.
    sanction_changes: Arc<std::sync::Mutex<Option<mpsc::Receiver<SanctionChange>>>>,
    /// Quiz answers on their way to Redis (see `quiz`).
    answers: quiz::AnswerBatcher,
    /// Per room, the last quiz reveal this node heard of.
    reveals: Arc<quiz::RevealWatches>,
    /// Numbers this node's script calls, for `done_key`.
    calls: Arc<AtomicU64>,
    /// The address clients reach this node at (see [`Options::advertise`]).
    advertise: Arc<str>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("history_len", &self.history_len).finish_non_exhaustive()
    }
}

/// Splits a published batch into its events and decodes each, every length
/// checked before anything is read.
pub fn decode_batch(mut payload: &[u8]) -> Result<Vec<v1::RoomEvent>, FleetError> {
    let mut out = Vec::new();
    while payload.has_remaining() {
        if payload.len() < 4 {
            return Err(FleetError::Decode("truncated length".into()));
        }
        let len = payload.get_u32() as usize;
        if len > MAX_SERVER_FRAME_BYTES as usize || len > payload.len() {
            return Err(FleetError::Decode(format!("event of {len} bytes")));
        }
        let event = v1::RoomEvent::decode(&payload[..len]).map_err(|e| FleetError::Decode(e.to_string()))?;
        out.push(event);
        payload.advance(len);
    }
    Ok(out)
}

impl Fleet {
    /// Links to the Redis `options` name (RESP3, so one connection carries
    /// commands and subscriptions and resubscribes after a reconnect). What
    /// arrives on subscribed channels goes to `deliveries`; a delivery that
    /// finds the queue full is dropped and `dropped` is called. Redis need
    /// not be up yet: until it answers, [`Fleet::reachable`] is false.
    pub async fn connect(
        options: &Options,
        deliveries: mpsc::Sender<Delivery>,
        dropped: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, FleetError> {
        let (sanctions_tx, sanctions_rx) = mpsc::channel(SANCTION_QUEUE);
        let push = move |info: PushInfo| -> Result<(), ()> {
            let Some(msg) = redis::Msg::from_push_info(info) else { return Ok(()) };
            if msg.get_channel_name() == sanctions::SANCTIONS_CHANNEL {
                // A change that finds the queue full is made up by the next
                // reload of the whole hash.
                if let Some(change) = sanctions::decode(msg.get_payload_bytes()) {
                    let _ = sanctions_tx.try_send(change);
                }
                return Ok(());
            }
            let Some(room) = room_of(msg.get_channel_name()) else { return Ok(()) };
            match decode_batch(msg.get_payload_bytes()) {
                Ok(events) => {
                    if deliveries.try_send(Delivery { room, events }).is_err() {
                        dropped();
                    }
                }
                Err(e) => tracing::warn!(error = %e, room = %room, "dropping an undecodable delivery"),
            }
            Ok(())
        };
        let link = Link::new(&options.redis, options.cluster, options.unreachable_after, push)?;
        if !link.ping().await {
            tracing::warn!("the fleet's Redis does not answer yet: joins are refused until it does");
        } else if let Ok(conn) = link.conn().await {
            settings::check(conn).await;
        }
        link.keep_checking();
        let mut id = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        let (answers, answers_rx) = quiz::start_batcher();
        let fleet = Self {
            link,
            script: Arc::new(Script::new(include_str!("sequence.lua"))),
            online: Arc::new(Script::new(include_str!("online.lua"))),
            publish: if options.cluster { "SPUBLISH" } else { "PUBLISH" },
            node: u64::from_le_bytes(id).to_string().into(),
            history_len: options.history_len,
            sanction_changes: Arc::new(std::sync::Mutex::new(Some(sanctions_rx))),
            answers,
            reveals: Arc::default(),
            calls: Arc::new(AtomicU64::new(1)),
            advertise: options.advertise.as_str().into(),
        };
        tokio::spawn(quiz::run_batcher(fleet.clone(), answers_rx));
        Ok(fleet)
    }

    /// The sanction changes announced to the fleet (see `sanctions`), once:
    /// the node applies them.
    pub fn take_sanction_changes(&self) -> Option<mpsc::Receiver<SanctionChange>> {
        self.sanction_changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Changes each time Redis answers again after the connection dropped:
    /// a subscribed room may have missed what was published meanwhile, and
    /// reads it from its stream ([`Fleet::position`]).
    pub fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.link.reconnections()
    }

    /// `room`'s epoch and last sequence number now, as kept in Redis (an
    /// epoch of 0: none).
    pub async fn position(&self, room: &RoomId) -> Result<(u64, u64), FleetError> {
        let [seq, _, epoch, _] = keys(room);
        let mut conn = self.link.conn().await?;
        let (epoch, last): (Option<String>, Option<u64>) =
            redis::pipe().atomic().get(epoch).get(seq).query_async(&mut conn).await?;
        self.link.answered();
        let epoch = epoch.and_then(|e| u64::from_str_radix(&e, 16).ok()).unwrap_or(0);
        Ok((epoch, last.unwrap_or(0)))
    }

    /// Whether Redis has answered within the bound (see [`Options`]).
    pub fn reachable(&self) -> bool {
        self.link.reachable()
    }

    /// The round trip of the last ping Redis answered (one every 500 ms),
    /// if it ever answered one.
    pub fn ping_rtt(&self) -> Option<std::time::Duration> {
        self.link.last_rtt()
    }

    /// `result`, noting that Redis answered when it is Ok.
    fn answered<T>(&self, result: Result<T, FleetError>) -> Result<T, FleetError> {
        if result.is_ok() {
            self.link.answered();
        }
        result
    }

    /// Numbers `events` (each an encoded `RoomEvent` without `seq` and
    /// `message_id`) as the room's next, keeps them in its stream and
    /// publishes them, atomically. `followed` is the epoch this node's room
    /// follows and `seen` the last sequence number it has in it: when Redis
    /// has lost the room's numbering (the epoch gone, or the counter behind
    /// `seen`), the room takes a new epoch, numbered from 1
    /// (`sequence.lua`).
    /// `gifts` (user, name, value) are what the batch's gift events add to
    /// the room's ranking, counted with the numbering.
    pub async fn sequence(
        &self,
        room: &RoomId,
        followed: u64,
        seen: u64,
        events: &[Bytes],
        gifts: &[(&str, &str, u64)],
    ) -> Result<Sequenced, FleetError> {
        if events.is_empty() || events.len() > MAX_BATCH || gifts.len() > events.len() {
            return Err(FleetError::Batch);
        }
        let [seq, log, epoch_key, channel] = keys(room);
        let mut invocation = self.script.key(seq);
        invocation.key(log).key(epoch_key).key(done_key(room, "batches"));
        invocation.key(done_key(room, "rank")).key(done_key(room, "rank:names"));
        invocation.arg(channel).arg(self.history_len).arg(format!("{followed:x}"));
        invocation.arg(self.publish).arg(&*self.node).arg(self.calls.fetch_add(1, Ordering::Relaxed));
        let fresh = roomcast_protocol::unix_ms(std::time::SystemTime::now()).max(followed + 1);
        invocation.arg(seen).arg(format!("{fresh:x}")).arg(gifts.len());
        for (user, name, value) in gifts {
            invocation.arg(*user).arg(*name).arg(*value);
        }
        for e in events {
            invocation.arg(e.as_ref());
        }
        let mut conn = self.link.conn().await?;
        let reply = invocation.invoke_async(&mut conn).await.map_err(FleetError::from);
        let (first, epoch, lost): (u64, String, u8) = self.answered(reply)?;
        Ok(Sequenced { first, epoch, renumbered: lost == 1 })
    }

    /// Starts receiving `room`'s events.
    pub async fn subscribe(&self, room: &RoomId) -> Result<(), FleetError> {
        let [.., channel] = keys(room);
        let result = self.link.conn().await?.subscribe(channel).await;
        self.answered(result)
    }

    /// Stops receiving `room`'s events.
    pub async fn unsubscribe(&self, room: &RoomId) -> Result<(), FleetError> {
        let [.., channel] = keys(room);
        self.link.conn().await?.unsubscribe(channel).await
    }

    /// Reports `present` users of `room` on this node (and the first `page`
    /// of them), kept for `ttl` unless reported again, and the `likes` this
    /// room instance has counted so far; returns what the rest of the fleet
    /// has, with up to `pages` of the other nodes' pages.
    pub async fn report(
        &self,
        room: &RoomId,
        present: u64,
        likes: LikesCounted,
        page: &[v1::User],
        pages: usize,
        ttl: Duration,
    ) -> Result<FleetCounts, FleetError> {
        let r = room.as_str();
        let now = roomcast_protocol::unix_ms(std::time::SystemTime::now());
        let page: Vec<(&str, &str, i32)> =
            page.iter().map(|u| (u.user_id.as_str(), u.display_name.as_str(), u.role)).collect();
        let page = serde_json::to_string(&page).map_err(|e| FleetError::Decode(e.to_string()))?;
        let mut conn = self.link.conn().await?;
        let counts = self
            .online
            .key(format!("rc:{{{r}}}:online"))
            .key(format!("rc:{{{r}}}:online:exp"))
            .key(format!("rc:{{{r}}}:likes"))
            .key(format!("rc:{{{r}}}:page"))
            .key(format!("rc:{{{r}}}:addr"))
            .arg(&*self.node)
            .arg(present)
            .arg(now)
            .arg(ttl.as_millis() as u64)
            .arg(format!("{}:{:x}", self.node, likes.instance))
            .arg(likes.total)
            .arg(LIKES_TTL.as_millis() as u64)
            .arg(page)
            .arg(&*self.advertise)
            .arg(pages)
            .invoke_async(&mut conn)
            .await
            .map(|(others_online, like_total, got): (u64, u64, Vec<String>)| FleetCounts {
                others_online,
                like_total,
                others_page: (pages > 0).then(|| {
                    got.iter()
                        .filter_map(|p| serde_json::from_str::<Vec<(String, String, i32)>>(p).ok())
                        .flatten()
                        .map(|(user_id, display_name, role)| v1::User { user_id, display_name, role })
                        .collect()
                }),
            })
            .map_err(FleetError::from);
        self.answered(counts)
    }

    /// The nodes that carry `room` now, by the address clients reach them
    /// at, busiest first: where a platform sends the room's next viewers,
    /// so that a room stays on as few nodes as its viewers need.
    pub async fn room_nodes(&self, room: &RoomId) -> Result<Vec<RoomNode>, FleetError> {
        let r = room.as_str();
        let now = roomcast_protocol::unix_ms(std::time::SystemTime::now());
        let mut conn = self.link.conn().await?;
        let (online, addrs, live): (HashMap<String, u64>, HashMap<String, String>, Vec<String>) =
            redis::pipe()
                .hgetall(format!("rc:{{{r}}}:online"))
                .hgetall(format!("rc:{{{r}}}:addr"))
                .zrangebyscore(format!("rc:{{{r}}}:online:exp"), now, "+inf")
                .query_async(&mut conn)
                .await?;
        self.link.answered();
        let mut nodes: Vec<RoomNode> = live
            .iter()
            .filter_map(|node| {
                let online = *online.get(node)?;
                Some(RoomNode { address: addrs.get(node).cloned().unwrap_or_default(), online })
            })
            .collect();
        nodes.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.address.cmp(&b.address)));
        Ok(nodes)
    }

    /// `room`'s epoch, the same on every node: `proposal` if the room has
    /// none yet.
    pub async fn epoch(&self, room: &RoomId, proposal: u64) -> Result<u64, FleetError> {
        let [_, _, key, _] = keys(room);
        let mut conn = self.link.conn().await?;
        let _: Option<String> =
            redis::cmd("SET").arg(&key).arg(format!("{proposal:x}")).arg("NX").query_async(&mut conn).await?;
        let hex: String = conn.get(&key).await?;
        u64::from_str_radix(&hex, 16).map_err(|e| FleetError::Decode(format!("epoch {hex:?}: {e}")))
    }

    /// `room`'s gift ranking in the fleet, (user, name, value) highest
    /// first, and its last sequence number, read together: the totals hold
    /// exactly the gifts numbered up to that number.
    pub async fn ranking(&self, room: &RoomId) -> Result<(Vec<RankTotal>, u64), FleetError> {
        let [seq, ..] = keys(room);
        let mut conn = self.link.conn().await?;
        type Read = (Vec<(String, f64)>, HashMap<String, String>, Option<u64>);
        let (totals, names, last): Read = redis::pipe()
            .atomic()
            .zrevrange_withscores(done_key(room, "rank"), 0, -1)
            .hgetall(done_key(room, "rank:names"))
            .get(seq)
            .query_async(&mut conn)
            .await?;
        self.link.answered();
        let ranking = totals
            .into_iter()
            .map(|(user, value)| {
                let name = names.get(&user).cloned().unwrap_or_default();
                (user, name, value as u64)
            })
            .collect();
        Ok((ranking, last.unwrap_or(0)))
    }

    /// Whether the platform closed `room` (`Some(false)`: opened it), as
    /// any node last said.
    pub async fn closed(&self, room: &RoomId) -> Result<Option<bool>, FleetError> {
        let mut conn = self.link.conn().await?;
        let state: Option<String> = conn.get(done_key(room, "lifecycle")).await?;
        self.link.answered();
        Ok(state.map(|s| s == "closed"))
    }

    /// Notes for the fleet that the platform closed `room` (remembered as
    /// long as a node remembers it, a day).
    pub async fn close(&self, room: &RoomId, remember: Duration) -> Result<(), FleetError> {
        let mut conn = self.link.conn().await?;
        let ms = remember.as_millis() as u64;
        let () = redis::cmd("SET")
            .arg(done_key(room, "lifecycle"))
            .arg("closed")
            .arg("PX")
            .arg(ms.max(1))
            .query_async(&mut conn)
            .await?;
        self.link.answered();
        Ok(())
    }

    /// Opens `room` for the fleet; a closed room starts a new incarnation
    /// (`lifecycle.lua`). Whether it was closed.
    pub async fn open(&self, room: &RoomId) -> Result<bool, FleetError> {
        let [seq, log, epoch, _] = keys(room);
        let fresh = roomcast_protocol::unix_ms(std::time::SystemTime::now());
        let mut conn = self.link.conn().await?;
        let reopened: u8 = Script::new(include_str!("lifecycle.lua"))
            .key(done_key(room, "lifecycle"))
            .key(epoch)
            .key(seq)
            .key(log)
            .key(done_key(room, "rank"))
            .key(done_key(room, "rank:names"))
            .arg(format!("{fresh:x}"))
            .invoke_async(&mut conn)
            .await?;
        self.link.answered();
        Ok(reopened == 1)
    }

    /// `room`'s last sequence number (0 before its first event).
    pub async fn current_seq(&self, room: &RoomId) -> Result<u64, FleetError> {
        let [seq, ..] = keys(room);
        let n: Option<u64> = self.link.conn().await?.get(seq).await?;
        Ok(n.unwrap_or(0))
    }

    /// The events `from..=to` of `room` still in its stream, in order.
    pub async fn replay(&self, room: &RoomId, from: u64, to: u64) -> Result<Vec<v1::RoomEvent>, FleetError> {
        let [_, log, ..] = keys(room);
        let reply: redis::streams::StreamRangeReply =
            self.link.conn().await?.xrange(log, format!("{from}-1"), format!("{to}-1")).await?;
        reply
            .ids
            .iter()
            .map(|entry| {
                let bytes: Vec<u8> =
                    entry.get("e").ok_or_else(|| FleetError::Decode("entry without event".into()))?;
                if bytes.len() > MAX_SERVER_FRAME_BYTES as usize {
                    return Err(FleetError::Decode(format!("event of {} bytes", bytes.len())));
                }
                v1::RoomEvent::decode(bytes.as_slice()).map_err(|e| FleetError::Decode(e.to_string()))
            })
            .collect()
    }
}

/// What to do with an event that arrived for a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The next in sequence: take it.
    Next,
    /// Seen before: drop it.
    Repeat,
    /// Events `from..=to` never arrived: replay them from the stream first.
    Hole { from: u64, to: u64 },
}

/// Per-room check of arriving sequence numbers (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Orderer {
    /// The last sequence number taken.
    last: u64,
}

impl Orderer {
    /// Starting after `last` (the room's sequence number when this node
    /// began to follow it).
    pub fn after(last: u64) -> Self {
        Self { last }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// What to do with `seq`. `Next` moves the position on.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        if seq <= self.last {
            Arrival::Repeat
        } else if seq == self.last + 1 {
            self.last = seq;
            Arrival::Next
        } else {
            Arrival::Hole { from: self.last + 1, to: seq - 1 }
        }
    }

    /// The hole up to `to` was filled (or given up on): go on after it.
    pub fn filled(&mut self, to: u64) {
        self.last = self.last.max(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_pass_in_order_drop_repeats_and_name_holes() {
        let mut o = Orderer::after(4);
        assert_eq!(o.arrive(5), Arrival::Next);
        assert_eq!(o.arrive(5), Arrival::Repeat);
        assert_eq!(o.arrive(3), Arrival::Repeat);
        assert_eq!(o.arrive(9), Arrival::Hole { from: 6, to: 8 });
        assert_eq!(o.last(), 5, "a hole moves nothing");
        o.filled(8);
        assert_eq!(o.arrive(9), Arrival::Next);
    }

    #[test]
    fn channels_name_their_room_and_batches_are_checked_before_decoding() {
        let room = RoomId::new("live:42").unwrap();
        assert_eq!(room_of(&keys(&room)[3]), Some(room));
        assert_eq!(room_of("rc:{bad room}:events"), None);
        assert_eq!(room_of("other"), None);
        let event = v1::RoomEvent { room: "r".into(), seq: 3, ..Default::default() }.encode_to_vec();
        let mut batch = (event.len() as u32).to_be_bytes().to_vec();
        batch.extend_from_slice(&event);
        assert_eq!(decode_batch(&batch).unwrap()[0].seq, 3);
        assert!(decode_batch(&batch[..batch.len() - 1]).is_err(), "truncated");
        assert!(decode_batch(&[0, 0]).is_err());
        assert!(decode_batch(&u32::MAX.to_be_bytes()).is_err(), "a length beyond the frame bound");
        assert!(decode_batch(&[]).unwrap().is_empty());
    }
}
