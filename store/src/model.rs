//! The records the store keeps. Money is in integer cents; times in ms since the Unix epoch.

use orderflow_schemas::{Address, OrderItem, OrderLine, OrderStatus, RejectionCode};
use serde::{Deserialize, Serialize};

/// A catalogue entry with its stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    /// Units available to reserve.
    pub stock: i64,
    /// Units held for orders.
    #[serde(default)]
    pub reserved: i64,
    /// Withdrawn from sale (`DELETE /v1/products/{sku}`): kept for past orders and invoices,
    /// but new orders for it are rejected like an unknown SKU.
    #[serde(default)]
    pub discontinued: bool,
}

/// A change to a product's details (not its stock: see [`crate::CatalogueStore::adjust_stock`]); `None`
/// leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductChange {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub discontinued: Option<bool>,
}

impl ProductChange {
    /// Applies the change to `product`.
    pub fn apply(&self, product: &mut Product) {
        if let Some(name) = &self.name {
            product.name = name.clone();
        }
        if let Some(price) = self.price_cents {
            product.price_cents = price;
        }
        if let Some(discontinued) = self.discontinued {
            product.discontinued = discontinued;
        }
    }
}

/// The `Idempotency-Key` of a stock adjustment ([`crate::CatalogueStore::adjust_stock`]): an adjustment
/// applied under a key is applied once; a repeat answers [`StockAdjustment::Replayed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentKey {
    /// The key, scoped by the caller (the API: the admin's id and the header's value).
    pub key: String,
    /// Until when the key is remembered (ms); an expired key is free again.
    pub expires_at: i64,
}

/// What an adjustment key remembers: the adjustment it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentRecord {
    pub sku: String,
    pub delta: i64,
    pub expires_at: i64,
}

/// What [`crate::CatalogueStore::adjust_stock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockAdjustment {
    /// Applied: the product as it is now.
    Adjusted(Product),
    /// The key applied this very adjustment (same SKU and delta) before: nothing changed this
    /// time. The product as it is now.
    Replayed(Product),
    /// The key applied another adjustment (another SKU or delta). Nothing changed.
    KeyReused,
    /// Refused: the available stock would go below zero. Nothing changed.
    Insufficient { available: i64 },
    /// No product has this SKU.
    NotFound,
}

/// One step in an order's life, as `GET /v1/orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub status: OrderStatus,
    pub event_id: String,
    pub at: i64,
    /// A reason (rejection, decline) or a reference (payment id, invoice number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Prices of an order, known from validation on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
}

/// The read model of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: String,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub shipping_address: Option<Address>,
    /// The payment method's name (the token is not kept here).
    pub payment_method: Option<String>,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    #[serde(default)]
    pub invoice_number: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub timeline: Vec<TimelineEntry>,
    /// 0 as placed, one more for each change of quantities ([`crate::OrderStore::modify_order`]).
    #[serde(default)]
    pub revision: i32,
    /// The revision the payment was claimed for ([`crate::PaymentStore::claim_payment`]): from then
    /// on the quantities are final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_claim: Option<i32>,
}

/// A card order's payment gateway token, kept in the store (never on a topic) from the order's
/// creation ([`crate::OrderStore::create_order`], in the same write) until the charge's outcome is
/// recorded or the order is rejected or cancelled ([`crate::PaymentStore::delete_payment_token`]), and
/// at most until `expires_at`. Its `Debug` does not show the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentToken {
    pub token: String,
    /// Until when the token is kept (ms); after that it reads as gone.
    pub expires_at: i64,
}

impl std::fmt::Debug for PaymentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An `Idempotency-Key` as the API received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// A digest of the request, so that a key reused for another request is caught.
    pub fingerprint: String,
    pub expires_at: i64,
}

/// What `create_order` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOrder {
    Created,
    /// The idempotency key was used before for the same request: here is its order.
    Existing(Box<OrderRecord>),
    /// The idempotency key was used before for a different request.
    KeyReused {
        order_id: String,
    },
    /// Another request with this idempotency key is being recorded right now: nothing was
    /// written; asking again in a moment answers with its order.
    InProgress,
    /// Refused: the order is paid by bank transfer and its customer has `open` orders awaiting
    /// a transfer already, the most allowed. Nothing was written.
    TooManyUnpaid {
        open: u32,
    },
}

