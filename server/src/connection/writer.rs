//! The room writer: a member's feed, drained into its room stream.

use super::*;

/// Writes one room's events to its unidirectional stream (whose start frame
/// the session wrote), and its online count and like total as datagrams. Everything
/// pending is written with one vectored write.
pub(super) async fn write_room(
    mut send: quinn::SendStream,
    mut feed: Feed,
    conn: quinn::Connection,
    room: RoomId,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut batch = Vec::new();
    loop {
        let drained = feed.next(&mut batch).await;
        if let Some(waited) = drained.waited {
            metrics.outbox_wait.observe(waited.as_secs_f64());
        }
        if let Some(at) = drained.sequenced_at {
            metrics.sequenced_to_write.observe(at.elapsed().as_secs_f64());
        }
        for datagram in drained.datagrams.into_iter().flatten() {
            if let Err(e) = conn.send_datagram(datagram) {
                debug!(error = %e, "room datagram not sent");
            }
        }
        if let Some((from_seq, to_seq)) = drained.lagged {
            debug!(room = %room, from_seq, to_seq, "subscriber lagged");
            let lagged =
                v1::RoomFrame { body: Some(v1::room_frame::Body::Lagged(v1::Lagged { from_seq, to_seq })) };
            batch.push(encode_frame(&lagged));
        }
        if !batch.is_empty() {
            if send.write_all_chunks(&mut batch).await.is_err() {
                feed.close();
                return;
            }
            batch.clear();
        }
        if let Some(last) = drained.last {
            // A removal notice: the stream's last frame.
            let _ = send.write_chunk(last).await;
        }
        if drained.closed || drained.lagged.is_some() {
            // Until the client has acknowledged the stream, a close of the
            // connection (a drain, say) would discard its last events.
            let _ = send.finish();
            let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
            return;
        }
    }
}
