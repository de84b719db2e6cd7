//! Orderflow's HTTP API (axum). It validates orders, records them in the store (with their
//! `Idempotency-Key`), produces the `OrderAccepted` event keyed by order id and answers `202`
//! once the broker has acknowledged it. Reads come from the store's read model, which the
//! stages keep current.
//!
//! # Layout
//! - [`router`]: the routes and the shared [`ApiState`]; `GET /metrics` serves the process's
//!   Prometheus metrics, and a middleware records `orderflow_http_requests_total` and
//!   `orderflow_http_request_duration_seconds` by matched route.
//! - [`serve_metrics`]: `/metrics`, `/healthz` and `/readyz` alone, for the services without
//!   the API.
//! - [`ReadyCheck`]: something else readiness depends on (the bridge's sinks), as a cheap
//!   synchronous read of its latest state.
//! - [`orders`]: `POST /v1/orders`, `GET /v1/orders/{id}`, request validation;
//!   `GET /v1/orders/{id}/invoice` (the invoice PDF, from object storage).
//! - [`cache`]: the order read cache, dropped by the order's events.
//! - [`products`]: the catalogue: `GET /v1/products`, `GET /v1/products/{sku}`, and for admins
//!   `POST /v1/products`, `PATCH`/`DELETE /v1/products/{sku}` and
//!   `POST /v1/products/{sku}/stock`.
//! - [`auth`]: access tokens, roles, and the [`auth::Caller`] extractor; the `/v1/auth/*`
//!   routes (accounts, login, refresh tokens).
//! - [`customers`]: `/v1/customers` (accounts as admins and customers see them).
//! - [`order_list`]: `GET /v1/orders`, a customer's own orders or (admin) everyone's, filtered
//!   and cursor-paged.
//! - [`lifecycle`]: `POST /v1/orders/{id}/cancel` and (admin) `POST /v1/orders/{id}/ship`.
//! - [`ops`]: the order operations below the handlers (place, cancel, ship, modify, record a
//!   transfer): each writes the state with its event (the store's outbox), returns a typed
//!   outcome.
//! - [`relay`]: the outbox relay, which puts those events on their topics.
//! - [`body`]: request bodies (JSON, size-limited), wrong fields named.
//! - [`problem`]: RFC 9457 `application/problem+json` errors.
//! - [`openapi`]: the OpenAPI 3.1 document (`GET /openapi.json`) generated from the handlers,
//!   and Swagger UI over it (`GET /docs`), its assets compiled in.
//! - [`schema_registry`]: Confluent's schema registry API over the embedded registry, when the
//!   state has one (`orderflow run` without `--schema-registry`).
//! - [`console`]: the web console at `/`, its assets compiled in.
//! - [`live`]: `GET /v1/orders/{id}/events`, an order as server-sent events, fed by the order
//!   topics' follower.
//! - [`pipeline`]: (admin) `GET /v1/pipeline` and `GET /v1/pipeline/events`, the pipeline's
//!   throughput, latency, dead letters and backlogs from the process's metrics.
//! - [`order_admin`]: `DELETE /v1/orders/{id}` (a soft cancel) and (admin)
//!   `POST /v1/orders/{id}/prices`.
//! - [`cors`]: CORS for the configured origins (none by default).

pub mod auth;
pub mod body;
pub mod cache;
pub mod console;
pub mod cors;
pub mod customers;
pub mod lifecycle;
pub mod live;
pub mod modify;
pub mod openapi;
pub mod ops;
pub mod order_admin;
pub mod order_list;
pub mod orders;
pub mod pipeline;
pub mod problem;
pub mod products;
pub mod relay;
pub mod schema_registry;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, Method, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use orderflow_kafka::EventProducer;
use orderflow_schemas::{metrics, registry::LocalRegistry};
use orderflow_store::Store;
use problem::Problem;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{field, info, info_span, Instrument};

/// A named readiness condition beyond the store and the broker: `Err` says why it is not
/// ready. It must answer at once (read a cached state, do no I/O).
#[derive(Clone)]
pub struct ReadyCheck {
    pub name: &'static str,
    pub check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}
