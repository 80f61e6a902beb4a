//! Gifts: the catalogue, the per-user gift cap, and the ledger that charges
//! them ([`ledger`]).
//!
//! A gift's path: the session checks the request and the cap here
//! ([`Gifts::admit`]), charges the sender through the [`Ledger`] on its own
//! task (never the room's), and only once charged hands the gift to the
//! room, which sequences it as a High event and keeps the combos. A repeat
//! of an accepted idempotency key is answered from the ledger without
//! reaching the room.

pub mod ledger;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::v1;
use tokio::time::Instant;

use crate::config::{GiftItem, GiftsConfig};
use crate::rate::RateTable;
pub use ledger::{Charge, DebitOutcome, EmbeddedLedger, Ledger, LedgerError, Receipt, WebhookLedger};

/// Most gifts of one kind in one send.
pub const MAX_GIFT_COUNT: u32 = 10_000;

/// Highest price a catalogue entry may have, so that price × count always
/// fits a balance.
pub const MAX_PRICE: u64 = u64::MAX / MAX_GIFT_COUNT as u64;

/// Most users whose gift rate is tracked at once; beyond it, buckets that
/// have refilled are forgotten (a full bucket is the same as none).
const MAX_TRACKED_SENDERS: usize = 100_000;

/// The node's gift service. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Gifts {
    catalogue: HashMap<String, GiftItem>,
    pub ledger: Ledger,
    /// Gift senders' token buckets, a second's worth of burst.
    rates: RateTable,
}

impl Gifts {
    /// The gift service of a node: the catalogue from `config`, and the
    /// ledger it names: the backend's when its URL is set, else the fleet's
    /// in a fleet, else the embedded one journaled in `data_dir`.
    pub fn open(
        config: &GiftsConfig,
        data_dir: &std::path::Path,
        now_ms: u64,
        fleet: Option<&crate::cluster::Fleet>,
    ) -> anyhow::Result<Self> {
        let ttl = Duration::from_secs(config.key_ttl_secs);
        let ledger = match fleet {
            _ if config.ledger.url.is_some() => {
                Ledger::Webhook(Arc::new(WebhookLedger::open(&config.ledger, data_dir, ttl, now_ms)?))
            }
            Some(fleet) => Ledger::Fleet(ledger::FleetLedger::new(fleet.clone(), ttl)),
            None => Ledger::Embedded(Arc::new(EmbeddedLedger::open(data_dir, ttl, now_ms)?)),
        };
        Self::new(config, ledger)
    }

    /// The gift service over `ledger`. Refuses a catalogue with a price
    /// above [`MAX_PRICE`] or an id given twice.
    pub fn new(config: &GiftsConfig, ledger: Ledger) -> anyhow::Result<Self> {
        let mut ids = std::collections::HashSet::new();
        for g in &config.catalogue {
            anyhow::ensure!(g.price <= MAX_PRICE, "gift {:?}: price above {MAX_PRICE}", g.id);
            anyhow::ensure!(ids.insert(g.id.as_str()), "gift {:?} is in the catalogue twice", g.id);
        }
        Ok(Self {
            catalogue: config.catalogue.iter().map(|g| (g.id.clone(), g.clone())).collect(),
            ledger,
            rates: RateTable::new(config.per_user_per_sec, 1.0, MAX_TRACKED_SENDERS),
        })
    }

    /// The price of `count` of `item`; [`Gifts::new`] bounds prices so that
    /// it cannot overflow for a count up to [`MAX_GIFT_COUNT`].
    pub fn value(item: &GiftItem, count: u32) -> u64 {
        item.price.saturating_mul(u64::from(count.min(MAX_GIFT_COUNT)))
    }

    /// The whole catalogue, cheapest first (ties by id), as clients get it.
    pub fn catalogue(&self) -> v1::Catalogue {
        let mut items: Vec<&GiftItem> = self.catalogue.values().collect();
        items.sort_by(|a, b| (a.price, &a.id).cmp(&(b.price, &b.id)));
        let gifts = items
            .into_iter()
            .map(|g| v1::CatalogueItem {
                id: g.id.clone(),
                name: g.name.clone(),
                price: g.price,
                tier: g.tier,
            })
            .collect();
        v1::Catalogue { gifts }
    }

    /// The catalogue entry for `id`.
    pub fn item(&self, id: &str) -> Option<&GiftItem> {
        self.catalogue.get(id)
    }

    /// Takes one send from `user`'s gift cap; false: over the cap.
    pub fn admit(&self, user: &str, now: Instant) -> bool {
        self.rates.take_up_to(user, 1, now) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gift_cap_refuses_beyond_its_rate_and_refills() {
        let config = GiftsConfig { per_user_per_sec: 30.0, ..GiftsConfig::default() };
        let dir = std::env::temp_dir().join(format!("roomcast-gifts-cap-{}", std::process::id()));
        let gifts = Gifts::open(&config, &dir, 0, None).unwrap();
        let now = Instant::now();
        assert_eq!((0..40).filter(|_| gifts.admit("u", now)).count(), 30);
        assert!(gifts.admit("v", now), "the cap is per user");
        assert_eq!((0..40).filter(|_| gifts.admit("u", now + Duration::from_millis(100))).count(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_catalogue_with_a_price_that_could_overflow_or_a_repeated_id_is_refused() {
        let dir = std::env::temp_dir().join(format!("roomcast-gifts-catalogue-{}", std::process::id()));
        let item = |id: &str, price| GiftItem { id: id.into(), name: id.into(), price, tier: 0 };
        let huge = GiftsConfig { catalogue: vec![item("gold", MAX_PRICE + 1)], ..GiftsConfig::default() };
        assert!(Gifts::open(&huge, &dir, 0, None).is_err());
        let twice = GiftsConfig { catalogue: vec![item("a", 1), item("a", 2)], ..GiftsConfig::default() };
        assert!(Gifts::open(&twice, &dir, 0, None).is_err());
        let top = GiftsConfig { catalogue: vec![item("gold", MAX_PRICE)], ..GiftsConfig::default() };
        let gifts = Gifts::open(&top, &dir, 0, None).unwrap();
        let gold = gifts.item("gold").unwrap();
        assert_eq!(Gifts::value(gold, MAX_GIFT_COUNT), MAX_PRICE * u64::from(MAX_GIFT_COUNT));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
