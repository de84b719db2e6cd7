//! The embedded store: redb under `--data-dir`.
//!
//! Why redb: pure Rust (no C build), one file, ACID transactions with copy-on-write B-trees, so
//! a `kill -9` leaves the state of the last committed transaction, and one writer at a time,
//! which makes the conditional stock update trivially atomic.
//!
//! Writes go through one writer thread that drains every queued write into a single
//! transaction before it commits (group commit): many concurrent callers share one fsync.
//! Under load it begins a commit at most every [`EmbeddedConfig::commit_interval`] (4 ms), so
//! that each commit takes the writes of that time; a write after a quiet spell commits at once.
//! A group's writes share the transaction's open tables ([`tx::Tx`]): each table is opened on
//! its first use in the group and closed before the commit, not at every use.
//! Each write is a closure that may run twice: when one write of a group fails, the group is
//! rolled back and every write is retried in a transaction of its own, so one bad write
//! never fails its neighbours. Reads use MVCC read transactions and never wait for the writer.
//!
//! The writer's queue is bounded ([`EmbeddedConfig::write_queue`]): when it is full a write
//! waits for room (backpressure on whoever writes faster than the disk), and after
//! [`EmbeddedConfig::write_queue_wait`] answers [`StoreError::Unavailable`] (a 503 with
//! `Retry-After` from the API; the stages retry). A write that panics answers an error and the
//! writer goes on; a writer that stopped anyway, or a disk that refuses to commit, fails
//! [`Store::healthcheck`] (a write through the queue), so `/readyz` answers 503.
//!
//! # What expires
//! Records that only matter for a while are indexed by the time they expire
//! (`<ms, 20 digits> \0 key` → ()), and each write that adds one removes up to `PURGE_BATCH`
//! expired ones of its kind, oldest first, without a scan: delivery markers
//! ([`EmbeddedConfig::delivery_ttl`] after delivery), idempotency keys, stock adjustment keys,
//! refresh tokens (at their `expires_at`), refresh token families (once their last token has
//! expired), payment tokens and verification emails. [`EmbeddedStore::prune_expired`] removes
//! the rest in batches (the store runs it once a minute). A store written before these
//! indexes existed is indexed once when opened (marker `expiry_index`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use orderflow_schemas::OrderItem;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    account::*, model::*, outbox::OutboxEvent, Result, Store, StoreError, DEFAULT_DELIVERY_TTL,
};

use self::{outbox::queue_in, tx::Tx};

mod accounts;
mod catalogue;
mod deliveries;
mod invoices;
mod orders;
mod outbox;
mod payments;
mod steps;
mod tx;

const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// `customer \0 order id` → (); order ids are UUIDv7, so key order is creation order.
const CUSTOMER_ORDERS: TableDefinition<&str, ()> = TableDefinition::new("customer_orders");
/// `customer \0 key` → idempotency record, until the key expires.
const IDEMPOTENCY: Expiring = Expiring {
    what: "idempotency",
    records: TableDefinition::new("idempotency"),
    by_expiry: TableDefinition::new("idempotency_by_expiry"),
};
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
const PAYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments");
const INVOICES: TableDefinition<&str, &[u8]> = TableDefinition::new("invoices");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// `sink \0 id` → ms when delivered, until [`EmbeddedConfig::delivery_ttl`] later.
const DELIVERIES: TableDefinition<&str, i64> = TableDefinition::new("deliveries");
/// The same markers by when they were delivered: `<ms, 20 digits> \0 sink \0 id` → ().
const DELIVERIES_BY_TIME: TableDefinition<&str, ()> = TableDefinition::new("deliveries_by_time");

// Accounts.
/// customer id → account.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// email → customer id: the uniqueness of emails.
const ACCOUNT_EMAILS: TableDefinition<&str, &str> = TableDefinition::new("account_emails");
/// customer id → its live verification code.
const VERIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("verifications");
/// token hash → refresh token, until it expires.
const REFRESH_TOKENS: Expiring = Expiring {
    what: "refresh token",
    records: TableDefinition::new("refresh_tokens"),
    by_expiry: TableDefinition::new("refresh_tokens_by_expiry"),
};
/// `customer \0 family` → revoked; every family of a customer, so all can be revoked. A
/// family goes once its last token has expired (then it counts as revoked: no token of it is
/// left to refresh, and every access token it gave has expired before).
const REFRESH_FAMILIES: TableDefinition<&str, bool> = TableDefinition::new("refresh_families");
/// `customer \0 family` → when the family's last token expires.
const REFRESH_FAMILY_EXPIRY: TableDefinition<&str, i64> =
    TableDefinition::new("refresh_family_expiry");
/// The same families by that time: `<ms, 20 digits> \0 customer \0 family` → ().
const REFRESH_FAMILIES_BY_EXPIRY: TableDefinition<&str, ()> =
    TableDefinition::new("refresh_families_by_expiry");
/// name → ms when set.
const MARKERS: TableDefinition<&str, i64> = TableDefinition::new("markers");
/// Refunds by order id.
const REFUNDS: TableDefinition<&str, &[u8]> = TableDefinition::new("refunds");
/// Stock adjustments' `Idempotency-Key`s: key → the adjustment it applied, until it expires.
const ADJUSTMENT_KEYS: Expiring = Expiring {
    what: "adjustment key",
    records: TableDefinition::new("adjustment_keys"),
    by_expiry: TableDefinition::new("adjustment_keys_by_expiry"),
};
/// Orders awaiting a bank transfer, by the time they were placed: `{created_at:020} \0 order
/// id` → customer id ([`OrderStore::list_unpaid_orders`]).
const UNPAID: TableDefinition<&str, &str> = TableDefinition::new("unpaid_orders");
/// The same orders by customer: `customer \0 order id` → created_at (the per-customer cap).
const UNPAID_BY_CUSTOMER: TableDefinition<&str, i64> = TableDefinition::new("unpaid_by_customer");
/// Card orders' payment tokens: order id → [`PaymentToken`], until the charge is done.
const PAYMENT_TOKENS: Expiring = Expiring {
    what: "payment token",
    records: TableDefinition::new("payment_tokens"),
    by_expiry: TableDefinition::new("payment_tokens_by_expiry"),
};
/// Verification codes on their way to their owner: event id → [`VerificationEmail`].
const VERIFICATION_EMAILS: Expiring = Expiring {
    what: "verification email",
    records: TableDefinition::new("verification_emails"),
    by_expiry: TableDefinition::new("verification_emails_by_expiry"),
};
/// The outbox: `{position:020}` → [`OutboxEvent`], the position from the counter `outbox`.
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// Every table of records that expire at their `expires_at`.
const EXPIRING: [Expiring; 5] = [
    PAYMENT_TOKENS,
    VERIFICATION_EMAILS,
    IDEMPOTENCY,
    ADJUSTMENT_KEYS,
    REFRESH_TOKENS,
];
/// Most expired records of one kind one write removes (the rest go with the next writes, or
/// [`EmbeddedStore::prune_expired`]); more than any write adds, so the tables cannot outgrow
/// what is live.
const PURGE_BATCH: usize = 64;

