//! Joins, resumes, filters, presence and the viewer page.

use super::*;
use roomcast_protocol::datagram::ServerDatagram;

#[test]
fn join_returns_recent_history_or_exactly_the_missed_events() {
    let mut r = room();
    let now = Instant::now();
    join(&mut r, 1, id("a", Role::Viewer), &Outbox::new(100), now);
    for _ in 0..8 {
        send(&mut r, 1, "m", now);
    }
    let resume = |r: &mut RoomState, last: Option<u64>| {
        r.join(2, id("b", Role::Viewer), Outbox::new(100), last.map(Resume::at), Filter::All, now, 0)
    };
    let j = resume(&mut r, Some(5));
    assert!(j.resumed);
    assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
    assert!(resume(&mut r, Some(3)).resumed, "seq 4.. is all still kept");
    let j = resume(&mut r, Some(2));
    assert!(!j.resumed, "seq 3 is gone");
    assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
    let j = resume(&mut r, Some(8));
    assert!(j.resumed && j.history.is_empty());
    assert!(!resume(&mut r, Some(99)).resumed, "a position from a future (or an earlier room)");
    let j = resume(&mut r, None);
    assert_eq!((j.current_seq, j.history.len(), j.resumed, j.epoch), (8, 3, false, 7));
    let at = |epoch| Some(Resume { last_seq: 5, epoch: Some(epoch) });
    let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), at(7), Filter::All, now, 0);
    assert!(j.resumed, "same incarnation");
    let j = r.join(2, id("b", Role::Viewer), Outbox::new(100), at(6), Filter::All, now, 0);
    assert!(!j.resumed, "seq 5 of an earlier incarnation of the room");
}

#[tokio::test(start_paused = true)]
async fn a_join_sees_unflushed_events_in_its_history_not_twice() {
    let mut r = room();
    let t0 = Instant::now();
    let o = Outbox::new(100);
    join(&mut r, 1, id("a", Role::Viewer), &o, t0);
    send(&mut r, 1, "one", t0);
    r.flush(t0);
    send(&mut r, 1, "two", t0); // pending: within the window
    let late = Outbox::new(100);
    let j = join(&mut r, 2, id("b", Role::Viewer), &late, t0);
    assert_eq!(j.current_seq, 2);
    assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    r.flush(t0 + Duration::from_secs(1));
    assert!(late.is_empty(), "seq 2 came with the history, not again live");
    assert_eq!(seqs(&o).await, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn host_only_members_get_host_events_and_advances_instead_of_gaps() {
    let mut r = room_with(limits(), 100);
    let now = Instant::now();
    let host_only = Outbox::new(100);
    join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
    join(&mut r, 2, id("h", Role::Host), &Outbox::new(100), now);
    r.join(3, id("f", Role::Viewer), host_only.clone(), None, Filter::HostOnly, now, 0);
    r.flush(now);
    send(&mut r, 1, "chat 1", now); // 1
    send(&mut r, 2, "host 2", now); // 2
    send(&mut r, 1, "chat 3", now); // 3
    send(&mut r, 1, "chat 4", now); // 4
    send(&mut r, 2, "host 5", now); // 5
    send(&mut r, 2, "host 6", now); // 6
    send(&mut r, 1, "chat 7", now); // 7
    r.flush(now);
    let got: Vec<String> = frames(&host_only)
        .await
        .into_iter()
        .map(|b| match b {
            v1::room_frame::Body::Event(e) => format!("event {}", e.seq),
            v1::room_frame::Body::Advance(a) => format!("advance {}", a.seq),
            other => format!("{other:?}"),
        })
        .collect();
    // The trailing chat is accounted for in the same batch, not only when
    // the next host message comes.
    assert_eq!(got, ["advance 1", "event 2", "advance 4", "event 5", "event 6", "advance 7"]);
    // Its join history is filtered the same way.
    let j = r.join(3, id("f", Role::Viewer), Outbox::new(100), None, Filter::HostOnly, now, 0);
    assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6], "recent 3 = 5, 6, 7; 7 is chat");
}

#[test]
fn online_count_counts_present_users_once() {
    let mut r = room();
    let now = Instant::now();
    join(&mut r, 1, id("a", Role::Viewer), &Outbox::new(10), now);
    join(&mut r, 2, id("a", Role::Viewer), &Outbox::new(10), now);
    let j = join(&mut r, 3, id("b", Role::Viewer), &Outbox::new(10), now);
    assert_eq!(j.online_count, 2);
    r.set_present(3, false);
    assert_eq!(r.online_count(), 1);
    r.set_present(3, true);
    assert_eq!(r.online_count(), 2);
    r.leave(1);
    assert_eq!(r.online_count(), 2, "user a still has connection 2");
    r.leave(2);
    assert_eq!(r.online_count(), 1);
    assert!(!r.leave(2));
}

