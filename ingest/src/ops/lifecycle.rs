//! Cancelling and shipping an order. Each changes the order in the store
//! ([`Store::cancel_order`], [`Store::ship_order`]: atomic with respect to each other,
//! idempotent), which queues its event in the same write (`OrderCancelled` for
//! `orders.cancelled`, `OrderShipped` for `orders.shipped`), built from what it recorded (the
//! first call's reason and time), with the id `<order id>:cancelled` / `<order id>:shipped`;
//! then drops the order from the read cache. A repeat changes and announces nothing.
//!
//! [`Store::cancel_order`]: orderflow_store::OrderStore::cancel_order
//! [`Store::ship_order`]: orderflow_store::OrderStore::ship_order

use orderflow_schemas::now_millis;
use orderflow_store::{CancelOutcome, ShipOutcome};

use super::{announced, OpError};
use crate::{auth::Caller, ApiState};

/// Cancels the order for `caller` (its customer or an admin; anyone else finds no order),
/// refunding a paid one, with its announcement.
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
    if matches!(outcome, CancelOutcome::Cancelled { .. }) {
        state.orders.invalidate(order_id).await;
        announced(state, order_id);
    }
    Ok(outcome)
}

/// Marks a paid or invoiced order as shipped, with its announcement.
pub async fn ship_order(state: &ApiState, order_id: &str) -> Result<ShipOutcome, OpError> {
    let outcome = state.store.ship_order(order_id, now_millis()).await?;
    if matches!(outcome, ShipOutcome::Shipped(_)) {
        state.orders.invalidate(order_id).await;
        announced(state, order_id);
    }
    Ok(outcome)
}
