//! [`InvoiceStore`] on ScyllaDB.

use super::*;
use crate::InvoiceStore;

#[async_trait]
impl InvoiceStore for ScyllaStore {
    async fn create_invoice(&self, draft: InvoiceDraft) -> Result<Invoice> {
        retry("create_invoice", || self.create_invoice_once(&draft)).await
    }

    async fn get_invoice(&self, order_id: &str) -> Result<Option<Invoice>> {
        self.first::<(Option<String>,)>(&self.q.invoice_get, (order_id,))
            .await?
            .and_then(|(i,)| i)
            .map(|i| from_json("invoice", &i))
            .transpose()
    }
}
