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
    Local { run: Arc<QuizRun>, revealed: tokio::sync::watch::Receiver<u32> },
    /// In the fleet's Redis: reveals are heard of through the room's
    /// sequence, and verdicts read from Redis.
    Fleet { fleet: Fleet, revealed: tokio::sync::watch::Receiver<Revealed> },
}

/// A reveal to tell the player about: the quiz (known in a fleet) and the
/// question's index.
pub(super) type Reveal = (Option<Arc<str>>, u32);

/// The next reveal of the watched quiz. Never resolves without a watch, or
/// once the quiz is gone.
pub(super) async fn next_reveal(watch: &mut Option<QuizWatch>) -> Reveal {
    let Some(w) = watch else { return std::future::pending().await };
    match &mut w.source {
        Source::Local { revealed, .. } => match revealed.changed().await {
            Ok(()) => (None, *revealed.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        Source::Fleet { revealed, .. } => match revealed.changed().await {
            Ok(()) => {
                let (quiz, index) = revealed.borrow_and_update().clone();
                (Some(quiz), index)
            }
            Err(_) => std::future::pending().await,
        },
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
                let mut revealed = fleet.quiz_reveals(&room);
                revealed.mark_unchanged();
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
                if answered.0 == AnswerOutcome::Accepted && !watching {
                    // A player from now on: it hears of every reveal.
                    let mut revealed = run.revealed();
                    revealed.mark_unchanged();
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
/// fleet) as an unsolicited frame.
pub(super) fn poll_reveal(s: &mut Session, cx: &mut Context<'_>) {
    let reveal = {
        let next = next_reveal(&mut s.quiz);
        let mut next = std::pin::pin!(next);
        match next.as_mut().poll(cx) {
            Poll::Ready(reveal) => reveal,
            Poll::Pending => return,
        }
    };
    let Some(w) = &s.quiz else { return };
    let step: Step = match (&w.source, reveal) {
        (Source::Local { run, .. }, (_, index)) => {
            let verdict = run.verdict(&s.identity.user_id, index);
            Box::pin(std::future::ready(Done::Verdict(verdict)))
        }
        (Source::Fleet { fleet, .. }, (Some(quiz), index)) => {
            let (fleet, room, user) = (fleet.clone(), w.room.clone(), s.identity.user_id.clone());
            Box::pin(async move { Done::Verdict(fleet.quiz_verdict(&room, &quiz, index, &user).await) })
        }
        (Source::Fleet { .. }, (None, _)) => return,
    };
    s.pending.push_back(Pending { rid: 0, barrier: false, step, done: None });
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
