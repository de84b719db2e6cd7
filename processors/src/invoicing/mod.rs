//! Invoicing: gives a paid order its numbered invoice (gapless numbers, one invoice per order)
//! and records it, then announces it. With shared object storage (S3) it also renders the PDF
//! ([`pdf`]) and keeps it there (`invoices/<number>.pdf`, [`InvoiceFiles`]) before
//! `OrderInvoiced` is produced, so whoever sees the event finds it in the bucket; a redelivery
//! renders the same bytes and puts them again, and an object store that cannot be reached is
//! a retriable failure: the offset is not stored until the PDF is in. With a local directory
//! the API renders the PDF from the recorded invoice on its first download instead
//! ([`InvoiceFiles::written_when_invoiced`]).

pub use orderflow_store::pdf;

use std::sync::Arc;

use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming};
use orderflow_schemas::{OrderInvoiced, OrderPaid, OrderStatus};
use orderflow_store::{InvoiceDraft, InvoiceFiles, Pricing, Store};
use tracing::debug;

use crate::{decode, is_cancelled, record_and_emit, store_error, StepDetails};

pub struct InvoicingHandler {
    store: Arc<dyn Store>,
    producer: EventProducer,
    /// Where the PDFs go; `None`: no PDFs (tests of the numbering alone).
    files: Option<InvoiceFiles>,
}

impl InvoicingHandler {
    pub fn new(store: Arc<dyn Store>, producer: EventProducer) -> Self {
        InvoicingHandler {
            store,
            producer,
            files: None,
        }
    }

    /// Renders each invoice as a PDF and keeps it in `files`, when they are written as
    /// invoices are made (S3; a local directory gets them on first download).
    pub fn with_files(mut self, files: InvoiceFiles) -> Self {
        self.files = Some(files);
        self
    }
}

impl Handler for InvoicingHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let paid: OrderPaid = decode(m)?;
        if is_cancelled(&*self.store, &paid.order_id).await? {
            debug!(order_id = %paid.order_id, "Order cancelled; not invoiced.");
            return Ok(());
        }
        let pricing = Pricing {
            lines: paid.lines,
            currency: paid.currency,
            subtotal_cents: paid.subtotal_cents,
            tax_cents: paid.tax_cents,
            total_cents: paid.total_cents,
        };
        let invoice = self
            .store
            .create_invoice(InvoiceDraft {
                order_id: paid.order_id.clone(),
                customer_id: paid.customer_id.clone(),
                pricing,
                at: orderflow_schemas::now_millis(),
            })
            .await
            .map_err(store_error)?;
        if let Some(files) = self.files.as_ref().filter(|f| f.written_when_invoiced()) {
            let bill_to = pdf::bill_to(&*self.store, &invoice)
                .await
                .map_err(store_error)?;
            files
                .put_rendered(&invoice, bill_to)
                .await
                .map_err(store_error)?;
        }
        let event = OrderInvoiced {
            event_id: OrderStatus::Invoiced.event_id(&paid.order_id),
            order_id: paid.order_id.clone(),
            customer_id: paid.customer_id.clone(),
            invoice_number: invoice.number.clone(),
            lines: invoice.pricing.lines.clone(),
            currency: invoice.pricing.currency.clone(),
            subtotal_cents: invoice.pricing.subtotal_cents,
            tax_cents: invoice.pricing.tax_cents,
            total_cents: invoice.pricing.total_cents,
            occurred_at: invoice.issued_at,
        };
        let details = StepDetails {
            detail: Some(invoice.number.clone()),
            pricing: None,
            invoice_number: Some(invoice.number),
            revision: 0,
        };
        record_and_emit(
            &*self.store,
            &self.producer,
            OrderStatus::Invoiced,
            &event,
            details,
        )
        .await?;
        debug!(order_id = %paid.order_id, "Order invoiced.");
        Ok(())
    }
}
