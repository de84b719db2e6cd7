//! Recording the bank transfer that pays an order.
//!
//! Recording claims the payment of the order's current revision ([`Store::claim_payment`]):
//! from then on the quantities are final, and a change that raced it is refused (or, if it
//! won, the claim is refused and the admin retries with the new total). The payment is
//! recorded once ([`Store::record_payment`]: the first reference wins), then the order becomes
//! `paid` with its `OrderPaid` queued for `orders.paid` in the same write ([`Store::mark_paid`],
//! idempotent); invoicing takes it from there. A cancel that slipped in before the payment was
//! recorded is announced again with the refund (same write), so the payment stage refunds the
//! transfer. Recording the same reference again finishes what the first call started.
//!
//! [`Store::claim_payment`]: orderflow_store::PaymentStore::claim_payment
//! [`Store::record_payment`]: orderflow_store::PaymentStore::record_payment
//! [`Store::mark_paid`]: orderflow_store::OrderStore::mark_paid

use orderflow_schemas::{now_millis, OrderStatus, PaymentMethod};
use orderflow_store::{OrderRecord, PaymentClaim, PaymentRecord};
use tracing::warn;

use super::{announced, OpError};
use crate::ApiState;

/// What recording a transfer came to.
#[derive(Debug)]
pub enum Transfer {
    /// The order, paid and announced.
    Paid(Box<OrderRecord>),
    NotFound,
    /// The order is not paid by bank transfer: the payment stage charges it.
    NotBankTransfer {
        method: Option<String>,
    },
    /// The order is paid under another reference.
    PaidAlready {
        reference: String,
    },
    /// The order is past the point where a transfer pays it (cancelled, rejected, ...).
    Final(OrderStatus),
    /// The order is being validated or re-priced: retry in a moment.
    BeingPriced,
    /// The order changed since it was read: retry for its new total.
    Changed,
    /// A payment is recorded but the order has no pricing yet: retry.
    Unpriced,
}

/// Records the transfer `reference` (trimmed, checked) as the payment of the order.
pub async fn record_transfer(
    state: &ApiState,
    order_id: &str,
    reference: &str,
) -> Result<Transfer, OpError> {
    let Some(order) = state.store.get_order(order_id).await? else {
        return Ok(Transfer::NotFound);
    };
    if order.payment_method.as_deref() != Some(PaymentMethod::BANK_TRANSFER) {
        return Ok(Transfer::NotBankTransfer {
            method: order.payment_method,
        });
    }
    let payment = match state.store.get_payment(order_id).await? {
        // A repeat: finish what the first call started (announce it again).
        Some(p) if p.payment_id.as_deref() == Some(reference) => p,
        Some(p) => {
            return Ok(Transfer::PaidAlready {
                reference: p.payment_id.unwrap_or_default(),
            })
        }
        None => {
            let pricing = match order.status {
                OrderStatus::Validated => order.pricing.clone(),
                OrderStatus::Accepted => None,
                other => return Ok(Transfer::Final(other)),
            };
            let Some(pricing) = pricing else {
                return Ok(Transfer::BeingPriced);
            };
            match state.store.claim_payment(order_id, order.revision).await? {
                PaymentClaim::Granted => {}
                PaymentClaim::Stale { .. } => return Ok(Transfer::Changed),
                PaymentClaim::Final(status) => return Ok(Transfer::Final(status)),
                PaymentClaim::NotFound => return Ok(Transfer::NotFound),
            }
            let payment = state
                .store
                .record_payment(PaymentRecord {
                    order_id: order_id.to_string(),
                    amount_cents: pricing.total_cents,
                    currency: pricing.currency.clone(),
                    approved: true,
                    payment_id: Some(reference.to_string()),
                    reason: None,
                    at: now_millis(),
                })
                .await?;
            if payment.payment_id.as_deref() != Some(reference) {
                return Ok(Transfer::PaidAlready {
                    reference: payment.payment_id.unwrap_or_default(),
                });
            }
            payment
        }
    };
    mark_paid(state, order, &payment).await
}

/// Records `paid` on the order with its `OrderPaid` (and, when it was cancelled meanwhile,
/// its `OrderCancelled` again with the refund), idempotently.
async fn mark_paid(
    state: &ApiState,
    order: OrderRecord,
    payment: &PaymentRecord,
) -> Result<Transfer, OpError> {
    if order.pricing.is_none() {
        return Ok(Transfer::Unpriced);
    }
    let Some(order) = state.store.mark_paid(payment).await? else {
        return Ok(Transfer::NotFound);
    };
    state.orders.invalidate(&order.order_id).await;
    announced(state, &order.order_id);
    if order.status == OrderStatus::Cancelled {
        warn!(order_id = %order.order_id, "Transfer recorded for an order cancelled meanwhile; refund requested.");
    }
    Ok(Transfer::Paid(Box::new(order)))
}
