//! Node configuration: defaults, then an optional TOML file, then flags and
//! environment variables (applied by `main`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod platform;

pub use platform::{
    FleetConfig, GiftItem, GiftsConfig, LedgerConfig, LikesConfig, ModerationConfig, WebhooksConfig,
    WordAction,
};

/// Everything a node needs to know. `Config::default()` is the embedded
/// default: loopback, a development certificate, a development secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address to serve QUIC on.
    pub listen: SocketAddr,
    /// Where the development certificate and secret are kept.
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub presence: PresenceConfig,
    pub room: RoomConfig,
    pub moderation: ModerationConfig,
    /// Address of the HTTP endpoint serving `/metrics` and `/healthz`; none
    /// to turn it off.
    pub metrics_listen: Option<SocketAddr>,
    pub admin: AdminConfig,
    pub drain: DrainConfig,
    pub webhooks: WebhooksConfig,
    pub gifts: GiftsConfig,
    pub likes: LikesConfig,
    /// A Redis URL (`redis://host:port`): the node joins a fleet whose rooms
    /// share one sequence per room through it. None: the node runs alone.
    pub redis: Option<String>,
    pub fleet: FleetConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. Without it, a development certificate is
    /// created (once) in `data_dir`.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 shared secret. Without it (and without `es256_public_key`), a
    /// random development secret is created (once) in `data_dir`.
    pub hs256_secret: Option<String>,
    /// ES256 public key (PEM, SPKI). When set, tokens must be ES256.
    pub es256_public_key: Option<PathBuf>,
    /// Clock skew tolerated on `exp`, in seconds: a token is refused as
    /// expired only once `exp` is further in the past than this. 60 s by
    /// default, because phones' clocks drift and a token minted by the
    /// backend is checked against the node's clock.
    pub leeway_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most rooms one connection may be joined to at once.
    pub max_rooms_per_conn: u32,
    /// Largest control-stream frame a client may send.
    pub max_frame_bytes: u32,
    /// Longest chat text, in bytes.
    pub max_message_bytes: u32,
    /// Time a new connection has to send `Hello`.
    pub hello_timeout_ms: u64,
    /// Receive and send buffer of the UDP socket, in bytes. A node that fans
    /// out to thousands of connections receives their acknowledgements in
    /// bursts; a small buffer drops them and QUIC has to retransmit. The
    /// kernel caps it at `net.core.rmem_max` / `wmem_max`.
    pub udp_buffer_bytes: usize,
    /// How late clients may acknowledge what the node sends, in ms (QUIC's
    /// ACK frequency extension, which the SDK supports): a member gets a
    /// packet per batching window, and an ACK back for each would cost the
    /// node nearly as much as the packet. Longer also delays recovering a
    /// lost last packet by as much. 0: QUIC's default (an ACK every second
    /// packet or 25 ms).
    pub ack_delay_ms: u64,
    /// Transport drivers: UDP sockets on the listen address (with
    /// `SO_REUSEPORT`), each driven by one task that owns its connections.
    /// 0: one per core on a machine with more than two, else one (the rooms
    /// and the rest of the node need a core too).
    pub drivers: usize,
}

