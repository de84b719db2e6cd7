//! The catalogue: `GET /v1/products` (what is for sale), `GET /v1/products/{sku}`, and for
//! admins `POST /v1/products`, `PATCH /v1/products/{sku}`, `DELETE /v1/products/{sku}` (soft:
//! the product is discontinued) and `POST /v1/products/{sku}/stock` (an atomic adjustment of
//! the units available, under the rules reservations follow: never below zero).
//!
//! Writes check the caller first (no token: 401, a customer: 403), then the body (422 naming
//! each bad field).

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use orderflow_schemas::{format_cents, now_millis};
use orderflow_store::{AdjustmentKey, Product, ProductChange, StockAdjustment};
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::ToSchema;

use crate::problem::responses;
use crate::{
    auth::Caller,
    orders::{idempotency_header, integer, json_body},
    problem::{text_problem, FieldError, Problem},
    ApiState,
};

/// Highest price, in cents (10,000,000.00).
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;
/// Most units a product may start with, and the largest single stock adjustment.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// A product of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    /// Decimal amount, e.g. `"12.50"`.
    #[schema(example = "12.50")]
    pub price: String,
    pub price_cents: i64,
    pub currency: String,
    /// Units available to order.
    pub stock: i64,
    /// Withdrawn from sale: still shown for past orders, but new orders for it are rejected.
    pub discontinued: bool,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        ProductView {
            price: format_cents(p.price_cents),
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency,
            stock: p.stock,
            discontinued: p.discontinued,
        }
    }
}

/// The catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    pub products: Vec<ProductView>,
}

/// A new product. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// Letters, digits, `.`, `_` and `-`, starting with a letter or digit; unique.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", example = "MUG-002")]
    pub sku: String,
    #[schema(
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "Espresso cup"
    )]
    pub name: String,
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 850)]
    pub price_cents: i64,
    /// ISO 4217, e.g. `EUR`.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// Units available at the start.
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 25)]
    pub stock: i64,
}

/// Changes to a product (`{}` changes nothing). Its stock changes through
/// `POST /v1/products/{sku}/stock`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    #[serde(default)]
    #[schema(
        nullable = false,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "Espresso cup, blue"
    )]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000, example = 900)]
    pub price_cents: Option<i64>,
}

fn optional_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    integer(d).map(Some)
}

/// A stock adjustment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockAdjustmentRequest {
    /// Units to add (positive) or remove (negative); not zero. The available stock never goes
    /// below zero: a larger removal is refused (409) and changes nothing.
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000, example = 10)]
    pub delta: i64,
    /// Why, for the log (a delivery, a count, breakage).
    #[serde(default)]
    #[schema(
        nullable = false,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "delivery"
    )]
    pub reason: Option<String>,
}

fn no_product(sku: &str) -> Problem {
    Problem::not_found(format!("no product {sku}"))
}

fn valid_sku(sku: &str) -> bool {
    let mut chars = sku.chars();
    sku.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn price_error(price_cents: i64) -> Option<String> {
    (!(0..=MAX_PRICE_CENTS).contains(&price_cents))
        .then(|| format!("must be between 0 and {MAX_PRICE_CENTS}"))
}

/// Checks a new product; lists every problem at once.
pub fn validate_create(req: &CreateProductRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    if !valid_sku(&req.sku) {
        err(
            "sku",
            "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
                .into(),
        );
    }
    if let Some(m) = text_problem(&req.name, 200) {
        err("name", m);
    }
    if let Some(m) = price_error(req.price_cents) {
        err("price_cents", m);
    }
    if req.currency.len() != 3 || !req.currency.chars().all(|c| c.is_ascii_uppercase()) {
        err(
            "currency",
            "must be an ISO 4217 code such as \"EUR\"".into(),
        );
    }
    if !(0..=MAX_STOCK).contains(&req.stock) {
        err("stock", format!("must be between 0 and {MAX_STOCK}"));
    }
    errors
}

/// Checks a product change; lists every problem at once.
pub fn validate_update(req: &UpdateProductRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(m) = req.name.as_deref().and_then(|n| text_problem(n, 200)) {
        errors.push(FieldError {
            field: "name".into(),
            message: m,
        });
    }
    if let Some(m) = req.price_cents.and_then(price_error) {
        errors.push(FieldError {
            field: "price_cents".into(),
            message: m,
        });
    }
    errors
}

/// Checks a stock adjustment; lists every problem at once.
pub fn validate_adjustment(req: &StockAdjustmentRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if req.delta == 0 {
        errors.push(FieldError {
            field: "delta".into(),
            message: "must not be 0".into(),
        });
    } else if !(-MAX_STOCK..=MAX_STOCK).contains(&req.delta) {
        errors.push(FieldError {
            field: "delta".into(),
            message: format!("must be between -{MAX_STOCK} and {MAX_STOCK}"),
        });
    }
    if let Some(reason) = &req.reason {
        if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
            errors.push(FieldError {
                field: "reason".into(),
                message: "is too long or has control characters".into(),
            });
        }
    }
    errors
}