#[test]
fn viewer_page_lists_hosts_first_then_recent_arrivals() {
    let mut r = room();
    let now = Instant::now();
    join(&mut r, 1, id("host", Role::Host), &Outbox::new(10), now);
    join(&mut r, 2, id("v1", Role::Viewer), &Outbox::new(10), now);
    join(&mut r, 3, id("v2", Role::Viewer), &Outbox::new(10), now);
    let j = join(&mut r, 4, id("v3", Role::Viewer), &Outbox::new(10), now);
    let names: Vec<_> = j.viewers.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(names, vec!["host", "v3"]);
}

#[tokio::test(start_paused = true)]
async fn online_count_is_pushed_at_most_once_per_interval() {
    let mut r = room_with(RoomLimits { entered_per_sec: 0, ..limits() }, 10);
    let now = Instant::now();
    let o = Outbox::new(10);
    join(&mut r, 1, id("a", Role::Viewer), &o, now);
    let due = r.online_due(now).unwrap();
    r.push_online(due, 0);
    assert_eq!(r.online_due(now), None, "nothing changed");
    join(&mut r, 2, id("b", Role::Viewer), &Outbox::new(10), now);
    assert_eq!(r.online_due(now), Some(due + Duration::from_secs(1)));
    let mut raw = Vec::new();
    let d = o.drain(&mut raw).await;
    let got = ServerDatagram::decode(d.datagrams[Slot::Online as usize].clone().unwrap()).unwrap();
    assert_eq!(got, ServerDatagram::OnlineCount { room: "r".into(), count: 1, server_time_ms: 0 });
}

#[tokio::test(start_paused = true)]
async fn user_entered_is_ephemeral_sampled_and_not_sent_to_the_joiner() {
    let mut r = room_with(RoomLimits { entered_per_sec: 2, ..limits() }, 10);
    let now = Instant::now();
    let a = Outbox::new(100);
    join(&mut r, 1, id("a", Role::Viewer), &a, now);
    r.flush(now);
    let _ = frames(&a).await;
    for c in 2..10 {
        join(&mut r, c, id(&format!("u{c}"), Role::Viewer), &Outbox::new(100), now);
    }
    r.flush(now);
    let entered = entered_events(frames(&a).await);
    assert_eq!(entered.len(), 1, "a's own entry used one of the two tokens; one more got through");
    assert_eq!(entered[0].seq, 0);
    assert_eq!(entered[0].priority, v1::Priority::Low as i32);
    assert_eq!(r.current_seq(), 0, "ephemeral events take no sequence number");
}

#[tokio::test(start_paused = true)]
async fn a_join_storm_sends_members_one_batch_of_entries_not_a_push_per_newcomer() {
    let mut r = room_with(RoomLimits { entered_per_sec: 100, ..limits() }, 10);
    let t0 = Instant::now();
    let a = Outbox::new(100);
    join(&mut r, 1, id("a", Role::Viewer), &a, t0);
    r.flush(t0);
    let _ = frames(&a).await;
    for c in 2..7 {
        let at = t0 + Duration::from_millis(c);
        join(&mut r, c, id(&format!("u{c}"), Role::Viewer), &Outbox::new(100), at);
    }
    assert!(a.is_empty(), "a newcomer's join pushed pending entries to everyone");
    let due = r.flush_due(t0).expect("the entries are pending");
    r.flush(due);
    let entered = entered_events(frames(&a).await).len();
    assert_eq!(entered, 5, "all five entries, together");
}

