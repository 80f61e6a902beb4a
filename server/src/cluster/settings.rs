//! What the fleet needs of its Redis to keep what it acknowledged, checked
//! once at start with a warning for each setting that falls short.
//!
//! Redis holds a fleet's room numbering, gift balances and idempotency
//! keys, quiz tallies and sanctions. A Redis that forgets them (no
//! persistence and a restart, a failover to a replica behind, keys evicted
//! under `maxmemory`) loses acknowledged state: rooms are renumbered under
//! a new epoch (see `sequence.lua`) and members resume incomplete, but a
//! balance or an idempotency key that is gone cannot be recovered. So the
//! fleet wants persistence (`appendonly yes`, ideally `appendfsync
//! always` or `everysec`) and `maxmemory-policy noeviction`.

use std::collections::HashMap;

use super::link::Conn;

/// The settings read.
const NAMES: [&str; 4] = ["appendonly", "save", "maxmemory", "maxmemory-policy"];

/// Reads the settings and warns about each one that falls short. A Redis
/// that does not allow `CONFIG GET` (some managed services) is noted once.
pub(super) async fn check(mut conn: Conn) {
    let mut read = HashMap::new();
    for name in NAMES {
        let got: Result<HashMap<String, String>, _> =
            redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await;
        match got {
            Ok(values) => read.extend(values),
            Err(e) => {
                tracing::info!(error = %e, "the fleet's Redis settings could not be read; make sure it persists its data and never evicts (README, Fleet)");
                return;
            }
        }
    }
    for warning in judge(&read) {
        tracing::warn!("{warning}");
    }
}

/// The warnings `settings` (from `CONFIG GET`) call for.
fn judge(settings: &HashMap<String, String>) -> Vec<&'static str> {
    let get = |name: &str| settings.get(name).map(String::as_str);
    let mut out = Vec::new();
    let aof = get("appendonly") == Some("yes");
    let snapshots = get("save").is_some_and(|s| !s.trim().is_empty());
    if !aof && !snapshots {
        out.push(
            "the fleet's Redis keeps nothing on disk (appendonly no, save \"\"): a restart loses balances, \
             gift keys and room numbering; set appendonly yes",
        );
    } else if !aof {
        out.push(
            "the fleet's Redis persists by snapshots only: a restart loses what came after the last one \
             (balances, gift keys); set appendonly yes",
        );
    }
    let bounded = get("maxmemory").is_some_and(|m| m.trim() != "0");
    if bounded && get("maxmemory-policy") != Some("noeviction") {
        out.push(
            "the fleet's Redis evicts keys when it reaches maxmemory: rooms' numbering, balances and gift \
             keys can vanish; set maxmemory-policy noeviction",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_redis_that_persists_and_never_evicts_is_fine() {
        let ok = settings(&[
            ("appendonly", "yes"),
            ("save", ""),
            ("maxmemory", "0"),
            ("maxmemory-policy", "allkeys-lru"),
        ]);
        assert!(judge(&ok).is_empty());
        let bounded = settings(&[
            ("appendonly", "yes"),
            ("maxmemory", "1073741824"),
            ("maxmemory-policy", "noeviction"),
        ]);
        assert!(judge(&bounded).is_empty());
    }

    #[test]
    fn no_persistence_snapshots_only_and_eviction_each_warn() {
        let none = settings(&[("appendonly", "no"), ("save", ""), ("maxmemory", "0")]);
        assert_eq!(judge(&none).len(), 1);
        assert!(judge(&none)[0].contains("keeps nothing on disk"));
        let snapshots = settings(&[("appendonly", "no"), ("save", "3600 1 300 100"), ("maxmemory", "0")]);
        assert!(judge(&snapshots)[0].contains("snapshots only"));
        let evicts =
            settings(&[("appendonly", "yes"), ("maxmemory", "100mb"), ("maxmemory-policy", "allkeys-lru")]);
        assert!(judge(&evicts)[0].contains("noeviction"));
    }
}
