//! The live quiz on the player's side: questions held until the player's
//! video reaches them, then handed to the app.
//!
//! [`QuizAligner`] is the sans-IO part: questions and the player's media
//! position in, released questions out, the time always given by the
//! caller. The app feeds the position it reads from the video's SEI with
//! [`crate::Client::set_media_position`] (per frame, or a few times a
//! second); a question is released when the position reaches its
//! `media_ts_ms`, or at its `latest_display_ms` if the video stalls,
//! whichever comes first. The position is not extrapolated between feeds: a
//! stalled video keeps feeding the same position, and must not be thought
//! to play on.
//!
//! The quiz task around it ([`run`]) takes questions from the room streams
//! (and `Joined.open_question`), fetches a question a `QuizNudge` names that
//! never arrived, and sends released questions to the app as
//! [`crate::Event::QuizQuestion`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use roomcast_protocol::{unix_ms, v1};
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use crate::Event;

/// Question ids remembered, to release each question once.
const MAX_SEEN: usize = 1_024;
/// Questions held at once, and nudges waiting to be fetched.
const MAX_HELD: usize = 64;

/// Why a question was released when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The player's video reached the question's media timestamp.
    AtMediaTime,
    /// The video did not get there by the question's latest display time.
    AtLatestDisplay,
}

/// A question the app should show now.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub room: String,
    /// Its sequence number in the room.
    pub seq: u64,
    pub question: v1::QuizQuestion,
    pub shown: Shown,
    /// Where on the player's timeline answering ends: `media_ts_ms` plus the
    /// answer window. Count the answer clock down against the video.
    pub answer_until_media_ms: u64,
}

#[derive(Debug, Clone)]
struct Held {
    room: String,
    seq: u64,
    question: v1::QuizQuestion,
}

/// Questions held until the player's video reaches them (see the module
/// docs).
#[derive(Debug, Default)]
pub struct QuizAligner {
    held: Vec<Held>,
    /// Question ids offered before, oldest first, to release each once.
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
    /// The latest media position fed per room.
    position: HashMap<String, u64>,
}

impl QuizAligner {
    /// Holds `question` (sequence `seq` in `room`) until it is due. A question
    /// offered before (by id) is ignored; returns whether it was new.
    pub fn offer(&mut self, room: &str, seq: u64, question: v1::QuizQuestion) -> bool {
        if self.seen_set.contains(&question.question_id) {
            return false;
        }
        if self.seen.len() >= MAX_SEEN
            && let Some(old) = self.seen.pop_front()
        {
            self.seen_set.remove(&old);
        }
        self.seen.push_back(question.question_id.clone());
        self.seen_set.insert(question.question_id.clone());
        if self.held.len() >= MAX_HELD {
            // The oldest held question is long past: drop it.
            self.held.remove(0);
        }
        self.held.push(Held { room: room.to_string(), seq, question });
        true
    }

    /// Whether a question with this id was offered.
    pub fn knows(&self, question_id: &str) -> bool {
        self.seen_set.contains(question_id)
    }

    /// The player's video in `room` is at `media_ts_ms`.
    pub fn set_position(&mut self, room: &str, media_ts_ms: u64) {
        self.position.insert(room.to_string(), media_ts_ms);
    }

    /// The earliest latest-display time of the held questions, wall clock
    /// ms: [`QuizAligner::poll`] is due then at the latest.
    pub fn next_deadline(&self) -> Option<u64> {
        self.held.iter().map(|h| h.question.latest_display_ms).min()
    }

    /// The questions due at wall clock `now_ms`, in the order offered.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Released> {
        let mut out = Vec::new();
        let position = &self.position;
        self.held.retain(|h| {
            let reached = position.get(&h.room).is_some_and(|p| *p >= h.question.media_ts_ms);
            let shown = if reached {
                Shown::AtMediaTime
            } else if now_ms >= h.question.latest_display_ms {
                Shown::AtLatestDisplay
            } else {
                return true;
            };
            out.push(Released {
                room: h.room.clone(),
                seq: h.seq,
                question: h.question.clone(),
                shown,
                answer_until_media_ms: h.question.media_ts_ms + u64::from(h.question.answer_window_ms),
            });
            false
        });
        out
    }
}

/// What the rest of the SDK hands the quiz task.
#[derive(Debug, Default)]
pub(crate) struct QuizDesk {
    aligner: Mutex<QuizAligner>,
    /// Nudged questions not seen: (room, question id, seq), to fetch.
    missing: Mutex<Vec<(String, String, u64)>>,
    wake: Notify,
}

impl QuizDesk {
    fn aligner(&self) -> std::sync::MutexGuard<'_, QuizAligner> {
        self.aligner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A question event from a room stream, a history page or a `Joined`.
    pub(crate) fn offer_event(&self, event: &v1::RoomEvent) {
        if let Some(v1::room_event::Kind::QuizQuestion(q)) = &event.kind
            && self.aligner().offer(&event.room, event.seq, q.clone())
        {
            self.wake.notify_one();
        }
    }

    /// A `QuizNudge`: fetch the question if it never arrived.
    pub(crate) fn nudge(&self, room: String, question_id: String, seq: u64) {
        if self.aligner().knows(&question_id) {
            return;
        }
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        if missing.len() < MAX_HELD && !missing.iter().any(|(_, id, _)| *id == question_id) {
            missing.push((room, question_id, seq));
            self.wake.notify_one();
        }
    }

    pub(crate) fn set_position(&self, room: &str, media_ts_ms: u64) {
        self.aligner().set_position(room, media_ts_ms);
        self.wake.notify_one();
    }
}

