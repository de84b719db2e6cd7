//! `orderflow load`: drives a running pipeline over HTTP and reads `orders.invoiced` over the
//! Kafka protocol to measure end-to-end throughput and latency (accept → invoiced).
//!
//! Two ways to send: a closed loop (`--orders N --concurrency C`: C requests in flight, the
//! next sent when one is answered) or an open loop (`--rate R --duration D`: R orders a
//! second on schedule, whatever the answers take, and latency counted from the scheduled
//! time, so that a slow pipeline cannot hide its latency by slowing the sender down).
//!
//! Reported: accepted orders a second (202s only), invoiced orders a second, HTTP latency and
//! accept → invoiced latency (p50/p99/max, exact: every sample is kept), errors by status, and
//! the CPU time the pipeline's process spent per accepted order (from `/proc`, when it runs
//! on this machine: `--pid`, or the process listening on the `--url` port). `--json` prints
//! the same as one JSON object, last.
//!
//! Orders need an access token: `--token` posts them all as that account; without it the tool
//! logs in as `--email` / `--password` (the demo customer of `orderflow run` by default).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use orderflow_schemas::{
    registry::{lookup_catalogue, RegistryClient, SchemaIds},
    wire, OrderInvoiced, TopicKind, Topics,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cli::LoadArgs;

/// What the senders record: when each accepted order was sent, HTTP latencies, errors.
#[derive(Default)]
struct Sent {
    /// Accepted order id → ms since the epoch when it was sent (or scheduled).
    accepted: HashMap<String, i64>,
    /// HTTP latency of every accepted order, in µs.
    http_us: Vec<u64>,
    /// Failed requests by status code (`transport` when there was no answer).
    errors: BTreeMap<String, u64>,
}

/// The orders' senders and their shared state.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    sku: String,
    /// The access token every order is posted with.
    bearer: String,
    sent: Arc<Mutex<Sent>>,
    /// Requests answered (accepted or not).
    answered: Arc<AtomicU64>,
}