/// Whether the order awaits a bank transfer: paid by bank transfer, not final, and its
/// payment not claimed ([`crate::PaymentStore::claim_payment`]). Such orders hold their stock until
/// the transfer is recorded or they expire ([`crate::OrderStore::expire_unpaid_order`]).
pub fn awaits_transfer(order: &OrderRecord) -> bool {
    order.payment_method.as_deref() == Some(orderflow_schemas::PaymentMethod::BANK_TRANSFER)
        && matches!(order.status, OrderStatus::Accepted | OrderStatus::Validated)
        && order.payment_claim.is_none()
}

/// What [`crate::OrderStore::expire_unpaid_order`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpireOutcome {
    /// The order is cancelled (by this call, or before: a repeat answers alike), its stock
    /// released: as it is now.
    Cancelled(Box<OrderRecord>),
    /// Refused: the order no longer awaits a transfer (its payment was claimed, it failed, it
    /// was rejected or it is shipped): its status. Nothing changed.
    NotAwaiting(OrderStatus),
    /// No order has this id.
    NotFound,
}

/// A status change for the read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub order_id: String,
    pub customer_id: String,
    pub status: OrderStatus,
    pub event_id: String,
    pub at: i64,
    pub detail: Option<String>,
    pub pricing: Option<Pricing>,
    pub invoice_number: Option<String>,
    /// The order revision the step is for: its `pricing` is ignored when the order has moved
    /// on to a later revision (a late step of a modified order).
    pub revision: i32,
}

/// What a stage's step ([`crate::StepStore`]) records on the order's read model for its effect's
/// outcome: the status change the outcome makes.
pub type StepRecord<T> = Box<dyn Fn(&T) -> StatusUpdate + Send + Sync>;

/// The answer to a stage's step ([`crate::StepStore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// The effect's outcome (on a repeat, the first call's), its status change recorded.
    Done(T),
    /// The order is cancelled: no status change recorded, and, depending on the step, no effect.
    Cancelled,
}

impl StatusUpdate {
    /// `paid` on `order` by `payment` (a bank transfer recorded through the API): timeline
    /// `<order>:paid` at the payment's time, detail its reference, the order's pricing.
    pub fn paid(order: &OrderRecord, payment: &PaymentRecord) -> Self {
        StatusUpdate {
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            status: OrderStatus::Paid,
            event_id: OrderStatus::Paid.event_id(&order.order_id),
            at: payment.at,
            detail: payment.payment_id.clone(),
            pricing: order.pricing.clone(),
            invoice_number: None,
            revision: order.revision,
        }
    }
}

/// A product as it was when an order reserved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub currency: String,
}

/// The outcome of a reservation, recorded once per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reservation {
    Reserved {
        lines: Vec<ReservedLine>,
        at: i64,
        /// Set once the reservation is settled: the units went back to the stock (payment
        /// failed, cancelled) or left with the shipment (shipped).
        #[serde(default)]
        released: bool,
        /// The order revision the lines are for ([`crate::OrderStore::modify_order`] swaps them).
        #[serde(default)]
        revision: i32,
    },
    Rejected {
        /// Recorded as its string (`unknown_sku`, `out_of_stock`, `invalid_order`).
        code: RejectionCode,
        reason: String,
        at: i64,
    },
}

/// The outcome of a charge, recorded once per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub order_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub approved: bool,
    /// The gateway's charge id when approved.
    pub payment_id: Option<String>,
    /// The gateway's reason when declined.
    pub reason: Option<String>,
    pub at: i64,
}

/// An invoice before it has a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceDraft {
    pub order_id: String,
    pub customer_id: String,
    pub pricing: Pricing,
    pub at: i64,
}

/// A numbered invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `INV-` and eight digits.
    pub number: String,
    pub sequence: u64,
    pub order_id: String,
    pub customer_id: String,
    pub pricing: Pricing,
    pub issued_at: i64,
}

