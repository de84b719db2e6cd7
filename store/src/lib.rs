//! Orderflow's state: the read model of orders, the catalogue with its stock, payments,
//! invoices, idempotency keys and delivery markers.
//!
//! # Layout
//! - [`Store`]: the one interface every stage uses, the union of one trait per area
//!   ([`CatalogueStore`], [`OrderStore`], [`PaymentStore`], [`InvoiceStore`],
//!   [`AccountStore`], [`DeliveryStore`], [`OutboxStore`]), and [`StepStore`]: a stage's
//!   effect and its status change in one call (one write in the embedded store). Each effect
//!   is idempotent by a key derived from the event (order id, event id), so a redelivered event
//!   never applies twice and a stage can always re-emit the outcome it already recorded.
//! - [`model`]: the records the store keeps, and the rules both implementations apply as pure
//!   plans ([`ReservationPlan`], [`ModificationPlan`]).
//! - [`account`]: accounts, email verification codes and refresh tokens.
//! - [`outbox`]: the events announcing the API's changes, written with the change they announce
//!   and kept until a relay has put them on their topics.
//! - [`embedded`]: the default implementation on redb, a pure-Rust durable B-tree, under
//!   `--data-dir`. Writes from concurrent callers are grouped into one transaction (group
//!   commit), so a batch of events costs one fsync, not one each.
//! - `scylla`: the ScyllaDB implementation, for services that run apart (`--scylla`), with its
//!   CQL migrations.
//! - [`instrumented`]: [`Instrumented`], a wrapper that records every call's duration and
//!   failures as Prometheus metrics.
//! - [`objects`]: [`InvoiceFiles`], the invoice PDFs in object storage (a local directory, S3).
//! - [`pdf`]: an [`Invoice`] rendered as a PDF (deterministic bytes).

pub mod account;
pub mod embedded;
pub mod instrumented;
pub mod model;
pub mod objects;
pub mod outbox;
pub mod pdf;
#[cfg(feature = "scylla")]
pub mod scylla;

use std::time::Duration;

use async_trait::async_trait;

pub use account::*;
pub use embedded::{EmbeddedConfig, EmbeddedStore};
pub use instrumented::Instrumented;
pub use model::*;
pub use objects::{InvoiceFile, InvoiceFiles};
use orderflow_schemas::{OrderItem, OrderStatus};
pub use outbox::{OutboxEvent, Queued};
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

/// The catalogue and its stock: products, stock adjustments, the reservations of orders.
#[async_trait]
pub trait CatalogueStore: Send + Sync {
    /// Inserts or replaces products (admin, seeding).
    async fn put_products(&self, products: Vec<Product>) -> Result<()>;

    /// Inserts the products whose SKU is not in the catalogue yet; returns how many were new.
    async fn seed_products(&self, products: Vec<Product>) -> Result<usize>;

    async fn get_product(&self, sku: &str) -> Result<Option<Product>>;

    /// The catalogue, ordered by SKU, discontinued products included.
    async fn list_products(&self) -> Result<Vec<Product>>;

    /// Inserts a product unless its SKU is in the catalogue already: false then, and nothing
    /// changes.
    async fn create_product(&self, product: Product) -> Result<bool>;

    /// Changes a product's name, price or discontinued flag, never its stock; the product as it
    /// is now, or `None` when no product has the SKU.
    async fn update_product(&self, sku: &str, change: ProductChange) -> Result<Option<Product>>;

    /// Adds `delta` (negative: removes) to the units available, atomically with respect to
    /// reservations and releases: never below zero (refused as a whole, nothing changes), and
    /// never lost or applied twice when a reservation races it. With a `key`, an adjustment is
    /// applied once: a repeat of the same adjustment under an unexpired key (also concurrent,
    /// also after a crash between the two writes) answers [`StockAdjustment::Replayed`], another
    /// adjustment under it [`StockAdjustment::KeyReused`]. A refused adjustment changes nothing
    /// and may be tried again under the same key.
    async fn adjust_stock(
        &self,
        sku: &str,
        delta: i64,
        key: Option<AdjustmentKey>,
    ) -> Result<StockAdjustment>;

    /// Reserves every item of the order, all or nothing, only where enough stock is available,
    /// as [`ReservationPlan`] plans it. Idempotent by order id: a second call returns the first
    /// call's outcome and reserves nothing more.
    async fn reserve(&self, order_id: &str, items: &[OrderItem], at: i64) -> Result<Reservation>;

