//! QUIC datagrams: client heartbeats and like reports; server online counts
//! and like totals.
//!
//! A datagram is one encoded `ClientDatagram` or `ServerDatagram` per QUIC
//! DATAGRAM frame, with no prefix; QUIC already delimits it. Both sides refuse
//! datagrams longer than [`MAX_DATAGRAM_BYTES`] before decoding them: a
//! padded but otherwise valid heartbeat would decode, so the length is the
//! only thing that keeps a peer within the limit.

use bytes::Bytes;
use prost::Message;

use crate::{MAX_DATAGRAM_BYTES, v1};

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Longer than [`MAX_DATAGRAM_BYTES`]; refused before decoding.
    #[error("datagram of {0} bytes exceeds {MAX_DATAGRAM_BYTES}")]
    TooLarge(usize),
    /// Not a valid protobuf message of the expected type.
    #[error("undecodable datagram: {0}")]
    Decode(String),
    /// A valid message with no body this version knows.
    #[error("datagram has no body")]
    Empty,
}

impl DatagramError {
    /// The close code this error maps to, when the peer is closed for it.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            Self::TooLarge(_) => crate::ErrorCode::FrameTooLarge,
            Self::Decode(_) | Self::Empty => crate::ErrorCode::ProtocolViolation,
        }
    }
}

/// What a client may send as a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientDatagram {
    Heartbeat {
        client_time_ms: u64,
    },
    /// Taps since the last report in `room`.
    LikeReport {
        room: String,
        taps: u32,
    },
}

/// What the server sends as a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDatagram {
    OnlineCount {
        room: String,
        count: u64,
        server_time_ms: u64,
    },
    LikeTotal {
        room: String,
        total: u64,
        server_time_ms: u64,
    },
    /// A quiz question is open in `room`.
    QuizNudge {
        room: String,
        question_id: String,
        seq: u64,
    },
}

fn check(data: &[u8]) -> Result<(), DatagramError> {
    if data.len() > MAX_DATAGRAM_BYTES { Err(DatagramError::TooLarge(data.len())) } else { Ok(()) }
}

