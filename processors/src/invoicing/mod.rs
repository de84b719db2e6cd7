//! Invoicing: gives a paid order its numbered invoice (gapless numbers, one invoice per order)
//! and records it on the order's read model in the same store write
//! ([`orderflow_store::StepStore::invoice_step`]), then announces it. With shared object
//! storage (S3) it also renders the PDF ([`pdf`]) and keeps it there (`invoices/<number>.pdf`,
//! [`InvoiceFiles`]) between numbering the invoice and recording it, so whoever finds the
//! number on the order or sees the event finds the PDF in the bucket; a redelivery renders
//! the same bytes and puts them again, and an object store that cannot be reached is a
//! retriable failure: the offset is not stored until the PDF is in. With a local directory the
//! API renders the PDF from the recorded invoice on its first download instead
//! ([`InvoiceFiles::written_when_invoiced`]).

pub use orderflow_store::pdf;

use std::sync::Arc;

use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming};
use orderflow_schemas::{OrderInvoiced, OrderPaid, OrderStatus};
use orderflow_store::{Invoice, InvoiceDraft, InvoiceFiles, Pricing, Step, StepRecord, Store};
use tracing::debug;

use crate::{decode, emit, is_cancelled, status_update, store_error, StepDetails};

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

/// What invoicing announces for an order's invoice: `OrderInvoiced`, and what it records
/// besides the status (the invoice number, also the timeline entry's detail).
fn invoiced(paid: &OrderPaid, invoice: &Invoice) -> (OrderInvoiced, StepDetails) {
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
        invoice_number: Some(invoice.number.clone()),
        revision: 0,
    };
    (event, details)
}

impl InvoicingHandler {
    /// Numbers the order's invoice and records it on the read model in one step, unless the
    /// order is cancelled (`None`).
    async fn invoice(
        &self,
        paid: &OrderPaid,
        draft: InvoiceDraft,
    ) -> Result<Option<Invoice>, HandlerError> {
        let record: StepRecord<Invoice> = {
            let paid = paid.clone();
            Box::new(move |invoice| {
                let (event, details) = invoiced(&paid, invoice);
                status_update(OrderStatus::Invoiced, &event, details)
            })
        };
        match self
            .store
            .invoice_step(draft, record)
            .await
            .map_err(store_error)?
        {
            Step::Done(invoice) => Ok(Some(invoice)),
            Step::Cancelled => Ok(None),
        }
    }

    /// Numbers the order's invoice, puts its PDF in `files`, and only then records the invoice
    /// on the read model, so whoever finds its number there finds the PDF (`None`: the order is
    /// cancelled).
    async fn invoice_with_pdf(
        &self,
        paid: &OrderPaid,
        draft: InvoiceDraft,
        files: &InvoiceFiles,
    ) -> Result<Option<Invoice>, HandlerError> {
        if is_cancelled(&*self.store, &paid.order_id).await? {
            return Ok(None);
        }
        let invoice = self
            .store
            .create_invoice(draft)
            .await
            .map_err(store_error)?;
        let bill_to = pdf::bill_to(&*self.store, &invoice)
            .await
            .map_err(store_error)?;
        files
            .put_rendered(&invoice, bill_to)
            .await
            .map_err(store_error)?;
        let (event, details) = invoiced(paid, &invoice);
        self.store
            .apply_status(status_update(OrderStatus::Invoiced, &event, details))
            .await
            .map_err(store_error)?;
        Ok(Some(invoice))
    }
}

impl Handler for InvoicingHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let paid: OrderPaid = decode(m)?;
        let draft = InvoiceDraft {
            order_id: paid.order_id.clone(),
            customer_id: paid.customer_id.clone(),
            pricing: Pricing {
                lines: paid.lines.clone(),
                currency: paid.currency.clone(),
                subtotal_cents: paid.subtotal_cents,
                tax_cents: paid.tax_cents,
                total_cents: paid.total_cents,
            },
            at: orderflow_schemas::now_millis(),
        };
        let invoice = match self.files.as_ref().filter(|f| f.written_when_invoiced()) {
            Some(files) => self.invoice_with_pdf(&paid, draft, files).await?,
            None => self.invoice(&paid, draft).await?,
        };
        let Some(invoice) = invoice else {
            debug!(order_id = %paid.order_id, "Order cancelled; not invoiced.");
            return Ok(());
        };
        let (event, _) = invoiced(&paid, &invoice);
        emit(&self.producer, OrderStatus::Invoiced, &event).await?;
        debug!(order_id = %paid.order_id, "Order invoiced.");
        Ok(())
    }
}
