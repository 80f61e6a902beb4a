//! The tables of the platform's side of a node: moderation, webhooks,
//! gifts and their ledger, likes, and the fleet.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Likes: clients report taps at most once a second per room; the node
/// counts each user's taps up to a cap and keeps each room's total.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LikesConfig {
    /// Taps per second one user may have counted; taps beyond it (and the
    /// burst) are flagged as fake and not counted. 0: no cap.
    pub per_user_per_sec: f64,
    /// Seconds' worth of taps a user may save up, so that a report that
    /// arrives late, or two that arrive together, still count.
    pub burst_secs: f64,
}

impl Default for LikesConfig {
    fn default() -> Self {
        Self { per_user_per_sec: 20.0, burst_secs: 2.0 }
    }
}

/// Mutes, bans and kicks (set through the admin API) and the banned-words
/// check.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationConfig {
    /// How long a kicked user is refused on rejoin, in seconds.
    pub kick_secs: u64,
    /// Words refused or masked in chat (case-insensitive, anywhere in the
    /// text), checked before a message is sequenced.
    pub banned_words: Vec<String>,
    /// A file of banned words, one per line (`#` comments), re-read whenever
    /// it changes: the list can be edited without a restart. Used instead of
    /// `banned_words` when set.
    pub banned_words_file: Option<PathBuf>,
    /// What a banned word does to a message.
    pub banned_words_action: WordAction,
    /// Most new connections per second from one IP address; beyond it a
    /// connection is refused with QUIC's CONNECTION_REFUSED. 0: no limit.
    pub connections_per_ip_per_sec: u32,
    /// Most connections the node holds; beyond it new ones are refused with
    /// CONNECTION_REFUSED. 0: no limit.
    pub max_connections: usize,
}

/// What the banned-words check does with a message that has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WordAction {
    /// Refuse it with MESSAGE_REFUSED.
    #[default]
    Refuse,
    /// Replace each banned word by `*`s and sequence the rest.
    Mask,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            kick_secs: 300,
            banned_words: Vec::new(),
            banned_words_file: None,
            banned_words_action: WordAction::Refuse,
            connections_per_ip_per_sec: 0,
            max_connections: 0,
        }
    }
}

/// Events the node POSTs to the platform's backend (see `webhooks`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where events are POSTed (`http://` only for now). None: no webhooks,
    /// and emitting an event costs nothing.
    pub url: Option<String>,
    /// HMAC-SHA256 key the backend verifies `X-Roomcast-Signature` with.
    pub secret: String,
    /// Time one POST may take, connecting and reading the answer included.
    pub timeout_ms: u64,
    /// Attempts per batch, the first included, before its events are given
    /// up and counted as failed.
    pub max_attempts: u32,
    /// Delay before the first retry; each further retry doubles it (up to
    /// 30 s), with jitter.
    pub backoff_base_ms: u64,
    /// Events waiting to be sent; beyond it, new events are dropped and
    /// counted, so a slow backend never slows a room.
    pub queue_capacity: usize,
    /// Most events in one POST.
    pub batch_max: usize,
}

/// Gifts: the catalogue, the per-user cap and combos, and the ledger that
/// charges them: by default the embedded one in `data_dir`
/// (`gift-ledger.jsonl`); with `[gifts.ledger] url`, the platform's backend.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GiftsConfig {
    /// The gifts clients may send (`[[gifts.catalogue]]`). The default is a
    /// small catalogue for trying the node by hand.
    pub catalogue: Vec<GiftItem>,
    /// Gifts per second one user may send (with a burst of one second's
    /// worth); beyond it a send is answered RATE_LIMITED. 0: no cap.
    pub per_user_per_sec: f64,
    /// How long an accepted idempotency key is remembered, in seconds.
    pub key_ttl_secs: u64,
    /// Where gifts are charged.
    pub ledger: LedgerConfig,
}

/// The gift ledger: embedded (no `url`), or the platform's backend charging
/// each gift over a signed webhook (README.md, "Charging gifts through the
/// backend").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The backend's charging endpoint (`http://` only for now). None: the
    /// embedded ledger.
    pub url: Option<String>,
    /// HMAC-SHA256 key the backend verifies `X-Roomcast-Signature` with.
    pub secret: String,
    /// Time one charging POST may take, connecting and reading the answer
    /// included.
    pub timeout_ms: u64,
    /// Attempts per charge, the first included, all with the same
    /// idempotency key; after the last the gift is answered
    /// LEDGER_UNAVAILABLE.
    pub max_attempts: u32,
    /// Delay before the first retry; each further retry doubles it, with
    /// jitter.
    pub backoff_base_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { url: None, secret: String::new(), timeout_ms: 2_000, max_attempts: 3, backoff_base_ms: 100 }
    }
}

/// One gift of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GiftItem {
    /// What clients send in `SendGift.gift_id`.
    pub id: String,
    /// Shown to viewers.
    pub name: String,
    /// Price of one, in the ledger's currency units.
    pub price: u64,
    /// A display tier for the app (bigger tiers, bigger animations).
    #[serde(default)]
    pub tier: u32,
}

impl Default for GiftsConfig {
    fn default() -> Self {
        let item =
            |id: &str, name: &str, price, tier| GiftItem { id: id.into(), name: name.into(), price, tier };
        Self {
            catalogue: vec![
                item("rose", "Rose", 1, 1),
                item("heart", "Heart", 10, 1),
                item("rocket", "Rocket", 500, 3),
            ],
            per_user_per_sec: 30.0,
            key_ttl_secs: 86_400,
            ledger: LedgerConfig::default(),
        }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: String::new(),
            timeout_ms: 5_000,
            max_attempts: 5,
            backoff_base_ms: 1_000,
            queue_capacity: 10_000,
            batch_max: 100,
        }
    }
}

/// How a node in a fleet (`redis` set) uses Redis.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `redis` lists the seed nodes of a Redis Cluster, comma-separated:
    /// rooms' channels are sharded (`SSUBSCRIBE`), each in its room's slot.
    pub cluster: bool,
    /// Milliseconds Redis may go unanswered before the node refuses new
    /// joins (`UNAVAILABLE`) rather than accept members it cannot sequence
    /// for; joins are taken again as soon as it answers.
    pub unreachable_after_ms: u64,
    /// The address clients reach this node at (`host:port`), which the
    /// admin API names with the rooms it carries. Default: the address the
    /// node listens on, unless that is a wildcard.
    pub advertise: Option<String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self { cluster: false, unreachable_after_ms: 3_000, advertise: None }
    }
}
