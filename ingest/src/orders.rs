//! `POST /v1/orders` and `GET /v1/orders/{id}`.
//!
//! Both need an access token ([`Caller`]). An order's customer is the caller: a customer may
//! omit `customer_id` or give its own (another id is a `403`); an admin may name any customer
//! (omitted: the admin itself). Reading another customer's order is a `404`, the same answer as
//! for an order that does not exist.
//!
//! A bank-transfer order is refused (409 naming `payment.method`) when its customer has as many
//! orders awaiting a transfer as [`ApiState::max_unpaid_orders`] allows, whoever places it; the
//! store counts and writes atomically ([`Store::create_order`]). One `Idempotency-Key` makes
//! one order: a request that meets the key while another is still recording its order gets 409
//! with `Retry-After`.
//!
//! [`Store::create_order`]: orderflow_store::OrderStore::create_order

use std::{sync::Arc, time::UNIX_EPOCH};

use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use orderflow_schemas::{Address, OrderItem, OrderStatus};
use orderflow_store::{IdempotencyKey, OrderRecord, TimelineEntry};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(crate) use crate::body::{integer, is_json};
pub use crate::body::{json_body, parse_json, read_body, MAX_BODY_BYTES};
use crate::problem::responses;
use crate::{
    auth::Caller,
    ops::{self, NewOrder, Placed},
    problem::{FieldError, Problem},
    ApiState,
};

/// Most items in one order.
pub const MAX_ITEMS: usize = 100;
/// Most units of one item.
pub const MAX_QUANTITY: i64 = 1000;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

// The `#[schema]` limits below document what [`validate`] checks: text fields must hold a
// character that is not whitespace and none that is a control character (`TEXT` pattern), within
// a length in characters.

/// A new order. Unknown fields are refused.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// Who orders: the caller when omitted. A customer may only name itself; an admin may
    /// name any customer.
    #[serde(
        default,
        deserialize_with = "some_string",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "c1", nullable = false)]
    pub customer_id: Option<String>,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemRequest>,
    pub shipping_address: AddressRequest,
    pub payment: PaymentRequest,
}

/// One item of a new order.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    /// A SKU of the catalogue (`GET /v1/products`); an unknown one gets the order rejected by
    /// the validation stage, after the `202`.
    #[schema(
        max_length = 64,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "MUG-001")]
    pub sku: String,
    /// Wider than the event's `int`, so that an absurd number is named by our check. `2.0` is
    /// `2`, as JSON Schema's `integer` has it (and as clients that send every number as a
    /// float write it).
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 1, maximum = 1000, example = 2)]
    pub quantity: i64,
}

/// An optional field that, when present, must be a string (`null` is refused, as the document
/// says).
fn some_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

/// Where the order ships to.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    #[schema(
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "Ada Lovelace")]
    pub name: String,
    #[schema(
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "1 Main St")]
    pub line1: String,
    #[serde(default)]
    #[schema(
        example = "Flat 2",
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub line2: Option<String>,
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "Berlin")]
    pub city: String,
    #[schema(
        max_length = 20,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "10115")]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = "^[A-Z]{2}$", example = "DE")]
    pub country: String,
}

/// How the order is paid. Its `Debug` does not show the token.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    #[schema(
        max_length = 32,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "card")]
    pub method: String,
    /// The payment gateway's token; the simulated gateway declines `tok_decline` and
    /// `tok_insufficient_funds`. Kept in the store with the order until the charge is done
    /// (never on a topic, never logged); ignored for `bank_transfer`.
    #[schema(
        max_length = 256,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[schema(example = "tok_visa")]
    pub token: String,
}

impl std::fmt::Debug for PaymentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentRequest")
            .field("method", &self.method)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The order was recorded and its `OrderAccepted` event is on the topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// A UUIDv7.
    pub order_id: String,
    /// `accepted`, or where an order replayed by its `Idempotency-Key` has got to.
    pub status: OrderStatus,
}

