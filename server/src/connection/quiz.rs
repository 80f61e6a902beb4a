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

impl Session {
    /// Answers the open quiz question of a joined room: recorded and counted
    /// here, never by the room (in a fleet, by the fleet's Redis, in a batch
    /// with other answers).
    pub(super) fn answer_quiz(&mut self, a: v1::SubmitAnswer) -> Result<Answer, (ErrorCode, String)> {
        let (room, _) = self.joined_room(&a.room)?;
        let room = room.clone();
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
            if self.quiz.as_ref().is_none_or(|w| w.room != room) {
                // Whoever answers hears of the room's reveals; only a
                // player has a verdict to read.
                let mut revealed = fleet.quiz_reveals(&room);
                revealed.mark_unchanged();
                self.quiz = Some(QuizWatch {
                    room: room.clone(),
                    source: Source::Fleet { fleet: fleet.clone(), revealed },
                });
            }
            let user = self.identity.user_id.clone();
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
                let answered = run.answer(&self.identity.user_id, &a.question_id, a.option, now_ms);
                let watching = matches!(&self.quiz, Some(QuizWatch { source: Source::Local { run: r, .. }, .. }) if Arc::ptr_eq(r, &run));
                if answered.0 == AnswerOutcome::Accepted && !watching {
                    // A player from now on: it hears of every reveal.
                    let mut revealed = run.revealed();
                    revealed.mark_unchanged();
                    self.quiz =
                        Some(QuizWatch { room: room.clone(), source: Source::Local { run, revealed } });
                }
                answered
            }
        };
        metrics.quiz_answer(outcome.name());
        let resp = ack(&room, a.question_id, outcome, option, now_ms);
        Ok(Box::pin(async move { Ok(resp) }))
    }

    /// Sends this user's verdict on the revealed question, on the control
    /// stream, unsolicited.
    pub(super) async fn send_verdict(&mut self, (quiz, index): Reveal) -> Result<(), (ErrorCode, String)> {
        let Some(w) = &self.quiz else { return Ok(()) };
        let verdict = match (&w.source, quiz) {
            (Source::Local { run, .. }, _) => run.verdict(&self.identity.user_id, index),
            (Source::Fleet { fleet, .. }, Some(quiz)) => {
                fleet.quiz_verdict(&w.room, &quiz, index, &self.identity.user_id).await
            }
            (Source::Fleet { .. }, None) => None,
        };
        let Some(mut verdict) = verdict else { return Ok(()) };
        verdict.room = w.room.to_string();
        if !verdict.still_in {
            // Out: nothing more to hear.
            self.quiz = None;
        }
        let frame = encode_frame(&v1::ServerFrame { request_id: 0, body: Some(Resp::QuizVerdict(verdict)) });
        self.send
            .write_all(&frame)
            .await
            .map_err(|_| (ErrorCode::Internal, "control stream write failed".into()))
    }
}
