//! What the web console stands on, through the real `orderflow run`: the page and its assets
//! (`GET /`), CORS for configured origins only, `DELETE /v1/orders/{id}` as a soft cancel, an
//! order followed live over server-sent events (its customer and admins only), the admins'
//! price adjustment of an unpaid order (re-priced through the pipeline; errors naming the
//! field) and the pipeline summary.
//!
//! The console itself, in a browser, is tested by `tests/it/browser.rs`.

use crate::common;

use std::time::Duration;

use common::{order_body, Pipeline};
use serde_json::{json, Value};

/// An order paid by bank transfer for `customer_id`: it waits, `validated`, for its
/// transfer.
fn transfer_order(customer_id: &str, sku: &str, quantity: i64) -> Value {
    let mut body = order_body(sku, quantity, "unused");
    body["customer_id"] = json!(customer_id);
    body["payment"] = json!({"method": "bank_transfer", "token": "unused"});
    body
}

/// A server-sent event stream being read.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(p: &Pipeline, path: &str, bearer: &str) -> Events {
        let response = p
            .anonymous
            .get(p.url(path))
            .header("authorization", bearer)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event named `name`: its data as JSON (waits 30 s at most, keep-alives
    /// included).
    async fn next(&mut self, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event == name && !data.is_empty() {
                    return serde_json::from_str(&data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("a {name} event within 30 s"))
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Order events until one with `status`; every status seen on the way.
    async fn until_status(&mut self, status: &str) -> (Value, Vec<String>) {
        let mut seen = Vec::new();
        loop {
            let order = self.next("order").await;
            let now = order["status"].as_str().unwrap().to_string();
            if seen.last() != Some(&now) {
                seen.push(now.clone());
            }
            if now == status {
                return (order, seen);
            }
        }
    }
}

fn field(problem: &Value) -> &str {
    problem["errors"][0]["field"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_and_cors_answers_only_configured_origins() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(dir.path(), &["--cors-allow-origin", "https://shop.example"]);

    let page = p.anonymous.get(p.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/app.js") && html.contains("/console/app.css"));
    for (asset, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let response = p.anonymous.get(p.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{asset} loads nothing from elsewhere"
        );
    }

    // A preflight from the configured origin is answered, for the methods and headers a
    // front end needs.
    let preflight = |origin: &'static str| {
        p.anonymous
            .request(reqwest::Method::OPTIONS, p.url("/v1/orders/some-id"))
            .header("origin", origin)
            .header("access-control-request-method", "DELETE")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let response = preflight("https://shop.example").await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://shop.example"
    );
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("DELETE") && methods.contains("PATCH"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    // A request from it gets the header; another origin gets none.
    let response = p
        .client
        .get(p.url("/v1/products"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let response = preflight("https://evil.example").await.unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_followed_live_by_its_customer_and_deleted_softly() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    // Without `--cors-allow-origin`, no CORS header at all.
    let response = p
        .anonymous
        .request(reqwest::Method::OPTIONS, p.url("/v1/orders"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));

    let ada = p.id("ada").await;
    let id = p.place(&transfer_order(&ada, "MUG-001", 1)).await;

    // Only the order's customer and admins may follow it; the stream starts with the order.
    let path = format!("/v1/orders/{id}/events");
    let other = p
        .anonymous
        .get(p.url(&path))
        .header("authorization", p.bearer("bob").await)
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        404,
        "another customer's order does not exist"
    );
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    let anonymous = p.anonymous.get(p.url(&path)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let missing = p
        .client
        .get(p.url("/v1/orders/no-such-order/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let mut events = Events::open(&p, &path, &p.bearer("ada").await).await;
    let mut admin_events = Events::open(&p, &path, &p.admin.bearer).await;
    let (order, _) = events.until_status("validated").await;
    assert_eq!(order["order_id"], id.as_str());
    assert!(
        order["total_cents"].is_i64(),
        "validated with its totals: {order}"
    );
    // Pay it: the stream shows the steps as the stages take them.
    let response = p
        .client
        .post(p.url(&format!("/v1/orders/{id}/payment")))
        .json(&json!({"reference": "TRF-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (invoiced, seen) = events.until_status("invoiced").await;
    assert!(invoiced["invoice_number"].is_string());
    assert!(
        seen.iter().any(|s| s == "paid") || seen == ["invoiced"],
        "{seen:?}"
    );
    admin_events.until_status("invoiced").await;

    // DELETE cancels softly: the order stays, cancelled, listed; another customer gets 404.
    let second = p.place(&transfer_order(&ada, "MUG-001", 1)).await;
    p.wait_for_status(&second, "validated").await;
    let path = format!("/v1/orders/{second}/events");
    let mut events = Events::open(&p, &path, &p.bearer("ada").await).await;
    let refused = p
        .anonymous
        .delete(p.url(&format!("/v1/orders/{second}")))
        .header("authorization", p.bearer("bob").await)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    let response = p
        .anonymous
        .delete(p.url(&format!("/v1/orders/{second}")))
        .header("authorization", p.bearer("ada").await)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(p.order(&second).await["status"], "cancelled");
    events.until_status("cancelled").await;
    let again = p
        .client
        .delete(p.url(&format!("/v1/orders/{second}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "cancelling again answers the same");
    let list: Value = p
        .anonymous
        .get(p.url("/v1/orders"))
        .header("authorization", p.bearer("ada").await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<(&str, &str)> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["order_id"].as_str().unwrap(),
                o["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(second.as_str(), "cancelled"), (id.as_str(), "invoiced")],
        "newest first, the cancelled order listed"
    );
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_adjust_prices_of_unpaid_orders_and_see_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let ada = p.id("ada").await;
    let id = p.place(&transfer_order(&ada, "MUG-001", 2)).await;
    let order = common::poll_until(
        "the order priced",
        Duration::from_secs(15),
        Duration::from_millis(25),
        || p.order(&id),
        |o| o["total_cents"].is_i64(),
    )
    .await;
    assert_eq!(order["lines"][0]["unit_price_cents"], 1250);
    let prices = format!("/v1/orders/{id}/prices");

    // A customer may not; wrong bodies are named.
    let response = p
        .anonymous
        .post(p.url(&prices))
        .header("authorization", p.bearer("ada").await)
        .json(&json!({"lines": [{"sku": "MUG-001", "unit_price_cents": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    for (body, status, named) in [
        (
            json!({"lines": [{"sku": "MUG-001", "unit_price_cents": -5}]}),
            422,
            "lines[0].unit_price_cents",
        ),
        (
            json!({"lines": [{"sku": "MUG-001", "unit_price_cents": "cheap"}]}),
            422,
            "lines[0].unit_price_cents",
        ),
        (
            json!({"lines": [{"sku": "MUG-001", "unit_price_cents": 1}, {"sku": "TEE-001", "unit_price_cents": 1}]}),
            409,
            "lines[1].sku",
        ),
        (json!({"lines": []}), 422, "lines"),
        (json!({"prices": []}), 422, "prices"),
    ] {
        let response = p
            .client
            .post(p.url(&prices))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(field(&problem), named, "{problem}");
    }

    // A discount: the order is re-priced through the pipeline at the new price.
    let response = p
        .client
        .post(p.url(&prices))
        .json(&json!({"lines": [{"sku": "MUG-001", "unit_price_cents": 1000}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let adjusted: Value = response.json().await.unwrap();
    assert_eq!(adjusted["revision"], 1);
    assert!(adjusted.get("total_cents").is_none(), "being re-priced");
    let repriced = common::poll_until(
        "the order re-priced",
        Duration::from_secs(15),
        Duration::from_millis(25),
        || p.order(&id),
        |o| o["total_cents"].is_i64(),
    )
    .await;
    // 2 × 10.00 = 20.00 + 20 % tax.
    assert_eq!(repriced["lines"][0]["unit_price_cents"], 1000);
    assert_eq!(repriced["subtotal_cents"], 2000);
    assert_eq!(repriced["total_cents"], 2400);
    assert!(repriced["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["detail"]
            .as_str()
            .is_some_and(|d| d.contains("price of MUG-001"))));

    // A card order is charged at once: its prices cannot change.
    let mut card = order_body("MUG-001", 1, "tok_visa");
    card["customer_id"] = json!(ada);
    let card = p.place(&card).await;
    p.wait_for_status(&card, "invoiced").await;
    let response = p
        .client
        .post(p.url(&format!("/v1/orders/{card}/prices")))
        .json(&json!({"lines": [{"sku": "MUG-001", "unit_price_cents": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // The pipeline summary (admins only) counts what went through.
    let response = p
        .anonymous
        .get(p.url("/v1/pipeline"))
        .header("authorization", p.bearer("ada").await)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // The summary counts a step once its event is out, a moment after the read model shows it.
    let summary: Value = common::poll_until(
        "the summary counting the invoiced order",
        Duration::from_secs(15),
        Duration::from_millis(25),
        || async {
            p.client
                .get(p.url("/v1/pipeline"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        },
        |s| s["orders"]["invoiced"].as_u64().is_some_and(|n| n >= 1),
    )
    .await;
    assert!(
        summary["orders"]["accepted"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert!(
        summary["latency"]["invoiced"]["mean_seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let mut live = Events::open(&p, "/v1/pipeline/events", &p.admin.bearer).await;
    let tick = live.next("summary").await;
    assert!(tick["orders"]["invoiced"].as_u64().unwrap() >= 1);
    assert!(p.stop().success());
}
