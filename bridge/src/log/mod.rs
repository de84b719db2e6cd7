//! The log sink: writes each delivery to the process log (target `orderflow::notifications`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{Delivery, Sink, SinkError};

/// `type = "log"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Most deliveries to this sink in flight at once.
    pub max_in_flight: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_in_flight: 1024,
        }
    }
}

impl LogConfig {
    pub fn build(&self, name: &str) -> LogSink {
        LogSink {
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogSink {
    name: String,
}

impl Default for LogSink {
    fn default() -> Self {
        LogSink { name: "log".into() }
    }
}

#[async_trait]
impl Sink for LogSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn reads_event_data(&self) -> bool {
        false
    }

    fn reads_customer_email(&self) -> bool {
        false
    }

    async fn send(&self, d: &Delivery<'_>) -> Result<(), SinkError> {
        let e = d.envelope;
        let subject = e.notification.as_ref().map(|n| n.subject.as_str());
        info!(target: "orderflow::notifications", sink = %self.name, id = %e.id,
              event_type = e.event_type.as_str(), order_id = %e.order_id,
              customer_id = %e.customer_id, subject, "Delivery.");
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
}
