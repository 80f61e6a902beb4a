//! Moderation: mutes and bans, per room or for the whole node, and the
//! banned-words check. Everything here is checked in memory on the hot path
//! (a session asks before it hands a chat or a join to a room), so a check
//! is a read lock and at most two hash lookups, and nothing when no one is
//! sanctioned.
//!
//! A kick is a ban that expires after `kick_secs`: the user is removed from
//! the room at once and refused on rejoin until then.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use roomcast_protocol::{RoomId, unix_ms};
use serde::{Deserialize, Serialize};

use crate::config::{ModerationConfig, WordAction};

/// Where a sanction applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Node,
    Room(RoomId),
}

/// What a sanction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanctionKind {
    /// The user's chat is refused (`MUTED`); everything else passes.
    Mute,
    /// The user may not join (`BANNED`); kicks are short bans.
    Ban,
}

/// A sanction in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanction {
    pub user: String,
    pub kind: SanctionKind,
    /// `None`: the whole node.
    pub room: Option<RoomId>,
    /// Unix ms when it ends; `None`: until lifted.
    pub until_ms: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Entry {
    until_ms: Option<u64>,
    reason: String,
}

type Key = (Option<RoomId>, String, SanctionKind);

/// The node's sanctions and its banned-words filter.
#[derive(Debug)]
pub struct Moderation {
    sanctions: RwLock<HashMap<Key, Entry>>,
    /// `sanctions.len()`, read without the lock: a node with no sanctions
    /// checks nothing.
    count: AtomicUsize,
    words: RwLock<Arc<WordFilter>>,
    kick: Duration,
}

impl Moderation {
    pub fn new(config: &ModerationConfig) -> Arc<Self> {
        let words = WordFilter::new(config.banned_words.iter().cloned(), config.banned_words_action);
        Arc::new(Self {
            sanctions: RwLock::default(),
            count: AtomicUsize::new(0),
            words: RwLock::new(Arc::new(words)),
            kick: Duration::from_secs(config.kick_secs),
        })
    }

    /// Mutes (or bans) `user` in `scope` until `until_ms` (`None`: until
    /// lifted). A later call replaces an earlier one.
    pub fn sanction(
        &self,
        scope: &Scope,
        user: &str,
        kind: SanctionKind,
        until_ms: Option<u64>,
        reason: &str,
    ) {
        let mut map = self.sanctions.write().unwrap_or_else(PoisonError::into_inner);
        let now = unix_ms(SystemTime::now());
        map.retain(|_, e| e.until_ms.is_none_or(|u| u > now));
        map.insert(key(scope, user, kind), Entry { until_ms, reason: reason.to_string() });
        self.count.store(map.len(), Ordering::Relaxed);
    }

    /// Lifts a sanction; false if there was none in force.
    pub fn lift(&self, scope: &Scope, user: &str, kind: SanctionKind) -> bool {
        let mut map = self.sanctions.write().unwrap_or_else(PoisonError::into_inner);
        let now = unix_ms(SystemTime::now());
        let lifted = map.remove(&key(scope, user, kind)).is_some_and(|e| e.until_ms.is_none_or(|u| u > now));
        self.count.store(map.len(), Ordering::Relaxed);
        lifted
    }

    /// Takes `sanctions` as everything in force (a fleet's, read from its
    /// Redis), replacing what was known.
    pub fn replace_all(&self, sanctions: Vec<Sanction>) {
        let mut map = self.sanctions.write().unwrap_or_else(PoisonError::into_inner);
        map.clear();
        for s in sanctions {
            map.insert((s.room, s.user, s.kind), Entry { until_ms: s.until_ms, reason: s.reason });
        }
        self.count.store(map.len(), Ordering::Relaxed);
    }

    /// When a kick given now ends.
    pub fn kick_until(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.kick.as_millis() as u64)
    }

    /// Whether `user` is under `kind` in `room` or on the whole node at
    /// `now_ms`.
    pub fn applies(&self, room: &RoomId, user: &str, kind: SanctionKind, now_ms: u64) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let map = self.sanctions.read().unwrap_or_else(PoisonError::into_inner);
        let live = |k: Key| map.get(&k).is_some_and(|e| e.until_ms.is_none_or(|u| u > now_ms));
        live((Some(room.clone()), user.to_string(), kind)) || live((None, user.to_string(), kind))
    }

    /// The sanctions in force in `scope` (for a room: its own, not the
    /// node's), by user.
    pub fn list(&self, scope: &Scope, now_ms: u64) -> Vec<Sanction> {
        let room = match scope {
            Scope::Node => None,
            Scope::Room(r) => Some(r.clone()),
        };
        let map = self.sanctions.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Sanction> = map
            .iter()
            .filter(|((r, _, _), e)| *r == room && e.until_ms.is_none_or(|u| u > now_ms))
            .map(|((r, user, kind), e)| Sanction {
                user: user.clone(),
                kind: *kind,
                room: r.clone(),
                until_ms: e.until_ms,
                reason: e.reason.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.user, a.kind as u8).cmp(&(&b.user, b.kind as u8)));
        out
    }

    /// The banned-words filter in force.
    pub fn words(&self) -> Arc<WordFilter> {
        self.words.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the banned-words filter; sessions use it from their next
    /// message on.
    pub fn set_words(&self, filter: WordFilter) {
        *self.words.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(filter);
    }
}

