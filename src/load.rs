//! `orderflow load`: drives a running pipeline over HTTP and reads `orders.invoiced` over the
//! Kafka protocol to measure end-to-end throughput and latency (accept → invoiced).
//!
//! Two ways to send: a closed loop (`--orders N --concurrency C`: C requests in flight, the
//! next sent when one is answered) or an open loop (`--rate R --duration D`: R orders a
//! second on schedule, whatever the answers take, and latency counted from the scheduled
//! time, so that a slow pipeline cannot hide its latency by slowing the sender down).
//!
//! The orders are a mix (`--declines`, `--unknown-skus`, in percent): valid orders, which end
//! invoiced; orders paid with a card the gateway declines, which end in `payment-failed`; and
//! orders of a SKU the catalogue does not have, which validation rejects. Each order's event is
//! awaited on the topic of the outcome it is meant to have; an order that comes to another one
//! is counted as unexpected.
//!
//! Reported: accepted orders a second (202s only), orders a second that came to their outcome,
//! HTTP latency and accept → outcome latency (p50/p99/max, from HDR histograms: 3 significant
//! digits), errors by status, and the CPU time the pipeline's process spent per accepted order
//! (from `/proc`, when it runs on this machine: `--pid`, or the process listening on the
//! `--url` port). A progress line on a terminal shows the figures so far; `--json` prints them
//! as one JSON object, last.
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
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use orderflow_schemas::{
    registry::{lookup_catalogue, RegistryClient, SchemaIds},
    wire, OrderInvoiced, OrderRejected, PaymentFailed, TopicKind, Topics,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cli::LoadArgs;

/// The SKU of the orders meant to be rejected: no catalogue has it.
const UNKNOWN_SKU: &str = "LOAD-NO-SUCH-SKU";

/// What an order is meant to come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    /// Valid: validated, paid, invoiced.
    Invoiced,
    /// Paid with a card the gateway declines (`tok_decline`).
    PaymentFailed,
    /// Of a SKU the catalogue does not have: rejected at validation.
    Rejected,
}

impl Outcome {
    /// Order number `n`'s outcome, with `declines` and `unknown_skus` percent of the orders
    /// meant to fail: spread evenly, the same for every hundred orders.
    fn of(n: u64, declines: u8, unknown_skus: u8) -> Outcome {
        // 61 is coprime to 100: n ↦ 61n mod 100 visits every slot once in each hundred.
        let slot = (n * 61 % 100) as u8;
        if slot < declines {
            Outcome::PaymentFailed
        } else if slot < declines.saturating_add(unknown_skus) {
            Outcome::Rejected
        } else {
            Outcome::Invoiced
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outcome::Invoiced => "invoiced",
            Outcome::PaymentFailed => "payment_failed",
            Outcome::Rejected => "rejected",
        }
    }
}

/// A histogram of latencies from 1 to 3.6·10⁹ (an hour in µs), 3 significant digits; a larger
/// value counts as the largest.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds and precision in range")
}

/// What the senders record: when each accepted order was sent, HTTP latencies, errors.
struct Sent {
    /// Accepted order id → ms since the epoch when it was sent (or scheduled), and what it is
    /// meant to come to.
    accepted: HashMap<String, (i64, Outcome)>,
    /// HTTP latency of every accepted order, in µs.
    http_us: Histogram<u64>,
    /// Failed requests by status code (`transport` when there was no answer).
    errors: BTreeMap<String, u64>,
}

impl Default for Sent {
    fn default() -> Self {
        Sent {
            accepted: HashMap::new(),
            http_us: histogram(),
            errors: BTreeMap::new(),
        }
    }
}

/// The orders' senders and their shared state.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    sku: String,
    /// The access token every order is posted with.
    bearer: String,
    /// Percent of the orders paid with a declined card, and of a SKU nobody sells.
    declines: u8,
    unknown_skus: u8,
    sent: Arc<Mutex<Sent>>,
    /// Requests answered (accepted or not).
    answered: Arc<AtomicU64>,
}

