//! Per-subscriber outboxes: the only thing the fan-out path touches per member.
//!
//! A room encodes each event once and, at each flush, pushes the same `Bytes`
//! (a batch of frames) into every member's [`Outbox`]. The connection's
//! transport driver drains everything pending and writes it to the room
//! stream in one write of shared chunks, so a busy room sends few, full
//! packets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// Shedding order for ephemeral events: lower is shed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shed {
    Low,
    Normal,
}

/// What a room queues for one subscriber.
#[derive(Debug, Clone)]
pub enum Item {
    /// Sequenced events `first..=last`, already framed back to back (and, for
    /// filtered subscribers, followed by a `SeqAdvance` frame). `events` is
    /// the number of events it carries, which is what counts against the
    /// outbox's capacity. Never dropped silently: if it cannot be queued, the
    /// subscriber lags.
    /// `sequenced_at` is when its oldest event was sequenced.
    Sequenced { frames: Bytes, first: u64, last: u64, events: usize, sequenced_at: Option<Instant> },
    /// One ephemeral event frame: may be shed under pressure.
    Ephemeral { frame: Bytes, shed: Shed },
}

impl Item {
    fn weight(&self) -> usize {
        match self {
            Self::Sequenced { events, .. } => (*events).max(1),
            Self::Ephemeral { .. } => 1,
        }
    }
}

/// What happened to a push; the room adds these up for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushOutcome {
    /// Events queued by this push.
    pub queued: usize,
    /// Ephemeral events shed, by priority (the new one or queued ones).
    pub shed_low: usize,
    pub shed_normal: usize,
    /// Sequenced events that could not be queued: the subscriber now lags.
    pub lagged: usize,
    /// This push turned the outbox lagged.
    pub turned_lagged: bool,
}

/// A bounded queue of encoded room frames for one (connection, room), plus
/// the latest of each of the room's datagrams ([`Slot`]).
///
/// Overflow policy: capacity counts events. When a push would exceed it,
/// queued ephemeral events are shed first, Low before Normal. A new ephemeral
/// event that still does not fit is dropped. A sequenced batch that still does
/// not fit is not queued: the outbox turns *lagged*. Its room stream gets what is
/// queued, then a `Lagged` frame naming the lost range, then ends the stream,
/// and the client resumes from history. Each kind of room datagram (online
/// count, like total, quiz nudge) is a single slot where the latest value
/// replaces an unsent older one.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// Sum of the queued items' weights.
    queued: usize,
    datagrams: [Option<Bytes>; SLOTS],
    /// Sequenced events lost to overflow: `(from, to)`.
    lagged: Option<(u64, u64)>,
    closed: bool,
    /// The frame that ends the stream after everything queued (a removal
    /// notice), if the subscription was ended with one.
    last: Option<Bytes>,
    /// When the oldest queued sequenced event was sequenced, for the drainer
    /// to report the node's latency from sequencing to writing.
    sequenced_at: Option<Instant>,
    /// When the oldest queued item was pushed (the outbox went from empty to
    /// not), for the drainer to report how long items wait for it.
    since: Option<Instant>,
    /// Who drains it, waiting for something to drain: woken (once) by the
    /// push that makes it so. For a connection on the transport edge, the
    /// wake is a mark in its driver's ready queue.
    waker: Option<Waker>,
}

/// The kinds of room datagram an outbox keeps the latest of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Online = 0,
    Likes = 1,
    QuizNudge = 2,
}

/// How many [`Slot`]s there are.
pub const SLOTS: usize = 3;

impl State {
    /// Nothing to drain: no frame and no datagram.
    fn is_idle(&self) -> bool {
        self.items.is_empty() && self.datagrams.iter().all(Option::is_none)
    }
}

