//! The consume loop every stage runs.
//!
//! It takes what the consumer has ready (up to `max_batch` messages) as one batch, runs the
//! handler on every message — messages with the same key one after another, in offset order,
//! different keys concurrently, so that the store can group their writes — and only when the
//! whole batch is done stores the batch's offsets for the background commit. A message the
//! handler calls poison goes to the dead-letter topic with the reason; a retriable failure is
//! retried with backoff until it succeeds or the stage is asked to stop, in which case the
//! batch's offsets are not stored and the messages come again after a restart. Every handler
//! is idempotent, so a message seen twice does no harm.
//!
//! Messages are decoded with `KafkaConfig::schemas`; a schema id it does not know (a version
//! registered after start-up) is asked of `KafkaConfig::registry`, once, before the handler
//! sees the message.
//!
//! Each message is handled in a `handle_message` span with the stage, the order id (the
//! message key), the event type, topic, partition and offset as fields: a debug span of the
//! target [`MESSAGE_SPANS`].
//!
//! It records the stage's metrics (`orderflow_schemas::metrics`): messages by outcome, batch
//! sizes, per-message processing time, messages in flight, the age of each consumed event, and
//! errors by type.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
};

use futures::{future::join_all, FutureExt};
use orderflow_schemas::{
    metrics::{self, error_type, outcome},
    wire, DecodeError, Event, SchemaIds, TopicKind,
};
use prometheus::{Histogram, IntCounter, IntGauge};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{Header, Headers, OwnedHeaders},
    Message,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, info, warn, Instrument, Span};

use crate::{EventProducer, KafkaConfig, Result, StatsContext, BACKOFF};

/// Headers set on a dead-lettered message.
pub mod dlq_headers {
    pub const REASON: &str = "orderflow-dlq-reason";
    pub const STAGE: &str = "orderflow-dlq-stage";
    pub const SOURCE_TOPIC: &str = "orderflow-dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "orderflow-dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "orderflow-dlq-source-offset";
}

/// The target of the `handle_message` spans (debug level): `RUST_LOG=info,orderflow::messages=debug`
/// puts each stage's log lines in the span of the message they are about.
pub const MESSAGE_SPANS: &str = "orderflow::messages";

/// One consumed message, owned.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    /// Which catalogue topic it came from (`None` if the name is not in the catalogue).
    pub kind: Option<TopicKind>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The ids to decode the payload with (`KafkaConfig::schemas`).
    pub schemas: SchemaIds,
}

impl Incoming {
    /// Decodes the payload as an `E`, by its schema id.
    pub fn decode<E: Event>(&self) -> Result<E, DecodeError> {
        wire::decode_with(&self.schemas, &self.payload)
    }

    /// The order id: the message key, as text.
    fn order_id(&self) -> Option<Cow<'_, str>> {
        self.key.as_deref().map(String::from_utf8_lossy)
    }

    /// The name of the event's schema, by its topic; `unknown` for a topic not in the
    /// catalogue.
    fn event_type(&self) -> &'static str {
        self.kind.and_then(|k| k.spec().schema).unwrap_or("unknown")
    }
}

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message itself is bad (cannot be decoded, breaks an invariant): retrying cannot
    /// help. It goes to the dead-letter topic and the stage moves on.
    #[error("poison message: {0}")]
    Poison(String),
    /// Something the message needs is unavailable (store, broker, gateway): try again later.
    #[error("retriable: {0}")]
    Retriable(String),
}

/// What a stage does with one message. It must be idempotent: it may see a message again
/// after a crash or a rebalance, and must then do nothing twice (re-emitting its output is
/// fine: consumers deduplicate by event id).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: &Incoming) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Which topics a stage reads, as which consumer group.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// The stage's name, used in logs and on dead-lettered messages.
    pub name: String,
    pub group_id: String,
    pub inputs: Vec<TopicKind>,
    /// Most messages handled as one batch.
    pub max_batch: usize,
    /// Where poison messages go: `orderflow.dead-letter` unless the stage has its own
    /// (the bridge: `orderflow.bridge.dead-letter`).
    pub dead_letter: TopicKind,
    /// librdkafka properties of this stage's consumer beyond the defaults of
    /// [`KafkaConfig::consumer_config`], each unless `--kafka-property` sets it.
    pub consumer_properties: Vec<(String, String)>,
}

impl StageConfig {
    /// A stage reading `inputs` in the consumer group `<prefix>orderflow-<name>`.
    pub fn new(kafka: &KafkaConfig, name: &str, inputs: Vec<TopicKind>) -> Self {
        StageConfig {
            name: name.to_string(),
            group_id: format!("{}orderflow-{name}", kafka.topics.prefix()),
            inputs,
            max_batch: 1000,
            dead_letter: TopicKind::DeadLetter,
            consumer_properties: Vec::new(),
        }
    }

