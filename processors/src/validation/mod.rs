//! Validation: checks an accepted order against the catalogue and reserves its stock, all
//! items or none, atomically in the store. The reservation is recorded per order id, so a
//! redelivered order gets the same answer and reserves nothing more.

use std::sync::Arc;

use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming};
use orderflow_schemas::{
    OrderAccepted, OrderLine, OrderModified, OrderRejected, OrderStatus, OrderValidated,
    PaymentMethod,
};
use orderflow_store::{Pricing, Reservation, ReservedLine, StatusUpdate, Step, StepRecord, Store};
use tracing::debug;

use crate::{decode, emit, record_and_emit, status_update, store_error, StepDetails};

pub struct ValidationHandler {
    store: Arc<dyn Store>,
    producer: EventProducer,
    tax_bps: i64,
}

impl ValidationHandler {
    pub fn new(store: Arc<dyn Store>, producer: EventProducer, tax_bps: i64) -> Self {
        ValidationHandler {
            store,
            producer,
            tax_bps,
        }
    }
}

/// Prices reserved lines: line totals, subtotal, tax (rounded half up), total.
pub fn price(lines: &[ReservedLine], tax_bps: i64) -> Pricing {
    let currency = lines
        .first()
        .map(|l| l.currency.as_str())
        .unwrap_or_default();
    let lines: Vec<OrderLine> = lines
        .iter()
        .map(|l| OrderLine {
            sku: l.sku.clone(),
            name: l.name.clone(),
            quantity: l.quantity,
            unit_price_cents: l.unit_price_cents,
            line_total_cents: l.unit_price_cents * i64::from(l.quantity),
        })
        .collect();
    let subtotal_cents: i64 = lines.iter().map(|l| l.line_total_cents).sum();
    let tax_cents = (subtotal_cents * tax_bps + 5_000) / 10_000;
    Pricing {
        currency: currency.to_string(),
        lines,
        subtotal_cents,
        tax_cents,
        total_cents: subtotal_cents + tax_cents,
    }
}

/// What validation announces for a reservation: the event, and what it records besides the
/// status.
enum Outcome {
    Validated(OrderValidated, StepDetails),
    Rejected(OrderRejected, StepDetails),
}

impl Outcome {
    /// The outcome of `reservation` for the order: its reserved lines priced
    /// (`OrderValidated`, event id `<order>:validated`, with `:r<revision>` after a change) or
    /// its rejection (`OrderRejected`).
    fn of(
        order_id: &str,
        customer_id: &str,
        payment: &PaymentMethod,
        reservation: &Reservation,
        tax_bps: i64,
    ) -> Self {
        match reservation {
            Reservation::Reserved {
                lines,
                at,
                revision,
                ..
            } => {
                let (event, details) = validated(
                    order_id,
                    customer_id,
                    payment.clone(),
                    lines,
                    *at,
                    *revision,
                    tax_bps,
                );
                Outcome::Validated(event, details)
            }
            Reservation::Rejected { code, reason, at } => {
                let event = OrderRejected {
                    event_id: OrderStatus::Rejected.event_id(order_id),
                    order_id: order_id.to_string(),
                    customer_id: customer_id.to_string(),
                    reason_code: code.to_string(),
                    reason: reason.clone(),
                    occurred_at: *at,
                };
                let details = StepDetails {
                    detail: Some(event.reason.clone()),
                    ..Default::default()
                };
                Outcome::Rejected(event, details)
            }
        }
    }

    /// The status change the outcome records.
    fn status_update(self) -> StatusUpdate {
        match self {
            Outcome::Validated(event, details) => {
                status_update(OrderStatus::Validated, &event, details)
            }
            Outcome::Rejected(event, details) => {
                status_update(OrderStatus::Rejected, &event, details)
            }
        }
    }
}

/// The order's `revision` with its reserved `lines` priced, and what it records besides the
/// status.
fn validated(
    order_id: &str,
    customer_id: &str,
    payment: PaymentMethod,
    lines: &[ReservedLine],
    at: i64,
    revision: i32,
    tax_bps: i64,
) -> (OrderValidated, StepDetails) {
    let pricing = price(lines, tax_bps);
    let event = OrderValidated {
        event_id: OrderStatus::Validated.revision_event_id(order_id, revision),
        order_id: order_id.to_string(),
        customer_id: customer_id.to_string(),
        lines: pricing.lines.clone(),
        currency: pricing.currency.clone(),
        subtotal_cents: pricing.subtotal_cents,
        tax_cents: pricing.tax_cents,
        total_cents: pricing.total_cents,
        payment,
        occurred_at: at,
        revision,
    };
    let details = StepDetails {
        pricing: Some(pricing),
        revision,
        ..Default::default()
    };
    (event, details)
}

