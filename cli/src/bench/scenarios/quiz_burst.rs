//! `quiz-burst`: `--subscribers` players in one room, one quiz question with
//! a `--duration`-second answer window, every player answering once. Answer
//! times follow seed 003's shape: a triangle over the middle two thirds of
//! the window, so the peak rate is three times the mean. Reports answers/s
//! (mean and peak), the answer acks' latency (the report's `server_cpu_us_per_delivery` is
//! per accepted answer), lost answers (acknowledged as
//! accepted but missing from the reveal's counts: must be 0), how long the
//! question took to reach the players, and how long after the window closed
//! the players had the result.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use roomcast_client::v1;
use serde_json::json;
use tokio::task::JoinSet;

use crate::bench::args::BenchArgs;
use crate::bench::delivery::now_us;
use crate::bench::proc::Usage;
use crate::bench::progress::hold;
use crate::bench::report::{Report, round2};
use crate::bench::session::{Rooms, SessionPlan};
use crate::bench::target::Target;

/// When player `i` of `n` answers, after the question starts: the
/// `(i + 0.5) / n` quantile of a triangular distribution over `[w/6, 5w/6]`
/// peaking at `w/2`, whose density peaks at three times the window's mean.
/// Nobody answers in the first sixth: players read the question first.
fn answer_at(i: usize, n: usize, window: Duration) -> Duration {
    let u = (i as f64 + 0.5) / n.max(1) as f64;
    let w = window.as_secs_f64();
    let b = w * 2.0 / 3.0;
    let c = b / 2.0;
    let t = if u < 0.5 { (u * b * c).sqrt() } else { b - ((1.0 - u) * b * (b - c)).sqrt() };
    Duration::from_secs_f64(w / 6.0 + t)
}

pub(super) async fn run(target: &Arc<Target>, args: &BenchArgs) -> Result<Report> {
    let room = format!("{}-quiz", args.room);
    let window = Duration::from_secs_f64(args.duration.max(0.1));
    let mut report = target.report(
        &format!("quiz-burst: {} players answer one question", args.subscribers),
        args,
        &[("players", args.subscribers.into()), ("window_s", args.duration.into())],
    );
    let admin = target
        .admin
        .clone()
        .context("quiz-burst runs the quiz through the admin API: use --spawn, or --admin and --admin-key")?;
    let plan = SessionPlan::new(target, args, Rooms::One(room.clone()));
    let players = plan.open("quiz-player-", args.subscribers).await;
    report.add("connect_failures", players.failures.len());
    for (_, s) in &players.sessions {
        // Every player's video is at the live edge.
        s.client.set_media_position(&room, u64::MAX / 2);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    admin
        .json(
            "POST",
            &format!("/v1/rooms/{room}/quiz"),
            Some(json!({"rounds": 1, "stream_delay_ms": 0}).to_string()),
        )
        .await?;
    let usage = Usage::start(target.pid.as_deref(), false);
    plan.split_latencies_now();
    let started = Instant::now();
    let question = json!({
        "text": "Which is prime?",
        "options": ["7", "8", "9", "10"],
        "correct": 0,
        "media_ts_ms": 0,
        "answer_window_ms": window.as_millis() as u64,
    });
    let q =
        admin.json("POST", &format!("/v1/rooms/{room}/quiz/questions"), Some(question.to_string())).await?;
    let qid = q["question_id"].as_str().context("no question id")?.to_owned();
    let closes_at_ms = q["closes_at_ms"].as_u64().context("no closing time")?;

    let n = players.sessions.len();
    let mut answers = JoinSet::new();
    for (k, (_, s)) in players.sessions.iter().enumerate() {
        let (client, room, qid) = (s.client.clone(), room.clone(), qid.clone());
        let at = started + answer_at(k, n, window);
        answers.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let sent = now_us();
            let ack = client.answer(&room, &qid, (k % 4) as u32).await;
            (sent, now_us().saturating_sub(sent), ack.map(|a| a.outcome).map_err(|e| e.to_string()))
        });
    }
    hold(window.as_secs_f64(), "answering", String::new).await;
    let mut sent_at = Vec::with_capacity(n);
    let mut ack_latencies = Vec::with_capacity(n);
    let (mut accepted, mut refused, mut errors) = (0u64, 0u64, 0u64);
    while let Some(r) = answers.join_next().await {
        let (sent, took, outcome) = r?;
        sent_at.push(sent);
        match outcome {
            Ok(o) if o == v1::AnswerOutcome::Accepted as i32 => {
                accepted += 1;
                ack_latencies.push(took);
            }
            Ok(_) => refused += 1,
            Err(_) => errors += 1,
        }
    }
    // Reveal as soon as the window has closed.
    let wall_now = roomcast_protocol::unix_ms(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(closes_at_ms.saturating_sub(wall_now) + 1)).await;
    let closed = now_us();
    let reveal = admin.json("POST", &format!("/v1/rooms/{room}/quiz/questions/{qid}/reveal"), None).await?;
    let reveal_answered_ms = round2(now_us().saturating_sub(closed) as f64 / 1000.0);
    hold(args.drain, "draining", String::new).await;
    let received = plan.finish(players.sessions).await;
    usage.finish(&mut report, Some(accepted));

    let counted: u64 = reveal["counts"].as_array().map_or(0, |c| c.iter().filter_map(|v| v.as_u64()).sum());
    sent_at.sort_unstable();
    let span_s = match (sent_at.first(), sent_at.last()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
        _ => window.as_secs_f64(),
    };
    // The busiest 100 ms of sends, as a rate.
    let mut peak = 0usize;
    let mut lo = 0usize;
    for hi in 0..sent_at.len() {
        while sent_at[hi] - sent_at[lo] >= 100_000 {
            lo += 1;
        }
        peak = peak.max(hi - lo + 1);
    }
    let peak = peak * 10;
    report.add("answers_sent", sent_at.len());
    report.add("answers_accepted", accepted);
    report.add("answers_refused", refused);
    report.add("answer_errors", errors);
    report.add("answers_counted", counted);
    report.add("lost_answers", accepted.saturating_sub(counted));
    report.add("answers_per_s_mean", round2(sent_at.len() as f64 / span_s.max(1e-9)));
    report.add("answers_per_s_peak", peak);
    report.latency_rows("answer_ack_", ack_latencies);
    let delivery: Vec<u64> =
        received.iter().flat_map(|(_, r)| r.latencies_after_split.iter().copied()).collect();
    report.add("players_with_question", delivery.len());
    report.latency_rows("question_delivery_", delivery);
    report.add("reveal_answered_ms", reveal_answered_ms);
    let results: Vec<u64> =
        received.iter().filter_map(|(_, r)| r.quiz_result_at.map(|at| at.saturating_sub(closed))).collect();
    report.add("players_with_result", results.len());
    report.latency_rows("result_after_close_", results);
    report.add("disconnected", plan.dropped());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_times_fill_two_thirds_of_the_window_and_peak_at_three_times_the_mean() {
        let window = Duration::from_secs(9);
        let n = 90_000;
        let times: Vec<f64> = (0..n).map(|i| answer_at(i, n, window).as_secs_f64()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times[0] >= 1.5 && *times.last().unwrap() <= 7.5);
        let busiest =
            (0..9).map(|s| times.iter().filter(|t| **t >= s as f64 && **t < s as f64 + 1.0).count()).max();
        let mean = n as f64 / 9.0;
        let peak = busiest.unwrap() as f64 / mean;
        assert!((2.5..=3.0).contains(&peak), "peak {peak:.2}× the mean");
    }
}
