//! The room task: the only place a room's state meets channels and timers.
//! It handles commands in arrival order, runs rounds on the tick timer,
//! paces the online count and the like total, and removes the room once it
//! has stayed empty.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use roomcast_protocol::{ErrorCode, RoomId, unix_ms};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use super::fleet::{Numbered, Publisher, follow};
use super::handle::{Command, JoinRequest};
use super::history::HistoryLog;
use super::likes::LikeCounter;
use super::registry::{RoomStats, Rooms};
use super::state::{ChatOutcome, RoomLimits, RoomState};
use crate::cluster::{FleetCounts, LikesCounted};
use crate::config::RoomConfig;
use crate::metrics::Metrics;
use crate::webhooks::{HookEvent, Hooks, LeaveReason};

fn limits(c: &RoomConfig) -> RoomLimits {
    RoomLimits {
        join_history: c.join_history,
        viewer_page: c.viewer_page,
        online_push_interval: Duration::from_millis(c.online_push_interval_ms),
        batch_window: Duration::from_millis(c.batch_window_ms),
        max_batch_window: Duration::from_millis(c.max_batch_window_ms),
        chat_budget_per_sec: c.chat_budget_per_sec,
        user_chat_per_sec: c.user_chat_per_sec,
        entered_per_sec: c.entered_per_sec,
        combo_window: Duration::from_millis(c.gift_combo_window_ms),
    }
}

/// What a command's handling needs besides the state.
struct Room<'a> {
    id: &'a RoomId,
    metrics: &'a Metrics,
    hooks: &'a Hooks,
    /// In a fleet: where the room's events go to be numbered.
    publisher: Option<&'a Publisher>,
}

impl Room<'_> {
    /// Answers a command that may have made sequenced events: in a fleet,
    /// once Redis numbered them.
    fn answer<T: Numbered>(
        &self,
        state: &mut RoomState,
        reply: oneshot::Sender<Result<T, ErrorCode>>,
        result: Result<T, ErrorCode>,
    ) {
        match self.publisher {
            Some(p) => p.answer(state, reply, result),
            None => {
                let _ = reply.send(result);
            }
        }
    }
}

/// How often a room in a fleet reports its users present here.
const ONLINE_REPORT: Duration = Duration::from_secs(1);
/// How long a report counts: a node that stops reporting (it died) is out
/// of the room's count within this.
const ONLINE_TTL: Duration = Duration::from_secs(3);
/// Every how many reports a room reads the other nodes' first pages of
/// users (and at once while it has none).
const PAGES_EVERY: u64 = 10;
/// How many other nodes' pages it reads: enough to fill a joiner's page.
const PAGES: usize = 4;

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

