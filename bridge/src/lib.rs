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
//! - One folder per sink, each with its config: [`log`], [`file`], [`sqs`], [`ses`],
//!   [`webhook`]. [`aws`]: what the AWS sinks share (SDK config, error mapping).
//! - [`retry`]: the one function that says whether a failure is worth retrying.
//! - [`health`]: sink healthchecks in the background, for readiness.
//! - [`BridgeHandler`]: the stage. For each event it delivers to every routed sink at once
//!   (at most `max_in_flight` per sink), each at most once per sink thanks to delivered-markers
//!   in the store, and only then lets the consume loop store the offset. A retriable failure
//!   makes the consume loop retry the event with backoff (sinks that took it already are
//!   skipped); a rejection sends it to `orderflow.bridge.dead-letter` with the reason.
//!   It records `orderflow_sink_deliveries_total{sink, outcome}` and
//!   `orderflow_sink_send_seconds{sink}`. A verification event carries no code: the bridge
//!   reads it from the store by event id, deletes it once every sink has the email, and skips
//!   the event (logging that, without the code) when the code is gone (expired, or sent).

pub mod aws;
pub mod config;
pub mod envelope;
pub mod file;
pub mod health;
pub mod log;
pub mod notification;
pub mod retry;
pub mod ses;
pub mod sink;
pub mod sqs;
pub mod webhook;

use std::sync::Arc;

use futures::future::join_all;
use orderflow_kafka::{
    run_consumer, EventProducer, Handler, HandlerError, Incoming, KafkaConfig, StageConfig,
};
use orderflow_schemas::{
    metrics::{self, outcome},
    TopicKind,
};
use orderflow_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{BridgeConfig, BuildContext, ConfigError, Routing};
pub use envelope::{Envelope, EventType};
pub use health::SinkHealth;
pub use notification::{Notification, NotificationKind};
pub use sink::{Delivery, Mapping, Sink, SinkError};

/// The bridge stage over its routing.
pub struct BridgeHandler {
    store: Arc<dyn Store>,
    routing: Arc<Routing>,
}

impl BridgeHandler {
    pub fn new(store: Arc<dyn Store>, routing: Arc<Routing>) -> Self {
        BridgeHandler { store, routing }
    }

    /// Delivers to one sink unless it has the event already; marks it delivered after.
    async fn deliver(
        &self,
        sink_index: usize,
        envelope: &Envelope,
        mapping: Mapping,
    ) -> Result<(), HandlerError> {
        let slot = &self.routing.sinks[sink_index];
        let sink = slot.sink.as_ref();
        let m = metrics::metrics();
        let deliveries = |outcome| m.sink_deliveries.with_label_values(&[sink.name(), outcome]);
        let ids = [envelope.id.clone()];
        let done = self
            .store
            .delivered(sink.name(), &ids)
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        if done.first().copied().unwrap_or(false) {
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
        self.store
            .mark_delivered(sink.name(), &ids)
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))
    }
}

impl Handler for BridgeHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let Some(event_type) = m.kind.and_then(EventType::of_topic) else {
            return Ok(());
        };
        let Some(targets) = self.routing.routes.get(&event_type) else {
            return Ok(());
        };
        let kind = event_type.topic();
        let Some(mut envelope) = Envelope::decode(kind, &m.schemas, &m.payload)
            .map_err(|e| HandlerError::Poison(e.to_string()))?
        else {
            return Ok(());
        };
        // A verification email's code is in the store, under the event's id, until the email
        // is out (or the code expires): without it there is nothing to send.
        let verification = event_type == EventType::AccountVerification;
        if verification {
            let pending = self
                .store
                .get_verification_email(&envelope.id, orderflow_schemas::now_millis())
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
            let Some(pending) = pending else {
                info!(event_id = %envelope.id, customer_id = %envelope.customer_id,
                      "Verification code expired or already sent; no email.");
                return Ok(());
            };
            envelope
                .attach_verification_code(&pending.code)
                .map_err(|e| HandlerError::Poison(e.to_string()))?;
        }
        // An email goes to the account's own address (sinks fall back to their recipient
        // template for customers without an account).
        if envelope.notification.is_some() && !envelope.customer_id.is_empty() {
            envelope.email = self
                .store
                .get_account(&envelope.customer_id)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?
                .map(|account| account.email);
        }
        let results = join_all(
            targets
                .iter()
                .map(|&(sink, mapping)| self.deliver(sink, &envelope, mapping)),
        )
        .await;
        // Retry first: the sinks that took the event are skipped next time. Dead-letter only
        // when every failure is final.
        let mut poison = Vec::new();
        let mut retriable = Vec::new();
        for result in results {
            match result {
                Ok(()) => {}
                Err(HandlerError::Retriable(e)) => retriable.push(e),
                Err(HandlerError::Poison(e)) => poison.push(e),
            }
        }
        if !retriable.is_empty() {
            return Err(HandlerError::Retriable(retriable.join("; ")));
        }
        if !poison.is_empty() {
            return Err(HandlerError::Poison(poison.join("; ")));
        }
        if verification {
            // Every sink has the email: the code leaves the store.
            self.store
                .delete_verification_email(&envelope.id)
                .await
                .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        }
        Ok(())
    }
}

/// Runs the bridge until `shutdown`: reads the topics its routes need, dead-letters to
/// `orderflow.bridge.dead-letter`.
pub async fn run_bridge(
    kafka: &KafkaConfig,
    store: Arc<dyn Store>,
    routing: Arc<Routing>,
    producer: EventProducer,
    shutdown: CancellationToken,
) -> orderflow_kafka::Result<()> {
    let config = StageConfig::new(kafka, "bridge", routing.inputs())
        .with_dead_letter(TopicKind::BridgeDeadLetter);
    // Every sink's deliveries are served from the start, at 0 until something happens: a
    // dashboard's panel shows 0, not "No data".
    let m = metrics::metrics();
    for slot in &routing.sinks {
        for outcome in [outcome::SENT, outcome::SKIPPED_DUPLICATE, outcome::FAILED] {
            m.sink_deliveries
                .with_label_values(&[slot.sink.name(), outcome]);
        }
    }
    let handler = BridgeHandler::new(store, routing);
    run_consumer(kafka, config, Arc::new(handler), producer, shutdown).await
}
