//! Live quizzes: the platform runs one per room through the admin API, and
//! players answer from their sessions.
//!
//! * [`Quizzes`] is the node's registry: at most one quiz per room.
//! * [`QuizRun`] is one quiz. Its players, questions, answers and tallies sit
//!   behind one `std::sync::Mutex`, held for a lookup and an insert per
//!   answer and never across an `.await`: answers are counted by the
//!   answering session's task, never by the room's, so a burst of answers
//!   costs the room nothing. A question's tallies are final once it is
//!   closed (by the reveal), because an answer is checked against the
//!   question's state and counted under the same lock.
//! * The room sequences the question and the result as events
//!   (`Rooms::quiz_event`); the correct option stays here until the reveal.
//!
//! **Players and elimination.** A user becomes a player by answering the
//! first question. At each reveal every player still in either answered
//! correctly, or spends a revive card (a wrong or missing answer), or is
//! eliminated. A user whose first answer comes after the first reveal joined
//! too late and is eliminated. Eliminated players can watch, not answer.
//!
//! **Verdicts.** After a reveal, every session of a player is woken through
//! [`QuizRun::revealed`] and sends its own user's [`v1::QuizVerdict`] on its
//! own control stream: nothing per player goes through the room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use roomcast_protocol::{RoomId, v1};
use tokio::sync::watch;

/// Most options a question may have.
pub const MAX_OPTIONS: usize = 10;
/// Most bytes of a question's text or of one option.
pub const MAX_TEXT_BYTES: usize = 512;
/// Most rounds in a quiz.
pub const MAX_ROUNDS: u32 = 100;
/// The answer window when the platform gives none.
pub const DEFAULT_WINDOW_MS: u32 = 10_000;
/// Most players one quiz tracks; beyond it a new player's answer is refused
/// as eliminated rather than grow without bound.
pub const MAX_PLAYERS: usize = 2_000_000;

/// How a quiz is run, as the platform created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuizSpec {
    pub rounds: u32,
    /// Revive cards each player starts with.
    pub revive_cards: u32,
    /// How far behind the live edge players' video may run: answers are
    /// taken this long after a question's window ends, by server time.
    pub stream_delay_ms: u64,
}

/// One question, as the platform starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionSpec {
    pub text: String,
    pub options: Vec<String>,
    pub correct: u32,
    pub media_ts_ms: u64,
    pub window_ms: u32,
    /// Wall clock, ms since the epoch; `None`: the start plus 2 s plus the
    /// stream-delay allowance.
    pub latest_display_ms: Option<u64>,
}

impl QuestionSpec {
    /// Refuses a question the platform may not start: 2 to [`MAX_OPTIONS`]
    /// options, texts of 1 to [`MAX_TEXT_BYTES`], a correct option among
    /// them, a window of at most ten minutes.
    pub fn check(&self) -> Result<(), QuizError> {
        if self.options.len() < 2 || self.options.len() > MAX_OPTIONS {
            return Err(QuizError::Invalid(format!("a question has 2 to {MAX_OPTIONS} options")));
        }
        if self.text.is_empty()
            || self.text.len() > MAX_TEXT_BYTES
            || self.options.iter().any(|o| o.len() > MAX_TEXT_BYTES)
        {
            return Err(QuizError::Invalid(format!("text and options are 1 to {MAX_TEXT_BYTES} bytes")));
        }
        if self.correct as usize >= self.options.len() {
            return Err(QuizError::Invalid("correct must index an option".into()));
        }
        if self.window_ms == 0 || self.window_ms > 600_000 {
            return Err(QuizError::Invalid("answer_window_ms must be 1 to 600000".into()));
        }
        Ok(())
    }
}

impl QuizSpec {
    /// Refuses a quiz of no rounds or more than [`MAX_ROUNDS`].
    pub fn check(&self) -> Result<(), QuizError> {
        if self.rounds == 0 || self.rounds > MAX_ROUNDS {
            return Err(QuizError::Invalid(format!("rounds must be 1 to {MAX_ROUNDS}")));
        }
        Ok(())
    }
}

