//! The log sink: writes each notification to the process log.

use async_trait::async_trait;
use tracing::info;

use crate::{Notification, Sink, SinkError};

#[derive(Debug, Default, Clone)]
pub struct LogSink;

#[async_trait]
impl Sink for LogSink {
    fn name(&self) -> &str {
        "log"
    }

    async fn send(&self, n: &Notification) -> Result<(), SinkError> {
        info!(target: "orderflow::notifications", id = %n.id, kind = n.kind.as_str(),
              order_id = %n.order_id, customer_id = %n.customer_id, subject = %n.subject,
              "Notification.");
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
}