/// Most writes one transaction takes; more wait for the next one.
const MAX_GROUP: usize = 1024;

/// [`EmbeddedConfig::commit_interval`]'s default. Measured at 2,500 orders/s (BENCHMARKS.md):
/// 2 ms took 14% off the CPU per order against none, for 8 ms more on the p99 from accepted to
/// invoiced; 4 ms takes another 9% off, for 7 ms more (72 ms); 5 ms 14%, for 14 ms more.
const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(4);

/// The marker (in `markers`) the health check's probe write sets.
const PROBE_MARKER: &str = "writer_probe";

/// How the embedded store behaves.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// How long a sink's delivery marker is kept (the bridge's dedup window): a redelivery
    /// older than this is delivered again.
    pub delivery_ttl: Duration,
    /// Most writes that wait for the writer; a write beyond waits for room.
    pub write_queue: usize,
    /// How long a write waits for room in a full queue before it answers
    /// [`StoreError::Unavailable`].
    pub write_queue_wait: Duration,
    /// The least time between the starts of two commits under load. A write that comes sooner
    /// after the previous commit of several writes began waits for the rest of this time, and
    /// commits with every write that came meanwhile: fewer and larger commits, each writing and
    /// syncing the pages it shares with its neighbours once. A write after a quiet spell, or
    /// after a commit of one write (a caller writing one after another), commits at once. Zero
    /// commits each group as soon as the previous one is done.
    pub commit_interval: Duration,
    /// Most memory redb keeps of the file's pages (its own default is 1 GiB, which a long run
    /// fills as the file grows); pages beyond are read again through the OS's page cache.
    pub cache_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            delivery_ttl: DEFAULT_DELIVERY_TTL,
            write_queue: 4 * MAX_GROUP,
            write_queue_wait: Duration::from_secs(5),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    order_id: String,
    fingerprint: String,
    expires_at: i64,
}

/// The redb-backed [`Store`]. Clones share one database; when the last clone is dropped the
/// writer finishes the queued writes and the file is closed, so it can be opened again.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
    path: PathBuf,
    /// [`EmbeddedConfig::delivery_ttl`], ms.
    delivery_ttl_ms: i64,
    /// No delivery marker is older than this (ms); see [`OldestDelivery`].
    oldest_delivery: Arc<OldestDelivery>,
    write_queue_wait: Duration,
}

struct Writer {
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file `state.redb` in `dir`, with the default
    /// [`EmbeddedConfig`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &EmbeddedConfig::default())
    }

    /// Opens (or creates) the database file `state.redb` in `dir`.
    pub fn open_with(dir: &Path, config: &EmbeddedConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join("state.redb");
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .create(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        Self::start(db, path, config)
    }

    /// A store on another storage than a file (redb's `InMemoryBackend`, or a disk that fails
    /// on demand in tests); its [`EmbeddedStore::path`] is empty.
    pub fn with_backend(
        backend: impl redb::StorageBackend,
        config: &EmbeddedConfig,
    ) -> Result<Self> {
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| StoreError::Unavailable(format!("cannot open the store: {e}")))?;
        Self::start(db, PathBuf::new(), config)
    }

    fn start(db: Database, path: PathBuf, config: &EmbeddedConfig) -> Result<Self> {
        let db = Arc::new(db);
        // Create every table up front, so reads never see a missing table.
        {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.open_table(PRODUCTS).map_err(unavailable)?;
            txn.open_table(ORDERS).map_err(unavailable)?;
            txn.open_table(CUSTOMER_ORDERS).map_err(unavailable)?;
            txn.open_table(RESERVATIONS).map_err(unavailable)?;
            txn.open_table(PAYMENTS).map_err(unavailable)?;
            txn.open_table(INVOICES).map_err(unavailable)?;
            txn.open_table(COUNTERS).map_err(unavailable)?;
            txn.open_table(DELIVERIES).map_err(unavailable)?;
            txn.open_table(DELIVERIES_BY_TIME).map_err(unavailable)?;
            txn.open_table(ACCOUNTS).map_err(unavailable)?;
            txn.open_table(ACCOUNT_EMAILS).map_err(unavailable)?;
            txn.open_table(VERIFICATIONS).map_err(unavailable)?;
            txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
            txn.open_table(REFRESH_FAMILY_EXPIRY).map_err(unavailable)?;
            txn.open_table(REFRESH_FAMILIES_BY_EXPIRY)
                .map_err(unavailable)?;
            txn.open_table(MARKERS).map_err(unavailable)?;
            txn.open_table(REFUNDS).map_err(unavailable)?;
            txn.open_table(UNPAID).map_err(unavailable)?;
            txn.open_table(UNPAID_BY_CUSTOMER).map_err(unavailable)?;
            txn.open_table(OUTBOX).map_err(unavailable)?;
            for expiring in EXPIRING {
                txn.open_table(expiring.records).map_err(unavailable)?;
                txn.open_table(expiring.by_expiry).map_err(unavailable)?;
            }
            let tx = Tx::new(&txn);
            backfill_unpaid_in(&tx)?;
            backfill_expiry_in(&tx)?;
            drop(tx);
            txn.commit().map_err(unavailable)?;
        }
        let (writes, queue) = mpsc::channel(config.write_queue.max(1));
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let interval = config.commit_interval;
                move || writer_loop(writer_db, queue, interval)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        let writer = Arc::new(Writer {
            queue: Some(writes),
            thread: Some(thread),
        });
        Ok(EmbeddedStore {
            db,
            writer,
            path,
            delivery_ttl_ms: i64::try_from(config.delivery_ttl.as_millis()).unwrap_or(i64::MAX),
            oldest_delivery: Arc::new(OldestDelivery::unknown()),
            write_queue_wait: config.write_queue_wait,
        })
    }

    /// Removes what has expired by `now` (ms), at most `limit` records of each kind, oldest
    /// first (see [What expires](self#what-expires)); returns how many went. Fewer than `limit`
    /// of every kind: nothing expired is left.
    pub async fn prune_expired(&self, now: i64, limit: usize) -> Result<usize> {
        let delivery_ttl = self.delivery_ttl_ms;
        let oldest_delivery = self.oldest_delivery.clone();
        self.write(move |txn| {
            let mut removed = 0;
            for expiring in EXPIRING {
                removed += expiring.purge(txn, now, limit)?;
            }
            removed += purge_families_in(txn, now, limit)?;
            removed += purge_deliveries_in(
                txn,
                now.saturating_sub(delivery_ttl),
                limit,
                &oldest_delivery,
            )?;
            Ok(removed)
        })
        .await
    }

    /// Runs [`EmbeddedStore::prune_expired`] every `every` until `shutdown`, in batches until
    /// nothing expired is left.
    pub async fn prune_periodically(
        self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        const BATCH: usize = 1024;
        let prune = async {
            loop {
                tokio::time::sleep(every).await;
                loop {
                    let now = orderflow_schemas::now_millis();
                    match self.prune_expired(now, BATCH).await {
                        Ok(removed) if removed > 0 => {
                            tracing::debug!(removed, "Pruned expired records.");
                            if removed < BATCH {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "Pruning expired records failed.");
                            break;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = prune => {}
            () = shutdown => {}
        }
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction shared with other concurrent writes; resolves once the
    /// transaction is durable.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Tx) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob {
            f,
            result: None,
            reply: Some(reply),
        });
        let queue = self
            .writer
            .queue
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        match tokio::time::timeout(self.write_queue_wait, queue.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(StoreError::Unavailable(
                    "the store writer has stopped".into(),
                ))
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "the store's write queue has been full for {:?}",
                    self.write_queue_wait
                )))
            }
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }

    fn read(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(unavailable)
    }
}

