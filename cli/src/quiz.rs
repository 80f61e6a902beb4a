//! `roomcast quiz ROOM`: plays along with a live quiz. It prints each
//! question when the SDK releases it, answers it (with `--answer`, or at
//! random), and prints the acks, the results and this player's verdicts.
//!
//! A terminal has no video: the player's media position is the question's
//! own media time, fed `--behind-ms` after the question arrives, as a
//! player that far behind the live edge would reach it.

use std::time::Duration;

use anyhow::{Result, bail};
use roomcast_client::{Client, Event, Events, v1};

/// Plays until the session ends.
pub(crate) async fn play(
    client: Client,
    mut events: Events,
    room: String,
    answer: Option<u32>,
    behind_ms: u64,
) -> Result<()> {
    let joined = client.join(&room).await?;
    println!("joined {} ({} online); waiting for questions", joined.room, joined.online_count);
    if let Some(e) = &joined.open_question {
        feed(&client, &room, e, behind_ms);
    }
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(m) => {
                if matches!(m.kind, Some(v1::room_event::Kind::QuizQuestion(_))) {
                    feed(&client, &room, &m, behind_ms);
                } else if let Some((_, r)) = Event::Message(m).quiz_result() {
                    println!(
                        "result of #{}: correct option {}, counts {:?}, {} still in{}",
                        r.index,
                        r.correct_option + 1,
                        r.counts,
                        r.remaining,
                        if r.last { " (last round)" } else { "" }
                    );
                }
            }
            Event::QuizQuestion { question: q, shown, answer_until_media_ms, .. } => {
                println!("question {}/{} ({shown:?}): {}", q.index, q.rounds, q.text);
                for (i, o) in q.options.iter().enumerate() {
                    println!("  {}. {o}", i + 1);
                }
                let pick = answer.unwrap_or_else(|| random_below(q.options.len() as u32));
                let ack = client.answer(&room, &q.question_id, pick).await?;
                let outcome = match v1::AnswerOutcome::try_from(ack.outcome) {
                    Ok(v1::AnswerOutcome::Accepted) => "accepted",
                    Ok(v1::AnswerOutcome::AlreadyAnswered) => "already answered",
                    Ok(v1::AnswerOutcome::TooLate) => "too late",
                    Ok(v1::AnswerOutcome::Eliminated) => "eliminated",
                    Ok(v1::AnswerOutcome::UnknownQuestion) => "unknown question",
                    Ok(v1::AnswerOutcome::InvalidOption) => "invalid option",
                    _ => "unknown outcome",
                };
                println!(
                    "answered {} → {outcome} (answers close at media {answer_until_media_ms} ms)",
                    pick + 1
                );
            }
            Event::QuizVerdict(v) => println!(
                "verdict: {}{}{}",
                if v.correct { "correct" } else { "wrong or missed" },
                if v.revive_used {
                    format!(", revive card used ({} left)", v.revives_left)
                } else {
                    String::new()
                },
                if v.still_in { ", still in" } else { ", out" }
            ),
            Event::Disconnected { code, reason } => {
                let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                bail!("disconnected{code}: {reason}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Moves this player's video to the question's media time, `behind_ms`
/// from now.
fn feed(client: &Client, room: &str, event: &v1::RoomEvent, behind_ms: u64) {
    let Some(v1::room_event::Kind::QuizQuestion(q)) = &event.kind else { return };
    let (client, room, at) = (client.clone(), room.to_string(), q.media_ts_ms);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(behind_ms)).await;
        client.set_media_position(&room, at);
    });
}

/// A random number in `0..n`.
fn random_below(n: u32) -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b) % n.max(1)
}
