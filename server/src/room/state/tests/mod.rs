//! Unit tests of the room state machine, by concern; helpers here.

mod joins;
mod rounds;
mod sequencing;

use super::super::fanout::Slot;
use super::*;
use roomcast_protocol::codec::FrameDecoder;

fn limits() -> RoomLimits {
    RoomLimits {
        join_history: 3,
        viewer_page: 2,
        online_push_interval: Duration::from_secs(1),
        batch_window: Duration::from_millis(20),
        max_batch_window: Duration::from_millis(500),
        chat_budget_per_sec: 0,
        user_chat_per_sec: 0.0,
        entered_per_sec: 100,
        combo_window: Duration::from_secs(3),
    }
}

fn id(user: &str, role: Role) -> Identity {
    Identity { user_id: user.into(), name: user.to_uppercase().into(), role }
}

fn chat(text: &str, cid: &str) -> ChatRequest {
    ChatRequest { text: text.into(), client_msg_id: cid.into(), media_ts_ms: None }
}

fn room_with(limits: RoomLimits, history_len: usize) -> RoomState {
    RoomState::new(
        RoomId::new("r").unwrap(),
        7,
        limits,
        HistoryLog::new(history_len, Duration::from_secs(3600)),
    )
}

fn room() -> RoomState {
    room_with(limits(), 5)
}

/// Frames currently queued for a member, decoded (none if nothing is).
async fn frames(o: &Outbox) -> Vec<v1::room_frame::Body> {
    let mut raw = Vec::new();
    if o.is_empty() && !o.is_done() {
        return Vec::new();
    }
    o.drain(&mut raw).await;
    let mut dec = FrameDecoder::new(1 << 20);
    for f in raw {
        dec.extend(&f);
    }
    let mut out = Vec::new();
    while let Some(v1::RoomFrame { body: Some(b) }) = dec.next_message().unwrap() {
        out.push(b);
    }
    out
}

/// The "user entered" events among `frames`.
fn entered_events(frames: Vec<v1::room_frame::Body>) -> Vec<v1::RoomEvent> {
    frames
        .into_iter()
        .filter_map(|b| match b {
            v1::room_frame::Body::Event(e) if matches!(e.kind, Some(Kind::UserEntered(_))) => Some(e),
            _ => None,
        })
        .collect()
}

async fn seqs(o: &Outbox) -> Vec<u64> {
    frames(o)
        .await
        .into_iter()
        .filter_map(|b| match b {
            v1::room_frame::Body::Event(e) if e.seq > 0 => Some(e.seq),
            _ => None,
        })
        .collect()
}

fn join(r: &mut RoomState, conn: ConnId, who: Identity, o: &Arc<Outbox>, now: Instant) -> v1::Joined {
    r.join(conn, who, o.clone(), None, Filter::All, now, 0)
}

fn send(r: &mut RoomState, conn: ConnId, text: &str, now: Instant) -> v1::ChatAck {
    r.publish(conn, chat(text, ""), now, 0).unwrap().0
}