#[tokio::test]
async fn an_entry_and_the_newcomers_first_message_arrive_in_that_order() {
    let mut r = room();
    let now = Instant::now();
    let a = Outbox::new(100);
    join(&mut r, 1, id("a", Role::Viewer), &a, now);
    r.flush(now);
    let _ = frames(&a).await;
    join(&mut r, 2, id("b", Role::Viewer), &Outbox::new(100), now);
    send(&mut r, 2, "hi", now);
    join(&mut r, 3, id("c", Role::Viewer), &Outbox::new(100), now);
    r.flush(now);
    let kinds: Vec<_> = frames(&a)
        .await
        .into_iter()
        .filter_map(|b| match b {
            v1::room_frame::Body::Event(e) => match e.kind {
                Some(Kind::UserEntered(u)) => Some(format!("entered {}", u.user.unwrap_or_default().user_id)),
                Some(Kind::Chat(c)) => Some(format!("chat {}", c.text)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["entered b", "chat hi", "entered c"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_outbox_lags_one_member_and_not_the_others() {
    let mut r = room_with(limits(), 100);
    let now = Instant::now();
    let slow = Outbox::new(3);
    let fast = Outbox::new(100);
    join(&mut r, 1, id("s", Role::Viewer), &slow, now);
    join(&mut r, 2, id("f", Role::Viewer), &fast, now);
    r.flush(now);
    let _ = frames(&fast).await;
    r.take_stats();
    for _ in 0..6 {
        send(&mut r, 2, "x", now);
        r.flush(now);
    }
    let stats = r.take_stats();
    assert_eq!((stats.lagged_members, stats.lagged_events, stats.shed_low), (1, 3, 1));
    assert_eq!(seqs(&fast).await, [1, 2, 3, 4, 5, 6]);
    let mut raw = Vec::new();
    let d = slow.drain(&mut raw).await;
    assert_eq!(d.lagged, Some((4, 6)), "the user-entered event was shed first, then 4.. lost");
    assert_eq!(raw.len(), 3, "1..=3 still go out before the lag notice");
}

#[tokio::test]
async fn leaves_and_rejoins_keep_every_remaining_member_subscribed() {
    let mut r = room();
    let now = Instant::now();
    let boxes: Vec<_> = (0..4).map(|_| Outbox::new(100)).collect();
    for (c, o) in boxes.iter().enumerate() {
        join(&mut r, c as ConnId, id(&format!("u{c}"), Role::Host), o, now);
    }
    r.flush(now);
    for o in &boxes {
        frames(o).await;
    }
    // Leave from the front, the middle and the end of the member list.
    assert!(r.leave(0));
    send(&mut r, 1, "a", now);
    r.flush(now);
    assert!(r.leave(3));
    send(&mut r, 2, "b", now);
    r.flush(now);
    let again = Outbox::new(100);
    join(&mut r, 0, id("u0", Role::Host), &again, now);
    assert!(r.leave(1));
    send(&mut r, 2, "c", now);
    r.flush(now);
    assert_eq!(r.member_count(), 2);
    assert_eq!(seqs(&again).await, [3]);
    assert!(seqs(&boxes[0]).await.is_empty());
    assert_eq!(seqs(&boxes[2]).await, [1, 2, 3]);
    assert_eq!(seqs(&boxes[1]).await, [1, 2]);
    assert_eq!(seqs(&boxes[3]).await, [1]);
}

#[tokio::test(start_paused = true)]
async fn a_resume_too_big_for_one_answer_says_where_the_stream_takes_over() {
    use prost::Message;
    let mut r = room_with(limits(), 1000);
    let now = Instant::now();
    join(&mut r, 1, id("h", Role::Host), &Outbox::new(1000), now);
    for _ in 0..300 {
        r.publish(1, chat(&"x".repeat(400), ""), now, 0).unwrap();
    }
    r.flush(now);
    let o = Outbox::new(100);
    let j = r.join(2, id("b", Role::Viewer), o.clone(), Some(Resume::at(10)), Filter::All, now, 0);
    assert!(j.resumed);
    let got: Vec<u64> = j.history.iter().map(|e| e.seq).collect();
    let last = *got.last().unwrap();
    assert_eq!(got, (11..=last).collect::<Vec<_>>(), "the oldest missed events, in order");
    assert!(last < 300, "300 events of 400 bytes do not fit one answer");
    assert_eq!(j.next_seq, last + 1, "the stream carries the rest");
    assert!(j.encoded_len() <= roomcast_protocol::MAX_SERVER_FRAME_BYTES as usize);

    let j = r.join(2, id("b", Role::Viewer), o.clone(), Some(Resume::at(295)), Filter::All, now, 0);
    assert_eq!(j.history.iter().map(|e| e.seq).collect::<Vec<_>>(), [296, 297, 298, 299, 300]);
    assert_eq!(j.next_seq, 301, "a resume that fits leaves nothing for the stream");
    let j = r.join(2, id("b", Role::Viewer), o, None, Filter::All, now, 0);
    assert_eq!(j.next_seq, 301);
}
