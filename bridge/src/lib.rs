//! The bridge: mirrors order events to the systems other teams use (SQS queues, customer
//! emails through SES, webhooks, files, the log), as routed by configuration.
//!
//! # Layout
//! - [`envelope`]: the decoded event ([`Envelope`]) and its [`EventType`]; [`notification`]:
//!   the customer [`Notification`] an event becomes (confirmation, rejection, payment failed,
//!   invoice ready).
//! - [`sink`]: the [`Sink`] trait, the [`Delivery`] it gets and its [`Mapping`] (the event, or
//!   the notification).
//! - [`config`]: the routing config (TOML + `ORDERFLOW_BRIDGE__*` env): sinks by name, routes
//!   from event types to sinks; [`config::SinkConfig::build`] is where sink types register.
//! - One folder per sink, each with its config: [`log`], [`file`](mod@file), [`sqs`], [`ses`],
//!   [`webhook`]. [`aws`]: what the AWS sinks share (SDK config, error mapping).
//! - [`retry`]: the one function that says whether a failure is worth retrying.
//! - `markers`: a sink's delivered-markers, the concurrent events' asks and marks each sent to
//!   the store as one call.
//! - [`health`]: sink healthchecks in the background, for readiness.
//! - [`run_bridge`]: one consumer per sink, each in its own consumer group
//!   (`<prefix>orderflow-bridge.<sink>`) on the topics routed to that sink, so that each sink
//!   makes progress on its own: a sink that keeps failing holds back its own offsets and
//!   nobody else's (a webhook answering 5xx delays neither the emails nor the SQS messages).
//! - [`BridgeHandler`]: one sink's stage. For each event it delivers to its sink (at most
//!   `max_in_flight` at once), at most once thanks to the sink's delivered-markers in the
//!   store, and only then lets the consume loop store the offset. A retriable failure makes
//!   the consume loop retry the event with backoff; a rejection sends it to
//!   `orderflow.bridge.dead-letter` with the reason (stage `bridge.<sink>`: a replay sends it
//!   back to its topic, where the sinks that have it skip it). It records
//!   `orderflow_sink_deliveries_total{sink, outcome}`, `orderflow_sink_send_seconds{sink}` and
//!   `orderflow_sink_retrying_events{sink}`; [`run_bridge`] keeps
//!   `orderflow_sink_backlog_messages{sink}` up to date. A verification event carries no code:
//!   the bridge reads it from the store by event id, deletes it once every sink routed for it
//!   has the email, and skips the event (logging that, without the code) when the code is gone
//!   (expired, or sent).
//!
//! # What "once" means, per sink
//!
//! A sink's delivered-marker is written after the sink took the event. A crash between the two
//! sends the event again after the restart; what the receiver then sees depends on the sink
//! (README, "Delivery guarantees"): an SQS FIFO queue drops the repeat (its
//! MessageDeduplicationId is the event id, within SQS's 5-minute window); a standard queue, a
//! webhook, an email and a file line arrive twice, each carrying the event id
//! (`event_id` attribute, `x-orderflow-event-id` header, `X-Orderflow-Event-Id` email header,
//! `id` field) for the receiver to deduplicate on.

pub mod aws;
pub mod config;
pub mod envelope;
pub mod file;
pub mod health;
pub mod log;
mod markers;
pub mod notification;
pub mod retry;
pub mod ses;
pub mod sink;
pub mod sqs;
pub mod webhook;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::try_join_all;
use orderflow_kafka::{
    groups::GroupView, run_consumer, EventProducer, Handler, HandlerError, Incoming, KafkaConfig,
    StageConfig,
};
use orderflow_schemas::{
    metrics::{self, outcome},
    TopicKind,
};
use orderflow_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use markers::Markers;

pub use config::{BridgeConfig, BuildContext, ConfigError, Routing};
pub use envelope::{Envelope, EventType};
pub use health::SinkHealth;
pub use notification::{Notification, NotificationKind};
pub use sink::{Delivery, Mapping, Sink, SinkError};

