//! `POST /v1/orders/{id}/cancel` (the order's customer or an admin) and
//! `POST /v1/orders/{id}/ship` (admins), over [`ops::cancel_order`] and [`ops::ship_order`].
//!
//! [`ops::cancel_order`]: crate::ops::cancel_order
//! [`ops::ship_order`]: crate::ops::ship_order

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    http::HeaderMap,
    Json,
};
use orderflow_store::{CancelOutcome, ShipOutcome};
use serde::Deserialize;
use tracing::info;
use utoipa::ToSchema;

use crate::problem::responses;
use crate::{
    auth::Caller,
    ops,
    orders::{is_json, no_order, order_path, parse_json, read_body, OrderView},
    problem::{text_problem, FieldError, Problem},
    ApiState,
};

/// The longest cancellation reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// The body of `POST /v1/orders/{id}/cancel` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    /// Why the order is cancelled; shown in its timeline and the customer's email.
    #[schema(
        max_length = 500,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "ordered the wrong size"
    )]
    #[serde(default)]
    pub reason: Option<String>,
}

/// The cancel request: none when the body is empty; else JSON, its reason checked.
async fn cancel_request(headers: &HeaderMap, body: Body) -> Result<CancelOrderRequest, Problem> {
    let bytes = read_body(headers, body).await?;
    if bytes.is_empty() {
        return Ok(CancelOrderRequest::default());
    }
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type());
    }
    // `null` is the document's "no body" too (the body is optional).
    let req: CancelOrderRequest =
        parse_json::<Option<CancelOrderRequest>>(&bytes)?.unwrap_or_default();
    if let Some(message) = req
        .reason
        .as_deref()
        .and_then(|r| text_problem(r, MAX_REASON_CHARS))
    {
        return Err(Problem::invalid(vec![FieldError {
            field: "reason".into(),
            message,
        }]));
    }
    Ok(req)
}

/// `POST /v1/orders/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    tag = "orders",
    summary = "Cancel an order",
    description = "Cancels the order at any point before it ships: it stays, with status \
        `cancelled`, its reserved stock goes back, and a paid order is refunded. For the order's \
        customer and admins; another customer gets 404. Cancelling again answers the same \
        (the first reason stands). The body is optional.",
    params(("id" = String, Path, description = "The order id.")),
    request_body(content = Option<CancelOrderRequest>, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order, cancelled.", body = OrderView),
        (status = 400, description = "The body is not JSON, or the id not UTF-8.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unauthorized,
        (status = 404, description = "No such order, or another customer's.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The order has shipped: it can no longer be cancelled.",
         body = Problem, content_type = "application/problem+json",
         example = json!({"type": "/problems/order-shipped", "title": "Order already shipped",
            "status": 409, "detail": "order 01a2… has shipped and can no longer be cancelled"})),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "The reason is empty, too long or has control \
            characters, or the body has unknown fields.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OrderView>, Problem> {
    let order_id = order_path(order_id)?;
    let req = cancel_request(&headers, body).await?;
    let reason = req.reason.as_deref().map(str::trim);
    match ops::cancel_order(&state, &caller, &order_id, reason).await? {
        CancelOutcome::Cancelled { order, paid } => {
            info!(%order_id, by = %caller.customer_id, paid, "Order cancelled.");
            Ok(Json((*order).into()))
        }
        CancelOutcome::Shipped => Err(Problem::conflict(
            "order-shipped",
            "Order already shipped",
            format!("order {order_id} has shipped and can no longer be cancelled"),
        )),
        CancelOutcome::NotFound => Err(no_order(&order_id)),
    }
}

/// `POST /v1/orders/{id}/ship`.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/ship",
    tag = "orders",
    summary = "Mark an order as shipped (admin)",
    description = "A paid or invoiced order becomes `shipped`; it can no longer be cancelled. \
        Shipping again answers the same.",
    params(("id" = String, Path, description = "The order id.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order, shipped.", body = OrderView),
        (status = 400, description = "The id is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 404, description = "No such order.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The order is not paid yet, its payment failed, or it \
            is cancelled (`detail` says which).", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/order-not-shippable",
            "title": "Order cannot ship", "status": 409,
            "detail": "order 01a2… is cancelled: only a paid or invoiced order ships"})),
        responses::Unavailable,
    ),
)]
pub async fn ship(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderView>, Problem> {
    caller.require_admin()?;
    let order_id = order_path(order_id)?;
    match ops::ship_order(&state, &order_id).await? {
        ShipOutcome::Shipped(order) => {
            info!(%order_id, by = %caller.customer_id, "Order shipped.");
            Ok(Json((*order).into()))
        }
        ShipOutcome::NotReady(status) => Err(Problem::conflict(
            "order-not-shippable",
            "Order cannot ship",
            format!(
                "order {order_id} is {}: only a paid or invoiced order ships",
                status.as_str()
            ),
        )),
        ShipOutcome::NotFound => Err(no_order(&order_id)),
    }
}
