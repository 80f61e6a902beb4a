//! Rounds: how the log reaches members, paced over the batching window.
//!
//! A *round* walks the members in slices, one slice per base window (a
//! tick), so that a room of 10,000 does not send 10,000 packets in one burst
//! and leave the last member waiting behind the first 9,999. Each member
//! gets everything after its cursor at most once per window. Members at the
//! same cursor share one batch, encoded once per slice; per member, serving
//! is a queue push.

use std::ops::Range;
use std::time::Duration;

use bytes::BytesMut;
use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::v1;
use tokio::time::Instant;

use super::super::fanout::{Item, PushOutcome, Slot};
use super::log::Pending;
use super::{ConnId, Filter, RoomState};

/// The most events the log holds before every member is brought up to date
/// at once; bounds the log when events come faster than rounds end.
pub(super) const MAX_LOG: usize = 256;

/// See `RoomState::ephemeral_linger`.
const EPHEMERAL_LINGER: Duration = Duration::from_secs(1);

/// The round in progress and the room's cadence.
#[derive(Debug, Default)]
pub(super) struct Rounds {
    /// The next member to serve and how many a tick serves.
    pub(super) round: Option<Round>,
    /// When the last round started.
    started: Option<Instant>,
    /// The last round ended with events still to send: the next one follows
    /// it on the room's cadence.
    back_to_back: bool,
}

/// Where a round is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    /// Index in `subscribers` of the next member to serve.
    next: usize,
    /// Members served per tick.
    chunk: usize,
    /// Ticks served so far in this round.
    ticks: u32,
}

/// What one flush did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub pushes: usize,
    pub deliveries: usize,
    pub shed_low: usize,
    pub shed_normal: usize,
    pub lagged_events: usize,
    /// Members whose outbox turned lagged in this flush.
    pub lagged_members: usize,
}

impl FlushStats {
    fn add(&mut self, o: PushOutcome) {
        self.pushes += 1;
        self.deliveries += o.queued;
        self.shed_low += o.shed_low;
        self.shed_normal += o.shed_normal;
        self.lagged_events += o.lagged;
        self.lagged_members += usize::from(o.turned_lagged);
    }
}

impl RoomState {
    /// The batching window for the room's current size: the base window up
    /// to 999 members, then one base window more per 500 members, up to the
    /// maximum. The packets a node sends for a busy room are members /
    /// window per second, so big rooms trade a little latency for far fewer
    /// packets.
    pub fn batch_window(&self) -> Duration {
        let scale = (self.roster.len() / 500).max(1) as u32;
        (self.limits.batch_window * scale).min(self.limits.max_batch_window.max(self.limits.batch_window))
    }

    /// How long ephemeral events alone ("user entered", like totals) may
    /// wait for a sequenced event to travel with: a second (or a window, if
    /// that is longer). A quiet room's members then get its decorations at
    /// most once a second, together with the online count, instead of a
    /// packet per notice: in a join storm those packets would go to every
    /// member for every newcomer.
    fn ephemeral_linger(&self) -> Duration {
        EPHEMERAL_LINGER.max(self.batch_window())
    }

    /// When the next tick is due. During a round: tick k is due k base
    /// windows after the round started. Otherwise, if the log holds events:
    /// now if the room has been quiet (a lone message is not held back), else
    /// `round_wait` after the previous round started, or earlier with a due
    /// online count when only ephemeral events wait. A log that reached
    /// `MAX_LOG` is due at once.
    pub fn flush_due(&self, now: Instant) -> Option<Instant> {
        if self.log.is_empty() && self.rounds.round.is_none() {
            return None;
        }
        if self.log.len() >= MAX_LOG {
            return Some(now);
        }
        if let Some(round) = self.rounds.round {
            // Tick k of a round is due k base windows after the round
            // started, however late the previous tick ran: a busy node
            // catches up instead of stretching every round.
            let started = self.rounds.started.unwrap_or(now);
            return Some((started + self.limits.batch_window * round.ticks).max(now));
        }
        let due = self.rounds.started.map_or(now, |s| (s + self.round_wait()).max(now));
        if self.log.has_sequenced() {
            return Some(due);
        }
        // Ephemeral events alone go with the online count if that is due
        // first.
        Some(self.online_change_due(now).map_or(due, |at| at.min(due)))
    }