/// The order as the API shows it. Pricing fields appear once the validation stage priced it,
/// `invoice_number` once it is invoiced.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<orderflow_schemas::OrderLine>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtotal_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
    /// 0 as placed, one more for each change of quantities (`PATCH /v1/orders/{id}`); the
    /// totals are missing while a new revision is being re-priced.
    pub revision: i32,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub timeline: Vec<TimelineView>,
}

/// One step the order went through.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineView {
    pub status: OrderStatus,
    #[schema(format = DateTime)]
    pub at: String,
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl From<OrderRecord> for OrderView {
    fn from(o: OrderRecord) -> Self {
        let pricing = o.pricing;
        OrderView {
            order_id: o.order_id,
            customer_id: o.customer_id,
            status: o.status,
            items: o.items,
            shipping_address: o.shipping_address,
            payment_method: o.payment_method,
            currency: pricing.as_ref().map(|p| p.currency.clone()),
            subtotal_cents: pricing.as_ref().map(|p| p.subtotal_cents),
            tax_cents: pricing.as_ref().map(|p| p.tax_cents),
            total_cents: pricing.as_ref().map(|p| p.total_cents),
            lines: pricing.map(|p| p.lines),
            invoice_number: o.invoice_number,
            revision: o.revision,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
            timeline: o
                .timeline
                .into_iter()
                .map(|t: TimelineEntry| TimelineView {
                    status: t.status,
                    at: rfc3339(t.at),
                    event_id: t.event_id,
                    detail: t.detail,
                })
                .collect(),
        }
    }
}

/// Checks the values serde cannot: ranges, lengths, formats. Lists every problem at once.
pub fn validate(req: &CreateOrderRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: &str| {
        errors.push(FieldError {
            field,
            message: message.to_string(),
        })
    };
    let text = crate::problem::text_problem;
    if let Some(m) = req.customer_id.as_deref().and_then(|c| text(c, 128)) {
        err("customer_id".into(), &m);
    }
    if req.items.is_empty() {
        err("items".into(), "must hold at least one item");
    }
    if req.items.len() > MAX_ITEMS {
        err(
            "items".into(),
            &format!("must hold at most {MAX_ITEMS} items"),
        );
    }
    for (i, item) in req.items.iter().enumerate().take(MAX_ITEMS) {
        if let Some(m) = text(&item.sku, 64) {
            err(format!("items[{i}].sku"), &m);
        }
        if item.quantity <= 0 {
            err(format!("items[{i}].quantity"), "must be at least 1");
        } else if item.quantity > MAX_QUANTITY {
            err(
                format!("items[{i}].quantity"),
                &format!("must be at most {MAX_QUANTITY}"),
            );
        }
    }
    let a = &req.shipping_address;
    for (name, value, max) in [
        ("name", &a.name, 200),
        ("line1", &a.line1, 200),
        ("city", &a.city, 100),
        ("postal_code", &a.postal_code, 20),
    ] {
        if let Some(m) = text(value, max) {
            err(format!("shipping_address.{name}"), &m);
        }
    }
    if let Some(line2) = &a.line2 {
        if line2.chars().count() > 200 || line2.chars().any(char::is_control) {
            err(
                "shipping_address.line2".into(),
                "is too long or has control characters",
            );
        }
    }
    if a.country.len() != 2 || !a.country.chars().all(|c| c.is_ascii_uppercase()) {
        err(
            "shipping_address.country".into(),
            "must be an ISO 3166-1 alpha-2 code such as \"DE\"",
        );
    }
    if let Some(m) = text(&req.payment.method, 32) {
        err("payment.method".into(), &m);
    }
    if let Some(m) = text(&req.payment.token, 256) {
        err("payment.token".into(), &m);
    }
    errors
}

fn idempotency_key(
    headers: &HeaderMap,
    req: &CreateOrderRequest,
    now: i64,
    ttl_ms: i64,
) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(key) = idempotency_header(headers)? else {
        return Ok(None);
    };
    let normalized = serde_json::to_vec(req).unwrap_or_default();
    Ok(Some(IdempotencyKey {
        key,
        fingerprint: orderflow_schemas::stable_digest(&normalized),
        expires_at: now + ttl_ms,
    }))
}

