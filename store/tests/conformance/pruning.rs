//! What expires is pruned, on the embedded store: delivery markers after the delivery TTL,
//! idempotency keys, stock adjustment keys, refresh tokens and the families whose tokens have
//! all expired; what is live stays. (ScyllaDB expires the same records by TTL, on the server's
//! clock, which a test cannot move.) And the writer: a full queue answers unavailable after
//! its wait, a disk that refuses to commit fails the health check and every write.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Condvar, Mutex,
    },
    time::Duration,
};

use orderflow_store::{AccountStore, EmbeddedConfig};
use redb::{backends::InMemoryBackend, StorageBackend};

use super::*;

const HOUR_MS: i64 = 60 * 60 * 1000;

fn now() -> i64 {
    orderflow_schemas::now_millis()
}

fn config(delivery_ttl: Duration) -> EmbeddedConfig {
    EmbeddedConfig {
        delivery_ttl,
        ..EmbeddedConfig::default()
    }
}

/// Prunes everything expired by `at`, in batches; how many records went.
async fn prune_all(store: &EmbeddedStore, at: i64) -> usize {
    let mut total = 0;
    loop {
        let removed = store.prune_expired(at, 2).await.unwrap();
        total += removed;
        if removed == 0 {
            return total;
        }
    }
}

/// Delivery markers go once they are older than the delivery TTL, not before.
pub(crate) async fn check_delivery_markers_expire(dir: &std::path::Path) {
    let store = EmbeddedStore::open_with(dir, &config(Duration::from_secs(24 * 60 * 60))).unwrap();
    let sink = unique("sink");
    let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
    let start = now();
    store.mark_delivered(&sink, &ids).await.unwrap();
    // Marked again: one marker each, kept from the latest delivery.
    store.mark_delivered(&sink, &ids[..1]).await.unwrap();
    let marked = now();

    assert_eq!(prune_all(&store, start + DAY_MS - HOUR_MS).await, 0);
    assert_eq!(store.delivered(&sink, &ids).await.unwrap(), vec![true; 5]);

    assert_eq!(prune_all(&store, marked + DAY_MS).await, 5);
    assert_eq!(store.delivered(&sink, &ids).await.unwrap(), vec![false; 5]);
    // Delivered again after that: remembered again.
    store.mark_delivered(&sink, &ids[..2]).await.unwrap();
    assert_eq!(
        store.delivered(&sink, &ids).await.unwrap(),
        vec![true, true, false, false, false]
    );
}

/// Marking deliveries removes the markers that have expired meanwhile, with no prune: right
/// after a store opens, and again for markers added after one such removal.
pub(crate) async fn check_marking_deliveries_removes_expired_markers(dir: &std::path::Path) {
    const TTL: Duration = Duration::from_millis(200);
    let sink = unique("sink");
    let first: Vec<String> = (0..3).map(|_| new_id()).collect();
    let second: Vec<String> = (0..3).map(|_| new_id()).collect();
    let third = vec![new_id()];
    {
        let store = EmbeddedStore::open_with(dir, &config(TTL)).unwrap();
        store.mark_delivered(&sink, &first).await.unwrap();
    }
    tokio::time::sleep(TTL * 2).await;

    // Opened again: the first write that marks a delivery looks for expired markers.
    let store = EmbeddedStore::open_with(dir, &config(TTL)).unwrap();
    store.mark_delivered(&sink, &second).await.unwrap();
    assert_eq!(
        store.delivered(&sink, &first).await.unwrap(),
        vec![false; 3]
    );
    assert_eq!(
        store.delivered(&sink, &second).await.unwrap(),
        vec![true; 3]
    );
    // Within the TTL, a write keeps them.
    store.mark_delivered(&sink, &third).await.unwrap();
    assert_eq!(
        store.delivered(&sink, &second).await.unwrap(),
        vec![true; 3]
    );

    // Once the second ones have expired, the next write removes them too.
    tokio::time::sleep(TTL * 2).await;
    let fourth = vec![new_id()];
    store.mark_delivered(&sink, &fourth).await.unwrap();
    assert_eq!(
        store.delivered(&sink, &second).await.unwrap(),
        vec![false; 3]
    );
    assert_eq!(store.delivered(&sink, &third).await.unwrap(), vec![false]);
    assert_eq!(store.delivered(&sink, &fourth).await.unwrap(), vec![true]);
}

