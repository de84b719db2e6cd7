//! The sink interface.

use async_trait::async_trait;

use crate::Notification;

/// Why a sink did not take a notification.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Throttled, timed out, unreachable, 5xx: the same notification may go through later.
    #[error("retriable: {0}")]
    Retriable(String),
    /// The sink refuses this notification for good (bad request, too large).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// A destination for notifications. `send` returns once the sink has taken the notification
/// durably; the bridge deduplicates by notification id around it.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// A short, stable name: it keys the delivery markers and labels logs.
    fn name(&self) -> &str;
    async fn send(&self, notification: &Notification) -> Result<(), SinkError>;
    /// A cheap check that the sink can take notifications.
    async fn healthcheck(&self) -> Result<(), SinkError>;
}