/// The `Idempotency-Key` header, if any: visible ASCII, 1 to [`MAX_IDEMPOTENCY_KEY`]
/// characters once trimmed (else 400 naming `header:Idempotency-Key`).
pub fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |message: &str| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key header",
            "header:Idempotency-Key",
            message,
        )
    };
    let key = value
        .to_str()
        .map_err(|_| bad("must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad(&format!(
            "must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(Some(key.to_string()))
}

fn accepted_response(order_id: &str, status: OrderStatus, replayed: bool) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            order_id: order_id.to_string(),
            status,
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `POST /v1/orders`.
#[utoipa::path(
    post,
    path = "/v1/orders",
    operation_id = "create_order",
    tag = "orders",
    summary = "Place an order",
    description = "Validates the order, records it and puts its `OrderAccepted` event on \
        `orders.accepted`; answers once the broker acknowledged it. The stages then validate \
        (stock), charge and invoice it: follow it with `GET /v1/orders/{id}`.",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, max_length = 255,
         pattern = "^[\\t -~]*[!-~][\\t -~]*$",
         description = "Makes a retry safe: the same key (per customer, kept 24 h) with the \
            same body answers with the first order (`idempotent-replayed: true`); with \
            another body, 422. Visible ASCII, 1 to 255 characters."),
    ),
    request_body(content = CreateOrderRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the order is on its way.", body = Accepted,
         headers(
            ("Location" = String, description = "The order: `/v1/orders/{order_id}`."),
            ("idempotent-replayed" = String,
             description = "`true` when the `Idempotency-Key` named an earlier order."),
         )),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is \
            not valid.", body = Problem, content_type = "application/problem+json",
         example = json!({"type": "/problems/malformed-json", "title": "The body is not valid JSON",
            "status": 400, "detail": "body: EOF while parsing a value at line 1 column 21",
            "errors": [{"field": "body",
                        "message": "EOF while parsing a value at line 1 column 21"}]})),
        responses::Unauthorized,
        (status = 403, description = "A customer named another customer in `customer_id`.",
         body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is paid by bank transfer and its customer has \
            as many orders awaiting a transfer as allowed (`--max-unpaid-orders`, also for \
            orders an admin places), naming `payment.method`; or another request with the \
            same `Idempotency-Key` is being recorded right now (`Retry-After`; retrying \
            answers with its order).", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait (a key in progress).")),
         example = json!({"type": "/problems/too-many-unpaid-orders",
            "title": "Too many orders awaiting a bank transfer", "status": 409,
            "detail": "payment.method: the customer has 3 orders awaiting a bank transfer, the most allowed: pay or cancel one first, or pay by card",
            "errors": [{"field": "payment.method",
                        "message": "the customer has 3 orders awaiting a bank transfer, the most allowed: pay or cancel one first, or pay by card"}]})),
        (status = 413, description = "The body is over 1 MiB.", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/body-too-large", "title": "Request body too large",
            "status": 413, "detail": "body: the body must be at most 1048576 bytes",
            "errors": [{"field": "body", "message": "the body must be at most 1048576 bytes"}]})),
        (status = 415, description = "The content type is not JSON.", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/unsupported-media-type",
            "title": "Unsupported content type", "status": 415,
            "detail": "header:Content-Type: must be application/json",
            "errors": [{"field": "header:Content-Type", "message": "must be application/json"}]})),
        (status = 422, description = "Fields are unknown, missing, mistyped or out of range \
            (each is listed in `errors`), or the `Idempotency-Key` was used with another body.",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is down; retry (with the same \
            `Idempotency-Key`). A broker that is down does not refuse orders: their events wait \
            in the store's outbox.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait.")),
         example = json!({"type": "/problems/unavailable",
            "title": "Service temporarily unavailable", "status": 503,
            "detail": "the store is unavailable; retry with the same Idempotency-Key"})),
    ),
)]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let mut req: CreateOrderRequest = json_body(&headers, body).await?;
    let errors = validate(&req);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let customer_id = order_customer(&caller, req.customer_id.as_deref())?;
    // The idempotency fingerprint covers the customer the order is for, however it was named.
    req.customer_id = Some(customer_id.clone());
    let now = orderflow_schemas::now_millis();
    let key = idempotency_key(&headers, &req, now, state.idempotency_ttl_ms)?;

    let new = NewOrder {
        customer_id,
        items: req
            .items
            .iter()
            .map(|i| OrderItem {
                sku: i.sku.clone(),
                quantity: i.quantity as i32,
            })
            .collect(),
        shipping_address: Address {
            name: req.shipping_address.name,
            line1: req.shipping_address.line1,
            line2: req.shipping_address.line2,
            city: req.shipping_address.city,
            postal_code: req.shipping_address.postal_code,
            country: req.shipping_address.country,
        },
        payment_method: req.payment.method,
        payment_token: req.payment.token,
        idempotency_key: key,
    };
    match ops::place_order(&state, new).await? {
        Placed::Accepted { order_id } => {
            Ok(accepted_response(&order_id, OrderStatus::Accepted, false))
        }
        Placed::Replayed { order_id, status } => Ok(accepted_response(&order_id, status, true)),
        Placed::InProgress => Err(Problem::field(
            StatusCode::CONFLICT,
            "idempotency-key-in-progress",
            "A request with this Idempotency-Key is in progress",
            "header:Idempotency-Key",
            "another request with this key is being recorded; retry in a moment for its order",
        )
        .with_retry_after(1)),
        Placed::TooManyUnpaid { open } => Err(Problem::field(
            StatusCode::CONFLICT,
            "too-many-unpaid-orders",
            "Too many orders awaiting a bank transfer",
            "payment.method",
            format!(
                "the customer has {open} orders awaiting a bank transfer, the most allowed: \
                 pay or cancel one first, or pay by card"
            ),
        )),
        Placed::KeyReused { order_id } => Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key already used for another request",
            "header:Idempotency-Key",
            format!("was used for order {order_id} with a different body"),
        )),
    }
}