    /// The same stage, its consumer with this librdkafka property (unless `--kafka-property`
    /// sets it).
    pub fn with_consumer_property(mut self, key: &str, value: impl ToString) -> Self {
        self.consumer_properties
            .push((key.to_string(), value.to_string()));
        self
    }

    /// The same stage with its own `max.poll.interval.ms`: the longest the loop may spend on
    /// one batch, retries included, before its consumer leaves the group and its partitions go
    /// to another member (librdkafka's default: 5 min).
    pub fn with_max_poll_interval(self, interval: std::time::Duration) -> Self {
        self.with_consumer_property("max.poll.interval.ms", interval.as_millis())
    }

    /// The same stage, dead-lettering to `topic`.
    pub fn with_dead_letter(mut self, topic: TopicKind) -> Self {
        self.dead_letter = topic;
        self
    }
}

/// A stage's metrics, with its labels resolved once.
struct StageMetrics {
    ok: IntCounter,
    retried: IntCounter,
    dead_lettered: IntCounter,
    batch_size: Histogram,
    processing: Histogram,
    in_flight: IntGauge,
    lag: Histogram,
    retriable_errors: IntCounter,
    poison_errors: IntCounter,
    consumer_errors: IntCounter,
    dead_letter_errors: IntCounter,
}

impl StageMetrics {
    fn new(stage: &str) -> Self {
        let m = metrics::metrics();
        let messages = |outcome| m.stage_messages.with_label_values(&[stage, outcome]);
        let errors = |error_type| m.errors.with_label_values(&[stage, error_type]);
        StageMetrics {
            ok: messages(outcome::OK),
            retried: messages(outcome::RETRIED),
            dead_lettered: messages(outcome::DEAD_LETTERED),
            batch_size: m.stage_batch_size.with_label_values(&[stage]),
            processing: m.stage_processing.with_label_values(&[stage]),
            in_flight: m.stage_in_flight.with_label_values(&[stage]),
            lag: m.stage_lag.with_label_values(&[stage]),
            retriable_errors: errors(error_type::RETRIABLE),
            poison_errors: errors(error_type::POISON),
            consumer_errors: errors(error_type::CONSUMER),
            dead_letter_errors: errors(error_type::DEAD_LETTER_PRODUCE),
        }
    }

    /// Observes how old a consumed message's event is: its record timestamp is the event's
    /// `occurred_at` (see `EventProducer::send`), or the broker's append time.
    fn observe_lag(&self, m: &rdkafka::message::OwnedMessage) {
        if let Some(at) = m.timestamp().to_millis() {
            self.lag.observe(metrics::seconds_between(
                at,
                orderflow_schemas::now_millis(),
            ));
        }
    }
}

/// Runs a stage until `shutdown` is cancelled; then finishes the batch in hand, commits, and
/// returns.
pub async fn run_consumer<H: Handler>(
    kafka: &KafkaConfig,
    stage: StageConfig,
    handler: Arc<H>,
    producer: EventProducer,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut config = kafka.consumer_config(&stage.group_id);
    for (key, value) in &stage.consumer_properties {
        if !kafka.properties.iter().any(|(k, _)| k == key) {
            config.set(key, value);
        }
    }
    let consumer: StreamConsumer<StatsContext> =
        config.create_with_context(StatsContext::consumer(&stage.name))?;
    let topics: Vec<String> = stage.inputs.iter().map(|k| kafka.topics.name(*k)).collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    info!(stage = %stage.name, group = %stage.group_id, topics = ?topics, "Stage started.");
    let stats = StageMetrics::new(&stage.name);
    let mut schemas = SchemaLearner::new(kafka);

    let mut recv_errors = 0u32;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        let first = match first {
            Ok(m) => m.detach(),
            Err(error) => {
                warn!(stage = %stage.name, %error, "Consumer error.");
                stats.consumer_errors.inc();
                tokio::time::sleep(BACKOFF.delay(recv_errors)).await;
                recv_errors = recv_errors.saturating_add(1);
                continue;
            }
        };
        recv_errors = 0;
        stats.observe_lag(&first);
        if !schemas.learn(kafka, &stage, &first, &shutdown).await {
            break;
        }
        let mut batch = vec![incoming(kafka, &schemas.ids, first)];
        while batch.len() < stage.max_batch {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    let m = m.detach();
                    stats.observe_lag(&m);
                    if !schemas.learn(kafka, &stage, &m, &shutdown).await {
                        info!(stage = %stage.name, "Stopping with a batch unfinished; it will be redelivered.");
                        return finish(consumer, &stage).await;
                    }
                    batch.push(incoming(kafka, &schemas.ids, m));
                }
                Some(Err(error)) => {
                    warn!(stage = %stage.name, %error, "Consumer error.");
                    stats.consumer_errors.inc();
                    break;
                }
                None => break,
            }
        }
        debug!(stage = %stage.name, size = batch.len(), "Batch received.");
        stats.batch_size.observe(batch.len() as f64);
        if !handle_batch(
            &stage,
            &stats,
            handler.as_ref(),
            &producer,
            &batch,
            &shutdown,
        )
        .await
        {
            info!(stage = %stage.name, "Stopping with a batch unfinished; it will be redelivered.");
            break;
        }
        store_offsets(&consumer, &batch);
    }

    finish(consumer, &stage).await
}

