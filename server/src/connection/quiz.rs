//! A session's side of a live quiz: answering, and telling its own user
//! the verdict after each reveal.

use super::*;
use crate::cluster::{Fleet, Revealed};
use crate::quiz::{AnswerOutcome, QuizRun};

/// The quiz whose reveals a session waits on (its user is a player in it),
/// and where: the room it is in.
pub(super) struct QuizWatch {
    room: RoomId,
    source: Source,
}

/// Where the quiz runs.
enum Source {
    /// On this node.
    Local { run: Arc<QuizRun>, revealed: Changes<u32> },
    /// In the fleet's Redis: reveals are heard of through the room's
    /// sequence, and verdicts read from Redis.
    Fleet { fleet: Fleet, revealed: Changes<Revealed> },
}

/// A reveal to tell the player about: the quiz (known in a fleet) and the
/// question's index.
pub(super) type Reveal = (Option<Arc<str>>, u32);

/// The next change of a `watch`, as one future kept from poll to poll.
///
/// A watch wakes only the waiters registered with it when it changes, and a
/// `changed()` future registers the connection's waker only while it is
/// alive: one built, polled once and dropped in each step takes its
/// registration with it, and the reveal then reached the session only with
/// whatever next woke the connection (a heartbeat, the presence check).
/// Kept here, the registration lasts until the change comes, and its wake
/// is a mark in the driver's ready queue.
struct Changes<T> {
    next: Option<NextChange<T>>,
}

/// The next value of a watch and the watch, once it changed; `None` once
/// its sender is gone.
type NextChange<T> = Pin<Box<dyn Future<Output = Option<(T, tokio::sync::watch::Receiver<T>)>> + Send>>;

impl<T: Clone + Send + Sync + 'static> Changes<T> {
    /// The changes of `watch` after the value it holds now.
    fn new(mut watch: tokio::sync::watch::Receiver<T>) -> Self {
        watch.mark_unchanged();
        Self { next: Some(Self::wait(watch)) }
    }

    fn wait(mut watch: tokio::sync::watch::Receiver<T>) -> NextChange<T> {
        Box::pin(async move {
            watch.changed().await.ok()?;
            let value = watch.borrow_and_update().clone();
            Some((value, watch))
        })
    }

    /// The next value, or `Ready(None)` once the watch is gone (the quiz
    /// with it); `Pending` leaves `cx`'s waker registered with the watch.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(next) = &mut self.next else { return Poll::Ready(None) };
        match next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some((value, watch))) => {
                self.next = Some(Self::wait(watch));
                Poll::Ready(Some(value))
            }
            Poll::Ready(None) => {
                self.next = None;
                Poll::Ready(None)
            }
        }
    }
}

/// The next reveal of the watched quiz, `Ready(None)` once the quiz is gone.
fn poll_next_reveal(w: &mut QuizWatch, cx: &mut Context<'_>) -> Poll<Option<Reveal>> {
    match &mut w.source {
        Source::Local { revealed, .. } => revealed.poll(cx).map(|r| r.map(|index| (None, index))),
        Source::Fleet { revealed, .. } => {
            revealed.poll(cx).map(|r| r.map(|(quiz, index)| (Some(quiz), index)))
        }
    }
}

fn ack(room: &RoomId, question_id: String, outcome: AnswerOutcome, option: u32, now_ms: u64) -> Resp {
    Resp::AnswerAck(v1::AnswerAck {
        room: room.to_string(),
        question_id,
        outcome: outcome.to_proto() as i32,
        option,
        server_time_ms: now_ms,
    })
}