impl ClientDatagram {
    pub fn encode(&self) -> Bytes {
        let body = match self {
            Self::Heartbeat { client_time_ms } => {
                v1::client_datagram::Body::Heartbeat(v1::Heartbeat { client_time_ms: *client_time_ms })
            }
            Self::LikeReport { room, taps } => {
                v1::client_datagram::Body::LikeReport(v1::LikeReport { room: room.clone(), taps: *taps })
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
            v1::client_datagram::Body::LikeReport(l) => Ok(Self::LikeReport { room: l.room, taps: l.taps }),
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
            Self::LikeTotal { room, total, server_time_ms } => {
                v1::server_datagram::Body::LikeTotal(v1::LikeTotal {
                    room: room.clone(),
                    total: *total,
                    server_time_ms: *server_time_ms,
                })
            }
            Self::QuizNudge { room, question_id, seq } => {
                v1::server_datagram::Body::QuizNudge(v1::QuizNudge {
                    room: room.clone(),
                    question_id: question_id.clone(),
                    seq: *seq,
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
            v1::server_datagram::Body::LikeTotal(l) => {
                Ok(Self::LikeTotal { room: l.room, total: l.total, server_time_ms: l.server_time_ms })
            }
            v1::server_datagram::Body::QuizNudge(q) => {
                Ok(Self::QuizNudge { room: q.room, question_id: q.question_id, seq: q.seq })
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
        let like = ClientDatagram::LikeReport { room: "r".repeat(crate::MAX_ROOM_ID_BYTES), taps: u32::MAX };
        let wire = like.encode();
        assert!(wire.len() <= MAX_DATAGRAM_BYTES);
        assert_eq!(ClientDatagram::decode(wire), Ok(like));
        let total = ServerDatagram::LikeTotal {
            room: "r".repeat(crate::MAX_ROOM_ID_BYTES),
            total: u64::MAX,
            server_time_ms: u64::MAX,
        };
        let wire = total.encode();
        assert!(wire.len() <= MAX_DATAGRAM_BYTES);
        assert_eq!(ServerDatagram::decode(wire), Ok(total));
        let nudge = ServerDatagram::QuizNudge {
            room: "r".repeat(crate::MAX_ROOM_ID_BYTES),
            question_id: "q".repeat(crate::MAX_MESSAGE_ID_BYTES),
            seq: u64::MAX,
        };
        let wire = nudge.encode();
        assert!(wire.len() <= MAX_DATAGRAM_BYTES);
        assert_eq!(ServerDatagram::decode(wire), Ok(nudge));
    }

    #[test]
    fn refuses_oversized_and_empty() {
        assert_eq!(
            ClientDatagram::decode(Bytes::from(vec![0; MAX_DATAGRAM_BYTES + 1])),
            Err(DatagramError::TooLarge(MAX_DATAGRAM_BYTES + 1))
        );
        assert_eq!(ClientDatagram::decode(Bytes::new()), Err(DatagramError::Empty));
    }

    #[test]
    fn each_refusal_has_its_close_code() {
        use crate::ErrorCode;
        assert_eq!(DatagramError::TooLarge(1207).code(), ErrorCode::FrameTooLarge);
        assert_eq!(DatagramError::Decode(String::new()).code(), ErrorCode::ProtocolViolation);
        assert_eq!(DatagramError::Empty.code(), ErrorCode::ProtocolViolation);
        let garbage = ClientDatagram::decode(Bytes::from_static(&[0xff; 40])).unwrap_err();
        assert_eq!(garbage.code(), ErrorCode::ProtocolViolation);
    }

    /// `message` followed by an unknown length-delimited field of `pad` bytes,
    /// which a protobuf decoder skips: still a valid datagram, only longer.
    fn padded(message: Bytes, pad: usize) -> Bytes {
        let mut wire = message.to_vec();
        prost::encoding::encode_key(15, prost::encoding::WireType::LengthDelimited, &mut wire);
        prost::encoding::encode_varint(pad as u64, &mut wire);
        wire.resize(wire.len() + pad, b'x');
        wire.into()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_oversize_is_refused(
            data in proptest::collection::vec(any::<u8>(), 0..3000)
        ) {
            let len = data.len();
            let client = ClientDatagram::decode(Bytes::from(data.clone()));
            let server = ServerDatagram::decode(Bytes::from(data));
            if len > MAX_DATAGRAM_BYTES {
                prop_assert_eq!(client, Err(DatagramError::TooLarge(len)));
                prop_assert_eq!(server, Err(DatagramError::TooLarge(len)));
            }
        }

        #[test]
        fn a_valid_datagram_is_accepted_up_to_the_limit_and_refused_beyond(
            client_time_ms in any::<u64>(),
            pad in 0usize..2000,
        ) {
            let h = ClientDatagram::Heartbeat { client_time_ms };
            let wire = padded(h.encode(), pad);
            let len = wire.len();
            let got = ClientDatagram::decode(wire);
            if len <= MAX_DATAGRAM_BYTES {
                prop_assert_eq!(got, Ok(h));
            } else {
                prop_assert_eq!(got.clone(), Err(DatagramError::TooLarge(len)));
                prop_assert_eq!(got.unwrap_err().code(), crate::ErrorCode::FrameTooLarge);
            }
            let o = ServerDatagram::OnlineCount { room: "r".into(), count: 7, server_time_ms: client_time_ms };
            let wire = padded(o.encode(), pad);
            let len = wire.len();
            let got = ServerDatagram::decode(wire);
            if len <= MAX_DATAGRAM_BYTES {
                prop_assert_eq!(got, Ok(o));
            } else {
                prop_assert_eq!(got, Err(DatagramError::TooLarge(len)));
            }
        }
    }
}
