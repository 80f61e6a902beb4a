//! Unit tests of `room_track`.

use super::*;

const ROOM: &str = "live";

fn ev(seq: u64) -> v1::RoomEvent {
    v1::RoomEvent {
        room: ROOM.into(),
        seq,
        message_id: if seq == 0 { String::new() } else { format!("m{seq}") },
        ..Default::default()
    }
}

fn joined(current_seq: u64, history: &[u64]) -> v1::Joined {
    v1::Joined {
        room: ROOM.into(),
        current_seq,
        history: history.iter().map(|s| ev(*s)).collect(),
        epoch: 7,
        next_seq: current_seq + 1,
        ..Default::default()
    }
}

fn drain(t: &mut RoomTracker) -> Vec<Output> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

fn msg(seq: u64) -> Output {
    Output::Event(Event::Message(ev(seq)))
}

fn gap(from: u64, to: u64) -> Output {
    Output::Event(Event::Gap { room: ROOM.into(), from, to })
}

fn resumed(complete: bool, replayed: usize) -> Output {
    Output::Event(Event::Resumed { room: ROOM.into(), complete, replayed })
}

fn rejoin(last_seq: u64, epoch: Option<u64>) -> Output {
    Output::Rejoin(v1::Join { room: ROOM.into(), last_seq: Some(last_seq), filter: 0, epoch })
}

/// A tracker joined to `ROOM` at `current_seq`, outputs drained.
fn joined_at(current_seq: u64) -> RoomTracker {
    let mut t = RoomTracker::default();
    t.join_requested(ROOM, 0);
    t.joined(ROOM, &joined(current_seq, &[]));
    assert_eq!(drain(&mut t), []);
    t
}

fn feed(t: &mut RoomTracker, seqs: &[u64]) -> Vec<Output> {
    for s in seqs {
        t.room_msg(ROOM, RoomMsg::Event(Box::new(ev(*s))));
    }
    drain(t)
}

#[test]
fn events_in_order_are_delivered_in_order() {
    let mut t = joined_at(3);
    assert_eq!(feed(&mut t, &[4, 5, 6]), [msg(4), msg(5), msg(6)]);
}

#[test]
fn a_skipped_sequence_number_is_reported_as_a_gap_before_the_next_event() {
    let mut t = joined_at(3);
    assert_eq!(feed(&mut t, &[4, 7, 8]), [msg(4), gap(5, 6), msg(7), msg(8)]);
}

#[test]
fn an_event_seen_twice_by_seq_or_by_message_id_is_dropped() {
    let mut t = joined_at(0);
    assert_eq!(feed(&mut t, &[1, 2, 2, 1]), [msg(1), msg(2)], "same seq again");
    let mut again = ev(3);
    again.message_id = "m2".into();
    t.room_msg(ROOM, RoomMsg::Event(Box::new(again)));
    assert_eq!(drain(&mut t), [], "a new seq with a message id already delivered");
    assert_eq!(feed(&mut t, &[4]), [msg(4)], "seq 3 still counts as seen");
}

#[test]
fn a_gap_before_an_event_dropped_by_its_message_id_is_still_reported() {
    let mut t = joined_at(0);
    assert_eq!(feed(&mut t, &[1]), [msg(1)]);
    let mut again = ev(4);
    again.message_id = "m1".into();
    t.room_msg(ROOM, RoomMsg::Event(Box::new(again)));
    assert_eq!(drain(&mut t), [gap(2, 3)]);
}

#[test]
fn seq_advance_moves_a_filtered_rooms_position_without_a_gap() {
    let mut t = joined_at(3);
    t.room_msg(ROOM, RoomMsg::Advance(6));
    assert_eq!(feed(&mut t, &[7]), [msg(7)]);
    t.room_msg(ROOM, RoomMsg::Advance(5));
    assert_eq!(feed(&mut t, &[8]), [msg(8)], "an older advance never moves it back");
}

#[test]
fn ephemeral_events_pass_through_without_moving_the_position() {
    let mut t = joined_at(3);
    assert_eq!(feed(&mut t, &[0, 4, 0, 0, 5]), [msg(0), msg(4), msg(0), msg(0), msg(5)]);
}

#[test]
fn live_frames_are_held_until_joined_then_released_without_overlapping_its_history() {
    let mut t = RoomTracker::default();
    t.join_requested(ROOM, 0);
    // The stream started before the answer: 4 and 5 are in the answer's
    // history too.
    assert_eq!(feed(&mut t, &[4, 5, 6, 0, 7]), [], "held back");
    t.joined(ROOM, &joined(5, &[3, 4, 5]));
    assert_eq!(drain(&mut t), [msg(6), msg(0), msg(7)]);
    assert_eq!(feed(&mut t, &[8]), [msg(8)]);
}

#[test]
fn frames_of_a_room_not_joined_are_ignored() {
    let mut t = joined_at(3);
    t.left(ROOM);
    assert_eq!(feed(&mut t, &[4]), []);
    t.join_requested(ROOM, 0);
    t.join_failed(ROOM);
    assert_eq!(feed(&mut t, &[4]), []);
}