    /// Gives an order's reserved stock back. Idempotent: returns false when there was nothing
    /// (left) to release.
    async fn release(&self, order_id: &str) -> Result<bool>;
}

/// Orders: placing (with its `Idempotency-Key`), reading and listing, the status changes of the stages, cancel and ship, modifications, and the orders awaiting a bank transfer.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Records a new order (status `accepted`), or, when the idempotency key was used before by
    /// the same customer and has not expired, returns the order it created instead. One key
    /// makes one order under any interleaving of calls: a call that meets a key claimed by a
    /// call still recording its order answers [`CreateOrder::InProgress`] and writes nothing.
    ///
    /// A card order's `payment_token` is kept in the same write as the order (nothing is
    /// written when the key names an earlier order), readable by [`PaymentStore::get_payment_token`].
    ///
    /// With `max_unpaid`, an order paid by bank transfer is refused
    /// ([`CreateOrder::TooManyUnpaid`]) when its customer has that many orders awaiting a
    /// transfer ([`awaits_transfer`]) already; a repeat of a keyed order is answered first.
    ///
    /// A created order's `OrderAccepted` ([`outbox::accepted`]) is queued in the outbox in the
    /// same write ([`OutboxStore`]); a repeat queues nothing.
    async fn create_order(
        &self,
        order: OrderRecord,
        idempotency: Option<IdempotencyKey>,
        payment_token: Option<PaymentToken>,
        max_unpaid: Option<u32>,
    ) -> Result<CreateOrder>;

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>>;

    /// The order's status alone, `None` for an order the store does not know: what a stage
    /// checks before its effect, without decoding the whole record.
    async fn order_status(&self, order_id: &str) -> Result<Option<OrderStatus>> {
        Ok(self.get_order(order_id).await?.map(|order| order.status))
    }

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

    /// Cancels an order, atomically with respect to [`OrderStore::ship_order`]: refused once it has
    /// shipped; otherwise its status becomes `cancelled` (timeline entry `<order>:cancelled`,
    /// detail `reason`, at `at`) and its reserved stock is released (as [`CatalogueStore::release`]).
    /// Idempotent: a repeat answers as the first call did, keeping the first reason and time.
    /// The cancelling call queues `OrderCancelled` ([`cancellation_event`], with the refund of
    /// an approved payment) in the outbox in the same write; a repeat queues nothing.
    async fn cancel_order(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
    ) -> Result<CancelOutcome>;

    /// Marks a paid or invoiced order as shipped (timeline entry `<order>:shipped`), atomically
    /// with respect to [`OrderStore::cancel_order`]: never a cancelled one. Idempotent. The shipping
    /// call queues `OrderShipped` ([`outbox::shipped`]) in the same write; a repeat nothing.
    async fn ship_order(&self, order_id: &str, at: i64) -> Result<ShipOutcome>;

    /// Changes the quantities of a validated order whose payment is not claimed: `items` is
    /// every item the order keeps with its new quantity (each SKU once, quantities above zero,
    /// SKUs of the order only; a SKU left out is dropped). The reservation swaps to the new
    /// quantities all or nothing (an increase needs that many more units available; the unit
    /// prices stay those the order was priced at), the revision goes up by one, the pricing
    /// is cleared until validation re-prices the revision, and the timeline gets
    /// `<order>:modified:r<revision>` (status `validated`, detail `revision <n>`), atomically
    /// with respect to [`PaymentStore::claim_payment`], [`OrderStore::cancel_order`] and other
    /// modifications. A modification queues the revision's `OrderModified`
    /// ([`outbox::modified`]) in the same write.
    async fn modify_order(
        &self,
        order_id: &str,
        items: Vec<OrderItem>,
        at: i64,
    ) -> Result<ModifyOutcome>;
    /// Sets new unit prices on lines of a validated order whose payment is not claimed (each
    /// SKU once, prices zero or more, SKUs of the order only): as [`OrderStore::modify_order`] does
    /// for quantities, through the same path and with the same refusals, atomically with
    /// respect to the same calls; no stock moves. The timeline entry is
    /// `<order>:modified:r<revision>` (detail `revision <n>: price of <sku> adjusted`), and
    /// validation re-prices the revision at the new unit prices (its `OrderModified` queued as
    /// by [`OrderStore::modify_order`]).
    async fn reprice_order(
        &self,
        order_id: &str,
        prices: Vec<LinePrice>,
        at: i64,
    ) -> Result<ModifyOutcome>;

    /// Marks the order paid by `payment`, a bank transfer recorded through the API
    /// ([`PaymentStore::record_payment`] after [`PaymentStore::claim_payment`]): status `paid` as
    /// [`OrderStore::apply_status`] moves it (timeline `<order>:paid` at the payment's time, detail
    /// its reference) and `OrderPaid` ([`outbox::paid`]) queued in the same write. When the
    /// order was cancelled meanwhile, its `OrderCancelled` is queued again with the refund of
    /// this payment. Idempotent: a repeat changes and queues nothing. The order as it is now,
    /// `None` when there is no such order; an order without pricing is left unchanged.
    async fn mark_paid(&self, payment: &PaymentRecord) -> Result<Option<OrderRecord>>;

    /// Orders paid by bank transfer placed (`created_at`) before `placed_before`, oldest first,
    /// at most `limit`, that await their transfer ([`awaits_transfer`]) or were expired by
    /// [`OrderStore::expire_unpaid_order`] and not yet let go of ([`OrderStore::forget_unpaid_order`]).
    /// An order leaves this list as its payment is claimed, as it is cancelled through
    /// [`OrderStore::cancel_order`], or once forgotten.
    async fn list_unpaid_orders(
        &self,
        placed_before: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>>;

    /// Cancels an order that still awaits its bank transfer (reason `reason`, at `at`) as
    /// [`OrderStore::cancel_order`] does, stock released, atomically with respect to
    /// [`PaymentStore::claim_payment`]: of a racing expiry and claim exactly one wins, and a claimed
    /// order is refused ([`ExpireOutcome::NotAwaiting`]). Idempotent: a repeat answers as the
    /// first call did. The order stays in [`OrderStore::list_unpaid_orders`] until
    /// [`OrderStore::forget_unpaid_order`], so an expiry whose announcement was lost is found again.
    async fn expire_unpaid_order(
        &self,
        order_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<ExpireOutcome>;

    /// Drops the order from [`OrderStore::list_unpaid_orders`] (its expiry is announced, or it no
    /// longer awaits a transfer). Idempotent.
    async fn forget_unpaid_order(&self, order_id: &str) -> Result<()>;
}

/// Payments: the card token kept with an order until its charge, the charge or transfer recorded, the claim on a revision's payment, refunds.
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// The payment token kept with the order, unless it was deleted or has expired at `now`.
    async fn get_payment_token(&self, order_id: &str, now: i64) -> Result<Option<PaymentToken>>;

    /// Forgets the order's payment token (its charge's outcome is recorded, or the order was
    /// rejected or cancelled). Idempotent.
    async fn delete_payment_token(&self, order_id: &str) -> Result<()>;

    async fn get_payment(&self, order_id: &str) -> Result<Option<PaymentRecord>>;

    /// Records the charge for an order unless one is recorded already, and forgets the order's
    /// payment token (the outcome it was kept for is recorded; in the same write where the store
    /// has transactions); returns the recorded one.
    async fn record_payment(&self, payment: PaymentRecord) -> Result<PaymentRecord>;

    /// The order's refund, if it has one.
    async fn get_refund(&self, order_id: &str) -> Result<Option<RefundRecord>>;

    /// Records the refund of an order unless one is recorded already; returns the recorded one.
    async fn record_refund(&self, refund: RefundRecord) -> Result<RefundRecord>;

    /// Claims the payment of the order's `revision` before it is charged (or a bank transfer
    /// recorded): granted unless the order moved on to a later revision or is final; after a
    /// grant [`OrderStore::modify_order`] refuses. Idempotent for the same revision.
    async fn claim_payment(&self, order_id: &str, revision: i32) -> Result<PaymentClaim>;
}