pub(super) async fn run_room(
    rooms: Arc<Rooms>,
    id: RoomId,
    epoch: u64,
    mut rx: mpsc::Receiver<Command>,
    history: Arc<HistoryLog>,
    stats: Arc<RoomStats>,
    likes: Arc<LikeCounter>,
) {
    let fleet = rooms.fleet.clone();
    let empty_ttl = Duration::from_secs(rooms.config.empty_room_ttl_secs);
    let metrics = rooms.metrics.clone();
    let mut state =
        RoomState::new(id.clone(), epoch, limits(&rooms.config), history).with_likes(likes.clone());
    let mut following = match &fleet {
        None => None,
        Some(fleet) => match follow(
            fleet,
            &id,
            &mut state,
            epoch,
            rooms.config.history_len,
            rooms.archive().cloned(),
            metrics.fleet_rooms_renumbered.clone(),
        )
        .await
        {
            Ok(f) => Some(f),
            Err(e) => {
                // A room that cannot follow the fleet's sequence takes
                // nothing: what waits is refused, and the next join makes a
                // new attempt.
                warn!(error = %e, "room cannot reach the fleet's Redis");
                rx.close();
                while let Some(cmd) = rx.recv().await {
                    refuse_unavailable(cmd);
                }
                return;
            }
        },
    };
    let mut empty_since = Some(Instant::now());
    // A room the platform closed on another node refuses joins here too.
    let mut closed = following.as_ref().is_some_and(|f| f.closed);
    if closed {
        rooms.closed_elsewhere(&id);
    }
    // In a fleet: this node's users present and likes counted, reported
    // every second; the fleet's figures come back.
    let (counts_tx, mut counts_rx) = mpsc::channel::<Result<FleetCounts, crate::cluster::FleetError>>(1);
    let mut report_at = following.as_ref().map(|_| Instant::now());
    let mut reports = 0u64;
    debug!("room opened");
    loop {
        let now = Instant::now();
        let flush_at = state.flush_due(now);
        let online_at = state.online_due(now);
        let ranking_at = state.ranking_due(now);
        let likes_at = state.likes_due(now);
        let nudge_at = state.quiz_nudge_due();
        let expiry = empty_since.map(|t| t + empty_ttl);
        tokio::select! {
            biased;
            () = sleep_until(flush_at.unwrap_or_else(far_future)), if flush_at.is_some() => {
                state.tick(Instant::now());
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                if matches!(cmd, Command::Ingest { .. } | Command::CatchUp) {
                    let Some(f) = &mut following else { continue };
                    let taken = match cmd {
                        Command::Ingest { events } => f.ingest(&id, &mut state, events).await,
                        _ => f.catch_up(&id, &mut state).await,
                    };
                    if let Some(reason) = taken
                        && !closed
                    {
                        // Closed by the platform on another node: this
                        // node's members go, and joins here are refused.
                        closed = true;
                        rooms.closed_elsewhere(&id);
                        for (conn, who) in state.members() {
                            metrics.left(LeaveReason::Kicked);
                            let user = Box::from(&*who.user_id);
                            rooms.hooks.emit(HookEvent::UserLeft { room: id.clone(), user, conn, reason: LeaveReason::Kicked });
                        }
                        state.remove_all_closed(&reason, Instant::now());
                    }
                    continue;
                }
                if matches!(cmd, Command::Join { .. })
                    && following.as_ref().is_some_and(|f| !f.fleet.reachable())
                {
                    // Nothing could be sequenced for the joiner: it is told
                    // plainly, and its app tries again or another node.
                    refuse_unavailable(cmd);
                    continue;
                }
                let publisher = following.as_ref().map(|f| &f.publisher);
                let room = Room { id: &id, metrics: &metrics, hooks: &rooms.hooks, publisher };
                handle(&mut state, cmd, &room, &mut closed);
                empty_since = match (state.is_empty(), empty_since) {
                    (true, None) => {
                        rooms.hooks.emit(HookEvent::RoomEmpty { room: id.clone() });
                        Some(Instant::now())
                    }
                    (true, since) => since,
                    (false, _) => None,
                };
            }
            () = sleep_until(ranking_at.unwrap_or_else(far_future)), if ranking_at.is_some() => {
                state.push_ranking(Instant::now(), unix_ms(SystemTime::now()));
            }
            () = sleep_until(online_at.unwrap_or_else(far_future)), if online_at.is_some() => {
                state.push_online(Instant::now(), unix_ms(SystemTime::now()));
            }
            () = likes.changed() => state.likes_changed(),
            () = sleep_until(report_at.unwrap_or_else(far_future)), if report_at.is_some() => {
                report_at = None;
                if let Some(f) = &following {
                    let (fleet, room, tx) = (f.fleet.clone(), id.clone(), counts_tx.clone());
                    let likes = LikesCounted { instance: epoch, total: state.likes_to_report() };
                    let (present, page) = (state.local_online(), state.local_page());
                    // The other nodes' pages now and then, not every second.
                    reports += 1;
                    let pages = if reports % PAGES_EVERY == 1 || !state.has_fleet_page() { PAGES } else { 0 };
                    tokio::spawn(async move {
                        let counts = fleet.report(&room, present, likes, &page, pages, ONLINE_TTL).await;
                        if let Err(e) = &counts {
                            debug!(error = %e, "online count and likes not reported");
                        }
                        let _ = tx.send(counts).await;
                    });
                }
            }
            Some(counts) = counts_rx.recv() => {
                // A report that failed changes nothing: the next one sends
                // the like total again.
                if let Ok(c) = counts {
                    state.set_fleet_others(c.others_online);
                    state.set_fleet_likes(c.like_total);
                    if let Some(page) = c.others_page {
                        state.set_fleet_page(page);
                    }
                }
                report_at = Some(Instant::now() + ONLINE_REPORT);
            }
            () = sleep_until(nudge_at.unwrap_or_else(far_future)), if nudge_at.is_some() => {
                state.push_quiz_nudge(Instant::now());
            }
            () = sleep_until(likes_at.unwrap_or_else(far_future)), if likes_at.is_some() => {
                state.push_likes(Instant::now(), unix_ms(SystemTime::now()));
            }
            () = sleep_until(expiry.unwrap_or_else(far_future)), if expiry.is_some() => {
                if rooms.remove_if_idle(&id, &rx, &stats) {
                    break;
                }
            }
        }
        // A tick that is due now (a quiet room's lone message) goes out
        // before the next command is read.
        let now = Instant::now();
        if state.flush_due(now).is_some_and(|t| t <= now) {
            state.tick(now);
        }
        metrics.record_flush(state.take_stats());
        metrics.record_events(state.take_event_counts());
        stats.record(&state);
    }
    if let Some(f) = following
        && !rooms.has_successor(&id, &stats)
    {
        // Gone from here: the other nodes count no one of this room here.
        // (A closed incarnation replaced by a reopened one leaves the
        // channel and the count to it.)
        let likes = LikesCounted { instance: epoch, total: state.likes_to_report() };
        let _ = f.fleet.report(&id, 0, likes, &[], 0, ONLINE_TTL).await;
        if let Err(e) = f.fleet.unsubscribe(&id).await {
            debug!(error = %e, "room not unsubscribed");
        }
    }
    debug!(seq = state.current_seq(), "room closed");
}