#[test]
fn joined_next_seq_starts_the_room_stream_before_current_seq() {
    let mut t = RoomTracker::default();
    t.join_requested(ROOM, 0);
    // A resume missed 3..=10: the answer's history has 3..=5, the stream
    // brings 6..=10 and then live events.
    let j = v1::Joined { next_seq: 6, ..joined(10, &[3, 4, 5]) };
    t.joined(ROOM, &j);
    assert_eq!(feed(&mut t, &[5, 6, 7, 8, 9, 10, 11]), [msg(6), msg(7), msg(8), msg(9), msg(10), msg(11)]);
}

#[test]
fn joined_next_seq_zero_means_right_after_current_seq() {
    let mut t = RoomTracker::default();
    t.join_requested(ROOM, 0);
    t.joined(ROOM, &v1::Joined { next_seq: 0, ..joined(10, &[]) });
    assert_eq!(feed(&mut t, &[10, 11]), [msg(11)], "10 was accounted for by the answer");
}

#[test]
fn joined_next_seq_past_current_seq_cannot_skip_events_unreported() {
    let mut t = RoomTracker::default();
    t.join_requested(ROOM, 0);
    t.joined(ROOM, &v1::Joined { next_seq: 20, ..joined(10, &[]) });
    assert_eq!(feed(&mut t, &[20]), [gap(11, 19), msg(20)]);
}

#[test]
fn a_resume_after_reconnecting_replays_what_was_missed_without_a_gap() {
    let mut t = joined_at(3);
    assert_eq!(feed(&mut t, &[4]), [msg(4)]);
    t.disconnected();
    t.reconnected();
    assert_eq!(drain(&mut t), [rejoin(4, Some(7))]);
    // The new stream started before the answer.
    assert_eq!(feed(&mut t, &[7, 8]), []);
    t.resumed(ROOM, v1::Joined { resumed: true, ..joined(7, &[4, 5, 6, 7]) });
    assert_eq!(drain(&mut t), [msg(5), msg(6), msg(7), resumed(true, 3), msg(8)]);
}

#[test]
fn a_resume_with_next_seq_takes_the_rest_of_the_missed_events_from_the_room_stream() {
    let mut t = joined_at(4);
    t.disconnected();
    t.reconnected();
    assert_eq!(drain(&mut t), [rejoin(4, Some(7))]);
    let j = v1::Joined { resumed: true, next_seq: 7, ..joined(9, &[5, 6]) };
    t.resumed(ROOM, j);
    assert_eq!(drain(&mut t), [msg(5), msg(6), resumed(true, 2)]);
    assert_eq!(feed(&mut t, &[7, 8, 9, 10]), [msg(7), msg(8), msg(9), msg(10)]);
}

#[test]
fn holes_in_a_resumes_history_are_recalled_or_filtered_events_not_loss() {
    let mut t = joined_at(4);
    t.disconnected();
    t.reconnected();
    drain(&mut t);
    // 6 was recalled; 8 is a chat a host-only member does not see.
    t.resumed(ROOM, v1::Joined { resumed: true, ..joined(9, &[5, 7, 9]) });
    assert_eq!(drain(&mut t), [msg(5), msg(7), msg(9), resumed(true, 3)]);
    t.resumed(ROOM, v1::Joined { resumed: false, ..joined(20, &[15, 17]) });
    assert_eq!(drain(&mut t), [gap(10, 14), msg(15), msg(17), resumed(false, 2)], "only the lost part");
}

#[test]
fn an_incomplete_resume_reports_what_is_gone_then_replays_recent_history() {
    let mut t = joined_at(4);
    t.disconnected();
    t.reconnected();
    drain(&mut t);
    t.resumed(ROOM, v1::Joined { resumed: false, ..joined(12, &[9, 10, 11, 12]) });
    assert_eq!(drain(&mut t), [gap(5, 8), msg(9), msg(10), msg(11), msg(12), resumed(false, 4)]);
    assert_eq!(feed(&mut t, &[13]), [msg(13)]);
}

#[test]
fn an_incomplete_resume_with_no_history_reports_everything_up_to_the_stream_start() {
    let mut t = joined_at(4);
    t.disconnected();
    t.reconnected();
    drain(&mut t);
    t.resumed(ROOM, v1::Joined { resumed: false, ..joined(12, &[]) });
    assert_eq!(drain(&mut t), [gap(5, 12), resumed(false, 0)]);
}

#[test]
fn a_resume_into_a_recreated_room_starts_afresh_without_a_gap() {
    let mut t = joined_at(3);
    t.disconnected();
    t.reconnected();
    drain(&mut t);
    // Another epoch: the numbers restarted, 2 and 3 are not old news and
    // 1, older than the history, is not a loss of ours.
    t.resumed(ROOM, v1::Joined { resumed: false, epoch: 8, ..joined(5, &[2, 3, 4, 5]) });
    assert_eq!(drain(&mut t), [msg(2), msg(3), msg(4), msg(5), resumed(false, 4)]);
    assert_eq!(feed(&mut t, &[6]), [msg(6)]);
    t.room_msg(ROOM, RoomMsg::Lagged { from: 7, to: 8 });
    assert_eq!(drain(&mut t)[1], rejoin(6, Some(8)), "the new epoch is resumed from now on");
}