impl requests::Ctx<'_> {
    /// Answers the open quiz question of a joined room: recorded and counted
    /// here, never by the room (in a fleet, by the fleet's Redis, in a batch
    /// with other answers).
    pub(super) fn answer_quiz(&mut self, a: v1::SubmitAnswer) -> Result<Answer, (ErrorCode, String)> {
        let (room, _) = self.joined_room(&a.room)?;
        if a.question_id.len() > MAX_MESSAGE_ID_BYTES {
            return Err((
                ErrorCode::ProtocolViolation,
                format!("question_id longer than {MAX_MESSAGE_ID_BYTES} bytes"),
            ));
        }
        self.touch();
        let now_ms = unix_ms(SystemTime::now());
        let metrics = self.shared.metrics.clone();
        if let Some(fleet) = self.shared.rooms.fleet().cloned() {
            if self.s.quiz.as_ref().is_none_or(|w| w.room != room) {
                // Whoever answers hears of the room's reveals; only a
                // player has a verdict to read.
                let revealed = Changes::new(fleet.quiz_reveals(&room));
                self.s.quiz = Some(QuizWatch {
                    room: room.clone(),
                    source: Source::Fleet { fleet: fleet.clone(), revealed },
                });
            }
            let user = self.s.identity.user_id.clone();
            return Ok(Box::pin(async move {
                let (outcome, option) = fleet
                    .quiz_answer(&room, &user, &a.question_id, a.option, now_ms)
                    .await
                    .map_err(|e| (ErrorCode::Unavailable, e.to_string()))?;
                metrics.quiz_answer(outcome.name());
                Ok(ack(&room, a.question_id, outcome, option, now_ms))
            }));
        }
        let (outcome, option) = match self.shared.quizzes.get(room.as_str()) {
            None => (AnswerOutcome::UnknownQuestion, 0),
            Some(run) => {
                let answered = run.answer(&self.s.identity.user_id, &a.question_id, a.option, now_ms);
                let watching = matches!(&self.s.quiz, Some(QuizWatch { source: Source::Local { run: r, .. }, .. }) if Arc::ptr_eq(r, &run));
                if !watching && run.is_player(&self.s.identity.user_id) {
                    // A player (this answer made it one, or an earlier one
                    // on any session did): this session hears of every
                    // reveal, as in a fleet.
                    let revealed = Changes::new(run.revealed());
                    self.s.quiz =
                        Some(QuizWatch { room: room.clone(), source: Source::Local { run, revealed } });
                }
                answered
            }
        };
        metrics.quiz_answer(outcome.name());
        let resp = ack(&room, a.question_id, outcome, option, now_ms);
        Ok(Box::pin(async move { Ok(resp) }))
    }
}

/// Takes the next reveal of the quiz the session's user plays, if one came,
/// and queues the user's verdict on it (read from the fleet's Redis in a
/// fleet) as an unsolicited frame. True if it queued one.
pub(super) fn poll_reveal(s: &mut Session, cx: &mut Context<'_>) -> bool {
    let mut queued = false;
    // Until the watch is pending again, so that the connection's waker is
    // registered for the next reveal too.
    loop {
        let Some(w) = &mut s.quiz else { return queued };
        let reveal = match poll_next_reveal(w, cx) {
            Poll::Pending => return queued,
            Poll::Ready(Some(reveal)) => reveal,
            Poll::Ready(None) => {
                // The quiz is gone: no more reveals to wait for.
                s.quiz = None;
                return queued;
            }
        };
        let step: Step = match (&w.source, reveal) {
            (Source::Local { run, .. }, (_, index)) => {
                let verdict = run.verdict(&s.identity.user_id, index);
                Box::pin(std::future::ready(Done::Verdict(verdict)))
            }
            (Source::Fleet { fleet, .. }, (Some(quiz), index)) => {
                let (fleet, room, user) = (fleet.clone(), w.room.clone(), s.identity.user_id.clone());
                Box::pin(async move { Done::Verdict(fleet.quiz_verdict(&room, &quiz, index, &user).await) })
            }
            (Source::Fleet { .. }, (None, _)) => continue,
        };
        s.pending.push_back(Pending { rid: 0, barrier: false, step, done: None });
        queued = true;
    }
}

/// The frame telling the user its verdict; a player who is out hears of no
/// more reveals.
pub(super) fn verdict_frame(s: &mut Session, verdict: Option<v1::QuizVerdict>) -> Option<Bytes> {
    let w = s.quiz.as_ref()?;
    let mut verdict = verdict?;
    verdict.room = w.room.to_string();
    if !verdict.still_in {
        s.quiz = None;
    }
    Some(encode_frame(&v1::ServerFrame { request_id: 0, body: Some(Resp::QuizVerdict(verdict)) }))
}