impl Invoice {
    pub fn format_number(sequence: u64) -> String {
        format!("INV-{sequence:08}")
    }
}

impl InvoiceDraft {
    /// The draft's invoice under number `sequence`.
    pub fn numbered(&self, sequence: u64) -> Invoice {
        Invoice {
            number: Invoice::format_number(sequence),
            sequence,
            order_id: self.order_id.clone(),
            customer_id: self.customer_id.clone(),
            pricing: self.pricing.clone(),
            issued_at: self.at,
        }
    }
}

// --- Order lifecycle ---

/// Which orders `OrderStore::list_orders` returns. Every field narrows the list; none set lists
/// every order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only orders with this status.
    pub status: Option<OrderStatus>,
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only orders created at or after this time (ms).
    pub from: Option<i64>,
    /// Only orders created before this time (ms).
    pub to: Option<i64>,
}

impl OrderFilter {
    /// Whether `order` passes the filter.
    pub fn matches(&self, order: &OrderRecord) -> bool {
        self.status.is_none_or(|s| s == order.status)
            && self
                .customer_id
                .as_ref()
                .is_none_or(|c| *c == order.customer_id)
            && self.from.is_none_or(|from| order.created_at >= from)
            && self.to.is_none_or(|to| order.created_at < to)
    }
}

// --- Cancel and ship ---

/// What [`crate::OrderStore::cancel_order`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The order is cancelled (by this call or an earlier one, which a repeat answers alike):
    /// as it is now, its stock released, and whether an approved charge exists (a refund is
    /// due).
    Cancelled { order: Box<OrderRecord>, paid: bool },
    /// Refused: the order has shipped. Nothing changed.
    Shipped,
    /// No order has this id.
    NotFound,
}

/// The `OrderCancelled` event of a cancelled order, built from what the store recorded (the
/// first cancel's reason and time) with the id `<order id>:cancelled`, so announcing it again
/// sends the same event, which consumers deduplicate. `refund`: the approved charge to give
/// back (cents, currency), if any.
pub fn cancellation_event(
    order: &OrderRecord,
    refund: Option<(i64, String)>,
) -> orderflow_schemas::OrderCancelled {
    let event_id = OrderStatus::Cancelled.event_id(&order.order_id);
    let (at, reason) = order
        .timeline
        .iter()
        .find(|t| t.event_id == event_id)
        .map_or((order.updated_at, None), |t| (t.at, t.detail.clone()));
    let paid = refund.is_some();
    let (refund_cents, currency) = refund.unwrap_or((0, String::new()));
    orderflow_schemas::OrderCancelled {
        event_id,
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        reason,
        paid,
        refund_cents,
        currency,
        occurred_at: at,
    }
}

/// What [`crate::OrderStore::ship_order`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipOutcome {
    /// The order is shipped (by this call or an earlier one): as it is now.
    Shipped(Box<OrderRecord>),
    /// Refused: the order is not paid yet, failed, or cancelled (its status). Nothing changed.
    NotReady(OrderStatus),
    /// No order has this id.
    NotFound,
}

// --- Refunds ---

/// A refund of an order's approved charge, recorded once per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub order_id: String,
    /// The charge refunded.
    pub payment_id: String,
    /// The gateway's refund id.
    pub refund_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub at: i64,
}

// --- Modifications and payment claims ---

/// What [`crate::OrderStore::modify_order`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModifyOutcome {
    /// The order holds the new quantities: as it is now (its new revision, items, no pricing
    /// until validation re-prices it), with its reserved lines. Asking for the quantities it
    /// has already changes nothing and answers the order as it is.
    Modified {
        order: Box<OrderRecord>,
        lines: Vec<ReservedLine>,
    },
    /// Refused: the order is not `validated`, or its payment was claimed (`claimed`). Nothing
    /// changed.
    NotModifiable { status: OrderStatus, claimed: bool },
    /// Refused: `sku` needs more units than are available (`available`: how many more it
    /// could take). Nothing changed.
    Insufficient { sku: String, available: i64 },
    /// Refused: the order has no item with this SKU (only quantities can change).
    UnknownItem { sku: String },
    /// Refused: the order has been changed [`MAX_ORDER_REVISIONS`] times (`max`) already.
    /// Nothing changed.
    TooManyRevisions { max: i32 },
    /// No order has this id.
    NotFound,
}

