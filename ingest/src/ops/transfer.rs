//! Recording the bank transfer that pays an order.
//!
//! Recording claims the payment of the order's current revision ([`Store::claim_payment`]):
//! from then on the quantities are final, and a change that raced it is refused (or, if it
//! won, the claim is refused and the admin retries with the new total). The payment is
//! recorded once ([`Store::record_payment`]: the first reference wins), the order becomes
//! `paid` ([`Store::apply_status`], idempotent by the event id), and `OrderPaid` goes out on
//! `orders.paid`; invoicing takes it from there. A cancel that slipped in before the payment
//! was recorded is announced again with the refund, so the payment stage refunds the transfer.
//! Recording the same reference again finishes what the first call started.
//!
//! [`Store::claim_payment`]: orderflow_store::Store::claim_payment
//! [`Store::record_payment`]: orderflow_store::Store::record_payment
//! [`Store::apply_status`]: orderflow_store::Store::apply_status

use orderflow_schemas::{now_millis, OrderCancelled, OrderPaid, OrderStatus, PaymentMethod};
use orderflow_store::{OrderRecord, PaymentClaim, PaymentRecord, StatusUpdate};
use tracing::warn;

use super::{announce, modify::announce_modified, OpError};
use crate::ApiState;

/// The answer when the payment is recorded but its event did not go out.
const UNANNOUNCED: &str =
    "the payment is recorded, but the event log is unavailable; retry to announce it";

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
    /// The order is being validated or re-priced: retry in a moment (a change whose
    /// announcement was lost has been announced again).
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
                // A change whose announcement was lost is announced again, so it gets priced.
                announce_modified(state, &order).await?;
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

/// Records `paid` on the order and produces `OrderPaid` (both idempotent by the event id); a
/// cancel that slipped in before the payment was recorded is announced again, so the payment
/// stage refunds the transfer.
async fn mark_paid(
    state: &ApiState,
    order: OrderRecord,
    payment: &PaymentRecord,
) -> Result<Transfer, OpError> {
    let order_id = order.order_id.clone();
    let Some(pricing) = order.pricing.clone() else {
        return Ok(Transfer::Unpriced);
    };
    let payment_id = payment.payment_id.clone().unwrap_or_default();
    let event = OrderPaid {
        event_id: OrderStatus::Paid.event_id(&order_id),
        order_id: order_id.clone(),
        customer_id: order.customer_id.clone(),
        payment_id: payment_id.clone(),
        lines: pricing.lines.clone(),
        currency: pricing.currency.clone(),
        subtotal_cents: pricing.subtotal_cents,
        tax_cents: pricing.tax_cents,
        total_cents: pricing.total_cents,
        occurred_at: payment.at,
    };
    state
        .store
        .apply_status(StatusUpdate {
            order_id: order_id.clone(),
            customer_id: order.customer_id.clone(),
            status: OrderStatus::Paid,
            event_id: event.event_id.clone(),
            at: payment.at,
            detail: Some(payment_id),
            pricing: Some(pricing),
            invoice_number: None,
            revision: order.revision,
        })
        .await?;
    state.orders.invalidate(&order_id).await;
    announce(state, &event, UNANNOUNCED).await?;
    let Some(order) = state.store.get_order(&order_id).await? else {
        return Ok(Transfer::NotFound);
    };
    if order.status == OrderStatus::Cancelled {
        let cancelled_at = order
            .timeline
            .iter()
            .find(|t| t.status == OrderStatus::Cancelled)
            .map_or(order.updated_at, |t| t.at);
        let event = OrderCancelled {
            event_id: OrderStatus::Cancelled.event_id(&order_id),
            order_id: order_id.clone(),
            customer_id: order.customer_id.clone(),
            reason: None,
            paid: true,
            refund_cents: payment.amount_cents,
            currency: payment.currency.clone(),
            occurred_at: cancelled_at,
        };
        announce(state, &event, UNANNOUNCED).await?;
        warn!(%order_id, "Transfer recorded for an order cancelled meanwhile; refund requested.");
    }
    Ok(Transfer::Paid(Box::new(order)))
}