impl Sender {
    /// Posts order number `n`; `scheduled` is when it was meant to go (open loop) or now.
    async fn post(&self, scheduled: Instant) {
        let body = json!({
            "items": [{"sku": self.sku, "quantity": 1}],
            "shipping_address": {"name": "Load Test", "line1": "1 Bench St",
                "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment": {"method": "card", "token": "tok_visa"}
        });
        // When the order was meant to go, on the clock `orders.invoiced`'s events are read with.
        let at = orderflow_schemas::now_millis() - scheduled.elapsed().as_millis() as i64;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.bearer)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let outcome = match response {
            Ok(r) if r.status().as_u16() == 202 => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                Ok(v["order_id"].as_str().map(str::to_string))
            }
            Ok(r) => Err(r.status().as_u16().to_string()),
            Err(_) => Err("transport".to_string()),
        };
        let took = scheduled.elapsed().as_micros() as u64;
        let mut sent = self.sent.lock().await;
        match outcome {
            Ok(id) => {
                sent.http_us.push(took);
                if let Some(id) = id {
                    sent.accepted.insert(id, at);
                }
            }
            Err(status) => *sent.errors.entry(status).or_default() += 1,
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(args: LoadArgs) -> Result<()> {
    if let Some(records) = args.raw {
        return raw(&args, records).await;
    }
    let topics = Topics::new(args.topic_prefix.clone());
    // The ids the pipeline frames with, from its registry (`orderflow run` serves one).
    let registry_url = args.schema_registry.as_deref().unwrap_or(&args.url);
    let ids = if args.accept_only {
        SchemaIds::builtin()
    } else if args.schema_registry.is_none() && !serves_registry(&args.url).await? {
        // An API without a registry (`orderflow ingest` without `--schema-registry`) frames
        // with the built-in ids.
        eprintln!(
            "no schema registry at {}: reading events with the built-in ids",
            args.url
        );
        SchemaIds::builtin()
    } else {
        lookup_catalogue(&RegistryClient::new(registry_url)?, &topics)
            .await
            .with_context(|| format!("reading the schema ids from {registry_url}"))?
    };
    let invoiced_topic = topics.name(TopicKind::OrdersInvoiced);
    let consumer = if args.accept_only {
        None
    } else {
        Some(invoiced_consumer(&args, &invoiced_topic)?)
    };

    let target = args.pid.or_else(|| listening_pid(&args.url));
    let cpu_before = target.and_then(cpu_time);
    let (total, rate) = match (args.rate, args.duration) {
        (Some(rate), Some(duration)) => (
            (f64::from(rate) * duration.as_secs_f64()).round() as u64,
            Some(rate),
        ),
        _ => (args.orders, None),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(256))
        .build()?;
    let bearer = match &args.token {
        Some(token) => token.clone(),
        None => login(&client, &args).await?,
    };
    let sender = Sender {
        client,
        url: format!("{}/v1/orders", args.url.trim_end_matches('/')),
        sku: args.sku.clone(),
        bearer,
        sent: Arc::default(),
        answered: Arc::default(),
    };
    let started = Instant::now();
    let senders = match rate {
        Some(rate) => open_loop(&sender, total, rate, started),
        None => closed_loop(&sender, total, args.concurrency),
    };

    let mut latencies = Vec::with_capacity(total as usize);
    // Events of orders whose answer has not been counted yet (or of orders of another run).
    let mut early: HashMap<String, i64> = HashMap::new();
    let mut early_checked_at = 0;
    let mut invoiced: HashSet<String> = HashSet::new();
    let mut duplicates = 0u64;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut accepted_in = None;
    let mut last_invoiced = started.elapsed();
    loop {
        let answered = sender.answered.load(Ordering::Relaxed);
        if accepted_in.is_none() && answered >= total {
            accepted_in = Some(started.elapsed());
        }
        if answered >= total {
            if consumer.is_none() {
                break;
            }
            let sent = sender.sent.lock().await;
            if latencies.len() >= sent.accepted.len() {
                break;
            }
        }
        if Instant::now() > deadline {
            eprintln!("timed out waiting for invoiced events");
            break;
        }
        // An event read before its order's answer counts once the answer is in.
        {
            let sent = sender.sent.lock().await;
            if !early.is_empty() && sent.accepted.len() != early_checked_at {
                early_checked_at = sent.accepted.len();
                early.retain(|id, invoiced_at| match sent.accepted.get(id) {
                    Some(at) => {
                        if invoiced.insert(id.clone()) {
                            latencies.push((*invoiced_at - at).max(0) as u64);
                            last_invoiced = started.elapsed();
                        }
                        false
                    }
                    None => true,
                });
            }
        }
        let Some(consumer) = &consumer else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
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
        let sent = sender.sent.lock().await;
        match sent.accepted.get(&event.order_id) {
            Some(at) if invoiced.insert(event.order_id.clone()) => {
                latencies.push((event.occurred_at - at).max(0) as u64);
                last_invoiced = started.elapsed();
            }
            Some(_) => duplicates += 1,
            None => {
                early.insert(event.order_id, event.occurred_at);
            }
        }
    }
    let elapsed = started.elapsed();
    let accepted_in = accepted_in.unwrap_or(elapsed);
    let mut senders = senders;
    senders.abort_all();
    let cpu_after = target.and_then(cpu_time);

    let sent = sender.sent.lock().await;
    let accepted = sent.accepted.len() as u64;
    let failed: u64 = sent.errors.values().sum();
    let done = latencies.len() as u64;
    let mut http_us = sent.http_us.clone();
    http_us.sort_unstable();
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let accepted_per_s = accepted as f64 / accepted_in.as_secs_f64();
    let completed_per_s = done as f64 / last_invoiced.max(accepted_in).as_secs_f64();
    let cpu_us_per_order = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if accepted > 0 => {
            Some(after.saturating_sub(before).as_micros() as u64 / accepted)
        }
        _ => None,
    };
    let cpu_seconds = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64()),
        _ => None,
    };

    println!("orders sent:          {total}");
    println!("accepted (202):       {accepted}");
    println!("failed:               {failed} {:?}", sent.errors);
    let waited = consumer.is_some();
    if waited {
        println!("invoiced seen:        {done}");
    } else {
        println!("invoiced seen:        not waited for (--accept-only)");
    }
    if duplicates > 0 {
        println!("invoiced twice:       {duplicates} events of orders already seen invoiced");
    }
    println!(
        "accept rate:          {accepted_per_s:.0} orders/s ({:.2} s)",
        accepted_in.as_secs_f64()
    );
    if waited {
        println!(
            "end-to-end rate:      {completed_per_s:.0} orders/s invoiced ({:.2} s)",
            last_invoiced.max(accepted_in).as_secs_f64()
        );
    }
    println!(
        "HTTP accept:          p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&http_us, 0.50)),
        ms(percentile(&http_us, 0.99)),
        ms(http_us.last().copied().unwrap_or(0))
    );
    if waited {
        println!(
            "accept → invoiced:    p50 {} ms, p99 {} ms, max {} ms",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0)
        );
    }
    match (target, cpu_seconds, cpu_us_per_order) {
        (Some(pid), Some(seconds), Some(per_order)) => println!(
            "pipeline CPU:         {seconds:.2} s (pid {pid}), {per_order} µs per accepted order"
        ),
        _ => println!("pipeline CPU:         unknown (not a local process; --pid)"),
    }
    if args.json {
        // Without waiting for invoiced events there are no end-to-end figures.
        let e2e = |v: serde_json::Value| if waited { v } else { serde_json::Value::Null };
        let summary = json!({
            "mode": if rate.is_some() { "open" } else { "closed" },
            "rate": rate,
            "concurrency": if rate.is_some() { None } else { Some(args.concurrency) },
            "orders": total,
            "accepted": accepted,
            "completed": e2e(json!(done)),
            "accepted_per_s": round1(accepted_per_s),
            "completed_per_s": e2e(json!(round1(completed_per_s))),
            "http_p50_ms": round1(ms(percentile(&http_us, 0.50))),
            "http_p99_ms": round1(ms(percentile(&http_us, 0.99))),
            "http_max_ms": round1(ms(http_us.last().copied().unwrap_or(0))),
            "e2e_p50_ms": e2e(json!(percentile(&latencies, 0.50))),
            "e2e_p99_ms": e2e(json!(percentile(&latencies, 0.99))),
            "e2e_max_ms": e2e(json!(latencies.last().copied().unwrap_or(0))),
            "errors": sent.errors,
            "duplicates": duplicates,
            "cpu_seconds": cpu_seconds.map(round1),
            "cpu_us_per_order": cpu_us_per_order,
            "pid": target,
        });
        println!("{summary}");
    }
    if done < accepted && waited {
        let mut missing: Vec<&str> = sent
            .accepted
            .keys()
            .filter(|id| !invoiced.contains(*id))
            .map(String::as_str)
            .collect();
        missing.sort_unstable();
        missing.truncate(3);
        bail!(
            "{} orders were not invoiced in time (e.g. {})",
            accepted - done,
            missing.join(", ")
        );
    }
    Ok(())
}