/// How many times one order may change (quantities or prices): each change is a revision, an
/// `OrderModified` event, a re-pricing and a timeline entry, so the order's record and its
/// history stay bounded. An order that needs more is cancelled and placed again.
pub const MAX_ORDER_REVISIONS: i32 = 50;

/// What [`crate::PaymentStore::claim_payment`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentClaim {
    /// The payment of this revision may go ahead (claimed by this call or an earlier one):
    /// the quantities can no longer change.
    Granted,
    /// The order has moved on to this later revision; its own `OrderValidated` follows.
    Stale { current: i32 },
    /// The order is cancelled (or shipped): nothing is to be charged.
    Final(OrderStatus),
    /// No order has this id.
    NotFound,
}

/// How [`crate::OrderStore::modify_order`] changes a reservation: the new lines, and per SKU the
/// units to take from the stock (positive) or give back (negative). Both stores plan alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModificationPlan {
    pub lines: Vec<ReservedLine>,
    /// Only the SKUs whose quantity changes.
    pub deltas: Vec<(String, i64)>,
}

impl ModificationPlan {
    /// Plans the change from the reserved `current` lines to `items`. `Ok(Err(refusal))` when
    /// an item is not in the order; an error when `items` breaks the rules of
    /// [`crate::OrderStore::modify_order`] (the API checks them first).
    pub fn new(
        current: &[ReservedLine],
        items: &[OrderItem],
    ) -> crate::Result<Result<Self, ModifyOutcome>> {
        let invalid = |why: String| Err(crate::StoreError::Invalid(why));
        if items.is_empty() {
            return invalid("an order keeps at least one item".into());
        }
        let mut lines: Vec<ReservedLine> = Vec::with_capacity(items.len());
        for item in items {
            if item.quantity <= 0 {
                return invalid(format!("quantity for {} must be positive", item.sku));
            }
            if lines.iter().any(|l| l.sku == item.sku) {
                return invalid(format!("{} is listed twice", item.sku));
            }
            let Some(line) = current.iter().find(|l| l.sku == item.sku) else {
                return Ok(Err(ModifyOutcome::UnknownItem {
                    sku: item.sku.clone(),
                }));
            };
            lines.push(ReservedLine {
                quantity: item.quantity,
                ..line.clone()
            });
        }
        let held = |lines: &[ReservedLine], sku: &str| -> i64 {
            lines
                .iter()
                .filter(|l| l.sku == sku)
                .map(|l| i64::from(l.quantity))
                .sum()
        };
        let mut deltas: Vec<(String, i64)> = Vec::new();
        for line in current {
            if deltas.iter().any(|(sku, _)| *sku == line.sku) {
                continue; // a SKU the order listed twice: counted once, in full
            }
            let delta = held(&lines, &line.sku) - held(current, &line.sku);
            deltas.push((line.sku.clone(), delta));
        }
        deltas.retain(|(_, delta)| *delta != 0);
        Ok(Ok(ModificationPlan { lines, deltas }))
    }

    /// Whether the order keeps exactly the lines it has.
    pub fn is_unchanged(&self, current: &[ReservedLine]) -> bool {
        self.lines == current
    }
}

/// A new unit price for one line of an order (cents, in the line's currency).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinePrice {
    pub sku: String,
    pub unit_price_cents: i64,
}

/// A change of a validated, unpaid order that [`crate::OrderStore::modify_order`] and
/// [`crate::OrderStore::reprice_order`] make through the same path: the reservation swaps to the
/// planned lines, the revision goes up, the pricing is cleared until validation re-prices it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderChange {
    /// Every item the order keeps, with its new quantity.
    Quantities(Vec<OrderItem>),
    /// New unit prices for some of the order's lines (the quantities stay).
    Prices(Vec<LinePrice>),
}