impl Sender {
    /// Posts order number `n`; `scheduled` is when it was meant to go (open loop) or now.
    async fn post(&self, n: u64, scheduled: Instant) {
        let outcome = Outcome::of(n, self.declines, self.unknown_skus);
        let sku = match outcome {
            Outcome::Rejected => UNKNOWN_SKU,
            _ => &self.sku,
        };
        let token = match outcome {
            Outcome::PaymentFailed => "tok_decline",
            _ => "tok_visa",
        };
        let body = json!({
            "items": [{"sku": sku, "quantity": 1}],
            "shipping_address": {"name": "Load Test", "line1": "1 Bench St",
                "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment": {"method": "card", "token": token}
        });
        // When the order was meant to go, on the clock the events' times are read with.
        let at = orderflow_schemas::now_millis() - scheduled.elapsed().as_millis() as i64;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.bearer)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let answer = match response {
            Ok(r) if r.status().as_u16() == 202 => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                Ok(v["order_id"].as_str().map(str::to_string))
            }
            Ok(r) => Err(r.status().as_u16().to_string()),
            Err(_) => Err("transport".to_string()),
        };
        let took = scheduled.elapsed().as_micros() as u64;
        let mut sent = self.sent.lock().await;
        match answer {
            Ok(id) => {
                sent.http_us.saturating_record(took);
                if let Some(id) = id {
                    sent.accepted.insert(id, (at, outcome));
                }
            }
            Err(status) => *sent.errors.entry(status).or_default() += 1,
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The events read: which orders came to which outcome, and how long after they were sent.
struct Outcomes {
    /// accept → outcome, in ms, of the orders that came to the outcome meant.
    e2e_ms: Histogram<u64>,
    /// Orders whose event has been counted.
    seen: HashSet<String>,
    /// Events of orders whose answer has not been counted yet (or of another run's orders).
    early: HashMap<String, (i64, Outcome)>,
    early_checked_at: usize,
    /// Orders that came to the outcome meant, by outcome.
    by_outcome: BTreeMap<Outcome, u64>,
    /// Orders that came to another outcome than the one meant (e.g. "invoiced → rejected").
    unexpected: BTreeMap<String, u64>,
    /// Events of orders already counted.
    duplicates: u64,
    /// When the last order came to its outcome, from the start.
    last: Duration,
}

impl Outcomes {
    fn new() -> Self {
        Outcomes {
            e2e_ms: histogram(),
            seen: HashSet::new(),
            early: HashMap::new(),
            early_checked_at: 0,
            by_outcome: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            duplicates: 0,
            last: Duration::ZERO,
        }
    }

    /// Orders that came to the outcome meant.
    fn completed(&self) -> u64 {
        self.by_outcome.values().sum()
    }

    /// Counts order `id`'s `outcome` at `at` (ms since the epoch), whose order was sent as in
    /// `sent` (None: its answer is not in yet).
    fn count(
        &mut self,
        id: &str,
        at: i64,
        outcome: Outcome,
        sent: Option<&(i64, Outcome)>,
        now: Duration,
    ) {
        let Some(&(sent_at, meant)) = sent else {
            self.early.insert(id.to_string(), (at, outcome));
            return;
        };
        if !self.seen.insert(id.to_string()) {
            self.duplicates += 1;
            return;
        }
        if outcome == meant {
            self.e2e_ms.saturating_record((at - sent_at).max(0) as u64);
            *self.by_outcome.entry(outcome).or_default() += 1;
        } else {
            let what = format!("{} → {}", meant.name(), outcome.name());
            *self.unexpected.entry(what).or_default() += 1;
        }
        self.last = now;
    }

    /// Counts the early events whose orders' answers are in now.
    fn count_early(&mut self, accepted: &HashMap<String, (i64, Outcome)>, now: Duration) {
        if self.early.is_empty() || accepted.len() == self.early_checked_at {
            return;
        }
        self.early_checked_at = accepted.len();
        let ready: Vec<(String, (i64, Outcome))> = self
            .early
            .iter()
            .filter(|(id, _)| accepted.contains_key(*id))
            .map(|(id, e)| (id.clone(), *e))
            .collect();
        for (id, (at, outcome)) in ready {
            self.early.remove(&id);
            self.count(&id, at, outcome, accepted.get(&id), now);
        }
    }
}

/// The progress line: shown on a terminal only (indicatif hides it otherwise).
fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:24}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

pub async fn run(args: LoadArgs) -> Result<()> {
    if let Some(records) = args.raw {
        return raw(&args, records).await;
    }
    if u16::from(args.declines) + u16::from(args.unknown_skus) > 100 {
        bail!("--declines and --unknown-skus add up to more than 100 percent");
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
    let outcome_topics = [
        (topics.name(TopicKind::OrdersInvoiced), Outcome::Invoiced),
        (
            topics.name(TopicKind::PaymentFailed),
            Outcome::PaymentFailed,
        ),
        (topics.name(TopicKind::OrdersRejected), Outcome::Rejected),
    ];
    let consumer = if args.accept_only {
        None
    } else {
        let names: Vec<&str> = outcome_topics.iter().map(|(t, _)| t.as_str()).collect();
        Some(outcome_consumer(&args, &names)?)
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
        declines: args.declines,
        unknown_skus: args.unknown_skus,
        sent: Arc::default(),
        answered: Arc::default(),
    };
    let bar = progress(total);
    let started = Instant::now();
    let senders = match rate {
        Some(rate) => open_loop(&sender, total, rate, started),
        None => closed_loop(&sender, total, args.concurrency),
    };

    let mut seen = Outcomes::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut accepted_in = None;
    let mut shown_at = Instant::now();
    loop {
        let answered = sender.answered.load(Ordering::Relaxed);
        if accepted_in.is_none() && answered >= total {
            accepted_in = Some(started.elapsed());
        }
        {
            let sent = sender.sent.lock().await;
            // An event read before its order's answer counts once the answer is in.
            seen.count_early(&sent.accepted, started.elapsed());
            if shown_at.elapsed() >= Duration::from_millis(250) {
                shown_at = Instant::now();
                bar.set_position(answered);
                bar.set_message(progress_message(
                    &sent,
                    &seen,
                    started.elapsed(),
                    consumer.is_some(),
                ));
            }
            if answered >= total && (consumer.is_none() || seen.seen.len() >= sent.accepted.len()) {
                break;
            }
        }
        if Instant::now() > deadline {
            bar.suspend(|| eprintln!("timed out waiting for the orders' outcomes"));
            break;
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
        let (Some(payload), Some(&(_, outcome))) = (
            message.payload(),
            outcome_topics.iter().find(|(t, _)| t == message.topic()),
        ) else {
            continue;
        };
        let decoded = match outcome {
            Outcome::Invoiced => wire::decode_with::<OrderInvoiced>(&ids, payload)
                .map(|e| (e.order_id, e.occurred_at)),
            Outcome::PaymentFailed => wire::decode_with::<PaymentFailed>(&ids, payload)
                .map(|e| (e.order_id, e.occurred_at)),
            Outcome::Rejected => wire::decode_with::<OrderRejected>(&ids, payload)
                .map(|e| (e.order_id, e.occurred_at)),
        };
        let Ok((order_id, at)) = decoded else {
            continue;
        };
        let sent = sender.sent.lock().await;
        seen.count(
            &order_id,
            at,
            outcome,
            sent.accepted.get(&order_id),
            started.elapsed(),
        );
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let accepted_in = accepted_in.unwrap_or(elapsed);
    let mut senders = senders;
    senders.abort_all();
    let cpu_after = target.and_then(cpu_time);

    let sent = sender.sent.lock().await;
    let accepted = sent.accepted.len() as u64;
    let failed: u64 = sent.errors.values().sum();
    let done = seen.completed();
    let unexpected: u64 = seen.unexpected.values().sum();
    let http = &sent.http_us;
    let e2e = &seen.e2e_ms;
    let ms = |us: u64| us as f64 / 1000.0;
    let accepted_per_s = accepted as f64 / accepted_in.as_secs_f64();
    let completed_per_s = done as f64 / seen.last.max(accepted_in).as_secs_f64();
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
    let waited = consumer.is_some();
    let mixed = args.declines > 0 || args.unknown_skus > 0;

    println!("orders sent:          {total}");
    if mixed {
        println!(
            "mix:                  {}% declined cards, {}% unknown SKUs",
            args.declines, args.unknown_skus
        );
    }
    println!("accepted (202):       {accepted}");
    println!("failed:               {failed} {:?}", sent.errors);
    if waited {
        let by: Vec<String> = seen
            .by_outcome
            .iter()
            .map(|(o, n)| format!("{n} {}", o.name()))
            .collect();
        println!("outcomes reached:     {done} ({})", by.join(", "));
        if unexpected > 0 {
            println!("unexpected outcomes:  {unexpected} {:?}", seen.unexpected);
        }
        if seen.duplicates > 0 {
            println!(
                "events seen twice:    {} events of orders already counted",
                seen.duplicates
            );
        }
    } else {
        println!("outcomes:             not waited for (--accept-only)");
    }
    println!(
        "accept rate:          {accepted_per_s:.0} orders/s ({:.2} s)",
        accepted_in.as_secs_f64()
    );
    if waited {
        println!(
            "end-to-end rate:      {completed_per_s:.0} orders/s to their outcome ({:.2} s)",
            seen.last.max(accepted_in).as_secs_f64()
        );
    }
    println!(
        "HTTP accept:          p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(http.value_at_quantile(0.50)),
        ms(http.value_at_quantile(0.99)),
        ms(http.max())
    );
    if waited {
        println!(
            "accept → outcome:     p50 {} ms, p99 {} ms, max {} ms",
            e2e.value_at_quantile(0.50),
            e2e.value_at_quantile(0.99),
            e2e.max()
        );
    }
    match (target, cpu_seconds, cpu_us_per_order) {
        (Some(pid), Some(seconds), Some(per_order)) => println!(
            "pipeline CPU:         {seconds:.2} s (pid {pid}), {per_order} µs per accepted order"
        ),
        _ => println!("pipeline CPU:         unknown (not a local process; --pid)"),
    }
    if args.json {
        // Without waiting for the outcomes there are no end-to-end figures.
        let e2e_or_null = |v: serde_json::Value| if waited { v } else { serde_json::Value::Null };
        let outcomes: BTreeMap<&str, u64> = seen
            .by_outcome
            .iter()
            .map(|(o, n)| (o.name(), *n))
            .collect();
        let summary = json!({
            "mode": if rate.is_some() { "open" } else { "closed" },
            "rate": rate,
            "concurrency": if rate.is_some() { None } else { Some(args.concurrency) },
            "orders": total,
            "declines_pct": args.declines,
            "unknown_skus_pct": args.unknown_skus,
            "accepted": accepted,
            "completed": e2e_or_null(json!(done)),
            "outcomes": e2e_or_null(json!(outcomes)),
            "unexpected": e2e_or_null(json!(seen.unexpected)),
            "accepted_per_s": round1(accepted_per_s),
            "completed_per_s": e2e_or_null(json!(round1(completed_per_s))),
            "http_p50_ms": round1(ms(http.value_at_quantile(0.50))),
            "http_p99_ms": round1(ms(http.value_at_quantile(0.99))),
            "http_max_ms": round1(ms(http.max())),
            "e2e_p50_ms": e2e_or_null(json!(e2e.value_at_quantile(0.50))),
            "e2e_p99_ms": e2e_or_null(json!(e2e.value_at_quantile(0.99))),
            "e2e_max_ms": e2e_or_null(json!(e2e.max())),
            "errors": sent.errors,
            "duplicates": seen.duplicates,
            "cpu_seconds": cpu_seconds.map(round1),
            "cpu_us_per_order": cpu_us_per_order,
            "pid": target,
        });
        println!("{summary}");
    }
    if unexpected > 0 {
        bail!(
            "{unexpected} orders came to another outcome than the one meant: {:?}",
            seen.unexpected
        );
    }
    if waited && done < accepted {
        let mut missing: Vec<&str> = sent
            .accepted
            .keys()
            .filter(|id| !seen.seen.contains(*id))
            .map(String::as_str)
            .collect();
        missing.sort_unstable();
        missing.truncate(3);
        bail!(
            "{} orders did not come to their outcome in time (e.g. {})",
            accepted - done,
            missing.join(", ")
        );
    }
    Ok(())
}

/// The progress line's figures so far.
fn progress_message(sent: &Sent, seen: &Outcomes, elapsed: Duration, waited: bool) -> String {
    let errors: u64 = sent.errors.values().sum();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut text = format!(
        "{:.0} accepted/s, {errors} errors, HTTP p50/p99 {:.1}/{:.1} ms",
        sent.accepted.len() as f64 / elapsed.as_secs_f64().max(0.001),
        ms(sent.http_us.value_at_quantile(0.50)),
        ms(sent.http_us.value_at_quantile(0.99)),
    );
    if waited {
        text.push_str(&format!(
            ", {} done, e2e p50/p99 {}/{} ms",
            seen.completed(),
            seen.e2e_ms.value_at_quantile(0.50),
            seen.e2e_ms.value_at_quantile(0.99),
        ));
    }
    text
}

/// A consumer of the outcome `topics`, assigned to their ends as they are now, so that no
/// event of an order sent after this can come before where it starts.
fn outcome_consumer(args: &LoadArgs, topics: &[&str]) -> Result<StreamConsumer> {
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
    let mut ends = TopicPartitionList::new();
    for topic in topics {
        let end = end_of(&consumer, topic)
            .with_context(|| format!("reading the end of {topic} on {}", args.brokers))?;
        for e in end.elements() {
            ends.add_partition_offset(e.topic(), e.partition(), e.offset())?;
        }
    }
    consumer.assign(&ends)?;
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
                sender.post(n, Instant::now()).await;
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
            requests.spawn(async move { sender.post(n, scheduled).await });
            // Reap the answered ones as we go.
            while requests.try_join_next().is_some() {}
        }
        while requests.join_next().await.is_some() {}
    });
    tasks
}

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
    fn latencies_keep_three_significant_digits_from_microseconds_to_an_hour() {
        let mut h = histogram();
        for v in [0, 950, 9_000, 9_000, 150_000, 7_200_000_000] {
            h.saturating_record(v);
        }
        // Within a thousandth: the histogram answers a bucket's highest value.
        let median = h.value_at_quantile(0.5);
        assert!(median.abs_diff(9_000) <= 9, "{median}");
        assert_eq!(h.min(), 0);
        let top = h.value_at_quantile(0.8);
        assert!(top.abs_diff(150_000) <= 150, "{top}");
        assert!(
            h.max() >= 3_600_000_000 && h.max() < 3_610_000_000,
            "{}",
            h.max()
        );
    }

    #[test]
    fn the_mix_is_spread_evenly_over_every_hundred_orders() {
        for hundred in 0..3u64 {
            let outcomes: Vec<Outcome> = (hundred * 100..hundred * 100 + 100)
                .map(|n| Outcome::of(n, 5, 10))
                .collect();
            let count = |o| outcomes.iter().filter(|x| **x == o).count();
            assert_eq!(count(Outcome::PaymentFailed), 5);
            assert_eq!(count(Outcome::Rejected), 10);
            assert_eq!(count(Outcome::Invoiced), 85);
        }
        // No two failures in a row at low shares: the first failures are spread out.
        let first: Vec<u64> = (0..100)
            .filter(|n| Outcome::of(*n, 2, 0) == Outcome::PaymentFailed)
            .collect();
        assert_eq!(first.len(), 2);
        assert!(first[1] - first[0] > 1, "{first:?}");
        assert!((0..100).all(|n| Outcome::of(n, 0, 0) == Outcome::Invoiced));
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
