//! Rounds: batching windows, ticks, slices, lingering ephemera and the log bound.

use super::super::rounds::MAX_LOG;
use super::*;

#[tokio::test(start_paused = true)]
async fn a_quiet_room_flushes_at_once_and_a_busy_one_once_per_window() {
    let mut r = room();
    let t0 = Instant::now();
    let o = Outbox::new(100);
    join(&mut r, 1, id("a", Role::Viewer), &o, t0);
    r.flush(t0);
    r.take_stats();
    let _ = frames(&o).await;
    let t1 = t0 + Duration::from_millis(30);
    send(&mut r, 1, "first", t1);
    assert_eq!(r.flush_due(t1), Some(t1), "nothing flushed for a window: at once");
    r.flush(t1);
    let stats = r.take_stats();
    assert_eq!((stats.pushes, stats.deliveries), (1, 1));
    let t2 = t1 + Duration::from_millis(5);
    send(&mut r, 1, "second", t2);
    send(&mut r, 1, "third", t2);
    assert_eq!(r.flush_due(t2), Some(t1 + Duration::from_millis(20)), "within the window: wait");
    r.flush(t1 + Duration::from_millis(20));
    let stats = r.take_stats();
    assert_eq!((stats.pushes, stats.deliveries), (1, 2), "two events, one push");
    assert_eq!(seqs(&o).await, vec![1, 2, 3]);
}

#[test]
fn the_window_widens_with_room_size() {
    let mut r = room();
    let now = Instant::now();
    assert_eq!(r.batch_window(), Duration::from_millis(20));
    for c in 0..5_000 {
        r.join(c, id(&format!("u{c}"), Role::Viewer), Outbox::new(4), None, Filter::All, now, 0);
    }
    assert_eq!(r.batch_window(), Duration::from_millis(200));
    for c in 5_000..40_000 {
        r.join(c, id(&format!("u{c}"), Role::Viewer), Outbox::new(4), None, Filter::All, now, 0);
    }
    assert_eq!(r.batch_window(), Duration::from_millis(500), "capped");
}

#[tokio::test(start_paused = true)]
async fn ephemeral_events_alone_linger_and_the_online_count_rides_with_a_batch() {
    let mut r = room_with(RoomLimits { entered_per_sec: 100, ..limits() }, 10);
    let t0 = Instant::now();
    let a = Outbox::new(100);
    join(&mut r, 1, id("a", Role::Host), &a, t0);
    r.flush(t0);
    r.push_online(t0, 0);
    let mut raw = Vec::new();
    assert!(a.try_drain(&mut raw).is_some_and(|d| d.datagrams[Slot::Online as usize].is_some()));
    // A newcomer's "entered" alone waits for company: a second after the
    // last round, when the changed online count is due too.
    let t1 = t0 + Duration::from_millis(10);
    join(&mut r, 2, id("b", Role::Viewer), &Outbox::new(100), t1);
    assert_eq!(r.flush_due(t1), Some(t0 + Duration::from_secs(1)));
    assert_eq!(r.online_due(t1), None, "it rides with that round");
    // A sequenced event brings the batch back to one window.
    send(&mut r, 1, "hi", t1);
    assert_eq!(r.flush_due(t1), Some(t0 + Duration::from_millis(20)));
    // The online count changed (2 now); its next push is due a second
    // after the last, so it waits...
    let t2 = t0 + Duration::from_millis(20);
    r.flush(t2);
    assert!(a.try_drain(&mut raw).is_some_and(|d| d.datagrams[Slot::Online as usize].is_none()));
    // ...and goes out with the first batch within a window of that.
    let t3 = t0 + Duration::from_millis(990);
    send(&mut r, 1, "again", t3);
    r.flush(t3);
    assert!(a.try_drain(&mut raw).is_some_and(|d| d.datagrams[Slot::Online as usize].is_some()));
    assert_eq!(r.online_due(t3), None, "nothing left to push on its own");
}