/// Idempotency keys go once expired: the same key then makes a new order even at a time it
/// would have been live; a live key still answers its order.
pub(crate) async fn check_idempotency_keys_expire(store: EmbeddedStore) {
    let customer = unique("customer");
    let start = now();
    let key = |name: &str, expires_at| IdempotencyKey {
        key: name.into(),
        fingerprint: "fp".into(),
        expires_at,
    };
    let (short, long) = (unique("short"), unique("long"));
    let first = order(&customer, start);
    let kept = order(&customer, start);
    for (o, k) in [
        (&first, key(&short, start + HOUR_MS)),
        (&kept, key(&long, start + DAY_MS)),
    ] {
        let created = store
            .create_order(o.clone(), Some(k), None, None)
            .await
            .unwrap();
        assert_eq!(created, CreateOrder::Created);
    }
    assert_eq!(prune_all(&store, start + HOUR_MS - 1).await, 0);
    assert_eq!(prune_all(&store, start + 2 * HOUR_MS).await, 1);

    // Asked at a time the short key was live: it is gone, so this is a new order.
    let again = order(&customer, start + 1);
    let created = store
        .create_order(again, Some(key(&short, start + HOUR_MS)), None, None)
        .await
        .unwrap();
    assert_eq!(created, CreateOrder::Created);
    let repeat = store
        .create_order(
            order(&customer, start + 2 * HOUR_MS),
            Some(key(&long, start + DAY_MS)),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(&repeat, CreateOrder::Existing(o) if o.order_id == kept.order_id),
        "{repeat:?}"
    );
}

/// Stock adjustment keys go once expired; a live one still recognises its repeat.
pub(crate) async fn check_adjustment_keys_expire(store: EmbeddedStore) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let start = now();
    let key = |name: &str, expires_at| AdjustmentKey {
        key: name.into(),
        expires_at,
    };
    let (short, long) = (unique("short"), unique("long"));
    for (k, delta) in [
        (key(&short, start + HOUR_MS), 1),
        (key(&long, start + DAY_MS), 2),
    ] {
        let adjusted = store.adjust_stock(&sku, delta, Some(k)).await.unwrap();
        assert!(
            matches!(adjusted, StockAdjustment::Adjusted(_)),
            "{adjusted:?}"
        );
    }
    assert_eq!(prune_all(&store, start + HOUR_MS - 1).await, 0);
    assert_eq!(prune_all(&store, start + 2 * HOUR_MS).await, 1);
    let repeat = store
        .adjust_stock(&sku, 2, Some(key(&long, start + DAY_MS)))
        .await
        .unwrap();
    assert!(matches!(repeat, StockAdjustment::Replayed(_)), "{repeat:?}");
    assert_eq!(stock(&store, &sku).await, (13, 0));
}

/// Refresh tokens go once expired, and a family once its last token has; a family that a
/// rotation extended stays with its live token.
pub(crate) async fn check_refresh_tokens_expire(store: EmbeddedStore) {
    let customer = unique("customer");
    let start = now();
    let (gone, rotated, kept) = (unique("gone"), unique("rotated"), unique("kept"));
    let gone_token = refresh(&customer, &gone, start + HOUR_MS);
    let rotated_token = refresh(&customer, &rotated, start + HOUR_MS);
    let kept_token = refresh(&customer, &kept, start + DAY_MS);
    for token in [&gone_token, &rotated_token, &kept_token] {
        store.create_refresh_token(token.clone()).await.unwrap();
    }
    let successor = unique("successor");
    let outcome = store
        .rotate_refresh_token(
            &rotated_token.token_hash,
            &successor,
            start + 3 * HOUR_MS,
            start,
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, RotateOutcome::Rotated { .. }),
        "{outcome:?}"
    );

    assert_eq!(prune_all(&store, start + HOUR_MS - 1).await, 0);
    // Two expired tokens (one of them used) and the family that had no other.
    assert_eq!(prune_all(&store, start + 2 * HOUR_MS).await, 3);
    assert!(store
        .refresh_family_revoked(&customer, &gone)
        .await
        .unwrap());
    // Gone, so unknown even at a time it was live.
    let unknown = store
        .rotate_refresh_token(&gone_token.token_hash, &unique("x"), start + DAY_MS, start)
        .await
        .unwrap();
    assert_eq!(unknown, RotateOutcome::Unknown);
    assert!(!store
        .refresh_family_revoked(&customer, &rotated)
        .await
        .unwrap());
    assert!(!store
        .refresh_family_revoked(&customer, &kept)
        .await
        .unwrap());
    let again = store
        .rotate_refresh_token(
            &successor,
            &unique("next"),
            start + DAY_MS,
            start + 2 * HOUR_MS,
        )
        .await
        .unwrap();
    assert!(matches!(again, RotateOutcome::Rotated { .. }), "{again:?}");

    // Revoking a family that expired meanwhile leaves nothing behind.
    assert_eq!(prune_all(&store, start + 2 * DAY_MS).await, 5);
    store
        .revoke_customer_refresh_tokens(&customer, None)
        .await
        .unwrap();
    assert!(!store
        .revoke_refresh_family(&kept_token.token_hash)
        .await
        .unwrap());
    assert_eq!(prune_all(&store, i64::MAX / 2).await, 0);
    assert!(store
        .refresh_family_revoked(&customer, &kept)
        .await
        .unwrap());
}

