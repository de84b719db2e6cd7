//! Payment: charges a validated order once, by order id. The outcome is recorded in the store
//! before anything is produced, so a redelivered order re-emits the recorded outcome and
//! never reaches the gateway twice. A declined charge releases the order's reserved stock.

mod gateway;

use std::sync::Arc;

pub use gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, SimulatedGateway};
use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming};
use orderflow_schemas::{OrderPaid, OrderStatus, OrderValidated, PaymentFailed};
use orderflow_store::{PaymentRecord, Pricing, Store};
use tracing::debug;

use crate::{decode, is_cancelled, record_and_emit, store_error, StepDetails};

pub struct PaymentHandler {
    store: Arc<dyn Store>,
    producer: EventProducer,
    gateway: Arc<dyn PaymentGateway>,
}

impl PaymentHandler {
    pub fn new(
        store: Arc<dyn Store>,
        producer: EventProducer,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Self {
        PaymentHandler {
            store,
            producer,
            gateway,
        }
    }

    /// The recorded charge for the order, charging first if there is none.
    async fn charge_once(&self, order: &OrderValidated) -> Result<PaymentRecord, HandlerError> {
        if let Some(done) = self
            .store
            .get_payment(&order.order_id)
            .await
            .map_err(store_error)?
        {
            return Ok(done);
        }
        let request = ChargeRequest {
            idempotency_key: order.order_id.clone(),
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            method: order.payment.method.clone(),
            token: order.payment.token.clone(),
        };
        let outcome = self
            .gateway
            .charge(&request)
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        let (approved, payment_id, reason) = match outcome {
            ChargeOutcome::Approved { payment_id } => (true, Some(payment_id), None),
            ChargeOutcome::Declined { reason } => (false, None, Some(reason)),
        };
        self.store
            .record_payment(PaymentRecord {
                order_id: order.order_id.clone(),
                amount_cents: order.total_cents,
                currency: order.currency.clone(),
                approved,
                payment_id,
                reason,
                at: orderflow_schemas::now_millis(),
            })
            .await
            .map_err(store_error)
    }
}

impl Handler for PaymentHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let order: OrderValidated = decode(m)?;
        if is_cancelled(&*self.store, &order.order_id).await? {
            debug!(order_id = %order.order_id, "Order cancelled; not charged.");
            return Ok(());
        }
        let payment = self.charge_once(&order).await?;
        if payment.approved {
            let payment_id = payment.payment_id.clone().unwrap_or_default();
            let event = OrderPaid {
                event_id: OrderStatus::Paid.event_id(&order.order_id),
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                payment_id: payment_id.clone(),
                lines: order.lines.clone(),
                currency: order.currency.clone(),
                subtotal_cents: order.subtotal_cents,
                tax_cents: order.tax_cents,
                total_cents: order.total_cents,
                occurred_at: payment.at,
            };
            let details = StepDetails {
                detail: Some(payment_id),
                pricing: Some(Pricing {
                    lines: order.lines,
                    currency: order.currency,
                    subtotal_cents: order.subtotal_cents,
                    tax_cents: order.tax_cents,
                    total_cents: order.total_cents,
                }),
                invoice_number: None,
            };
            record_and_emit(
                &*self.store,
                &self.producer,
                OrderStatus::Paid,
                &event,
                details,
            )
            .await?;
            debug!(order_id = %order.order_id, "Order paid.");
        } else {
            self.store
                .release(&order.order_id)
                .await
                .map_err(store_error)?;
            let reason = payment.reason.clone().unwrap_or_else(|| "declined".into());
            let event = PaymentFailed {
                event_id: OrderStatus::PaymentFailed.event_id(&order.order_id),
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                amount_cents: payment.amount_cents,
                currency: payment.currency.clone(),
                reason: reason.clone(),
                occurred_at: payment.at,
            };
            let details = StepDetails {
                detail: Some(reason),
                ..Default::default()
            };
            record_and_emit(
                &*self.store,
                &self.producer,
                OrderStatus::PaymentFailed,
                &event,
                details,
            )
            .await?;
            debug!(order_id = %order.order_id, "Payment failed.");
        }
        Ok(())
    }
}
