//! `orderflow load`: drives a running pipeline over HTTP and reads `orders.invoiced` over the
//! Kafka protocol to measure end-to-end throughput and latency (accept → invoiced).
//!
//! Orders need an access token: `--token` posts them all as that account; without it the tool
//! logs in as `--email` / `--password` (the demo customer of `orderflow run` by default).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use orderflow_schemas::{
    registry::{lookup_catalogue, RegistryClient},
    wire, OrderInvoiced, TopicKind, Topics,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    ClientConfig, Message,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cli::LoadArgs;

pub async fn run(args: LoadArgs) -> Result<()> {
    let topics = Topics::new(args.topic_prefix.clone());
    // The ids the pipeline frames with, from its registry (`orderflow run` serves one).
    let registry_url = args.schema_registry.as_deref().unwrap_or(&args.url);
    let ids = lookup_catalogue(&RegistryClient::new(registry_url)?, &topics)
        .await
        .with_context(|| format!("reading the schema ids from {registry_url}"))?;
    let invoiced_topic = topics.name(TopicKind::OrdersInvoiced);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set(
            "group.id",
            format!("orderflow-load-{}", uuid::Uuid::now_v7()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()?;
    consumer.subscribe(&[&invoiced_topic])?;
    // Let the consumer join before orders flow, so that it reads from "latest" = now.
    let joined = Instant::now();
    while consumer.assignment()?.count() == 0 {
        if joined.elapsed() > Duration::from_secs(15) {
            bail!("could not join a consumer group on {}", args.brokers);
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }

    let sent: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let bearer = match &args.token {
        Some(token) => token.clone(),
        None => login(&client, &args).await?,
    };
    let url = format!("{}/v1/orders", args.url.trim_end_matches('/'));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, sent, next, failures) = (
            client.clone(),
            url.clone(),
            sent.clone(),
            next.clone(),
            failures.clone(),
        );
        let (total, sku, bearer) = (args.orders, args.sku.clone(), bearer.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let body = json!({
                    "items": [{"sku": sku, "quantity": 1}],
                    "shipping_address": {"name": "Load Test", "line1": "1 Bench St",
                        "city": "Berlin", "postal_code": "10115", "country": "DE"},
                    "payment": {"method": "card", "token": "tok_visa"}
                });
                let at = orderflow_schemas::now_millis();
                let response = client
                    .post(&url)
                    .bearer_auth(&bearer)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        if let Some(id) = v["order_id"].as_str() {
                            sent.lock().await.insert(id.to_string(), at);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let expected = args.orders;
    let mut latencies = Vec::with_capacity(args.orders as usize);
    let mut early: HashMap<String, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut accepted_in = None;
    while (latencies.len() as u64) < expected - failures.load(Ordering::Relaxed) {
        if accepted_in.is_none() && workers.iter().all(|w| w.is_finished()) {
            accepted_in = Some(started.elapsed());
        }
        if Instant::now() > deadline {
            eprintln!("timed out waiting for invoiced events");
            break;
        }
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Ok(Ok(m)) => m,
            _ => continue,
        };
        let Some(Ok(event)) = message
            .payload()
            .map(|p| wire::decode_with::<OrderInvoiced>(&ids, p))
        else {
            continue;
        };
        early.insert(event.order_id, event.occurred_at);
        let sent = sent.lock().await;
        early.retain(|id, invoiced_at| match sent.get(id) {
            Some(at) => {
                latencies.push((*invoiced_at - at).max(0) as u64);
                false
            }
            None => true,
        });
    }
    let elapsed = started.elapsed();
    let accepted_in = accepted_in.unwrap_or(elapsed);
    for w in workers {
        w.await.context("load worker")?;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i]
    };
    let done = latencies.len();
    println!("orders sent:          {}", args.orders);
    println!("rejected by the API:  {}", failures.load(Ordering::Relaxed));
    println!("invoiced seen:        {done}");
    println!(
        "accept rate:          {:.0} orders/s ({:.2} s)",
        args.orders as f64 / accepted_in.as_secs_f64(),
        accepted_in.as_secs_f64()
    );
    println!(
        "end-to-end rate:      {:.0} orders/s invoiced ({:.2} s)",
        done as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "accept → invoiced:    p50 {} ms, p99 {} ms, max {} ms",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    if (done as u64) < args.orders - failures.load(Ordering::Relaxed) {
        bail!(
            "{} orders were not invoiced in time",
            args.orders as usize - done
        );
    }
    Ok(())
}

/// An access token for `--email` / `--password`.
async fn login(client: &reqwest::Client, args: &LoadArgs) -> Result<String> {
    let url = format!("{}/v1/auth/login", args.url.trim_end_matches('/'));
    let response = client
        .post(&url)
        .json(&json!({"email": args.email, "password": args.password}))
        .send()
        .await
        .with_context(|| format!("logging in at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match body["access_token"].as_str() {
        Some(token) if status.is_success() => Ok(token.to_string()),
        _ => bail!(
            "logging in as {} failed ({status}): {} (pass --token, or --email and --password \
             of an account of this pipeline)",
            args.email,
            body["detail"].as_str().unwrap_or("no detail")
        ),
    }
}
