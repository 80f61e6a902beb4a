//! A room's live quiz in a fleet: the quiz, its questions, answers, players
//! and verdicts live in Redis under the room's hash tag (`quiz.lua`), so an
//! answer reaching any node is checked and counted once, fleet-wide.
//!
//! * Answers are batched: sessions hand them to the node's [`AnswerBatcher`],
//!   which sends what has queued up (at most [`MAX_ANSWERS`]) per room in
//!   one script call, a few calls in flight at once, and completes each
//!   session's answer.
//! * A reveal closes the question in one script call, then the revealing
//!   node walks the players in pages (`HSCAN`), decides each one's standing
//!   and writes the verdicts, so no single call holds Redis for the whole
//!   crowd.
//! * Every node learns of a reveal from the room's sequenced `QuizResult`,
//!   wakes its players' sessions ([`Fleet::quiz_revealed`]), and each reads
//!   its own verdict, through the same batcher (one `HMGET` per batch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{Script, Value};
use roomcast_protocol::{RoomId, v1};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Fleet, FleetError};
use crate::quiz::{AnswerOutcome, QuestionSpec, QuizError, QuizSpec, QuizStatus};

/// Most answers one script call checks.
pub(super) const MAX_ANSWERS: usize = 256;
/// Answers waiting for the batcher; beyond it an answer is refused as
/// unavailable rather than queued without bound.
const ANSWER_QUEUE: usize = 16_384;
/// How long a quiz's keys outlive their last change.
const QUIZ_TTL: Duration = Duration::from_secs(24 * 3600);
/// Players read per page during a reveal.
const REVEAL_PAGE: usize = 1_000;

fn meta_key(room: &RoomId) -> String {
    format!("rc:{{{}}}:quiz", room.as_str())
}

/// The last reveal a node heard of in a room: the quiz and question index.
pub type Revealed = (Arc<str>, u32);

/// Per room, the watch sessions of players wait on for reveals.
#[derive(Debug, Default)]
pub(super) struct RevealWatches(Mutex<HashMap<RoomId, watch::Sender<Revealed>>>);

impl RevealWatches {
    fn sender(&self, room: &RoomId) -> watch::Sender<Revealed> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Rooms whose watchers are all gone are forgotten.
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(room.clone()).or_insert_with(|| watch::Sender::new((Arc::from(""), 0))).clone()
    }
}

fn text(v: &Value) -> String {
    redis::from_redis_value::<String>(v.clone()).unwrap_or_default()
}

fn number(v: &Value) -> u64 {
    redis::from_redis_value::<u64>(v.clone()).unwrap_or(0)
}

/// The error a script's first word names.
fn refusal(word: &str) -> QuizError {
    match word {
        "running" => QuizError::Running,
        "no_quiz" => QuizError::NoQuiz,
        "question_open" => QuizError::QuestionOpen,
        "no_rounds" => QuizError::NoRoundsLeft,
        "no_question" => QuizError::NoQuestion,
        other => QuizError::Invalid(format!("the fleet's quiz answered {other:?}")),
    }
}

impl From<FleetError> for QuizError {
    fn from(e: FleetError) -> Self {
        QuizError::Unavailable(e.to_string())
    }
}

/// A player's standing, as the players hash keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    In { revives: u32 },
    Out,
}

impl Standing {
    fn parse(s: &str) -> Self {
        match s.strip_prefix("in:").and_then(|n| n.parse().ok()) {
            Some(revives) => Standing::In { revives },
            None => Standing::Out,
        }
    }

    fn encode(self) -> String {
        match self {
            Standing::In { revives } => format!("in:{revives}"),
            Standing::Out => "out".into(),
        }
    }
}

impl Fleet {
    async fn quiz(&self, room: &RoomId, args: &[String]) -> Result<Vec<Value>, QuizError> {
        let script = Script::new(include_str!("quiz.lua"));
        let mut invocation = script.key(meta_key(room));
        for a in args {
            invocation.arg(a);
        }
        let mut conn = self.link.conn().await?;
        let reply: Result<Vec<Value>, _> = invocation.invoke_async(&mut conn).await;
        Ok(self.answered(reply.map_err(FleetError::from))?)
    }

