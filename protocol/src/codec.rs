//! Framing of protobuf messages on QUIC streams.
//!
//! A frame is the message length as an unsigned LEB128 varint (at most 5 bytes,
//! value at most `u32::MAX`) followed by the encoded message. The decoder
//! measures a frame from its prefix before it buffers the body, so a peer can
//! make it hold at most `max_frame + 5` bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Why bytes from a stream could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the allowed frame size.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    /// The length prefix is not a valid varint of at most 5 bytes.
    #[error("malformed frame length prefix")]
    BadLength,
    /// The frame body is not a valid protobuf message of the expected type.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

impl FrameError {
    /// The close code this error maps to.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            Self::TooLarge { .. } => crate::ErrorCode::FrameTooLarge,
            _ => crate::ErrorCode::ProtocolViolation,
        }
    }
}

/// Most bytes a length prefix may take.
const MAX_PREFIX: usize = 5;

/// Encodes `msg` as one frame.
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(len + MAX_PREFIX);
    put_varint(&mut buf, len as u64);
    // Encoding into a buffer reserved for the exact length cannot fail.
    if msg.encode(&mut buf).is_err() {
        unreachable!("buffer reserved for encoded_len");
    }
    buf.freeze()
}

/// Decodes one message from a frame body.
pub fn decode_message<M: Message + Default>(body: Bytes) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| FrameError::Decode(e.to_string()))
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Reads a varint prefix. `Ok(None)`: more bytes needed.
fn read_prefix(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().take(MAX_PREFIX).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if v > u64::from(u32::MAX) {
                return Err(FrameError::BadLength);
            }
            return Ok(Some((v, i + 1)));
        }
    }
    if buf.len() >= MAX_PREFIX { Err(FrameError::BadLength) } else { Ok(None) }
}

/// Incremental, bounded frame decoder for one stream.
///
/// Feed it the bytes as they arrive with [`FrameDecoder::extend`], then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: u32,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        Self { buf: BytesMut::new(), max: max_frame }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((len, prefix)) = read_prefix(&self.buf)? else {
            return Ok(None);
        };
        if len > u64::from(self.max) {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// The next complete frame decoded as `M`.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        self.next_frame()?.map(decode_message).transpose()
    }

    /// Call when the stream has ended: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(FrameError::Truncated) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;
    use proptest::prelude::*;

    fn chat(text: &str) -> v1::ClientFrame {
        v1::ClientFrame {
            request_id: 7,
            body: Some(v1::client_frame::Body::SendChat(v1::SendChat {
                room: "r1".into(),
                text: text.into(),
                client_msg_id: "c1".into(),
                media_ts_ms: Some(1234),
            })),
        }
    }

    #[test]
    fn round_trip_several_frames_split_anywhere() {
        let frames: Vec<_> = ["a", "", "hello world", &"x".repeat(300)].iter().map(|t| chat(t)).collect();
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).to_vec()).collect();
        for split in 0..wire.len() {
            let mut dec = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                dec.extend(part);
                while let Some(m) = dec.next_message::<v1::ClientFrame>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, frames, "split at {split}");
            dec.finish().unwrap();
        }
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_prefix() {
        let mut dec = FrameDecoder::new(10);
        let mut buf = BytesMut::new();
        put_varint(&mut buf, 11);
        dec.extend(&buf);
        assert_eq!(dec.next_frame(), Err(FrameError::TooLarge { len: 11, max: 10 }));
        assert_eq!(dec.next_frame().unwrap_err().code(), crate::ErrorCode::FrameTooLarge);
    }

    #[test]
    fn overlong_prefix_is_malformed() {
        let mut dec = FrameDecoder::new(u32::MAX);
        dec.extend(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(dec.next_frame(), Err(FrameError::BadLength));
        let mut dec = FrameDecoder::new(u32::MAX);
        // 5-byte varint above u32::MAX.
        dec.extend(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(dec.next_frame(), Err(FrameError::BadLength));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let wire = encode_frame(&chat("hi"));
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&wire[..wire.len() - 1]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&[3, 0xff, 0xff, 0xff]);
        let err = dec.next_message::<v1::ClientFrame>().unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)));
        assert_eq!(err.code(), crate::ErrorCode::ProtocolViolation);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), max in 0u32..4096) {
            let mut dec = FrameDecoder::new(max);
            dec.extend(&data);
            for _ in 0..data.len() + 1 {
                match dec.next_message::<v1::ClientFrame>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            let mut dec = FrameDecoder::new(max);
            dec.extend(&data);
            while let Ok(Some(_)) = dec.next_message::<v1::RoomFrame>() {}
        }

        #[test]
        fn any_chat_round_trips(text in ".{0,200}", id in any::<u32>(), ts in proptest::option::of(any::<u64>())) {
            let mut f = chat(&text);
            f.request_id = id;
            if let Some(v1::client_frame::Body::SendChat(c)) = &mut f.body { c.media_ts_ms = ts; }
            let mut dec = FrameDecoder::new(1 << 20);
            dec.extend(&encode_frame(&f));
            prop_assert_eq!(dec.next_message::<v1::ClientFrame>().unwrap(), Some(f));
        }
    }
}
