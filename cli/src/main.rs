//! `roomcast`: the protocol test client, built on the SDK.
//!
//! ```text
//! roomcast watch ROOM            print every event of a room as it arrives
//! roomcast chat ROOM TEXT        send one message, print its sequence number
//! roomcast recall ROOM MSG_ID    recall a message
//! roomcast history ROOM          print part of a room's history
//! roomcast bench SCENARIO        load-generate and measure (see BENCHMARKS.md)
//! ```

mod bench;
mod quiz;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use roomcast_client::{ChatMessage, Client, ClientConfig, Event, HistoryRange, JoinOptions, Trust, v1};

#[derive(Parser, Debug)]
#[command(version, about = "roomcast protocol test client")]
struct Cli {
    /// Server address (UDP).
    #[arg(long, env = "ROOMCAST_SERVER", default_value = "127.0.0.1:4433", global = true)]
    server: SocketAddr,
    /// Another node of the fleet to reconnect to when the server drains or
    /// dies (repeatable); trust them all, e.g. with --ca holding each one's
    /// certificate.
    #[arg(long = "alternate", global = true)]
    alternates: Vec<SocketAddr>,
    /// Connection token (mint one with `roomcast-server token --user NAME`).
    #[arg(long, env = "ROOMCAST_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Trust exactly the certificate in this PEM file (e.g. the server's
    /// development certificate). Default: the development certificate in the
    /// local roomcast data directory.
    #[arg(long, env = "ROOMCAST_CERT", global = true, conflicts_with_all = ["fingerprint", "ca"])]
    cert: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint.
    #[arg(long, env = "ROOMCAST_FINGERPRINT", global = true, conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust certificates issued by the CAs in this PEM file (checks --server-name).
    #[arg(long, env = "ROOMCAST_CA", global = true)]
    ca: Option<PathBuf>,
    /// Name to check the certificate against with --ca.
    #[arg(long, default_value = "localhost", global = true)]
    server_name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join ROOM and print each event as it arrives.
    Watch {
        room: String,
        /// Resume after this sequence number.
        #[arg(long)]
        from: Option<u64>,
        /// Only host messages, system notices, quiz traffic and recalls.
        #[arg(long)]
        host_only: bool,
    },
    /// Send one chat message to ROOM and print the acknowledged sequence number.
    Chat {
        room: String,
        text: String,
        /// Media timestamp (ms) the message refers to.
        #[arg(long)]
        media_ts: Option<u64>,
    },
    /// Send a gift to ROOM and print the outcome and the balance left.
    /// Credit the user first (`roomcast-server credit`, or the admin API).
    Gift {
        room: String,
        /// A gift id from the node's catalogue (by default rose, heart, rocket).
        gift: String,
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Idempotency key; a fresh one by default. Give the same one again
        /// to see a retry answered without a second charge.
        #[arg(long)]
        key: Option<String>,
    },
    /// Tap likes in ROOM, then print the room's like total once it comes back.
    /// The node counts about 20 taps a second per user (two seconds' worth
    /// at once) and flags the rest.
    Like {
        room: String,
        /// How many taps.
        #[arg(long, default_value_t = 1)]
        taps: u32,
    },
    /// Play along with ROOM's live quiz: print each question when it is
    /// released, answer it, print results and verdicts (README, "Live quiz").
    Quiz {
        room: String,
        /// Answer this option (1-based) to every question; default: at random.
        #[arg(long)]
        answer: Option<u32>,
        /// Play as a viewer this many ms behind the live edge.
        #[arg(long, default_value_t = 0)]
        behind_ms: u64,
    },
    /// Recall a message by its id (as printed by `chat`); sender, host or admin.
    Recall { room: String, message_id: String },
    /// Run a load scenario against a server and report what it carried and
    /// what it cost (see BENCHMARKS.md).
    Bench(Box<bench::BenchArgs>),
    /// Print part of ROOM's history, by sequence range (default: all kept)
    /// or by media time.
    History {
        room: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last sequence number.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        /// Media time range in ms, `FROM..TO` (replaces --from/--to).
        #[arg(long, value_parser = parse_range)]
        media: Option<(u64, u64)>,
        /// At most this many events (0: the server's maximum).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected FROM..TO")?;
    let from = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let to = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    Ok((from, to))
}

impl Cli {
    fn trust(&self) -> Result<Trust> {
        Ok(if let Some(fp) = &self.fingerprint {
            Trust::fingerprint(fp)?
        } else if let Some(ca) = &self.ca {
            Trust::ca_file(ca)?
        } else {
            let path = self.cert.clone().unwrap_or_else(|| {
                roomcast_protocol::dev::default_data_dir().join(roomcast_protocol::dev::CERT_FILE)
            });
            Trust::pinned_cert_file(&path)
                .with_context(|| "pass --cert, --fingerprint or --ca to trust the server")?
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROOMCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Bench(args) = &cli.command {
        let explicit = cli.cert.is_some() || cli.fingerprint.is_some() || cli.ca.is_some();
        let endpoint = bench::Endpoint {
            server: cli.server,
            server_name: cli.server_name.clone(),
            trust: if explicit { Some(cli.trust()?) } else { None },
        };
        return bench::run(endpoint, (**args).clone()).await;
    }
    let Some(token) = cli.token.clone() else {
        bail!(
            "no token: pass --token or set ROOMCAST_TOKEN (mint one with `roomcast-server token --user NAME`)"
        );
    };
    let mut config = ClientConfig::new(cli.server, token, cli.trust()?);
    config.server_name = cli.server_name.clone();
    config.alternates = cli.alternates.clone();
    config.client_name = "roomcast-cli".into();
    let (client, mut events) = Client::connect(config).await.context("connecting")?;
    match cli.command {
        Command::Watch { room, from, host_only } => {
            let filter = if host_only { v1::JoinFilter::HostOnly } else { v1::JoinFilter::All };
            let opts = JoinOptions { last_seq: from, filter, ..JoinOptions::default() };
            let joined = client.join_with(&room, opts).await.context("joining")?;
            println!(
                "joined {} at seq {} ({} online{})",
                joined.room,
                joined.current_seq,
                joined.online_count,
                if from.is_some() {
                    if joined.resumed { ", resumed" } else { ", too old to resume" }
                } else {
                    ""
                }
            );
            for e in &joined.history {
                println!("{}", format_event(e));
            }
            while let Some(event) = events.recv().await {
                match event {
                    Event::Message(e) => println!("{}", format_event(&e)),
                    Event::OnlineCount { room, count } => println!("   [{room}] {count} online"),
                    Event::LikeTotal { room, total } => println!("   [{room}] {total} likes"),
                    Event::Gap { room, from, to } => println!("!! [{room}] missed seq {from}..={to}"),
                    Event::Lagged { room, from, to } => {
                        println!("!! [{room}] fell behind at seq {from}..={to}; resuming")
                    }
                    Event::Resumed { room, complete, replayed } => println!(
                        "-- [{room}] resumed: {replayed} replayed{}",
                        if complete { "" } else { ", some too old to recover" }
                    ),
                    Event::ResumeFailed { room, error } => println!("!! [{room}] could not rejoin: {error}"),
                    Event::Removed { room, code, reason } => {
                        let code = code.map_or("unknown", |c| c.name());
                        println!("!! [{room}] removed by the server ({code}): {reason}");
                    }
                    Event::Reconnecting { attempt, delay, reason, .. } => {
                        println!("-- connection lost ({reason}); attempt {attempt} in {delay:.1?}")
                    }
                    Event::Reconnected { session_id } => println!("-- reconnected (session {session_id})"),
                    Event::Disconnected { code, reason } => {
                        let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                        bail!("disconnected{code}: {reason}");
                    }
                    other => println!("   {other:?}"),
                }
            }
            Ok(())
        }
        Command::Chat { room, text, media_ts } => {
            client.join(&room).await.context("joining")?;
            let ack = client
                .send(ChatMessage {
                    room: room.clone(),
                    text,
                    media_ts_ms: media_ts,
                    ..ChatMessage::default()
                })
                .await
                .context("sending")?;
            if ack.broadcast {
                println!("seq {} ({})", ack.seq, ack.message_id);
            } else {
                println!("sampled out: the room's chat budget is spent (the message was not broadcast)");
            }
            let _ = client.leave(&room).await;
            client.close();
            client.closed().await;
            Ok(())
        }
        Command::Gift { room, gift, count, key } => {
            client.join(&room).await.context("joining")?;
            let key = key.unwrap_or_else(roomcast_client::idempotency_key);
            let ack = client.send_gift(&room, &gift, count, &key).await.context("sending the gift")?;
            match v1::GiftOutcome::try_from(ack.outcome) {
                Ok(v1::GiftOutcome::Accepted) => println!(
                    "accepted: seq {} ({}), combo {} ×{}, balance {}",
                    ack.seq, ack.message_id, ack.combo_id, ack.combo_count, ack.balance
                ),
                Ok(v1::GiftOutcome::InsufficientBalance) => {
                    println!("refused: insufficient balance ({})", ack.balance)
                }
                Ok(v1::GiftOutcome::UnknownGift) => println!("refused: no gift {gift:?} in the catalogue"),
                Ok(v1::GiftOutcome::RateLimited) => println!("refused: too many gifts, try again shortly"),
                Ok(v1::GiftOutcome::LedgerUnavailable) => {
                    println!("refused: the ledger is unavailable; retry with --key {key}")
                }
                _ => println!("unknown outcome {}", ack.outcome),
            }
            let _ = client.leave(&room).await;
            client.close();
            client.closed().await;
            Ok(())
        }
        Command::Like { room, taps } => {
            let joined = client.join(&room).await.context("joining")?;
            client.like(&room, taps);
            let total = tokio::time::timeout(Duration::from_secs(3), async {
                while let Some(event) = events.recv().await {
                    if let Event::LikeTotal { room: r, total } = event
                        && r == room
                    {
                        return Some(total);
                    }
                }
                None
            })
            .await;
            match total {
                Ok(Some(total)) => println!("tapped {taps}; room total {total} (was {})", joined.like_total),
                _ => println!("tapped {taps}; no new total within 3 s (was {})", joined.like_total),
            }
            let _ = client.leave(&room).await;
            client.close();
            client.closed().await;
            Ok(())
        }
        Command::Quiz { room, answer, behind_ms } => {
            let answer = match answer {
                Some(0) => bail!("--answer is 1-based"),
                a => a.map(|a| a - 1),
            };
            quiz::play(client, events, room, answer, behind_ms).await
        }
        Command::Recall { room, message_id } => {
            client.join(&room).await.context("joining")?;
            let r = client.recall(&room, &message_id).await.context("recalling")?;
            println!("recalled {message_id} (recall notice seq {})", r.seq);
            let _ = client.leave(&room).await;
            client.close();
            client.closed().await;
            Ok(())
        }
        Command::Bench(_) => Ok(()),
        Command::History { room, from, to, media, limit } => {
            let range = match media {
                Some((from_ms, to_ms)) => HistoryRange::Media { from_ms, to_ms },
                None => HistoryRange::Seq { from, to },
            };
            let h = client.fetch_history(&room, range, limit).await.context("fetching history")?;
            for e in &h.events {
                println!("{}", format_event(e));
            }
            println!(
                "-- {} events; history kept from seq {}{}",
                h.events.len(),
                h.oldest_seq,
                if h.truncated { "; more match (raise --limit or narrow the range)" } else { "" }
            );
            client.close();
            client.closed().await;
            Ok(())
        }
    }
}

fn sender(e: &v1::RoomEvent) -> String {
    match &e.sender {
        Some(u) if !u.display_name.is_empty() => format!("{} ({})", u.user_id, u.display_name),
        Some(u) => u.user_id.clone(),
        None => "server".into(),
    }
}

fn format_event(e: &v1::RoomEvent) -> String {
    use v1::room_event::Kind;
    let seq = if e.seq == 0 { "   ".to_string() } else { format!("#{}", e.seq) };
    match &e.kind {
        Some(Kind::Chat(c)) => format!("{seq} {}: {}", sender(e), c.text),
        Some(Kind::HostMessage(h)) => format!("{seq} [host] {}: {}", sender(e), h.text),
        Some(Kind::SystemNotice(n)) => format!("{seq} [system] {}", n.text),
        Some(Kind::UserEntered(u)) => {
            format!("{seq} [entered] {}", u.user.as_ref().map(|u| u.user_id.as_str()).unwrap_or("?"))
        }
        Some(Kind::Recall(r)) => format!("{seq} [recalled] {}", r.message_id),
        Some(Kind::RoomStatus(s)) => {
            let state = v1::RoomState::try_from(s.state).map_or("unknown", |s| s.as_str_name());
            format!("{seq} [room {state}] {}", s.reason)
        }
        Some(Kind::Gift(g)) => format!(
            "{seq} [gift] {} sent {} ×{} (value {}, combo {} ×{})",
            sender(e),
            g.name,
            g.count,
            g.value,
            g.combo_id,
            g.combo_count
        ),
        Some(Kind::Ranking(r)) => {
            let top: Vec<String> = r
                .entries
                .iter()
                .map(|e| format!("{} {}", e.user.as_ref().map_or("?", |u| u.user_id.as_str()), e.value))
                .collect();
            format!("{seq} [ranking] {}", top.join(", "))
        }
        Some(Kind::QuizQuestion(q)) => {
            format!("{seq} [quiz {}/{}] {} {:?}", q.index, q.rounds, q.text, q.options)
        }
        Some(Kind::QuizResult(r)) => format!(
            "{seq} [quiz result {}] correct {}, counts {:?}, {} still in",
            r.index,
            r.correct_option + 1,
            r.counts,
            r.remaining
        ),
        None => format!("{seq} [unknown event]"),
    }
}
