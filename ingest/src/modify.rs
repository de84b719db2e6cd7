//! Changing an unpaid order (issue #5): `PATCH /v1/orders/{id}` (the order's customer or an
//! admin) changes its quantities; `POST /v1/orders/{id}/payment` (admins) records the bank
//! transfer that pays it.
//!
//! Only orders paid by bank transfer (`payment.method = "bank_transfer"`) have an unpaid
//! window: a card is charged as soon as the order is validated. Such an order waits, status
//! `validated`, until an admin records the transfer; until then its quantities may change.
//!
//! A change goes to the store first ([`Store::modify_order`]): the reservation swaps to the
//! new quantities all or nothing (409 naming `items[i].quantity` when the stock is short), the
//! order's revision goes up, its pricing is cleared. Then `OrderModified` goes out on
//! `orders.modified`; validation re-prices the revision and produces its `OrderValidated`
//! (event id `<order>:validated:r<n>`), which reaches the timeline and the customer's email.
//! A retry after a failed produce announces the revision again (same event id), and so does an
//! attempt to record the payment of a revision that is still unpriced.
//!
//! Recording the transfer claims the payment of the order's current revision
//! ([`Store::claim_payment`]): from then on the quantities are final, and a change that raced
//! it is refused (or, if it won, the claim is refused and the admin retries with the new
//! total). The payment is recorded once ([`Store::record_payment`]: the first reference
//! wins), then `OrderPaid` goes out and invoicing takes it from there.
//!
//! [`Store::modify_order`]: orderflow_store::Store::modify_order
//! [`Store::claim_payment`]: orderflow_store::Store::claim_payment
//! [`Store::record_payment`]: orderflow_store::Store::record_payment

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use orderflow_schemas::{
    now_millis, OrderCancelled, OrderItem, OrderModified, OrderPaid, OrderStatus, PaymentMethod,
};
use orderflow_store::{ModifyOutcome, OrderRecord, PaymentClaim, PaymentRecord, StatusUpdate};
use serde::Deserialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::problem::responses;
use crate::{
    auth::Caller,
    orders::{integer, json_body, OrderView, MAX_ITEMS, MAX_QUANTITY},
    problem::{text_problem, FieldError, Problem},
    ApiState,
};

/// The longest bank transfer reference, in characters.
pub const MAX_REFERENCE_CHARS: usize = 100;

/// The body of `PATCH /v1/orders/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModifyOrderRequest {
    /// New quantities for items of the order. Items not listed keep theirs; quantity 0 drops
    /// an item (at least one must remain).
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemChange>,
}

/// A new quantity for one item of the order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemChange {
    /// A SKU the order has (only quantities change).
    #[schema(max_length = 64, example = "MUG-001")]
    pub sku: String,
    /// The new quantity; 0 drops the item.
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 1000, example = 3)]
    pub quantity: i64,
}

/// The body of `POST /v1/orders/{id}/payment`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordPaymentRequest {
    /// The bank's reference of the transfer received; it becomes the payment id.
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "TRF-2026-000123"
    )]
    pub reference: String,
}

/// The answer when the payment is recorded but its event did not go out.
const UNANNOUNCED_PAYMENT: &str =
    "the payment is recorded, but the event log is unavailable; retry to announce it";

fn not_found(order_id: &str) -> Problem {
    Problem::not_found(format!("no order {order_id}"))
}