/// Why the platform's request cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuizError {
    #[error("a quiz is already running in this room")]
    Running,
    #[error("no quiz is running in this room")]
    NoQuiz,
    #[error("the previous question has not been revealed")]
    QuestionOpen,
    #[error("every round of this quiz has been asked")]
    NoRoundsLeft,
    #[error("no such question, or it was revealed already")]
    NoQuestion,
    #[error("{0}")]
    Invalid(String),
    #[error("the fleet's quiz cannot be reached: {0}")]
    Unavailable(String),
}

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    Accepted,
    AlreadyAnswered,
    TooLate,
    Eliminated,
    UnknownQuestion,
    InvalidOption,
}

impl AnswerOutcome {
    pub fn to_proto(self) -> v1::AnswerOutcome {
        match self {
            Self::Accepted => v1::AnswerOutcome::Accepted,
            Self::AlreadyAnswered => v1::AnswerOutcome::AlreadyAnswered,
            Self::TooLate => v1::AnswerOutcome::TooLate,
            Self::Eliminated => v1::AnswerOutcome::Eliminated,
            Self::UnknownQuestion => v1::AnswerOutcome::UnknownQuestion,
            Self::InvalidOption => v1::AnswerOutcome::InvalidOption,
        }
    }

    /// The name counted in `roomcast_quiz_answers_total{outcome}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::AlreadyAnswered => "already_answered",
            Self::TooLate => "too_late",
            Self::Eliminated => "eliminated",
            Self::UnknownQuestion => "unknown_question",
            Self::InvalidOption => "invalid_option",
        }
    }
}

/// The id of a quiz created in `room` at `now_ms`.
pub fn quiz_id(room: &RoomId, now_ms: u64) -> String {
    format!("{}-{now_ms:x}", room.as_str())
}

/// The node's quizzes, one per room at most.
#[derive(Debug, Default)]
pub struct Quizzes {
    map: Mutex<HashMap<RoomId, Arc<QuizRun>>>,
}

impl Quizzes {
    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Arc<QuizRun>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a quiz in `room`; refused while one runs there.
    pub fn create(&self, room: &RoomId, spec: QuizSpec, now_ms: u64) -> Result<Arc<QuizRun>, QuizError> {
        spec.check()?;
        let mut map = self.lock();
        if map.get(room).is_some_and(|q| !q.is_ended()) {
            return Err(QuizError::Running);
        }
        let run = Arc::new(QuizRun::new(quiz_id(room, now_ms), spec));
        map.insert(room.clone(), run.clone());
        Ok(run)
    }

    /// The quiz of `room` (running or ended, until another is created).
    pub fn get(&self, room: &str) -> Option<Arc<QuizRun>> {
        self.lock().get(room).cloned()
    }
}

/// A player's state in one quiz.
#[derive(Debug, Clone)]
struct Player {
    eliminated: bool,
    revives_left: u32,
}

/// Whether a question takes answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Revealed,
}

#[derive(Debug)]
struct Question {
    id: String,
    index: u32,
    options: usize,
    correct: u32,
    closes_at_ms: u64,
    phase: Phase,
    counts: Vec<u64>,
    answers: HashMap<Arc<str>, u32>,
    /// Each player's standing after the reveal.
    verdicts: HashMap<Arc<str>, v1::QuizVerdict>,
}

#[derive(Debug, Default)]
struct Inner {
    players: HashMap<Arc<str>, Player>,
    questions: Vec<Question>,
    ended: bool,
}

/// One quiz (see the module docs).
#[derive(Debug)]
pub struct QuizRun {
    pub id: String,
    pub spec: QuizSpec,
    inner: Mutex<Inner>,
    /// The index of the last revealed question (0: none yet). Sessions of
    /// players wait on it to send their verdicts.
    revealed: watch::Sender<u32>,
}