/// `GET /v1/products`.
#[utoipa::path(
    get,
    path = "/v1/products",
    operation_id = "list_products",
    tag = "products",
    summary = "List the catalogue",
    description = "Every product for sale with its price and the units available to order; \
        discontinued ones too with `include_discontinued=true`.",
    params(("include_discontinued" = Option<bool>, Query,
            description = "List discontinued products too (default `false`).")),
    responses(
        (status = 200, description = "The catalogue, by SKU.", body = ProductList),
        (status = 400, description = "The query string cannot be read.", body = Problem,
         content_type = "application/problem+json"),
        (status = 422, description = "`include_discontinued` is neither `true` nor `false`.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ProductList>, Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query string",
            "query",
            e.body_text(),
        )
    })?;
    let include_discontinued = match query.get("include_discontinued").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(Problem::invalid(vec![FieldError {
                field: "query:include_discontinued".into(),
                message: "must be true or false".into(),
            }]))
        }
    };
    let products = state.store.list_products().await?;
    Ok(Json(ProductList {
        products: products
            .into_iter()
            .filter(|p| include_discontinued || !p.discontinued)
            .map(ProductView::from)
            .collect(),
    }))
}

/// `GET /v1/products/{sku}`.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}",
    operation_id = "get_product",
    tag = "products",
    summary = "Read a product",
    description = "A product of the catalogue, discontinued or not.",
    params(("sku" = String, Path, description = "The product's SKU.")),
    responses(
        (status = 200, description = "The product.", body = ProductView),
        (status = 400, description = "The SKU is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        (status = 404, description = "No such product.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<ProductView>, Problem> {
    let sku = crate::problem::path("sku", sku)?;
    match state.store.get_product(&sku).await? {
        Some(p) => Ok(Json(p.into())),
        None => Err(no_product(&sku)),
    }
}

/// `POST /v1/products`.
#[utoipa::path(
    post,
    path = "/v1/products",
    operation_id = "create_product",
    tag = "products",
    summary = "Add a product (admin)",
    description = "Adds a product with its price and initial stock. Needs an admin's access \
        token.",
    request_body(content = CreateProductRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Added.", body = ProductView,
         headers(("Location" = String, description = "The product: `/v1/products/{sku}`."))),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 409, description = "A product has this SKU already.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "Fields are unknown, missing, mistyped or out of range \
            (each is listed in `errors`).", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    caller.require_admin()?;
    let req: CreateProductRequest = json_body(&headers, body).await?;
    let errors = validate_create(&req);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let product = Product {
        sku: req.sku,
        name: req.name,
        price_cents: req.price_cents,
        currency: req.currency,
        stock: req.stock,
        reserved: 0,
        discontinued: false,
    };
    let sku = product.sku.clone();
    if !state.store.create_product(product.clone()).await? {
        return Err(Problem::field(
            StatusCode::CONFLICT,
            "sku-taken",
            "A product has this SKU already",
            "sku",
            format!("{sku} is in the catalogue already"),
        ));
    }
    info!(%sku, by = %caller.customer_id, "Product added.");
    let mut response = (StatusCode::CREATED, Json(ProductView::from(product))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/products/{sku}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `PATCH /v1/products/{sku}`.
#[utoipa::path(
    patch,
    path = "/v1/products/{sku}",
    operation_id = "update_product",
    tag = "products",
    summary = "Change a product's name or price (admin)",
    description = "Orders already validated keep the price they were validated at.",
    params(("sku" = String, Path, description = "The product's SKU.")),
    request_body(content = UpdateProductRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The product as it is now.", body = ProductView),
        (status = 400, description = "The body is not JSON, or the SKU not UTF-8.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 404, description = "No such product.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "Fields are unknown, mistyped or out of range.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn update(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    sku: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ProductView>, Problem> {
    caller.require_admin()?;
    let sku = crate::problem::path("sku", sku)?;
    let req: UpdateProductRequest = json_body(&headers, body).await?;
    let errors = validate_update(&req);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let change = ProductChange {
        name: req.name,
        price_cents: req.price_cents,
        discontinued: None,
    };
    match state.store.update_product(&sku, change).await? {
        Some(p) => {
            info!(%sku, by = %caller.customer_id, "Product changed.");
            Ok(Json(p.into()))
        }
        None => Err(no_product(&sku)),
    }
}

/// `DELETE /v1/products/{sku}`.
#[utoipa::path(
    delete,
    path = "/v1/products/{sku}",
    operation_id = "discontinue_product",
    tag = "products",
    summary = "Discontinue a product (admin)",
    description = "Soft: the product stays readable (past orders and invoices name it) but \
        leaves the list, and new orders for it are rejected like an unknown SKU. Orders already \
        validated are not affected. Deleting it again changes nothing.",
    params(("sku" = String, Path, description = "The product's SKU.")),
    responses(
        (status = 204, description = "The product is discontinued."),
        (status = 400, description = "The SKU is not UTF-8 once percent-decoded.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 404, description = "No such product.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn discontinue(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    sku: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    caller.require_admin()?;
    let sku = crate::problem::path("sku", sku)?;
    let change = ProductChange {
        discontinued: Some(true),
        ..ProductChange::default()
    };
    match state.store.update_product(&sku, change).await? {
        Some(_) => {
            info!(%sku, by = %caller.customer_id, "Product discontinued.");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(no_product(&sku)),
    }
}

/// `POST /v1/products/{sku}/stock`.
#[utoipa::path(
    post,
    path = "/v1/products/{sku}/stock",
    operation_id = "adjust_stock",
    tag = "products",
    summary = "Adjust a product's stock (admin)",
    description = "Adds `delta` units to those available (removes, when negative), atomically \
        with the reservations orders make: the available stock never goes below zero, and an \
        adjustment is never lost to a concurrent reservation. With an `Idempotency-Key`, a \
        retry is safe: the adjustment is applied once.",
    params(
        ("sku" = String, Path, description = "The product's SKU."),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, max_length = 255,
         pattern = "^[\\t -~]*[!-~][\\t -~]*$",
         description = "Makes a retry safe: the same key (per admin, kept 24 h) with the same \
            SKU and delta answers with the product as it is, adjusted once \
            (`idempotent-replayed: true`); with another SKU or delta, 422. A refused \
            adjustment may be retried under its key. Visible ASCII, 1 to 255 characters."),
    ),
    request_body(content = StockAdjustmentRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Adjusted: the product as it is now.", body = ProductView,
         headers(("idempotent-replayed" = String,
             description = "`true` when the `Idempotency-Key` applied this adjustment before."))),
        (status = 400, description = "The body is not JSON, the SKU not UTF-8, or the \
            `Idempotency-Key` not valid.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 404, description = "No such product.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The adjustment would take the available stock below \
            zero; nothing changed. `errors` names `delta`.", body = Problem,
         content_type = "application/problem+json",
         example = json!({"type": "/problems/insufficient-stock",
            "title": "Not enough stock", "status": 409,
            "detail": "delta: -5 would leave MUG-001 below zero: 3 available",
            "errors": [{"field": "delta",
                        "message": "-5 would leave MUG-001 below zero: 3 available"}]})),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "Fields are unknown, missing, mistyped or out of range, \
            or the `Idempotency-Key` was used for another adjustment.",
         body = Problem, content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn adjust_stock(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    sku: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    caller.require_admin()?;
    let sku = crate::problem::path("sku", sku)?;
    let key = idempotency_header(&headers)?.map(|key| AdjustmentKey {
        // Per admin, as order keys are per customer.
        key: format!("{}\u{0}{key}", caller.customer_id),
        expires_at: now_millis() + state.idempotency_ttl_ms,
    });
    let req: StockAdjustmentRequest = json_body(&headers, body).await?;
    let errors = validate_adjustment(&req);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    match state.store.adjust_stock(&sku, req.delta, key).await? {
        StockAdjustment::Adjusted(p) => {
            info!(
                %sku,
                delta = req.delta,
                stock = p.stock,
                reason = req.reason.as_deref().unwrap_or(""),
                by = %caller.customer_id,
                "Stock adjusted."
            );
            Ok(Json(ProductView::from(p)).into_response())
        }
        StockAdjustment::Replayed(p) => {
            let mut response = Json(ProductView::from(p)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        StockAdjustment::KeyReused => Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key already used for another request",
            "header:Idempotency-Key",
            "was used for another stock adjustment (another SKU or delta)",
        )),
        StockAdjustment::Insufficient { available } => Err(Problem::field(
            StatusCode::CONFLICT,
            "insufficient-stock",
            "Not enough stock",
            "delta",
            format!(
                "{} would leave {sku} below zero: {available} available",
                req.delta
            ),
        )),
        StockAdjustment::NotFound => Err(no_product(&sku)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::parse_json;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_new_product_names_every_bad_field() {
        let req: CreateProductRequest = parse_json(
            br#"{"sku": "-bad sku", "name": " ", "price_cents": -1, "currency": "eur",
                 "stock": 2000000000}"#,
        )
        .unwrap();
        assert_eq!(
            fields(validate_create(&req)),
            ["sku", "name", "price_cents", "currency", "stock"]
        );
        let req: CreateProductRequest = parse_json(
            br#"{"sku": "MUG-002", "name": "Cup", "price_cents": 850.0, "currency": "EUR",
                 "stock": 0}"#,
        )
        .unwrap();
        assert!(validate_create(&req).is_empty());
        let p = parse_json::<CreateProductRequest>(br#"{"sku": "A"}"#).unwrap_err();
        assert_eq!(p.errors[0].field, "name");
    }

    #[test]
    fn a_change_needs_a_field_and_an_adjustment_a_delta() {
        assert!(validate_update(&UpdateProductRequest::default()).is_empty());
        let req: UpdateProductRequest = parse_json(br#"{"price_cents": 1e12}"#).unwrap();
        assert_eq!(fields(validate_update(&req)), ["price_cents"]);
        let p = parse_json::<UpdateProductRequest>(br#"{"stock": 3}"#).unwrap_err();
        assert_eq!(p.errors[0].field, "stock");

        let req: StockAdjustmentRequest = parse_json(br#"{"delta": 0}"#).unwrap();
        assert_eq!(fields(validate_adjustment(&req)), ["delta"]);
        let req: StockAdjustmentRequest =
            parse_json(br#"{"delta": -3, "reason": "breakage"}"#).unwrap();
        assert!(validate_adjustment(&req).is_empty());
        let p = parse_json::<StockAdjustmentRequest>(br#"{"delta": "x"}"#).unwrap_err();
        assert_eq!(p.errors[0].field, "delta");
    }
}
