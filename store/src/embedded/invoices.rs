//! [`InvoiceStore`] on redb.

use super::*;
use crate::InvoiceStore;

#[async_trait]
impl InvoiceStore for EmbeddedStore {
    async fn create_invoice(&self, draft: InvoiceDraft) -> Result<Invoice> {
        self.write(move |txn| create_invoice_in(txn, &draft)).await
    }

    async fn get_invoice(&self, order_id: &str) -> Result<Option<Invoice>> {
        let txn = self.read()?;
        let table = txn.open_table(INVOICES).map_err(unavailable)?;
        get_json(&table, "invoice", order_id)
    }
}

/// Numbers and stores the order's invoice, or answers the one it has; see
/// [`InvoiceStore::create_invoice`].
pub(super) fn create_invoice_in(txn: &Tx, draft: &InvoiceDraft) -> Result<Invoice> {
    let table = txn.open_table(INVOICES).map_err(unavailable)?;
    if let Some(existing) = get_json(&*table, "invoice", &draft.order_id)? {
        return Ok(existing);
    }
    drop(table);
    let mut counters = txn.open_table(COUNTERS).map_err(unavailable)?;
    let sequence = counters
        .get("invoice")
        .map_err(unavailable)?
        .map(|g| g.value())
        .unwrap_or(0)
        + 1;
    counters.insert("invoice", sequence).map_err(unavailable)?;
    drop(counters);
    let invoice = draft.numbered(sequence);
    put_json(txn, INVOICES, &draft.order_id, &invoice)?;
    Ok(invoice)
}
