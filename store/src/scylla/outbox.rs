//! [`OutboxStore`] on ScyllaDB. UNFINISHED.

use async_trait::async_trait;

use super::ScyllaStore;
use crate::{OutboxStore, Queued, Result, StoreError};

#[async_trait]
impl OutboxStore for ScyllaStore {
    async fn outbox(&self, _limit: usize) -> Result<Vec<Queued>> {
        Err(StoreError::Invalid(
            "the outbox is not on ScyllaDB yet".into(),
        ))
    }

    async fn outbox_relayed(&self, _positions: &[String]) -> Result<()> {
        Err(StoreError::Invalid(
            "the outbox is not on ScyllaDB yet".into(),
        ))
    }
}
