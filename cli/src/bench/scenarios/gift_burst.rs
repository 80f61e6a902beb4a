//! `gift-burst`: a room of `--subscribers` viewers while `--senders` users
//! send gifts at `--sender-rate` each (seed 002's peak: 20 users at 30/s).
//! Every tenth send repeats the one before it, as a client retrying after a
//! lost answer would. Reports the gift acks' latency, whether every viewer
//! got every accepted gift once and in order, and whether any user was
//! charged more than the gifts accepted. With `--ledger-delay-ms` the node
//! charges through the webhook ledger, against a stand-in backend here that
//! answers after that delay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use roomcast_client::{Client, GiftMessage, v1};
use tokio::task::JoinSet;

use super::ledger_backend::Backend;
use crate::bench::args::BenchArgs;
use crate::bench::delivery::now_us;
use crate::bench::proc::Usage;
use crate::bench::progress::hold;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::target::Target;

/// Each sender's balance before the run: more than any run spends.
pub(crate) const INITIAL_BALANCE: u64 = 1_000_000_000;
/// The gift sent, one at a time; its price in the default catalogue is 1.
const GIFT: &str = "rose";

/// Sender `i`'s user id.
pub(crate) fn sender(i: usize) -> String {
    format!("gift-sender-{i}")
}

/// One send and its answer.
struct Sent {
    key: String,
    /// A repeat of the send before it, same key.
    repeat: bool,
    /// The answer, or the error.
    ack: Result<v1::GiftAck, String>,
    took_us: u64,
}