    /// How long after the previous round the next one starts: a batching
    /// window when sequenced events wait, the ephemeral linger when only
    /// ephemeral ones do.
    fn round_wait(&self) -> Duration {
        if self.log.has_sequenced() { self.batch_window() } else { self.ephemeral_linger() }
    }

    /// Fan-out counts since the previous call.
    pub fn take_stats(&mut self) -> FlushStats {
        std::mem::take(&mut self.stats)
    }

    /// Events made since the previous call, by kind, named as
    /// [`EVENT_KINDS`](super::EVENT_KINDS).
    pub fn take_event_counts(&mut self) -> [u64; super::super::kinds::KINDS] {
        self.log.take_counts()
    }

    /// Serves the next slice of members, starting a round if none is in
    /// progress. A round has one tick per base window in the room's batching
    /// window, so it serves every member once per window, a slice at a time.
    pub fn tick(&mut self, now: Instant) {
        let round = match self.rounds.round {
            Some(round) => round,
            None if self.log.is_empty() => return,
            None => self.start_round(now),
        };
        let n = self.roster.subscribers.len();
        let end = if self.log.len() >= MAX_LOG { n } else { round.next.saturating_add(round.chunk).min(n) };
        self.serve(round.next.min(n)..end, now);
        if end >= n {
            self.end_round();
        } else {
            self.rounds.round = Some(Round { next: end, ticks: round.ticks + 1, ..round });
        }
    }

    /// Brings every member up to date now, finishing the round in progress.
    pub fn flush(&mut self, now: Instant) {
        if self.rounds.round.is_none() {
            if self.log.is_empty() {
                return;
            }
            self.start_round(now);
        }
        self.serve(0..self.roster.subscribers.len(), now);
        self.end_round();
    }

    fn start_round(&mut self, now: Instant) -> Round {
        let window = self.batch_window();
        // A changed online count that would be due within this window
        // travels with the round's batches instead of costing packets of its
        // own.
        if self.online_change_due(now).is_some_and(|at| at <= now + window) {
            let _ = self.stage_online(now, self.log.last_now_ms);
        }
        if self.likes_change_due(now).is_some_and(|at| at <= now + window) {
            let _ = self.stage_likes(now, self.log.last_now_ms);
        }
        let base = self.limits.batch_window;
        let ticks = if base.is_zero() { 1 } else { (window.as_nanos() / base.as_nanos()).max(1) as usize };
        let round = Round { next: 0, chunk: self.roster.subscribers.len().div_ceil(ticks).max(1), ticks: 0 };
        // A round that follows the last one back to back (events were
        // waiting when it ended) and starts less than a tick late counts
        // from when it was due, so a busy room keeps its cadence; a room that
        // was quiet starts counting now.
        let started = match self.rounds.started.map(|s| s + self.round_wait()) {
            Some(due) if self.rounds.back_to_back && due <= now && now.duration_since(due) < base => due,
            _ => now,
        };
        self.rounds.round = Some(round);
        self.rounds.started = Some(started);
        round
    }

    /// Ends the round and forgets the events every member has been sent.
    fn end_round(&mut self) {
        self.rounds.round = None;
        let oldest = self.roster.subscribers.iter().map(|s| s.next).min().unwrap_or_else(|| self.log.end());
        self.log.trim_before(oldest);
        self.rounds.back_to_back = !self.log.is_empty();
    }