/// Invoices, numbered without gaps.
#[async_trait]
pub trait InvoiceStore: Send + Sync {
    /// Numbers and stores the invoice for an order, or returns the one it already has.
    /// Numbers are gapless: 1, 2, 3, … in the order invoices are created.
    async fn create_invoice(&self, draft: InvoiceDraft) -> Result<Invoice>;

    async fn get_invoice(&self, order_id: &str) -> Result<Option<Invoice>>;
}

/// The stages' steps: a stage's effect and the status change it makes on the order's read
/// model, refused for a cancelled order, in one write where the store has transactions (the
/// embedded store), else as the calls of the other traits each method names, in that order
/// (the default methods). Idempotent as those calls are: a repeat answers the first outcome
/// and records nothing twice.
#[async_trait]
pub trait StepStore: CatalogueStore + OrderStore + PaymentStore + InvoiceStore {
    /// Validation's step: unless the order is cancelled, reserves its items
    /// ([`CatalogueStore::reserve`]) and records `record(&reservation)`
    /// ([`OrderStore::apply_status`]). [`Step::Cancelled`]: nothing is reserved (without
    /// transactions, a reservation that raced the cancel is given back).
    async fn reserve_step(
        &self,
        order_id: &str,
        items: &[OrderItem],
        at: i64,
        record: StepRecord<Reservation>,
    ) -> Result<Step<Reservation>> {
        if self.order_status(order_id).await? == Some(OrderStatus::Cancelled) {
            return Ok(Step::Cancelled);
        }
        let reservation = self.reserve(order_id, items, at).await?;
        if self.order_status(order_id).await? == Some(OrderStatus::Cancelled) {
            self.release(order_id).await?;
            return Ok(Step::Cancelled);
        }
        self.apply_status(record(&reservation)).await?;
        Ok(Step::Done(reservation))
    }

