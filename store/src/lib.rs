//! Orderflow's state: the read model of orders, the catalogue with its stock, payments,
//! invoices, idempotency keys and delivery markers.
//!
//! # Layout
//! - [`Store`]: the one interface every stage uses. Each effect is idempotent by a key derived
//!   from the event (order id, event id), so a redelivered event never applies twice and a
//!   stage can always re-emit the outcome it already recorded.
//! - [`model`]: the records the store keeps.
//! - [`embedded`]: the default implementation on redb, a pure-Rust durable B-tree, under
//!   `--data-dir`. Writes from concurrent callers are grouped into one transaction (group
//!   commit), so a batch of events costs one fsync, not one each.
//! - `scylla`: the ScyllaDB implementation, for services that run apart (`--scylla`), with its
//!   CQL migrations.
//! - [`instrumented`]: [`Instrumented`], a wrapper that records every call's duration and
//!   failures as Prometheus metrics.

pub mod embedded;
pub mod instrumented;
pub mod model;
#[cfg(feature = "scylla")]
pub mod scylla;

use std::time::Duration;

use async_trait::async_trait;

pub use embedded::EmbeddedStore;
pub use instrumented::Instrumented;
pub use model::*;
use orderflow_schemas::OrderItem;
#[cfg(feature = "scylla")]
pub use scylla::{ScyllaConfig, ScyllaStore};

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or could not write; the same call may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be read back; retrying will not help.
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
    /// The caller asked for something the store cannot do with these arguments.
    #[error("invalid store request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether retrying the same call can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The state store. Implementations: [`EmbeddedStore`] (redb, one machine) and `ScyllaStore`
/// (ScyllaDB, the `scylla` feature, on by default); both pass `tests/conformance.rs`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces products (admin, seeding).
    async fn put_products(&self, products: Vec<Product>) -> Result<()>;
    /// Inserts the products whose SKU is not in the catalogue yet; returns how many were new.
    async fn seed_products(&self, products: Vec<Product>) -> Result<usize>;
    async fn get_product(&self, sku: &str) -> Result<Option<Product>>;
    /// The catalogue, ordered by SKU.
    async fn list_products(&self) -> Result<Vec<Product>>;

    /// Records a new order (status `accepted`), or, when the idempotency key was used before by
    /// the same customer and has not expired, returns the order it created instead.
    async fn create_order(
        &self,
        order: OrderRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateOrder>;
    async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>>;
    /// A customer's orders, newest first, at most `limit`, strictly older than `before` (an order
    /// id) when given.
    async fn list_customer_orders(
        &self,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>>;
    /// Orders across customers (the admin list), newest first (by order id, a UUIDv7), at most
    /// `limit`, strictly older than `before` (an order id) when given, narrowed by `filter`.
    /// The status is matched while paging, so a rare status may take a longer scan.
    async fn list_orders(
        &self,
        filter: &OrderFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>>;
    /// Applies a status change to the order's read model: appends to the timeline unless the
    /// event id is there already, and moves the status forward (never back).
    async fn apply_status(&self, update: StatusUpdate) -> Result<()>;

    /// Reserves every item of the order, all or nothing, only where enough stock is available.
    /// Idempotent by order id: a second call returns the first call's outcome and reserves
    /// nothing more.
    async fn reserve(&self, order_id: &str, items: &[OrderItem], at: i64) -> Result<Reservation>;
    /// Gives an order's reserved stock back. Idempotent: returns false when there was nothing
    /// (left) to release.
    async fn release(&self, order_id: &str) -> Result<bool>;

    async fn get_payment(&self, order_id: &str) -> Result<Option<PaymentRecord>>;
    /// Records the charge for an order unless one is recorded already; returns the recorded one.
    async fn record_payment(&self, payment: PaymentRecord) -> Result<PaymentRecord>;

    /// Numbers and stores the invoice for an order, or returns the one it already has.
    /// Numbers are gapless: 1, 2, 3, … in the order invoices are created.
    async fn create_invoice(&self, draft: InvoiceDraft) -> Result<Invoice>;
    async fn get_invoice(&self, order_id: &str) -> Result<Option<Invoice>>;

    /// Which of these ids the sink has delivered already.
    async fn delivered(&self, sink: &str, ids: &[String]) -> Result<Vec<bool>>;
    /// Marks ids as delivered by the sink.
    async fn mark_delivered(&self, sink: &str, ids: &[String]) -> Result<()>;

    /// A cheap read that fails when the store is unusable.
    async fn healthcheck(&self) -> Result<()>;
}

/// How long an `Idempotency-Key` is remembered by default.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