/// In a fleet: applies the sanction changes every node announces (this
/// one's included), ending the memberships a ban or kick ends here, and
/// reads every sanction again every `cluster::RELOAD_EVERY`, so that what
/// was missed while Redis was unreachable is made up.
pub async fn follow_fleet(
    moderation: Arc<Moderation>,
    rooms: Arc<crate::room::Rooms>,
    fleet: crate::cluster::Fleet,
) {
    use crate::cluster::SanctionAction;
    use crate::room::UserScope;
    use roomcast_protocol::ErrorCode;

    let Some(mut changes) = fleet.take_sanction_changes() else { return };
    let mut reload = tokio::time::interval(crate::cluster::RELOAD_EVERY);
    let mut subscribed = false;
    loop {
        tokio::select! {
            _ = reload.tick() => {
                if !subscribed {
                    subscribed = fleet.subscribe_sanctions().await.is_ok();
                }
                match fleet.sanctions(unix_ms(SystemTime::now())).await {
                    Ok(all) => {
                        // Bans this node had not heard of (their message was
                        // missed) end the memberships here too.
                        let now = unix_ms(SystemTime::now());
                        let missed: Vec<Sanction> = all
                            .iter()
                            .filter(|s| s.kind == SanctionKind::Ban)
                            .filter(|s| {
                                let scope = s.room.clone().map_or(Scope::Node, Scope::Room);
                                !moderation.list(&scope, now).iter().any(|k| k.user == s.user && k.kind == s.kind)
                            })
                            .cloned()
                            .collect();
                        moderation.replace_all(all);
                        for s in missed {
                            let users = match &s.room {
                                Some(r) => UserScope::Room(r),
                                None => UserScope::Node,
                            };
                            rooms.remove_user(users, &s.user, ErrorCode::Banned, &s.reason).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "sanctions not read from the fleet"),
                }
            }
            change = changes.recv() => {
                let Some(c) = change else { return };
                let room = match c.room.as_deref().map(RoomId::new) {
                    None => None,
                    Some(Ok(r)) => Some(r),
                    Some(Err(_)) => continue,
                };
                let scope = room.clone().map_or(Scope::Node, Scope::Room);
                let users = match &room {
                    Some(r) => UserScope::Room(r),
                    None => UserScope::Node,
                };
                match c.action {
                    SanctionAction::Lift => {
                        moderation.lift(&scope, &c.user, c.kind);
                    }
                    SanctionAction::Apply => {
                        moderation.sanction(&scope, &c.user, c.kind, c.until_ms, &c.reason);
                        if c.kind == SanctionKind::Ban {
                            rooms.remove_user(users, &c.user, ErrorCode::Banned, &c.reason).await;
                        }
                    }
                    SanctionAction::Kick => {
                        moderation.sanction(&scope, &c.user, SanctionKind::Ban, c.until_ms, &c.reason);
                        rooms.kick_user(users, &c.user, &c.reason).await;
                    }
                }
            }
        }
    }
}

fn key(scope: &Scope, user: &str, kind: SanctionKind) -> Key {
    let room = match scope {
        Scope::Node => None,
        Scope::Room(r) => Some(r.clone()),
    };
    (room, user.to_string(), kind)
}

/// What the banned-words check decided for a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// Refused (`MESSAGE_REFUSED`); carries the word found.
    Refused(String),
    /// Sequenced with every banned word replaced by `*`s.
    Masked(String),
}

/// Banned words, matched case-insensitively anywhere in a text (danmaku in
/// scripts without spaces included).
#[derive(Debug, Clone, Default)]
pub struct WordFilter {
    words: Vec<String>,
    action: WordAction,
}

impl WordFilter {
    pub fn new(words: impl IntoIterator<Item = String>, action: WordAction) -> Self {
        let mut words: Vec<String> =
            words.into_iter().map(|w| w.trim().to_lowercase()).filter(|w| !w.is_empty()).collect();
        // Longest first, so a mask covers the longest match.
        words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        words.dedup();
        Self { words, action }
    }

