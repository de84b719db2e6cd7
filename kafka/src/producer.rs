//! Producing events.
//!
//! The producer is librdkafka's, with a thread of ours that serves its events (delivery
//! reports, statistics) and hands each delivery to the future that waits for it. rdkafka's own
//! `FutureProducer` serves them with `poll(100 ms)` in a loop, and each such call spins for
//! the sub-millisecond rest of its wait that it cannot express in whole milliseconds: about
//! half a percent of a core on an idle process. A wait of a second has that spin ten times
//! less often; deliveries are not delayed by it, since a wait ends as soon as an event comes.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use orderflow_schemas::{wire, Event, SchemaIds, TopicKind, Topics};
use rdkafka::{
    error::{KafkaError, KafkaResult},
    message::OwnedHeaders,
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
    types::RDKafkaErrorCode,
    util::Timeout,
    ClientContext,
};
use tokio::sync::oneshot;

use crate::{KafkaConfig, Result, StatsContext};

/// How long one wait of the polling thread for librdkafka's events lasts: also the longest
/// the last [`EventProducer`]'s drop waits for that thread to stop.
const POLL: Duration = Duration::from_secs(1);
/// How long a send waits for room in a full local queue before it fails (`QueueFull`).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a send tries again while the local queue is full.
const QUEUE_RETRY: Duration = Duration::from_millis(100);

/// The producer's client context: statistics as gauges, and each message's delivery report
/// sent to the future that awaits it.
struct DeliveryContext {
    stats: StatsContext,
}

impl ClientContext for DeliveryContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.stats_raw(statistics);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivered: Self::DeliveryOpaque) {
        let _ = delivered.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// The client and its polling thread, which stops when the last [`EventProducer`] goes.
struct Client {
    producer: Arc<BaseProducer<DeliveryContext>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

/// A span's trace context (with the `otlp` feature, its W3C `traceparent` and `tracestate`),
/// kept to produce an event in that span's trace once the span is gone: the API's outbox relay
/// produces what a request queued. Without the feature there is none.
#[derive(Debug, Clone)]
pub struct TraceContext {
    #[cfg(feature = "otlp")]
    headers: Vec<(String, String)>,
}

impl TraceContext {
    /// The current span's, if it is being traced.
    pub fn current() -> Option<TraceContext> {
        #[cfg(feature = "otlp")]
        {
            crate::trace::current().map(|headers| TraceContext { headers })
        }
        #[cfg(not(feature = "otlp"))]
        {
            None
        }
    }
}

/// A cheap-to-clone producer of framed events.
#[derive(Clone)]
pub struct EventProducer {
    client: Arc<Client>,
    topics: Topics,
    schemas: SchemaIds,
}

impl EventProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let producer: Arc<BaseProducer<DeliveryContext>> = Arc::new(
            config
                .producer_config()
                .create_with_context(DeliveryContext {
                    stats: StatsContext::producer(),
                })?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("producer-events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL);
                    }
                })
                .map_err(|e| crate::Error::Admin(format!("starting the producer's thread: {e}")))?
        };
        Ok(EventProducer {
            client: Arc::new(Client {
                producer,
                stop,
                poller: Some(poller),
            }),
            topics: config.topics.clone(),
            schemas: config.schemas.clone(),
        })
    }

    /// Frames `event` (with its type's id in `KafkaConfig::schemas`) and produces it to its topic, keyed by [`Event::key`] (the order id); resolves once the broker
    /// has acknowledged it (acks=all). The record's timestamp is the event's `occurred_at`, so
    /// a consumer sees how old an event is without decoding it (`orderflow_stage_lag_seconds`).
    pub async fn send<E: Event>(&self, event: &E) -> Result<()> {
        self.send_in(event, None).await
    }

    /// [`send`](Self::send), in the trace of `trace` (a span's, taken earlier) instead of the
    /// current span's when it is given.
    pub async fn send_in<E: Event>(&self, event: &E, trace: Option<&TraceContext>) -> Result<()> {
        let payload = wire::encode_with(&self.schemas, event)?;
        let topic = self.topics.name(E::TOPIC);
        // No headers: the topic and the schema id say what the message is. With the `otlp`
        // feature, the trace context of the span this runs in, when it is traced.
        let headers = OwnedHeaders::new();
        #[cfg(feature = "otlp")]
        let headers = match trace {
            Some(trace) => crate::trace::insert(headers, &trace.headers),
            None => crate::trace::inject(headers),
        };
        #[cfg(not(feature = "otlp"))]
        let _ = trace;
        self.send_record(
            &topic,
            Some(event.key().as_bytes()),
            &payload,
            headers,
            Some(event.occurred_at()),
        )
        .await
    }

    /// Produces a payload as it is.
    pub async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<()> {
        self.send_record(topic, key, payload, headers, None).await
    }

    /// Produces a payload with a record timestamp (ms since the epoch; `None`: now).
    async fn send_record(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        timestamp: Option<i64>,
    ) -> Result<()> {
        let (delivered, delivery) = oneshot::channel();
        let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, Box::new(delivered))
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        let started = Instant::now();
        while let Err((e, returned)) = self.client.producer.send(record) {
            let full = e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull);
            if !full || started.elapsed() >= QUEUE_TIMEOUT {
                return Err(e.into());
            }
            record = returned;
            tokio::time::sleep(QUEUE_RETRY).await;
        }
        match delivery.await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(KafkaError::Canceled.into()),
        }
    }

    /// The name of a catalogue topic.
    pub fn topic(&self, kind: TopicKind) -> String {
        self.topics.name(kind)
    }

    /// Waits until everything queued is acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.client.producer.flush(Timeout::After(timeout));
    }

    /// Asks the cluster for its metadata: a cheap readiness probe.
    pub async fn healthcheck(&self) -> Result<()> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            client
                .producer
                .client()
                .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                .map(|_| ())
        })
        .await
        .map_err(|e| crate::Error::Admin(e.to_string()))?
        .map_err(Into::into)
    }
}
