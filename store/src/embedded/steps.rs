//! [`StepStore`] on redb: each step is one write transaction, so the cancellation check, the
//! effect and its status change are atomic with respect to a cancel, and a stage's step costs
//! one group commit. The order's record is read once, for the check, and the status change is
//! applied to it (no effect writes the order's record).

use super::*;
use crate::{Step, StepRecord, StepStore};

#[async_trait]
impl StepStore for EmbeddedStore {
    async fn reserve_step(
        &self,
        order_id: &str,
        items: &[OrderItem],
        at: i64,
        record: StepRecord<Reservation>,
    ) -> Result<Step<Reservation>> {
        let order_id = order_id.to_string();
        let items = items.to_vec();
        self.write(move |txn| {
            let order = order_in(txn, &order_id)?;
            if cancelled(&order) {
                return Ok(Step::Cancelled);
            }
            let reservation = catalogue::reserve_in(txn, &order_id, &items, at)?;
            apply_status_to(txn, order, &record(&reservation))?;
            Ok(Step::Done(reservation))
        })
        .await
    }

    async fn record_payment_step(
        &self,
        payment: PaymentRecord,
        record: StepRecord<PaymentRecord>,
    ) -> Result<Step<PaymentRecord>> {
        self.write(move |txn| {
            let recorded = payments::record_payment_in(txn, &payment)?;
            let order = order_in(txn, &recorded.order_id)?;
            if cancelled(&order) {
                return Ok(Step::Cancelled);
            }
            if !recorded.approved {
                release_in(txn, &recorded.order_id)?;
            }
            apply_status_to(txn, order, &record(&recorded))?;
            Ok(Step::Done(recorded))
        })
        .await
    }

    async fn invoice_step(
        &self,
        draft: InvoiceDraft,
        record: StepRecord<Invoice>,
    ) -> Result<Step<Invoice>> {
        self.write(move |txn| {
            let order = order_in(txn, &draft.order_id)?;
            if cancelled(&order) {
                return Ok(Step::Cancelled);
            }
            let invoice = invoices::create_invoice_in(txn, &draft)?;
            apply_status_to(txn, order, &record(&invoice))?;
            Ok(Step::Done(invoice))
        })
        .await
    }
}

/// Whether the order, as the step's transaction read it, is cancelled.
fn cancelled(order: &Option<OrderRecord>) -> bool {
    order
        .as_ref()
        .is_some_and(|o| o.status == OrderStatus::Cancelled)
}