/// A consumer of `orders.invoiced` assigned to its end as it is now, so that no event of an
/// order sent after this can come before where it starts.
fn invoiced_consumer(args: &LoadArgs, invoiced_topic: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set(
            "group.id",
            format!("orderflow-load-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        // The latency is read from the events' own times, not when this consumer sees them.
        .set("fetch.wait.max.ms", "500")
        .create()?;
    // From the topic's end as it is before any order is sent, so that no order's event can come
    // before where the consumer starts.
    let end = end_of(&consumer, invoiced_topic)
        .with_context(|| format!("reading the end of {invoiced_topic} on {}", args.brokers))?;
    consumer.assign(&end)?;
    Ok(consumer)
}

/// Whether the API at `url` serves a schema registry (`orderflow run`'s does; `orderflow
/// ingest`'s does not, unless it keeps the registry itself).
async fn serves_registry(url: &str) -> Result<bool> {
    let subjects = format!("{}/subjects", url.trim_end_matches('/'));
    let response = reqwest::get(&subjects)
        .await
        .with_context(|| format!("reaching {url}"))?;
    Ok(response.status() != reqwest::StatusCode::NOT_FOUND)
}

/// `--raw`: `records` records straight into the broker with the pipeline's producer settings
/// (idempotent, acks=all, batching); the rate at which they are acknowledged.
async fn raw(args: &LoadArgs, records: u64) -> Result<()> {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        client::DefaultClientContext,
        error::{KafkaError, RDKafkaErrorCode},
        producer::{FutureProducer, FutureRecord, Producer},
    };

    let config = orderflow_kafka::KafkaConfig::new(
        args.brokers.clone(),
        Topics::new(args.topic_prefix.clone()),
    );
    let topic = format!("{}bench.raw", args.topic_prefix);
    let admin: AdminClient<DefaultClientContext> = config.admin_config().create()?;
    let created = admin
        .create_topics(
            [&NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in created {
        if let Err((name, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("cannot create topic {name}: {code}");
            }
        }
    }
    let producer: FutureProducer = config.producer_config().create()?;
    let value = vec![b'x'; args.record_bytes];
    let target = args.pid.or_else(|| listening_pid(&args.url));
    let cpu_before = target.and_then(cpu_time);
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut failed = 0u64;
    for n in 0..records {
        let key = (n % 1024).to_string();
        loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Wait for one acknowledgement to make room.
                    if let Some(outcome) = futures::StreamExt::next(&mut pending).await {
                        failed += u64::from(!matches!(outcome, Ok(Ok(_))));
                    }
                }
                Err((e, _)) => bail!("producing: {e}"),
            }
        }
    }
    while let Some(outcome) = futures::StreamExt::next(&mut pending).await {
        failed += u64::from(!matches!(outcome, Ok(Ok(_))));
    }
    producer.flush(Duration::from_secs(30))?;
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, target.and_then(cpu_time)) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let per_s = (records - failed) as f64 / elapsed.as_secs_f64();
    let cpu_us_per_record = cpu.map(|cpu| cpu.as_micros() as u64 / records.max(1));
    println!(
        "raw produce:          {records} × {} B in {:.2} s: {per_s:.0} records/s acknowledged, {failed} failed",
        args.record_bytes,
        elapsed.as_secs_f64()
    );
    if let Some(per_record) = cpu_us_per_record {
        println!("broker CPU:           {per_record} µs per record");
    }
    if args.json {
        let summary = json!({
            "mode": "raw",
            "records": records,
            "record_bytes": args.record_bytes,
            "failed": failed,
            "records_per_s": round1(per_s),
            "cpu_seconds": cpu.map(|c| round1(c.as_secs_f64())),
            "cpu_us_per_record": cpu_us_per_record,
            "pid": target,
        });
        println!("{summary}");
    }
    Ok(())
}

