//! [`OrderCache`]: order reads from memory (moka), dropped when the order changes.
//!
//! The API process follows the order topics ([`orderflow_kafka::follow`]: no consumer group,
//! from the end) and drops the entry of each event's order id; writes the API makes itself
//! call [`OrderCache::invalidate`] at once. Bounded ([`CAPACITY`] orders) with a TTL
//! ([`TTL`]) as a safety net. Until the follower is in place (and after a consumer error, when
//! events may have been missed) every read goes to the store.
//!
//! The follower runs only while orders are read: each read wants it ([`Demand::want`]), and
//! once nothing has read for [`FOLLOW_IDLE`] (nor held a live stream open) it stops, and the
//! cache with it (emptied, every read to the store) until the next read starts it again.
//!
//! A read never shows an older status than one this process answered before: an entry is only
//! cached when no invalidation happened while it was being loaded (an invalidation leaves a
//! marker with its sequence number; with the marker gone, any invalidation at all during the
//! load counts), and of two loads the one further along (status rank, then timeline length)
//! stays. An event for an order that is neither cached nor being loaded only counts as an
//! invalidation: most events are for orders nobody reads, and a marker for each would keep the
//! cache busy evicting markers. Each API process has its own cache: behind a load balancer,
//! successive reads may reach different processes, each monotonic on its own.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use moka::{future::Cache, ops::compute::Op};
use orderflow_kafka::follow::{Demand, KeyListener};
use orderflow_schemas::metrics;
use orderflow_store::{OrderRecord, Store, StoreError};

/// Most orders kept.
pub const CAPACITY: u64 = 10_000;
/// Longest an entry is kept, even without an event.
pub const TTL: Duration = Duration::from_secs(60);
/// How long the follower goes on without an order read or a live stream (then every entry
/// would have expired anyway).
pub const FOLLOW_IDLE: Duration = TTL;

#[derive(Clone)]
enum Slot {
    Order(Arc<OrderRecord>),
    /// Dropped by the invalidation with this sequence number.
    Invalidated(u64),
}

/// The API's order read cache. Cheap to share (`Arc`).
pub struct OrderCache {
    entries: Cache<String, Slot>,
    /// Invalidations so far (the last one's sequence number).
    invalidations: AtomicU64,
    /// Whether invalidations arrive: until then, no caching.
    following: AtomicBool,
    /// Loads from the store under way that may offer their order to the cache.
    loading: AtomicUsize,
    /// Whether the follower is wanted: reads want it.
    demand: Arc<Demand>,
}

/// Counts a load under way until dropped, even if its future is.
struct Loading<'a>(&'a AtomicUsize);

impl<'a> Loading<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Loading(count)
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for OrderCache {
    fn default() -> Self {
        Self::new(CAPACITY, TTL)
    }
}

impl OrderCache {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        OrderCache {
            entries: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            invalidations: AtomicU64::new(0),
            following: AtomicBool::new(false),
            loading: AtomicUsize::new(0),
            demand: Arc::new(Demand::new(FOLLOW_IDLE)),
        }
    }

    /// What wants the follower: each read through this cache, and the live streams.
    pub fn demand(&self) -> &Arc<Demand> {
        &self.demand
    }

    /// The order, from the cache or else from `store` (then cached, when that is safe).
    pub async fn get(
        &self,
        store: &dyn Store,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let outcome = metrics::metrics().order_cache_requests.clone();
        self.demand.want();
        let enabled = self.following.load(Ordering::SeqCst);
        if enabled {
            if let Some(Slot::Order(order)) = self.entries.get(order_id).await {
                outcome.with_label_values(&["hit"]).inc();
                return Ok(Some((*order).clone()));
            }
        }
        outcome.with_label_values(&["miss"]).inc();
        let _loading = Loading::start(&self.loading);
        let started = self.invalidations.load(Ordering::SeqCst);
        let loaded = store.get_order(order_id).await?;
        if let (Some(order), true) = (&loaded, enabled) {
            self.offer(order_id, order, started).await;
        }
        Ok(loaded)
    }

    /// Caches `order`, loaded when the invalidation count was `started`, unless it may be stale.
    async fn offer(&self, order_id: &str, order: &OrderRecord, started: u64) {
        let order = Arc::new(order.clone());
        let invalidations = &self.invalidations;
        let following = &self.following;
        self.entries
            .entry(order_id.to_string())
            .and_compute_with(|existing| {
                let current = existing.map(|e| e.into_value());
                let keep = !following.load(Ordering::SeqCst)
                    || match &current {
                        Some(Slot::Invalidated(at)) => *at > started,
                        Some(Slot::Order(cached)) => !further(&order, cached),
                        None => invalidations.load(Ordering::SeqCst) != started,
                    };
                std::future::ready(if keep {
                    Op::Nop
                } else {
                    Op::Put(Slot::Order(order))
                })
            })
            .await;
    }

    /// Drops the order: the next read goes to the store. Call it after every write to an
    /// order's read model the API makes itself (modify, cancel, ship, …), before answering.
    pub async fn invalidate(&self, order_id: &str) {
        let seq = self.invalidations.fetch_add(1, Ordering::SeqCst) + 1;
        self.entries
            .insert(order_id.to_string(), Slot::Invalidated(seq))
            .await;
    }

    /// Drops the order for an event that went by. With neither an entry nor a load under way
    /// there is nothing to drop and no load to warn, so the invalidation is only counted: a
    /// load that starts later reads the store after the event, and may cache what it reads.
    pub async fn event_for(&self, order_id: &str) {
        let seq = self.invalidations.fetch_add(1, Ordering::SeqCst) + 1;
        if self.loading.load(Ordering::SeqCst) > 0 || self.entries.contains_key(order_id) {
            self.entries
                .insert(order_id.to_string(), Slot::Invalidated(seq))
                .await;
        }
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Whether reads are being cached (invalidations arrive).
    pub fn is_enabled(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }
}

