//! The API's contract: an OpenAPI 3.1 document generated from the handlers (`utoipa`), served at
//! `GET /openapi.json`, and Swagger UI over it at `GET /docs`.
//!
//! A route is documented by a `#[utoipa::path]` on its handler and one line in [`ApiDoc`]'s
//! `paths(...)`; the request and response types derive `ToSchema`. `tests/it/openapi.rs` checks
//! that the document and the router agree, and `tests/contract.rs` runs schemathesis against
//! the real server.
//!
//! Swagger UI's files come from npm's `swagger-ui-dist` (see `ingest/assets/swagger-ui/README.md`)
//! and are compiled into the binary: the page loads nothing from elsewhere.
//!
//! The embedded schema registry's routes (`orderflow run` only) are not in the document: they
//! are Confluent's schema registry API, which Confluent documents, not ours.

use std::sync::OnceLock;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::OpenApi;

use crate::{
    auth, console, customers, lifecycle, live, modify, order_admin, order_list, orders, pipeline,
    products,
};

/// The OpenAPI document of every route [`crate::router`] serves but the schema registry's.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orderflow API",
        description = "Takes orders and shows how they get on: each order goes through the \
            validation (stock), payment and invoicing stages asynchronously, after the `202`. \
            Errors are RFC 9457 `application/problem+json` and list the fields at fault. \
            `orderflow run` also serves Confluent's schema registry API (`/subjects`, \
            `/schemas/ids/{id}`, …), which is not described here.",
    ),
    paths(
        orders::create,
        orders::get,
        order_list::list,
        products::list,
        orders::invoice,
        products::get,
        products::create,
        products::update,
        products::discontinue,
        products::adjust_stock,
        auth::routes::register,
        auth::routes::verify,
        auth::routes::resend,
        auth::routes::login,
        auth::routes::refresh,
        auth::routes::logout,
        customers::list,
        customers::create,
        customers::me,
        customers::get,
        customers::update,
        customers::delete,
        // Cancel and ship.
        lifecycle::cancel,
        lifecycle::ship,
        // Modifications and bank transfers.
        modify::modify,
        modify::record_payment,
        // The console and what it uses.
        order_admin::delete,
        order_admin::adjust_prices,
        live::order_events,
        pipeline::get,
        pipeline::events,
        console::index,
        console::app_js,
        console::app_css,
        crate::healthz,
        crate::readyz,
        crate::render_metrics,
        openapi_json,
        docs,
        swagger_ui_css,
        swagger_ui_js,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Placing orders and following them."),
        (name = "products", description = "The catalogue."),
        (name = "auth", description = "Accounts: register, verify the email, log in, refresh, \
            log out."),
        (name = "customers", description = "Accounts as admins manage them and as each \
            customer sees itself."),
        (name = "operations", description = "Liveness, readiness and metrics."),
        (name = "documentation", description = "This document and Swagger UI over it."),
        (name = "console", description = "The web console for customers and staff."),
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The `bearer` security scheme: an access token from `POST /v1/auth/login`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from `POST /v1/auth/login` (15 minutes by default).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, rendered once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "documentation",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document.",
               body = serde_json::Value, content_type = "application/json")),
)]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

/// The Swagger UI page: our assets, our document.
const DOCS_HTML: &str = r##"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Orderflow API</title>
    <link rel="stylesheet" type="text/css" href="docs/swagger-ui.css">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="docs/swagger-ui-bundle.js" charset="utf-8"></script>
    <script>
      window.ui = SwaggerUIBundle({
        url: "openapi.json",
        dom_id: "#swagger-ui",
        deepLinking: true,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      });
    </script>
  </body>
</html>
"##;

/// `GET /docs`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "documentation",
    summary = "Swagger UI over this document",
    responses((status = 200, description = "The Swagger UI page.", body = String,
               content_type = "text/html")),
)]
pub async fn docs() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DOCS_HTML,
    )
        .into_response()
}

/// `GET /docs/swagger-ui.css`.
#[utoipa::path(
    get,
    path = "/docs/swagger-ui.css",
    tag = "documentation",
    summary = "Swagger UI's style sheet",
    responses((status = 200, description = "From swagger-ui-dist.", body = String,
               content_type = "text/css")),
)]
pub async fn swagger_ui_css() -> Response {
    asset("text/css; charset=utf-8", SWAGGER_UI_CSS)
}

/// `GET /docs/swagger-ui-bundle.js`.
#[utoipa::path(
    get,
    path = "/docs/swagger-ui-bundle.js",
    tag = "documentation",
    summary = "Swagger UI's script",
    responses((status = 200, description = "From swagger-ui-dist.", body = String,
               content_type = "text/javascript")),
)]
pub async fn swagger_ui_js() -> Response {
    asset("text/javascript; charset=utf-8", SWAGGER_UI_JS)
}

const SWAGGER_UI_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");
const SWAGGER_UI_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Versioned with the binary; a day keeps reloads cheap without going stale for long.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem;

    #[test]
    fn the_document_is_openapi_3_1_with_problem_responses() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let create = &doc["paths"]["/v1/orders"]["post"];
        for status in ["400", "413", "415", "422", "503"] {
            let content = &create["responses"][status]["content"];
            assert_eq!(
                content[problem::CONTENT_TYPE]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{status}: {content}"
            );
        }
        let key = create["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .expect("Idempotency-Key documented");
        assert_eq!(key["in"], "header");
        assert_eq!(key["required"], false);
        assert_eq!(
            key["schema"]["type"], "string",
            "a header is never null: {key}"
        );
        let problem = &doc["components"]["schemas"]["Problem"];
        let required: Vec<&str> = problem["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["type", "title", "status", "detail"]);
    }
}
