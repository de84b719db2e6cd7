//! The order API a shop can use, through the real `orderflow run`: access tokens on
//! the order routes, an order's customer being the caller, other customers' orders hidden, and
//! the order list (own orders paged newest first; an admin's filters).
//!
//! Customers are accounts of the pipeline, made and logged in by `Pipeline::customer`.

use crate::common;

use std::collections::HashSet;

use common::{order_body, Pipeline};
use orderflow_ingest::auth::{AuthSettings, Role};
use serde_json::{json, Value};

/// An order body with no `customer_id`: the caller's.
fn own_order(sku: &str) -> Value {
    let mut body = order_body(sku, 1, "tok_visa");
    body.as_object_mut().unwrap().remove("customer_id");
    body
}

/// POSTs `body` with `authorization`; returns the status and the JSON answer.
async fn post_as(p: &Pipeline, authorization: &str, body: &Value) -> (u16, Value) {
    let response = p
        .anonymous
        .post(p.url("/v1/orders"))
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// GETs `path` with `authorization`; returns the status, content type and JSON answer.
async fn get_as(p: &Pipeline, authorization: &str, path: &str) -> (u16, String, Value) {
    let response = p
        .anonymous
        .get(p.url(path))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, response.json().await.unwrap_or_default())
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Places an order as `customer` (the body names no one); returns its id.
async fn place_as(p: &Pipeline, customer: &str, sku: &str) -> String {
    let (status, body) = post_as(p, &p.bearer(customer).await, &own_order(sku)).await;
    assert_eq!(status, 202, "{body}");
    body["order_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_need_a_token_and_stay_with_their_customer() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    p.wait_until_ready().await;

    // No token, a tampered one, an expired one, one signed with another secret: 401.
    let alice = p.bearer("alice").await;
    let mut tampered = alice.clone();
    tampered.pop();
    tampered.push(if alice.ends_with('A') { 'B' } else { 'A' });
    let then = orderflow_schemas::now_millis() / 1000 - 3600;
    let expired = format!(
        "Bearer {}",
        p.token_keys()
            .session_token(&p.id("alice").await, Role::Customer, "a-login", then)
    );
    let foreign = format!(
        "Bearer {}",
        AuthSettings::new(&[7u8; 32]).session_token(
            &p.id("alice").await,
            Role::Admin,
            "a-login",
            then + 3600
        )
    );
    let response = p
        .anonymous
        .post(p.url("/v1/orders"))
        .header("content-type", "application/json")
        .body(own_order("MUG-001").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    for bad in [
        &tampered,
        &expired,
        &foreign,
        &"Basic YWxpY2U6eA==".to_string(),
    ] {
        let (status, problem) = post_as(&p, bad, &own_order("MUG-001")).await;
        assert_eq!(status, 401, "{bad}: {problem}");
        let (status, _, _) = get_as(&p, bad, "/v1/orders").await;
        assert_eq!(status, 401, "{bad}");
    }

    // The order is the caller's, named or not; naming someone else is refused.
    let mine = place_as(&p, "alice", "MUG-001").await;
    let mut named = order_body("MUG-001", 1, "tok_visa");
    named["customer_id"] = json!(p.id("alice").await);
    let (status, body) = post_as(&p, &alice, &named).await;
    assert_eq!(status, 202, "{body}");
    let also_mine = body["order_id"].as_str().unwrap().to_string();
    named["customer_id"] = json!(p.id("bob").await);
    let (status, problem) = post_as(&p, &alice, &named).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "/problems/forbidden");

    let theirs = place_as(&p, "bob", "MUG-001").await;
    for id in [&mine, &also_mine] {
        let (status, _, order) = get_as(&p, &alice, &format!("/v1/orders/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(order["customer_id"], p.id("alice").await);
    }

    // Another customer's order is "not found", exactly like an order that does not exist.
    let (status, kind, hidden) = get_as(&p, &alice, &format!("/v1/orders/{theirs}")).await;
    let (missing_status, _, missing) = get_as(&p, &alice, "/v1/orders/no-such-order").await;
    assert_eq!((status, missing_status), (404, 404));
    assert_eq!(kind, "application/problem+json");
    assert_eq!(hidden["type"], missing["type"]);
    assert_eq!(hidden["title"], missing["title"]);
    let (status, _, page) = get_as(&p, &alice, "/v1/orders").await;
    assert_eq!(status, 200);
    let listed: HashSet<&str> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, HashSet::from([mine.as_str(), also_mine.as_str()]));

    // An admin reads anyone's order and may order for a customer, or for itself.
    let admin = p.admin.bearer.clone();
    let (status, _, order) = get_as(&p, &admin, &format!("/v1/orders/{theirs}")).await;
    assert_eq!(
        (status, order["customer_id"].as_str()),
        (200, Some(p.id("bob").await.as_str()))
    );
    named["customer_id"] = json!(p.id("carol").await);
    let (status, body) = post_as(&p, &admin, &named).await;
    assert_eq!(status, 202, "{body}");
    let for_carol = body["order_id"].as_str().unwrap().to_string();
    let (_, _, order) = get_as(&p, &admin, &format!("/v1/orders/{for_carol}")).await;
    assert_eq!(order["customer_id"], p.id("carol").await);
    let (_, _, order) = get_as(
        &p,
        &p.bearer("carol").await,
        &format!("/v1/orders/{for_carol}"),
    )
    .await;
    assert_eq!(order["order_id"].as_str(), Some(for_carol.as_str()));
    let (status, body) = post_as(&p, &admin, &own_order("MUG-001")).await;
    assert_eq!(status, 202, "{body}");
    let (_, _, order) = get_as(
        &p,
        &admin,
        &format!("/v1/orders/{}", body["order_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(order["customer_id"], p.admin.id.as_str());

    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lists_page_newest_first_and_admins_filter() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    p.wait_until_ready().await;

    let mut alices = Vec::new();
    for _ in 0..5 {
        alices.push(place_as(&p, "alice", "MUG-001").await);
    }
    let bobs_good = place_as(&p, "bob", "MUG-001").await;
    let bobs_unknown = place_as(&p, "bob", "NOPE-404").await;
    p.wait_for_status(&bobs_unknown, "rejected").await;

    // Alice's pages: newest first, no overlap, no gap, and nothing of Bob's.
    let alice = p.bearer("alice").await;
    let mut seen = Vec::new();
    let mut path = "/v1/orders?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (status, _, page) = get_as(&p, &alice, &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert!(pages <= 3, "paging does not end");
        let orders = page["orders"].as_array().unwrap();
        assert!(orders.len() <= 2);
        seen.extend(
            orders
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = alices.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);

    // A customer cannot look at Bob's list; an admin can, and filters it.
    let (status, _, problem) = get_as(
        &p,
        &alice,
        &format!("/v1/orders?customer_id={}", p.id("bob").await),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    let (status, _, _) = get_as(
        &p,
        &alice,
        &format!("/v1/orders?customer_id={}", p.id("alice").await),
    )
    .await;
    assert_eq!(status, 200);
    let admin = p.admin.bearer.clone();
    let ids = |page: &Value| -> Vec<String> {
        page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, _, everyone) = get_as(&p, &admin, "/v1/orders?limit=100").await;
    let mut all = newest_first.clone();
    all.insert(0, bobs_good.clone());
    all.insert(0, bobs_unknown.clone());
    assert_eq!(ids(&everyone), all);
    let (_, _, bobs) = get_as(
        &p,
        &admin,
        &format!("/v1/orders?customer_id={}", p.id("bob").await),
    )
    .await;
    assert_eq!(ids(&bobs), vec![bobs_unknown.clone(), bobs_good.clone()]);
    let (_, _, rejected) = get_as(&p, &admin, "/v1/orders?status=rejected").await;
    assert_eq!(ids(&rejected), vec![bobs_unknown.clone()]);
    let (_, _, none) = get_as(
        &p,
        &admin,
        &format!(
            "/v1/orders?status=rejected&customer_id={}",
            p.id("alice").await
        ),
    )
    .await;
    assert_eq!(ids(&none), Vec::<String>::new());

    // A time range on creation, as RFC 3339 or ms: from inclusive, to exclusive.
    let created = |order: &Value| order["created_at"].as_str().unwrap().to_string();
    let third = p.order(&alices[2]).await;
    let fifth = p.order(&alices[4]).await;
    let (status, _, window) = get_as(
        &p,
        &admin,
        &format!(
            "/v1/orders?customer_id={}&from={}&to={}",
            p.id("alice").await,
            created(&third),
            created(&fifth)
        ),
    )
    .await;
    assert_eq!(status, 200, "{window}");
    assert_eq!(ids(&window), vec![alices[3].clone(), alices[2].clone()]);
    let ms = |rfc3339: &str| {
        humantime::parse_rfc3339(rfc3339)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let (_, _, window) = get_as(
        &p,
        &alice,
        &format!("/v1/orders?from={}", ms(&created(&fifth))),
    )
    .await;
    assert_eq!(ids(&window), vec![alices[4].clone()]);

    // Every bad parameter is named.
    for (query, field) in [
        ("limit=0", "query:limit"),
        ("limit=101", "query:limit"),
        ("limit=ten", "query:limit"),
        ("cursor=not-ours", "query:cursor"),
        ("status=lost", "query:status"),
        ("from=yesterday", "query:from"),
        ("to=2026-02-30T00:00:00Z", "query:to"),
        ("colour=red", "query"),
    ] {
        let (status, kind, problem) = get_as(&p, &alice, &format!("/v1/orders?{query}")).await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert_eq!(kind, "application/problem+json");
        assert_eq!(fields(&problem), vec![field.to_string()], "{query}");
    }

    assert!(p.stop().success());
}

// --- Cancel and ship ------------------------------------------------------

/// Sends `method` to `path` with `authorization` and an optional JSON body; returns the
/// status, content type and JSON answer.
async fn request_as(
    p: &Pipeline,
    method: reqwest::Method,
    authorization: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut request = p
        .anonymous
        .request(method, p.url(path))
        .header("authorization", authorization);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, response.json().await.unwrap_or_default())
}

/// POSTs `path` with `authorization` and an optional JSON body.
async fn post_path(
    p: &Pipeline,
    authorization: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    request_as(p, reqwest::Method::POST, authorization, path, body).await
}

/// A product of the test's own (10 units at 10.00 EUR), so stock counts are exact; its SKU.
async fn own_product(p: &Pipeline, prefix: &str, name: &str) -> String {
    let sku = format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let (status, _, created) = post_path(
        p,
        &p.admin.bearer,
        "/v1/products",
        Some(
            json!({"sku": sku, "name": name, "price_cents": 1000, "currency": "EUR",
                    "stock": 10}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    sku
}

/// The stock of `sku` as `GET /v1/products/{sku}` shows it.
async fn stock_of(p: &Pipeline, sku: &str) -> i64 {
    let (status, _, product) = get_as(p, &p.admin.bearer, &format!("/v1/products/{sku}")).await;
    assert_eq!(status, 200, "{product}");
    product["stock"].as_i64().unwrap()
}

/// Places an order of `quantity` × `sku` as `customer`, paid by card; returns its id.
async fn place_quantity(p: &Pipeline, customer: &str, sku: &str, quantity: i64) -> String {
    place_paying(p, customer, sku, quantity, None).await
}

/// Places an order of `quantity` × `sku` as `customer`, paid by `payment` (a card when
/// `None`); returns its id.
async fn place_paying(
    p: &Pipeline,
    customer: &str,
    sku: &str,
    quantity: i64,
    payment: Option<Value>,
) -> String {
    let mut body = own_order(sku);
    body["items"][0]["quantity"] = json!(quantity);
    if let Some(payment) = payment {
        body["payment"] = payment;
    }
    let (status, answer) = post_as(p, &p.bearer(customer).await, &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["order_id"].as_str().unwrap().to_string()
}

/// Cancel and ship through the real `orderflow run`: an invoiced order ships (and its customer
/// gets the shipped email) and then cannot be cancelled; only admins ship, only paid orders;
/// another customer's order is 404; cancelling gives the stock back — invoiced, rejected, or
/// cancelled at once while validation runs — and cancelling twice is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_cancel_before_shipping_and_admins_ship_paid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    p.wait_until_ready().await;
    let admin = p.admin.bearer.clone();
    let (alice, bob) = (p.bearer("alice").await, p.bearer("bob").await);

    let sku = own_product(&p, "LC", "Lifecycle lamp").await;

    // Ship: an invoiced order ships once; a customer may not ship; a shipped order stays so.
    let shipped = place_quantity(&p, "alice", &sku, 1).await;
    p.wait_for_status(&shipped, "invoiced").await;
    assert_eq!(stock_of(&p, &sku).await, 9);
    let ship_path = format!("/v1/orders/{shipped}/ship");
    let (status, kind, problem) = post_path(&p, &alice, &ship_path, None).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "application/problem+json"),
        "{problem}"
    );
    let (status, _, order) = post_path(&p, &admin, &ship_path, None).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "shipped");
    assert_eq!(
        order["timeline"].as_array().unwrap().last().unwrap()["event_id"],
        format!("{shipped}:shipped")
    );
    let (status, _, again) = post_path(&p, &admin, &ship_path, None).await;
    assert_eq!(
        (status, &again["timeline"]),
        (200, &order["timeline"]),
        "shipping twice"
    );
    let (status, _, seen) = get_as(&p, &alice, &format!("/v1/orders/{shipped}")).await;
    assert_eq!((status, &seen["status"]), (200, &json!("shipped")));
    p.wait_for_notifications(|all| {
        all.iter()
            .any(|n| n["kind"] == "order_shipped" && n["order_id"] == shipped.as_str())
    })
    .await;
    let cancel_shipped = format!("/v1/orders/{shipped}/cancel");
    let (status, kind, problem) = post_path(&p, &alice, &cancel_shipped, None).await;
    assert_eq!(
        (status, kind.as_str()),
        (409, "application/problem+json"),
        "{problem}"
    );
    assert_eq!(problem["type"], "/problems/order-shipped");
    assert!(
        problem["detail"].as_str().unwrap().contains("shipped"),
        "{problem}"
    );
    assert_eq!(
        stock_of(&p, &sku).await,
        9,
        "a shipped order keeps its stock"
    );

    // Cancel an invoiced (paid) order: others see 404; its stock comes back, once.
    let paid = place_quantity(&p, "alice", &sku, 2).await;
    p.wait_for_status(&paid, "invoiced").await;
    assert_eq!(stock_of(&p, &sku).await, 7);
    let cancel_paid = format!("/v1/orders/{paid}/cancel");
    let (status, kind, problem) = post_path(&p, &bob, &cancel_paid, None).await;
    assert_eq!(
        (status, kind.as_str()),
        (404, "application/problem+json"),
        "{problem}"
    );
    for (body, field) in [
        (json!({"reason": "  "}), "reason"),
        (json!({"reason": "x".repeat(501)}), "reason"),
        (json!({"why": "no"}), "why"),
    ] {
        let (status, _, problem) = post_path(&p, &alice, &cancel_paid, Some(body)).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(fields(&problem), [field], "{problem}");
    }
    assert_eq!(
        stock_of(&p, &sku).await,
        7,
        "refused cancels change nothing"
    );
    let (status, _, order) = post_path(
        &p,
        &alice,
        &cancel_paid,
        Some(json!({"reason": "ordered the wrong size"})),
    )
    .await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "cancelled");
    let last = order["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event_id"], format!("{paid}:cancelled"));
    assert_eq!(last["detail"], "ordered the wrong size");
    assert_eq!(stock_of(&p, &sku).await, 9, "the stock is back");
    let (status, _, again) = post_path(&p, &admin, &cancel_paid, None).await;
    assert_eq!(
        (status, &again["timeline"]),
        (200, &order["timeline"]),
        "cancel twice"
    );
    assert_eq!(stock_of(&p, &sku).await, 9, "released once");
    let (status, _, problem) =
        post_path(&p, &admin, &format!("/v1/orders/{paid}/ship"), None).await;
    assert_eq!(status, 409, "a cancelled order does not ship: {problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("cancelled"),
        "{problem}"
    );
    let emails = p
        .wait_for_notifications(|all| {
            all.iter()
                .any(|n| n["kind"] == "order_cancelled" && n["order_id"] == paid.as_str())
        })
        .await;
    let email = emails
        .iter()
        .find(|n| n["kind"] == "order_cancelled" && n["order_id"] == paid.as_str())
        .unwrap();
    assert!(
        email["text"]
            .as_str()
            .unwrap()
            .contains("We refund 24.00 EUR"),
        "{email}"
    );

    // A rejected order (more than there is) cancels too, and its stock never moved. It does
    // not ship.
    let rejected = place_quantity(&p, "alice", &sku, 50).await;
    p.wait_for_status(&rejected, "rejected").await;
    let (status, _, problem) =
        post_path(&p, &admin, &format!("/v1/orders/{rejected}/ship"), None).await;
    assert_eq!(status, 409, "{problem}");
    let (status, _, order) =
        post_path(&p, &alice, &format!("/v1/orders/{rejected}/cancel"), None).await;
    assert_eq!(
        (status, &order["status"]),
        (200, &json!("cancelled")),
        "{order}"
    );
    assert_eq!(stock_of(&p, &sku).await, 9);

    // Cancelled at once, racing validation: whichever comes first, no stock stays reserved
    // and the order stays cancelled (no stage goes on with it).
    let early = place_quantity(&p, "bob", &sku, 3).await;
    let (status, _, order) = post_path(&p, &bob, &format!("/v1/orders/{early}/cancel"), None).await;
    assert_eq!(
        (status, &order["status"]),
        (200, &json!("cancelled")),
        "{order}"
    );
    common::poll_until(
        "the early-cancelled order's stock",
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(50),
        || stock_of(&p, &sku),
        |stock| *stock == 9,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(stock_of(&p, &sku).await, 9);
    let (_, _, seen) = get_as(&p, &bob, &format!("/v1/orders/{early}")).await;
    assert_eq!(seen["status"], "cancelled", "{seen}");
    assert!(
        seen["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] != "paid" && t["status"] != "invoiced"),
        "{seen}"
    );

    // Unknown orders: 404 for both.
    for path in [
        "/v1/orders/no-such-order/cancel",
        "/v1/orders/no-such-order/ship",
    ] {
        let (status, kind, _) = post_path(&p, &admin, path, None).await;
        assert_eq!(
            (status, kind.as_str()),
            (404, "application/problem+json"),
            "{path}"
        );
    }
    p.stop();
}

// --- Modifications and bank transfers -------------------------------------------------

/// PATCHes `path` with `authorization` and a JSON body.
async fn patch_path(
    p: &Pipeline,
    authorization: &str,
    path: &str,
    body: Value,
) -> (u16, String, Value) {
    request_as(p, reqwest::Method::PATCH, authorization, path, Some(body)).await
}

/// Places `quantity` × `sku` as `customer`, paid by bank transfer; returns its id.
async fn place_transfer(p: &Pipeline, customer: &str, sku: &str, quantity: i64) -> String {
    let transfer = json!({"method": "bank_transfer", "token": format!("{customer}-iban")});
    place_paying(p, customer, sku, quantity, Some(transfer)).await
}

/// An order paid by bank transfer waits, validated and unpaid, while its customer (or an admin)
/// changes its quantities: the stock follows each change all or nothing, validation re-prices it
/// and the customer gets an "updated" email; when an admin records the transfer it is paid for
/// the new total, invoiced, and can no longer change. Other customers get 404, card orders and
/// cancelled ones 409, wrong changes 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_change_quantities_until_the_transfer_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    p.wait_until_ready().await;
    let admin = p.admin.bearer.clone();
    let (alice, bob) = (p.bearer("alice").await, p.bearer("bob").await);
    let sku = own_product(&p, "MD", "Modifiable mug").await;

    let id = place_transfer(&p, "alice", &sku, 2).await;
    let order = p.wait_for_status(&id, "validated").await;
    assert_eq!(order["total_cents"], 2400, "2 × 10.00 + 20 % tax: {order}");
    assert_eq!(order["revision"], 0);
    assert_eq!(stock_of(&p, &sku).await, 8);
    let path = format!("/v1/orders/{id}");

    // Someone else's order does not exist; wrong changes are named; too many units are refused
    // as a whole.
    let (status, _, problem) = patch_path(
        &p,
        &bob,
        &path,
        json!({"items": [{"sku": sku, "quantity": 1}]}),
    )
    .await;
    assert_eq!(status, 404, "{problem}");
    let (status, kind, problem) = patch_path(
        &p,
        &alice,
        &path,
        json!({"items": [{"sku": "MUG-001", "quantity": 1}, {"sku": sku, "quantity": -1}]}),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (422, "application/problem+json"),
        "{problem}"
    );
    assert_eq!(fields(&problem), ["items[1].quantity"]);
    // Changes that do not fit the order's items conflict with it.
    let (status, _, problem) = patch_path(
        &p,
        &alice,
        &path,
        json!({"items": [{"sku": "MUG-001", "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        (status, fields(&problem)),
        (409, vec!["items[0].sku".to_string()])
    );
    let (status, _, problem) = patch_path(
        &p,
        &alice,
        &path,
        json!({"items": [{"sku": sku, "quantity": 0}]}),
    )
    .await;
    assert_eq!((status, fields(&problem)), (409, vec!["items".to_string()]));
    let (status, _, problem) = patch_path(
        &p,
        &alice,
        &path,
        json!({"items": [{"sku": sku, "quantity": 11}]}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "/problems/insufficient-stock");
    assert_eq!(fields(&problem), ["items[0].quantity"]);
    assert!(
        problem["detail"].as_str().unwrap().contains("only 8 more"),
        "{problem}"
    );
    assert_eq!(
        stock_of(&p, &sku).await,
        8,
        "a refused change holds nothing"
    );

    // The change: the stock follows at once, the totals come back re-priced.
    let (status, _, changed) = patch_path(
        &p,
        &alice,
        &path,
        json!({"items": [{"sku": sku, "quantity": 5}]}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["revision"], 1);
    assert_eq!(changed["items"], json!([{"sku": sku, "quantity": 5}]));
    assert_eq!(changed["status"], "validated");
    assert_eq!(stock_of(&p, &sku).await, 5);
    let repriced = common::poll_until(
        "the changed order re-priced",
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(25),
        || p.order(&id),
        |o| o["total_cents"] == 6000,
    )
    .await;
    assert_eq!(repriced["revision"], 1);
    let steps: Vec<&str> = repriced["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event_id"].as_str().unwrap())
        .collect();
    for step in [format!("{id}:modified:r1"), format!("{id}:validated:r1")] {
        assert!(steps.contains(&step.as_str()), "{step} in {steps:?}");
    }
    let emails = p
        .wait_for_notifications(|all| {
            all.iter()
                .any(|n| n["order_id"] == id.as_str() && n["id"] == format!("{id}:validated:r1"))
        })
        .await;
    let update = emails
        .iter()
        .find(|n| n["id"] == format!("{id}:validated:r1"))
        .unwrap();
    let text = update.to_string();
    assert!(
        text.contains("updated") && text.contains("60.00"),
        "{update}"
    );
    assert!(text.contains("bank transfer"), "{update}");

    // Only an admin records the transfer; then the order is paid for the new total, invoiced,
    // and its quantities are final.
    let pay_path = format!("/v1/orders/{id}/payment");
    let transfer = json!({"reference": "TRF-2026-0001"});
    let (status, _, problem) = post_path(&p, &alice, &pay_path, Some(transfer.clone())).await;
    assert_eq!(status, 403, "{problem}");
    let (status, _, paid) = post_path(&p, &admin, &pay_path, Some(transfer.clone())).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "paid");
    let invoiced = p.wait_for_status(&id, "invoiced").await;
    assert_eq!(invoiced["total_cents"], 6000);
    let (status, _, again) = post_path(&p, &admin, &pay_path, Some(transfer)).await;
    assert_eq!(status, 200, "recording the same transfer again: {again}");
    let (status, _, problem) = post_path(
        &p,
        &admin,
        &pay_path,
        Some(json!({"reference": "TRF-OTHER"})),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    let (status, _, problem) = patch_path(
        &p,
        &alice,
        &path,
        json!({"items": [{"sku": sku, "quantity": 1}]}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "/problems/order-not-modifiable");
    assert_eq!(stock_of(&p, &sku).await, 5, "a paid order keeps its units");

    // A card order is charged at once: it never changes. A cancelled one neither, and its
    // (changed) reservation goes back.
    let card = place_quantity(&p, "alice", &sku, 1).await;
    p.wait_for_status(&card, "invoiced").await;
    let (status, _, problem) = patch_path(
        &p,
        &alice,
        &format!("/v1/orders/{card}"),
        json!({"items": [{"sku": sku, "quantity": 2}]}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("card"),
        "{problem}"
    );
    let gone = place_transfer(&p, "bob", &sku, 1).await;
    p.wait_for_status(&gone, "validated").await;
    let (status, _, changed) = patch_path(
        &p,
        &admin,
        &format!("/v1/orders/{gone}"),
        json!({"items": [{"sku": sku, "quantity": 3}]}),
    )
    .await;
    assert_eq!(status, 200, "an admin changes any order: {changed}");
    assert_eq!(stock_of(&p, &sku).await, 1);
    let (status, _, _) = post_path(&p, &bob, &format!("/v1/orders/{gone}/cancel"), None).await;
    assert_eq!(status, 200);
    assert_eq!(stock_of(&p, &sku).await, 4, "the three units go back");
    let (status, _, problem) = patch_path(
        &p,
        &bob,
        &format!("/v1/orders/{gone}"),
        json!({"items": [{"sku": sku, "quantity": 1}]}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    let (status, _, problem) = post_path(
        &p,
        &admin,
        &format!("/v1/orders/{gone}/payment"),
        Some(json!({"reference": "TRF-LATE"})),
    )
    .await;
    assert_eq!(status, 409, "a cancelled order is not paid: {problem}");
}

// --- Unpaid orders: expiry and the per-customer cap ----------------------------------------------

/// A bank-transfer order whose transfer is not recorded within `--unpaid-order-ttl` is
/// cancelled by the payment stage with its reason: its stock comes back, the customer gets the
/// cancelled email, and a transfer recorded afterwards is refused. An order whose transfer was
/// recorded in time is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_expire_and_give_their_stock_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(
        dir.path(),
        &[
            // Long enough for the first order of a pipeline just started to be validated and
            // paid before it could expire (a first order was seen validated 5 s after it was
            // placed); short enough to wait for the second one's expiry.
            "--unpaid-order-ttl",
            "10s",
            "--unpaid-sweep-interval",
            "200ms",
        ],
    );
    p.wait_until_ready().await;
    let admin = p.admin.bearer.clone();
    let sku = own_product(&p, "EX", "Expiring easel").await;

    // Placed first and paid at once: when the later order expires, the sweep has passed it.
    let paid = place_transfer(&p, "bob", &sku, 2).await;
    p.wait_for_status(&paid, "validated").await;
    let (status, _, order) = post_path(
        &p,
        &admin,
        &format!("/v1/orders/{paid}/payment"),
        Some(json!({"reference": "TRF-IN-TIME"})),
    )
    .await;
    assert_eq!(status, 200, "{order}");

    let unpaid = place_transfer(&p, "alice", &sku, 3).await;
    p.wait_for_status(&unpaid, "validated").await;
    assert_eq!(stock_of(&p, &sku).await, 5);

    let reason = "payment not received in time";
    let emails = p
        .wait_for_notifications(|all| {
            all.iter()
                .any(|n| n["kind"] == "order_cancelled" && n["order_id"] == unpaid.as_str())
        })
        .await;
    let email = emails
        .iter()
        .find(|n| n["kind"] == "order_cancelled" && n["order_id"] == unpaid.as_str())
        .unwrap();
    assert!(email["text"].as_str().unwrap().contains(reason), "{email}");
    // The API's read cache follows the order topics: the cancel shows moments later.
    p.wait_for_status(&unpaid, "cancelled").await;
    let (status, _, order) = get_as(
        &p,
        &p.bearer("alice").await,
        &format!("/v1/orders/{unpaid}"),
    )
    .await;
    assert_eq!(
        (status, &order["status"]),
        (200, &json!("cancelled")),
        "{order}"
    );
    let last = order["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event_id"], format!("{unpaid}:cancelled"));
    assert_eq!(last["detail"], reason);
    assert_eq!(
        stock_of(&p, &sku).await,
        8,
        "the expired order's 3 units are back"
    );

    // The transfer arriving late is refused; the order stays cancelled and the stock stays.
    let (status, _, problem) = post_path(
        &p,
        &admin,
        &format!("/v1/orders/{unpaid}/payment"),
        Some(json!({"reference": "TRF-TOO-LATE"})),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("cancelled"),
        "{problem}"
    );
    assert_eq!(stock_of(&p, &sku).await, 8);

    // The order paid in time went on; it was never cancelled and no email says so.
    let order = p.wait_for_status(&paid, "invoiced").await;
    assert!(
        order["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] != "cancelled"),
        "{order}"
    );
    assert!(!p
        .notifications()
        .iter()
        .any(|n| n["kind"] == "order_cancelled" && n["order_id"] == paid.as_str()));
    let emails = p.notifications();
    assert_eq!(
        emails
            .iter()
            .filter(|n| n["kind"] == "order_cancelled" && n["order_id"] == unpaid.as_str())
            .count(),
        1,
        "one email for the expiry"
    );

    assert!(p.stop().success());
}

/// A customer may have 3 orders awaiting a bank transfer (the default `--max-unpaid-orders`):
/// the next is refused with 409 naming `payment.method`, also when an admin places it for
/// them; card orders and other customers are not held back, and a place frees up once an
/// order is cancelled or its transfer recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_are_capped_per_customer() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    p.wait_until_ready().await;
    let admin = p.admin.bearer.clone();
    let sku = own_product(&p, "CAP", "Capped cup").await;

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(place_transfer(&p, "alice", &sku, 1).await);
    }
    let transfer = json!({"method": "bank_transfer", "token": "alice-iban"});
    let mut body = own_order(&sku);
    body["payment"] = transfer.clone();
    let (status, problem) = post_as(&p, &p.bearer("alice").await, &body).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "/problems/too-many-unpaid-orders");
    assert_eq!(fields(&problem), ["payment.method"]);
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("3 orders awaiting a bank transfer"),
        "{problem}"
    );
    // An admin ordering for her is held to the same cap.
    let mut for_alice = body.clone();
    for_alice["customer_id"] = json!(p.id("alice").await);
    let (status, problem) = post_as(&p, &admin, &for_alice).await;
    assert_eq!(status, 409, "{problem}");
    // Nothing was reserved for the refused orders.
    for id in &open {
        p.wait_for_status(id, "validated").await;
    }
    assert_eq!(stock_of(&p, &sku).await, 7);

    // A card order, and another customer's transfer, go through.
    place_quantity(&p, "alice", &sku, 1).await;
    place_transfer(&p, "bob", &sku, 1).await;

    // Cancelling one frees a place; so does recording a transfer.
    let (status, _, order) = post_path(
        &p,
        &p.bearer("alice").await,
        &format!("/v1/orders/{}/cancel", open[0]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{order}");
    place_transfer(&p, "alice", &sku, 1).await;
    let (status, problem) = post_as(&p, &p.bearer("alice").await, &body).await;
    assert_eq!(status, 409, "{problem}");
    let (status, _, order) = post_path(
        &p,
        &admin,
        &format!("/v1/orders/{}/payment", open[1]),
        Some(json!({"reference": "TRF-CAP-1"})),
    )
    .await;
    assert_eq!(status, 200, "{order}");
    place_transfer(&p, "alice", &sku, 1).await;

    assert!(p.stop().success());
}