impl LimitsConfig {
    /// [`Self::drivers`], with 0 resolved for this machine.
    pub fn drivers(&self) -> usize {
        match self.drivers {
            0 => match std::thread::available_parallelism().map_or(1, usize::from) {
                cores if cores > 2 => cores,
                _ => 1,
            },
            n => n.min(usize::from(u8::MAX)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How often clients must send a heartbeat datagram.
    pub heartbeat_interval_ms: u64,
    /// Heartbeats a client may miss before it leaves every room's presence.
    pub missed_heartbeats: u32,
    /// QUIC idle timeout; closes connections that have gone silent. Defaults
    /// to one interval more than the heartbeat grace: interval × (missed
    /// heartbeats + 1), 80 s with the defaults. The wire contract documents
    /// that figure.
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    /// Sequenced events kept per room for joins, resumes and history reads.
    pub history_len: usize,
    /// Age after which kept events are dropped, in seconds.
    pub history_max_age_secs: u64,
    /// Recent events returned with a fresh join (a resume returns every
    /// missed event still in history).
    pub join_history: usize,
    /// Events queued per subscriber before it is considered lagging.
    pub outbox_capacity: usize,
    /// Least time between two online-count datagrams of a room.
    pub online_push_interval_ms: u64,
    /// Size of the viewer list page in `Joined`.
    pub viewer_page: usize,
    /// How long an empty room (and its live history) is kept.
    pub empty_room_ttl_secs: u64,
    /// How long every sequenced event stays readable after the live, from
    /// `data_dir/archive` (by sequence range and media time, after the room
    /// is gone or the node restarted). 0: no archive.
    pub archive_retention_secs: u64,
    /// Most bytes the archive keeps; beyond it the oldest rooms' files go.
    pub archive_max_bytes: u64,
    /// Commands queued per room before senders wait.
    pub command_queue: usize,
    /// Batching window of rooms of up to 999 members, in ms: events that
    /// arrive within it of the previous batch go out together. 0 sends every
    /// event at once.
    pub batch_window_ms: u64,
    /// Bigger rooms widen the window in proportion to their size, up to this.
    pub max_batch_window_ms: u64,
    /// Viewer chat messages per second a room broadcasts; beyond it, chat is
    /// sampled out before it is sequenced. Hosts and admins are never
    /// sampled. 0: no budget.
    pub chat_budget_per_sec: u32,
    /// Chat messages per second one viewer may send; faster ones are refused
    /// with RATE_LIMITED. 0: no limit.
    pub user_chat_per_sec: f64,
    /// "User entered" notices per second a room broadcasts. 0: none.
    pub entered_per_sec: u32,
    /// Rooms must be opened (by the admin API, or by a host's join) before
    /// viewers can join them; otherwise a viewer's join is refused with
    /// ROOM_CLOSED. Off: joining creates the room.
    pub require_open: bool,
    /// The same gift from the same user within this many ms of the previous
    /// send continues its combo (one combo id, a running count).
    pub gift_combo_window_ms: u64,
}

/// How the node drains (on SIGTERM, Ctrl-C or the admin API; see `drain`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Bound on a whole drain, from its start to the last connection closed.
    pub timeout_secs: u64,
    /// Time given, within the bound, for rooms to flush their batching
    /// windows, for answers still pending to be written and for clients to
    /// acknowledge them, before the connections left are closed. It ends
    /// early once every connection has gone. Keep it above
    /// `room.max_batch_window_ms` plus a round trip.
    pub settle_ms: u64,
    /// Sent to clients in the close reason (`retry_after_ms=N`): the least
    /// time before they connect to this node again. Other nodes in their
    /// list are tried at once.
    pub retry_after_ms: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { timeout_secs: 10, settle_ms: 1_000, retry_after_ms: 5_000 }
    }
}

impl DrainConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The settle time, never longer than the whole drain.
    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms).min(self.timeout())
    }

    pub fn retry_after(&self) -> Duration {
        Duration::from_millis(self.retry_after_ms)
    }
}

/// The admin HTTP API (see `admin`): its own listener, off the QUIC path.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// TCP address of the admin API; none to turn it off. Loopback by
    /// default: put it behind the platform's own network controls.
    pub listen: Option<SocketAddr>,
    /// Key accepted in `X-Api-Key`, besides admin JWTs signed with the
    /// connection-token key. None: admin JWTs only.
    pub api_key: Option<String>,
    /// Largest request body, in bytes; bigger ones are refused whole with
    /// 413 `PAYLOAD_TOO_LARGE`.
    pub max_body_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            api_key: None,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: roomcast_protocol::dev::default_data_dir(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            presence: PresenceConfig::default(),
            room: RoomConfig::default(),
            moderation: ModerationConfig::default(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            admin: AdminConfig::default(),
            drain: DrainConfig::default(),
            webhooks: WebhooksConfig::default(),
            gifts: GiftsConfig::default(),
            likes: LikesConfig::default(),
            redis: None,
            fleet: FleetConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { hs256_secret: None, es256_public_key: None, leeway_secs: 60 }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rooms_per_conn: 16,
            max_frame_bytes: roomcast_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_message_bytes: 512,
            hello_timeout_ms: 10_000,
            udp_buffer_bytes: 16 << 20,
            drivers: 0,
            ack_delay_ms: 200,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { heartbeat_interval_ms: 20_000, missed_heartbeats: 3, idle_timeout_ms: None }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            history_len: 1000,
            history_max_age_secs: 300,
            join_history: 20,
            outbox_capacity: 200,
            online_push_interval_ms: 1_000,
            viewer_page: 20,
            empty_room_ttl_secs: 600,
            archive_retention_secs: 86_400,
            archive_max_bytes: 1 << 30,
            command_queue: 1024,
            batch_window_ms: 20,
            max_batch_window_ms: 250,
            chat_budget_per_sec: 20,
            user_chat_per_sec: 1.0,
            entered_per_sec: 5,
            require_open: false,
            gift_combo_window_ms: 3_000,
        }
    }
}

impl PresenceConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(1))
    }

    /// Silence after which a connection leaves presence.
    pub fn grace(&self) -> Duration {
        self.heartbeat_interval() * self.missed_heartbeats.max(1)
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.grace() + self.heartbeat_interval())
    }
}

impl Config {
    /// Reads a TOML file over the defaults; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML, with every secret replaced by [`MASK`]: a
    /// field is secret when its name holds `secret` or `key`, unless it
    /// names a file (see [`is_secret`]). Fields left unset (`None`) are
    /// absent, except `metrics_listen`, written as a comment when off.
    pub fn to_masked_toml(&self) -> Result<String, toml::ser::Error> {
        let mut table = toml::Table::try_from(self)?;
        mask_secrets(&mut table, "");
        let mut text = toml::to_string(&table)?;
        if self.metrics_listen.is_none() {
            text.insert_str(0, "# metrics_listen: off\n");
        }
        Ok(text)
    }
}

