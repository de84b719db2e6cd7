//! The web console, for customers and the shop's staff: `GET /` and its two assets, compiled
//! into the binary (hand-written HTML, CSS and JavaScript modules: nothing is fetched from
//! elsewhere, at build or at run time).
//!
//! The page is a client of the API like any other: it logs in (`/v1/auth/login`), keeps the
//! tokens in the tab's `sessionStorage`, and calls the `/v1` routes with them. An order's page
//! follows `GET /v1/orders/{id}/events` ([`crate::live`]) and the pipeline page
//! `GET /v1/pipeline/events` ([`crate::pipeline`]), read with `fetch` so that the bearer token
//! goes in the `Authorization` header (the browser's `EventSource` cannot send it).
//!
//! Assets are served with a strict Content-Security-Policy (only this origin's scripts, styles
//! and connections), so that text an order carries can never run as script.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Only this origin, no inline script or style, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
    form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The binary is the version: a browser revalidates, never keeps a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /`.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    summary = "The web console",
    description = "The console's page: log in, list and follow orders live, place them, and \
        (admins) change, ship and cancel orders, edit the catalogue, see customers and the \
        pipeline.",
    responses((status = 200, description = "The page.", body = String,
               content_type = "text/html")),
)]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/app.js`.
#[utoipa::path(
    get,
    path = "/console/app.js",
    tag = "console",
    summary = "The console's script",
    responses((status = 200, description = "A JavaScript module.", body = String,
               content_type = "text/javascript")),
)]
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /console/app.css`.
#[utoipa::path(
    get,
    path = "/console/app.css",
    tag = "console",
    summary = "The console's style sheet",
    responses((status = 200, description = "CSS.", body = String, content_type = "text/css")),
)]
pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