    /// Pushes to each member in `range` everything in the log after its
    /// cursor, and the staged online count and like total. Members at the same cursor share
    /// one batch, built once.
    fn serve(&mut self, range: Range<usize>, now: Instant) {
        let end = self.log.end();
        let (log, stats) = (&self.log, &mut self.stats);
        let online = self.online.frame.as_ref().map(|f| (self.online.version, f));
        let likes = self.likes.frame.as_ref().map(|f| (self.likes.version, f));
        let mut built: Vec<Built> = Vec::new();
        let mut last = 0;
        for sub in &mut self.roster.subscribers[range] {
            if let Some((version, frame)) = online
                && sub.online != version
            {
                sub.outbox.set_datagram(Slot::Online, frame.clone());
                sub.online = version;
            }
            if let Some((version, frame)) = likes
                && sub.likes != version
            {
                sub.outbox.set_datagram(Slot::Likes, frame.clone());
                sub.likes = version;
            }
            if sub.next == end {
                continue;
            }
            let key = (sub.next, sub.filter);
            // Members at one cursor are the rule: the batch built for the
            // previous member usually fits this one too.
            if built.get(last).is_none_or(|b| b.key != key) {
                last = match built.iter().position(|b| b.key == key) {
                    Some(i) => i,
                    None => {
                        built.push(Built::new(key, log.since(sub.next)));
                        built.len() - 1
                    }
                };
            }
            let b = &built[last];
            let conn = Some(sub.conn);
            for (item, except) in &b.before {
                if *except != conn {
                    stats.add(sub.outbox.push_at(item.clone(), now));
                }
            }
            if let Some(item) = &b.batch {
                stats.add(sub.outbox.push_at(item.clone(), now));
            }
            for (item, except) in &b.after {
                if *except != conn {
                    stats.add(sub.outbox.push_at(item.clone(), now));
                }
            }
            sub.next = end;
        }
    }
}

/// What a member at one cursor (with one filter) is sent: built once per
/// slice and shared by every member at that cursor.
struct Built {
    key: (u64, Filter),
    /// Ephemeral events from before the first sequenced one, with the member
    /// each must not reach.
    before: Vec<(Item, Option<ConnId>)>,
    batch: Option<Item>,
    /// Ephemeral events from after it.
    after: Vec<(Item, Option<ConnId>)>,
}

impl Built {
    fn new(key: (u64, Filter), events: &[Pending]) -> Self {
        match key.1 {
            Filter::All => {
                let first = events.iter().position(|p| p.seq > 0).unwrap_or(events.len());
                let ephemeral = |events: &[Pending]| -> Vec<(Item, Option<ConnId>)> {
                    events
                        .iter()
                        .filter(|p| p.seq == 0)
                        .map(|p| (Item::Ephemeral { frame: p.frame.clone(), shed: p.shed }, p.except))
                        .collect()
                };
                Self {
                    key,
                    before: ephemeral(&events[..first]),
                    batch: batch(events, |_| true),
                    after: ephemeral(&events[first..]),
                }
            }
            Filter::HostOnly => {
                Self { key, before: Vec::new(), batch: batch(events, |p| p.host_visible), after: Vec::new() }
            }
        }
    }
}

/// The sequenced part of a stretch of the log for one filter: the chosen
/// events' frames back to back. Events left out are accounted for by a
/// `SeqAdvance`: before the next chosen event, or at the end of the batch
/// when the stretch ends with them, so a filtered member's position never
/// waits for the next event it is shown.
fn batch(pending: &[Pending], keep: impl Fn(&Pending) -> bool) -> Option<Item> {
    let advance = |seq| {
        encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Advance(v1::SeqAdvance { seq })) })
    };
    let mut buf = BytesMut::new();
    let mut events = 0;
    let (mut first, mut last) = (0, 0);
    let mut left_out = None;
    let mut sequenced_at = None;
    for p in pending.iter().filter(|p| p.seq > 0) {
        if !keep(p) {
            left_out = Some(p.seq);
            continue;
        }
        if left_out.take().is_some() {
            buf.extend_from_slice(&advance(p.seq - 1));
        }
        if events == 0 {
            first = p.seq;
            sequenced_at = p.at;
        }
        buf.extend_from_slice(&p.frame);
        events += 1;
        last = p.seq;
    }
    if let Some(seq) = left_out {
        buf.extend_from_slice(&advance(seq));
        if events == 0 {
            first = seq;
        }
        last = seq;
    }
    (!buf.is_empty()).then(|| Item::Sequenced { frames: buf.freeze(), first, last, events, sequenced_at })
}
