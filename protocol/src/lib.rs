//! The roomcast wire protocol, version 1, with no I/O.
//!
//! * [`v1`] holds the types generated from `proto/roomcast/v1/roomcast.proto`.
//! * [`codec`] frames protobuf messages on QUIC streams: a varint length prefix
//!   and a bounded [`codec::FrameDecoder`] that measures a frame before it
//!   allocates and never panics on any input.
//! * [`datagram`] encodes and decodes the QUIC datagrams (heartbeats, online
//!   counts) within [`MAX_DATAGRAM_BYTES`].
//! * [`ErrorCode`] is the single list of error and close codes.
//! * [`RoomId`] is a validated room id.
//!
//! The crate depends on neither tokio nor quinn: everything here can be tested
//! and fuzzed as plain functions of bytes.

pub mod codec;
pub mod datagram;
mod error;
mod history;
mod ids;

pub use error::ErrorCode;
pub use history::HistoryRange;
pub use ids::{InvalidRoomId, RoomId};

/// Generated protobuf types of `roomcast.v1`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/roomcast.v1.rs"));
}

/// TLS ALPN protocol id; both sides must offer it.
pub const ALPN: &[u8] = b"roomcast/1";

/// The protocol version described by `proto/roomcast/v1`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest frame a peer may send on the control stream (payload bytes).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024;

/// Largest frame the server sends on any stream (payload bytes). Answers
/// that carry history (`Joined`, `History`) are cut to fit, and say where the
/// rest is; a client refuses anything larger.
pub const MAX_SERVER_FRAME_BYTES: u32 = 64 * 1024;

/// Largest datagram either side sends. QUIC over a 1,280-byte path leaves about
/// 1,160 bytes for a datagram; staying under this keeps datagrams unfragmented
/// on weak networks.
pub const MAX_DATAGRAM_BYTES: usize = 1100;

/// Longest room id, in bytes.
pub const MAX_ROOM_ID_BYTES: usize = 128;

/// Longest message id a client may send, in bytes: `SendChat.client_msg_id`
/// and `Recall.message_id`. Server-assigned ids (`RoomEvent.message_id`) stay
/// within it too.
pub const MAX_MESSAGE_ID_BYTES: usize = 64;

/// Milliseconds since the Unix epoch for a [`std::time::SystemTime`].
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Conventions shared by the server and the command-line client for local
/// development: where the development certificate and secret live.
pub mod dev {
    use std::path::PathBuf;

    /// File name of the development certificate inside the data directory.
    pub const CERT_FILE: &str = "dev-cert.pem";
    /// File name of the development key inside the data directory.
    pub const KEY_FILE: &str = "dev-key.pem";
    /// File name of the development HS256 secret inside the data directory.
    pub const SECRET_FILE: &str = "dev-token-secret";

    /// `$ROOMCAST_DATA_DIR`, else `$XDG_DATA_HOME/roomcast`, else
    /// `$HOME/.local/share/roomcast`, else `.roomcast`.
    pub fn default_data_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("ROOMCAST_DATA_DIR") {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(d).join("roomcast");
        }
        if let Some(h) = std::env::var_os("HOME") {
            return PathBuf::from(h).join(".local/share/roomcast");
        }
        PathBuf::from(".roomcast")
    }
}
