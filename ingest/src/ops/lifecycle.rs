//! Cancelling and shipping an order. Each changes the order in the store first
//! ([`Store::cancel_order`], [`Store::ship_order`]: atomic with respect to each other,
//! idempotent), drops it from the read cache, and only then produces its event
//! (`OrderCancelled` on `orders.cancelled`, `OrderShipped` on `orders.shipped`). The event is
//! built from what the store recorded (the first call's reason and time), with the id
//! `<order id>:cancelled` / `<order id>:shipped`: a retry after a failed produce sends the same
//! event again, and consumers deduplicate on it.
//!
//! [`Store::cancel_order`]: orderflow_store::Store::cancel_order
//! [`Store::ship_order`]: orderflow_store::Store::ship_order

use orderflow_schemas::{now_millis, OrderShipped, OrderStatus};
use orderflow_store::{CancelOutcome, OrderRecord, ShipOutcome};

use super::{announce, OpError};
use crate::{auth::Caller, ApiState};

/// Cancels the order for `caller` (its customer or an admin; anyone else finds no order),
/// refunding a paid one, and announces it.
pub async fn cancel_order(
    state: &ApiState,
    caller: &Caller,
    order_id: &str,
    reason: Option<&str>,
) -> Result<CancelOutcome, OpError> {
    match state.store.get_order(order_id).await? {
        Some(order) if caller.may_access(&order.customer_id) => {}
        _ => return Ok(CancelOutcome::NotFound),
    }
    let outcome = state
        .store
        .cancel_order(order_id, reason, now_millis())
        .await?;
    let CancelOutcome::Cancelled { order, paid } = &outcome else {
        return Ok(outcome);
    };
    state.orders.invalidate(order_id).await;
    let refund = if *paid {
        match state.store.get_payment(order_id).await? {
            Some(p) if p.approved => Some((p.amount_cents, p.currency)),
            _ => None,
        }
    } else {
        None
    };
    let event = orderflow_store::cancellation_event(order, refund);
    announce(
        state,
        &event,
        "the order is cancelled, but the event log is unavailable; retry to announce it",
    )
    .await?;
    Ok(outcome)
}

/// Marks a paid or invoiced order as shipped and announces it.
pub async fn ship_order(state: &ApiState, order_id: &str) -> Result<ShipOutcome, OpError> {
    let outcome = state.store.ship_order(order_id, now_millis()).await?;
    let ShipOutcome::Shipped(order) = &outcome else {
        return Ok(outcome);
    };
    state.orders.invalidate(order_id).await;
    let event = OrderShipped {
        event_id: OrderStatus::Shipped.event_id(order_id),
        order_id: order_id.to_string(),
        customer_id: order.customer_id.clone(),
        occurred_at: recorded_at(order, OrderStatus::Shipped),
    };
    announce(
        state,
        &event,
        "the order is shipped, but the event log is unavailable; retry to announce it",
    )
    .await?;
    Ok(outcome)
}

/// When the store recorded the order's step `status` (its last update if not found).
pub(crate) fn recorded_at(order: &OrderRecord, status: OrderStatus) -> i64 {
    let id = status.event_id(&order.order_id);
    order
        .timeline
        .iter()
        .find(|t| t.event_id == id)
        .map_or(order.updated_at, |t| t.at)
}