/// The quiz task: releases questions to the app as they fall due, and
/// fetches nudged questions that never arrived. Ends with the session.
pub(crate) async fn run(
    desk: Arc<QuizDesk>,
    events: mpsc::Sender<Event>,
    commands: mpsc::Sender<crate::requests::Command>,
    shared: Weak<crate::driver::Shared>,
) {
    let Some(mut ended) = shared.upgrade().map(|s| s.ended.subscribe()) else { return };
    loop {
        let missing = std::mem::take(&mut *desk.missing.lock().unwrap_or_else(PoisonError::into_inner));
        for (room, question_id, seq) in missing {
            if desk.aligner().knows(&question_id) {
                continue;
            }
            match fetch(&commands, &room, seq).await {
                Some(event) => desk.offer_event(&event),
                None => debug!(room, question_id, "nudged quiz question could not be fetched"),
            }
        }
        let released = desk.aligner().poll(unix_ms(SystemTime::now()));
        for r in released {
            let event = Event::QuizQuestion {
                room: r.room,
                seq: r.seq,
                question: Box::new(r.question),
                shown: r.shown,
                answer_until_media_ms: r.answer_until_media_ms,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
        let deadline = desk.aligner().next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => {
                    let wait = at.saturating_sub(unix_ms(SystemTime::now()));
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = ended.wait_for(|e| *e) => return,
            () = desk.wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// The event at `seq` in `room`, read through the session's own request
/// path.
async fn fetch(
    commands: &mpsc::Sender<crate::requests::Command>,
    room: &str,
    seq: u64,
) -> Option<v1::RoomEvent> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let body = v1::client_frame::Body::FetchHistory(v1::FetchHistory {
        room: room.to_string(),
        range: Some(v1::fetch_history::Range::Seq(v1::SeqRange { from: seq, to: seq })),
        limit: 1,
    });
    commands.send(crate::requests::Command { body, reply }).await.ok()?;
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(v1::server_frame::Body::History(h)))) => h.events.into_iter().find(|e| e.seq == seq),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    /// A question the host asks at media time 60 s; it must be shown by
    /// wall clock T0 + 5 s.
    fn question(id: &str) -> v1::QuizQuestion {
        v1::QuizQuestion {
            question_id: id.into(),
            text: "?".into(),
            options: vec!["a".into(), "b".into()],
            media_ts_ms: 60_000,
            answer_window_ms: 10_000,
            latest_display_ms: T0 + 5_000,
            ..Default::default()
        }
    }

    /// A player whose video shows media time `media(wall)` at each wall
    /// clock instant, fed every 40 ms (a frame): the wall time the question
    /// is released, and why.
    fn play(media: impl Fn(u64) -> u64) -> (u64, Shown) {
        let mut a = QuizAligner::default();
        assert!(a.offer("r", 7, question("q1")));
        let mut now = T0 - 2_000;
        while now < T0 + 20_000 {
            a.set_position("r", media(now));
            if let Some(r) = a.poll(now).pop() {
                assert_eq!(r.answer_until_media_ms, 70_000);
                assert_eq!(r.seq, 7);
                assert!(a.poll(now + 10_000).is_empty(), "released once");
                return (now - T0, r.shown);
            }
            now += 40;
        }
        panic!("never released");
    }

    #[test]
    fn a_player_on_time_sees_it_when_the_host_asks_it() {
        // Media time 60 s is on screen at wall T0.
        let (at, shown) = play(|wall| (wall + 60_000).saturating_sub(T0));
        assert_eq!((at, shown), (0, Shown::AtMediaTime));
    }

    #[test]
    fn a_player_3_s_behind_sees_it_3_s_later() {
        let (at, shown) = play(|wall| (wall + 57_000).saturating_sub(T0));
        assert_eq!((at, shown), (3_000, Shown::AtMediaTime));
    }

    #[test]
    fn a_stalled_player_sees_it_at_the_latest_display_time() {
        // Frozen at 58 s since T0 - 2 s.
        let (at, shown) = play(|_| 58_000);
        assert_eq!((at, shown), (5_000, Shown::AtLatestDisplay));
    }

    #[test]
    fn a_player_seeking_past_it_sees_it_at_once_and_seeking_back_does_not_repeat_it() {
        // 30 s behind until T0 + 1 s, then a seek to the live edge.
        let (at, shown) = play(|wall| {
            if wall < T0 + 1_000 {
                (wall + 30_000).saturating_sub(T0)
            } else {
                (wall + 60_000).saturating_sub(T0)
            }
        });
        assert_eq!((at, shown), (1_000, Shown::AtMediaTime));
    }

    #[test]
    fn questions_are_released_once_by_id_and_the_deadline_is_the_earliest_hold() {
        let mut a = QuizAligner::default();
        assert!(a.offer("r", 7, question("q1")));
        assert!(!a.offer("r", 7, question("q1")), "a repeat (a resend, a history read) is ignored");
        let mut later = question("q2");
        later.latest_display_ms = T0 + 9_000;
        assert!(a.offer("r", 9, later));
        assert_eq!(a.next_deadline(), Some(T0 + 5_000));
        assert_eq!(a.poll(T0 + 5_000).len(), 1);
        assert_eq!(a.next_deadline(), Some(T0 + 9_000));
        a.set_position("other-room", 1_000_000);
        assert!(a.poll(T0 + 6_000).is_empty(), "another room's position does not count");
        assert!(!a.offer("r", 7, question("q1")), "still remembered after release");
    }
}
