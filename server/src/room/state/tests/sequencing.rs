//! Sequencing, chat admission and recall.

use super::*;

#[tokio::test(start_paused = true)]
async fn sequence_numbers_are_consecutive_and_shared_by_all_members() {
    let mut r = room();
    let now = Instant::now();
    let (a, b) = (Outbox::new(100), Outbox::new(100));
    join(&mut r, 1, id("a", Role::Viewer), &a, now);
    join(&mut r, 2, id("b", Role::Viewer), &b, now);
    for i in 0..4 {
        assert_eq!(send(&mut r, if i % 2 == 0 { 1 } else { 2 }, "hi", now).seq, i + 1);
    }
    r.flush(now);
    let sa = seqs(&a).await;
    assert_eq!(sa, vec![1, 2, 3, 4]);
    assert_eq!(sa, seqs(&b).await);
}

#[tokio::test(start_paused = true)]
async fn kind_and_priority_follow_the_senders_role() {
    let mut r = room();
    let now = Instant::now();
    let o = Outbox::new(100);
    join(&mut r, 1, id("v", Role::Viewer), &o, now);
    join(&mut r, 2, id("h", Role::Host), &Outbox::new(100), now);
    join(&mut r, 3, id("x", Role::Admin), &Outbox::new(100), now);
    send(&mut r, 1, "a", now);
    send(&mut r, 2, "b", now);
    send(&mut r, 3, "c", now);
    r.flush(now);
    let events: Vec<_> = frames(&o)
        .await
        .into_iter()
        .filter_map(|b| match b {
            v1::room_frame::Body::Event(e) if e.seq > 0 => Some(e),
            _ => None,
        })
        .collect();
    assert!(matches!(events[0].kind, Some(Kind::Chat(_))));
    assert_eq!(events[0].priority, v1::Priority::High as i32);
    assert!(matches!(events[1].kind, Some(Kind::HostMessage(_))));
    assert!(matches!(events[2].kind, Some(Kind::SystemNotice(_))));
    assert_eq!(events[2].priority, v1::Priority::Normal as i32);
}

#[test]
fn duplicate_client_msg_id_is_sequenced_once() {
    let mut r = room();
    let now = Instant::now();
    join(&mut r, 1, id("a", Role::Viewer), &Outbox::new(100), now);
    let first = r.publish(1, chat("hi", "c-1"), now, 0).unwrap();
    let again = r.publish(1, chat("hi", "c-1"), now, 0).unwrap();
    assert_eq!(first, again);
    assert_eq!(r.current_seq(), 1);
    send(&mut r, 1, "hi", now);
    send(&mut r, 1, "hi", now);
    assert_eq!(r.current_seq(), 3);
}

#[test]
fn the_budget_samples_viewer_chat_but_never_hosts_or_admins() {
    let mut r = room_with(RoomLimits { chat_budget_per_sec: 5, ..limits() }, 100);
    let now = Instant::now();
    join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
    join(&mut r, 2, id("h", Role::Host), &Outbox::new(100), now);
    join(&mut r, 3, id("x", Role::Admin), &Outbox::new(100), now);
    let outcomes: Vec<_> = (0..20).map(|_| r.publish(1, chat("x", ""), now, 0).unwrap()).collect();
    let broadcast = outcomes.iter().filter(|(a, _)| a.broadcast).count();
    assert_eq!(broadcast, 5, "the burst of a 5/s budget");
    for (ack, outcome) in &outcomes[5..] {
        assert_eq!((ack.seq, *outcome), (0, ChatOutcome::Sampled));
    }
    for _ in 0..20 {
        assert!(r.publish(2, chat("host", ""), now, 0).unwrap().0.broadcast);
        assert!(r.publish(3, chat("notice", ""), now, 0).unwrap().0.broadcast);
    }
    assert_eq!(r.current_seq(), 45, "sampled messages took no sequence numbers");
    // The budget refills with time.
    let later = now + Duration::from_secs(1);
    assert!(r.publish(1, chat("x", ""), later, 0).unwrap().0.broadcast);
}