/// A quiz's standing, for the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuizStatus {
    pub id: String,
    pub rounds: u32,
    pub asked: u32,
    pub open_question: Option<String>,
    pub players: u64,
    pub remaining: u64,
    pub ended: bool,
}

impl QuizRun {
    fn new(id: String, spec: QuizSpec) -> Self {
        Self { id, spec, inner: Mutex::new(Inner::default()), revealed: watch::Sender::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; poison carries no meaning.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// Waits on the reveals: the value is the last revealed index.
    pub fn revealed(&self) -> watch::Receiver<u32> {
        self.revealed.subscribe()
    }

    /// Opens the next question and returns its event body (the caller has
    /// the room sequence it). Refused while the previous one is unrevealed.
    pub fn start(&self, q: QuestionSpec, now_ms: u64) -> Result<v1::QuizQuestion, QuizError> {
        q.check()?;
        let mut inner = self.lock();
        if inner.ended {
            return Err(QuizError::NoQuiz);
        }
        if inner.questions.last().is_some_and(|q| q.phase == Phase::Open) {
            return Err(QuizError::QuestionOpen);
        }
        let index = inner.questions.len() as u32 + 1;
        if index > self.spec.rounds {
            return Err(QuizError::NoRoundsLeft);
        }
        let closes_at_ms = now_ms + u64::from(q.window_ms) + self.spec.stream_delay_ms;
        let latest_display_ms = q.latest_display_ms.unwrap_or(now_ms + 2_000 + self.spec.stream_delay_ms);
        let id = format!("{}-q{index}", self.id);
        inner.questions.push(Question {
            id: id.clone(),
            index,
            options: q.options.len(),
            correct: q.correct,
            closes_at_ms,
            phase: Phase::Open,
            counts: vec![0; q.options.len()],
            answers: HashMap::new(),
            verdicts: HashMap::new(),
        });
        Ok(v1::QuizQuestion {
            quiz_id: self.id.clone(),
            question_id: id,
            index,
            rounds: self.spec.rounds,
            text: q.text,
            options: q.options,
            media_ts_ms: q.media_ts_ms,
            answer_window_ms: q.window_ms,
            latest_display_ms,
            closes_at_ms,
        })
    }

    /// Takes back the question just started, when the room could not
    /// sequence it.
    pub fn withdraw(&self, question_id: &str) {
        let mut inner = self.lock();
        if inner.questions.last().is_some_and(|q| q.id == question_id && q.answers.is_empty()) {
            inner.questions.pop();
        }
    }

    /// Records `user`'s answer, once, and counts it.
    pub fn answer(
        &self,
        user: &Arc<str>,
        question_id: &str,
        option: u32,
        now_ms: u64,
    ) -> (AnswerOutcome, u32) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(pos) = inner.questions.iter().position(|q| q.id == question_id) else {
            return (AnswerOutcome::UnknownQuestion, 0);
        };
        let revealed_before = inner.questions[..pos].iter().any(|q| q.phase == Phase::Revealed);
        let q = &mut inner.questions[pos];
        if let Some(first) = q.answers.get(user) {
            return (AnswerOutcome::AlreadyAnswered, *first);
        }
        if q.phase != Phase::Open || now_ms > q.closes_at_ms || inner.ended {
            return (AnswerOutcome::TooLate, 0);
        }
        if option as usize >= q.options {
            return (AnswerOutcome::InvalidOption, 0);
        }
        match inner.players.get(user) {
            Some(p) if p.eliminated => return (AnswerOutcome::Eliminated, 0),
            Some(_) => {}
            None if revealed_before || inner.players.len() >= MAX_PLAYERS => {
                // Missed a revealed question: out from the start.
                inner.players.insert(user.clone(), Player { eliminated: true, revives_left: 0 });
                return (AnswerOutcome::Eliminated, 0);
            }
            None => {
                inner
                    .players
                    .insert(user.clone(), Player { eliminated: false, revives_left: self.spec.revive_cards });
            }
        }
        q.answers.insert(user.clone(), option);
        q.counts[option as usize] += 1;
        (AnswerOutcome::Accepted, option)
    }

    /// Closes `question_id`, decides every player's standing, and returns
    /// the result's event body (the caller has the room sequence it, then
    /// calls [`QuizRun::announce`]).
    pub fn reveal(&self, question_id: &str) -> Result<v1::QuizResult, QuizError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let q = inner
            .questions
            .iter_mut()
            .find(|q| q.id == question_id && q.phase == Phase::Open)
            .ok_or(QuizError::NoQuestion)?;
        q.phase = Phase::Revealed;
        let mut remaining = 0;
        for (user, p) in inner.players.iter_mut() {
            if p.eliminated {
                continue;
            }
            let correct = q.answers.get(user) == Some(&q.correct);
            let revive_used = !correct && p.revives_left > 0;
            if revive_used {
                p.revives_left -= 1;
            }
            p.eliminated = !correct && !revive_used;
            remaining += u64::from(!p.eliminated);
            let verdict = v1::QuizVerdict {
                room: String::new(),
                quiz_id: self.id.clone(),
                question_id: q.id.clone(),
                correct,
                still_in: !p.eliminated,
                revive_used,
                revives_left: p.revives_left,
            };
            q.verdicts.insert(user.clone(), verdict);
        }
        Ok(v1::QuizResult {
            quiz_id: self.id.clone(),
            question_id: q.id.clone(),
            index: q.index,
            correct_option: q.correct,
            counts: q.counts.clone(),
            remaining,
            last: q.index == self.spec.rounds,
        })
    }