/// Commits what was stored, then leaves the group.
async fn finish(consumer: StreamConsumer<StatsContext>, stage: &StageConfig) -> Result<()> {
    let name = stage.name.clone();
    tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(error) => warn!(stage = %name, %error, "Final commit failed."),
        }
        drop(consumer);
    })
    .await
    .ok();
    info!(stage = %stage.name, "Stage stopped.");
    Ok(())
}

/// The schema ids a stage decodes with: those of start-up, plus versions registered since
/// that it has met (a newer producer's, during a rolling upgrade), asked of the registry once
/// each.
struct SchemaLearner {
    ids: SchemaIds,
    /// Ids the registry does not know or that are not versions of our subjects.
    foreign: HashSet<u32>,
}

impl SchemaLearner {
    fn new(kafka: &KafkaConfig) -> Self {
        SchemaLearner {
            ids: kafka.schemas.clone(),
            foreign: HashSet::new(),
        }
    }

    /// Makes sure the message's schema id is known if the registry knows it, retrying while the
    /// registry is unreachable; false if asked to stop meanwhile. An id that stays unknown makes
    /// the handler call the message poison.
    async fn learn(
        &mut self,
        kafka: &KafkaConfig,
        stage: &StageConfig,
        m: &rdkafka::message::OwnedMessage,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(registry) = &kafka.registry else {
            return true;
        };
        let Some(Ok(id)) = m.payload().map(wire::schema_id) else {
            return true;
        };
        if self.ids.resolve(id).is_some() || self.foreign.contains(&id) {
            return true;
        }
        let mut attempt = 0;
        loop {
            match registry.event_schema(id, &kafka.topics).await {
                Ok(Some((kind, schema))) => {
                    info!(stage = %stage.name, id, topic = %kafka.topics.name(kind),
                          "Learnt a schema version registered after start-up.");
                    self.ids = self.ids.with_version(id, kind, schema);
                    return true;
                }
                Ok(None) => {
                    self.foreign.insert(id);
                    return true;
                }
                Err(error) if error.is_retriable() => {
                    warn!(stage = %stage.name, id, %error, attempt, "Schema registry unavailable; retrying.");
                    if !pause(attempt, shutdown).await {
                        return false;
                    }
                    attempt += 1;
                }
                Err(error) => {
                    warn!(stage = %stage.name, id, %error, "Cannot use schema from the registry.");
                    self.foreign.insert(id);
                    return true;
                }
            }
        }
    }
}

fn incoming(
    kafka: &KafkaConfig,
    schemas: &SchemaIds,
    m: rdkafka::message::OwnedMessage,
) -> Incoming {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Incoming {
        kind: kafka.topics.kind_of(m.topic()),
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        schemas: schemas.clone(),
    }
}

/// Handles a batch: same key in order, different keys concurrently. False if the stage was
/// asked to stop before every message was done.
async fn handle_batch<H: Handler>(
    stage: &StageConfig,
    stats: &StageMetrics,
    handler: &H,
    producer: &EventProducer,
    batch: &[Incoming],
    shutdown: &CancellationToken,
) -> bool {
    let mut by_key: HashMap<Option<&[u8]>, Vec<&Incoming>> = HashMap::new();
    let mut order: Vec<Option<&[u8]>> = Vec::new();
    for m in batch {
        let key = m.key.as_deref();
        by_key
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(m);
    }
    let groups = order.into_iter().map(|key| {
        let messages = by_key.remove(&key).unwrap_or_default();
        async move {
            for m in messages {
                if !handle_one(stage, stats, handler, producer, m, shutdown).await {
                    return false;
                }
            }
            true
        }
    });
    join_all(groups).await.into_iter().all(|done| done)
}

/// Handles one message, recording its outcome (not when the stage stops before it is done:
/// it comes again).
async fn handle_one<H: Handler>(
    stage: &StageConfig,
    stats: &StageMetrics,
    handler: &H,
    producer: &EventProducer,
    m: &Incoming,
    shutdown: &CancellationToken,
) -> bool {
    async {
        let _in_flight = InFlight::enter(&stats.in_flight);
        let _timer = stats.processing.start_timer();
        let done = handle_with_retries(stage, stats, handler, producer, m, shutdown).await;
        if done {
            debug!("Message handled.");
        }
        done
    }
    .instrument(message_span(stage, m))
    .await
}

