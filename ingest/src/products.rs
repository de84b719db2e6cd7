//! `GET /v1/products`: the catalogue with what is in stock.

use std::sync::Arc;

use axum::{extract::State, Json};
use orderflow_schemas::format_cents;
use serde::Serialize;

use crate::{problem::Problem, ApiState};

#[derive(Debug, Serialize)]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    /// Decimal amount, e.g. `"12.50"`.
    pub price: String,
    pub price_cents: i64,
    pub currency: String,
    /// Units available to order.
    pub stock: i64,
}

#[derive(Debug, Serialize)]
pub struct ProductList {
    pub products: Vec<ProductView>,
}

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
