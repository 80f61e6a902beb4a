//! A member's receiving end of a room: what its room stream carries.
//!
//! First the part of a resume's missed events that did not fit in its
//! `Joined` answer (`Joined.next_seq` to `current_seq`), read from the
//! room's history a page at a time as the stream takes it, so a long resume
//! neither builds one huge frame nor fills the member's outbox. Then the live
//! events the room pushes into the member's outbox.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::v1;
use tokio::time::Instant;

use super::fanout::{Drained, Outbox};
use super::history::HistoryLog;
use super::state::Filter;

/// Events read from history per step of a backfill.
const BACKFILL_PAGE: usize = 128;

#[derive(Debug)]
pub struct Feed {
    outbox: Arc<Outbox>,
    backfill: Option<Backfill>,
}

/// Sequenced events still to be sent from history, up to `to`.
#[derive(Debug)]
struct Backfill {
    history: Arc<HistoryLog>,
    /// The next sequence number to read.
    next: u64,
    /// The last sequence number the client has been sent or told to skip.
    sent: u64,
    to: u64,
    filter: Filter,
}

impl Feed {
    pub(super) fn new(
        outbox: Arc<Outbox>,
        history: Arc<HistoryLog>,
        joined: &v1::Joined,
        filter: Filter,
    ) -> Self {
        let backfill = (joined.next_seq > 0 && joined.next_seq <= joined.current_seq).then(|| Backfill {
            history,
            next: joined.next_seq,
            sent: joined.next_seq - 1,
            to: joined.current_seq,
            filter,
        });
        Self { outbox, backfill }
    }

    /// Waits until something is pending and moves it into `frames`, in
    /// order; the rest of what was taken (the online count, lag, the end) is
    /// returned.
    pub async fn next(&mut self, frames: &mut Vec<Bytes>) -> Drained {
        std::future::poll_fn(|cx| self.poll_next(cx, frames)).await
    }

    /// [`Self::next`] as a poll: `Pending` registers `cx`'s waker with the
    /// outbox.
    pub fn poll_next(&mut self, cx: &mut Context<'_>, frames: &mut Vec<Bytes>) -> Poll<Drained> {
        if let Some(b) = &mut self.backfill {
            let step = b.step(frames);
            if step.lagged.is_some() || b.next > b.to {
                self.backfill = None;
            }
            return Poll::Ready(step);
        }
        self.outbox.poll_drain(cx, frames)
    }

    /// Ends the subscription from the connection's side (its stream failed):
    /// the room stops queueing for it.
    pub fn close(&self) {
        self.outbox.close();
    }
}

impl Backfill {
    /// Sends the next page. Events the filter leaves out, and recalled ones
    /// (holes in history that are not loss), are accounted for with a
    /// `SeqAdvance`. Events that history no longer holds are reported as
    /// lag, which ends the stream; the client resumes from where it got to.
    fn step(&mut self, frames: &mut Vec<Bytes>) -> Drained {
        let page = self.history.by_seq(Instant::now(), self.next, self.to, BACKFILL_PAGE);
        if page.oldest_seq == 0 || page.oldest_seq > self.next {
            return Drained { lagged: Some((self.sent + 1, self.to)), ..Drained::default() };
        }
        let mut buf = BytesMut::new();
        for event in page.events {
            let seq = event.seq;
            if self.filter.shows(&event) {
                if seq > self.sent + 1 {
                    buf.extend_from_slice(&advance(seq - 1));
                }
                buf.extend_from_slice(&encode_frame(&v1::RoomFrame {
                    body: Some(v1::room_frame::Body::Event(event)),
                }));
                self.sent = seq;
            }
            self.next = seq + 1;
        }
        if !page.truncated {
            if self.sent < self.to {
                buf.extend_from_slice(&advance(self.to));
                self.sent = self.to;
            }
            self.next = self.to + 1;
        }
        if !buf.is_empty() {
            frames.push(buf.freeze());
        }
        Drained::default()
    }
}

