//! Running a live quiz in a room: create it, start each question, reveal it,
//! end the quiz. The correct option stays on the node (in a fleet, in its
//! Redis) until the reveal. In a fleet any node's API runs the room's one
//! quiz, and players on every node answer it.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use roomcast_protocol::unix_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::errors::{ApiCode, ApiError, ApiResult, ErrorBody, JsonBody, PathParams, room_id};
use crate::quiz::{DEFAULT_WINDOW_MS, QuestionSpec, QuizError, QuizSpec, QuizStatus};
use crate::room::QuizEvent;

impl From<QuizError> for ApiError {
    fn from(e: QuizError) -> Self {
        let code = match &e {
            QuizError::Running => ApiCode::QuizRunning,
            QuizError::NoQuiz => ApiCode::NoQuiz,
            QuizError::QuestionOpen => ApiCode::QuestionOpen,
            QuizError::NoRoundsLeft => ApiCode::NoRoundsLeft,
            QuizError::NoQuestion => ApiCode::NoQuestion,
            QuizError::Invalid(_) => ApiCode::InvalidRequest,
            QuizError::Unavailable(_) => ApiCode::Unavailable,
        };
        ApiError::new(code, e.to_string())
    }
}

/// A quiz to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQuiz {
    /// Questions in the quiz, 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    pub rounds: u32,
    /// Revive cards each player starts with: each saves one wrong or
    /// missed answer.
    #[serde(default)]
    pub revive_cards: u32,
    /// How far behind the live edge players' video may run, in ms: answers
    /// are taken this long after a question's window, by server time
    /// (default 3000).
    #[serde(default = "default_delay")]
    pub stream_delay_ms: u64,
}

fn default_delay() -> u64 {
    3_000
}

/// A quiz's standing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Quiz {
    pub room: String,
    pub quiz_id: String,
    pub rounds: u32,
    /// Questions started so far.
    pub asked: u32,
    /// The question taking answers, if one is.
    pub open_question: Option<String>,
    /// Users who answered any question.
    pub players: u64,
    /// Players still in.
    pub remaining: u64,
    pub ended: bool,
}

impl Quiz {
    fn of(room: &str, s: QuizStatus) -> Self {
        Self {
            room: room.to_string(),
            quiz_id: s.id,
            rounds: s.rounds,
            asked: s.asked,
            open_question: s.open_question,
            players: s.players,
            remaining: s.remaining,
            ended: s.ended,
        }
    }
}

/// A question to start.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartQuestion {
    /// 1 to 512 bytes (UTF-8).
    #[schema(min_length = 1, max_length = 512)]
    pub text: String,
    /// 2 to 10 options, each 0 to 512 bytes (UTF-8).
    #[schema(min_items = 2, max_items = 10)]
    pub options: Vec<String>,
    /// 0-based index of the correct option, less than the number of
    /// options; kept on the node until the reveal.
    #[schema(minimum = 0, maximum = 9)]
    pub correct: u32,
    /// Where on the stream's media timeline the host asks it, in ms.
    pub media_ts_ms: u64,
    /// How long answers are taken, in ms, 1 to 600000 (default 10000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 600_000)]
    pub answer_window_ms: Option<u32>,
    /// Wall clock (ms since the epoch) by which every player is shown the
    /// question even if their video stalls; default: 2 s plus the stream
    /// delay allowance after now.
    #[serde(default)]
    pub latest_display_ms: Option<u64>,
}

/// A started question.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Question {
    pub question_id: String,
    pub index: u32,
    /// Its sequence number in the room.
    pub seq: u64,
    /// Server time after which answers are refused.
    pub closes_at_ms: u64,
    pub latest_display_ms: u64,
}

/// A question's reveal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reveal {
    pub question_id: String,
    /// The result's sequence number in the room.
    pub seq: u64,
    pub correct_option: u32,
    /// Accepted answers per option, exact.
    pub counts: Vec<u64>,
    /// Players still in.
    pub remaining: u64,
    /// The quiz's last round.
    pub last: bool,
}

/// The players still in when the quiz ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ended {
    pub quiz_id: String,
    pub winners: Vec<String>,
}

/// Creates a quiz in a room (one at a time per room).
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/quiz",
    tag = "quiz",
    params(("room" = String, Path, description = "Room id")),
    request_body = CreateQuiz,
    responses(
        (status = 201, description = "Created", body = Quiz),
        (status = 409, description = "A quiz runs in this room (`QUIZ_RUNNING`)", body = ErrorBody),
        (status = 422, description = "`rounds` outside 1 to 100, or another field wrong (`INVALID_REQUEST`)", body = ErrorBody)
    )
)]
pub(super) async fn create(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
    JsonBody(body): JsonBody<CreateQuiz>,
) -> ApiResult<(StatusCode, Json<Quiz>)> {
    let room = room_id(&room)?;
    let spec = QuizSpec {
        rounds: body.rounds,
        revive_cards: body.revive_cards,
        stream_delay_ms: body.stream_delay_ms,
    };
    let now = unix_ms(SystemTime::now());
    let status = match state.rooms.fleet() {
        Some(fleet) => {
            spec.check()?;
            fleet.quiz_create(&room, &crate::quiz::quiz_id(&room, now), &spec).await?;
            fleet.quiz_status(&room).await?
        }
        None => state.quizzes.create(&room, spec, now)?.status(),
    };
    Ok((StatusCode::CREATED, Json(Quiz::of(room.as_str(), status))))
}

