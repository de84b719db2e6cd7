//! Invoicing: gives a paid order its numbered invoice (gapless numbers, one invoice per order)
//! and records it, then announces it.

use std::sync::Arc;

use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming};
use orderflow_schemas::{OrderInvoiced, OrderPaid, OrderStatus};
use orderflow_store::{InvoiceDraft, Pricing, Store};
use tracing::debug;

use crate::{decode, record_and_emit, store_error, StepDetails};

pub struct InvoicingHandler {
    store: Arc<dyn Store>,
    producer: EventProducer,
}

impl InvoicingHandler {
    pub fn new(store: Arc<dyn Store>, producer: EventProducer) -> Self {
        InvoicingHandler { store, producer }
    }
}

impl Handler for InvoicingHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let paid: OrderPaid = decode(m)?;
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