/// A room of 1,500 with a 20 ms base window: a 60 ms window, so a round
/// is three ticks of 500 members.
fn big_room(now: Instant) -> (RoomState, Vec<Arc<Outbox>>) {
    let mut r = room_with(RoomLimits { entered_per_sec: 0, ..limits() }, 100);
    let boxes: Vec<_> = (0..1_500).map(|_| Outbox::new(100)).collect();
    for (c, o) in boxes.iter().enumerate() {
        join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Viewer), o, now);
    }
    assert_eq!(r.batch_window(), Duration::from_millis(60));
    (r, boxes)
}

/// Ticks the room through every due tick up to `until`, as the room
/// task does.
fn run_until(r: &mut RoomState, from: Instant, until: Instant) {
    let mut now = from;
    while let Some(at) = r.flush_due(now).filter(|at| *at <= until) {
        r.tick(at);
        now = at;
    }
}

#[tokio::test(start_paused = true)]
async fn a_big_room_is_served_a_slice_per_tick_and_each_member_once_per_window() {
    let t0 = Instant::now();
    let (mut r, boxes) = big_room(t0);
    send(&mut r, 0, "one", t0);
    assert_eq!(r.flush_due(t0), Some(t0), "a quiet room starts at once");
    r.tick(t0);
    assert_eq!(boxes.iter().filter(|o| !o.is_empty()).count(), 500, "one slice per tick");
    let t1 = t0 + Duration::from_millis(20);
    assert_eq!(r.flush_due(t0), Some(t1), "the next slice one base window later");
    send(&mut r, 0, "two", t1 - Duration::from_millis(1));
    r.tick(t1);
    assert_eq!(boxes.iter().filter(|o| !o.is_empty()).count(), 1_000);
    r.tick(t1 + Duration::from_millis(20));
    assert_eq!(r.take_stats().pushes, 1_500, "one push per member in the round");
    // The first slice gets "two" in the next round, one window after
    // the first began; everyone else already has both.
    assert_eq!(r.flush_due(t1), Some(t0 + Duration::from_millis(60)));
    run_until(&mut r, t0, t0 + Duration::from_secs(1));
    assert_eq!(r.take_stats().pushes, 500);
    assert_eq!(r.flush_due(t0 + Duration::from_secs(1)), None, "all delivered");
    assert!(r.log.is_empty(), "the log is trimmed once every member has it");
    for o in &boxes {
        assert_eq!(seqs(o).await, [1, 2]);
    }
}

#[tokio::test(start_paused = true)]
async fn newcomers_to_a_quiet_room_cost_each_member_about_one_packet_a_second() {
    let t0 = Instant::now();
    let mut r = room_with(RoomLimits { entered_per_sec: 100, ..limits() }, 10);
    let boxes: Vec<_> = (0..100).map(|_| Outbox::new(1_000)).collect();
    for (c, o) in boxes.iter().enumerate() {
        join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Viewer), o, t0);
    }
    // What the room task does: due rounds, and online counts on their own.
    let drive = |r: &mut RoomState, until: Instant| loop {
        let round = r.flush_due(until).filter(|at| *at <= until);
        let online = r.online_due(until).filter(|at| *at <= until);
        match (round, online) {
            (Some(at), None) => r.tick(at),
            (Some(at), Some(o)) if at <= o => r.tick(at),
            (_, Some(at)) => r.push_online(at, 0),
            (None, None) => break,
        }
    };
    let mut raw = Vec::new();
    let settled = t0 + Duration::from_secs(3);
    drive(&mut r, settled);
    let _ = boxes[0].try_drain(&mut raw);
    // Fifty newcomers over the next two seconds, one every 40 ms: member
    // 0's outbox is looked at after each, as its writer would.
    let mut wakeups = 0;
    for i in 0..50u64 {
        let now = settled + Duration::from_millis(40 * i);
        drive(&mut r, now);
        join(&mut r, 1_000 + i, id(&format!("n{i}"), Role::Viewer), &Outbox::new(1_000), now);
        wakeups += usize::from(boxes[0].try_drain(&mut raw).is_some());
    }
    drive(&mut r, settled + Duration::from_secs(2));
    wakeups += usize::from(boxes[0].try_drain(&mut raw).is_some());
    assert!(wakeups <= 3, "{wakeups} writes in two seconds for 50 entered notices and counts");
    let entered = raw.len();
    assert!(entered >= 50, "every newcomer's notice arrived ({entered} frames)");
}