    /// Payment's step: records the charge's outcome ([`PaymentStore::record_payment`], which
    /// answers the one recorded first and forgets the card token), then, unless the order is
    /// cancelled, gives a declined charge's reserved stock back ([`CatalogueStore::release`])
    /// and records `record(&recorded)`, so an order that reads `payment_failed` holds no stock.
    /// [`Step::Cancelled`]: the payment is recorded all the same (the gateway charged it): an
    /// approved one is for the caller to refund; the cancel gave the stock back.
    async fn record_payment_step(
        &self,
        payment: PaymentRecord,
        record: StepRecord<PaymentRecord>,
    ) -> Result<Step<PaymentRecord>> {
        let recorded = self.record_payment(payment).await?;
        if self.order_status(&recorded.order_id).await? == Some(OrderStatus::Cancelled) {
            return Ok(Step::Cancelled);
        }
        if !recorded.approved {
            self.release(&recorded.order_id).await?;
        }
        self.apply_status(record(&recorded)).await?;
        Ok(Step::Done(recorded))
    }

    /// Invoicing's step: unless the order is cancelled, numbers and stores its invoice
    /// ([`InvoiceStore::create_invoice`]) and records `record(&invoice)`.
    /// [`Step::Cancelled`]: no invoice.
    async fn invoice_step(
        &self,
        draft: InvoiceDraft,
        record: StepRecord<Invoice>,
    ) -> Result<Step<Invoice>> {
        if self.order_status(&draft.order_id).await? == Some(OrderStatus::Cancelled) {
            return Ok(Step::Cancelled);
        }
        let invoice = self.create_invoice(draft).await?;
        self.apply_status(record(&invoice)).await?;
        Ok(Step::Done(invoice))
    }
}