use utoipa::ToSchema;

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub producer: EventProducer,
    /// How long an `Idempotency-Key` is remembered, in ms.
    pub idempotency_ttl_ms: i64,
    /// How many orders awaiting a bank transfer a customer may have open (`None`: no cap). A
    /// bank-transfer order beyond it is refused with 409, also when an admin places it.
    pub max_unpaid_orders: Option<u32>,
    /// The embedded schema registry to serve, if any.
    pub schema_registry: Option<Arc<LocalRegistry>>,
    /// More conditions `/readyz` requires (e.g. the bridge's sinks in `orderflow run`).
    pub ready_checks: Vec<ReadyCheck>,
    /// How access tokens are signed and checked ([`auth`]).
    pub auth: auth::AuthSettings,
    /// Order reads go through this; a handler that changes an order calls
    /// `state.orders.invalidate(order_id)` after the store write ([`cache`]).
    pub orders: Arc<cache::OrderCache>,
    /// Where the invoice PDFs are (`GET /v1/orders/{id}/invoice`).
    pub invoice_files: Option<orderflow_store::InvoiceFiles>,
    /// Login, register, verify and resend attempts per email and per client IP
    /// ([`auth::limit`]).
    pub auth_limits: auth::limit::AuthLimits,
    /// Whether the logins behind access tokens are still live ([`auth::sessions`]).
    pub sessions: auth::sessions::Sessions,
    /// The orders that changed, for the live streams ([`live`]).
    pub live: Arc<live::Live>,
    /// The origins CORS allows ([`cors`]; none by default).
    pub cors: cors::Origins,
    /// Puts the events the operations queued in the store's outbox on their topics
    /// ([`relay`]); an operation wakes it after its write.
    pub relay: Arc<relay::Relay>,
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, producer: EventProducer) -> Self {
        ApiState {
            store,
            producer,
            idempotency_ttl_ms: orderflow_store::DEFAULT_IDEMPOTENCY_TTL.as_millis() as i64,
            max_unpaid_orders: Some(orderflow_store::DEFAULT_MAX_UNPAID_ORDERS),
            schema_registry: None,
            ready_checks: Vec::new(),
            auth: auth::AuthSettings::ephemeral(),
            orders: Arc::new(cache::OrderCache::default()),
            invoice_files: None,
            auth_limits: auth::limit::AuthLimits::default(),
            sessions: auth::sessions::Sessions::default(),
            live: Arc::new(live::Live::default()),
            cors: cors::Origins::None,
            relay: Arc::new(relay::Relay::default()),
        }
    }

    /// Answers cross-origin requests from these origins ([`cors`]).
    pub fn with_cors(mut self, origins: cors::Origins) -> Self {
        self.cors = origins;
        self
    }

    /// Serves the invoice PDFs kept in `files`.
    pub fn with_invoice_files(mut self, files: orderflow_store::InvoiceFiles) -> Self {
        self.invoice_files = Some(files);
        self
    }

    /// Signs and checks tokens with these settings (by default, a random key of this
    /// instance's own, which no other process knows).
    pub fn with_auth(mut self, auth: auth::AuthSettings) -> Self {
        self.auth = auth;
        self
    }

    /// Serves this registry's API too ([`schema_registry`]).
    pub fn with_schema_registry(mut self, registry: Arc<LocalRegistry>) -> Self {
        self.schema_registry = Some(registry);
        self
    }

    /// Caps the orders awaiting a bank transfer per customer at `max` (`None`: no cap).
    pub fn with_max_unpaid_orders(mut self, max: Option<u32>) -> Self {
        self.max_unpaid_orders = max;
        self
    }

    /// Makes `/readyz` require `check` too.
    pub fn with_ready_check(mut self, check: ReadyCheck) -> Self {
        self.ready_checks.push(check);
        self
    }
}