fn field_error(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// A 409 that says to try again shortly (the order is between two steps).
fn retry_soon(slug: &str, title: &str, detail: String) -> Problem {
    Problem::conflict(slug, title, detail).with_retry_after(1)
}

/// Why the order's quantities cannot change, as a 409.
fn not_modifiable(order_id: &str, status: OrderStatus, claimed: bool) -> Problem {
    let title = "Order cannot change";
    match status {
        OrderStatus::Accepted => retry_soon(
            "order-not-modifiable",
            title,
            format!("order {order_id} is still being validated; retry in a moment"),
        ),
        OrderStatus::Validated if claimed => Problem::conflict(
            "order-not-modifiable",
            title,
            format!("the payment of order {order_id} is being recorded: its quantities are final"),
        ),
        other => Problem::conflict(
            "order-not-modifiable",
            title,
            format!(
                "order {order_id} is {}: quantities change only while it awaits payment",
                other.as_str()
            ),
        ),
    }
}

/// The order's items with the changes applied (each SKU once; dropped ones left out). A value
/// out of range is a 422; a change the order's items do not allow (a SKU it does not have, a
/// SKU twice, no item left) is a 409, as the document cannot say what the order holds.
fn apply_changes(order: &OrderRecord, changes: &[ItemChange]) -> Result<Vec<OrderItem>, Problem> {
    let mut invalid = Vec::new();
    let mut conflicts = Vec::new();
    if changes.is_empty() {
        invalid.push(field_error("items".into(), "must hold at least one change"));
    }
    if changes.len() > MAX_ITEMS {
        invalid.push(field_error(
            "items".into(),
            format!("must hold at most {MAX_ITEMS} changes"),
        ));
    }
    // The order's items, one per SKU (an order may name a SKU twice).
    let mut items: Vec<OrderItem> = Vec::with_capacity(order.items.len());
    for item in &order.items {
        match items.iter_mut().find(|i| i.sku == item.sku) {
            Some(i) => i.quantity += item.quantity,
            None => items.push(item.clone()),
        }
    }
    for (i, change) in changes.iter().enumerate().take(MAX_ITEMS) {
        if !(0..=MAX_QUANTITY).contains(&change.quantity) {
            invalid.push(field_error(
                format!("items[{i}].quantity"),
                format!("must be from 0 (drop the item) to {MAX_QUANTITY}"),
            ));
            continue;
        }
        if changes[..i].iter().any(|c| c.sku == change.sku) {
            conflicts.push(field_error(format!("items[{i}].sku"), "is listed twice"));
            continue;
        }
        match items.iter_mut().find(|item| item.sku == change.sku) {
            Some(item) => item.quantity = change.quantity as i32,
            None => conflicts.push(field_error(
                format!("items[{i}].sku"),
                "is not in this order: only the quantities of its items can change",
            )),
        }
    }
    items.retain(|item| item.quantity > 0);
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    if conflicts.is_empty() && items.is_empty() {
        conflicts.push(field_error(
            "items".into(),
            "would leave the order empty: keep at least one item, or cancel the order",
        ));
    }
    if conflicts.is_empty() {
        Ok(items)
    } else {
        Err(refused_change(conflicts))
    }
}

/// 409: the change does not fit the order's items.
fn refused_change(errors: Vec<FieldError>) -> Problem {
    Problem::fields(
        StatusCode::CONFLICT,
        "order-change-refused",
        "The order cannot change this way",
        errors,
    )
}

/// Where `sku` is in the request, as a field name.
fn change_field(changes: &[ItemChange], sku: &str, leaf: &str) -> String {
    changes
        .iter()
        .position(|c| c.sku == sku)
        .map_or_else(|| "items".to_string(), |i| format!("items[{i}].{leaf}"))
}

/// `PATCH /v1/orders/{id}`.
#[utoipa::path(
    patch,
    path = "/v1/orders/{id}",
    operation_id = "modify_order",
    tag = "orders",
    summary = "Change the quantities of an unpaid order",
    description = "While an order paid by bank transfer awaits its payment (status \
        `validated`), its customer or an admin may change the quantities of its items (0 drops \
        one). The stock is reserved for the new quantities all or nothing; the unit prices stay \
        those the order was placed at. The answer is the order with its new `revision` and \
        without totals: validation re-prices it within moments (a new `validated` step with \
        the totals, and an email to the customer). A card order is charged as soon as it is \
        validated: its quantities cannot change.",
    params(("id" = String, Path, description = "The order id.")),
    request_body(content = ModifyOrderRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order with its new quantities.", body = OrderView),
        (status = 400, description = "The body is not JSON, or the id not UTF-8.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unauthorized,
        (status = 404, description = "No such order, or another customer's.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The order cannot change now (not awaiting a bank \
            transfer, paid, cancelled, or still being validated: then retry), the stock is \
            short, or the change does not fit the order's items (a SKU it does not have, a SKU \
            twice, no item left); the fields name the items.", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/insufficient-stock", "title": "Not enough stock",
            "status": 409, "detail": "items[0].quantity: only 2 more units of MUG-001 are available",
            "errors": [{"field": "items[0].quantity",
                "message": "only 2 more units of MUG-001 are available"}]})),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "A quantity is out of range or there is no change (the \
            field names it).",
         body = Problem, content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn modify(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OrderView>, Problem> {
    let order_id = crate::problem::path("id", order_id)?;
    tracing::Span::current().record("order_id", order_id.as_str());
    let req: ModifyOrderRequest = json_body(&headers, body).await?;
    let order = state
        .store
        .get_order(&order_id)
        .await?
        .filter(|o| caller.may_access(&o.customer_id))
        .ok_or_else(|| not_found(&order_id))?;
    let items = apply_changes(&order, &req.items)?;
    if order.payment_method.as_deref() != Some(PaymentMethod::BANK_TRANSFER) {
        return Err(Problem::conflict(
            "order-not-modifiable",
            "Order cannot change",
            format!(
                "order {order_id} is paid by {}, charged as soon as it is validated: its \
                 quantities cannot change (cancel it and order again)",
                order
                    .payment_method
                    .as_deref()
                    .unwrap_or("an unknown method")
            ),
        ));
    }
    let outcome = state
        .store
        .modify_order(&order_id, items, now_millis())
        .await?;
    let order = match outcome {
        ModifyOutcome::Modified { order, .. } => *order,
        ModifyOutcome::NotModifiable { status, claimed } => {
            return Err(not_modifiable(&order_id, status, claimed))
        }
        ModifyOutcome::Insufficient { sku, available } => {
            let field = change_field(&req.items, &sku, "quantity");
            let message = format!("only {available} more units of {sku} are available");
            return Err(Problem::field(
                StatusCode::CONFLICT,
                "insufficient-stock",
                "Not enough stock",
                &field,
                message,
            ));
        }
        ModifyOutcome::UnknownItem { sku } => {
            // The order changed between the read and the write (another change dropped it).
            let field = change_field(&req.items, &sku, "sku");
            return Err(refused_change(vec![field_error(
                field,
                "is not in this order: only the quantities of its items can change",
            )]));
        }
        ModifyOutcome::NotFound => return Err(not_found(&order_id)),
    };
    state.orders.invalidate(&order_id).await;
    announce_modified(&state, &order).await?;
    info!(%order_id, by = %caller.customer_id, revision = order.revision, "Order modified.");
    Ok(Json(order.into()))
}

/// `POST /v1/orders/{id}/payment`.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/payment",
    operation_id = "record_payment",
    tag = "orders",
    summary = "Record the bank transfer that pays an order (admin)",
    description = "For an order paid by bank transfer that awaits its payment (status \
        `validated`, priced): records the transfer received, for the order's total, under the \
        bank's reference. The order becomes `paid` (then invoiced), and its quantities can no \
        longer change. Recording the same reference again answers the same.",
    params(("id" = String, Path, description = "The order id.")),
    request_body(content = RecordPaymentRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order, paid.", body = OrderView),
        (status = 400, description = "The body is not JSON, or the id not UTF-8.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 404, description = "No such order.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The order is not awaiting a bank transfer (card, \
            cancelled, rejected), is paid under another reference, or is between two steps \
            (being validated or re-priced: retry).", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/order-not-payable", "title": "Order cannot be paid",
            "status": 409, "detail": "order 01a2… is cancelled"})),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "The reference is empty, too long or has control \
            characters.", body = Problem, content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn record_payment(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OrderView>, Problem> {
    caller.require_admin()?;
    let order_id = crate::problem::path("id", order_id)?;
    tracing::Span::current().record("order_id", order_id.as_str());
    let req: RecordPaymentRequest = json_body(&headers, body).await?;
    let reference = req.reference.trim().to_string();
    if let Some(message) = text_problem(&reference, MAX_REFERENCE_CHARS) {
        return Err(Problem::invalid(vec![field_error(
            "reference".into(),
            message,
        )]));
    }
    let order = state
        .store
        .get_order(&order_id)
        .await?
        .ok_or_else(|| not_found(&order_id))?;
    let title = "Order cannot be paid";
    let refuse = |detail: String| Problem::conflict("order-not-payable", title, detail);
    if order.payment_method.as_deref() != Some(PaymentMethod::BANK_TRANSFER) {
        return Err(refuse(format!(
            "order {order_id} is paid by {}: the payment stage charges it",
            order
                .payment_method
                .as_deref()
                .unwrap_or("an unknown method")
        )));
    }
    let recorded = state.store.get_payment(&order_id).await?;
    let payment = match recorded {
        // A repeat: finish what the first call started (announce it again).
        Some(p) if p.payment_id.as_deref() == Some(reference.as_str()) => p,
        Some(p) => {
            return Err(refuse(format!(
                "order {order_id} is paid already (reference {})",
                p.payment_id.unwrap_or_default()
            )))
        }
        None => {
            let pricing = match order.status {
                OrderStatus::Validated => order.pricing.clone(),
                OrderStatus::Accepted => None,
                other => return Err(refuse(format!("order {order_id} is {}", other.as_str()))),
            };
            let Some(pricing) = pricing else {
                // A change whose announcement was lost is announced again, so it gets priced.
                announce_modified(&state, &order).await?;
                return Err(retry_soon(
                    "order-not-payable",
                    title,
                    format!("order {order_id} is being priced; retry in a moment"),
                ));
            };
            match state.store.claim_payment(&order_id, order.revision).await? {
                PaymentClaim::Granted => {}
                PaymentClaim::Stale { .. } => {
                    return Err(retry_soon(
                        "order-not-payable",
                        title,
                        format!("order {order_id} changed meanwhile; retry for its new total"),
                    ))
                }
                PaymentClaim::Final(status) => {
                    return Err(refuse(format!("order {order_id} is {}", status.as_str())))
                }
                PaymentClaim::NotFound => return Err(not_found(&order_id)),
            }
            let payment = state
                .store
                .record_payment(PaymentRecord {
                    order_id: order_id.clone(),
                    amount_cents: pricing.total_cents,
                    currency: pricing.currency.clone(),
                    approved: true,
                    payment_id: Some(reference.clone()),
                    reason: None,
                    at: now_millis(),
                })
                .await?;
            if payment.payment_id.as_deref() != Some(reference.as_str()) {
                return Err(refuse(format!(
                    "order {order_id} is paid already (reference {})",
                    payment.payment_id.unwrap_or_default()
                )));
            }
            payment
        }
    };
    let order = announce_paid(&state, order, &payment).await?;
    info!(%order_id, by = %caller.customer_id, %reference, "Bank transfer recorded.");
    Ok(Json(order.into()))
}

/// Produces `OrderModified` for the order's revision while it is not priced yet: after the
/// change, and again on a retry (the same event id) when the first produce failed, so a
/// revision is never left unpriced.
async fn announce_modified(state: &ApiState, order: &OrderRecord) -> Result<(), Problem> {
    if order.revision == 0 || order.pricing.is_some() {
        return Ok(());
    }
    let order_id = order.order_id.as_str();
    let event_id = OrderModified::event_id_for(order_id, order.revision);
    let at = order
        .timeline
        .iter()
        .find(|t| t.event_id == event_id)
        .map_or(order.updated_at, |t| t.at);
    let event = OrderModified {
        event_id,
        order_id: order_id.to_string(),
        customer_id: order.customer_id.clone(),
        revision: order.revision,
        items: order.items.clone(),
        occurred_at: at,
    };
    state.producer.send(&event).await.map_err(|e| {
        Problem::unannounced(
            "the order is changed, but the event log is unavailable; retry to announce it",
            &e,
        )
    })?;
    Ok(())
}

/// Records `paid` on the order and produces `OrderPaid` (both idempotent by the event id); a
/// cancel that slipped in before the payment was recorded is announced again, so the payment
/// stage refunds the transfer.
async fn announce_paid(
    state: &ApiState,
    order: OrderRecord,
    payment: &PaymentRecord,
) -> Result<OrderRecord, Problem> {
    let order_id = order.order_id.clone();
    let Some(pricing) = order.pricing.clone() else {
        return Err(Problem::unavailable(format!(
            "order {order_id} has a payment but no pricing yet; retry"
        )));
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
    state
        .producer
        .send(&event)
        .await
        .map_err(|e| Problem::unannounced(UNANNOUNCED_PAYMENT, &e))?;
    let order = state
        .store
        .get_order(&order_id)
        .await?
        .ok_or_else(|| not_found(&order_id))?;
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
        state
            .producer
            .send(&event)
            .await
            .map_err(|e| Problem::unannounced(UNANNOUNCED_PAYMENT, &e))?;
        warn!(%order_id, "Transfer recorded for an order cancelled meanwhile; refund requested.");
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(items: &[(&str, i32)]) -> OrderRecord {
        OrderRecord {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            status: OrderStatus::Validated,
            items: items
                .iter()
                .map(|(sku, quantity)| OrderItem {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
            shipping_address: None,
            payment_method: Some(PaymentMethod::BANK_TRANSFER.into()),
            pricing: None,
            invoice_number: None,
            created_at: 0,
            updated_at: 0,
            timeline: Vec::new(),
            revision: 0,
            payment_claim: None,
        }
    }

    fn change(sku: &str, quantity: i64) -> ItemChange {
        ItemChange {
            sku: sku.into(),
            quantity,
        }
    }

    fn status(p: &Problem) -> u64 {
        serde_json::to_value(p).unwrap()["status"].as_u64().unwrap()
    }

    fn fields(p: Problem) -> Vec<String> {
        let body = serde_json::to_value(&p).unwrap();
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn changes_set_quantities_keep_the_rest_and_drop_zeroes() {
        let o = order(&[("A", 1), ("B", 2), ("A", 1)]);
        let items = apply_changes(&o, &[change("B", 0), change("A", 5)]).unwrap();
        assert_eq!(
            items,
            vec![OrderItem {
                sku: "A".into(),
                quantity: 5
            }]
        );
        let items = apply_changes(&o, &[change("B", 3)]).unwrap();
        assert_eq!(items[0].quantity, 2, "A listed twice is one item of 2");
        assert_eq!(items[1].quantity, 3);
    }

    #[test]
    fn wrong_changes_are_named() {
        let o = order(&[("A", 1)]);
        // Out of range: 422, before anything else.
        let err = apply_changes(&o, &[change("Z", 1), change("A", -1)]).unwrap_err();
        assert_eq!(status(&err), 422);
        assert_eq!(fields(err), vec!["items[1].quantity"]);
        let err = apply_changes(&o, &[change("A", 1001)]).unwrap_err();
        assert_eq!(fields(err), vec!["items[0].quantity"]);
        assert_eq!(fields(apply_changes(&o, &[]).unwrap_err()), vec!["items"]);
        // Not fitting the order's items: 409.
        let err = apply_changes(&o, &[change("Z", 1), change("A", 1), change("A", 2)]).unwrap_err();
        assert_eq!(status(&err), 409);
        assert_eq!(fields(err), vec!["items[0].sku", "items[2].sku"]);
        let err = apply_changes(&o, &[change("A", 0)]).unwrap_err();
        assert_eq!(status(&err), 409);
        assert_eq!(fields(err), vec!["items"]);
    }
}