/// Accounts, their email verification codes and refresh tokens.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account unless its email is taken (by any account, disabled ones included);
    /// false when taken. Holds under concurrent calls: exactly one of two racing creates with
    /// the same email succeeds. Creating the same account (same id) again answers true.
    async fn create_account(&self, account: Account) -> Result<bool>;

    async fn get_account(&self, customer_id: &str) -> Result<Option<Account>>;

    /// The account with this (normalised) email.
    async fn get_account_by_email(&self, email: &str) -> Result<Option<Account>>;

    /// Replaces an existing account's fields except `email` and `created_at`; false when
    /// there is no such account.
    async fn update_account(&self, account: Account) -> Result<bool>;

    /// Accounts ordered by customer id, strictly after `after` when given, at most `limit`.
    async fn list_accounts(&self, after: Option<&str>, limit: usize) -> Result<Vec<Account>>;

    /// Stores the account's verification code, replacing any earlier one.
    async fn put_verification(&self, code: VerificationCode) -> Result<()>;

    /// Keeps the clear code of a verification email until the bridge sends it (by event id),
    /// and queues `announce` (the event that asks for the email) in the outbox in the same
    /// write.
    async fn put_verification_email(
        &self,
        email: VerificationEmail,
        announce: Option<OutboxEvent>,
    ) -> Result<()>;

    /// The clear code the email of event `event_id` is to carry, unless it was deleted (the
    /// email went out) or has expired at `now`.
    async fn get_verification_email(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>>;

    /// Forgets the clear code of event `event_id`'s email (it was sent). Idempotent.
    async fn delete_verification_email(&self, event_id: &str) -> Result<()>;

    /// Checks a code (by its hash) at `now`: a match verifies the account and removes the
    /// code; a miss counts a try, and the code dies after [`MAX_VERIFICATION_ATTEMPTS`].
    async fn check_verification(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome>;

    /// Stores a refresh token that starts a new family (a login).
    async fn create_refresh_token(&self, token: RefreshToken) -> Result<()>;

    /// Exchanges the token with hash `presented` for `next_hash` (valid until
    /// `next_expires_at`), atomically: the first exchange of a token wins; presenting a used
    /// token again revokes its whole family ([`RotateOutcome::Reused`]).
    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome>;

    /// Revokes the family of the token with this hash (logout); false when no such token.
    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<bool>;

    /// Revokes every refresh token family of the account but `keep` (when given): the account
    /// was disabled (none kept), or its password changed (the login that changed it kept).
    async fn revoke_customer_refresh_tokens(
        &self,
        customer_id: &str,
        keep: Option<&str>,
    ) -> Result<()>;

    /// Whether the family (a login) is revoked: logged out, a token reused, or the account
    /// disabled. A family never stored counts as revoked: only a login creates one.
    async fn refresh_family_revoked(&self, customer_id: &str, family_id: &str) -> Result<bool>;
}

/// What each sink has delivered.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Which of these ids the sink has delivered already.
    async fn delivered(&self, sink: &str, ids: &[String]) -> Result<Vec<bool>>;

    /// Marks ids as delivered by the sink.
    async fn mark_delivered(&self, sink: &str, ids: &[String]) -> Result<()>;
}

/// The outbox: events written with the changes they announce ([`outbox`]), in the order they
/// were written, until a relay has produced them.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// The queued events, oldest first, at most `limit`. Only events whose change is recorded
    /// are returned; every call returns the same entries until they are relayed.
    async fn outbox(&self, limit: usize) -> Result<Vec<Queued>>;

    /// Forgets relayed events, by [`Queued::position`]. Idempotent.
    async fn outbox_relayed(&self, positions: &[String]) -> Result<()>;
}

/// The state store: the union of the stores by area ([`CatalogueStore`], [`OrderStore`],
/// [`PaymentStore`], [`InvoiceStore`], [`StepStore`], [`AccountStore`], [`DeliveryStore`], [`OutboxStore`]), so one
/// `Arc<dyn Store>` serves every stage. Implementations: [`EmbeddedStore`] (redb, one machine) and `ScyllaStore`
/// (ScyllaDB, the `scylla` feature, on by default); both pass `tests/conformance/`.
#[async_trait]
pub trait Store:
    CatalogueStore
    + OrderStore
    + PaymentStore
    + InvoiceStore
    + StepStore
    + AccountStore
    + DeliveryStore
    + OutboxStore
    + 'static
{
    /// A cheap read that fails when the store is unusable.
    async fn healthcheck(&self) -> Result<()>;

    /// Sets a named one-time marker (e.g. `seeded`); true when this call set it, false when
    /// it was set already.
    async fn set_marker(&self, name: &str, at: i64) -> Result<bool>;
}

/// How long an order paid by bank transfer waits for its transfer by default before it is
/// cancelled: three days cover a transfer made the next business day after an order placed on
/// a Friday evening, while stock is not held from other customers for a week.
pub const DEFAULT_UNPAID_ORDER_TTL: Duration = Duration::from_secs(72 * 60 * 60);
/// How many orders awaiting a bank transfer a customer may have open by default.
pub const DEFAULT_MAX_UNPAID_ORDERS: u32 = 3;

/// How long a sink's delivery marker is kept by default (both stores): the window in which a
/// redelivered or replayed event is recognised and not sent again. Twice the 7 days topics
/// are kept by default (Kafka's `retention.ms`, `orderflow topics create --retention 7d`), so
/// that an event parked on a dead-letter topic on its last day there and replayed on the
/// dead-letter topic's last day is still known. A replay of anything older sends it again.
pub const DEFAULT_DELIVERY_TTL: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// How long an `Idempotency-Key` is remembered by default.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a card order's payment token is kept at most: the charge needs it within seconds
/// of the order; this leaves room for a payment stage that is down or far behind, after which
/// the order fails its payment (the token expired) rather than keeping the token on.
pub const PAYMENT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