/// A disk for redb that keeps everything in memory and, on demand, holds every sync until let
/// go (a slow disk) or fails every write and sync (a dead one).
#[derive(Debug, Default)]
pub(crate) struct TestDisk {
    memory: InMemoryBackend,
    pub(crate) failing: AtomicBool,
    held: Mutex<bool>,
    released: Condvar,
    /// Syncs waiting for the disk to be let go.
    waiting: std::sync::atomic::AtomicUsize,
}

/// Lets the disk go when dropped (also when a check fails: the store's writer, which the
/// store waits for when it closes, is not left stuck).
pub(crate) struct Release(pub(crate) Arc<TestDisk>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

impl TestDisk {
    pub(crate) fn hold(&self, held: bool) {
        *self.held.lock().unwrap() = held;
        self.released.notify_all();
    }

    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the disk is gone"));
        }
        Ok(())
    }
}

/// The [`TestDisk`] as redb's storage, while the test keeps a handle to it.
#[derive(Debug)]
pub(crate) struct Disk(pub(crate) Arc<TestDisk>);

impl StorageBackend for Disk {
    fn len(&self) -> std::io::Result<u64> {
        self.0.memory.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.memory.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.check()?;
        self.0.memory.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut held = self.0.held.lock().unwrap();
        while *held {
            self.0.waiting.fetch_add(1, Ordering::SeqCst);
            held = self.0.released.wait(held).unwrap();
            self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(held);
        self.0.check()?;
        self.0.memory.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.check()?;
        self.0.memory.write(offset, data)
    }
}

/// A disk that stops writing: the health check fails (it writes), and so does every write,
/// as unavailable; reads still answer.
pub(crate) async fn check_a_store_that_cannot_write_is_unhealthy() {
    let disk = Arc::new(TestDisk::default());
    let store =
        EmbeddedStore::with_backend(Disk(disk.clone()), &EmbeddedConfig::default()).unwrap();
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 3)]).await.unwrap();
    store.healthcheck().await.expect("healthy while it writes");

    disk.failing.store(true, Ordering::SeqCst);
    let health = store.healthcheck().await;
    assert!(
        matches!(health, Err(StoreError::Unavailable(_))),
        "{health:?}"
    );
    let write = store.put_products(vec![product(&unique("sku"), 1)]).await;
    assert!(
        matches!(write, Err(StoreError::Unavailable(_))),
        "{write:?}"
    );
    assert_eq!(stock(&store, &sku).await, (3, 0));
}

/// Writes beyond a full queue wait for room, and answer unavailable once they have waited
/// `write_queue_wait`; the writes taken land once the disk goes on, the refused one not.
pub(crate) async fn check_a_full_write_queue_pushes_back() {
    let disk = Arc::new(TestDisk::default());
    let config = EmbeddedConfig {
        write_queue: 1,
        write_queue_wait: Duration::from_millis(200),
        ..EmbeddedConfig::default()
    };
    let store = EmbeddedStore::with_backend(Disk(disk.clone()), &config).unwrap();
    store.healthcheck().await.unwrap();
    disk.hold(true);
    let _release = Release(disk.clone());
    let put = |sku: String| {
        let store = store.clone();
        tokio::spawn(async move {
            (
                sku.clone(),
                store.put_products(vec![product(&sku, 1)]).await,
            )
        })
    };
    // One write in the writer's hands, stuck in its commit.
    let in_hand = put(unique("in-hand"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while disk.waiting.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never synced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two more: one takes the queue's one place and waits; the other finds it full.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let (tx, write) = (tx.clone(), put(unique("more")));
        tokio::spawn(async move {
            let _ = tx.send(write.await.unwrap());
        });
    }
    let (refused_sku, refused) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a write answers while the disk is held")
        .expect("an answer");
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("full")),
        "{refused:?}"
    );
    disk.hold(false);
    let (queued_sku, queued) = rx.recv().await.expect("the queued write answers");
    queued.unwrap();
    let (in_hand_sku, landed) = in_hand.await.unwrap();
    landed.unwrap();
    for sku in [&in_hand_sku, &queued_sku] {
        assert!(store.get_product(sku).await.unwrap().is_some(), "{sku}");
    }
    assert!(store.get_product(&refused_sku).await.unwrap().is_none());
}