#[test]
fn in_a_fleet_a_node_admits_its_users_share_of_the_rooms_budget() {
    let mut r = room_with(RoomLimits { chat_budget_per_sec: 20, ..limits() }, 100);
    let now = Instant::now();
    join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
    // One user here, three on other nodes: a quarter of 20/s.
    r.set_fleet_others(3);
    let broadcast = (0..40).filter(|_| r.publish(1, chat("x", ""), now, 0).unwrap().0.broadcast).count();
    assert_eq!(broadcast, 5, "the burst of a 5/s share");
    let later = now + Duration::from_secs(1);
    let refilled = (0..40).filter(|_| r.publish(1, chat("x", ""), later, 0).unwrap().0.broadcast).count();
    assert_eq!(refilled, 5, "refilled at 5/s");
    // The others left: the whole budget again, from the next refill.
    r.set_fleet_others(0);
    let alone = (0..40)
        .filter(|_| r.publish(1, chat("x", ""), later + Duration::from_secs(1), 0).unwrap().0.broadcast)
        .count();
    assert_eq!(alone, 20);
}

#[test]
fn a_viewer_faster_than_the_user_rate_is_refused() {
    let mut r = room_with(RoomLimits { user_chat_per_sec: 1.0, ..limits() }, 100);
    let now = Instant::now();
    join(&mut r, 1, id("v", Role::Viewer), &Outbox::new(100), now);
    join(&mut r, 2, id("w", Role::Viewer), &Outbox::new(100), now);
    join(&mut r, 3, id("h", Role::Host), &Outbox::new(100), now);
    assert!(r.publish(1, chat("a", ""), now, 0).is_ok());
    assert_eq!(r.publish(1, chat("b", ""), now, 0), Err(ErrorCode::RateLimited));
    assert!(r.publish(2, chat("c", ""), now, 0).is_ok(), "per user, not per room");
    assert!(r.publish(3, chat("d", ""), now, 0).is_ok());
    assert!(r.publish(3, chat("e", ""), now, 0).is_ok(), "hosts are not limited");
    assert!(r.publish(1, chat("f", ""), now + Duration::from_secs(1), 0).is_ok());
}

#[tokio::test(start_paused = true)]
async fn recall_by_sender_host_or_admin_removes_from_history() {
    let mut r = room_with(limits(), 100);
    let now = Instant::now();
    let o = Outbox::new(100);
    join(&mut r, 1, id("v", Role::Viewer), &o, now);
    join(&mut r, 2, id("w", Role::Viewer), &Outbox::new(100), now);
    join(&mut r, 3, id("h", Role::Host), &Outbox::new(100), now);
    let a = send(&mut r, 1, "oops", now);
    let b = send(&mut r, 1, "rude", now);
    assert_eq!(r.recall(2, &a.message_id, now, 0), Err(ErrorCode::Forbidden), "not someone else's");
    let rec = r.recall(1, &a.message_id, now, 0).unwrap();
    assert_eq!(rec.seq, 3);
    assert_eq!(r.recall(1, &a.message_id, now, 0), Err(ErrorCode::NotFound), "already gone");
    assert!(r.recall(3, &b.message_id, now, 0).is_ok(), "the host may");
    assert_eq!(r.recall(1, "nope", now, 0), Err(ErrorCode::NotFound));
    let j = r.join(9, id("z", Role::Viewer), Outbox::new(10), None, Filter::All, now, 0);
    let kinds: Vec<_> = j.history.iter().map(|e| (e.seq, matches!(e.kind, Some(Kind::Recall(_))))).collect();
    assert_eq!(kinds, [(3, true), (4, true)], "both messages left history; the recalls stay");
    r.flush(now);
    let frames = frames(&o).await;
    let recalls = frames
        .iter()
        .filter(|b| matches!(b, v1::room_frame::Body::Event(e) if matches!(e.kind, Some(Kind::Recall(_)))))
        .count();
    assert_eq!(recalls, 2, "every member hears about the recall");
}

#[test]
fn publish_requires_membership() {
    let mut r = room();
    assert_eq!(r.publish(9, chat("x", ""), Instant::now(), 0), Err(ErrorCode::NotJoined));
}
