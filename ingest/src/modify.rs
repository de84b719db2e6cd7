//! `PATCH /v1/orders/{id}` (the order's customer or an admin) changes the quantities of an
//! unpaid order; `POST /v1/orders/{id}/payment` (admins) records the bank transfer that pays
//! it. The operations are [`ops::modify_order`] and [`ops::record_transfer`] (what each writes
//! and announces is documented there).
//!
//! Only orders paid by bank transfer (`payment.method = "bank_transfer"`) have an unpaid
//! window: a card is charged as soon as the order is validated. Such an order waits, status
//! `validated`, until an admin records the transfer; until then its quantities may change.
//!
//! [`ops::modify_order`]: crate::ops::modify_order
//! [`ops::record_transfer`]: crate::ops::record_transfer

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use orderflow_schemas::OrderStatus;
use serde::Deserialize;
use tracing::info;
use utoipa::ToSchema;

pub use crate::ops::ItemChange;
use crate::problem::responses;
use crate::{
    auth::Caller,
    ops::{
        self,
        modify::{ChangeError, Modified},
        Transfer,
    },
    orders::{json_body, no_order, order_path, OrderView},
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

/// 409: the order has changed as many times as an order may.
pub(crate) fn too_many_revisions(order_id: &str, max: i32) -> Problem {
    Problem::conflict(
        "order-revision-limit",
        "Order cannot change again",
        format!(
            "order {order_id} has been changed {max} times, the most an order may: cancel it \
             and order again"
        ),
    )
}

/// 409: the order is paid by `method`, not by bank transfer, so its `what` (quantities,
/// prices) cannot change.
pub(crate) fn not_bank_transfer(order_id: &str, method: Option<String>, what: &str) -> Problem {
    Problem::conflict(
        "order-not-modifiable",
        "Order cannot change",
        format!(
            "order {order_id} is paid by {}, charged as soon as it is validated: its {what} \
             cannot change (cancel it and order again)",
            method.as_deref().unwrap_or("an unknown method")
        ),
    )
}

/// Why the order's quantities cannot change, as a 409.
pub(crate) fn not_modifiable(order_id: &str, status: OrderStatus, claimed: bool) -> Problem {
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

/// A change that does not apply to the order's items: 422 for a value out of range, 409 for a
/// change the order's items do not allow (a SKU it does not have, a SKU twice, no item left),
/// as the document cannot say what the order holds.
pub(crate) fn change_problem(e: ChangeError) -> Problem {
    match e {
        ChangeError::Invalid(errors) => Problem::invalid(errors),
        ChangeError::Refused(errors) => refused_change(errors),
    }
}

/// 409: the change does not fit the order's items.
pub(crate) fn refused_change(errors: Vec<FieldError>) -> Problem {
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
    let order_id = order_path(order_id)?;
    let req: ModifyOrderRequest = json_body(&headers, body).await?;
    let order = match ops::modify_order(&state, &caller, &order_id, &req.items).await? {
        Modified::Modified(order) => *order,
        Modified::NotFound => return Err(no_order(&order_id)),
        Modified::BadChange(e) => return Err(change_problem(e)),
        Modified::NotBankTransfer { method } => {
            return Err(not_bank_transfer(&order_id, method, "quantities"))
        }
        Modified::NotModifiable { status, claimed } => {
            return Err(not_modifiable(&order_id, status, claimed))
        }
        Modified::Insufficient { sku, available } => {
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
        Modified::TooManyRevisions { max } => return Err(too_many_revisions(&order_id, max)),
        Modified::UnknownItem { sku } => {
            // The order changed between the read and the write (another change dropped it).
            let field = change_field(&req.items, &sku, "sku");
            return Err(refused_change(vec![field_error(
                field,
                "is not in this order: only the quantities of its items can change",
            )]));
        }
    };
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
    let order_id = order_path(order_id)?;
    let req: RecordPaymentRequest = json_body(&headers, body).await?;
    let reference = req.reference.trim().to_string();
    if let Some(message) = text_problem(&reference, MAX_REFERENCE_CHARS) {
        return Err(Problem::invalid(vec![field_error(
            "reference".into(),
            message,
        )]));
    }
    let title = "Order cannot be paid";
    let refuse = |detail: String| Problem::conflict("order-not-payable", title, detail);
    let order = match ops::record_transfer(&state, &order_id, &reference).await? {
        Transfer::Paid(order) => *order,
        Transfer::NotFound => return Err(no_order(&order_id)),
        Transfer::NotBankTransfer { method } => {
            return Err(refuse(format!(
                "order {order_id} is paid by {}: the payment stage charges it",
                method.as_deref().unwrap_or("an unknown method")
            )))
        }
        Transfer::PaidAlready { reference } => {
            return Err(refuse(format!(
                "order {order_id} is paid already (reference {reference})"
            )))
        }
        Transfer::Final(status) => {
            return Err(refuse(format!("order {order_id} is {}", status.as_str())))
        }
        Transfer::BeingPriced => {
            return Err(retry_soon(
                "order-not-payable",
                title,
                format!("order {order_id} is being priced; retry in a moment"),
            ))
        }
        Transfer::Changed => {
            return Err(retry_soon(
                "order-not-payable",
                title,
                format!("order {order_id} changed meanwhile; retry for its new total"),
            ))
        }
        Transfer::Unpriced => {
            return Err(Problem::unavailable(format!(
                "order {order_id} has a payment but no pricing yet; retry"
            )))
        }
    };
    info!(%order_id, by = %caller.customer_id, %reference, "Bank transfer recorded.");
    Ok(Json(order.into()))
}

#[cfg(test)]
mod tests {
    use orderflow_schemas::{OrderItem, PaymentMethod};
    use orderflow_store::OrderRecord;

    use super::*;

    fn apply_changes(o: &OrderRecord, changes: &[ItemChange]) -> Result<Vec<OrderItem>, Problem> {
        ops::modify::apply_changes(o, changes).map_err(change_problem)
    }

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