/// Sends gifts at `rate` for `secs`, every tenth a repeat of the last key;
/// the media timestamp carries the send time (µs since the generator
/// started), which the node passes through to the viewers' events.
async fn send_gifts(client: Client, room: String, user: String, rate: f64, secs: f64) -> Vec<Sent> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    let mut out = Vec::new();
    let mut key = String::new();
    for n in 0u64.. {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let repeat = n % 10 == 9;
        if !repeat {
            key = format!("{user}-{n}");
        }
        let gift = GiftMessage {
            room: room.clone(),
            gift_id: GIFT.into(),
            count: 1,
            idempotency_key: key.clone(),
            media_ts_ms: Some(now_us()),
            combo_id: String::new(),
        };
        let (c, key) = (client.clone(), key.clone());
        set.spawn(async move {
            let started = Instant::now();
            let ack = c.send_gift_with(gift).await.map_err(|e| e.to_string());
            Sent { key, repeat, ack, took_us: started.elapsed().as_micros() as u64 }
        });
        while let Some(Ok(s)) = set.try_join_next() {
            out.push(s);
        }
    }
    while let Some(s) = set.join_next().await {
        if let Ok(s) = s {
            out.push(s);
        }
    }
    out
}

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs, backend: Option<&Backend>) -> Result<Report> {
    let room = format!("{}-gifts", args.room);
    let ledger = if backend.is_some() { "webhook" } else { "embedded" };
    let mut report = target.report(
        &format!("gift-burst: {} viewers, {} gift senders ({ledger} ledger)", args.subscribers, args.senders),
        args,
        &[
            ("viewers", args.subscribers.into()),
            ("senders", args.senders.into()),
            ("sender_rate_per_s", args.sender_rate.into()),
            ("duration_s", args.duration.into()),
            ("ledger", ledger.into()),
            ("ledger_delay_ms", args.ledger_delay_ms.into()),
        ],
    );
    let admin = target.admin.clone();
    if backend.is_none() && admin.is_none() {
        anyhow::bail!(
            "gift-burst credits its senders through the admin API: use --spawn, or --admin and --admin-key"
        );
    }
    let plan = SessionPlan::new(target, args, Rooms::One(room.clone()));
    let viewers = plan.open("gift-viewer-", args.subscribers).await;
    report.add("connect_failures", viewers.failures.len());
    let mut senders = Vec::new();
    for i in 0..args.senders {
        let user = sender(i);
        if let Some(admin) = &admin
            && backend.is_none()
        {
            admin.credit(&user, INITIAL_BALANCE).await.with_context(|| format!("crediting {user}"))?;
        }
        let client = target.client_on_own_socket(&user, "viewer").await?;
        client.join(&room).await.with_context(|| format!("{user} join"))?;
        senders.push((user, client));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let usage = Usage::start(target.pid.as_deref(), false);
    let mut runs = JoinSet::new();
    for (i, (user, client)) in senders.iter().enumerate() {
        let (c, room, user, rate, secs) =
            (client.clone(), room.clone(), user.clone(), args.sender_rate, args.duration);
        let phase = Duration::from_secs_f64(i as f64 / args.senders.max(1) as f64 / rate.max(0.001));
        runs.spawn(async move {
            tokio::time::sleep(phase).await;
            (user.clone(), send_gifts(c, room, user, rate, secs).await)
        });
    }
    hold(args.duration, "sending gifts", String::new).await;
    let mut sent: HashMap<String, Vec<Sent>> = HashMap::new();
    while let Some(r) = runs.join_next().await {
        let (user, s) = r?;
        sent.insert(user, s);
    }
    hold(args.drain, "draining", String::new).await;
    let received = plan.finish(viewers.sessions).await;
    let deliveries: u64 = received.iter().map(|(_, r)| r.delivered).sum();
    usage.finish(&mut report, Some(deliveries));

    let accepted = v1::GiftOutcome::Accepted as i32;
    let (mut sends, mut repeats, mut errors, mut refused, mut repeat_mismatch) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut ack_latencies = Vec::new();
    let mut seqs: Vec<u64> = Vec::new();
    let mut double_charges = 0i64;
    let mut charged_total = 0u64;
    for (user, list) in &sent {
        let mut first: HashMap<&str, u64> = HashMap::new();
        let mut keys: HashSet<&str> = HashSet::new();
        for s in list {
            sends += 1;
            repeats += u64::from(s.repeat);
            match &s.ack {
                Err(_) => errors += 1,
                Ok(a) if a.outcome != accepted => refused += 1,
                Ok(a) => {
                    ack_latencies.push(s.took_us);
                    keys.insert(&s.key);
                    if a.seq > 0 {
                        match first.get(s.key.as_str()) {
                            Some(seq) if *seq != a.seq => repeat_mismatch += 1,
                            Some(_) => {}
                            None => {
                                first.insert(&s.key, a.seq);
                                seqs.push(a.seq);
                            }
                        }
                    }
                }
            }
        }
        let balance = match (backend, &admin) {
            (Some(b), _) => b.books.lock().map_err(|_| anyhow::anyhow!("books poisoned"))?.balance(user),
            // Crediting 1 reads the balance; the 1 is taken off again.
            (None, Some(admin)) => admin.credit(user, 1).await? - 1,
            (None, None) => INITIAL_BALANCE,
        };
        let charged = INITIAL_BALANCE - balance;
        charged_total += charged;
        // Each accepted key was one rose, price 1.
        double_charges += charged as i64 - keys.len() as i64;
    }
    seqs.sort_unstable();
    let gifts = seqs.len() as u64;
    let healthy: Vec<_> = received.iter().map(|(_, r)| r).collect();
    let missing: u64 = healthy.iter().map(|r| seqs.iter().filter(|s| !r.has(**s)).count() as u64).sum();
    let extra = deliveries.saturating_sub(gifts * healthy.len() as u64);
    report.add("gift_sends", sends);
    report.add("repeat_sends", repeats);
    report.add("gifts_accepted", gifts);
    report.add("gifts_per_s", round2(gifts as f64 / args.duration.max(1e-9)));
    report.add("gifts_refused", refused);
    report.add("gift_errors", errors);
    report.add("repeats_answered_with_another_seq", repeat_mismatch);
    report.add("charged_value", charged_total);
    report.add("double_charges", double_charges);
    report.latency_rows("gift_ack_", ack_latencies);
    report.add("expected_deliveries", gifts * healthy.len() as u64);
    report.add("deliveries", deliveries);
    report.add("gifts_missing_at_viewers", missing);
    report.add("extra_deliveries", extra);
    report.add("out_of_order", healthy.iter().map(|r| r.out_of_order).sum::<u64>());
    report.add("gaps_reported", healthy.iter().map(|r| r.gaps).sum::<u64>());
    report.add("lagged", healthy.iter().map(|r| r.lags).sum::<u64>());
    report.add("disconnected", plan.dropped());
    report.latency_rows(
        "gift_send_to_viewer_",
        healthy.iter().flat_map(|r| r.latencies.iter().copied()).collect(),
    );
    if let Some(b) = backend {
        let books = b.books.lock().map_err(|_| anyhow::anyhow!("books poisoned"))?;
        report.add("backend_calls", books.calls);
        report.add("backend_bad_signatures", books.bad_signatures);
    }
    for (_, c) in &senders {
        c.close();
    }
    Ok(report)
}
