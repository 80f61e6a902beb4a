//! Room streams: the unidirectional streams the server opens, one per joined
//! room. The driver reads them itself, so a packet of room events costs the
//! app one task wake-up between QUIC and the app, not one per stream reader
//! and one more for the driver.
//!
//! [`RoomDecoder`] turns a stream's bytes into [`RoomMsg`]s for the room its
//! first frame names; [`poll_readers`] reads whichever stream has data.

use std::sync::Arc;
use std::task::{Context, Poll};

use roomcast_protocol::codec::FrameDecoder;
use roomcast_protocol::{ErrorCode, MAX_SERVER_FRAME_BYTES, v1};

use crate::room_track::RoomMsg;

/// The most room-stream bytes the driver takes from QUIC in one read.
pub(crate) const ROOM_READ: usize = 16 * 1024;

/// A room stream the server opened on the current connection.
pub(crate) struct RoomReader {
    recv: quinn::RecvStream,
    pub(crate) decoder: RoomDecoder,
}

impl RoomReader {
    pub(crate) fn new(recv: quinn::RecvStream) -> Self {
        Self { recv, decoder: RoomDecoder::default() }
    }
}

/// What one read of the room streams gave.
pub(crate) enum RoomRead {
    /// Reader `i` took in bytes.
    Data(usize),
    /// Reader `i`'s stream ended (finished, reset or with the connection).
    End(usize),
}

/// Reads whichever room stream has data, starting at `from` so that one busy
/// stream does not starve the others. `scratch` is where the bytes land
/// before they are decoded.
pub(crate) fn poll_readers(
    readers: &mut [RoomReader],
    scratch: &mut [u8],
    from: usize,
    cx: &mut Context<'_>,
) -> Poll<RoomRead> {
    let n = readers.len();
    for k in 0..n {
        let i = (from + k) % n;
        let reader = &mut readers[i];
        match reader.recv.poll_read(cx, scratch) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RoomRead::End(i)),
            Poll::Ready(Ok(len)) => {
                reader.decoder.extend(&scratch[..len]);
                return Poll::Ready(RoomRead::Data(i));
            }
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// One room stream's bytes turned into frames: a `RoomStreamStart` naming
/// the room, then its events, advances and at most one `Lagged`.
pub(crate) struct RoomDecoder {
    frames: FrameDecoder,
    /// Named by the stream's first frame; shared, as every read hands it on.
    room: Option<Arc<str>>,
}

impl Default for RoomDecoder {
    fn default() -> Self {
        Self { frames: FrameDecoder::new(MAX_SERVER_FRAME_BYTES), room: None }
    }
}

impl RoomDecoder {
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.frames.extend(bytes);
    }

    /// The room the stream belongs to, once its first frame arrived.
    pub(crate) fn room(&self) -> Option<Arc<str>> {
        self.room.clone()
    }

    /// Decodes the whole frames taken in so far. `Err` is a protocol
    /// violation: an undecodable frame, or frames out of place.
    pub(crate) fn decode(&mut self) -> Result<Vec<RoomMsg>, String> {
        use v1::room_frame::Body;
        let mut msgs = Vec::new();
        loop {
            let frame = match self.frames.next_message::<v1::RoomFrame>() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(msgs),
                Err(e) => return Err(e.to_string()),
            };
            let msg = match (frame.body, &self.room) {
                (Some(Body::Start(s)), None) => {
                    self.room = Some(s.room.into());
                    continue;
                }
                (Some(Body::Event(e)), Some(_)) => RoomMsg::Event(Box::new(e)),
                (Some(Body::Advance(a)), Some(_)) => RoomMsg::Advance(a.seq),
                (Some(Body::Lagged(l)), Some(_)) => RoomMsg::Lagged { from: l.from_seq, to: l.to_seq },
                (Some(Body::Removed(r)), Some(_)) => {
                    let code = u64::try_from(r.code).ok().and_then(ErrorCode::from_code);
                    RoomMsg::Removed { code, reason: r.reason }
                }
                _ => return Err("bad room stream".into()),
            };
            msgs.push(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::codec::encode_frame;
    use v1::room_frame::Body;

    fn frame(body: Body) -> Vec<u8> {
        encode_frame(&v1::RoomFrame { body: Some(body) }).to_vec()
    }

    fn start(room: &str) -> Vec<u8> {
        frame(Body::Start(v1::RoomStreamStart { room: room.into() }))
    }

    #[test]
    fn the_first_frame_names_the_room_and_the_rest_become_messages() {
        let mut d = RoomDecoder::default();
        let event = v1::RoomEvent { seq: 4, ..Default::default() };
        let mut bytes = start("live");
        bytes.extend(frame(Body::Event(event.clone())));
        bytes.extend(frame(Body::Advance(v1::SeqAdvance { seq: 6 })));
        bytes.extend(frame(Body::Lagged(v1::Lagged { from_seq: 7, to_seq: 9 })));
        // Split mid-frame: the tail waits for the rest.
        let (head, tail) = bytes.split_at(bytes.len() - 2);
        d.extend(head);
        assert_eq!(d.decode().unwrap(), [RoomMsg::Event(Box::new(event)), RoomMsg::Advance(6)]);
        assert_eq!(d.room().as_deref(), Some("live"));
        d.extend(tail);
        assert_eq!(d.decode().unwrap(), [RoomMsg::Lagged { from: 7, to: 9 }]);
    }

    #[test]
    fn events_before_the_start_or_a_second_start_break_the_protocol() {
        let mut d = RoomDecoder::default();
        d.extend(&frame(Body::Advance(v1::SeqAdvance { seq: 1 })));
        assert!(d.decode().is_err());
        let mut d = RoomDecoder::default();
        d.extend(&start("a"));
        d.extend(&start("b"));
        assert!(d.decode().is_err());
    }
}
