//! Payment: charges a validated order once, by order id. The outcome is recorded in the store
//! before anything is produced, so a redelivered order re-emits the recorded outcome and
//! never reaches the gateway twice. A declined charge releases the order's reserved stock.
//!
//! The card token is not in `OrderValidated`: the API keeps it in the store with the order, and
//! the stage reads it there by order id when it charges ([`PaymentStore::get_payment_token`]); the
//! store forgets it when the outcome is recorded (a cancel deletes it too). A token gone before the
//! charge (expired) fails the payment with [`TOKEN_EXPIRED`]. The token is never logged.
//!
//! Refunds: a cancelled order's approved charge is refunded once (by
//! order id: the gateway's idempotency key and one [`RefundRecord`]) and announced as
//! `PaymentRefunded` on `orders.refunded`. [`RefundHandler`] does it for each `OrderCancelled`
//! (its own consumer group, `orderflow-payment-refunds`) whose order has a charge recorded; a
//! charge recorded after the cancel (the stage checked before charging, the cancel came
//! between) is refunded here, since the stage checks again once the charge is recorded, and a
//! redelivered `OrderValidated` of a cancelled order refunds whatever charge it finds.
//!
//! Unpaid orders ([`expiry`]): the stage also cancels the bank-transfer orders whose transfer
//! was not recorded in time, releasing their stock.
//!
//! [`PaymentStore::get_payment_token`]: orderflow_store::PaymentStore::get_payment_token

pub mod expiry;
mod gateway;

use std::sync::Arc;

pub use gateway::{
    ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundRequest, SimulatedGateway,
};
use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming};
use orderflow_schemas::{
    OrderCancelled, OrderPaid, OrderStatus, OrderValidated, PaymentFailed, PaymentRefunded,
};
use orderflow_store::{
    PaymentRecord, Pricing, RefundRecord, StatusUpdate, Step, StepRecord, Store,
};
use tracing::{debug, warn};

use crate::{decode, emit, is_cancelled, produce_error, status_update, store_error, StepDetails};

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

    /// The order's charge: the one recorded already (a redelivery), or the gateway's answer to
    /// a charge made now, for the step to record; `None` when the order turned out to be
    /// cancelled before anything was charged.
    ///
    /// The card token is read from the store by order id (no event carries it). It is gone
    /// once the charge's outcome is recorded, which this finds first; gone for an order never
    /// charged (it expired, the stage being down for that long), the payment fails with
    /// [`TOKEN_EXPIRED`], recorded like a decline, so a redelivery answers the same.
    async fn charge_once(
        &self,
        order: &OrderValidated,
    ) -> Result<Option<PaymentRecord>, HandlerError> {
        if let Some(done) = self.recorded(&order.order_id).await? {
            return Ok(Some(done));
        }
        let token = self
            .store
            .get_payment_token(&order.order_id, orderflow_schemas::now_millis())
            .await
            .map_err(store_error)?;
        let outcome = match token {
            Some(token) => {
                let request = ChargeRequest {
                    idempotency_key: order.order_id.clone(),
                    amount_cents: order.total_cents,
                    currency: order.currency.clone(),
                    method: order.payment.method.clone(),
                    token: token.token,
                };
                self.gateway
                    .charge(&request)
                    .await
                    .map_err(|e| HandlerError::Retriable(e.to_string()))?
            }
            None => {
                // A charge recorded meanwhile (a concurrent redelivery) took the token with it;
                // a cancel takes it too, and then nothing is to be charged.
                if let Some(done) = self.recorded(&order.order_id).await? {
                    return Ok(Some(done));
                }
                if is_cancelled(&*self.store, &order.order_id).await? {
                    return Ok(None);
                }
                warn!(order_id = %order.order_id, "No payment token for the order (expired); the payment fails.");
                ChargeOutcome::Declined {
                    reason: TOKEN_EXPIRED.into(),
                }
            }
        };
        let (approved, payment_id, reason) = match outcome {
            ChargeOutcome::Approved { payment_id } => (true, Some(payment_id), None),
            ChargeOutcome::Declined { reason } => (false, None, Some(reason)),
        };
        Ok(Some(PaymentRecord {
            order_id: order.order_id.clone(),
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            approved,
            payment_id,
            reason,
            at: orderflow_schemas::now_millis(),
        }))
    }

    /// The charge recorded for the order, if any.
    async fn recorded(&self, order_id: &str) -> Result<Option<PaymentRecord>, HandlerError> {
        self.store.get_payment(order_id).await.map_err(store_error)
    }

    /// Forgets the order's card token: its charge's outcome is recorded, or it was cancelled.
    async fn forget_token(&self, order_id: &str) -> Result<(), HandlerError> {
        self.store
            .delete_payment_token(order_id)
            .await
            .map_err(store_error)
    }
}

/// Why the payment of an order whose card token expired before the charge failed.
pub const TOKEN_EXPIRED: &str = "the payment details expired before the charge; please order again";

// --- Refunds ---

impl PaymentHandler {
    /// Refunds the order's charge if one is recorded and approved.
    async fn refund_recorded(&self, order_id: &str, customer_id: &str) -> Result<(), HandlerError> {
        match self
            .store
            .get_payment(order_id)
            .await
            .map_err(store_error)?
        {
            Some(payment) => self.refund(&payment, customer_id).await,
            None => Ok(()),
        }
    }