/// Whose order a new order is: see the module docs.
fn order_customer(caller: &Caller, named: Option<&str>) -> Result<String, Problem> {
    match named {
        None => Ok(caller.customer_id.clone()),
        Some(named) if caller.is_admin() || named == caller.customer_id => Ok(named.to_string()),
        Some(_) => Err(Problem::forbidden(
            "a customer can only order for itself: omit customer_id or give your own",
        )),
    }
}

/// The order id of a `/v1/orders/{id}…` route, or the 400 that names it; recorded on the
/// request's span.
pub(crate) fn order_path(segment: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let order_id = crate::problem::path("id", segment)?;
    tracing::Span::current().record("order_id", order_id.as_str());
    Ok(order_id)
}

/// 404: no such order (or one the caller may not see: the same answer).
pub(crate) fn no_order(order_id: &str) -> Problem {
    Problem::not_found(format!("no order {order_id}"))
}

/// `GET /v1/orders/{id}`.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    operation_id = "get_order",
    tag = "orders",
    summary = "Read an order",
    description = "The order's status, items, priced lines, totals, invoice number and timeline, \
        as the stages have got it so far.",
    params(("id" = String, Path, description = "The order id `POST /v1/orders` returned.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        responses::Unauthorized,
        (status = 400, description = "The id is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        (status = 404, description = "No such order, or another customer's.", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404,
            "detail": "no order 01a2…"})),
        responses::Unavailable,
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderView>, Problem> {
    let order_id = order_path(order_id)?;
    match state.orders.get(&*state.store, &order_id).await? {
        Some(order) if caller.may_access(&order.customer_id) => Ok(Json(order.into())),
        // Someone else's order: the same answer as for none at all.
        _ => Err(no_order(&order_id)),
    }
}