/// The span of one message's handling: every log line of the stage's work on it carries the
/// order id (the message key), the event type, and where the message came from.
///
/// It is a debug span of its own target, [`MESSAGE_SPANS`]: made for each of the seven
/// messages an order makes, info-level spans cost about 8% of the pipeline's CPU, while the
/// lines that need them are few and name the order themselves (a retry, a dead-lettering, a
/// sink's delivery). `RUST_LOG=info,orderflow::messages=debug` turns them on for the logs; the OTLP
/// exporter always takes them.
fn message_span(stage: &StageConfig, m: &Incoming) -> Span {
    let key = m.order_id();
    // Every field at creation: one recorded later is formatted again.
    let span = debug_span!(
        target: MESSAGE_SPANS,
        "handle_message",
        stage = %stage.name,
        order_id = key.as_deref(),
        event_type = m.event_type(),
        topic = %m.topic,
        partition = m.partition,
        offset = m.offset,
    );
    #[cfg(feature = "otlp")]
    crate::trace::set_parent(&span, &m.headers);
    span
}

/// Counts a message in flight until dropped, even if its future is.
struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle_with_retries<H: Handler>(
    stage: &StageConfig,
    stats: &StageMetrics,
    handler: &H,
    producer: &EventProducer,
    m: &Incoming,
    shutdown: &CancellationToken,
) -> bool {
    let mut attempt = 0;
    loop {
        match handler.handle(m).await {
            Ok(()) => {
                if attempt == 0 {
                    stats.ok.inc();
                } else {
                    stats.retried.inc();
                }
                return true;
            }
            Err(HandlerError::Poison(reason)) => {
                stats.poison_errors.inc();
                let done = dead_letter(stage, stats, producer, m, &reason, shutdown).await;
                if done {
                    stats.dead_lettered.inc();
                }
                return done;
            }
            Err(HandlerError::Retriable(error)) => {
                stats.retriable_errors.inc();
                warn!(stage = %stage.name, order_id = m.order_id().as_deref(),
                      event_type = m.event_type(), topic = %m.topic, partition = m.partition,
                      offset = m.offset, attempt, %error, "Retrying message.");
                if !pause(attempt, shutdown).await {
                    return false;
                }
                attempt += 1;
            }
        }
    }
}

/// Sleeps before a retry; false when the stage is asked to stop instead.
async fn pause(attempt: u32, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(BACKOFF.delay(attempt)) => true,
    }
}

/// Sends a poison message to the stage's dead-letter topic, as it came, with the reason in headers.
async fn dead_letter(
    stage: &StageConfig,
    stats: &StageMetrics,
    producer: &EventProducer,
    m: &Incoming,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    warn!(stage = %stage.name, order_id = m.order_id().as_deref(), event_type = m.event_type(),
          topic = %m.topic, partition = m.partition, offset = m.offset, %reason,
          "Dead-lettering message.");
    let topic = producer.topic(stage.dead_letter);
    let partition = m.partition.to_string();
    let offset = m.offset.to_string();
    let mut attempt = 0;
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 5);
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let headers = headers
            .insert(Header {
                key: dlq_headers::REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: dlq_headers::STAGE,
                value: Some(&stage.name),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_TOPIC,
                value: Some(&m.topic),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_OFFSET,
                value: Some(&offset),
            });
        match producer
            .send_raw(&topic, m.key.as_deref(), &m.payload, headers)
            .await
        {
            Ok(()) => return true,
            Err(error) => {
                stats.dead_letter_errors.inc();
                warn!(stage = %stage.name, topic = %m.topic, partition = m.partition,
                      offset = m.offset, %error, attempt, "Dead-letter produce failed; retrying.");
                if !pause(attempt, shutdown).await {
                    return false;
                }
                attempt += 1;
            }
        }
    }
}

/// Stores, per partition, the highest offset of the batch, for the next background commit.
fn store_offsets(consumer: &StreamConsumer<StatsContext>, batch: &[Incoming]) {
    let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let entry = highest
            .entry((m.topic.as_str(), m.partition))
            .or_insert(m.offset);
        *entry = (*entry).max(m.offset);
    }
    for ((topic, partition), offset) in highest {
        // Fails only for a partition revoked meanwhile; its new owner redoes the work.
        if let Err(error) = consumer.store_offset(topic, partition, offset) {
            debug!(topic, partition, offset, %error, "Offset not stored.");
        }
    }
}
