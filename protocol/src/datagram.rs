//! QUIC datagrams: client heartbeats and server online counts.
//!
//! A datagram is one encoded `ClientDatagram` or `ServerDatagram` with no
//! prefix; QUIC already delimits it. Both sides refuse datagrams longer than
//! [`MAX_DATAGRAM_BYTES`] before decoding them.

use bytes::Bytes;
use prost::Message;

use crate::{MAX_DATAGRAM_BYTES, v1};

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram of {0} bytes exceeds {MAX_DATAGRAM_BYTES}")]
    TooLarge(usize),
    #[error("undecodable datagram: {0}")]
    Decode(String),
    #[error("datagram has no body")]
    Empty,
}

/// What a client may send as a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientDatagram {
    Heartbeat { client_time_ms: u64 },
}

/// What the server sends as a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDatagram {
    OnlineCount { room: String, count: u64, server_time_ms: u64 },
}

fn check(data: &[u8]) -> Result<(), DatagramError> {
    if data.len() > MAX_DATAGRAM_BYTES { Err(DatagramError::TooLarge(data.len())) } else { Ok(()) }
}

impl ClientDatagram {
    pub fn encode(&self) -> Bytes {
        let body = match *self {
            Self::Heartbeat { client_time_ms } => {
                v1::client_datagram::Body::Heartbeat(v1::Heartbeat { client_time_ms })
            }
        };
        v1::ClientDatagram { body: Some(body) }.encode_to_vec().into()
    }

    pub fn decode(data: Bytes) -> Result<Self, DatagramError> {
        check(&data)?;
        let d = v1::ClientDatagram::decode(data).map_err(|e| DatagramError::Decode(e.to_string()))?;
        match d.body.ok_or(DatagramError::Empty)? {
            v1::client_datagram::Body::Heartbeat(h) => {
                Ok(Self::Heartbeat { client_time_ms: h.client_time_ms })
            }
        }
    }
}

impl ServerDatagram {
    pub fn encode(&self) -> Bytes {
        let body = match self {
            Self::OnlineCount { room, count, server_time_ms } => {
                v1::server_datagram::Body::OnlineCount(v1::OnlineCount {
                    room: room.clone(),
                    count: *count,
                    server_time_ms: *server_time_ms,
                })
            }
        };
        v1::ServerDatagram { body: Some(body) }.encode_to_vec().into()
    }

    pub fn decode(data: Bytes) -> Result<Self, DatagramError> {
        check(&data)?;
        let d = v1::ServerDatagram::decode(data).map_err(|e| DatagramError::Decode(e.to_string()))?;
        match d.body.ok_or(DatagramError::Empty)? {
            v1::server_datagram::Body::OnlineCount(o) => {
                Ok(Self::OnlineCount { room: o.room, count: o.count, server_time_ms: o.server_time_ms })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let h = ClientDatagram::Heartbeat { client_time_ms: 1_700_000_000_000 };
        assert_eq!(ClientDatagram::decode(h.encode()), Ok(h));
        let o = ServerDatagram::OnlineCount {
            room: "r".repeat(crate::MAX_ROOM_ID_BYTES),
            count: u64::MAX,
            server_time_ms: u64::MAX,
        };
        let wire = o.encode();
        assert!(wire.len() <= MAX_DATAGRAM_BYTES);
        assert_eq!(ServerDatagram::decode(wire), Ok(o));
    }

    #[test]
    fn refuses_oversized_and_empty() {
        assert_eq!(
            ClientDatagram::decode(Bytes::from(vec![0; MAX_DATAGRAM_BYTES + 1])),
            Err(DatagramError::TooLarge(MAX_DATAGRAM_BYTES + 1))
        );
        assert_eq!(ClientDatagram::decode(Bytes::new()), Err(DatagramError::Empty));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = ClientDatagram::decode(Bytes::from(data.clone()));
            let _ = ServerDatagram::decode(Bytes::from(data));
        }
    }
}