    /// Tells the players' sessions that question `index` was revealed.
    pub fn announce(&self, index: u32) {
        self.revealed.send_replace(index);
    }

    /// `user`'s verdict on the question of `index`, if `user` was still a
    /// player then.
    pub fn verdict(&self, user: &str, index: u32) -> Option<v1::QuizVerdict> {
        let inner = self.lock();
        let q = inner.questions.iter().find(|q| q.index == index)?;
        q.verdicts.get(user).cloned()
    }

    /// Whether `user` has answered any question of this quiz.
    pub fn is_player(&self, user: &str) -> bool {
        self.lock().players.contains_key(user)
    }

    /// Ends the quiz: nothing more is asked or answered. Returns the players
    /// still in, sorted.
    pub fn end(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.ended = true;
        let mut winners: Vec<String> =
            inner.players.iter().filter(|(_, p)| !p.eliminated).map(|(u, _)| u.to_string()).collect();
        winners.sort();
        winners
    }

    pub fn status(&self) -> QuizStatus {
        let inner = self.lock();
        QuizStatus {
            id: self.id.clone(),
            rounds: self.spec.rounds,
            asked: inner.questions.len() as u32,
            open_question: inner.questions.last().filter(|q| q.phase == Phase::Open).map(|q| q.id.clone()),
            players: inner.players.len() as u64,
            remaining: inner.players.values().filter(|p| !p.eliminated).count() as u64,
            ended: inner.ended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiz(rounds: u32, revive_cards: u32) -> QuizRun {
        QuizRun::new("quiz".into(), QuizSpec { rounds, revive_cards, stream_delay_ms: 1_000 })
    }

    fn question(correct: u32) -> QuestionSpec {
        QuestionSpec {
            text: "2 + 2?".into(),
            options: vec!["3".into(), "4".into(), "5".into()],
            correct,
            media_ts_ms: 60_000,
            window_ms: 10_000,
            latest_display_ms: None,
        }
    }

    fn user(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn one_answer_per_user_counted_exactly_and_refused_after_the_window_and_allowance() {
        let q = quiz(3, 0);
        let asked = q.start(question(1), 100_000).unwrap();
        assert_eq!(asked.closes_at_ms, 100_000 + 10_000 + 1_000);
        assert_eq!(q.answer(&user("a"), &asked.question_id, 1, 100_500), (AnswerOutcome::Accepted, 1));
        assert_eq!(q.answer(&user("a"), &asked.question_id, 2, 100_600), (AnswerOutcome::AlreadyAnswered, 1));
        assert_eq!(q.answer(&user("b"), &asked.question_id, 2, 111_000), (AnswerOutcome::Accepted, 2));
        assert_eq!(q.answer(&user("c"), &asked.question_id, 1, 111_001), (AnswerOutcome::TooLate, 0));
        assert_eq!(q.answer(&user("d"), &asked.question_id, 3, 101_000), (AnswerOutcome::InvalidOption, 0));
        assert_eq!(q.answer(&user("d"), "nope", 0, 101_000), (AnswerOutcome::UnknownQuestion, 0));
        let result = q.reveal(&asked.question_id).unwrap();
        assert_eq!((result.counts, result.correct_option, result.remaining), (vec![0, 1, 1], 1, 1));
        assert_eq!(q.answer(&user("e"), &asked.question_id, 1, 101_000), (AnswerOutcome::TooLate, 0));
    }

    #[test]
    fn wrong_or_missing_answers_spend_revive_cards_then_eliminate() {
        let q = quiz(3, 1);
        let first = q.start(question(0), 0).unwrap();
        for u in ["right", "wrong", "late"] {
            let option = if u == "right" { 0 } else { 1 };
            if u != "late" {
                q.answer(&user(u), &first.question_id, option, 1).0.to_proto();
            }
        }
        assert!(q.start(question(0), 2).is_err(), "the first question is still open");
        let r1 = q.reveal(&first.question_id).unwrap();
        assert_eq!(r1.remaining, 2, "wrong spent its revive card");
        let v = q.verdict("wrong", 1).unwrap();
        assert!(!v.correct && v.still_in && v.revive_used && v.revives_left == 0);
        assert!(q.verdict("right", 1).unwrap().still_in);
        let second = q.start(question(2), 20_000).unwrap();
        assert_eq!(
            q.answer(&user("late"), &second.question_id, 2, 20_001).0,
            AnswerOutcome::Eliminated,
            "joined after a reveal"
        );
        assert_eq!(q.answer(&user("right"), &second.question_id, 2, 20_001).0, AnswerOutcome::Accepted);
        // "wrong" misses this one and has no card left.
        let r2 = q.reveal(&second.question_id).unwrap();
        assert_eq!(r2.remaining, 1);
        assert!(!q.verdict("wrong", 2).unwrap().still_in);
        let third = q.start(question(0), 40_000).unwrap();
        assert!(third.index == 3 && q.reveal(&third.question_id).unwrap().last);
        assert_eq!(q.answer(&user("wrong"), &third.question_id, 0, 40_001).0, AnswerOutcome::TooLate);
        assert_eq!(q.start(question(0), 60_000), Err(QuizError::NoRoundsLeft));
        assert_eq!(q.end(), ["right"], "right missed the third and spent its card");
        assert!(q.verdict("right", 3).unwrap().revive_used);
    }

    #[test]
    fn the_registry_keeps_one_running_quiz_per_room() {
        let quizzes = Quizzes::default();
        let room = RoomId::new("r").unwrap();
        let spec = QuizSpec { rounds: 1, revive_cards: 0, stream_delay_ms: 0 };
        let run = quizzes.create(&room, spec.clone(), 1).unwrap();
        assert_eq!(quizzes.create(&room, spec.clone(), 2).unwrap_err(), QuizError::Running);
        run.end();
        assert!(quizzes.create(&room, spec.clone(), 3).is_ok(), "a new quiz once the last ended");
        assert!(quizzes.create(&room, QuizSpec { rounds: 0, ..spec }, 4).is_err());
    }
}