/// `concurrency` senders, each posting the next order when its last is answered.
fn closed_loop(sender: &Sender, total: u64, concurrency: usize) -> tokio::task::JoinSet<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (sender, next) = (sender.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                sender.post(Instant::now()).await;
            }
        });
    }
    workers
}

/// Posts `total` orders at `rate` a second from `started`, each in a task of its own.
fn open_loop(sender: &Sender, total: u64, rate: u32, started: Instant) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let sender = sender.clone();
    tasks.spawn(async move {
        let mut requests = tokio::task::JoinSet::new();
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        for n in 0..total {
            let scheduled = started + interval.mul_f64(n as f64);
            tokio::time::sleep_until(scheduled.into()).await;
            let sender = sender.clone();
            requests.spawn(async move { sender.post(scheduled).await });
            // Reap the answered ones as we go.
            while requests.try_join_next().is_some() {}
        }
        while requests.join_next().await.is_some() {}
    });
    tasks
}

/// The `p` quantile of sorted samples (0 when there are none).
/// Every partition of `topic` at its high watermark (blocking: at start, before orders flow).
fn end_of(consumer: &StreamConsumer, topic: &str) -> Result<TopicPartitionList> {
    let timeout = Duration::from_secs(15);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("the topic {topic} has no partitions (does it exist?)");
    }
    let mut end = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        end.add_partition_offset(topic, partition, Offset::Offset(high))?;
    }
    Ok(end)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: the fields after it follow its last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Clock ticks of 1/100 s (USER_HZ, 100 on Linux).
    Some(Duration::from_millis(ticks * 10))
}

/// The process on this machine listening on the port of `url`, when its host is local.
fn listening_pid(url: &str) -> Option<u32> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?;
    if !matches!(
        host,
        "127.0.0.1" | "localhost" | "[::1]" | "::1" | "0.0.0.0"
    ) {
        return None;
    }
    let port = url.port_or_known_default()?;
    // The listening socket's inode, from /proc/net/tcp{,6} (state 0A: LISTEN).
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            std::fs::read_to_string(table)
                .ok()?
                .lines()
                .skip(1)
                .find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit_once(':')?.1;
                    (u16::from_str_radix(local_port, 16).ok()? == port && fields.get(3)? == &"0A")
                        .then(|| fields.get(9).map(|inode| inode.to_string()))
                        .flatten()
                })
        })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&socket)))
                .then_some(pid)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.5), 51);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&[], 0.99), 0);
    }

    #[test]
    fn the_cpu_time_and_listener_of_this_process_are_found() {
        assert!(cpu_time(std::process::id()).is_some());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            listening_pid(&format!("http://127.0.0.1:{port}")),
            Some(std::process::id())
        );
        assert_eq!(listening_pid("http://example.com:80"), None);
    }
}