/// What a drainer took out of an outbox in one drain.
#[derive(Debug, Default)]
pub struct Drained {
    /// The room's latest datagrams, by [`Slot`].
    pub datagrams: [Option<Bytes>; SLOTS],
    /// How long the oldest drained item waited in the outbox.
    pub waited: Option<Duration>,
    /// When the oldest drained sequenced event was sequenced.
    pub sequenced_at: Option<Instant>,
    /// The subscriber lagged: after the frames, tell it which range was lost
    /// and end the stream.
    pub lagged: Option<(u64, u64)>,
    /// The subscription ended: write what was drained, then finish the stream.
    pub closed: bool,
    /// Written after the frames when the subscription ended with a notice.
    pub last: Option<Bytes>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::default(), capacity: capacity.max(1) })
    }

    // No code holding this lock can panic halfway through a change, so a
    // poisoned lock still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an item, applying the overflow policy.
    pub fn push(&self, item: Item) -> PushOutcome {
        self.push_at(item, Instant::now())
    }

    /// [`Self::push`], with the time of the push given: a room pushing to
    /// thousands of members reads the clock once, not once per member.
    pub fn push_at(&self, item: Item, now: Instant) -> PushOutcome {
        let mut out = PushOutcome::default();
        let mut s = self.lock();
        if s.closed || s.lagged.is_some() {
            if let Item::Sequenced { first, last, events, .. } = item {
                if let Some((_, to)) = &mut s.lagged {
                    *to = (*to).max(last).max(first);
                }
                out.lagged = events;
            }
            return out;
        }
        let weight = item.weight();
        let new_shed = match &item {
            Item::Ephemeral { shed, .. } => Some(*shed),
            Item::Sequenced { .. } => None,
        };
        // Shed queued ephemeral events, lowest first, but never one that
        // outranks (or equals) a new ephemeral event.
        for level in [Shed::Low, Shed::Normal] {
            if s.queued + weight <= self.capacity || new_shed.is_some_and(|n| n <= level) {
                break;
            }
            while s.queued + weight > self.capacity {
                let Some(pos) =
                    s.items.iter().position(|i| matches!(i, Item::Ephemeral { shed, .. } if *shed == level))
                else {
                    break;
                };
                s.items.remove(pos);
                s.queued -= 1;
                match level {
                    Shed::Low => out.shed_low += 1,
                    Shed::Normal => out.shed_normal += 1,
                }
            }
        }
        if s.queued + weight > self.capacity {
            match item {
                Item::Ephemeral { shed: Shed::Low, .. } => out.shed_low += 1,
                Item::Ephemeral { shed: Shed::Normal, .. } => out.shed_normal += 1,
                Item::Sequenced { first, last, events, .. } => {
                    s.lagged = Some((first, last));
                    out.lagged = events;
                    out.turned_lagged = true;
                    wake(s);
                }
            }
            return out;
        }
        let was_idle = s.is_idle();
        if s.items.is_empty() {
            s.since = Some(now);
        }
        if let Item::Sequenced { sequenced_at: Some(at), .. } = &item {
            s.sequenced_at = Some(s.sequenced_at.map_or(*at, |t| t.min(*at)));
        }
        s.items.push_back(item);
        s.queued += weight;
        out.queued = weight;
        if was_idle {
            wake(s);
        }
        out
    }

    /// Replaces the pending datagram of `slot`'s kind.
    pub fn set_datagram(&self, slot: Slot, datagram: Bytes) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let was_idle = s.is_idle();
        s.datagrams[slot as usize] = Some(datagram);
        if was_idle {
            wake(s);
        }
    }

    /// Ends the subscription; the drainer flushes what is queued and stops.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        wake(s);
    }

    /// Ends the subscription with a last frame (a removal notice), written
    /// after what is queued. It takes no capacity, so it is never shed.
    pub fn close_with(&self, frame: Bytes) {
        let mut s = self.lock();
        if !s.closed {
            s.closed = true;
            s.last = Some(frame);
        }
        wake(s);
    }

    /// True once the subscription ended or lagged: nothing more is queued.
    pub fn is_done(&self) -> bool {
        let s = self.lock();
        s.closed || s.lagged.is_some()
    }

    /// Events currently queued.
    pub fn len(&self) -> usize {
        self.lock().queued
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves every queued frame into `frames` (in order) and returns the
    /// rest, if anything is pending; `None` if there is nothing to write yet.
    pub fn try_drain(&self, frames: &mut Vec<Bytes>) -> Option<Drained> {
        take(&mut self.lock(), frames)
    }

    /// Drains as [`Self::try_drain`] if anything is pending; otherwise
    /// `cx`'s waker is woken by the next push, datagram, lag or close.
    pub fn poll_drain(&self, cx: &mut Context<'_>, frames: &mut Vec<Bytes>) -> Poll<Drained> {
        let mut s = self.lock();
        if let Some(d) = take(&mut s, frames) {
            return Poll::Ready(d);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until something is pending, then drains it as [`Self::try_drain`].
    pub async fn drain(&self, frames: &mut Vec<Bytes>) -> Drained {
        std::future::poll_fn(|cx| self.poll_drain(cx, frames)).await
    }
}

/// Wakes the outbox's drainer, if one waits, after letting go of the lock.
fn wake(mut s: MutexGuard<'_, State>) {
    let waker = s.waker.take();
    drop(s);
    if let Some(w) = waker {
        w.wake();
    }
}

/// Moves what `s` holds into `frames` and the rest into a [`Drained`];
/// `None` if there is nothing to write yet.
fn take(s: &mut State, frames: &mut Vec<Bytes>) -> Option<Drained> {
    if s.is_idle() && !s.closed && s.lagged.is_none() {
        return None;
    }
    frames.extend(s.items.drain(..).map(|i| match i {
        Item::Sequenced { frames, .. } => frames,
        Item::Ephemeral { frame, .. } => frame,
    }));
    s.queued = 0;
    let waited = s.since.take().map(|t| t.elapsed());
    Some(Drained {
        datagrams: std::mem::take(&mut s.datagrams),
        waited,
        sequenced_at: s.sequenced_at.take(),
        lagged: s.lagged,
        closed: s.closed,
        last: s.last.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> Item {
        Item::Sequenced {
            frames: Bytes::from(format!("s{n}")),
            first: n,
            last: n,
            events: 1,
            sequenced_at: None,
        }
    }

    fn eph(name: &'static str, shed: Shed) -> Item {
        Item::Ephemeral { frame: Bytes::from_static(name.as_bytes()), shed }
    }

    async fn drain(o: &Outbox) -> (Vec<Bytes>, Drained) {
        let mut frames = Vec::new();
        let d = o.drain(&mut frames).await;
        (frames, d)
    }

    #[tokio::test]
    async fn drains_in_order() {
        let o = Outbox::new(10);
        o.push(seq(1));
        o.push(eph("e", Shed::Low));
        o.push(seq(2));
        let (frames, d) = drain(&o).await;
        assert_eq!(frames, ["s1", "e", "s2"].map(|s: &'static str| Bytes::from_static(s.as_bytes())));
        assert!(d.lagged.is_none() && !d.closed);
        assert!(o.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_says_how_long_its_oldest_item_waited() {
        let o = Outbox::new(10);
        o.push(seq(1));
        tokio::time::advance(Duration::from_millis(30)).await;
        o.push(seq(2));
        tokio::time::advance(Duration::from_millis(5)).await;
        let (_, d) = drain(&o).await;
        assert_eq!(d.waited, Some(Duration::from_millis(35)), "from the first push, not the last");
        o.set_datagram(Slot::Online, Bytes::from_static(b"n"));
        let (_, d) = drain(&o).await;
        assert_eq!(d.waited, None, "an online count alone is not a queued event");
    }

    #[tokio::test]
    async fn overflow_sheds_low_then_normal_before_sequenced() {
        let o = Outbox::new(4);
        o.push(eph("n1", Shed::Normal));
        o.push(eph("l1", Shed::Low));
        o.push(seq(1));
        o.push(eph("l2", Shed::Low));
        // Full. A sequenced event pushes out the oldest Low first.
        let r = o.push(seq(2));
        assert_eq!((r.queued, r.shed_low, r.shed_normal, r.lagged), (1, 1, 0, 0));
        let r = o.push(seq(3));
        assert_eq!((r.shed_low, r.shed_normal), (1, 0));
        let r = o.push(seq(4));
        assert_eq!((r.shed_low, r.shed_normal), (0, 1));
        let (frames, _) = drain(&o).await;
        assert_eq!(frames, ["s1", "s2", "s3", "s4"].map(|s: &'static str| Bytes::from_static(s.as_bytes())));
    }

    #[tokio::test]
    async fn a_new_ephemeral_event_never_displaces_its_betters() {
        let o = Outbox::new(2);
        o.push(seq(1));
        o.push(eph("n", Shed::Normal));
        let r = o.push(eph("l", Shed::Low));
        assert_eq!((r.queued, r.shed_low), (0, 1), "the new Low is dropped");
        let r = o.push(eph("n2", Shed::Normal));
        assert_eq!((r.queued, r.shed_normal), (0, 1), "equal rank does not displace");
        let (frames, _) = drain(&o).await;
        assert_eq!(frames, ["s1", "n"].map(|s: &'static str| Bytes::from_static(s.as_bytes())));
    }

    #[tokio::test]
    async fn sequenced_overflow_turns_the_outbox_lagged() {
        let o = Outbox::new(2);
        o.push(seq(1));
        o.push(seq(2));
        let r = o.push(seq(3));
        assert_eq!((r.queued, r.lagged), (0, 1));
        let r = o.push(seq(4));
        assert_eq!(r.lagged, 1, "later events are not queued either");
        assert_eq!(o.push(eph("e", Shed::Normal)).queued, 0);
        assert!(o.is_done());
        let (frames, d) = drain(&o).await;
        assert_eq!(frames, ["s1", "s2"].map(|s: &'static str| Bytes::from_static(s.as_bytes())));
        assert_eq!(d.lagged, Some((3, 4)));
    }

    #[tokio::test]
    async fn batches_weigh_their_event_count() {
        let o = Outbox::new(5);
        let batch = Item::Sequenced {
            frames: Bytes::from_static(b"b"),
            first: 1,
            last: 4,
            events: 4,
            sequenced_at: None,
        };
        assert_eq!(o.push(batch).queued, 4);
        assert_eq!(o.len(), 4);
        let big = Item::Sequenced {
            frames: Bytes::from_static(b"c"),
            first: 5,
            last: 6,
            events: 2,
            sequenced_at: None,
        };
        assert_eq!(o.push(big).lagged, 2);
    }

    #[tokio::test]
    async fn online_count_keeps_only_the_latest() {
        let o = Outbox::new(4);
        o.set_datagram(Slot::Online, Bytes::from_static(b"1"));
        o.set_datagram(Slot::Likes, Bytes::from_static(b"l"));
        o.set_datagram(Slot::Online, Bytes::from_static(b"2"));
        let (frames, d) = drain(&o).await;
        assert_eq!(d.datagrams[Slot::Online as usize], Some(Bytes::from_static(b"2")));
        assert_eq!(
            d.datagrams[Slot::Likes as usize],
            Some(Bytes::from_static(b"l")),
            "each kind its own slot"
        );
        assert!(frames.is_empty());
    }

    #[tokio::test]
    async fn close_wakes_the_writer_and_refuses_more() {
        let o = Outbox::new(4);
        let o2 = o.clone();
        let writer = tokio::spawn(async move { drain(&o2).await });
        tokio::task::yield_now().await;
        o.close();
        assert_eq!(o.push(seq(1)).queued, 0);
        let (frames, d) = writer.await.unwrap();
        assert!(frames.is_empty());
        assert!(d.closed);
    }

    #[tokio::test]
    async fn a_closing_notice_comes_after_everything_queued_even_when_full() {
        let o = Outbox::new(2);
        o.push(seq(1));
        o.push(seq(2));
        o.close_with(Bytes::from_static(b"bye"));
        o.close_with(Bytes::from_static(b"again"));
        let mut frames = Vec::new();
        let d = o.drain(&mut frames).await;
        assert_eq!(frames, [Bytes::from("s1"), Bytes::from("s2")]);
        assert!(d.closed);
        assert_eq!(d.last, Some(Bytes::from_static(b"bye")), "the first notice, once");
    }
}
