//! The bridge: turns order status events into customer notifications and hands them to
//! pluggable sinks.
//!
//! # Layout
//! - [`notification`]: the [`Notification`] an event becomes (confirmation, rejection,
//!   payment failed, invoice ready).
//! - [`sink`]: the [`Sink`] trait every sink implements.
//! - [`log`], [`file`]: the sinks for one machine: the process log, and JSON lines under the
//!   data dir.
//! - [`BridgeHandler`]: the stage. It delivers each notification to each sink at most once
//!   per sink, using delivery markers in the store, and only then lets the consume loop store
//!   the offset. It records `orderflow_sink_deliveries_total{sink, outcome}` and
//!   `orderflow_sink_send_seconds{sink}`.

pub mod file;
pub mod log;
pub mod notification;
pub mod sink;

use std::sync::Arc;

use orderflow_kafka::{
    run_consumer, EventProducer, Handler, HandlerError, Incoming, KafkaConfig, StageConfig,
};
use orderflow_schemas::{
    metrics::{self, outcome},
    TopicKind,
};
use orderflow_store::Store;
use tokio_util::sync::CancellationToken;

pub use notification::{Notification, NotificationKind};
pub use sink::{Sink, SinkError};

/// The topics the bridge reads.
pub const INPUTS: [TopicKind; 4] = [
    TopicKind::OrdersValidated,
    TopicKind::OrdersRejected,
    TopicKind::PaymentFailed,
    TopicKind::OrdersInvoiced,
];

/// The bridge stage over a set of sinks.
pub struct BridgeHandler {
    store: Arc<dyn Store>,
    sinks: Vec<Arc<dyn Sink>>,
}

impl BridgeHandler {
    pub fn new(store: Arc<dyn Store>, sinks: Vec<Arc<dyn Sink>>) -> Self {
        BridgeHandler { store, sinks }
    }
}

impl Handler for BridgeHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let Some(kind) = m.kind else {
            return Ok(());
        };
        let Some(notification) = Notification::from_message(kind, &m.schemas, &m.payload)
            .map_err(|e| HandlerError::Poison(e.to_string()))?
        else {
            return Ok(());
        };
        let ids = [notification.id.clone()];
        let m = metrics::metrics();
        for sink in &self.sinks {
            let deliveries = |outcome| m.sink_deliveries.with_label_values(&[sink.name(), outcome]);
            let done = self
                .store
                .delivered(sink.name(), &ids)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
            if done.first().copied().unwrap_or(false) {
                deliveries(outcome::SKIPPED_DUPLICATE).inc();
                continue;
            }
            let timer = m.sink_send.with_label_values(&[sink.name()]).start_timer();
            let sent = sink.send(&notification).await;
            timer.observe_duration();
            sent.map_err(|e| {
                deliveries(outcome::FAILED).inc();
                match e {
                    SinkError::Retriable(e) => {
                        HandlerError::Retriable(format!("{}: {e}", sink.name()))
                    }
                    SinkError::Rejected(e) => HandlerError::Poison(format!("{}: {e}", sink.name())),
                }
            })?;
            deliveries(outcome::SENT).inc();
            self.store
                .mark_delivered(sink.name(), &ids)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        }
        Ok(())
    }
}

/// Runs the bridge until `shutdown`.
pub async fn run_bridge(
    kafka: &KafkaConfig,
    store: Arc<dyn Store>,
    sinks: Vec<Arc<dyn Sink>>,
    producer: EventProducer,
    shutdown: CancellationToken,
) -> orderflow_kafka::Result<()> {
    let config = StageConfig::new(kafka, "bridge", INPUTS.to_vec());
    let handler = BridgeHandler::new(store, sinks);
    run_consumer(kafka, config, Arc::new(handler), producer, shutdown).await
}