/// How long a sink's consumer may retry one batch before it leaves its group
/// (`max.poll.interval.ms`). Its partitions then go to another bridge process, which retries
/// the same events (the delivered-markers keep the sinks that took them from getting them
/// twice); alone, the consumer rejoins when the batch is done. A sink that is down delays only
/// itself, so there is no hurry to hand its partitions over: longer than librdkafka's 5 min,
/// so that an outage of a few minutes causes no rebalance.
pub const SINK_MAX_POLL_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// How many kilobytes a sink's consumer prefetches at most (`queued.max.messages.kbytes`;
/// librdkafka's default is 64 MB per consumer, and the bridge has one consumer per sink: a
/// stuck sink's consumer fills its queue while the others go on).
pub const SINK_PREFETCH_KBYTES: u32 = 16 * 1024;

/// One sink's stage over the routing: delivers the events routed to sink `sink`.
pub struct BridgeHandler {
    store: Arc<dyn Store>,
    routing: Arc<Routing>,
    sink: usize,
    /// This sink's delivered-markers.
    markers: Markers,
    /// The events this sink is retrying (their ids): `orderflow_sink_retrying_events`.
    retrying: Mutex<HashSet<String>>,
}

impl BridgeHandler {
    /// The stage of sink number `sink` (an index into `routing.sinks`).
    pub fn new(store: Arc<dyn Store>, routing: Arc<Routing>, sink: usize) -> Self {
        BridgeHandler {
            markers: Markers::new(&store, routing.sinks[sink].sink.name()),
            store,
            routing,
            sink,
            retrying: Mutex::new(HashSet::new()),
        }
    }

    /// One stage per sink of the routing.
    pub fn per_sink(store: Arc<dyn Store>, routing: Arc<Routing>) -> Vec<BridgeHandler> {
        (0..routing.sinks.len())
            .map(|i| BridgeHandler::new(store.clone(), routing.clone(), i))
            .collect()
    }

    fn sink(&self) -> &dyn Sink {
        self.routing.sinks[self.sink].sink.as_ref()
    }

    /// Notes whether the event is waiting for a retry at this sink.
    fn set_retrying(&self, event_id: &str, retrying: bool) {
        let mut set = self.retrying.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if retrying {
            set.insert(event_id.to_string())
        } else {
            set.remove(event_id)
        };
        if changed {
            metrics::metrics()
                .sink_retrying
                .with_label_values(&[self.sink().name()])
                .set(set.len() as i64);
        }
    }