impl OrderChange {
    /// Plans the change from the reserved `current` lines (see [`ModificationPlan::new`]).
    pub fn plan(
        &self,
        current: &[ReservedLine],
    ) -> crate::Result<Result<ModificationPlan, ModifyOutcome>> {
        match self {
            OrderChange::Quantities(items) => ModificationPlan::new(current, items),
            OrderChange::Prices(prices) => ModificationPlan::reprice(current, prices),
        }
    }

    /// The order's items once changed (a repricing keeps the current ones).
    pub fn items(&self, current: &[OrderItem]) -> Vec<OrderItem> {
        match self {
            OrderChange::Quantities(items) => items.clone(),
            OrderChange::Prices(_) => current.to_vec(),
        }
    }

    /// The detail of the timeline entry of `revision`.
    pub fn detail(&self, revision: i32) -> String {
        match self {
            OrderChange::Quantities(_) => format!("revision {revision}: quantities changed"),
            OrderChange::Prices(prices) => {
                let skus: Vec<&str> = prices.iter().map(|p| p.sku.as_str()).collect();
                format!("revision {revision}: price of {} adjusted", skus.join(", "))
            }
        }
    }
}

impl ModificationPlan {
    /// Plans new unit prices for some of the reserved `current` lines; no stock moves.
    /// `Ok(Err(refusal))` when a SKU is not in the order; an error for a negative price or a
    /// SKU listed twice (the API checks them first).
    pub fn reprice(
        current: &[ReservedLine],
        prices: &[LinePrice],
    ) -> crate::Result<Result<Self, ModifyOutcome>> {
        let invalid = |why: String| Err(crate::StoreError::Invalid(why));
        if prices.is_empty() {
            return invalid("a repricing names at least one line".into());
        }
        for (i, price) in prices.iter().enumerate() {
            if price.unit_price_cents < 0 {
                return invalid(format!("the price of {} must not be negative", price.sku));
            }
            if prices[..i].iter().any(|p| p.sku == price.sku) {
                return invalid(format!("{} is listed twice", price.sku));
            }
            if !current.iter().any(|l| l.sku == price.sku) {
                return Ok(Err(ModifyOutcome::UnknownItem {
                    sku: price.sku.clone(),
                }));
            }
        }
        Ok(Ok(ModificationPlan {
            lines: Self::priced(current.to_vec(), prices),
            deltas: Vec::new(),
        }))
    }

    /// `lines` with the unit prices of `prices` (per SKU) applied.
    pub fn priced(mut lines: Vec<ReservedLine>, prices: &[LinePrice]) -> Vec<ReservedLine> {
        for line in &mut lines {
            if let Some(p) = prices.iter().find(|p| p.sku == line.sku) {
                line.unit_price_cents = p.unit_price_cents;
            }
        }
        lines
    }

    /// The unit price of each line, as recorded with a revision so that its lines can be
    /// planned again from the order's items.
    pub fn prices(&self) -> Vec<LinePrice> {
        self.lines
            .iter()
            .map(|l| LinePrice {
                sku: l.sku.clone(),
                unit_price_cents: l.unit_price_cents,
            })
            .collect()
    }
}

// --- Reservations ---

/// Why an order's items cannot be reserved: the code validation announces on `orders.rejected`
/// and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RejectionCode,
    pub reason: String,
}

impl Refusal {
    fn new(code: RejectionCode, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }

    /// The outcome recorded for the order.
    pub fn at(self, at: i64) -> Reservation {
        Reservation::Rejected {
            code: self.code,
            reason: self.reason,
            at,
        }
    }
}

/// How [`crate::CatalogueStore::reserve`] reserves an order's items: all of them or none. Both
/// stores plan alike, from the products as they read them, and take the planned units each its
/// own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationPlan {
    /// Per SKU, in the order the items first name it: the product as read and the units to
    /// take (a SKU the order lists twice is one demand).
    pub takes: Vec<(Product, i64)>,
    /// One line per item, priced from the catalogue.
    pub lines: Vec<ReservedLine>,
}

