//! `DELETE /v1/orders/{id}`, the conventional spelling of a cancel, and (admins)
//! `POST /v1/orders/{id}/prices`, which adjusts the unit price of lines of an unpaid order.
//!
//! `DELETE` is soft, exactly as `POST /v1/orders/{id}/cancel` (which it calls): the order stays,
//! with status `cancelled`, listed and readable.
//!
//! A price adjustment (a discount, a correction) takes the path of a change of quantities
//! ([`crate::modify`]): only while the order awaits its bank transfer (status `validated`,
//! payment not claimed), the store swaps the reservation's lines to the new unit prices and
//! bumps the revision, then `OrderModified` goes out and validation re-prices the revision (new
//! totals, a `validated` step, the customer's email). The operation is [`ops::reprice_order`]
//! (what it writes and announces is documented there).
//!
//! [`ops::reprice_order`]: crate::ops::reprice_order

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    http::HeaderMap,
    Json,
};
use serde::Deserialize;
use tracing::info;
use utoipa::ToSchema;

pub use crate::ops::{PriceChange, MAX_UNIT_PRICE_CENTS};
use crate::{
    auth::Caller,
    lifecycle::CancelOrderRequest,
    ops::{self, Modified, OpError},
    orders::{json_body, no_order, order_path, OrderView},
    problem::{responses, FieldError, Problem},
    ApiState,
};

/// `DELETE /v1/orders/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/orders/{id}",
    operation_id = "delete_order",
    tag = "orders",
    summary = "Cancel an order (soft)",
    description = "The same as `POST /v1/orders/{id}/cancel`: the order is not removed; it \
        stays, listed and readable, with status `cancelled`, its stock goes back and a paid \
        order is refunded. For the order's customer and admins. The body (a reason) is \
        optional.",
    params(("id" = String, Path, description = "The order id.")),
    request_body(content = Option<CancelOrderRequest>, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order, cancelled.", body = OrderView),
        (status = 400, description = "The body is not JSON, or the id not UTF-8.",
         body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token.", body = Problem,
         content_type = "application/problem+json"),
        (status = 404, description = "No such order, or another customer's.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The order has shipped: it can no longer be cancelled.",
         body = Problem, content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "The reason is empty, too long or has control \
            characters, or the body has unknown fields.", body = Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "The store is down; retry.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
    ),
)]
pub async fn delete(
    state: State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OrderView>, Problem> {
    crate::lifecycle::cancel(state, caller, order_id, headers, body).await
}

/// The body of `POST /v1/orders/{id}/prices`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustPricesRequest {
    /// New unit prices for lines of the order (the others keep theirs).
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<PriceChange>,
}

