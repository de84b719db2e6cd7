//! [`OutboxStore`] on redb: the events are queued by the write that makes their change, in
//! the same transaction, under increasing positions.

use super::*;
use crate::{outbox::Queued, OutboxStore};

/// Queues `event` in the outbox of the transaction `txn`.
pub(super) fn queue_in(txn: &Tx, event: &OutboxEvent) -> Result<()> {
    let position = {
        let mut counters = txn.open_table(COUNTERS).map_err(unavailable)?;
        let next = counters
            .get("outbox")
            .map_err(unavailable)?
            .map_or(0, |v| v.value())
            + 1;
        counters.insert("outbox", next).map_err(unavailable)?;
        next
    };
    put_json(txn, OUTBOX, &format!("{position:020}"), event)
}

#[async_trait]
impl OutboxStore for EmbeddedStore {
    async fn outbox(&self, limit: usize) -> Result<Vec<Queued>> {
        let txn = self.read()?;
        let table = txn.open_table(OUTBOX).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(unavailable)?.take(limit) {
            let (key, value) = entry.map_err(unavailable)?;
            out.push(Queued {
                position: key.value().to_string(),
                event: from_bytes("outbox event", value.value())?,
            });
        }
        Ok(out)
    }

    async fn outbox_relayed(&self, positions: &[String]) -> Result<()> {
        let positions = positions.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(unavailable)?;
            for position in &positions {
                table.remove(position.as_str()).map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }
}