/// Lets a request that changes the schema registry ([`schema_registry::is_write`]) through
/// only with an admin's access token; answers in the registry's own error format otherwise.
async fn registry_writes_need_an_admin(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    use axum::extract::FromRequestParts;
    let write = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| schema_registry::is_write(request.method(), path.as_str()));
    if !write {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    match auth::Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) if caller.is_admin() => next.run(Request::from_parts(parts, body)).await,
        Ok(_) => schema_registry::error(
            StatusCode::FORBIDDEN,
            40301,
            "changing the schema registry needs the admin role",
        ),
        Err(problem) if problem.status == StatusCode::UNAUTHORIZED.as_u16() => {
            let mut response =
                schema_registry::error(StatusCode::UNAUTHORIZED, 40101, &problem.detail);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            response
        }
        Err(problem) => problem.into_response(),
    }
}

/// Every route of the API. A new route also gets a `#[utoipa::path]` on its handler and a line
/// in [`openapi::ApiDoc`] (`tests/it/openapi.rs` checks that the two agree).
pub fn router(state: Arc<ApiState>) -> Router {
    let registry = match &state.schema_registry {
        Some(registry) => schema_registry::routes(registry.clone()).route_layer(
            middleware::from_fn_with_state(state.clone(), registry_writes_need_an_admin),
        ),
        None => Router::new(),
    };
    let cors = state.cors.layer();
    let router = Router::new()
        .merge(registry)
        .route("/v1/orders", post(orders::create).get(order_list::list))
        .route(
            "/v1/orders/{id}",
            get(orders::get)
                .patch(modify::modify)
                .delete(order_admin::delete),
        )
        .route("/v1/orders/{id}/events", get(live::order_events))
        .route("/v1/orders/{id}/prices", post(order_admin::adjust_prices))
        .route("/v1/pipeline", get(pipeline::get))
        .route("/v1/pipeline/events", get(pipeline::events))
        .route("/", get(console::index))
        .route("/console/app.js", get(console::app_js))
        .route("/console/app.css", get(console::app_css))
        // Catalogue administration and invoices.
        .route("/v1/products", get(products::list).post(products::create))
        .route(
            "/v1/products/{sku}",
            get(products::get)
                .patch(products::update)
                .delete(products::discontinue),
        )
        .route("/v1/products/{sku}/stock", post(products::adjust_stock))
        .route("/v1/orders/{id}/invoice", get(orders::invoice))
        // Cancel and ship.
        .route("/v1/orders/{id}/cancel", post(lifecycle::cancel))
        .route("/v1/orders/{id}/ship", post(lifecycle::ship))
        // Modifications and bank transfers.
        .route("/v1/orders/{id}/payment", post(modify::record_payment))
        // Accounts.
        .route("/v1/auth/register", post(auth::routes::register))
        .route("/v1/auth/verify", post(auth::routes::verify))
        .route("/v1/auth/resend", post(auth::routes::resend))
        .route("/v1/auth/login", post(auth::routes::login))
        .route("/v1/auth/refresh", post(auth::routes::refresh))
        .route("/v1/auth/logout", post(auth::routes::logout))
        .route(
            "/v1/customers",
            get(customers::list).post(customers::create),
        )
        .route("/v1/customers/me", get(customers::me))
        .route(
            "/v1/customers/{id}",
            get(customers::get)
                .patch(customers::update)
                .delete(customers::delete),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .route("/docs/swagger-ui.css", get(openapi::swagger_ui_css))
        .route("/docs/swagger-ui-bundle.js", get(openapi::swagger_ui_js))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track_requests))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `GET /metrics`: every metric of the process, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Every metric of the process, text format 0.0.4.",
               body = String, content_type = "text/plain")),
)]
pub async fn render_metrics() -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}

/// Counts and times every request by its matched route (`unmatched` when no route matched),
/// so that the label stays bounded whatever paths clients send; runs it in an `http_request`
/// span (method, route, status, and the order id once a handler knows it).
async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let span = info_span!(
        "http_request",
        method,
        route = %route,
        order_id = field::Empty,
        status = field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    let m = metrics::metrics();
    m.http_request_duration
        .with_label_values(&[route.as_str(), method])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .inc();
    response
}