    /// Refunds an approved charge once (by order id) and announces it; a declined one has
    /// nothing to refund.
    async fn refund(&self, payment: &PaymentRecord, customer_id: &str) -> Result<(), HandlerError> {
        let Some(payment_id) = payment.payment_id.clone().filter(|_| payment.approved) else {
            return Ok(());
        };
        let order_id = payment.order_id.as_str();
        let refund = match self.store.get_refund(order_id).await.map_err(store_error)? {
            Some(done) => done,
            None => {
                let refund_id = self
                    .gateway
                    .refund(&RefundRequest {
                        idempotency_key: order_id.to_string(),
                        payment_id: payment_id.clone(),
                        amount_cents: payment.amount_cents,
                        currency: payment.currency.clone(),
                    })
                    .await
                    .map_err(|e| HandlerError::Retriable(e.to_string()))?;
                self.store
                    .record_refund(RefundRecord {
                        order_id: order_id.to_string(),
                        payment_id,
                        refund_id,
                        amount_cents: payment.amount_cents,
                        currency: payment.currency.clone(),
                        at: orderflow_schemas::now_millis(),
                    })
                    .await
                    .map_err(store_error)?
            }
        };
        let event = PaymentRefunded {
            event_id: PaymentRefunded::event_id_for(order_id),
            order_id: order_id.to_string(),
            customer_id: customer_id.to_string(),
            payment_id: refund.payment_id,
            refund_id: refund.refund_id,
            amount_cents: refund.amount_cents,
            currency: refund.currency,
            occurred_at: refund.at,
        };
        self.producer.send(&event).await.map_err(produce_error)?;
        debug!(%order_id, "Payment refunded.");
        Ok(())
    }
}

/// Refunds cancelled orders' charges: the payment stage's consumer of `orders.cancelled`.
pub struct RefundHandler(pub Arc<PaymentHandler>);

impl Handler for RefundHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let cancelled: OrderCancelled = decode(m)?;
        // A cancelled order is not charged (any more): its card token goes.
        self.0.forget_token(&cancelled.order_id).await?;
        self.0
            .refund_recorded(&cancelled.order_id, &cancelled.customer_id)
            .await
    }
}

/// What payment announces for a recorded charge: the event, and what it records besides the
/// status.
enum Outcome {
    Paid(OrderPaid, StepDetails),
    Failed(PaymentFailed, StepDetails),
}

impl Outcome {
    /// The outcome of the order's recorded `payment`: `OrderPaid` (detail the payment id,
    /// the order's pricing) or `PaymentFailed` (detail the reason).
    fn of(order: &OrderValidated, payment: &PaymentRecord) -> Self {
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
                    lines: order.lines.clone(),
                    currency: order.currency.clone(),
                    subtotal_cents: order.subtotal_cents,
                    tax_cents: order.tax_cents,
                    total_cents: order.total_cents,
                }),
                invoice_number: None,
                revision: order.revision,
            };
            Outcome::Paid(event, details)
        } else {
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
            Outcome::Failed(event, details)
        }
    }

    /// The status change the outcome records.
    fn status_update(self) -> StatusUpdate {
        match self {
            Outcome::Paid(event, details) => status_update(OrderStatus::Paid, &event, details),
            Outcome::Failed(event, details) => {
                status_update(OrderStatus::PaymentFailed, &event, details)
            }
        }
    }
}

impl Handler for PaymentHandler {
    async fn handle(&self, m: &Incoming) -> Result<(), HandlerError> {
        let order: OrderValidated = decode(m)?;
        if is_cancelled(&*self.store, &order.order_id).await? {
            // A charge recorded before (a redelivery after a crash) goes back.
            self.refund_recorded(&order.order_id, &order.customer_id)
                .await?;
            debug!(order_id = %order.order_id, "Order cancelled; not charged.");
            return Ok(());
        }
        if order.payment.is_offline() {
            // Paid by bank transfer: the order waits, modifiable, until an admin records the
            // transfer (`POST /v1/orders/{id}/payment`), which produces its `OrderPaid`.
            debug!(order_id = %order.order_id, revision = order.revision, "Awaiting a bank transfer.");
            return Ok(());
        }
        let Some(payment) = self.charge_once(&order).await? else {
            debug!(order_id = %order.order_id, "Order cancelled; not charged.");
            return Ok(());
        };
        let record: StepRecord<PaymentRecord> = {
            let order = order.clone();
            Box::new(move |payment| Outcome::of(&order, payment).status_update())
        };
        let step = self
            .store
            .record_payment_step(payment, record)
            .await
            .map_err(store_error)?;
        let Step::Done(payment) = step else {
            // Cancelled while charging: the cancel's refund may have found no charge yet.
            self.refund_recorded(&order.order_id, &order.customer_id)
                .await?;
            debug!(order_id = %order.order_id, "Order cancelled while charging; nothing announced.");
            return Ok(());
        };
        match Outcome::of(&order, &payment) {
            Outcome::Paid(event, _) => {
                emit(&self.producer, OrderStatus::Paid, &event).await?;
                debug!(order_id = %order.order_id, "Order paid.");
            }
            Outcome::Failed(event, _) => {
                // The step gave the stock back.
                emit(&self.producer, OrderStatus::PaymentFailed, &event).await?;
                debug!(order_id = %order.order_id, "Payment failed.");
            }
        }
        Ok(())
    }
}