#[tokio::test(start_paused = true)]
async fn an_entered_notice_after_a_served_chat_waits_the_linger_and_one_beside_a_chat_the_window() {
    let t0 = Instant::now();
    let mut r = room();
    let boxes: Vec<_> = (0..3).map(|_| Outbox::new(100)).collect();
    for (c, o) in boxes.iter().enumerate() {
        join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Viewer), o, t0);
    }
    let t1 = t0 + Duration::from_secs(5);
    run_until(&mut r, t0, t1);
    send(&mut r, 0, "hello", t1);
    run_until(&mut r, t1, t1);
    r.push_online(t1, 0);
    assert!(r.flush_due(t1).is_none(), "the chat went out at once and the log is empty");
    // Only an entered notice waits: it may linger a second after the
    // chat's round, for the online count to travel with.
    let t2 = t1 + Duration::from_millis(5);
    join(&mut r, 10, id("late", Role::Viewer), &Outbox::new(100), t2);
    let linger = r.flush_due(t2).expect("the notice is due");
    assert!(linger >= t1 + Duration::from_millis(900), "due {:?} after the chat", linger - t1);
    // A chat beside it: the round follows one window after the last.
    send(&mut r, 1, "again", t2);
    assert_eq!(r.flush_due(t2), Some(t1 + r.batch_window()));
}

#[tokio::test(start_paused = true)]
async fn late_ticks_do_not_stretch_the_round_or_the_next_one() {
    let t0 = Instant::now();
    let (mut r, _boxes) = big_room(t0);
    send(&mut r, 0, "one", t0);
    r.tick(t0);
    let late = t0 + Duration::from_millis(35);
    send(&mut r, 0, "two", late);
    r.tick(late);
    assert_eq!(r.flush_due(late), Some(t0 + Duration::from_millis(40)), "the last tick keeps its place");
    let end = t0 + Duration::from_millis(41);
    r.tick(end);
    assert!(r.rounds.round.is_none());
    // The first slice still needs "two": the next round is due one
    // window after the first began, and counts from then.
    assert_eq!(r.flush_due(end), Some(t0 + Duration::from_millis(60)));
    let next = t0 + Duration::from_millis(62);
    r.tick(next);
    assert_eq!(r.flush_due(next), Some(t0 + Duration::from_millis(80)));
}

#[tokio::test(start_paused = true)]
async fn a_member_moved_by_a_leave_mid_round_still_gets_every_event_once() {
    let t0 = Instant::now();
    let (mut r, boxes) = big_room(t0);
    send(&mut r, 1, "one", t0);
    r.tick(t0);
    // Slot 0 was served; the last member, not yet served, moves into it.
    assert!(r.leave(0));
    run_until(&mut r, t0, t0 + Duration::from_secs(1));
    assert!(r.log.is_empty());
    for o in &boxes[1..] {
        assert_eq!(seqs(o).await, [1]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_mid_round_has_unsent_events_in_its_history_and_not_again() {
    let t0 = Instant::now();
    let (mut r, boxes) = big_room(t0);
    send(&mut r, 0, "one", t0);
    r.tick(t0);
    let late = Outbox::new(100);
    let joined = join(&mut r, 9_999, id("late", Role::Viewer), &late, t0 + Duration::from_millis(5));
    assert_eq!(joined.current_seq, 1);
    assert_eq!(joined.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    send(&mut r, 0, "two", t0 + Duration::from_millis(10));
    run_until(&mut r, t0, t0 + Duration::from_secs(1));
    assert_eq!(seqs(&late).await, [2]);
    assert_eq!(seqs(&boxes[1_499]).await, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_log_that_outgrows_its_bound_reaches_everyone_at_once() {
    let t0 = Instant::now();
    let (mut r, boxes) = big_room(t0);
    r.tick(t0);
    for i in 0..MAX_LOG as u64 {
        r.sequence(Kind::Chat(v1::Chat { text: format!("{i}"), ..Default::default() }), None, None, t0, 0);
    }
    assert_eq!(r.flush_due(t0), Some(t0));
    r.tick(t0);
    assert!(r.log.is_empty());
    assert_eq!(r.take_stats().pushes, boxes.len(), "every member, not one slice");
}