trait Job: Send {
    /// Runs the write; false when it failed (its error is kept for the reply).
    fn run(&mut self, txn: &Tx) -> bool;
    /// Replies with the write's result, or with the commit's error.
    fn finish(&mut self, commit: Result<()>);
}

struct TypedJob<T, F> {
    f: F,
    result: Option<Result<T>>,
    reply: Option<oneshot::Sender<Result<T>>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: Fn(&Tx) -> Result<T> + Send,
{
    fn run(&mut self, txn: &Tx) -> bool {
        // A write that panics (a bug) fails alone; the writer and the other writes go on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.f)(txn)))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %why, "A store write panicked.");
                Err(StoreError::Invalid(format!("the write panicked: {why}")))
            });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(&mut self, commit: Result<()>) {
        let result = match (commit, self.result.take()) {
            (Ok(()), Some(result)) => result,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("write did not run".into())),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

fn writer_loop(db: Arc<Database>, mut queue: mpsc::Receiver<Box<dyn Job>>, interval: Duration) {
    // When the last group began, if it had company: a lone caller writing one write after
    // another has nobody to wait for.
    let mut last_shared: Option<std::time::Instant> = None;
    while let Some(first) = queue.blocking_recv() {
        // Writes that come while this one waits out the interval join its group.
        if let Some(wait) = last_shared.and_then(|at| interval.checked_sub(at.elapsed())) {
            std::thread::sleep(wait);
        }
        let began = std::time::Instant::now();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        last_shared = (group.len() > 1).then_some(began);
        let all_ok = match db.begin_write() {
            Ok(txn) => {
                let tx = Tx::new(&txn);
                let ok = group.iter_mut().all(|job| job.run(&tx));
                drop(tx);
                if ok {
                    let commit = txn.commit().map_err(unavailable);
                    for job in &mut group {
                        job.finish(commit.clone());
                    }
                    continue;
                }
                let _ = txn.abort();
                false
            }
            Err(e) => {
                let e = unavailable(e);
                for job in &mut group {
                    job.finish(Err(e.clone()));
                }
                continue;
            }
        };
        debug_assert!(!all_ok);
        // One write failed: run each alone so the others still land.
        for job in &mut group {
            let commit = match db.begin_write() {
                Ok(txn) => {
                    let tx = Tx::new(&txn);
                    let ok = job.run(&tx);
                    drop(tx);
                    if ok {
                        txn.commit().map_err(unavailable)
                    } else {
                        let _ = txn.abort();
                        Ok(()) // the job's own error is the reply
                    }
                }
                Err(e) => Err(unavailable(e)),
            };
            job.finish(commit);
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn from_bytes<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Reads and decodes one JSON record from a table.
fn get_json<T, Tbl>(table: &Tbl, what: &str, key: &str) -> Result<Option<T>>
where
    T: DeserializeOwned,
    Tbl: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).map_err(unavailable)? {
        Some(guard) => from_bytes(what, guard.value()).map(Some),
        None => Ok(None),
    }
}

fn put_json<T: Serialize>(
    txn: &Tx,
    def: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<()> {
    let bytes = to_bytes(value)?;
    txn.open_table(def)
        .map_err(unavailable)?
        .insert(key, bytes.as_slice())
        .map_err(unavailable)?;
    Ok(())
}

fn compound(a: &str, b: &str) -> String {
    format!("{a}\u{0}{b}")
}

/// A table of secrets that must not outlive `expires_at` (a JSON record with that field),
/// with an index by expiry (`<expires_at, 20 digits> \0 key` → ()) through which writes
/// remove the expired ones without a scan. Reads treat an expired record as gone already.
#[derive(Clone, Copy)]
struct Expiring {
    what: &'static str,
    records: TableDefinition<'static, &'static str, &'static [u8]>,
    by_expiry: TableDefinition<'static, &'static str, ()>,
}

/// The one field every [`Expiring`] record has.
#[derive(serde::Deserialize)]
struct Expiry {
    expires_at: i64,
}

fn expiry_key(expires_at: i64, key: &str) -> String {
    format!("{:020}\u{0}{key}", expires_at.max(0))
}

impl Expiring {
    /// Stores (or replaces) the record under `key`.
    fn put<T: Serialize>(self, txn: &Tx, key: &str, value: &T, expires_at: i64) -> Result<()> {
        self.remove(txn, key)?;
        put_json(txn, self.records, key, value)?;
        txn.open_table(self.by_expiry)
            .map_err(unavailable)?
            .insert(expiry_key(expires_at, key).as_str(), ())
            .map_err(unavailable)?;
        Ok(())
    }

    /// The record under `key` unless it has expired at `now`.
    fn get<T: DeserializeOwned>(
        self,
        txn: &ReadTransaction,
        key: &str,
        now: i64,
    ) -> Result<Option<T>> {
        let table = txn.open_table(self.records).map_err(unavailable)?;
        let Some(guard) = table.get(key).map_err(unavailable)? else {
            return Ok(None);
        };
        let bytes = guard.value();
        if from_bytes::<Expiry>(self.what, bytes)?.expires_at <= now {
            return Ok(None);
        }
        from_bytes(self.what, bytes).map(Some)
    }

    /// Removes the record under `key`, if any, with its index entry.
    fn remove(self, txn: &Tx, key: &str) -> Result<()> {
        let removed = txn
            .open_table(self.records)
            .map_err(unavailable)?
            .remove(key)
            .map_err(unavailable)?
            .map(|old| from_bytes::<Expiry>(self.what, old.value()));
        if let Some(old) = removed {
            txn.open_table(self.by_expiry)
                .map_err(unavailable)?
                .remove(expiry_key(old?.expires_at, key).as_str())
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Removes up to `limit` records that expired by `now`, oldest first; how many went.
    fn purge(self, txn: &Tx, now: i64, limit: usize) -> Result<usize> {
        let expired = take_expired(txn, self.by_expiry, now, limit)?;
        if !expired.is_empty() {
            let mut records = txn.open_table(self.records).map_err(unavailable)?;
            for key in &expired {
                records.remove(key.as_str()).map_err(unavailable)?;
            }
        }
        Ok(expired.len())
    }
}

/// Removes up to `limit` entries of an index by time (`<ms, 20 digits> \0 key` → ()) at or
/// before `until`, oldest first, and returns their keys.
fn take_expired(
    txn: &Tx,
    index: TableDefinition<&str, ()>,
    until: i64,
    limit: usize,
) -> Result<Vec<String>> {
    if until < 0 {
        return Ok(Vec::new());
    }
    let mut index = txn.open_table(index).map_err(unavailable)?;
    let end = expiry_key(until.saturating_add(1), "");
    let entries: Vec<String> = index
        .range(..end.as_str())
        .map_err(unavailable)?
        .take(limit)
        .map(|entry| entry.map(|(key, _)| key.value().to_string()))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        index.remove(entry.as_str()).map_err(unavailable)?;
        if let Some((_, key)) = entry.split_once('\u{0}') {
            keys.push(key.to_string());
        }
    }
    Ok(keys)
}

/// Marks `sink \0 id` keys delivered at `at`, each indexed by that time.
fn mark_delivered_in(txn: &Tx, keys: &[String], at: i64) -> Result<()> {
    let mut table = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let mut index = txn.open_table(DELIVERIES_BY_TIME).map_err(unavailable)?;
    for key in keys {
        if let Some(before) = table.insert(key.as_str(), at).map_err(unavailable)? {
            index
                .remove(expiry_key(before.value(), key).as_str())
                .map_err(unavailable)?;
        }
        index
            .insert(expiry_key(at, key).as_str(), ())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// A lower bound on when the oldest delivery marker was delivered, so that the writes that add
/// markers skip looking for expired ones while none can have expired (nearly always: markers
/// live for days). Read and set by the writer only; a bound set by a write that is rolled back
/// is still a bound (too low at worst, which costs one look).
#[derive(Debug)]
struct OldestDelivery(std::sync::atomic::AtomicI64);

impl OldestDelivery {
    /// Not known yet: the first purge looks, and learns it.
    fn unknown() -> Self {
        OldestDelivery(std::sync::atomic::AtomicI64::new(i64::MIN))
    }

    /// Whether a marker may have been delivered at or before `delivered_by`.
    fn may_hold_any_by(&self, delivered_by: i64) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) <= delivered_by
    }

    /// A marker delivered at `at` is (about to be) stored.
    fn added(&self, at: i64) {
        self.0.fetch_min(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// The oldest marker left after a purge was delivered at `at` (`None`: none is left).
    fn set(&self, at: Option<i64>) {
        self.0
            .store(at.unwrap_or(i64::MAX), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Removes up to `limit` delivery markers delivered at or before `delivered_by`.
fn purge_deliveries_in(
    txn: &Tx,
    delivered_by: i64,
    limit: usize,
    oldest: &OldestDelivery,
) -> Result<usize> {
    if !oldest.may_hold_any_by(delivered_by) {
        return Ok(0);
    }
    let expired = take_expired(txn, DELIVERIES_BY_TIME, delivered_by, limit)?;
    if !expired.is_empty() {
        let mut table = txn.open_table(DELIVERIES).map_err(unavailable)?;
        for key in &expired {
            table.remove(key.as_str()).map_err(unavailable)?;
        }
    }
    if expired.len() < limit {
        // Every expired marker is gone: the oldest left says when to look again.
        oldest.set(first_time_in(txn, DELIVERIES_BY_TIME)?);
    }
    Ok(expired.len())
}

/// The time of the first (oldest) entry of an index by time, if it has any.
fn first_time_in(txn: &Tx, index: TableDefinition<&str, ()>) -> Result<Option<i64>> {
    let index = txn.open_table(index).map_err(unavailable)?;
    let Some((key, _)) = index.first().map_err(unavailable)? else {
        return Ok(None);
    };
    let key = key.value();
    let time = key.split_once('\u{0}').map_or(key, |(time, _)| time);
    time.parse()
        .map(Some)
        .map_err(|_| StoreError::Corrupt(format!("index entry {key:?} has no time")))
}

/// Makes the family (`customer \0 family`) live at least until `expires_at`.
fn extend_family_in(txn: &Tx, family: &str, expires_at: i64) -> Result<()> {
    let mut expiry = txn.open_table(REFRESH_FAMILY_EXPIRY).map_err(unavailable)?;
    let before = expiry.get(family).map_err(unavailable)?.map(|g| g.value());
    if before.is_some_and(|b| b >= expires_at) {
        return Ok(());
    }
    expiry.insert(family, expires_at).map_err(unavailable)?;
    let mut index = txn
        .open_table(REFRESH_FAMILIES_BY_EXPIRY)
        .map_err(unavailable)?;
    if let Some(before) = before {
        index
            .remove(expiry_key(before, family).as_str())
            .map_err(unavailable)?;
    }
    index
        .insert(expiry_key(expires_at, family).as_str(), ())
        .map_err(unavailable)?;
    Ok(())
}

/// Removes up to `limit` refresh token families whose last token expired by `now`.
fn purge_families_in(txn: &Tx, now: i64, limit: usize) -> Result<usize> {
    let expired = take_expired(txn, REFRESH_FAMILIES_BY_EXPIRY, now, limit)?;
    let mut families = txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
    let mut expiry = txn.open_table(REFRESH_FAMILY_EXPIRY).map_err(unavailable)?;
    for family in &expired {
        families.remove(family.as_str()).map_err(unavailable)?;
        expiry.remove(family.as_str()).map_err(unavailable)?;
    }
    Ok(expired.len())
}

/// Indexes by expiry what a store written before the indexes existed holds, once (marker
/// `expiry_index`): idempotency keys, stock adjustment keys, refresh tokens and their
/// families, delivery markers. A family without a token left lives one more day (its access
/// tokens have expired by then).
fn backfill_expiry_in(txn: &Tx) -> Result<()> {
    const MARKER: &str = "expiry_index";
    let mut markers = txn.open_table(MARKERS).map_err(unavailable)?;
    if markers.get(MARKER).map_err(unavailable)?.is_some() {
        return Ok(());
    }
    let now = orderflow_schemas::now_millis();
    markers.insert(MARKER, now).map_err(unavailable)?;
    drop(markers);
    for expiring in [IDEMPOTENCY, ADJUSTMENT_KEYS, REFRESH_TOKENS] {
        let records = txn.open_table(expiring.records).map_err(unavailable)?;
        let mut index = txn.open_table(expiring.by_expiry).map_err(unavailable)?;
        for entry in records.iter().map_err(unavailable)? {
            let (key, value) = entry.map_err(unavailable)?;
            let expires_at = from_bytes::<Expiry>(expiring.what, value.value())?.expires_at;
            index
                .insert(expiry_key(expires_at, key.value()).as_str(), ())
                .map_err(unavailable)?;
        }
    }
    let mut last_token = std::collections::HashMap::<String, i64>::new();
    {
        let tokens = txn
            .open_table(REFRESH_TOKENS.records)
            .map_err(unavailable)?;
        for entry in tokens.iter().map_err(unavailable)? {
            let (_, value) = entry.map_err(unavailable)?;
            let token: RefreshToken = from_bytes("refresh token", value.value())?;
            let family = compound(&token.customer_id, &token.family_id);
            let at = last_token.entry(family).or_insert(token.expires_at);
            *at = (*at).max(token.expires_at);
        }
    }
    let families: Vec<String> = txn
        .open_table(REFRESH_FAMILIES)
        .map_err(unavailable)?
        .iter()
        .map_err(unavailable)?
        .map(|entry| entry.map(|(key, _)| key.value().to_string()))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    for family in families {
        let expires_at = last_token
            .get(&family)
            .copied()
            .unwrap_or(now + 24 * 60 * 60 * 1000);
        extend_family_in(txn, &family, expires_at)?;
    }
    let delivered: Vec<(String, i64)> = txn
        .open_table(DELIVERIES)
        .map_err(unavailable)?
        .iter()
        .map_err(unavailable)?
        .map(|entry| entry.map(|(key, at)| (key.value().to_string(), at.value())))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    let mut index = txn.open_table(DELIVERIES_BY_TIME).map_err(unavailable)?;
    for (key, at) in delivered {
        index
            .insert(expiry_key(at, &key).as_str(), ())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Moves an order's read model forward; see [`OrderStore::apply_status`].
fn apply_status_in(txn: &Tx, update: &StatusUpdate) -> Result<()> {
    let existing = order_in(txn, &update.order_id)?;
    apply_status_to(txn, existing, update)
}

/// The order's record as the transaction sees it.
fn order_in(txn: &Tx, order_id: &str) -> Result<Option<OrderRecord>> {
    let orders = txn.open_table(ORDERS).map_err(unavailable)?;
    get_json(&*orders, "order", order_id)
}

/// [`apply_status_in`] on the order's record read earlier in the same transaction (`None`: the
/// store has no such order), which saves reading it again.
fn apply_status_to(txn: &Tx, existing: Option<OrderRecord>, update: &StatusUpdate) -> Result<()> {
    if let Some(order) = existing.as_ref().filter(|o| o.order_id != update.order_id) {
        return Err(StoreError::Invalid(format!(
            "a status change for order {} applied to order {}",
            update.order_id, order.order_id
        )));
    }
    let mut orders = txn.open_table(ORDERS).map_err(unavailable)?;
    let new = existing.is_none();
    let mut order = match existing {
        Some(order) => order,
        // An event for an order this store never saw (produced elsewhere): start its record.
        None => OrderRecord {
            order_id: update.order_id.clone(),
            customer_id: update.customer_id.clone(),
            status: update.status,
            items: Vec::new(),
            shipping_address: None,
            payment_method: None,
            pricing: None,
            invoice_number: None,
            created_at: update.at,
            updated_at: update.at,
            timeline: Vec::new(),
            revision: update.revision,
            payment_claim: None,
        },
    };
    if order.timeline.iter().any(|t| t.event_id == update.event_id) {
        return Ok(());
    }
    order.timeline.push(TimelineEntry {
        status: update.status,
        event_id: update.event_id.clone(),
        at: update.at,
        detail: update.detail.clone(),
    });
    order.timeline.sort_by_key(|t| (t.status.rank(), t.at));
    if update.status.rank() >= order.status.rank() {
        order.status = update.status;
    }
    order.updated_at = order.updated_at.max(update.at);
    // A late step of an earlier revision does not price the order's current one.
    if update.pricing.is_some() && update.revision >= order.revision {
        order.pricing = update.pricing.clone();
    }
    if update.invoice_number.is_some() {
        order.invoice_number = update.invoice_number.clone();
    }
    let bytes = to_bytes(&order)?;
    orders
        .insert(update.order_id.as_str(), bytes.as_slice())
        .map_err(unavailable)?;
    drop(orders);
    if matches!(
        update.status,
        OrderStatus::Rejected | OrderStatus::PaymentFailed | OrderStatus::Paid
    ) && order.payment_method.as_deref() == Some(orderflow_schemas::PaymentMethod::BANK_TRANSFER)
    {
        // Rejected at validation, or paid: no transfer is awaited any more.
        unindex_unpaid_in(txn, &order)?;
    }
    if new {
        // An order created here is indexed by `create_order` already.
        txn.open_table(CUSTOMER_ORDERS)
            .map_err(unavailable)?
            .insert(compound(&order.customer_id, &order.order_id).as_str(), ())
            .map_err(unavailable)?;
    }
    Ok(())
}

fn release_in(txn: &Tx, order_id: &str) -> Result<bool> {
    settle_in(txn, order_id, Settle::GiveBack)
}

/// What becomes of an order's reserved units when its reservation is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// They go back to the available stock (payment failed, cancelled).
    GiveBack,
    /// They leave the warehouse (shipped): out of `reserved`, not back into `stock`.
    Consume,
}

/// Settles the order's reservation once: `false` when there was nothing (left) to settle.
fn settle_in(txn: &Tx, order_id: &str, settle: Settle) -> Result<bool> {
    let mut reservations = txn.open_table(RESERVATIONS).map_err(unavailable)?;
    let Some(mut reservation) =
        get_json::<Reservation, _>(&*reservations, "reservation", order_id)?
    else {
        return Ok(false);
    };
    let Reservation::Reserved {
        lines, released, ..
    } = &mut reservation
    else {
        return Ok(false);
    };
    if *released {
        return Ok(false);
    }
    let mut products = txn.open_table(PRODUCTS).map_err(unavailable)?;
    for line in lines.iter() {
        if let Some(mut p) = get_json::<Product, _>(&*products, "product", &line.sku)? {
            let q = i64::from(line.quantity);
            if settle == Settle::GiveBack {
                p.stock += q;
            }
            p.reserved -= q;
            let bytes = to_bytes(&p)?;
            products
                .insert(p.sku.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
        }
    }
    *released = true;
    let bytes = to_bytes(&reservation)?;
    reservations
        .insert(order_id, bytes.as_slice())
        .map_err(unavailable)?;
    Ok(true)
}

// --- Accounts -------------------------------------------------------------

/// Revokes one family (`customer \0 family`); one already gone (expired) stays gone, which
/// counts as revoked.
fn revoke_family_in(txn: &Tx, customer_id: &str, family_id: &str) -> Result<()> {
    let key = compound(customer_id, family_id);
    let mut families = txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
    if families.get(key.as_str()).map_err(unavailable)?.is_some() {
        families.insert(key.as_str(), true).map_err(unavailable)?;
    }
    Ok(())
}

fn family_revoked(txn: &Tx, customer_id: &str, family_id: &str) -> Result<bool> {
    let table = txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
    revoked_in(&*table, customer_id, family_id)
}

/// Whether the family is marked revoked in the `refresh_families` table (read or write side).
fn revoked_in(
    table: &impl ReadableTable<&'static str, bool>,
    customer_id: &str,
    family_id: &str,
) -> Result<bool> {
    Ok(table
        .get(compound(customer_id, family_id).as_str())
        .map_err(unavailable)?
        // A family never stored is no login: nothing may use it.
        .is_none_or(|g| g.value()))
}

fn rotate_in(
    txn: &Tx,
    presented: &str,
    next_hash: &str,
    next_expires_at: i64,
    now: i64,
) -> Result<RotateOutcome> {
    let table = txn
        .open_table(REFRESH_TOKENS.records)
        .map_err(unavailable)?;
    let Some(mut token) = get_json::<RefreshToken, _>(&*table, "refresh token", presented)? else {
        return Ok(RotateOutcome::Unknown);
    };
    drop(table);
    if family_revoked(txn, &token.customer_id, &token.family_id)? {
        return Ok(RotateOutcome::Revoked);
    }
    if token.used {
        revoke_family_in(txn, &token.customer_id, &token.family_id)?;
        return Ok(RotateOutcome::Reused);
    }
    if token.expires_at <= now {
        return Ok(RotateOutcome::Expired);
    }
    token.used = true;
    REFRESH_TOKENS.put(txn, presented, &token, token.expires_at)?;
    let next = RefreshToken {
        token_hash: next_hash.to_string(),
        family_id: token.family_id.clone(),
        customer_id: token.customer_id.clone(),
        expires_at: next_expires_at,
        used: false,
    };
    REFRESH_TOKENS.purge(txn, now, PURGE_BATCH)?;
    purge_families_in(txn, now, PURGE_BATCH)?;
    REFRESH_TOKENS.put(txn, next_hash, &next, next_expires_at)?;
    extend_family_in(
        txn,
        &compound(&token.customer_id, &token.family_id),
        next_expires_at,
    )?;
    Ok(RotateOutcome::Rotated {
        customer_id: token.customer_id,
        family_id: token.family_id,
    })
}

fn check_verification_in(
    txn: &Tx,
    customer_id: &str,
    code_hash: &str,
    now: i64,
) -> Result<VerifyOutcome> {
    let mut table = txn.open_table(VERIFICATIONS).map_err(unavailable)?;
    let Some(mut code) = get_json::<VerificationCode, _>(&*table, "verification", customer_id)?
    else {
        return Ok(VerifyOutcome::NoCode);
    };
    if code.attempts >= MAX_VERIFICATION_ATTEMPTS {
        table.remove(customer_id).map_err(unavailable)?;
        return Ok(VerifyOutcome::NoCode);
    }
    if code.expires_at <= now {
        table.remove(customer_id).map_err(unavailable)?;
        return Ok(VerifyOutcome::Expired);
    }
    if code.code_hash != code_hash {
        code.attempts += 1;
        let remaining = MAX_VERIFICATION_ATTEMPTS - code.attempts;
        if remaining == 0 {
            table.remove(customer_id).map_err(unavailable)?;
        } else {
            let bytes = to_bytes(&code)?;
            table
                .insert(customer_id, bytes.as_slice())
                .map_err(unavailable)?;
        }
        return Ok(VerifyOutcome::Wrong { remaining });
    }
    table.remove(customer_id).map_err(unavailable)?;
    drop(table);
    let accounts = txn.open_table(ACCOUNTS).map_err(unavailable)?;
    let account: Option<Account> = get_json(&*accounts, "account", customer_id)?;
    drop(accounts);
    if let Some(mut account) = account {
        account.verified = true;
        account.updated_at = account.updated_at.max(now);
        put_json(txn, ACCOUNTS, customer_id, &account)?;
    }
    Ok(VerifyOutcome::Verified)
}

#[async_trait]
impl Store for EmbeddedStore {
    /// A read, and a write through the writer's queue (one tiny commit): fails when the
    /// writer has stopped, its queue stays full, or the disk refuses to commit.
    async fn healthcheck(&self) -> Result<()> {
        let txn = self.read()?;
        txn.open_table(COUNTERS).map_err(unavailable)?;
        drop(txn);
        if !self.writer.alive() {
            return Err(StoreError::Unavailable(
                "the store writer has stopped".into(),
            ));
        }
        let now = orderflow_schemas::now_millis();
        self.write(move |txn| {
            txn.open_table(MARKERS)
                .map_err(unavailable)?
                .insert(PROBE_MARKER, now)
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn set_marker(&self, name: &str, at: i64) -> Result<bool> {
        let name = name.to_string();
        self.write(move |txn| {
            let mut table = txn.open_table(MARKERS).map_err(unavailable)?;
            if table.get(name.as_str()).map_err(unavailable)?.is_some() {
                return Ok(false);
            }
            table.insert(name.as_str(), at).map_err(unavailable)?;
            Ok(true)
        })
        .await
    }
}

// --- Cancel and ship -----------------------------------------------------

use orderflow_schemas::OrderStatus;

/// Moves an order to a final status in one transaction (the caller checked it may).
fn finish_in(
    txn: &Tx,
    mut order: OrderRecord,
    status: OrderStatus,
    detail: Option<&str>,
    at: i64,
) -> Result<OrderRecord> {
    order.status = status;
    order.timeline.push(TimelineEntry {
        status,
        event_id: status.event_id(&order.order_id),
        at,
        detail: detail.map(str::to_string),
    });
    order.timeline.sort_by_key(|t| (t.status.rank(), t.at));
    order.updated_at = order.updated_at.max(at);
    put_json(txn, ORDERS, &order.order_id, &order)?;
    Ok(order)
}

/// See [`OrderStore::cancel_order`].
fn cancel_in(txn: &Tx, order_id: &str, reason: Option<&str>, at: i64) -> Result<CancelOutcome> {
    let Some(order) = order_in(txn, order_id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    let (order, first) = match order.status {
        OrderStatus::Shipped => return Ok(CancelOutcome::Shipped),
        OrderStatus::Cancelled => (order, false),
        _ => (
            finish_in(txn, order, OrderStatus::Cancelled, reason, at)?,
            true,
        ),
    };
    release_in(txn, order_id)?;
    // Cancelled through the API, which announces it: no longer the expiry's business.
    unindex_unpaid_in(txn, &order)?;
    let payments = txn.open_table(PAYMENTS).map_err(unavailable)?;
    let payment =
        get_json::<PaymentRecord, _>(&*payments, "payment", order_id)?.filter(|p| p.approved);
    drop(payments);
    if first {
        let refund = payment
            .as_ref()
            .map(|p| (p.amount_cents, p.currency.clone()));
        queue_in(txn, &OutboxEvent::of(&cancellation_event(&order, refund))?)?;
    }
    Ok(CancelOutcome::Cancelled {
        order: Box::new(order),
        paid: payment.is_some(),
    })
}

/// See [`OrderStore::ship_order`].
fn ship_in(txn: &Tx, order_id: &str, at: i64) -> Result<ShipOutcome> {
    let Some(order) = order_in(txn, order_id)? else {
        return Ok(ShipOutcome::NotFound);
    };
    Ok(match order.status {
        OrderStatus::Shipped => ShipOutcome::Shipped(Box::new(order)),
        OrderStatus::Paid | OrderStatus::Invoiced => {
            // The shipped units leave `reserved` in the same transaction.
            settle_in(txn, order_id, Settle::Consume)?;
            let order = finish_in(txn, order, OrderStatus::Shipped, None, at)?;
            queue_in(txn, &OutboxEvent::of(&crate::outbox::shipped(&order))?)?;
            ShipOutcome::Shipped(Box::new(order))
        }
        other => ShipOutcome::NotReady(other),
    })
}

// --- Modifications ----------------------------------------------------------------

/// See [`OrderStore::modify_order`] and [`OrderStore::reprice_order`]: the order, its reservation and the
/// products change in one transaction, so a claim, a cancel or a reservation of the same
/// products sees all or none.
fn modify_in(txn: &Tx, order_id: &str, change: &OrderChange, at: i64) -> Result<ModifyOutcome> {
    let Some(mut order) = order_in(txn, order_id)? else {
        return Ok(ModifyOutcome::NotFound);
    };
    let refused = |order: &OrderRecord| ModifyOutcome::NotModifiable {
        status: order.status,
        claimed: order.payment_claim.is_some(),
    };
    if order.status != OrderStatus::Validated || order.payment_claim.is_some() {
        return Ok(refused(&order));
    }
    let mut reservations = txn.open_table(RESERVATIONS).map_err(unavailable)?;
    let Some(Reservation::Reserved {
        lines,
        at: reserved_at,
        released: false,
        ..
    }) = get_json::<Reservation, _>(&*reservations, "reservation", order_id)?
    else {
        return Ok(refused(&order));
    };
    let plan = match change.plan(&lines)? {
        Ok(plan) => plan,
        Err(refusal) => return Ok(refusal),
    };
    if plan.is_unchanged(&lines) {
        return Ok(ModifyOutcome::Modified {
            order: Box::new(order),
            lines,
        });
    }
    if order.revision >= MAX_ORDER_REVISIONS {
        return Ok(ModifyOutcome::TooManyRevisions {
            max: MAX_ORDER_REVISIONS,
        });
    }
    let mut products = txn.open_table(PRODUCTS).map_err(unavailable)?;
    let mut changed = Vec::with_capacity(plan.deltas.len());
    for (sku, delta) in &plan.deltas {
        let Some(mut product) = get_json::<Product, _>(&*products, "product", sku)? else {
            return Err(StoreError::Corrupt(format!(
                "order {order_id} holds units of {sku}, which is not in the catalogue"
            )));
        };
        // A discontinued product gives back, but no more units go out.
        let available = if product.discontinued {
            0
        } else {
            product.stock
        };
        if *delta > available {
            return Ok(ModifyOutcome::Insufficient {
                sku: sku.clone(),
                available,
            });
        }
        product.stock -= delta;
        product.reserved += delta;
        changed.push(product);
    }
    for product in &changed {
        let bytes = to_bytes(product)?;
        products
            .insert(product.sku.as_str(), bytes.as_slice())
            .map_err(unavailable)?;
    }
    drop(products);
    order.revision += 1;
    let reservation = Reservation::Reserved {
        lines: plan.lines.clone(),
        at: reserved_at,
        released: false,
        revision: order.revision,
    };
    let bytes = to_bytes(&reservation)?;
    reservations
        .insert(order_id, bytes.as_slice())
        .map_err(unavailable)?;
    drop(reservations);
    order.items = change.items(&order.items);
    order.pricing = None;
    order.timeline.push(TimelineEntry {
        status: OrderStatus::Validated,
        event_id: orderflow_schemas::OrderModified::event_id_for(order_id, order.revision),
        at,
        detail: Some(change.detail(order.revision)),
    });
    order.timeline.sort_by_key(|t| (t.status.rank(), t.at));
    order.updated_at = order.updated_at.max(at);
    put_json(txn, ORDERS, order_id, &order)?;
    queue_in(txn, &OutboxEvent::of(&crate::outbox::modified(&order))?)?;
    Ok(ModifyOutcome::Modified {
        order: Box::new(order),
        lines: plan.lines,
    })
}

/// See [`PaymentStore::claim_payment`].
fn claim_in(txn: &Tx, order_id: &str, revision: i32) -> Result<PaymentClaim> {
    let Some(mut order) = order_in(txn, order_id)? else {
        return Ok(PaymentClaim::NotFound);
    };
    if order.status.is_final() {
        return Ok(PaymentClaim::Final(order.status));
    }
    if order.revision > revision {
        return Ok(PaymentClaim::Stale {
            current: order.revision,
        });
    }
    if order.revision < revision {
        return Err(StoreError::Invalid(format!(
            "order {order_id} has no revision {revision} (it is at {})",
            order.revision
        )));
    }
    if order.payment_claim.is_none() {
        order.payment_claim = Some(revision);
        put_json(txn, ORDERS, order_id, &order)?;
        // The transfer is being recorded: the order no longer waits for it.
        unindex_unpaid_in(txn, &order)?;
    }
    Ok(PaymentClaim::Granted)
}

// --- Unpaid orders -----------------------------------------------------------------------------

/// The key of an order in [`UNPAID`]: placed times sort as numbers (a time before the epoch
/// sorts as the epoch).
fn unpaid_key(placed_at: i64, order_id: &str) -> String {
    format!("{:020}\u{0}{order_id}", placed_at.max(0))
}

/// Lists the orders that await a transfer in a store written before the index existed, once
/// (marker `unpaid_index`).
fn backfill_unpaid_in(txn: &Tx) -> Result<()> {
    const MARKER: &str = "unpaid_index";
    let mut markers = txn.open_table(MARKERS).map_err(unavailable)?;
    if markers.get(MARKER).map_err(unavailable)?.is_some() {
        return Ok(());
    }
    markers
        .insert(MARKER, orderflow_schemas::now_millis())
        .map_err(unavailable)?;
    drop(markers);
    let orders = txn.open_table(ORDERS).map_err(unavailable)?;
    let mut awaiting = Vec::new();
    for entry in orders.iter().map_err(unavailable)? {
        let (_, value) = entry.map_err(unavailable)?;
        let order: OrderRecord = from_bytes("order", value.value())?;
        if awaits_transfer(&order) {
            awaiting.push(order);
        }
    }
    drop(orders);
    for order in &awaiting {
        index_unpaid_in(txn, order)?;
    }
    Ok(())
}

/// Lists the order among those awaiting a transfer.
fn index_unpaid_in(txn: &Tx, order: &OrderRecord) -> Result<()> {
    txn.open_table(UNPAID)
        .map_err(unavailable)?
        .insert(
            unpaid_key(order.created_at, &order.order_id).as_str(),
            order.customer_id.as_str(),
        )
        .map_err(unavailable)?;
    txn.open_table(UNPAID_BY_CUSTOMER)
        .map_err(unavailable)?
        .insert(
            compound(&order.customer_id, &order.order_id).as_str(),
            order.created_at,
        )
        .map_err(unavailable)?;
    Ok(())
}

/// Drops the order from those awaiting a transfer (nothing when it is not there).
fn unindex_unpaid_in(txn: &Tx, order: &OrderRecord) -> Result<()> {
    txn.open_table(UNPAID)
        .map_err(unavailable)?
        .remove(unpaid_key(order.created_at, &order.order_id).as_str())
        .map_err(unavailable)?;
    txn.open_table(UNPAID_BY_CUSTOMER)
        .map_err(unavailable)?
        .remove(compound(&order.customer_id, &order.order_id).as_str())
        .map_err(unavailable)?;
    Ok(())
}

/// How many of the customer's orders await a transfer.
fn count_unpaid_in(txn: &Tx, customer_id: &str) -> Result<u32> {
    let index = txn.open_table(UNPAID_BY_CUSTOMER).map_err(unavailable)?;
    let start = compound(customer_id, "");
    let end = format!("{customer_id}\u{1}");
    let mut open = 0;
    for entry in index
        .range(start.as_str()..end.as_str())
        .map_err(unavailable)?
    {
        let (key, _) = entry.map_err(unavailable)?;
        let order_id = key.value().rsplit('\u{0}').next().unwrap_or_default();
        // An expired order stays listed until its announcement: it no longer counts.
        if order_in(txn, order_id)?.is_some_and(|o| awaits_transfer(&o)) {
            open += 1;
        }
    }
    Ok(open)
}

/// See [`OrderStore::expire_unpaid_order`]: the check and the cancel are one transaction, so a
/// claim lands wholly before (refused here) or after (refused there).
fn expire_in(txn: &Tx, order_id: &str, reason: &str, at: i64) -> Result<ExpireOutcome> {
    let Some(order) = order_in(txn, order_id)? else {
        return Ok(ExpireOutcome::NotFound);
    };
    if order.status == OrderStatus::Cancelled {
        return Ok(ExpireOutcome::Cancelled(Box::new(order)));
    }
    if !awaits_transfer(&order) {
        return Ok(ExpireOutcome::NotAwaiting(order.status));
    }
    let order = finish_in(txn, order, OrderStatus::Cancelled, Some(reason), at)?;
    release_in(txn, order_id)?;
    Ok(ExpireOutcome::Cancelled(Box::new(order)))
}
