//! Orderflow's HTTP API (axum). It validates orders, records them in the store (with their
//! `Idempotency-Key`), produces the `OrderAccepted` event keyed by order id and answers `202`
//! once the broker has acknowledged it. Reads come from the store's read model, which the
//! stages keep current.
//!
//! # Layout
//! - [`router`]: the routes and the shared [`ApiState`].
//! - [`orders`]: `POST /v1/orders`, `GET /v1/orders/{id}`, request validation.
//! - [`products`]: `GET /v1/products`.
//! - [`problem`]: RFC 9457 `application/problem+json` errors.

pub mod orders;
pub mod problem;
pub mod products;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{StatusCode, Uri},
    routing::{get, post},
    Json, Router,
};
use orderflow_kafka::EventProducer;
use orderflow_store::Store;
use problem::Problem;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub producer: EventProducer,
    /// How long an `Idempotency-Key` is remembered, in ms.
    pub idempotency_ttl_ms: i64,
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, producer: EventProducer) -> Self {
        ApiState {
            store,
            producer,
            idempotency_ttl_ms: orderflow_store::DEFAULT_IDEMPOTENCY_TTL.as_millis() as i64,
        }
    }
}

/// Every route of the API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/orders", post(orders::create))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/products", get(products::list))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers and the broker gives its metadata.
async fn readyz(State(state): State<Arc<ApiState>>) -> Result<Json<serde_json::Value>, Problem> {
    state
        .store
        .healthcheck()
        .await
        .map_err(|e| Problem::unavailable(format!("store: {e}")))?;
    state
        .producer
        .healthcheck()
        .await
        .map_err(|e| Problem::unavailable(format!("broker: {e}")))?;
    Ok(Json(
        json!({"status": "ready", "store": "ok", "broker": "ok"}),
    ))
}

async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} does not take this method", uri.path()),
    )
}

/// Serves the API on `listener` until `shutdown`; in-flight requests are finished first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(addr = ?addr, "HTTP API listening.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
