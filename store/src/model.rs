//! The records the store keeps. Money is in integer cents; times in ms since the Unix epoch.

use orderflow_schemas::{Address, OrderItem, OrderLine, OrderStatus};
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

/// A change to a product's details (not its stock: see [`crate::Store::adjust_stock`]); `None`
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

/// What [`crate::Store::adjust_stock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockAdjustment {
    /// Applied: the product as it is now.
    Adjusted(Product),
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
    },
    Rejected {
        /// `unknown_sku`, `out_of_stock` or `invalid_order`.
        code: String,
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

// --- Order lifecycle (f/orders) ---

/// Which orders `Store::list_orders` returns. Every field narrows the list; none set lists
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

// --- Cancel and ship (issue #5, f/lifecycle) ---

/// What [`crate::Store::cancel_order`] did.
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

/// What [`crate::Store::ship_order`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipOutcome {
    /// The order is shipped (by this call or an earlier one): as it is now.
    Shipped(Box<OrderRecord>),
    /// Refused: the order is not paid yet, failed, or cancelled (its status). Nothing changed.
    NotReady(OrderStatus),
    /// No order has this id.
    NotFound,
}

// --- Refunds (issue #5, f/lifecycle) ---

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
