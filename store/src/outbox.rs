//! The outbox: the events that announce the API's changes to orders and accounts, kept by the
//! store in the same write as the change they announce until a relay has put them on their
//! topics ([`crate::OutboxStore`]).
//!
//! A change and its event are therefore never apart: when the write is durable the event is
//! too, and a broker that is down delays the announcement instead of losing it. A call that
//! changes nothing (a repeat of the same request) queues nothing, so in normal operation each
//! event reaches its topic once; a relay that stops between producing an event and forgetting
//! it sends it again after a restart, with the same event id.
//!
//! The events are built here from what the store recorded (the first call's time and reason,
//! the order's revision, the payment taken), the same way by every store.

use orderflow_schemas::{
    Event, OrderAccepted, OrderModified, OrderPaid, OrderShipped, OrderStatus, PaymentMethod,
};
use serde::{Deserialize, Serialize};

use crate::{
    model::{OrderRecord, PaymentRecord},
    StoreError,
};

/// An event waiting in the outbox: its type's Avro record name ([`Event::NAME`]), its id, key
/// and time, and the event itself as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub name: String,
    pub event_id: String,
    pub key: String,
    pub occurred_at: i64,
    pub body: String,
}

impl OutboxEvent {
    /// The outbox entry of `event`.
    pub fn of<E: Event>(event: &E) -> crate::Result<Self> {
        Ok(OutboxEvent {
            name: E::NAME.to_string(),
            event_id: event.event_id().to_string(),
            key: event.key().to_string(),
            occurred_at: event.occurred_at(),
            body: serde_json::to_string(event).map_err(|e| StoreError::Invalid(e.to_string()))?,
        })
    }

    /// Whether the entry holds an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.name == E::NAME
    }

    /// The event, when the entry holds an `E`.
    pub fn decode<E: Event>(&self) -> crate::Result<E> {
        if !self.is::<E>() {
            return Err(StoreError::Invalid(format!(
                "outbox event {} is a {}, not a {}",
                self.event_id,
                self.name,
                E::NAME
            )));
        }
        serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Corrupt(format!("outbox event {}: {e}", self.event_id)))
    }
}

/// An event in the outbox with its place there: `position` orders the entries and names this
/// one to [`crate::OutboxStore::outbox_relayed`] (opaque to callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub position: String,
    pub event: OutboxEvent,
}

/// When the order's step with this event id was recorded (its last update if not found).
fn recorded_at(order: &OrderRecord, event_id: &str) -> i64 {
    order
        .timeline
        .iter()
        .find(|t| t.event_id == event_id)
        .map_or(order.updated_at, |t| t.at)
}

/// `OrderAccepted` of a new order.
pub fn accepted(order: &OrderRecord) -> OrderAccepted {
    OrderAccepted {
        event_id: OrderStatus::Accepted.event_id(&order.order_id),
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        items: order.items.clone(),
        shipping_address: order.shipping_address.clone().unwrap_or_default(),
        payment: PaymentMethod {
            method: order.payment_method.clone().unwrap_or_default(),
        },
        occurred_at: order.created_at,
    }
}

/// `OrderShipped` of a shipped order.
pub fn shipped(order: &OrderRecord) -> OrderShipped {
    let event_id = OrderStatus::Shipped.event_id(&order.order_id);
    OrderShipped {
        occurred_at: recorded_at(order, &event_id),
        event_id,
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
    }
}

/// `OrderModified` of the order's current revision (new quantities or prices), for validation
/// to price it.
pub fn modified(order: &OrderRecord) -> OrderModified {
    let event_id = OrderModified::event_id_for(&order.order_id, order.revision);
    OrderModified {
        occurred_at: recorded_at(order, &event_id),
        event_id,
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        revision: order.revision,
        items: order.items.clone(),
    }
}

/// `OrderPaid` of an order paid by `payment` (a bank transfer recorded through the API);
/// `None` while the order is not priced.
pub fn paid(order: &OrderRecord, payment: &PaymentRecord) -> Option<OrderPaid> {
    let pricing = order.pricing.as_ref()?;
    Some(OrderPaid {
        event_id: OrderStatus::Paid.event_id(&order.order_id),
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        payment_id: payment.payment_id.clone().unwrap_or_default(),
        lines: pricing.lines.clone(),
        currency: pricing.currency.clone(),
        subtotal_cents: pricing.subtotal_cents,
        tax_cents: pricing.tax_cents,
        total_cents: pricing.total_cents,
        occurred_at: payment.at,
    })
}