    /// Creates `room`'s quiz with `id`; refused while one runs there.
    pub async fn quiz_create(&self, room: &RoomId, id: &str, spec: &QuizSpec) -> Result<(), QuizError> {
        let ttl = QUIZ_TTL.as_millis() as u64;
        let args = [
            "create".into(),
            id.to_string(),
            spec.rounds.to_string(),
            spec.revive_cards.to_string(),
            spec.stream_delay_ms.to_string(),
            ttl.to_string(),
        ];
        let r = self.quiz(room, &args).await?;
        match r.first().map(text).as_deref() {
            Some("ok") => Ok(()),
            other => Err(refusal(other.unwrap_or(""))),
        }
    }

    /// `room`'s quiz: running, or the last that ended.
    pub async fn quiz_status(&self, room: &RoomId) -> Result<QuizStatus, QuizError> {
        let r = self.quiz(room, &["status".into()]).await?;
        if r.first().map(text).as_deref() != Some("ok") || r.len() < 8 {
            return Err(QuizError::NoQuiz);
        }
        let open = text(&r[4]);
        Ok(QuizStatus {
            id: text(&r[1]),
            rounds: number(&r[2]) as u32,
            asked: number(&r[3]) as u32,
            open_question: (!open.is_empty()).then_some(open),
            players: number(&r[5]),
            remaining: number(&r[6]),
            ended: text(&r[7]) == "1",
        })
    }

    /// Opens `room`'s next question; returns its event body for the room to
    /// sequence.
    pub async fn quiz_start(
        &self,
        room: &RoomId,
        q: QuestionSpec,
        now_ms: u64,
    ) -> Result<v1::QuizQuestion, QuizError> {
        q.check()?;
        let latest = q.latest_display_ms.map(|l| l.to_string()).unwrap_or_default();
        let ttl = QUIZ_TTL.as_millis() as u64;
        let options = q.options.len();
        let args = [
            "start".into(),
            now_ms.to_string(),
            options.to_string(),
            q.correct.to_string(),
            q.window_ms.to_string(),
            latest,
            ttl.to_string(),
        ];
        let r = self.quiz(room, &args).await?;
        if r.first().map(text).as_deref() != Some("ok") || r.len() < 6 {
            return Err(refusal(&r.first().map(text).unwrap_or_default()));
        }
        let quiz_id = text(&r[2]).rsplit_once("-q").map(|(quiz, _)| quiz.to_string()).unwrap_or_default();
        Ok(v1::QuizQuestion {
            quiz_id,
            question_id: text(&r[2]),
            index: number(&r[1]) as u32,
            rounds: number(&r[5]) as u32,
            text: q.text,
            options: q.options,
            media_ts_ms: q.media_ts_ms,
            answer_window_ms: q.window_ms,
            latest_display_ms: number(&r[4]),
            closes_at_ms: number(&r[3]),
        })
    }

    /// Takes back the question just started, when the room could not
    /// sequence it.
    pub async fn quiz_withdraw(&self, room: &RoomId, question_id: &str) {
        if let Err(e) = self.quiz(room, &["withdraw".into(), question_id.to_string()]).await {
            tracing::warn!(error = %e, room = %room, "quiz question not withdrawn");
        }
    }

    /// Closes `question_id`, decides every player's standing and writes
    /// their verdicts; returns the result's event body.
    pub async fn quiz_reveal(&self, room: &RoomId, question_id: &str) -> Result<v1::QuizResult, QuizError> {
        let r = self.quiz(room, &["close".into(), question_id.to_string()]).await?;
        if r.first().map(text).as_deref() != Some("ok") || r.len() < 4 {
            return Err(refusal(&r.first().map(text).unwrap_or_default()));
        }
        let (index, correct, rounds) = (number(&r[1]) as u32, number(&r[2]) as u32, number(&r[3]) as u32);
        let counts: Vec<u64> = r[4..].iter().map(number).collect();
        let remaining = self.quiz_decide(room, question_id, index, correct).await?;
        Ok(v1::QuizResult {
            quiz_id: question_id.rsplit_once("-q").map(|(q, _)| q.to_string()).unwrap_or_default(),
            question_id: question_id.to_string(),
            index,
            correct_option: correct,
            counts,
            remaining,
            last: index == rounds,
        })
    }

