//! Room streams: a member's feed, drained into its unidirectional stream
//! when the connection can send. The room pushes encoded batches into the
//! member's outbox and the outbox wakes the connection (a mark in the
//! driver's ready queue); the driver moves what is queued into the stream
//! in one write of shared chunks, and the room's datagrams (online count,
//! like total, quiz nudge) into QUIC's datagram queue.

use super::*;
use crate::metrics::Metrics;

/// One joined room's stream.
pub(super) struct RoomStream {
    id: StreamId,
    room: RoomId,
    feed: Feed,
    /// Bytes taken from the feed that QUIC has not taken yet (its send
    /// window was full). While there are any, the feed is not drained: the
    /// member's outbox fills, and past its capacity the member lags.
    unsent: VecDeque<Bytes>,
    end: End,
}

/// How far the stream is from its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// The feed ended (closed or lagged): finish once `unsent` is out.
    Finish,
    /// Finished; waiting for the client to acknowledge it.
    Finished,
    /// Nothing more to do: acknowledged, stopped or failed.
    Gone,
}

impl RoomStream {
    /// A stream whose start frame names `room`; written before the join's
    /// answer, so both (and the first events) usually leave in one packet.
    pub(super) fn new(id: StreamId, room: RoomId, feed: Feed) -> Self {
        let start = encode_frame(&v1::RoomFrame {
            body: Some(v1::room_frame::Body::Start(v1::RoomStreamStart { room: room.to_string() })),
        });
        Self { id, room, feed, unsent: VecDeque::from([start]), end: End::Open }
    }

    pub(super) fn id(&self) -> StreamId {
        self.id
    }

    /// True once nothing more will be written or awaited.
    pub(super) fn is_gone(&self) -> bool {
        self.end == End::Gone
    }

    /// The connection is going or the client stopped the stream: the room
    /// stops queueing for it.
    pub(super) fn stop(mut self) {
        self.feed.close();
        self.end = End::Gone;
    }

    /// Writes what QUIC takes: what was left over, then what the feed has,
    /// until the feed is empty (its waker is then registered) or QUIC's
    /// window is full (a `Writable` event brings the connection back).
    pub(super) fn pump(&mut self, quic: &mut proto::Connection, cx: &mut Context<'_>, metrics: &Metrics) {
        let mut frames = Vec::new();
        loop {
            if !self.flush(quic) {
                return;
            }
            match self.end {
                End::Open => {}
                End::Finish => {
                    self.end = match quic.send_stream(self.id).finish() {
                        Ok(()) => End::Finished,
                        Err(_) => End::Gone,
                    };
                    return;
                }
                End::Finished | End::Gone => return,
            }
            let drained = match self.feed.poll_next(cx, &mut frames) {
                Poll::Ready(d) => d,
                Poll::Pending => return,
            };
            if let Some(waited) = drained.waited {
                metrics.outbox_wait.observe(waited.as_secs_f64());
            }
            if let Some(at) = drained.sequenced_at {
                metrics.sequenced_to_write.observe(at.elapsed().as_secs_f64());
            }
            for datagram in drained.datagrams.into_iter().flatten() {
                // The oldest queued datagram gives way: each is a latest value.
                if let Err(e) = quic.datagrams().send(datagram, true) {
                    debug!(error = %e, "room datagram not sent");
                }
            }
            self.unsent.extend(frames.drain(..));
            if let Some((from_seq, to_seq)) = drained.lagged {
                debug!(room = %self.room, from_seq, to_seq, "subscriber lagged");
                let lagged = v1::RoomFrame {
                    body: Some(v1::room_frame::Body::Lagged(v1::Lagged { from_seq, to_seq })),
                };
                self.unsent.push_back(encode_frame(&lagged));
            }
            if let Some(last) = drained.last {
                // A removal notice: the stream's last frame.
                self.unsent.push_back(last);
            }
            if drained.closed || drained.lagged.is_some() {
                // Finished, and the connection's close waits until the
                // client has acknowledged it (a drain's close would discard
                // its last events otherwise).
                self.end = End::Finish;
            }
        }
    }

    /// Hands QUIC what it takes of `unsent`; true once all of it is taken.
    fn flush(&mut self, quic: &mut proto::Connection) -> bool {
        match write_all(quic, self.id, &mut self.unsent) {
            Ok(all) => all,
            Err(()) => {
                // Stopped by the client or gone with the connection.
                self.feed.close();
                self.unsent.clear();
                self.end = End::Gone;
                false
            }
        }
    }
}