impl Handler for ValidationHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let order: OrderAccepted = decode(m)?;
        let record: StepRecord<Reservation> = {
            let (order_id, customer_id) = (order.order_id.clone(), order.customer_id.clone());
            let (payment, tax_bps) = (order.payment.clone(), self.tax_bps);
            Box::new(move |reservation| {
                Outcome::of(&order_id, &customer_id, &payment, reservation, tax_bps).status_update()
            })
        };
        let now = orderflow_schemas::now_millis();
        let step = self
            .store
            .reserve_step(&order.order_id, &order.items, now, record)
            .await
            .map_err(store_error)?;
        // A redelivery after a modification finds the modified lines: the same event as the
        // modification's re-pricing.
        let Step::Done(reservation) = step else {
            debug!(order_id = %order.order_id, "Order cancelled; nothing reserved.");
            return Ok(());
        };
        let outcome = Outcome::of(
            &order.order_id,
            &order.customer_id,
            &order.payment,
            &reservation,
            self.tax_bps,
        );
        match outcome {
            Outcome::Validated(event, _) => {
                emit(&self.producer, OrderStatus::Validated, &event).await?;
                debug!(order_id = %order.order_id, "Order validated.");
            }
            Outcome::Rejected(event, _) => {
                emit(&self.producer, OrderStatus::Rejected, &event).await?;
                // A rejected order is never charged: its card token goes.
                self.store
                    .delete_payment_token(&order.order_id)
                    .await
                    .map_err(store_error)?;
                debug!(order_id = %order.order_id, reason = %event.reason, "Order rejected.");
            }
        }
        Ok(())
    }
}

/// Re-prices modified orders: validation's consumer of `orders.modified`, in a
/// consumer group of its own. The API swapped the reservation already; this prices the
/// revision's lines and produces its `OrderValidated`, unless the order moved on (a later
/// revision's event follows) or is no longer awaiting payment.
pub struct ModificationHandler(pub Arc<ValidationHandler>);

impl Handler for ModificationHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let modified: OrderModified = decode(m)?;
        let store = &*self.0.store;
        let order_id = modified.order_id.as_str();
        let Some(order) = store.get_order(order_id).await.map_err(store_error)? else {
            return Err(HandlerError::Poison(format!(
                "order {order_id} of a modification is not in the store"
            )));
        };
        if order.revision != modified.revision || order.status != OrderStatus::Validated {
            debug!(%order_id, revision = modified.revision, "Modification superseded; skipped.");
            return Ok(());
        }
        let reservation = store
            .reserve(order_id, &modified.items, modified.occurred_at)
            .await
            .map_err(store_error)?;
        let Reservation::Reserved {
            lines, revision, ..
        } = reservation
        else {
            return Err(HandlerError::Poison(format!(
                "order {order_id} was modified but holds no reservation"
            )));
        };
        if revision != modified.revision {
            debug!(%order_id, revision, "Modification superseded; skipped.");
            return Ok(());
        }
        let payment = PaymentMethod {
            method: order.payment_method.unwrap_or_default(),
        };
        let (event, details) = validated(
            order_id,
            &modified.customer_id,
            payment,
            &lines,
            modified.occurred_at,
            revision,
            self.0.tax_bps,
        );
        record_and_emit(
            store,
            &self.0.producer,
            OrderStatus::Validated,
            &event,
            details,
        )
        .await?;
        debug!(%order_id, revision, "Modified order re-priced.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(quantity: i32, unit_price_cents: i64) -> ReservedLine {
        ReservedLine {
            sku: "S".into(),
            name: "N".into(),
            quantity,
            unit_price_cents,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn pricing_sums_lines_and_rounds_tax_half_up() {
        let p = price(&[line(2, 1250), line(1, 999)], 2000);
        assert_eq!(p.lines[0].line_total_cents, 2500);
        assert_eq!(p.subtotal_cents, 3499);
        // 20% of 34.99 is 6.998 -> 7.00
        assert_eq!(p.tax_cents, 700);
        assert_eq!(p.total_cents, 4199);
        assert_eq!(p.currency, "EUR");
        let p = price(&[line(1, 25)], 2000);
        assert_eq!(p.tax_cents, 5);
        let p = price(&[line(1, 2)], 2500); // 0.5 cent rounds up
        assert_eq!(p.tax_cents, 1);
    }
}