    /// Walks the players in pages: each still in either answered `correct`,
    /// spends a revive card, or is out; writes the standings and verdicts.
    /// Returns how many are still in.
    async fn quiz_decide(
        &self,
        room: &RoomId,
        question_id: &str,
        index: u32,
        correct: u32,
    ) -> Result<u64, QuizError> {
        let meta = meta_key(room);
        let (players, answers, verdicts) =
            (format!("{meta}:p"), format!("{meta}:a:{index}"), format!("{meta}:v:{index}"));
        let quiz_id = question_id.rsplit_once("-q").map(|(q, _)| q.to_string()).unwrap_or_default();
        let mut conn = self.link.conn().await?;
        let mut cursor: u64 = 0;
        let mut remaining = 0u64;
        let mut seen = std::collections::HashSet::new();
        loop {
            let (next, page) = players_page(&mut conn, &players, cursor).await?;
            let candidates: Vec<(String, u32)> = page
                .into_iter()
                .filter_map(|(user, s)| match Standing::parse(&s) {
                    Standing::In { revives } => Some((user, revives)),
                    Standing::Out => None,
                })
                .collect();
            // A player decided already (HSCAN may name one twice, and a
            // reveal cut short is decided again) is counted, not decided
            // twice.
            let mut still = Vec::with_capacity(candidates.len());
            if !candidates.is_empty() {
                let users: Vec<&str> = candidates.iter().map(|(u, _)| u.as_str()).collect();
                let decided: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(&verdicts)
                    .arg(&users)
                    .query_async(&mut conn)
                    .await
                    .map_err(FleetError::from)?;
                for (c, d) in candidates.into_iter().zip(decided) {
                    if !seen.insert(c.0.clone()) {
                        continue;
                    }
                    match d {
                        Some(v) => remaining += u64::from(v.split(',').nth(1) == Some("1")),
                        None => still.push(c),
                    }
                }
            }
            if !still.is_empty() {
                let users: Vec<&str> = still.iter().map(|(u, _)| u.as_str()).collect();
                let given: Vec<Option<u32>> = redis::cmd("HMGET")
                    .arg(&answers)
                    .arg(&users)
                    .query_async(&mut conn)
                    .await
                    .map_err(FleetError::from)?;
                let mut pipe = redis::pipe();
                for ((user, revives), answer) in still.iter().zip(given) {
                    let is_correct = answer == Some(correct);
                    let revive_used = !is_correct && *revives > 0;
                    let left = if revive_used { revives - 1 } else { *revives };
                    let still_in = is_correct || revive_used;
                    let standing = if still_in { Standing::In { revives: left } } else { Standing::Out };
                    remaining += u64::from(still_in);
                    pipe.hset(&players, user, standing.encode()).ignore();
                    let verdict = format!(
                        "{},{},{},{}",
                        u8::from(is_correct),
                        u8::from(still_in),
                        u8::from(revive_used),
                        left
                    );
                    pipe.hset(&verdicts, user, verdict).ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.map_err(FleetError::from)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let ttl = QUIZ_TTL.as_millis() as i64;
        let mut pipe = redis::pipe();
        pipe.hset(&meta, "remaining", remaining)
            .ignore()
            .hset(&meta, "deciding", 0)
            .ignore()
            .pexpire(&verdicts, ttl)
            .ignore();
        let _: () = pipe.query_async(&mut conn).await.map_err(FleetError::from)?;
        self.link.answered();
        tracing::debug!(room = %room, quiz = %quiz_id, index, remaining, "quiz question decided");
        Ok(remaining)
    }

    /// Ends `room`'s quiz; returns its id and the players still in, sorted.
    pub async fn quiz_end(&self, room: &RoomId) -> Result<(String, Vec<String>), QuizError> {
        let r = self.quiz(room, &["end".into()]).await?;
        if r.first().map(text).as_deref() != Some("ok") || r.len() < 2 {
            return Err(QuizError::NoQuiz);
        }
        let players = format!("{}:p", meta_key(room));
        let mut conn = self.link.conn().await?;
        // In pages, like a reveal: no call holds Redis for the whole crowd.
        let mut winners = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page) = players_page(&mut conn, &players, cursor).await?;
            let still_in =
                page.into_iter().filter(|(_, s)| matches!(Standing::parse(s), Standing::In { .. }));
            winners.extend(still_in.map(|(u, _)| u));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let winners: Vec<String> = winners.into_iter().collect();
        Ok((text(&r[1]), winners))
    }

    /// `user`'s verdict on question `index` of `quiz_id` in `room`, if they
    /// were still a player then.
    pub async fn quiz_verdict(
        &self,
        room: &RoomId,
        quiz_id: &str,
        index: u32,
        user: &str,
    ) -> Option<v1::QuizVerdict> {
        // Through the batcher: a reveal wakes every player's session here at
        // once, and their reads go out together, one HMGET per batch. A full
        // queue is waited on, not given up on: a verdict dropped here would
        // never be sent (each session waits in its own step, so the wait is
        // bounded by the node's sessions, not the queue).
        let (reply, read) = oneshot::channel();
        let ask = VerdictAsk { room: room.clone(), index, user: user.to_string(), reply };
        self.answers.send(Job::Verdict(ask)).await.ok()?;
        let v = read.await.ok()??;
        let fields: Vec<u32> = v.split(',').filter_map(|f| f.parse().ok()).collect();
        let [correct, still_in, revive_used, revives_left] = fields[..] else { return None };
        Some(v1::QuizVerdict {
            room: room.to_string(),
            quiz_id: quiz_id.to_string(),
            question_id: format!("{quiz_id}-q{index}"),
            correct: correct == 1,
            still_in: still_in == 1,
            revive_used: revive_used == 1,
            revives_left,
        })
    }

    /// The room's reveals as this node hears of them.
    pub fn quiz_reveals(&self, room: &RoomId) -> watch::Receiver<Revealed> {
        self.reveals.sender(room).subscribe()
    }

    /// A `QuizResult` of `room` came through the sequence: its players'
    /// sessions here read their verdicts.
    pub fn quiz_revealed(&self, room: &RoomId, result: &v1::QuizResult) {
        self.reveals.sender(room).send_replace((Arc::from(result.quiz_id.as_str()), result.index));
    }

    /// Checks and counts an answer through the node's batcher.
    pub async fn quiz_answer(
        &self,
        room: &RoomId,
        user: &str,
        question_id: &str,
        option: u32,
        now_ms: u64,
    ) -> Result<(AnswerOutcome, u32), QuizError> {
        let (reply, answered) = oneshot::channel();
        let answer = Answer {
            room: room.clone(),
            user: user.to_string(),
            question_id: question_id.to_string(),
            option,
            now_ms,
            reply,
        };
        self.answers
            .try_send(Job::Answer(answer))
            .map_err(|_| QuizError::Unavailable("too many answers waiting for the fleet's Redis".into()))?;
        answered.await.map_err(|_| QuizError::Unavailable("the answer batcher stopped".into()))?
    }
}

/// One page of a quiz's players (user, standing) from `cursor`, and the
/// cursor of the next (0: none).
async fn players_page(
    conn: &mut super::link::Conn,
    players: &str,
    cursor: u64,
) -> Result<(u64, Vec<(String, String)>), FleetError> {
    Ok(redis::cmd("HSCAN").arg(players).arg(cursor).arg("COUNT").arg(REVEAL_PAGE).query_async(conn).await?)
}

/// One answer waiting to be checked.
pub(super) struct Answer {
    room: RoomId,
    user: String,
    question_id: String,
    option: u32,
    now_ms: u64,
    reply: oneshot::Sender<Result<(AnswerOutcome, u32), QuizError>>,
}

/// One player's verdict to read.
pub(super) struct VerdictAsk {
    room: RoomId,
    index: u32,
    user: String,
    reply: oneshot::Sender<Option<String>>,
}

/// What sessions hand the batcher.
pub(super) enum Job {
    Answer(Answer),
    Verdict(VerdictAsk),
}

/// The node's batcher: the sending end sessions use.
pub(super) type AnswerBatcher = mpsc::Sender<Job>;

/// The batcher's channel.
pub(super) fn start_batcher() -> (AnswerBatcher, mpsc::Receiver<Job>) {
    mpsc::channel(ANSWER_QUEUE)
}

/// Script calls of the batcher in flight at once: while one runs, the
/// answers arriving meanwhile go out in the next, pipelined on the same
/// connection.
const CALLS_IN_FLIGHT: usize = 4;

/// The batcher: what has queued goes to Redis per room (answers) or per
/// question (verdict reads), at most [`MAX_ANSWERS`] per call and
/// [`CALLS_IN_FLIGHT`] calls at once.
pub(super) async fn run_batcher(fleet: Fleet, mut rx: mpsc::Receiver<Job>) {
    let mut queued: Vec<Job> = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    loop {
        while calls.len() >= CALLS_IN_FLIGHT {
            let _ = calls.join_next().await;
        }
        let got = tokio::select! {
            n = rx.recv_many(&mut queued, MAX_ANSWERS) => n,
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
        };
        if got == 0 {
            break;
        }
        let mut by_room: HashMap<RoomId, Vec<Answer>> = HashMap::new();
        let mut by_question: HashMap<(RoomId, u32), Vec<VerdictAsk>> = HashMap::new();
        for job in queued.drain(..) {
            match job {
                Job::Answer(a) => by_room.entry(a.room.clone()).or_default().push(a),
                Job::Verdict(v) => by_question.entry((v.room.clone(), v.index)).or_default().push(v),
            }
        }
        for (room, chunk) in by_room {
            let fleet = fleet.clone();
            calls.spawn(async move { check(&fleet, &room, chunk).await });
        }
        for ((room, index), asks) in by_question {
            let fleet = fleet.clone();
            calls.spawn(async move { read_verdicts(&fleet, &room, index, asks).await });
        }
    }
}

/// Reads the verdicts `asks` want in one HMGET; a failed read gives none.
async fn read_verdicts(fleet: &Fleet, room: &RoomId, index: u32, asks: Vec<VerdictAsk>) {
    let key = format!("{}:v:{index}", meta_key(room));
    let users: Vec<&str> = asks.iter().map(|a| a.user.as_str()).collect();
    let read = async {
        let mut conn = fleet.link.conn().await?;
        let v: Vec<Option<String>> = redis::cmd("HMGET").arg(&key).arg(&users).query_async(&mut conn).await?;
        Ok::<_, FleetError>(v)
    };
    match read.await {
        Ok(values) if values.len() == asks.len() => {
            for (ask, v) in asks.into_iter().zip(values) {
                let _ = ask.reply.send(v);
            }
        }
        _ => {
            for ask in asks {
                let _ = ask.reply.send(None);
            }
        }
    }
}

async fn check(fleet: &Fleet, room: &RoomId, chunk: Vec<Answer>) {
    let ttl = QUIZ_TTL.as_millis() as u64;
    let mut args: Vec<String> = Vec::with_capacity(2 + 4 * chunk.len());
    args.extend(["answer".into(), ttl.to_string()]);
    for a in &chunk {
        // Each answer is judged late or not by its own arrival time.
        args.extend([a.user.clone(), a.question_id.clone(), a.option.to_string(), a.now_ms.to_string()]);
    }
    let reply = fleet.quiz(room, &args).await;
    match reply {
        Ok(out) if out.len() == chunk.len() * 2 => {
            for (a, pair) in chunk.into_iter().zip(out.chunks(2)) {
                let outcome = match text(&pair[0]).as_str() {
                    "accepted" => AnswerOutcome::Accepted,
                    "already" => AnswerOutcome::AlreadyAnswered,
                    "too_late" => AnswerOutcome::TooLate,
                    "eliminated" => AnswerOutcome::Eliminated,
                    "invalid" => AnswerOutcome::InvalidOption,
                    _ => AnswerOutcome::UnknownQuestion,
                };
                let _ = a.reply.send(Ok((outcome, number(&pair[1]) as u32)));
            }
        }
        Ok(_) => {
            for a in chunk {
                let _ =
                    a.reply.send(Err(QuizError::Unavailable("a short answer from the fleet's quiz".into())));
            }
        }
        Err(e) => {
            for a in chunk {
                let _ = a.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standings_read_back_what_they_wrote() {
        for s in [Standing::In { revives: 0 }, Standing::In { revives: 3 }, Standing::Out] {
            assert_eq!(Standing::parse(&s.encode()), s);
        }
        assert_eq!(Standing::parse("garbage"), Standing::Out);
    }
}
