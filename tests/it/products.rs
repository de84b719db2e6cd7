//! The catalogue through the real `orderflow run`: admins add, change, restock and discontinue
//! products; customers and anonymous callers may only read; stock adjustments and orders share
//! the same rules; bad input is a problem naming the field.

use crate::common;

use common::{order_body, Pipeline};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    p: &Pipeline,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = p.anonymous.request(method, p.url(path));
    if let Some(t) = bearer {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    if !status.is_success() {
        assert_eq!(kind, "application/problem+json", "{status} {path}");
    }
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_the_catalogue_and_orders_follow_its_stock() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let admin = p.admin.token().to_string();
    let customer = p.customer("cust-1").await.token().to_string();
    let cup = json!({"sku": "CUP-777", "name": "Espresso cup", "price_cents": 850,
                     "currency": "EUR", "stock": 2});

    // Who may write: nobody without a token, no customer.
    let (status, problem) = call(&p, Method::POST, "/v1/products", None, Some(cup.clone())).await;
    assert_eq!(status, 401, "{problem}");
    let (status, _) = call(
        &p,
        Method::POST,
        "/v1/products",
        Some(&customer),
        Some(cup.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &p,
        Method::POST,
        "/v1/products",
        Some("not.a.token"),
        Some(cup.clone()),
    )
    .await;
    assert_eq!(status, 401);
    for (method, path, body) in [
        (
            Method::PATCH,
            "/v1/products/MUG-001",
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, "/v1/products/MUG-001", None),
        (
            Method::POST,
            "/v1/products/MUG-001/stock",
            Some(json!({"delta": 5})),
        ),
    ] {
        let (status, _) = call(&p, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path}");
        let (status, _) = call(&p, method.clone(), path, Some(&customer), body).await;
        assert_eq!(status, 403, "{method} {path}");
    }

    // An admin adds it; the SKU is then taken.
    let response = p
        .client
        .post(p.url("/v1/products"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(cup.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/v1/products/CUP-777");
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        created,
        json!({"sku": "CUP-777", "name": "Espresso cup", "price": "8.50", "price_cents": 850,
               "currency": "EUR", "stock": 2, "discontinued": false})
    );
    let (status, problem) = call(
        &p,
        Method::POST,
        "/v1/products",
        Some(&admin),
        Some(cup.clone()),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(fields(&problem), ["sku"]);
    let (status, read) = call(&p, Method::GET, "/v1/products/CUP-777", None, None).await;
    assert_eq!((status, &read), (StatusCode::OK, &created));
    assert_eq!(p.stock("CUP-777").await, 2);

    // Renamed and repriced; the stock stays.
    let (status, changed) = call(
        &p,
        Method::PATCH,
        "/v1/products/CUP-777",
        Some(&admin),
        Some(json!({"name": "Espresso cup, blue", "price_cents": 900})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            changed["name"].as_str(),
            changed["price"].as_str(),
            changed["stock"].as_i64()
        ),
        (Some("Espresso cup, blue"), Some("9.00"), Some(2))
    );

    // Stock: an adjustment below zero is refused and changes nothing.
    let (status, problem) = call(
        &p,
        Method::POST,
        "/v1/products/CUP-777/stock",
        Some(&admin),
        Some(json!({"delta": -3, "reason": "count"})),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(fields(&problem), ["delta"]);
    assert_eq!(p.stock("CUP-777").await, 2);

    // Three units wanted: out of stock until restocked.
    let short = p.place(&order_body("CUP-777", 3, "tok_visa")).await;
    let rejected = p.wait_for_status(&short, "rejected").await;
    assert!(
        rejected["timeline"].to_string().contains("2 available"),
        "{rejected}"
    );
    let (status, restocked) = call(
        &p,
        Method::POST,
        "/v1/products/CUP-777/stock",
        Some(&admin),
        Some(json!({"delta": 5, "reason": "delivery"})),
    )
    .await;
    assert_eq!(
        (status.as_u16(), restocked["stock"].as_i64()),
        (200, Some(7))
    );
    let ok = p.place(&order_body("CUP-777", 3, "tok_visa")).await;
    let invoiced = p.wait_for_status(&ok, "invoiced").await;
    assert_eq!(
        invoiced["lines"][0]["unit_price_cents"], 900,
        "the new price"
    );
    assert_eq!(p.stock("CUP-777").await, 4);

    // A restock sent twice with one Idempotency-Key (a retry after a lost answer) counts once;
    // the key with another delta is refused.
    let restock = |delta: i64| {
        p.client
            .post(p.url("/v1/products/CUP-777/stock"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .header("idempotency-key", "delivery-2026-11-23")
            .body(json!({"delta": delta, "reason": "delivery"}).to_string())
            .send()
    };
    let first = restock(6).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let again = restock(6).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed: Value = again.json().await.unwrap();
    assert_eq!(replayed["stock"], 10);
    assert_eq!(p.stock("CUP-777").await, 10, "applied once");
    let other = restock(7).await.unwrap();
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(fields(&problem), ["header:Idempotency-Key"]);
    assert_eq!(p.stock("CUP-777").await, 10);

    // Discontinued: readable, off the list (unless asked), new orders rejected.
    let response = p
        .client
        .delete(p.url("/v1/products/CUP-777"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, read) = call(&p, Method::GET, "/v1/products/CUP-777", None, None).await;
    assert_eq!(read["discontinued"], true);
    let listed = |v: &Value| {
        v["products"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["sku"] == "CUP-777")
    };
    let (_, list) = call(&p, Method::GET, "/v1/products", None, None).await;
    assert!(!listed(&list));
    let (_, list) = call(
        &p,
        Method::GET,
        "/v1/products?include_discontinued=true",
        None,
        None,
    )
    .await;
    assert!(listed(&list));
    let gone = p.place(&order_body("CUP-777", 1, "tok_visa")).await;
    let rejected = p.wait_for_status(&gone, "rejected").await;
    assert!(
        rejected["timeline"].to_string().contains("discontinued"),
        "{rejected}"
    );
    assert!(
        p.order(&ok).await["status"] == "invoiced",
        "past orders stay as they were"
    );

    // Unknown products.
    let (status, _) = call(&p, Method::GET, "/v1/products/NOPE-1", None, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &p,
        Method::POST,
        "/v1/products/NOPE-1/stock",
        Some(&admin),
        Some(json!({"delta": 1})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_naming_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let admin = p.admin.token().to_string();
    let cases: Vec<(Method, &str, Value, StatusCode, Vec<&str>)> = vec![
        (
            Method::POST,
            "/v1/products",
            json!({"sku": "bad sku", "name": "", "price_cents": -5, "currency": "euro", "stock": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["sku", "name", "price_cents", "currency", "stock"],
        ),
        (
            Method::POST,
            "/v1/products",
            json!({"sku": "A-1", "name": "A", "price_cents": "x",
         "currency": "EUR", "stock": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["price_cents"],
        ),
        (
            Method::POST,
            "/v1/products",
            json!({"sku": "A-1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["name"],
        ),
        (
            Method::POST,
            "/v1/products",
            json!({"sku": "A-1", "name": "A", "price_cents": 1,
         "currency": "EUR", "stock": 1, "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["colour"],
        ),
        (
            Method::PATCH,
            "/v1/products/MUG-001",
            json!({"stock": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["stock"],
        ),
        (
            Method::POST,
            "/v1/products/MUG-001/stock",
            json!({"delta": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["delta"],
        ),
        (
            Method::POST,
            "/v1/products/MUG-001/stock",
            json!({"delta": 1.5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["delta"],
        ),
        (
            Method::POST,
            "/v1/products/MUG-001/stock",
            json!({"delta": 2_000_000_000i64}),
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["delta"],
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got, problem) = call(&p, method.clone(), path, Some(&admin), Some(body.clone())).await;
        assert_eq!(got, status, "{method} {path} {body}: {problem}");
        assert_eq!(fields(&problem), expected, "{method} {path} {body}");
    }
    // Not JSON, or not said to be.
    let response = p
        .client
        .post(p.url("/v1/products"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = p
        .client
        .post(p.url("/v1/products"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let (status, problem) = call(
        &p,
        Method::GET,
        "/v1/products?include_discontinued=maybe",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), fields(&problem)),
        (422, vec!["query:include_discontinued".to_string()])
    );
    // Nothing changed.
    assert_eq!(p.stock("MUG-001").await, 5_000);
    assert!(p.stop().success());
}
