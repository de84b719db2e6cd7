//! Placing an order: the order, its `Idempotency-Key` and its `OrderAccepted` (for
//! `orders.accepted`, through the outbox) recorded in one store write ([`Store::create_order`],
//! which also enforces the cap on orders awaiting a bank transfer).
//!
//! [`Store::create_order`]: orderflow_store::OrderStore::create_order

use orderflow_schemas::{Address, OrderItem, OrderStatus, PaymentMethod};
use orderflow_store::{CreateOrder, IdempotencyKey, OrderRecord, PaymentToken, TimelineEntry};
use tracing::debug;

use super::{announced, OpError};
use crate::ApiState;

/// A new order, validated.
pub struct NewOrder {
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
    pub payment_method: String,
    /// The payment gateway's token, kept in the store with the order (never on a topic);
    /// ignored for an offline method.
    pub payment_token: String,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// What placing an order came to.
#[derive(Debug)]
pub enum Placed {
    /// Recorded (and its event queued).
    Accepted { order_id: String },
    /// The `Idempotency-Key` named this earlier order; nothing new is recorded or announced.
    Replayed {
        order_id: String,
        status: OrderStatus,
    },
    /// Another request with the key is being recorded right now.
    InProgress,
    /// The key was used for another order with a different body.
    KeyReused { order_id: String },
    /// A bank-transfer order beyond the cap of orders awaiting a transfer.
    TooManyUnpaid { open: u32 },
}

/// Records the order with its announcement.
pub async fn place_order(state: &ApiState, new: NewOrder) -> Result<Placed, OpError> {
    let now = orderflow_schemas::now_millis();
    let order_id = uuid::Uuid::now_v7().to_string();
    tracing::Span::current().record("order_id", order_id.as_str());
    let payment = PaymentMethod {
        method: new.payment_method.clone(),
    };
    // The card token stays in the store, written with the order, for the payment stage to
    // read by order id; no event carries it. An offline payment has nothing to charge.
    let payment_token = (!payment.is_offline()).then(|| PaymentToken {
        token: new.payment_token,
        expires_at: now + orderflow_store::PAYMENT_TOKEN_TTL.as_millis() as i64,
    });
    let record = OrderRecord {
        order_id: order_id.clone(),
        customer_id: new.customer_id,
        status: OrderStatus::Accepted,
        items: new.items,
        shipping_address: Some(new.shipping_address),
        payment_method: Some(new.payment_method),
        pricing: None,
        invoice_number: None,
        created_at: now,
        updated_at: now,
        timeline: vec![TimelineEntry {
            status: OrderStatus::Accepted,
            event_id: OrderStatus::Accepted.event_id(&order_id),
            at: now,
            detail: None,
        }],
        revision: 0,
        payment_claim: None,
    };

    let outcome = state
        .store
        .create_order(
            record,
            new.idempotency_key,
            payment_token,
            state.max_unpaid_orders,
        )
        .await?;
    match outcome {
        CreateOrder::Created => {}
        CreateOrder::InProgress => return Ok(Placed::InProgress),
        CreateOrder::TooManyUnpaid { open } => return Ok(Placed::TooManyUnpaid { open }),
        CreateOrder::KeyReused { order_id } => return Ok(Placed::KeyReused { order_id }),
        CreateOrder::Existing(existing) => {
            tracing::Span::current().record("order_id", existing.order_id.as_str());
            return Ok(Placed::Replayed {
                order_id: existing.order_id,
                status: existing.status,
            });
        }
    }
    announced(state, &order_id);
    orderflow_schemas::metrics::metrics().orders_accepted.inc();
    debug!(%order_id, "Order accepted.");
    Ok(Placed::Accepted { order_id })
}