/// `POST /v1/orders/{id}/prices`.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/prices",
    operation_id = "adjust_prices",
    tag = "orders",
    summary = "Adjust the unit price of lines of an unpaid order (admin)",
    description = "A discount or a correction, while an order paid by bank transfer awaits its \
        payment (status `validated`): the named lines get the new unit prices, the quantities \
        stay. As with a change of quantities, the answer is the order with its new `revision` \
        and without totals, and validation re-prices it within moments (a new `validated` \
        step with the totals, and an email to the customer). A card order is charged as soon \
        as it is validated: its prices cannot change.",
    params(("id" = String, Path, description = "The order id.")),
    request_body(content = AdjustPricesRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order with its new revision.", body = OrderView),
        (status = 400, description = "The body is not JSON, or the id not UTF-8.",
         body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token.", body = Problem,
         content_type = "application/problem+json"),
        responses::Forbidden,
        (status = 404, description = "No such order.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The order cannot change now (not awaiting a bank \
            transfer, paid, cancelled, or still being validated: then retry), or a line is \
            not the order's or is listed twice; the fields name the lines.", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/order-change-refused",
            "title": "The order cannot change this way", "status": 409,
            "detail": "lines[0].sku: is not in this order: only the prices of its lines can change",
            "errors": [{"field": "lines[0].sku",
                "message": "is not in this order: only the prices of its lines can change"}]})),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "A price is out of range, or no line is named (the field \
            names it).", body = Problem, content_type = "application/problem+json",
         example = json!({"type": "/problems/validation", "title": "Invalid request",
            "status": 422, "detail": "lines[0].unit_price_cents: must be from 0 to 100000000",
            "errors": [{"field": "lines[0].unit_price_cents",
                "message": "must be from 0 to 100000000"}]})),
        (status = 503, description = "The store is down; retry (a retry finishes what \
            the first call started).", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
    ),
)]
pub async fn adjust_prices(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OrderView>, Problem> {
    caller.require_admin()?;
    let order_id = order_path(order_id)?;
    let req: AdjustPricesRequest = json_body(&headers, body).await?;
    let outcome = ops::reprice_order(&state, &order_id, &req.lines)
        .await
        .map_err(|e| match e {
            OpError::Store(e) => Problem::down("order store", &e),
            e => e.into(),
        })?;
    let order = match outcome {
        Modified::Modified(order) => *order,
        Modified::BadChange(e) => return Err(crate::modify::change_problem(e)),
        Modified::NotBankTransfer { method } => {
            return Err(crate::modify::not_bank_transfer(
                &order_id, method, "prices",
            ))
        }
        Modified::NotModifiable { status, claimed } => {
            return Err(crate::modify::not_modifiable(&order_id, status, claimed))
        }
        Modified::UnknownItem { sku } => {
            // The order changed between the read and the write (another change dropped it).
            let i = req.lines.iter().position(|l| l.sku == sku).unwrap_or(0);
            return Err(crate::modify::refused_change(vec![FieldError {
                field: format!("lines[{i}].sku"),
                message: "is not in this order: only the prices of its lines can change".into(),
            }]));
        }
        Modified::TooManyRevisions { max } => {
            return Err(crate::modify::too_many_revisions(&order_id, max))
        }
        // A repricing moves no stock.
        Modified::Insufficient { .. } | Modified::NotFound => return Err(no_order(&order_id)),
    };
    info!(%order_id, by = %caller.customer_id, revision = order.revision, "Order prices adjusted.");
    Ok(Json(order.into()))
}

#[cfg(test)]
mod tests {
    use orderflow_schemas::{OrderItem, OrderStatus, PaymentMethod};
    use orderflow_store::{LinePrice, OrderRecord};

    use super::*;

    fn price_changes(o: &OrderRecord, changes: &[PriceChange]) -> Result<Vec<LinePrice>, Problem> {
        ops::modify::price_changes(o, changes).map_err(crate::modify::change_problem)
    }

    fn order() -> OrderRecord {
        OrderRecord {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            status: OrderStatus::Validated,
            items: vec![OrderItem {
                sku: "A".into(),
                quantity: 1,
            }],
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

    fn change(sku: &str, unit_price_cents: i64) -> PriceChange {
        PriceChange {
            sku: sku.into(),
            unit_price_cents,
        }
    }

    fn fields(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn wrong_prices_are_named() {
        let o = order();
        let p = price_changes(&o, &[change("A", -1)]).unwrap_err();
        assert_eq!(
            (p.status, fields(&p)),
            (422, vec!["lines[0].unit_price_cents"])
        );
        let p = price_changes(&o, &[change("A", MAX_UNIT_PRICE_CENTS + 1)]).unwrap_err();
        assert_eq!(p.status, 422);
        let p = price_changes(&o, &[]).unwrap_err();
        assert_eq!(fields(&p), vec!["lines"]);
        let p = price_changes(&o, &[change("A", 1), change("Z", 1), change("A", 2)]).unwrap_err();
        assert_eq!(
            (p.status, fields(&p)),
            (409, vec!["lines[1].sku", "lines[2].sku"])
        );
        let ok = price_changes(&o, &[change("A", 0)]).unwrap();
        assert_eq!(ok[0].unit_price_cents, 0);
    }
}
