//! Quiz events in the room: questions and results sequenced like any High
//! event, the open question handed to members who join while it is open,
//! and a `QuizNudge` datagram to every member about once a second while its
//! window lasts, so that a client that missed the event fetches it. What the
//! quiz itself knows (players, answers, the correct option) is not here but
//! in `crate::quiz`.

use std::time::Duration;

use roomcast_protocol::datagram::ServerDatagram;
use roomcast_protocol::v1;
use tokio::time::Instant;
use v1::room_event::Kind;

use super::super::fanout::Slot;
use super::RoomState;

/// Time between two nudges about the open question.
pub(crate) const NUDGE_INTERVAL: Duration = Duration::from_secs(1);

/// A quiz event for the room to sequence.
#[derive(Debug, Clone)]
pub enum QuizEvent {
    Question(v1::QuizQuestion),
    Result(v1::QuizResult),
}

/// The question open now, as sequenced.
#[derive(Debug)]
struct Open {
    event: v1::RoomEvent,
    /// When its answers close (its `closes_at_ms`, on this clock).
    until: Instant,
    next_nudge: Instant,
    nudge: bytes::Bytes,
}

#[derive(Debug, Default)]
pub(super) struct QuizDesk {
    open: Option<Open>,
}

impl RoomState {
    /// Sequences a quiz event and returns its sequence number. A question
    /// stays open, for joiners and nudges, until its answers close or its
    /// result is sequenced.
    pub fn quiz_event(&mut self, event: QuizEvent, now: Instant, now_ms: u64) -> u64 {
        match event {
            QuizEvent::Question(q) => {
                let until = now + Duration::from_millis(q.closes_at_ms.saturating_sub(now_ms));
                let question_id = q.question_id.clone();
                let media_ts_ms = Some(q.media_ts_ms);
                let event = self.sequence(Kind::QuizQuestion(q), None, media_ts_ms, now, now_ms);
                let nudge =
                    ServerDatagram::QuizNudge { room: self.id.to_string(), question_id, seq: event.seq }
                        .encode();
                let seq = event.seq;
                self.quiz.open = Some(Open { event, until, next_nudge: now + NUDGE_INTERVAL, nudge });
                seq
            }
            QuizEvent::Result(r) => {
                self.quiz.open = None;
                self.sequence(Kind::QuizResult(r), None, None, now, now_ms).seq
            }
        }
    }

    /// In a fleet: a quiz event came through the room's sequence. The open
    /// question, this node's or another's, is the one joiners get and
    /// members are nudged about, under the number Redis gave it; a result
    /// closes it.
    pub(super) fn quiz_ingested(&mut self, event: &v1::RoomEvent, now: Instant) {
        match &event.kind {
            Some(Kind::QuizQuestion(q)) => {
                // Its window on this node's clock, from when it was sequenced.
                let left = q.closes_at_ms.saturating_sub(event.server_time_ms);
                let nudge = ServerDatagram::QuizNudge {
                    room: self.id.to_string(),
                    question_id: q.question_id.clone(),
                    seq: event.seq,
                }
                .encode();
                match &mut self.quiz.open {
                    Some(open) if matches!(&open.event.kind, Some(Kind::QuizQuestion(o)) if o.question_id == q.question_id) =>
                    {
                        open.event = event.clone();
                        open.nudge = nudge;
                    }
                    _ => {
                        self.quiz.open = Some(Open {
                            event: event.clone(),
                            until: now + Duration::from_millis(left),
                            next_nudge: now + NUDGE_INTERVAL,
                            nudge,
                        });
                    }
                }
            }
            Some(Kind::QuizResult(r))
                if self.quiz.open.as_ref().is_some_and(
                    |o| matches!(&o.event.kind, Some(Kind::QuizQuestion(q)) if q.question_id == r.question_id),
                ) =>
            {
                self.quiz.open = None;
            }
            _ => {}
        }
    }

    /// In a fleet, a room catching up on its recent events when it begins
    /// to follow: a question whose answers are still open at `now_ms` (wall
    /// clock) is the open one; a result closes it.
    pub(super) fn quiz_caught_up(&mut self, event: &v1::RoomEvent, now: Instant, now_ms: u64) {
        match &event.kind {
            Some(Kind::QuizQuestion(q)) if q.closes_at_ms > now_ms => {
                // Judged by the wall clock, not by when it was sequenced.
                let caught_up = v1::RoomEvent { server_time_ms: now_ms, ..event.clone() };
                self.quiz_ingested(&caught_up, now);
                if let Some(open) = &mut self.quiz.open {
                    open.event = event.clone();
                }
            }
            Some(Kind::QuizResult(_)) => self.quiz_ingested(event, now),
            _ => {}
        }
    }

    /// The open question's event, for a member joining now.
    pub(super) fn open_question(&self, now: Instant) -> Option<v1::RoomEvent> {
        self.quiz.open.as_ref().filter(|o| now < o.until).map(|o| o.event.clone())
    }

    /// When the next nudge about the open question is due.
    pub fn quiz_nudge_due(&self) -> Option<Instant> {
        self.quiz.open.as_ref().map(|o| o.next_nudge.min(o.until))
    }

    /// Nudges every member about the open question, or forgets it once its
    /// answers have closed.
    pub fn push_quiz_nudge(&mut self, now: Instant) {
        let Some(open) = &mut self.quiz.open else { return };
        if now >= open.until {
            self.quiz.open = None;
            return;
        }
        open.next_nudge = now + NUDGE_INTERVAL;
        for sub in &self.roster.subscribers {
            sub.outbox.set_datagram(Slot::QuizNudge, open.nudge.clone());
        }
    }
}
