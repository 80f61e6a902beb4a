//! The admin API's errors: one JSON shape, a stable code and its HTTP status.
//!
//! Room-side failures are `ErrorCode`s and keep the wire names
//! (`NOT_FOUND`, `ROOM_CLOSED`, `MESSAGE_TOO_LONG`, ...), so a platform sees
//! the same word from a client and from this API; failures of the HTTP layer
//! itself (`UNAUTHORIZED`, `BAD_REQUEST`, `PAYLOAD_TOO_LARGE`, ...) have names
//! of their own. Extractors here turn every rejection into that shape, so no
//! request is answered with axum's plain-text errors.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use roomcast_protocol::{ErrorCode, RoomId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every code the admin API answers with: one closed list, each code with
/// its one HTTP status. The OpenAPI document's `ErrorDetail.code` and the
/// README list exactly these (a test holds both to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCode {
    /// No credentials, a wrong API key or an invalid token.
    Unauthorized,
    /// An admin token past its `exp`.
    TokenExpired,
    /// A valid token whose role is not admin.
    Forbidden,
    /// Malformed JSON, query or path.
    BadRequest,
    /// An invalid room id.
    InvalidRoom,
    /// Well-formed input with wrong or unknown fields, or a value outside
    /// its range.
    InvalidRequest,
    /// A message text that is empty or longer than `limits.max_message_bytes`.
    MessageTooLong,
    /// A message the banned-words filter refuses.
    MessageRefused,
    /// No such room on this node, no such route, message or sanction.
    NotFound,
    /// No quiz runs in the room.
    NoQuiz,
    /// No such open question in the room's quiz (unknown, or revealed).
    NoQuestion,
    /// The route does not serve that method.
    MethodNotAllowed,
    /// The room is closed.
    RoomClosed,
    /// A quiz already runs in the room.
    QuizRunning,
    /// The quiz's previous question has not been revealed.
    QuestionOpen,
    /// Every round of the quiz has been asked.
    NoRoundsLeft,
    /// Balances are kept by the platform's backend (a webhook ledger).
    LedgerRemote,
    /// The body is larger than `admin.max_body_bytes`.
    PayloadTooLarge,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// A rate limit refused it.
    RateLimited,
    /// The node is draining.
    ServerDraining,
    /// What it needs cannot be reached now (the fleet's Redis).
    Unavailable,
    /// The ledger could not record it.
    LedgerUnavailable,
    /// The node failed.
    Internal,
}

impl ApiCode {
    /// Every code, in the order the documents list them.
    pub const ALL: [ApiCode; 24] = [
        Self::Unauthorized,
        Self::TokenExpired,
        Self::Forbidden,
        Self::BadRequest,
        Self::InvalidRoom,
        Self::InvalidRequest,
        Self::MessageTooLong,
        Self::MessageRefused,
        Self::NotFound,
        Self::NoQuiz,
        Self::NoQuestion,
        Self::MethodNotAllowed,
        Self::RoomClosed,
        Self::QuizRunning,
        Self::QuestionOpen,
        Self::NoRoundsLeft,
        Self::LedgerRemote,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RateLimited,
        Self::ServerDraining,
        Self::Unavailable,
        Self::LedgerUnavailable,
        Self::Internal,
    ];

    /// The stable name a caller matches on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::Forbidden => "FORBIDDEN",
            Self::BadRequest => "BAD_REQUEST",
            Self::InvalidRoom => "INVALID_ROOM",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::MessageTooLong => "MESSAGE_TOO_LONG",
            Self::MessageRefused => "MESSAGE_REFUSED",
            Self::NotFound => "NOT_FOUND",
            Self::NoQuiz => "NO_QUIZ",
            Self::NoQuestion => "NO_QUESTION",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::RoomClosed => "ROOM_CLOSED",
            Self::QuizRunning => "QUIZ_RUNNING",
            Self::QuestionOpen => "QUESTION_OPEN",
            Self::NoRoundsLeft => "NO_ROUNDS_LEFT",
            Self::LedgerRemote => "LEDGER_REMOTE",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::RateLimited => "RATE_LIMITED",
            Self::ServerDraining => "SERVER_DRAINING",
            Self::Unavailable => "UNAVAILABLE",
            Self::LedgerUnavailable => "LEDGER_UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// The HTTP status every answer with this code has.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::TokenExpired => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::BadRequest | Self::InvalidRoom => StatusCode::BAD_REQUEST,
            Self::InvalidRequest | Self::MessageTooLong | Self::MessageRefused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::NotFound | Self::NoQuiz | Self::NoQuestion => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RoomClosed
            | Self::QuizRunning
            | Self::QuestionOpen
            | Self::NoRoundsLeft
            | Self::LedgerRemote => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::ServerDraining | Self::Unavailable | Self::LedgerUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The list as the documents give it: `` `CODE` status `` pairs, by
    /// status.
    pub fn listing() -> String {
        let mut codes = Self::ALL.to_vec();
        codes.sort_by_key(|c| c.status().as_u16());
        let items: Vec<String> =
            codes.iter().map(|c| format!("`{}` {}", c.as_str(), c.status().as_u16())).collect();
        items.join(", ")
    }
}

