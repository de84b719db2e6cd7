//! [`DeliveryStore`] on ScyllaDB.

use super::*;
use crate::DeliveryStore;

#[async_trait]
impl DeliveryStore for ScyllaStore {
    async fn delivered(&self, sink: &str, ids: &[String]) -> Result<Vec<bool>> {
        try_join_all(ids.iter().map(|id| async move {
            Ok(self
                .first::<(Option<i64>,)>(&self.q.delivery_get, (sink, id.as_str()))
                .await?
                .is_some())
        }))
        .await
    }

    async fn mark_delivered(&self, sink: &str, ids: &[String]) -> Result<()> {
        let now = now_millis();
        try_join_all(ids.iter().map(|id| {
            self.run(
                &self.q.delivery_put,
                (sink, id.as_str(), now, self.delivery_ttl_secs),
            )
        }))
        .await?;
        Ok(())
    }
}
