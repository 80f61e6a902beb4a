//! Identifiers checked once at the boundary.

use std::fmt;
use std::sync::Arc;

use crate::MAX_ROOM_ID_BYTES;

/// A room id: 1 to [`MAX_ROOM_ID_BYTES`] bytes of `[A-Za-z0-9_.:-]`.
///
/// Cheap to clone; compared and hashed by value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

/// A string that is not a valid [`RoomId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid room id: must be 1..={MAX_ROOM_ID_BYTES} bytes of [A-Za-z0-9_.:-]")]
pub struct InvalidRoomId;

impl RoomId {
    /// Parses a room id.
    pub fn new(s: &str) -> Result<Self, InvalidRoomId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ROOM_ID_BYTES
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok { Ok(Self(Arc::from(s))) } else { Err(InvalidRoomId) }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by `RoomId` can be searched with a `&str` (hashing and
/// equality are the string's).
impl std::borrow::Borrow<str> for RoomId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_rejects_the_rest() {
        assert!(RoomId::new("live:1234_a-b.c").is_ok());
        assert_eq!(RoomId::new(""), Err(InvalidRoomId));
        assert_eq!(RoomId::new("has space"), Err(InvalidRoomId));
        assert_eq!(RoomId::new("ü"), Err(InvalidRoomId));
        assert!(RoomId::new(&"a".repeat(MAX_ROOM_ID_BYTES)).is_ok());
        assert_eq!(RoomId::new(&"a".repeat(MAX_ROOM_ID_BYTES + 1)), Err(InvalidRoomId));
    }
}
