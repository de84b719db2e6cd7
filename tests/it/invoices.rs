//! Invoice PDFs through the real pipeline: an invoiced order's PDF downloads from
//! `GET /v1/orders/{id}/invoice` (its owner and admins only), from the local object store that
//! `orderflow run` keeps under its data dir, and from S3 (moto); and order reads, cached in the
//! API, never go backwards nor get stuck while an order moves through the pipeline.

use crate::common;

use std::time::{Duration, Instant};

use common::{moto::Moto, order_body, Pipeline};
use serde_json::{json, Value};

/// Places an order for the customer `cust-1` and waits until it is invoiced; the order.
async fn invoiced_order(p: &Pipeline) -> Value {
    let mut body = order_body("MUG-001", 3, "tok_visa");
    body["customer_id"] = json!(p.id("cust-1").await);
    let id = p.place(&body).await;
    p.wait_for_status(&id, "invoiced").await
}

/// Downloads the invoice with `authorization`; the response.
async fn download(p: &Pipeline, id: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = p.anonymous.get(p.url(&format!("/v1/orders/{id}/invoice")));
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    request.send().await.unwrap()
}

/// The owner's download is the PDF of this order's invoice; returns its bytes.
async fn check_download(p: &Pipeline, order: &Value) -> Vec<u8> {
    let id = order["order_id"].as_str().unwrap();
    let number = order["invoice_number"].as_str().unwrap();
    let response = download(p, id, Some(&p.bearer("cust-1").await)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert_eq!(
        response.headers()["content-disposition"],
        format!("attachment; filename=\"{number}.pdf\"").as_str()
    );
    let pdf = response.bytes().await.unwrap().to_vec();
    assert!(pdf.starts_with(b"%PDF-"), "a PDF");
    // 3 × 12.50 = 37.50, 20 % tax 7.50, total 45.00.
    assert_eq!(order["total_cents"], 4500);
    // It names the customer (its account's name, not its id) and the shipping address.
    let texts = orderflow_processors::invoicing::pdf::texts(&pdf);
    for text in [
        number,
        "45.00 EUR",
        "37.50 EUR",
        "cust-1",
        "Ada Lovelace",
        "1 Main St",
        "10115 Berlin",
    ] {
        assert!(
            texts.iter().any(|t| t == text),
            "{text} in the PDF: {texts:?}"
        );
    }
    let id = p.id("cust-1").await;
    assert!(!texts.iter().any(|t| t.contains(&id)), "{texts:?}");
    pdf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoiced_order_has_its_pdf_for_its_customer_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let order = invoiced_order(&p).await;
    let id = order["order_id"].as_str().unwrap();
    let number = order["invoice_number"].as_str().unwrap();
    let pdf = check_download(&p, &order).await;
    // Kept under the data dir, as downloaded; an admin gets it too.
    let stored = std::fs::read(dir.path().join(format!("objects/invoices/{number}.pdf"))).unwrap();
    assert_eq!(stored, pdf);
    let response = download(&p, id, Some(&p.admin.bearer)).await;
    assert_eq!(response.status(), 200);

    // Another customer: as if the order did not exist. No token: 401.
    let response = download(&p, id, Some(&p.bearer("cust-2").await)).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = download(&p, id, None).await;
    assert_eq!(response.status(), 401);
    // Not invoiced (rejected): 404 saying so.
    let rejected = p.place(&order_body("NOPE-404", 1, "tok_visa")).await;
    p.wait_for_status(&rejected, "rejected").await;
    let response = download(&p, &rejected, Some(&p.admin.bearer)).await;
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no invoice yet"),
        "{problem}"
    );
    let response = download(&p, "no-such-order", Some(&p.admin.bearer)).await;
    assert_eq!(response.status(), 404);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_are_kept_in_s3() {
    let moto = Moto::start().await;
    let bucket = format!("invoices-{}", std::process::id());
    let http = reqwest::Client::new();
    let created = http
        .put(moto.url(&format!("/{bucket}")))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "bucket created: {}",
        created.status()
    );

    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{bucket}/shop-1");
    let p = Pipeline::start_with_env(dir.path(), &["--invoice-store", &store], &moto.env());
    let ready = p.wait_until_ready().await;
    assert_eq!(ready["invoice_store"], "ok", "{ready}");
    let order = invoiced_order(&p).await;
    let pdf = check_download(&p, &order).await;
    let number = order["invoice_number"].as_str().unwrap();
    // Read back from the bucket with a client of our own (moto wants signed requests). The
    // variables only point it at moto, while it is made: the other tests in this process do
    // not use AWS (and the pipelines they start do not get these).
    for (k, v) in moto.env() {
        std::env::set_var(k, v);
    }
    let files = orderflow_store::InvoiceFiles::open(&store).unwrap();
    for (k, _) in moto.env() {
        std::env::remove_var(k);
    }
    let object = files
        .get(number)
        .await
        .unwrap()
        .expect("the object is in the bucket");
    let chunks: Vec<_> = futures::TryStreamExt::try_collect(object.bytes)
        .await
        .unwrap();
    let stored: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(stored, pdf);
    assert!(
        !dir.path().join("objects/invoices").exists(),
        "nothing kept locally"
    );
    assert!(p.stop().success());
}

/// Order reads go through the API's cache: polled as fast as we can while the order moves
/// through the pipeline, its status never goes back, and each step shows up (the cache does
/// not hold it back: it ends at `invoiced` within the usual time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_order_reads_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let rank = |s: &str| {
        ["accepted", "validated", "paid", "invoiced"]
            .iter()
            .position(|x| *x == s)
    };
    for _ in 0..3 {
        let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
        let mut seen: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = p.order(&id).await["status"].as_str().unwrap().to_string();
            if let Some(last) = seen.last() {
                assert!(
                    rank(&status) >= rank(last),
                    "went back from {last} to {status}: {seen:?}"
                );
            }
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            if status == "invoiced" {
                break;
            }
            assert!(Instant::now() < deadline, "stuck: {seen:?}");
        }
        // Still invoiced, read again (from the cache now).
        for _ in 0..5 {
            assert_eq!(p.order(&id).await["status"], "invoiced");
        }
    }
    let metrics = p.metrics().await;
    let count = |outcome: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "orderflow_order_cache_requests_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("hit") > 0.0,
        "reads were served from the cache:\n{metrics}"
    );
    assert!(count("miss") > 0.0);
    assert!(p.stop().success());
}