/// Whether `a` is further along than `b`.
fn further(a: &OrderRecord, b: &OrderRecord) -> bool {
    (a.status.rank(), a.timeline.len(), a.updated_at)
        > (b.status.rank(), b.timeline.len(), b.updated_at)
}

/// The cache as the order topics' follower drives it.
pub struct Invalidator(pub Arc<OrderCache>);

impl KeyListener for Invalidator {
    fn following(&self) {
        self.0.invalidate_all();
        self.0.following.store(true, Ordering::SeqCst);
    }

    async fn key(&self, key: &[u8]) {
        if let Ok(order_id) = std::str::from_utf8(key) {
            self.0.event_for(order_id).await;
        }
    }

    fn gap(&self) {
        self.0.invalidate_all();
    }

    fn stopped(&self) {
        // Not enabled first: a load finishing meanwhile does not offer what it read.
        self.0.following.store(false, Ordering::SeqCst);
        self.0.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use orderflow_schemas::OrderStatus;

    use super::*;

    fn order(status: OrderStatus, steps: usize) -> OrderRecord {
        OrderRecord {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            status,
            items: Vec::new(),
            shipping_address: None,
            payment_method: None,
            pricing: None,
            invoice_number: None,
            created_at: 1,
            updated_at: steps as i64,
            timeline: (0..steps)
                .map(|i| orderflow_store::TimelineEntry {
                    status,
                    event_id: format!("o1:{i}"),
                    at: i as i64,
                    detail: None,
                })
                .collect(),
            revision: 0,
            payment_claim: None,
        }
    }

    async fn cached(cache: &OrderCache) -> Option<OrderStatus> {
        match cache.entries.get("o1").await {
            Some(Slot::Order(o)) => Some(o.status),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_load_that_an_invalidation_overtook_is_not_cached() {
        let cache = OrderCache::default();
        cache.following.store(true, Ordering::SeqCst);

        // Loaded before the event's invalidation, offered after it: stale, dropped.
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache.invalidate("o1").await;
        cache
            .offer("o1", &order(OrderStatus::Paid, 3), started)
            .await;
        assert_eq!(cached(&cache).await, None);

        // Loaded after it: cached.
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache
            .offer("o1", &order(OrderStatus::Invoiced, 4), started)
            .await;
        assert_eq!(cached(&cache).await, Some(OrderStatus::Invoiced));

        // Of two loads, the one further along stays, whichever comes last.
        cache
            .offer("o1", &order(OrderStatus::Paid, 3), started)
            .await;
        assert_eq!(cached(&cache).await, Some(OrderStatus::Invoiced));

        // With the marker gone (evicted, cleared), any invalidation during the load counts.
        cache.entries.invalidate("o1").await;
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache.invalidate("other").await;
        cache
            .offer("o1", &order(OrderStatus::Paid, 3), started)
            .await;
        assert_eq!(cached(&cache).await, None);
    }

    #[tokio::test]
    async fn an_event_drops_a_cached_order_and_outdates_a_load_under_way() {
        let cache = OrderCache::default();
        cache.following.store(true, Ordering::SeqCst);

        // Nothing cached, nothing loading: nothing is written to the cache.
        cache.event_for("o1").await;
        cache.entries.run_pending_tasks().await;
        assert_eq!(cache.entries.entry_count(), 0);

        // A cached order is dropped.
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache
            .offer("o1", &order(OrderStatus::Paid, 3), started)
            .await;
        assert_eq!(cached(&cache).await, Some(OrderStatus::Paid));
        cache.event_for("o1").await;
        assert_eq!(cached(&cache).await, None);

        // A load under way when the event went by is not cached, even with other orders'
        // events after it.
        cache.entries.invalidate("o1").await;
        let loading = Loading::start(&cache.loading);
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache.event_for("o1").await;
        cache.event_for("other").await;
        cache
            .offer("o1", &order(OrderStatus::Paid, 3), started)
            .await;
        drop(loading);
        assert_eq!(cached(&cache).await, None);
    }

    #[tokio::test]
    async fn nothing_is_cached_until_invalidations_arrive() {
        let cache = OrderCache::default();
        cache.offer("o1", &order(OrderStatus::Paid, 3), 0).await;
        assert_eq!(cached(&cache).await, None);
        assert!(!cache.is_enabled());
    }

    #[tokio::test]
    async fn a_stopped_follower_empties_the_cache_and_turns_it_off() {
        let cache = Arc::new(OrderCache::default());
        let follower = Invalidator(cache.clone());
        follower.following();
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache
            .offer("o1", &order(OrderStatus::Paid, 3), started)
            .await;
        assert_eq!(cached(&cache).await, Some(OrderStatus::Paid));
        follower.stopped();
        assert!(!cache.is_enabled());
        assert_eq!(cached(&cache).await, None);
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache
            .offer("o1", &order(OrderStatus::Invoiced, 4), started)
            .await;
        assert_eq!(cached(&cache).await, None, "no invalidation arrives now");
        // Following again, from a clean slate.
        follower.following();
        let started = cache.invalidations.load(Ordering::SeqCst);
        cache
            .offer("o1", &order(OrderStatus::Invoiced, 4), started)
            .await;
        assert_eq!(cached(&cache).await, Some(OrderStatus::Invoiced));
    }
}