/// The method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// `GET /healthz`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`'s answer when ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Always `ok`.
    #[schema(example = "ok")]
    pub store: &'static str,
    /// Always `ok`.
    #[schema(example = "ok")]
    pub broker: &'static str,
    /// The service's other conditions (e.g. `sinks` for the bridge), each `ok`.
    #[serde(flatten)]
    pub checks: std::collections::BTreeMap<String, &'static str>,
}

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process is up.", body = Alive)),
)]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "The store and the broker answer.", body = Ready),
        (status = 503, description = "The store or the broker does not answer; `detail` says \
            which.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
    ),
)]
async fn readyz(State(state): State<Arc<ApiState>>) -> Result<Json<Ready>, Problem> {
    Readiness::new(state.store.clone(), state.producer.clone())
        .with_checks(state.ready_checks.clone())
        .check()
        .await
}

/// What `/readyz` checks: a service is ready when its store answers, the broker gives its
/// metadata and every extra [`ReadyCheck`] passes (the bridge's sinks). While the store is
/// down, `/readyz` answers 503 naming it (the stages meanwhile retry and commit no offsets).
#[derive(Clone)]
pub struct Readiness {
    store: Arc<dyn Store>,
    producer: EventProducer,
    checks: Vec<ReadyCheck>,
}

impl Readiness {
    pub fn new(store: Arc<dyn Store>, producer: EventProducer) -> Self {
        Readiness {
            store,
            producer,
            checks: Vec::new(),
        }
    }

    pub fn with_checks(mut self, checks: Vec<ReadyCheck>) -> Self {
        self.checks.extend(checks);
        self
    }

    pub async fn check(&self) -> Result<Json<Ready>, Problem> {
        let mut checks = std::collections::BTreeMap::new();
        // Which dependency is down is for the caller; why is for the log.
        fn not_ready(what: &str, error: &dyn std::fmt::Display) -> Problem {
            tracing::warn!(check = what, error = %error, "Not ready.");
            Problem::unavailable(format!("not ready: {what}"))
        }
        for c in &self.checks {
            (c.check)().map_err(|e| not_ready(c.name, &e))?;
            checks.insert(c.name.to_string(), "ok");
        }
        self.store
            .healthcheck()
            .await
            .map_err(|e| not_ready("store", &e))?;
        self.producer
            .healthcheck()
            .await
            .map_err(|e| not_ready("broker", &e))?;
        Ok(Json(Ready {
            status: "ready",
            store: "ok",
            broker: "ok",
            checks,
        }))
    }
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
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "HTTP API listening."),
        Err(e) => info!(error = %e, "HTTP API listening (its address unknown)."),
    }
    // The live streams never end on their own: end them, so that the shutdown does not wait.
    let live = state.live.clone();
    let closing = shutdown.clone();
    tokio::spawn(async move {
        closing.cancelled().await;
        live.close();
    });
    // The relay stops after the last request is answered, so that it puts out what they queued.
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(relay::run(state.clone(), relay_stop.clone()));
    // With the peer's address, which the auth routes rate-limit by ([`auth::limit`]).
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await;
    relay_stop.cancel();
    let _ = relay.await;
    served
}

/// Serves `GET /metrics`, `GET /healthz` (alive) and `GET /readyz` (see [`Readiness`]) on
/// `listener` until `shutdown`: for the services that have no HTTP API (`orderflow process`,
/// `orderflow bridge`).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "Metrics listening."),
        Err(e) => info!(error = %e, "Metrics listening (its address unknown)."),
    }
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(readiness): State<Readiness>| async move { readiness.check().await }),
        )
        .fallback(not_found)
        .with_state(readiness);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    #[tokio::test]
    async fn metrics_are_served_and_requests_counted_by_matched_route() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = Router::new()
            .route("/items/{id}", get(healthz))
            .route("/metrics", get(render_metrics))
            .layer(middleware::from_fn(track_requests));
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            }
        });
        let (_, _) = (
            get_raw(addr, "/items/42").await,
            get_raw(addr, "/nowhere").await,
        );
        let response = get_raw(addr, "/metrics").await;
        shutdown.cancel();
        server.await.unwrap().unwrap();

        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"));
        assert!(response.contains(
            "orderflow_http_requests_total{method=\"GET\",route=\"/items/{id}\",status=\"200\"}"
        ));
        assert!(response.contains(
            "orderflow_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ));
    }

    /// A bare HTTP/1.1 GET (the crate has no HTTP client); returns the whole response.
    async fn get_raw(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }
}