/// What a secret is printed as.
pub const MASK: &str = "********";

/// Fields whose names hold `key` but which are paths to files, not keys.
const KEY_FILES: &[&str] = &["tls.key", "auth.es256_public_key"];

/// Whether the field at dotted `path` (`auth.hs256_secret`) holds a secret:
/// its name contains `secret` or `key` and it is not a file name (a known
/// path field, or one ending in `_path`, `_file` or `_dir`).
pub fn is_secret(path: &str) -> bool {
    let name = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
    let file = KEY_FILES.contains(&path) || ["_path", "_file", "_dir"].iter().any(|s| name.ends_with(s));
    !file && (name.contains("secret") || name.contains("key"))
}

fn mask_secrets(table: &mut toml::Table, prefix: &str) {
    for (name, value) in table.iter_mut() {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        if is_secret(&path) {
            mask_value(value);
        } else if let toml::Value::Table(t) = value {
            mask_secrets(t, &path);
        } else if let toml::Value::Array(items) = value {
            for item in items {
                if let toml::Value::Table(t) = item {
                    mask_secrets(t, &path);
                }
            }
        }
    }
}

/// Masks every string in `value` (a list of keys, or a table of them).
fn mask_value(value: &mut toml::Value) {
    match value {
        // An empty one stays empty: it says the secret is unset.
        toml::Value::String(s) if !s.is_empty() => *s = MASK.to_string(),
        toml::Value::Array(items) => items.iter_mut().for_each(mask_value),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| mask_value(v)),
        _ => {}
    }
}

/// Parses durations such as `90s`, `30m`, `1h`, `2d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml("listen = \"0.0.0.0:5000\"\n[room]\nhistory_len = 7\n").unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.room.history_len, 7);
        assert_eq!(c.room.outbox_capacity, 200);
        assert_eq!(c.room.chat_budget_per_sec, 20);
        assert!(Config::from_toml("[room]\nhistroy_len = 7\n").is_err());
    }

    #[test]
    fn printed_config_masks_secrets_and_keeps_paths() {
        let mut c = Config::from_toml("[auth]\nhs256_secret = \"hunter2\"\n").unwrap();
        c.tls.key = Some(PathBuf::from("/etc/roomcast/key.pem"));
        let text = c.to_masked_toml().unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(&format!("hs256_secret = \"{MASK}\"")), "{text}");
        assert!(text.contains("/etc/roomcast/key.pem"), "a key file's path is not a secret: {text}");
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(back.drain.timeout_secs, 10, "the printed form reads back");
        assert!(is_secret("admin.api_keys") && is_secret("webhooks.secret"));
        assert!(!is_secret("auth.es256_public_key") && !is_secret("tls.key_file"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn defaults_are_the_figures_the_wire_contract_states() {
        // proto/roomcast/v1/roomcast.proto quotes these to SDK authors.
        let c = Config::default();
        assert_eq!(c.auth.leeway_secs, 60);
        assert_eq!(c.presence.heartbeat_interval(), Duration::from_secs(20));
        assert_eq!(c.presence.missed_heartbeats, 3);
        assert_eq!(c.presence.idle_timeout(), Duration::from_secs(80));
        assert_eq!(c.limits.max_rooms_per_conn, 16);
        assert_eq!(c.limits.max_frame_bytes, 16 * 1024);
        assert_eq!(c.limits.max_message_bytes, 512);
        assert_eq!(c.limits.hello_timeout_ms, 10_000);
        assert_eq!(c.room.join_history, 20);
        assert_eq!(c.room.viewer_page, 20);
        assert_eq!((c.room.history_len, c.room.history_max_age_secs), (1000, 300));
        assert_eq!((c.room.batch_window_ms, c.room.max_batch_window_ms), (20, 250));
        assert_eq!((c.gifts.per_user_per_sec, c.room.gift_combo_window_ms), (30.0, 3_000));
        assert_eq!(c.gifts.key_ttl_secs, 86_400);
    }

    #[test]
    fn a_gift_catalogue_replaces_the_default_one() {
        let toml = "[[gifts.catalogue]]\nid = \"star\"\nname = \"Star\"\nprice = 5\ntier = 2\n\n\
                    [[gifts.catalogue]]\nid = \"moon\"\nname = \"Moon\"\nprice = 50\n";
        let c = Config::from_toml(toml).unwrap();
        let ids: Vec<_> = c.gifts.catalogue.iter().map(|g| (g.id.as_str(), g.price, g.tier)).collect();
        assert_eq!(ids, [("star", 5, 2), ("moon", 50, 0)]);
        assert!(
            Config::from_toml("[[gifts.catalogue]]\nid = \"x\"\nname = \"X\"\n").is_err(),
            "price is required"
        );
    }

    #[test]
    fn presence_grace_is_missed_heartbeats_times_interval() {
        let p = PresenceConfig { heartbeat_interval_ms: 1000, missed_heartbeats: 3, idle_timeout_ms: None };
        assert_eq!(p.grace(), Duration::from_secs(3));
        assert_eq!(p.idle_timeout(), Duration::from_secs(4));
    }
}
