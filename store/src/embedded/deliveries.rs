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
        self.write(move |txn| {
            let mut table = txn.open_table(DELIVERIES).map_err(unavailable)?;
            for key in &keys {
                table.insert(key.as_str(), now).map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }
}