#[test]
fn a_resume_into_a_room_whose_numbers_went_backwards_starts_afresh() {
    let mut t = joined_at(40);
    t.disconnected();
    t.reconnected();
    drain(&mut t);
    // Same epoch claimed, yet behind us: recreated all the same.
    t.resumed(ROOM, v1::Joined { resumed: false, ..joined(3, &[3]) });
    assert_eq!(drain(&mut t), [msg(3), resumed(false, 1)]);
}

#[test]
fn lagged_reports_the_loss_and_rejoins_at_the_last_seq() {
    let mut t = joined_at(3);
    assert_eq!(feed(&mut t, &[4, 5]), [msg(4), msg(5)]);
    t.room_msg(ROOM, RoomMsg::Lagged { from: 4, to: 9 });
    let lagged = Output::Event(Event::Lagged { room: ROOM.into(), from: 6, to: 9 });
    assert_eq!(drain(&mut t), [lagged, rejoin(5, Some(7))], "from what was not delivered");
    // Held until the rejoin is answered.
    assert_eq!(feed(&mut t, &[10]), []);
    t.resumed(ROOM, v1::Joined { resumed: true, ..joined(9, &[6, 7, 8, 9]) });
    assert_eq!(drain(&mut t), [msg(6), msg(7), msg(8), msg(9), resumed(true, 4), msg(10)]);
}

#[test]
fn a_lagged_notice_a_resume_already_covered_is_ignored() {
    let mut t = joined_at(9);
    t.room_msg(ROOM, RoomMsg::Lagged { from: 4, to: 9 });
    assert_eq!(drain(&mut t), []);
}

#[test]
fn a_lagged_frame_is_held_even_when_the_join_buffer_is_full() {
    let mut t = RoomTracker::default();
    t.join_requested(ROOM, 0);
    for s in 1..=MAX_HELD as u64 + 5 {
        t.room_msg(ROOM, RoomMsg::Event(Box::new(ev(s))));
    }
    t.room_msg(ROOM, RoomMsg::Lagged { from: 1, to: 20_010 });
    t.joined(ROOM, &joined(0, &[]));
    let out = drain(&mut t);
    assert_eq!(out.len(), MAX_HELD + 2);
    assert_eq!(out[MAX_HELD - 1], msg(MAX_HELD as u64));
    assert!(
        matches!(&out[MAX_HELD], Output::Event(Event::Lagged { from, .. }) if *from == MAX_HELD as u64 + 1)
    );
    assert!(matches!(&out[MAX_HELD + 1], Output::Rejoin(_)));
}

#[test]
fn a_removal_ends_the_room_without_a_rejoin() {
    let mut t = joined_at(3);
    assert_eq!(feed(&mut t, &[4]), [msg(4)]);
    t.room_msg(ROOM, RoomMsg::Removed { code: Some(ErrorCode::Banned), reason: "kicked".into() });
    let removed =
        Event::Removed { room: ROOM.into(), code: Some(ErrorCode::Banned), reason: "kicked".into() };
    assert_eq!(drain(&mut t), [Output::Event(removed)], "no rejoin follows");
    assert_eq!(feed(&mut t, &[5]), [], "the room is forgotten");
    t.reconnected();
    assert_eq!(drain(&mut t), [], "and not rejoined after a reconnect");
}

#[test]
fn a_refused_resume_forgets_the_room_and_says_so() {
    let mut t = joined_at(3);
    t.disconnected();
    t.reconnected();
    drain(&mut t);
    let error = Error::Refused { code: ErrorCode::Forbidden, message: "banned".into() };
    t.resume_failed(ROOM, error.clone());
    assert_eq!(drain(&mut t), [Output::Event(Event::ResumeFailed { room: ROOM.into(), error })]);
    t.reconnected();
    assert_eq!(drain(&mut t), [], "not rejoined again");
}

#[test]
fn a_lost_connection_forgets_rooms_never_joined_and_rejoins_the_others_by_name() {
    let mut t = RoomTracker::default();
    for room in ["b", "a", "pending"] {
        t.join_requested(room, 1);
    }
    for room in ["b", "a"] {
        t.joined(room, &v1::Joined { room: room.into(), current_seq: 2, epoch: 3, ..Default::default() });
    }
    t.disconnected();
    t.reconnected();
    let rooms: Vec<_> = drain(&mut t)
        .into_iter()
        .map(|o| match o {
            Output::Rejoin(j) => (j.room, j.last_seq, j.filter, j.epoch),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(rooms, [("a".into(), Some(2), 1, Some(3)), ("b".into(), Some(2), 1, Some(3))]);
}
