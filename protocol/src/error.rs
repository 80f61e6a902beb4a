//! The one list of error and close codes.

use crate::v1;

/// A stable error code. The same number is used in `Error` frames and as the
/// QUIC application close code, so a client can tell why it was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadToken,
    TokenExpired,
    UnsupportedVersion,
    ProtocolViolation,
    FrameTooLarge,
    RateLimited,
    RoomClosed,
    ServerDraining,
    NotJoined,
    TooManyRooms,
    MessageTooLong,
    InvalidRoom,
    Forbidden,
    HelloTimeout,
    Internal,
    NotFound,
    Muted,
    Banned,
    MessageRefused,
    Unavailable,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [ErrorCode; 20] = [
        Self::BadToken,
        Self::TokenExpired,
        Self::UnsupportedVersion,
        Self::ProtocolViolation,
        Self::FrameTooLarge,
        Self::RateLimited,
        Self::RoomClosed,
        Self::ServerDraining,
        Self::NotJoined,
        Self::TooManyRooms,
        Self::MessageTooLong,
        Self::InvalidRoom,
        Self::Forbidden,
        Self::HelloTimeout,
        Self::Internal,
        Self::NotFound,
        Self::Muted,
        Self::Banned,
        Self::MessageRefused,
        Self::Unavailable,
    ];

    /// The wire value (an `ErrorCode` of the schema, and the QUIC close code).
    pub fn to_code(self) -> u32 {
        self.to_proto() as u32
    }

    /// The schema enum.
    pub fn to_proto(self) -> v1::ErrorCode {
        use v1::ErrorCode as P;
        match self {
            Self::BadToken => P::BadToken,
            Self::TokenExpired => P::TokenExpired,
            Self::UnsupportedVersion => P::UnsupportedVersion,
            Self::ProtocolViolation => P::ProtocolViolation,
            Self::FrameTooLarge => P::FrameTooLarge,
            Self::RateLimited => P::RateLimited,
            Self::RoomClosed => P::RoomClosed,
            Self::ServerDraining => P::ServerDraining,
            Self::NotJoined => P::NotJoined,
            Self::TooManyRooms => P::TooManyRooms,
            Self::MessageTooLong => P::MessageTooLong,
            Self::InvalidRoom => P::InvalidRoom,
            Self::Forbidden => P::Forbidden,
            Self::HelloTimeout => P::HelloTimeout,
            Self::Internal => P::Internal,
            Self::NotFound => P::NotFound,
            Self::Muted => P::Muted,
            Self::Banned => P::Banned,
            Self::MessageRefused => P::MessageRefused,
            Self::Unavailable => P::Unavailable,
        }
    }

    /// Reads a wire value; `None` for 0 and for values this version does not know.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.to_code()) == code)
    }

    /// A short name for logs and the CLI, e.g. `bad_token`.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadToken => "bad_token",
            Self::TokenExpired => "token_expired",
            Self::UnsupportedVersion => "unsupported_version",
            Self::ProtocolViolation => "protocol_violation",
            Self::FrameTooLarge => "frame_too_large",
            Self::RateLimited => "rate_limited",
            Self::RoomClosed => "room_closed",
            Self::ServerDraining => "server_draining",
            Self::NotJoined => "not_joined",
            Self::TooManyRooms => "too_many_rooms",
            Self::MessageTooLong => "message_too_long",
            Self::InvalidRoom => "invalid_room",
            Self::Forbidden => "forbidden",
            Self::HelloTimeout => "hello_timeout",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::Muted => "muted",
            Self::Banned => "banned",
            Self::MessageRefused => "message_refused",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_nonzero_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_ne!(c.to_code(), 0);
            assert!(seen.insert(c.to_code()), "{c} reuses a code");
            assert_eq!(ErrorCode::from_code(c.to_code().into()), Some(c));
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::from_code(9999), None);
    }

    #[test]
    fn schema_and_rust_agree_on_every_code() {
        // Every schema value except UNSPECIFIED has a Rust variant.
        for n in 1..64 {
            if let Ok(p) = v1::ErrorCode::try_from(n) {
                let c = ErrorCode::from_code(n as u64).expect("schema code without Rust variant");
                assert_eq!(c.to_proto(), p);
            }
        }
    }
}