fn advance(seq: u64) -> Bytes {
    encode_frame(&v1::RoomFrame { body: Some(v1::room_frame::Body::Advance(v1::SeqAdvance { seq })) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use roomcast_protocol::codec::FrameDecoder;
    use v1::room_event::Kind;

    use super::*;

    fn event(seq: u64) -> v1::RoomEvent {
        let kind = if seq.is_multiple_of(3) {
            Kind::HostMessage(v1::HostMessage { text: "x".repeat(300), client_msg_id: String::new() })
        } else {
            Kind::Chat(v1::Chat { text: "y".repeat(300), client_msg_id: String::new() })
        };
        v1::RoomEvent { seq, message_id: format!("m{seq}"), kind: Some(kind), ..Default::default() }
    }

    fn history(len: usize, upto: u64) -> Arc<HistoryLog> {
        let h = HistoryLog::new(len, Duration::from_secs(3600));
        for seq in 1..=upto {
            h.push(Instant::now(), event(seq));
        }
        h
    }

    fn joined(next_seq: u64, current_seq: u64) -> v1::Joined {
        v1::Joined { current_seq, next_seq, ..Default::default() }
    }

    /// Plays the feed as a client would until its outbox is done, checking
    /// that every sequence number is either shown or skipped by an advance,
    /// in order. Returns the position reached, the events shown, and lag.
    async fn play(mut feed: Feed, from: u64) -> (u64, Vec<u64>, Option<(u64, u64)>) {
        feed.outbox.close();
        let (mut pos, mut shown, mut dec) = (from, Vec::new(), FrameDecoder::new(1 << 20));
        loop {
            let mut frames = Vec::new();
            let drained = feed.next(&mut frames).await;
            for f in frames {
                dec.extend(&f);
            }
            while let Some(frame) = dec.next_message::<v1::RoomFrame>().unwrap() {
                match frame.body {
                    Some(v1::room_frame::Body::Event(e)) => {
                        assert_eq!(e.seq, pos + 1, "a hole before {}", e.seq);
                        pos = e.seq;
                        shown.push(e.seq);
                    }
                    Some(v1::room_frame::Body::Advance(a)) => {
                        assert!(a.seq > pos, "an advance that goes back");
                        pos = a.seq;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if drained.lagged.is_some() || drained.closed {
                return (pos, shown, drained.lagged);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backfill_sends_every_missed_event_in_order_a_page_at_a_time() {
        let h = history(1000, 400);
        let feed = Feed::new(Outbox::new(10), h, &joined(5, 400), Filter::All);
        let (pos, shown, lagged) = play(feed, 4).await;
        assert_eq!((pos, lagged), (400, None));
        assert_eq!(shown, (5..=400).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_filtered_backfill_and_recalled_events_advance_instead_of_leaving_holes() {
        let h = history(1000, 400);
        assert!(h.remove("m9"), "a recalled host message");
        let feed = Feed::new(Outbox::new(10), h.clone(), &joined(5, 400), Filter::HostOnly);
        let (pos, shown, lagged) = play(feed, 4).await;
        assert_eq!((pos, lagged), (400, None), "the trailing chat is advanced over too");
        let want: Vec<u64> = (5..=400u64).filter(|s| s.is_multiple_of(3) && *s != 9).collect();
        assert_eq!(shown, want);

        let feed = Feed::new(Outbox::new(10), h, &joined(5, 400), Filter::All);
        let (pos, shown, _) = play(feed, 4).await;
        assert_eq!(pos, 400);
        assert!(!shown.contains(&9) && shown.len() == 395);
    }

    #[tokio::test(start_paused = true)]
    async fn events_history_no_longer_holds_are_reported_as_lag() {
        let h = history(100, 400);
        let feed = Feed::new(Outbox::new(10), h, &joined(5, 400), Filter::All);
        let (pos, shown, lagged) = play(feed, 4).await;
        assert_eq!((pos, shown.len(), lagged), (4, 0, Some((5, 400))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_that_fit_its_answer_has_no_backfill() {
        let feed = Feed::new(Outbox::new(10), history(10, 5), &joined(6, 5), Filter::All);
        assert!(feed.backfill.is_none());
        let feed = Feed::new(Outbox::new(10), history(10, 5), &joined(0, 5), Filter::All);
        assert!(feed.backfill.is_none(), "an answer without next_seq");
    }
}