impl ReservationPlan {
    /// Plans the reservation of `items`. `find` reads a SKU's product (`None`: the catalogue
    /// does not have it); `held` tells whether the order holds a SKU's units already (an
    /// earlier attempt took them and stopped part-way), so the stock left is not checked again.
    /// `Ok(Err(refusal))` when the order cannot be reserved: nothing is to be taken.
    ///
    /// The order's quantities are checked first, then each SKU in turn (reading stops at the
    /// first refused one), then that all items share one currency.
    pub fn new<E>(
        items: &[OrderItem],
        mut find: impl FnMut(&str) -> Result<Option<Product>, E>,
        held: impl Fn(&str) -> bool,
    ) -> Result<Result<Self, Refusal>, E> {
        let demand = Self::demand(items);
        if let Some((sku, _)) = demand.iter().find(|(_, quantity)| *quantity <= 0) {
            return Ok(Err(Refusal::new(
                RejectionCode::InvalidOrder,
                format!("quantity for {sku} must be positive"),
            )));
        }
        let mut takes: Vec<(Product, i64)> = Vec::with_capacity(demand.len());
        for (sku, quantity) in demand {
            let product = find(sku)?;
            if let Err(refusal) = Self::check(sku, quantity, product.as_ref(), held(sku)) {
                return Ok(Err(refusal));
            }
            takes.extend(product.map(|p| (p, quantity)));
        }
        if takes.windows(2).any(|w| w[0].0.currency != w[1].0.currency) {
            return Ok(Err(Refusal::new(
                RejectionCode::InvalidOrder,
                "items are priced in different currencies",
            )));
        }
        let lines = items
            .iter()
            .filter_map(|item| {
                let (p, _) = takes.iter().find(|(p, _)| p.sku == item.sku)?;
                Some(ReservedLine {
                    sku: p.sku.clone(),
                    name: p.name.clone(),
                    quantity: item.quantity,
                    unit_price_cents: p.price_cents,
                    currency: p.currency.clone(),
                })
            })
            .collect();
        Ok(Ok(ReservationPlan { takes, lines }))
    }

    /// The order's demand per SKU, in the order the items first name them: a SKU listed twice
    /// is one demand.
    pub fn demand(items: &[OrderItem]) -> Vec<(&str, i64)> {
        let mut demand: Vec<(&str, i64)> = Vec::new();
        for item in items {
            match demand.iter_mut().find(|(sku, _)| *sku == item.sku) {
                Some((_, q)) => *q += i64::from(item.quantity),
                None => demand.push((item.sku.as_str(), i64::from(item.quantity))),
            }
        }
        demand
    }

