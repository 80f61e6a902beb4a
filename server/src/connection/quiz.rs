//! A session's side of a live quiz: answering, and telling its own user
//! the verdict after each reveal.

use super::*;
use crate::quiz::{AnswerOutcome, QuizRun};

/// The quiz whose reveals a session waits on (its user is a player in it),
/// and where: the room it is in.
pub(super) struct QuizWatch {
    run: Arc<QuizRun>,
    room: RoomId,
    revealed: tokio::sync::watch::Receiver<u32>,
}

/// The next reveal of the watched quiz: its question index. Never resolves
/// without a watch, or once the quiz is gone.
pub(super) async fn next_reveal(watch: &mut Option<QuizWatch>) -> u32 {
    match watch {
        Some(w) => match w.revealed.changed().await {
            Ok(()) => *w.revealed.borrow_and_update(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Session {
    /// Answers the open quiz question of a joined room: recorded and counted
    /// at once, here, never by the room.
    pub(super) fn answer_quiz(&mut self, a: v1::SubmitAnswer) -> Result<Resp, (ErrorCode, String)> {
        let (room, _) = self.joined_room(&a.room)?;
        if a.question_id.len() > MAX_MESSAGE_ID_BYTES {
            return Err((
                ErrorCode::ProtocolViolation,
                format!("question_id longer than {MAX_MESSAGE_ID_BYTES} bytes"),
            ));
        }
        self.touch();
        let now_ms = unix_ms(SystemTime::now());
        let (outcome, option) = match self.shared.quizzes.get(room.as_str()) {
            None => (AnswerOutcome::UnknownQuestion, 0),
            Some(run) => {
                let answered = run.answer(&self.identity.user_id, &a.question_id, a.option, now_ms);
                if answered.0 == AnswerOutcome::Accepted
                    && self.quiz.as_ref().is_none_or(|w| !Arc::ptr_eq(&w.run, &run))
                {
                    // A player from now on: it hears of every reveal.
                    let mut revealed = run.revealed();
                    revealed.mark_unchanged();
                    self.quiz = Some(QuizWatch { run, room: room.clone(), revealed });
                }
                answered
            }
        };
        self.shared.metrics.quiz_answer(outcome.name());
        Ok(Resp::AnswerAck(v1::AnswerAck {
            room: room.to_string(),
            question_id: a.question_id,
            outcome: outcome.to_proto() as i32,
            option,
            server_time_ms: now_ms,
        }))
    }

    /// Sends this user's verdict on question `index` of the watched quiz, on
    /// the control stream, unsolicited.
    pub(super) async fn send_verdict(&mut self, index: u32) -> Result<(), (ErrorCode, String)> {
        let Some(w) = &self.quiz else { return Ok(()) };
        let Some(mut verdict) = w.run.verdict(&self.identity.user_id, index) else { return Ok(()) };
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
