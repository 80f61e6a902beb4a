//! The fleet's sanctions: mutes, bans and kicks made through any node's
//! admin API hold on every node. Each node keeps checking them in memory
//! (`moderation`); a change goes to Redis (a hash of what is in force) and
//! out on one channel in the same script (`sanction.lua`), every node
//! applies what arrives, and reads the whole hash again every
//! [`RELOAD_EVERY`], so a message missed while Redis was unreachable is made
//! up within that.

use std::time::Duration;

use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{Fleet, FleetError};
use crate::moderation::{Sanction, SanctionKind};

/// Where the sanctions in force are kept (one slot: sanctions are few).
pub(super) const SANCTIONS_KEY: &str = "rc:{sanctions}:all";
/// Where changes are announced.
pub(super) const SANCTIONS_CHANNEL: &str = "rc:{sanctions}:events";

/// How often a node reads every sanction again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// What a change does on the nodes that receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanctionAction {
    /// A mute or a ban put in force; a ban also ends the user's memberships.
    Apply,
    /// A kick: a short ban, and the user's memberships ended as kicked.
    Kick,
    /// The sanction lifted.
    Lift,
}

/// One change to the fleet's sanctions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanctionChange {
    pub action: SanctionAction,
    pub user: String,
    pub kind: SanctionKind,
    /// `None`: every room (the node-wide scope, fleet-wide in a fleet).
    pub room: Option<String>,
    pub until_ms: Option<u64>,
    pub reason: String,
}

/// A sanction as the hash keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    user: String,
    kind: SanctionKind,
    room: Option<String>,
    until_ms: Option<u64>,
    reason: String,
}

/// The hash field of a sanction: its scope, user and kind.
fn field(room: Option<&str>, user: &str, kind: SanctionKind) -> String {
    serde_json::json!([room, user, kind]).to_string()
}

impl Fleet {
    /// Records `change` in Redis and announces it to every node (this one
    /// included).
    pub async fn change_sanction(&self, change: &SanctionChange) -> Result<(), FleetError> {
        let key = field(change.room.as_deref(), &change.user, change.kind);
        let stored = match change.action {
            SanctionAction::Lift => String::new(),
            SanctionAction::Apply | SanctionAction::Kick => serde_json::to_string(&Stored {
                user: change.user.clone(),
                kind: change.kind,
                room: change.room.clone(),
                until_ms: change.until_ms,
                reason: change.reason.clone(),
            })
            .map_err(|e| FleetError::Decode(e.to_string()))?,
        };
        let message = serde_json::to_string(change).map_err(|e| FleetError::Decode(e.to_string()))?;
        let mut conn = self.link.conn().await?;
        let done: Result<i64, _> = Script::new(include_str!("sanction.lua"))
            .key(SANCTIONS_KEY)
            .arg(key)
            .arg(stored)
            .arg(SANCTIONS_CHANNEL)
            .arg(self.publish)
            .arg(message)
            .invoke_async(&mut conn)
            .await;
        self.answered(done.map(|_| ()).map_err(FleetError::from))
    }

    /// Every sanction kept in Redis that is still in force at `now_ms`;
    /// those that ended are removed from the hash on the way.
    pub async fn sanctions(&self, now_ms: u64) -> Result<Vec<Sanction>, FleetError> {
        let mut conn = self.link.conn().await?;
        let all: std::collections::HashMap<String, String> = conn.hgetall(SANCTIONS_KEY).await?;
        self.link.answered();
        let mut live = Vec::new();
        let mut ended: Vec<String> = vec!["prune".into()];
        for (key, value) in all {
            let Ok(s) = serde_json::from_str::<Stored>(&value) else {
                ended.extend([key, value]);
                continue;
            };
            // A minute's grace: a node whose clock runs ahead prunes no
            // sanction the others still hold in force.
            if s.until_ms.is_some_and(|u| u.saturating_add(60_000) <= now_ms) {
                ended.extend([key, value]);
                continue;
            }
            if s.until_ms.is_some_and(|u| u <= now_ms) {
                continue;
            }
            let room = match s.room {
                None => None,
                Some(r) => match roomcast_protocol::RoomId::new(&r) {
                    Ok(r) => Some(r),
                    Err(_) => continue,
                },
            };
            live.push(Sanction { user: s.user, kind: s.kind, room, until_ms: s.until_ms, reason: s.reason });
        }
        if ended.len() > 1 {
            let script = Script::new(include_str!("sanction.lua"));
            let mut prune = script.key(SANCTIONS_KEY);
            prune.arg(ended);
            let _: Result<i64, _> = prune.invoke_async(&mut conn).await;
        }
        Ok(live)
    }

    /// Starts receiving sanction changes.
    pub async fn subscribe_sanctions(&self) -> Result<(), FleetError> {
        let result = self.link.conn().await?.subscribe(SANCTIONS_CHANNEL.to_string()).await;
        self.answered(result)
    }
}

/// Decodes a change that arrived on the channel.
pub(super) fn decode(payload: &[u8]) -> Option<SanctionChange> {
    serde_json::from_slice(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_scope_user_and_kind_without_ambiguity() {
        assert_eq!(field(Some("r"), "u", SanctionKind::Mute), r#"["r","u","mute"]"#);
        assert_eq!(field(None, "a\",\"b", SanctionKind::Ban), r#"[null,"a\",\"b","ban"]"#);
        let change = SanctionChange {
            action: SanctionAction::Kick,
            user: "u".into(),
            kind: SanctionKind::Ban,
            room: Some("r".into()),
            until_ms: Some(5),
            reason: "spam".into(),
        };
        assert_eq!(decode(serde_json::to_string(&change).unwrap().as_bytes()), Some(change));
        assert_eq!(decode(b"{not json"), None);
    }
}