    /// Delivers to the sink unless it has the event already; marks it delivered after.
    async fn deliver(&self, envelope: &Envelope, mapping: Mapping) -> Result<(), HandlerError> {
        let slot = &self.routing.sinks[self.sink];
        let sink = slot.sink.as_ref();
        let m = metrics::metrics();
        let deliveries = |outcome| m.sink_deliveries.with_label_values(&[sink.name(), outcome]);
        let done = self
            .markers
            .delivered(&envelope.id)
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        if done {
            deliveries(outcome::SKIPPED_DUPLICATE).inc();
            return Ok(());
        }
        let sent = {
            let _permit = slot.permits.acquire().await;
            let timer = m.sink_send.with_label_values(&[sink.name()]).start_timer();
            let sent = sink.send(&Delivery { envelope, mapping }).await;
            timer.observe_duration();
            sent
        };
        sent.map_err(|e| {
            deliveries(outcome::FAILED).inc();
            match e {
                SinkError::Retriable(e) => {
                    HandlerError::Retriable(format!("sink {}: {e}", sink.name()))
                }
                SinkError::Rejected(e) => {
                    HandlerError::Poison(format!("sink {} rejected it: {e}", sink.name()))
                }
            }
        })?;
        deliveries(outcome::SENT).inc();
        self.markers
            .mark_delivered(&envelope.id)
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))
    }

    /// Whether every sink routed for verification emails has this one.
    async fn every_sink_has(&self, event_id: &str) -> Result<bool, HandlerError> {
        let ids = [event_id.to_string()];
        let targets = self
            .routing
            .routes
            .get(&EventType::ACCOUNT_VERIFICATION)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &(i, _) in targets {
            let name = self.routing.sinks[i].sink.name();
            let done = self
                .store
                .delivered(name, &ids)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
            if !done.first().copied().unwrap_or(false) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn handle_event(&self, m: &Incoming) -> Result<Option<String>, HandlerError> {
        let Some(event_type) = m.kind.and_then(EventType::of_topic) else {
            return Ok(None);
        };
        let Some(&(_, mapping)) = self
            .routing
            .routes
            .get(&event_type)
            .and_then(|targets| targets.iter().find(|(i, _)| *i == self.sink))
        else {
            return Ok(None);
        };
        let kind = event_type.topic();
        // A verification email's code is in the store, under the event's id, until the email
        // is out at every sink routed for it (or the code expires): without it there is
        // nothing to send. Its notification is made from the event's fields.
        let verification = event_type == EventType::ACCOUNT_VERIFICATION;
        let decoded = if mapping == Mapping::Event || verification || self.sink().reads_event_data()
        {
            Envelope::decode(kind, &m.schemas, &m.payload)
        } else {
            Envelope::decode_without_data(kind, &m.schemas, &m.payload)
        };
        let Some(mut envelope) = decoded.map_err(|e| HandlerError::Poison(e.to_string()))? else {
            return Ok(None);
        };
        if verification {
            let pending = self
                .store
                .get_verification_email(&envelope.id, orderflow_schemas::now_millis())
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
            let Some(pending) = pending else {
                info!(event_id = %envelope.id, customer_id = %envelope.customer_id,
                      sink = self.sink().name(),
                      "Verification code expired or already sent; no email.");
                return Ok(None);
            };
            envelope
                .attach_verification_code(&pending.code)
                .map_err(|e| HandlerError::Poison(e.to_string()))?;
        }
        // An email goes to the account's own address (sinks fall back to their recipient
        // template for customers without an account), looked up for the sinks that send to it.
        if envelope.notification.is_some()
            && !envelope.customer_id.is_empty()
            && self.sink().reads_customer_email()
        {
            envelope.email = self
                .store
                .get_account(&envelope.customer_id)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?
                .map(|account| account.email);
        }
        let id = envelope.id.clone();
        let delivered = self.deliver(&envelope, mapping).await;
        self.set_retrying(&id, matches!(delivered, Err(HandlerError::Retriable(_))));
        delivered?;
        // The last sink to mark the email delivered sees every other marker (each marks before
        // it looks): the code leaves the store then.
        if verification && self.every_sink_has(&id).await? {
            self.store
                .delete_verification_email(&id)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        }
        Ok(Some(id))
    }
}

impl Handler for BridgeHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        self.handle_event(m).await.map(|_| ())
    }
}