/// A room's quiz: running, or the last one that ended.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/quiz",
    tag = "quiz",
    params(("room" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "The quiz", body = Quiz),
        (status = 404, description = "No quiz in this room (`NO_QUIZ`)", body = ErrorBody)
    )
)]
pub(super) async fn status(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
) -> ApiResult<Json<Quiz>> {
    let room = room_id(&room)?;
    let status = match state.rooms.fleet() {
        Some(fleet) => fleet.quiz_status(&room).await?,
        None => state.quizzes.get(room.as_str()).ok_or(QuizError::NoQuiz)?.status(),
    };
    Ok(Json(Quiz::of(room.as_str(), status)))
}

/// Starts the next question: sequenced in the room at once, answers taken
/// until its window and the stream delay allowance have passed.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/quiz/questions",
    tag = "quiz",
    params(("room" = String, Path, description = "Room id")),
    request_body = StartQuestion,
    responses(
        (status = 200, description = "Started", body = Question),
        (status = 404, description = "No quiz (`NO_QUIZ`), or the room is not live here (`NOT_FOUND`)", body = ErrorBody),
        (status = 409, description = "The last question is unrevealed (`QUESTION_OPEN`), or every round was asked (`NO_ROUNDS_LEFT`)", body = ErrorBody),
        (status = 422, description = "Text, options, correct option or window out of range (`INVALID_REQUEST`)", body = ErrorBody)
    )
)]
pub(super) async fn start(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
    JsonBody(body): JsonBody<StartQuestion>,
) -> ApiResult<Json<Question>> {
    let room = room_id(&room)?;
    let spec = QuestionSpec {
        text: body.text,
        options: body.options,
        correct: body.correct,
        media_ts_ms: body.media_ts_ms,
        window_ms: body.answer_window_ms.unwrap_or(DEFAULT_WINDOW_MS),
        latest_display_ms: body.latest_display_ms,
    };
    let now = unix_ms(SystemTime::now());
    let fleet = state.rooms.fleet();
    let run = match fleet {
        Some(_) => None,
        None => Some(state.quizzes.get(room.as_str()).filter(|r| !r.is_ended()).ok_or(QuizError::NoQuiz)?),
    };
    let question = match (fleet, &run) {
        (Some(fleet), _) => fleet.quiz_start(&room, spec, now).await?,
        (None, Some(run)) => run.start(spec, now)?,
        (None, None) => return Err(QuizError::NoQuiz.into()),
    };
    let (id, index, closes_at_ms, latest_display_ms) =
        (question.question_id.clone(), question.index, question.closes_at_ms, question.latest_display_ms);
    match state.rooms.quiz_event(&room, QuizEvent::Question(question)).await {
        Ok(seq) => Ok(Json(Question { question_id: id, index, seq, closes_at_ms, latest_display_ms })),
        Err(code) => {
            match (fleet, run) {
                (Some(fleet), _) => fleet.quiz_withdraw(&room, &id).await,
                (None, Some(run)) => run.withdraw(&id),
                (None, None) => {}
            }
            Err(code.into())
        }
    }
}

/// Reveals a question: its answers close, every player's standing is
/// decided, the result (exact counts, the correct option) is sequenced in
/// the room, and each player is told privately whether they are still in.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/quiz/questions/{question_id}/reveal",
    tag = "quiz",
    params(("room" = String, Path, description = "Room id"), ("question_id" = String, Path, description = "The question")),
    responses(
        (status = 200, description = "Revealed", body = Reveal),
        (status = 404, description = "No quiz in this room (`NO_QUIZ`), no such open question (`NO_QUESTION`), or the room is not live here (`NOT_FOUND`)", body = ErrorBody)
    )
)]
pub(super) async fn reveal(
    State(state): State<AdminState>,
    PathParams((room, question_id)): PathParams<(String, String)>,
) -> ApiResult<Json<Reveal>> {
    let room = room_id(&room)?;
    let (result, run) = match state.rooms.fleet() {
        Some(fleet) => (fleet.quiz_reveal(&room, &question_id).await?, None),
        None => {
            let run = state.quizzes.get(room.as_str()).ok_or(QuizError::NoQuiz)?;
            (run.reveal(&question_id)?, Some(run))
        }
    };
    let (index, reveal) = (
        result.index,
        Reveal {
            question_id: result.question_id.clone(),
            seq: 0,
            correct_option: result.correct_option,
            counts: result.counts.clone(),
            remaining: result.remaining,
            last: result.last,
        },
    );
    // The standings are decided: players hear of them even if the room is
    // gone (in a fleet, every node's players hear of them when the result
    // comes through the sequence).
    let sequenced = state.rooms.quiz_event(&room, QuizEvent::Result(result)).await;
    if let Some(run) = run {
        run.announce(index);
    }
    Ok(Json(Reveal { seq: sequenced?, ..reveal }))
}

/// Ends a room's quiz and names the players still in.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room}/quiz",
    tag = "quiz",
    params(("room" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "Ended", body = Ended),
        (status = 404, description = "No quiz in this room (`NO_QUIZ`)", body = ErrorBody)
    )
)]
pub(super) async fn end(
    State(state): State<AdminState>,
    PathParams(room): PathParams<String>,
) -> ApiResult<Json<Ended>> {
    let room = room_id(&room)?;
    let (quiz_id, winners) = match state.rooms.fleet() {
        Some(fleet) => fleet.quiz_end(&room).await?,
        None => {
            let run = state.quizzes.get(room.as_str()).ok_or(QuizError::NoQuiz)?;
            (run.id.clone(), run.end())
        }
    };
    Ok(Json(Ended { quiz_id, winners }))
}