    /// Whether `quantity` units of `sku` can be taken from `product` as read: it must be sold,
    /// and have the units unless the order `held` them already.
    pub fn check(
        sku: &str,
        quantity: i64,
        product: Option<&Product>,
        held: bool,
    ) -> Result<(), Refusal> {
        match product {
            None => Err(Refusal::new(
                RejectionCode::UnknownSku,
                format!("unknown SKU {sku}"),
            )),
            Some(p) if p.discontinued => Err(Refusal::new(
                RejectionCode::UnknownSku,
                format!("SKU {sku} is discontinued"),
            )),
            Some(p) if !held && p.stock < quantity => Err(Refusal::new(
                RejectionCode::OutOfStock,
                format!("{sku}: {quantity} requested, {} available", p.stock),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The outcome recorded for the order once the units are taken.
    pub fn reserved(self, at: i64) -> Reservation {
        Reservation::Reserved {
            lines: self.lines,
            at,
            released: false,
            revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i32) -> ReservedLine {
        ReservedLine {
            sku: sku.into(),
            name: format!("{sku} name"),
            quantity,
            unit_price_cents: 100,
            currency: "EUR".into(),
        }
    }

    fn item(sku: &str, quantity: i32) -> OrderItem {
        OrderItem {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn a_plan_moves_only_the_changed_quantities_and_keeps_prices() {
        let current = [line("A", 2), line("B", 1)];
        let plan = ModificationPlan::new(&current, &[item("A", 5)])
            .unwrap()
            .unwrap();
        assert_eq!(plan.lines, vec![line("A", 5)]);
        assert_eq!(plan.deltas, vec![("A".into(), 3), ("B".into(), -1)]);
        let same = ModificationPlan::new(&current, &[item("A", 2), item("B", 1)])
            .unwrap()
            .unwrap();
        assert!(same.deltas.is_empty());
        assert!(same.is_unchanged(&current));
    }

    #[test]
    fn a_sku_listed_twice_in_the_order_is_one_demand() {
        let current = [line("A", 2), line("A", 3)];
        let plan = ModificationPlan::new(&current, &[item("A", 4)])
            .unwrap()
            .unwrap();
        assert_eq!(plan.deltas, vec![("A".into(), -1)]);
    }

    #[test]
    fn unknown_items_and_bad_lists_are_refused() {
        let current = [line("A", 2)];
        assert_eq!(
            ModificationPlan::new(&current, &[item("Z", 1)]).unwrap(),
            Err(ModifyOutcome::UnknownItem { sku: "Z".into() })
        );
        assert!(ModificationPlan::new(&current, &[]).is_err());
        assert!(ModificationPlan::new(&current, &[item("A", 0)]).is_err());
        assert!(ModificationPlan::new(&current, &[item("A", 1), item("A", 1)]).is_err());
    }

    fn product(sku: &str, stock: i64) -> Product {
        Product {
            sku: sku.into(),
            name: format!("{sku} name"),
            price_cents: 100,
            currency: "EUR".into(),
            stock,
            reserved: 0,
            discontinued: false,
        }
    }

    /// Plans `items` against `catalogue`, the SKUs in `held` held by the order already; also
    /// answers which SKUs the plan read.
    fn plan_against(
        catalogue: &[Product],
        held: &[&str],
        items: &[OrderItem],
    ) -> (Result<ReservationPlan, Refusal>, Vec<String>) {
        let mut read = Vec::new();
        let plan = ReservationPlan::new(
            items,
            |sku| {
                read.push(sku.to_string());
                Ok::<_, ()>(catalogue.iter().find(|p| p.sku == sku).cloned())
            },
            |sku| held.contains(&sku),
        )
        .unwrap();
        (plan, read)
    }

    #[test]
    fn a_reservation_is_planned_whole_or_refused_with_its_code() {
        let discontinued = Product {
            discontinued: true,
            ..product("D", 10)
        };
        let dollars = Product {
            currency: "USD".into(),
            ..product("U", 10)
        };
        let catalogue = [product("A", 5), product("B", 1), discontinued, dollars];
        use RejectionCode::*;
        // (items, held, the code of the refusal or None for a plan)
        type Case = (
            &'static [(&'static str, i32)],
            &'static [&'static str],
            Option<RejectionCode>,
        );
        let cases: &[Case] = &[
            (&[("A", 5)], &[], None),
            (&[("A", 2), ("B", 1)], &[], None),
            (&[("A", 6)], &[], Some(OutOfStock)),
            // All or nothing: one short SKU refuses the whole order.
            (&[("A", 1), ("B", 2)], &[], Some(OutOfStock)),
            // A SKU listed twice is one demand: 3 + 3 is more than A's 5.
            (&[("A", 3), ("A", 3)], &[], Some(OutOfStock)),
            (&[("A", 3), ("B", 1), ("A", 2)], &[], None),
            (&[("Z", 1)], &[], Some(UnknownSku)),
            (&[("A", 1), ("Z", 1)], &[], Some(UnknownSku)),
            (&[("D", 1)], &[], Some(UnknownSku)),
            (&[("A", 0)], &[], Some(InvalidOrder)),
            (&[("A", -1)], &[], Some(InvalidOrder)),
            // The quantities are checked before the catalogue.
            (&[("Z", 1), ("A", 0)], &[], Some(InvalidOrder)),
            (&[("A", 1), ("U", 1)], &[], Some(InvalidOrder)),
            // Units the order holds already (an attempt that stopped part-way) are not counted
            // against the stock left; a product withdrawn since still refuses.
            (&[("A", 50)], &["A"], None),
            (&[("D", 1)], &["D"], Some(UnknownSku)),
        ];
        for (items, held, expected) in cases {
            let items: Vec<OrderItem> = items.iter().map(|(s, q)| item(s, *q)).collect();
            let (plan, _) = plan_against(&catalogue, held, &items);
            assert_eq!(
                plan.as_ref().err().map(|r| r.code),
                *expected,
                "{items:?} (held {held:?}): {plan:?}"
            );
        }
    }

    #[test]
    fn a_plan_takes_each_sku_once_and_prices_each_item_line() {
        let catalogue = [product("A", 5), product("B", 1)];
        let items = [item("A", 3), item("B", 1), item("A", 2)];
        let (plan, read) = plan_against(&catalogue, &[], &items);
        let plan = plan.unwrap();
        assert_eq!(read, ["A", "B"], "each SKU is read once");
        assert_eq!(plan.takes, vec![(product("A", 5), 5), (product("B", 1), 1)]);
        assert_eq!(plan.lines, vec![line("A", 3), line("B", 1), line("A", 2)]);
        assert_eq!(
            plan.reserved(7),
            Reservation::Reserved {
                lines: vec![line("A", 3), line("B", 1), line("A", 2)],
                at: 7,
                released: false,
                revision: 0,
            }
        );
    }

    #[test]
    fn a_refusal_says_why_and_stops_reading() {
        let catalogue = [product("A", 1), product("B", 1)];
        let (plan, read) = plan_against(&catalogue, &[], &[item("A", 4), item("B", 1)]);
        assert_eq!(read, ["A"], "nothing is read after the first refused SKU");
        assert_eq!(
            plan.unwrap_err().at(9),
            Reservation::Rejected {
                code: RejectionCode::OutOfStock,
                reason: "A: 4 requested, 1 available".into(),
                at: 9,
            }
        );
        let reason =
            |items: &[OrderItem]| plan_against(&catalogue, &[], items).0.unwrap_err().reason;
        assert_eq!(reason(&[item("Z", 1)]), "unknown SKU Z");
        assert_eq!(reason(&[item("A", 0)]), "quantity for A must be positive");
        let (plan, read) = plan_against(&catalogue, &[], &[item("A", 0)]);
        assert!(
            plan.is_err() && read.is_empty(),
            "a bad quantity reads nothing"
        );
    }

    #[test]
    fn rejection_codes_are_recorded_as_their_strings() {
        let rejected = Refusal::new(RejectionCode::UnknownSku, "unknown SKU Z").at(1);
        let json = serde_json::to_value(&rejected).unwrap();
        assert_eq!(json["code"], "unknown_sku");
        let back: Reservation = serde_json::from_value(json).unwrap();
        assert_eq!(back, rejected);
    }

    #[test]
    fn a_repricing_changes_only_the_named_prices_and_moves_no_stock() {
        let current = [line("A", 2), line("B", 1)];
        let price = |sku: &str, cents| LinePrice {
            sku: sku.into(),
            unit_price_cents: cents,
        };
        let plan = OrderChange::Prices(vec![price("B", 40)])
            .plan(&current)
            .unwrap()
            .unwrap();
        assert!(plan.deltas.is_empty());
        assert_eq!(plan.lines[0], line("A", 2));
        assert_eq!(plan.lines[1].unit_price_cents, 40);
        assert_eq!(plan.prices()[1], price("B", 40));
        assert_eq!(
            ModificationPlan::reprice(&current, &[price("Z", 1)]).unwrap(),
            Err(ModifyOutcome::UnknownItem { sku: "Z".into() })
        );
        assert!(ModificationPlan::reprice(&current, &[price("A", -1)]).is_err());
        assert!(ModificationPlan::reprice(&current, &[price("A", 1), price("A", 2)]).is_err());
        assert!(ModificationPlan::reprice(&current, &[]).is_err());
    }
}