/// Refuses a command of a room that cannot follow the fleet.
fn refuse_unavailable(cmd: Command) {
    let unavailable = ErrorCode::Unavailable;
    match cmd {
        Command::Join { reply, outbox, .. } => {
            outbox.close();
            let _ = reply.send(Err(unavailable));
        }
        Command::Publish { reply, .. } | Command::AdminPublish { reply, .. } => {
            let _ = reply.send(Err(unavailable));
        }
        Command::Recall { reply, .. } | Command::AdminRecall { reply, .. } => {
            let _ = reply.send(Err(unavailable));
        }
        Command::Gift { reply, .. } => {
            let _ = reply.send(Err(unavailable));
        }
        Command::Quiz { reply, .. } => {
            let _ = reply.send(Err(unavailable));
        }
        // The rest answer "gone" by dropping their reply.
        _ => {}
    }
}

/// Handles one command. `closed`: the platform closed the room; it refuses
/// joins and platform messages until the room is dropped.
fn handle(state: &mut RoomState, cmd: Command, room: &Room<'_>, closed: &mut bool) {
    let Room { id, metrics, hooks, .. } = *room;
    let now = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    match cmd {
        Command::Join { request, outbox, reply } => {
            if *closed {
                outbox.close();
                let _ = reply.send(Err(ErrorCode::RoomClosed));
                return;
            }
            let JoinRequest { conn, identity, resume, filter } = request;
            metrics.joins.inc();
            if hooks.is_enabled() {
                let (user, role) = (Box::from(&*identity.user_id), identity.role);
                hooks.emit(HookEvent::UserJoined { room: id.clone(), user, role, conn });
            }
            let joined = state.join(conn, identity, outbox, resume, filter, now, now_ms);
            // The joiner may have gone already; its leave follows.
            let _ = reply.send(Ok(joined));
        }
        Command::Leave { conn, reason } => {
            if reason == LeaveReason::Drain {
                // A draining member leaves with everything already sequenced
                // in its outbox, not waiting for the round.
                state.flush(now);
            }
            let user = state.member(conn).map(|i| Box::from(&*i.user_id));
            if state.leave(conn)
                && let Some(user) = user
            {
                metrics.left(reason);
                hooks.emit(HookEvent::UserLeft { room: id.clone(), user, conn, reason });
            }
        }
        Command::Presence { conn, present } => state.set_present(conn, present),
        Command::Publish { conn, chat, reply } => {
            let result = match state.publish(conn, chat, now, now_ms) {
                Ok((ack, ChatOutcome::Broadcast)) => {
                    metrics.events_sequenced.inc();
                    Ok(ack)
                }
                Ok((ack, ChatOutcome::Sampled)) => {
                    metrics.chat_sampled.inc();
                    Ok(ack)
                }
                Err(ErrorCode::RateLimited) => {
                    metrics.chat_rate_limited.inc();
                    Err(ErrorCode::RateLimited)
                }
                Err(e) => Err(e),
            };
            room.answer(state, reply, result);
        }
        Command::Recall { conn, message_id, reply } => {
            let result = state.recall(conn, &message_id, now, now_ms);
            if result.is_ok() {
                metrics.events_sequenced.inc();
            }
            room.answer(state, reply, result);
        }
        Command::Gift { conn, gift, reply } => {
            let result = state.gift(conn, gift, now, now_ms);
            if result.is_ok() {
                metrics.events_sequenced.inc();
            }
            room.answer(state, reply, result);
        }
        Command::AdminPublish { msg, reply } => {
            let result =
                if *closed { Err(ErrorCode::RoomClosed) } else { Ok(state.publish_admin(msg, now, now_ms)) };
            if result.is_ok() {
                metrics.events_sequenced.inc();
            }
            room.answer(state, reply, result);
        }
        Command::Quiz { event, reply } => {
            let result =
                if *closed { Err(ErrorCode::RoomClosed) } else { Ok(state.quiz_event(event, now, now_ms)) };
            if result.is_ok() {
                metrics.events_sequenced.inc();
            }
            room.answer(state, reply, result);
        }
        Command::AdminRecall { message_id, reply } => {
            let result = state.recall_admin(&message_id, now, now_ms);
            if result.is_ok() {
                metrics.events_sequenced.inc();
            }
            room.answer(state, reply, result);
        }
        Command::RemoveUser { user, code, reason, leave, reply } => {
            let conns: Vec<_> =
                state.members().into_iter().filter(|(_, i)| *i.user_id == *user).map(|(c, _)| c).collect();
            let removed = state.remove_user(&user, code, &reason);
            for conn in conns {
                metrics.left(leave);
                let user = Box::from(user.as_str());
                hooks.emit(HookEvent::UserLeft { room: id.clone(), user, conn, reason: leave });
            }
            let _ = reply.send(removed);
        }
        Command::Close { reason, reply } => {
            let members = if *closed { Vec::new() } else { state.members() };
            let seq = if *closed { state.current_seq() } else { state.close(&reason, now, now_ms) };
            for (conn, who) in members {
                metrics.left(LeaveReason::Kicked);
                let user = Box::from(&*who.user_id);
                hooks.emit(HookEvent::UserLeft { room: id.clone(), user, conn, reason: LeaveReason::Kicked });
            }
            *closed = true;
            if let Some(p) = room.publisher {
                // The final status goes to the fleet; members here are
                // removed already.
                p.send(state);
            }
            let _ = reply.send(seq);
        }
        Command::Ranking { reply } => {
            let _ = reply.send(state.ranking());
        }
        // Handled by the room loop, which owns the fleet's side.
        Command::Ingest { .. } | Command::CatchUp => {}
        Command::Info { offset, limit, reply } => {
            let _ = reply.send(state.info(offset, limit));
        }
    }
}
