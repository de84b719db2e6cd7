//! `GET /v1/products`: the catalogue with what is in stock.

use std::sync::Arc;

use axum::{extract::State, Json};
use orderflow_schemas::format_cents;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{problem::Problem, ApiState};

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
}

/// The catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    pub products: Vec<ProductView>,
}

/// `GET /v1/products`.
#[utoipa::path(
    get,
    path = "/v1/products",
    tag = "products",
    summary = "List the catalogue",
    description = "Every product with its price and the units available to order.",
    responses(
        (status = 200, description = "The catalogue.", body = ProductList),
        (status = 503, description = "The store is down; retry.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
    ),
)]
pub async fn list(State(state): State<Arc<ApiState>>) -> Result<Json<ProductList>, Problem> {
    let products = state
        .store
        .list_products()
        .await
        .map_err(|e| Problem::unavailable(format!("the catalogue is unavailable: {e}")))?;
    Ok(Json(ProductList {
        products: products
            .into_iter()
            .map(|p| ProductView {
                price: format_cents(p.price_cents),
                sku: p.sku,
                name: p.name,
                price_cents: p.price_cents,
                currency: p.currency,
                stock: p.stock,
            })
            .collect(),
    }))
}