    /// One word per line; `#` starts a comment.
    pub fn from_lines(text: &str, action: WordAction) -> Self {
        Self::new(text.lines().map(|l| l.split('#').next().unwrap_or("").to_string()), action)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn check(&self, text: &str) -> Verdict {
        if self.words.is_empty() {
            return Verdict::Clean;
        }
        let lower = text.to_lowercase();
        // Lower-casing can change byte lengths; then match on the text as it is.
        let haystack = if lower.len() == text.len() { lower } else { text.to_string() };
        let Some(found) = self.words.iter().find(|w| haystack.contains(w.as_str())) else {
            return Verdict::Clean;
        };
        match self.action {
            WordAction::Refuse => Verdict::Refused(found.clone()),
            WordAction::Mask => {
                let mut hits: Vec<(usize, usize)> = Vec::new();
                for w in &self.words {
                    hits.extend(haystack.match_indices(w.as_str()).map(|(at, m)| (at, at + m.len())));
                }
                hits.sort_unstable();
                let mut masked = String::with_capacity(text.len());
                let mut done = 0;
                for (start, end) in hits {
                    let start = start.max(done);
                    if end <= start {
                        continue;
                    }
                    masked.push_str(&text[done..start]);
                    masked.extend(std::iter::repeat_n('*', text[start..end].chars().count()));
                    done = end;
                }
                masked.push_str(&text[done..]);
                Verdict::Masked(masked)
            }
        }
    }
}

/// Re-reads the banned-words file whenever it changes, every `every`, so the
/// list is reloaded without a restart. Runs until the process ends.
pub async fn watch_words(moderation: Arc<Moderation>, path: PathBuf, action: WordAction, every: Duration) {
    let mut seen = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let modified = tokio::fs::metadata(&path).await.and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == seen {
            continue;
        }
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                let filter = WordFilter::from_lines(&text, action);
                tracing::info!(path = %path.display(), words = filter.words.len(), "banned words loaded");
                moderation.set_words(filter);
                seen = modified;
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "banned words not read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str) -> RoomId {
        RoomId::new(id).unwrap()
    }

    #[test]
    fn sanctions_apply_in_their_scope_until_they_expire_or_are_lifted() {
        let m = Moderation::new(&ModerationConfig::default());
        let (a, b) = (room("a"), room("b"));
        assert!(!m.applies(&a, "u", SanctionKind::Mute, 0));
        m.sanction(&Scope::Room(a.clone()), "u", SanctionKind::Mute, Some(u64::MAX - 1), "spam");
        assert!(m.applies(&a, "u", SanctionKind::Mute, 1_000));
        assert!(!m.applies(&b, "u", SanctionKind::Mute, 1_000), "another room");
        assert!(!m.applies(&a, "u", SanctionKind::Ban, 1_000), "another kind");
        assert!(!m.applies(&a, "v", SanctionKind::Mute, 1_000), "another user");
        m.sanction(&Scope::Node, "w", SanctionKind::Ban, None, "");
        assert!(m.applies(&a, "w", SanctionKind::Ban, 1_000) && m.applies(&b, "w", SanctionKind::Ban, 1_000));
        assert_eq!(m.list(&Scope::Room(a.clone()), 0).len(), 1);
        assert_eq!(m.list(&Scope::Node, 0)[0].user, "w");
        assert!(m.lift(&Scope::Room(a.clone()), "u", SanctionKind::Mute));
        assert!(!m.applies(&a, "u", SanctionKind::Mute, 1_000));
        assert!(!m.lift(&Scope::Room(a.clone()), "u", SanctionKind::Mute), "nothing left to lift");
        m.sanction(&Scope::Room(a.clone()), "k", SanctionKind::Ban, Some(5_000), "kicked");
        assert!(m.applies(&a, "k", SanctionKind::Ban, 4_999));
        assert!(!m.applies(&a, "k", SanctionKind::Ban, 5_000), "expired");
    }

    #[test]
    fn banned_words_are_refused_or_masked_case_insensitively() {
        let refuse = WordFilter::new(["Spam".to_string(), "坏词".to_string()], WordAction::Refuse);
        assert_eq!(refuse.check("hello"), Verdict::Clean);
        assert_eq!(refuse.check("buy SPAM now"), Verdict::Refused("spam".into()));
        assert_eq!(refuse.check("这是坏词吗"), Verdict::Refused("坏词".into()));
        let mask = WordFilter::new(["spam".to_string(), "坏词".to_string()], WordAction::Mask);
        assert_eq!(mask.check("Spam and spam"), Verdict::Masked("**** and ****".into()));
        assert_eq!(mask.check("这是坏词吗"), Verdict::Masked("这是**吗".into()));
        let lines = WordFilter::from_lines("# words\nfoo\n\n bar # trailing\n", WordAction::Refuse);
        assert_eq!(lines.words.len(), 2);
        assert!(WordFilter::default().check("anything") == Verdict::Clean);
    }
}