/// A failed admin request, answered as [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, upper snake case; what a caller matches on
    /// ([`ApiCode::as_str`]).
    pub code: &'static str,
    /// For people; may change.
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code; the document lists every one with its status (see
    /// `ApiCode`).
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ApiCode, message: impl Into<String>) -> Self {
        Self { status: code.status(), code: code.as_str(), message: message.into() }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ApiCode::Unauthorized, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiCode::BadRequest, message)
    }

    /// Well-formed input whose fields or values are wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ApiCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiCode::NotFound, message)
    }

    /// A room-side failure, under its wire name.
    pub fn room(code: ErrorCode, message: impl Into<String>) -> Self {
        let code = match code {
            ErrorCode::NotFound => ApiCode::NotFound,
            ErrorCode::InvalidRoom => ApiCode::InvalidRoom,
            ErrorCode::MessageTooLong => ApiCode::MessageTooLong,
            ErrorCode::MessageRefused => ApiCode::MessageRefused,
            ErrorCode::RoomClosed => ApiCode::RoomClosed,
            ErrorCode::RateLimited => ApiCode::RateLimited,
            ErrorCode::ServerDraining => ApiCode::ServerDraining,
            ErrorCode::Unavailable => ApiCode::Unavailable,
            ErrorCode::Forbidden => ApiCode::Forbidden,
            ErrorCode::BadToken => ApiCode::Unauthorized,
            ErrorCode::TokenExpired => ApiCode::TokenExpired,
            _ => ApiCode::Internal,
        };
        Self::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        let message = match code {
            ErrorCode::NotFound => "no such room on this node".to_string(),
            ErrorCode::RoomClosed => "the room is closed".to_string(),
            ErrorCode::ServerDraining => "the node is draining".to_string(),
            other => other.name().replace('_', " "),
        };
        Self::room(code, message)
    }
}

/// Every admin answer: a value or an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body, refused whole when it is too big (413
/// `PAYLOAD_TOO_LARGE`), not JSON (415 `UNSUPPORTED_MEDIA_TYPE`), malformed
/// (400 `BAD_REQUEST`) or of the wrong shape, unknown fields included (422
/// `INVALID_REQUEST`). Nothing is applied before the whole body is read and
/// checked.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if !json {
            return Err(unsupported_media_type());
        }
        parse(&bytes).map(Self)
    }
}

/// Like [`JsonBody`], but an empty body (with or without a content type)
/// stands for `T::default()`: `curl -X PUT .../mutes/ann` needs no `{}`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(unsupported_media_type());
        }
        parse(&bytes).map(Self)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(ApiCode::UnsupportedMediaType, "the body must be JSON (Content-Type: application/json)")
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ApiCode::PayloadTooLarge, "the request body is too large")
    } else {
        ApiError::bad_request(format!("could not read the request body: {rejection}"))
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}

/// Query parameters; a malformed or unknown one is 400 `BAD_REQUEST`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// Path parameters; one that does not parse is 400 `BAD_REQUEST`.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// Parses a room id from a path, as the wire contract bounds it.
pub fn room_id(s: &str) -> ApiResult<RoomId> {
    RoomId::new(s).map_err(|e| ApiError::room(ErrorCode::InvalidRoom, e.to_string()))
}

/// Longest user id a token may carry (`auth::Claims::sub`), so a sanction
/// can name any user that can connect.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Checks a user id from a path.
pub fn user_id(s: &str) -> ApiResult<&str> {
    if s.is_empty() || s.len() > MAX_USER_ID_BYTES {
        return Err(ApiError::invalid(format!("a user id is 1 to {MAX_USER_ID_BYTES} bytes")));
    }
    Ok(s)
}

/// The answer to a path no route serves.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// The answer to a method a route does not serve.
pub async fn wrong_method() -> ApiError {
    ApiError::new(ApiCode::MethodNotAllowed, "this route does not serve that method")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_code_has_a_status_and_an_upper_case_name() {
        for code in ErrorCode::ALL {
            let e = ApiError::from(code);
            assert!(e.code.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{}", e.code);
            assert!(e.status.is_client_error() || e.status.is_server_error());
        }
        assert_eq!(ApiError::from(ErrorCode::NotFound).status, StatusCode::NOT_FOUND);
        assert_eq!(ApiError::from(ErrorCode::RoomClosed).code, "ROOM_CLOSED");
    }

    #[test]
    fn malformed_json_and_wrong_shapes_are_told_apart() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct T {
            #[allow(dead_code)]
            a: u32,
        }
        assert_eq!(parse::<T>(b"{\"a\":").unwrap_err().code, "BAD_REQUEST");
        assert_eq!(parse::<T>(b"{\"a\":\"x\"}").unwrap_err().code, "INVALID_REQUEST");
        assert_eq!(parse::<T>(b"{\"a\":1,\"b\":2}").unwrap_err().code, "INVALID_REQUEST");
        assert!(parse::<T>(b"{\"a\":1}").is_ok());
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert!(is_json(&h));
        h.insert(CONTENT_TYPE, "application/merge-patch+json".parse().unwrap());
        assert!(is_json(&h));
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
