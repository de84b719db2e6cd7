//! [`DeliveryStore`] on redb.

use super::*;
use crate::DeliveryStore;

#[async_trait]
impl DeliveryStore for EmbeddedStore {
    async fn delivered(&self, sink: &str, ids: &[String]) -> Result<Vec<bool>> {
        let txn = self.read()?;
        let table = txn.open_table(DELIVERIES).map_err(unavailable)?;
        ids.iter()
            .map(|id| {
                Ok(table
                    .get(compound(sink, id).as_str())
                    .map_err(unavailable)?
                    .is_some())
            })
            .collect()
    }

    async fn mark_delivered(&self, sink: &str, ids: &[String]) -> Result<()> {
        let keys: Vec<String> = ids.iter().map(|id| compound(sink, id)).collect();
        let now = orderflow_schemas::now_millis();
        let delivery_ttl = self.delivery_ttl_ms;
        let oldest = self.oldest_delivery.clone();
        self.write(move |txn| {
            // As many expired markers go as come, and a few more.
            purge_deliveries_in(
                txn,
                now.saturating_sub(delivery_ttl),
                PURGE_BATCH + keys.len(),
                &oldest,
            )?;
            oldest.added(now);
            mark_delivered_in(txn, &keys, now)
        })
        .await
    }
}
