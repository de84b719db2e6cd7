//! The sink interface.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Envelope, Notification};

/// Why a sink did not take a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Throttled, timed out, unreachable, 5xx: the same delivery may go through later.
    #[error("retriable: {0}")]
    Retriable(String),
    /// The sink refuses this delivery for good (bad request, too large).
    #[error("rejected: {0}")]
    Rejected(String),
}

impl SinkError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable(_))
    }
}

/// What a route sends for an event (routing config: `mapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// The event itself: `{"type", "id", "order_id", "customer_id", "occurred_at",
    /// "schema_id", "data"}` ([`Envelope`]).
    Event,
    /// The customer notification the event becomes ([`Notification`]); only for event types
    /// that notify.
    Notification,
}

/// One event on its way to one sink.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub envelope: &'a Envelope,
    pub mapping: Mapping,
}

impl<'a> Delivery<'a> {
    /// The notification, for sinks that only send notifications (SES). Routing checks at start
    /// that such sinks only get event types that notify.
    pub fn notification(&self) -> Result<&'a Notification, SinkError> {
        self.envelope.notification.as_ref().ok_or_else(|| {
            SinkError::Rejected(format!(
                "{} events do not become customer notifications",
                self.envelope.event_type
            ))
        })
    }

    /// The body as JSON, by the route's mapping.
    pub fn body(&self) -> Result<Vec<u8>, SinkError> {
        let body = match self.mapping {
            Mapping::Event => serde_json::to_vec(self.envelope),
            Mapping::Notification => serde_json::to_vec(self.notification()?),
        };
        body.map_err(|e| SinkError::Rejected(format!("cannot serialize the body: {e}")))
    }
}

/// A destination for events. `send` returns once the sink has taken the delivery durably; the
/// bridge deduplicates by event id around it (delivered-markers in the store) and bounds how
/// many sends are in flight per sink.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// A short, stable name (the key of the sink in the routing config): it keys the delivery
    /// markers and labels logs and metrics.
    fn name(&self) -> &str;
    async fn send(&self, delivery: &Delivery<'_>) -> Result<(), SinkError>;
    /// Whether the sink reads the event's fields ([`Envelope::data`]) when it sends a
    /// notification; a delivery with the `event` mapping always carries them.
    fn reads_event_data(&self) -> bool {
        true
    }
    /// Whether the sink sends to the customer's address ([`Envelope::email`], looked up in
    /// the store for each notification).
    fn reads_customer_email(&self) -> bool {
        true
    }
    /// A cheap read-only check that the sink can take deliveries.
    async fn healthcheck(&self) -> Result<(), SinkError>;
}