/// `GET /v1/orders/{id}/invoice`.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/invoice",
    operation_id = "get_invoice",
    tag = "orders",
    summary = "Download an order's invoice (PDF)",
    description = "The invoice the invoicing stage rendered, as `application/pdf`. For the \
        order's customer and admins; another customer gets 404, as if the order did not exist.",
    params(("id" = String, Path, description = "The order id.")),
    responses(
        (status = 200, description = "The invoice.", body = String,
         content_type = "application/pdf",
         headers(("Content-Disposition" = String,
                  description = "`attachment; filename=\"INV-00000001.pdf\"`"))),
        (status = 400, description = "The id is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        (status = 404, description = "No such order (for this caller), or it is not invoiced \
            yet (`detail` says which).", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404,
            "detail": "order 01a2… has no invoice yet (status paid)"})),
        (status = 503, description = "The store or the invoice storage is down; retry.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
    ),
)]
pub async fn invoice(
    State(state): State<Arc<ApiState>>,
    caller: crate::auth::Caller,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let order_id = order_path(order_id)?;
    let order = state
        .orders
        .get(&*state.store, &order_id)
        .await?
        .filter(|o| caller.may_access(&o.customer_id))
        .ok_or_else(|| no_order(&order_id))?;
    let Some(number) = order.invoice_number else {
        return Err(Problem::not_found(format!(
            "order {order_id} has no invoice yet (status {})",
            order.status.as_str()
        )));
    };
    let files = state
        .invoice_files
        .as_ref()
        .ok_or_else(|| Problem::unavailable("no invoice storage is configured"))?;
    let unavailable = |e: orderflow_store::StoreError| Problem::down("invoice storage", &e);
    let not_stored = || {
        Problem::not_found(format!(
            "invoice {number} of order {order_id} is not stored"
        ))
    };
    let file = match files.get(&number).await.map_err(unavailable)? {
        Some(file) => file,
        // Not written when invoiced (a local directory): rendered from the recorded invoice
        // now, and kept for the next download.
        None if !files.written_when_invoiced() => {
            let invoice = state
                .store
                .get_invoice(&order_id)
                .await
                .map_err(|e| Problem::down("order store", &e))?
                .filter(|invoice| invoice.number == number)
                .ok_or_else(not_stored)?;
            files
                .rendered(&invoice, &*state.store)
                .await
                .map_err(unavailable)?
        }
        None => return Err(not_stored()),
    };
    let mut response = Body::from_stream(file.bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size));
    if let Ok(disposition) =
        HeaderValue::from_str(&format!("attachment; filename=\"{number}.pdf\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "customer_id": "c1",
            "items": [{"sku": "SKU-1", "quantity": 2}],
            "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"},
            "payment": {"method": "card", "token": "tok_visa"}
        })
    }

    fn field_of(p: &Problem) -> &str {
        &p.errors[0].field
    }

    #[test]
    fn parse_errors_name_the_field() {
        let mut v = valid();
        v["items"][0]["quantity"] = serde_json::json!("two");
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(field_of(&p), "items[0].quantity");

        let mut v = valid();
        v["customer_id"] = serde_json::Value::Null;
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!((p.status, field_of(&p)), (422, "customer_id"));

        let mut v = valid();
        v.as_object_mut().unwrap().remove("items");
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(field_of(&p), "items");

        let mut v = valid();
        v["shipping_address"]["planet"] = serde_json::json!("Mars");
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(field_of(&p), "shipping_address.planet");

        let mut v = valid();
        v["items"][0]["quantity"] = serde_json::json!(2.5);
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(field_of(&p), "items[0].quantity");
        assert_eq!(
            p.errors[0].message,
            "invalid value: floating point `2.5`, expected an integer"
        );

        let p = parse_json::<CreateOrderRequest>(b"{\"customer_id\": \"c1\",").unwrap_err();
        assert_eq!(p.status, 400);
        assert_eq!(field_of(&p), "body");
        assert_eq!(
            p.detail,
            "body: EOF while parsing a value at line 1 column 21"
        );

        let p = parse_json::<CreateOrderRequest>(b"{\"items\": [{\"sku\": \"A\", ").unwrap_err();
        assert_eq!((p.status, field_of(&p)), (400, "items[0]"));

        let p = parse_json::<CreateOrderRequest>(format!("{} x", valid()).as_bytes()).unwrap_err();
        assert_eq!(p.status, 400);
    }

    #[test]
    fn the_order_is_for_the_caller_unless_an_admin_names_someone() {
        use crate::auth::Role;
        let customer = Caller {
            customer_id: "c1".into(),
            role: Role::Customer,
            session_id: None,
        };
        let admin = Caller {
            customer_id: "a1".into(),
            role: Role::Admin,
            session_id: None,
        };
        assert_eq!(order_customer(&customer, None).unwrap(), "c1");
        assert_eq!(order_customer(&customer, Some("c1")).unwrap(), "c1");
        assert_eq!(
            order_customer(&customer, Some("c2")).unwrap_err().status,
            403
        );
        assert_eq!(order_customer(&admin, None).unwrap(), "a1");
        assert_eq!(order_customer(&admin, Some("c2")).unwrap(), "c2");
        let mut v = valid();
        v.as_object_mut().unwrap().remove("customer_id");
        let req: CreateOrderRequest = serde_json::from_value(v).unwrap();
        assert!(validate(&req).is_empty());
    }

    #[test]
    fn a_quantity_without_a_fraction_is_an_integer_however_written() {
        for (written, quantity) in [("2", 2), ("2.0", 2), ("2e0", 2), ("-0.0", 0)] {
            let body = valid()
                .to_string()
                .replace("\"quantity\":2", &format!("\"quantity\":{written}"));
            let req: CreateOrderRequest = parse_json(body.as_bytes()).unwrap();
            assert_eq!(req.items[0].quantity, quantity, "{written}");
        }
        let body = valid()
            .to_string()
            .replace("\"quantity\":2", "\"quantity\":1e300");
        let p = parse_json::<CreateOrderRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(field_of(&p), "items[0].quantity");
    }

    #[test]
    fn a_problem_never_repeats_a_card_token() {
        let mut v = valid();
        v["payment"]["token"] = serde_json::json!(4111111111111111u64);
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!((p.status, field_of(&p)), (422, "payment.token"));
        let body = serde_json::to_string(&p).unwrap();
        assert!(!body.contains("4111111111111111"), "{body}");
        assert!(body.contains("must be a string"), "{body}");
        // Other fields still say what they got.
        let mut v = valid();
        v["items"][0]["sku"] = serde_json::json!(4111);
        let p = parse_json::<CreateOrderRequest>(v.to_string().as_bytes()).unwrap_err();
        assert!(
            p.errors[0].message.contains("4111"),
            "{}",
            p.errors[0].message
        );
    }

    #[test]
    fn an_array_is_not_a_body_even_where_serde_would_fill_a_struct_from_it() {
        let p = parse_json::<CreateOrderRequest>(b"  [null, null, null, null]").unwrap_err();
        assert_eq!((p.status, field_of(&p)), (422, "body"));
    }

    #[test]
    fn validation_lists_every_bad_field() {
        let mut v = valid();
        v["items"][0]["quantity"] = serde_json::json!(0);
        v["shipping_address"]["country"] = serde_json::json!("Germany");
        v["customer_id"] = serde_json::json!(" ");
        let req: CreateOrderRequest = serde_json::from_value(v).unwrap();
        let fields: Vec<String> = validate(&req).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "customer_id",
                "items[0].quantity",
                "shipping_address.country"
            ]
        );

        let mut v = valid();
        v["items"][0]["quantity"] = serde_json::json!(1_000_000_000_000i64);
        let req: CreateOrderRequest = serde_json::from_value(v).unwrap();
        assert_eq!(validate(&req)[0].field, "items[0].quantity");

        let mut v = valid();
        v["items"] = serde_json::json!((0..101)
            .map(|i| serde_json::json!({"sku": format!("S{i}"), "quantity": 1}))
            .collect::<Vec<_>>());
        let req: CreateOrderRequest = serde_json::from_value(v).unwrap();
        assert_eq!(validate(&req)[0].field, "items");

        let req: CreateOrderRequest = serde_json::from_value(valid()).unwrap();
        assert!(validate(&req).is_empty());
    }
}