/// Runs the bridge until `shutdown`: one consumer per sink, each in the consumer group
/// `<prefix>orderflow-bridge.<sink>` on the topics routed to it, dead-lettering to
/// `orderflow.bridge.dead-letter`; and for each sink, its backlog in
/// `orderflow_sink_backlog_messages`, read every `statistics.interval.ms` (5 s by default).
///
/// A sink's group that has committed nothing yet starts where the group the bridge used to
/// read in as a whole (`<prefix>orderflow-bridge`) had got to, if that one has offsets: an
/// upgraded bridge goes on from there instead of replaying the topics from the start.
pub async fn run_bridge(
    kafka: &KafkaConfig,
    store: Arc<dyn Store>,
    routing: Arc<Routing>,
    producer: EventProducer,
    shutdown: CancellationToken,
) -> orderflow_kafka::Result<()> {
    // Every sink's series are served from the start, at 0 until something happens: a
    // dashboard's panel shows 0, not "No data".
    let m = metrics::metrics();
    for slot in &routing.sinks {
        let name = slot.sink.name();
        for outcome in [outcome::SENT, outcome::SKIPPED_DUPLICATE, outcome::FAILED] {
            m.sink_deliveries.with_label_values(&[name, outcome]);
        }
        m.sink_backlog.with_label_values(&[name]);
        m.sink_retrying.with_label_values(&[name]).set(0);
    }
    let whole = format!("{}orderflow-bridge", kafka.topics.prefix());
    let interval = stats_interval(kafka);
    let mut tasks = Vec::new();
    for (i, handler) in BridgeHandler::per_sink(store, routing.clone())
        .into_iter()
        .enumerate()
    {
        let sink = routing.sinks[i].sink.name().to_string();
        let config = StageConfig::new(kafka, &format!("bridge.{sink}"), routing.inputs_of(i))
            .with_dead_letter(TopicKind::BridgeDeadLetter)
            .with_max_poll_interval(SINK_MAX_POLL_INTERVAL)
            .with_consumer_property("queued.max.messages.kbytes", SINK_PREFETCH_KBYTES);
        let topics: Vec<String> = config
            .inputs
            .iter()
            .map(|k| kafka.topics.name(*k))
            .collect();
        start_where_the_whole_bridge_was(kafka, &whole, &config.group_id, &topics).await;
        tasks.push(tokio::spawn(watch_backlog(
            kafka.clone(),
            sink,
            config.group_id.clone(),
            topics,
            interval,
            shutdown.clone(),
        )));
        let (kafka, producer, shutdown) = (kafka.clone(), producer.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            run_consumer(&kafka, config, Arc::new(handler), producer, shutdown).await
        }));
    }
    for result in try_join_all(tasks)
        .await
        .map_err(|e| orderflow_kafka::Error::Admin(format!("a bridge task failed: {e}")))?
    {
        result?;
    }
    Ok(())
}

/// Seeds a sink's new consumer group from the whole bridge's group ([`run_bridge`]); a
/// failure is logged, and the group starts from the earliest offsets (the delivered-markers
/// skip what the sink had).
async fn start_where_the_whole_bridge_was(
    kafka: &KafkaConfig,
    whole: &str,
    group: &str,
    topics: &[String],
) {
    let (k, whole_group, group_id, t) = (
        kafka.clone(),
        whole.to_string(),
        group.to_string(),
        topics.to_vec(),
    );
    let seeded = tokio::task::spawn_blocking(move || {
        let whole = GroupView::new(&k, &whole_group, t.clone())?;
        GroupView::new(&k, &group_id, t)?.start_where(&whole)
    })
    .await;
    match seeded {
        Ok(Ok(true)) => info!(
            group,
            from = whole,
            "Sink group starts where the bridge's was."
        ),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => warn!(group, %error, "Cannot read the bridge's former offsets."),
        Err(error) => warn!(group, %error, "Reading the bridge's former offsets failed."),
    }
}

/// The statistics interval the process's Kafka clients use (`statistics.interval.ms`).
fn stats_interval(kafka: &KafkaConfig) -> Duration {
    let ms = kafka
        .properties
        .iter()
        .rev()
        .find(|(k, _)| k == "statistics.interval.ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(u64::from(orderflow_kafka::stats::DEFAULT_INTERVAL_MS));
    Duration::from_millis(ms)
}

/// Sets `orderflow_sink_backlog_messages{sink}` every `interval` until `shutdown`.
async fn watch_backlog(
    kafka: KafkaConfig,
    sink: String,
    group: String,
    topics: Vec<String>,
    interval: Duration,
    shutdown: CancellationToken,
) -> orderflow_kafka::Result<()> {
    let gauge = metrics::metrics().sink_backlog.with_label_values(&[&sink]);
    let view = Arc::new(Mutex::new(None::<GroupView>));
    loop {
        let (kafka, group, topics, view) =
            (kafka.clone(), group.clone(), topics.clone(), view.clone());
        let backlog = tokio::task::spawn_blocking(move || {
            let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
            if view.is_none() {
                *view = Some(GroupView::new(&kafka, &group, topics)?);
            }
            view.as_ref().map_or(Ok(0), GroupView::backlog)
        })
        .await;
        match backlog {
            Ok(Ok(n)) => gauge.set(n),
            Ok(Err(error)) => tracing::debug!(sink, %error, "Cannot read the sink's backlog."),
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
