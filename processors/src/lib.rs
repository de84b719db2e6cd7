//! Orderflow's stream processors. Each stage consumes one topic, applies its effect to the
//! store idempotently (keyed by order id) and records the step on the order's read model, both
//! in one store call ([`orderflow_store::StepStore`]: one write in the embedded store), and
//! then produces its outcome; the shared consume loop (`orderflow_kafka::consume`) stores
//! offsets only after all of that is done.
//!
//! # Layout
//! - [`validation`]: `orders.accepted` → reserve stock, price → `orders.validated` |
//!   `orders.rejected`; and `orders.modified` → re-price the new quantities (reserved by the
//!   API) → `orders.validated` for the order's new revision.
//! - [`payment`]: `orders.validated` → charge through a [`payment::PaymentGateway`] →
//!   `orders.paid` | `orders.payment-failed` (releasing the stock), except bank transfers,
//!   which wait for an admin to record them (and are cancelled → `orders.cancelled` when no
//!   transfer is recorded in time: [`payment::expiry`]); and `orders.cancelled` → refund an
//!   approved charge → `orders.refunded`.
//! - [`invoicing`]: `orders.paid` → numbered invoice, its PDF in object storage →
//!   `orders.invoiced`.
//!
//! No stage acts on a cancelled order, checked in its step (and by payment before it charges,
//! `is_cancelled`): validation reserves nothing (a store without transactions gives back at
//! once what a reservation racing the cancel took), payment charges nothing (and refunds a
//! charge that raced the cancel), invoicing issues nothing; none records a status or
//! produces an event for it.
//!
//! Each recorded step observes `orderflow_order_latency_seconds{status}`, the time from the
//! order's acceptance (carried in its UUIDv7 order id) to the step's `occurred_at`.

pub mod invoicing;
pub mod payment;
pub mod validation;

use std::sync::Arc;

use orderflow_kafka::{
    run_consumer, EventProducer, HandlerError, Incoming, KafkaConfig, StageConfig,
};
use orderflow_schemas::{metrics, Event, OrderStatus};
use orderflow_store::{Pricing, StatusUpdate, Store, StoreError};
use tokio_util::sync::CancellationToken;

pub use invoicing::InvoicingHandler;
pub use payment::{PaymentHandler, SimulatedGateway};
pub use validation::ValidationHandler;

/// The stages, by the name `orderflow process <stage>` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Validation,
    Payment,
    Invoicing,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Validation, Stage::Payment, Stage::Invoicing];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Validation => "validation",
            Stage::Payment => "payment",
            Stage::Invoicing => "invoicing",
        }
    }
}

/// What the processors need to know beyond Kafka and the store.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Tax added at validation, in basis points of the subtotal (2000 = 20%).
    pub tax_bps: i64,
    /// The simulated gateway declines charges above this amount.
    pub payment_limit_cents: i64,
    /// Where invoicing keeps the invoice PDFs; `None`: it renders none.
    pub invoice_files: Option<orderflow_store::InvoiceFiles>,
    /// When the payment stage cancels orders still awaiting their bank transfer.
    pub unpaid_expiry: payment::expiry::ExpirySettings,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            tax_bps: 2000,
            payment_limit_cents: 1_000_000,
            invoice_files: None,
            unpaid_expiry: payment::expiry::ExpirySettings::with_ttl(
                orderflow_store::DEFAULT_UNPAID_ORDER_TTL,
            ),
        }
    }
}

/// Runs one stage until `shutdown`.
pub async fn run_stage(
    stage: Stage,
    kafka: &KafkaConfig,
    store: Arc<dyn Store>,
    producer: EventProducer,
    settings: &ProcessorSettings,
    shutdown: CancellationToken,
) -> orderflow_kafka::Result<()> {
    use orderflow_schemas::TopicKind as T;
    match stage {
        Stage::Validation => {
            let config = StageConfig::new(kafka, stage.name(), vec![T::OrdersAccepted]);
            let handler = Arc::new(ValidationHandler::new(
                store,
                producer.clone(),
                settings.tax_bps,
            ));
            // Re-pricing of modified orders, in a consumer group of its own.
            let modifications =
                StageConfig::new(kafka, "validation-modifications", vec![T::OrdersModified]);
            let modification_handler = Arc::new(validation::ModificationHandler(handler.clone()));
            tokio::try_join!(
                run_consumer(kafka, config, handler, producer.clone(), shutdown.clone()),
                run_consumer(
                    kafka,
                    modifications,
                    modification_handler,
                    producer,
                    shutdown
                ),
            )
            .map(|_| ())
        }
        Stage::Payment => {
            let config = StageConfig::new(kafka, stage.name(), vec![T::OrdersValidated]);
            let gateway = SimulatedGateway::new(settings.payment_limit_cents);
            let handler = Arc::new(PaymentHandler::new(
                store.clone(),
                producer.clone(),
                Arc::new(gateway),
            ));
            // Refunds: cancelled orders, in a consumer group of their own.
            let refunds = StageConfig::new(kafka, "payment-refunds", vec![T::OrdersCancelled]);
            let refund_handler = Arc::new(payment::RefundHandler(handler.clone()));
            // Unpaid orders expire ([`payment::expiry`]); a failed sweep is retried, not fatal.
            let expiry = payment::expiry::run_expiry(
                store,
                producer.clone(),
                settings.unpaid_expiry,
                shutdown.clone(),
            );
            // The first failure of either consumer ends the stage (as one's failure would).
            tokio::try_join!(
                run_consumer(kafka, config, handler, producer.clone(), shutdown.clone()),
                run_consumer(kafka, refunds, refund_handler, producer, shutdown),
                async {
                    expiry.await;
                    Ok::<(), orderflow_kafka::Error>(())
                },
            )
            .map(|_| ())
        }
        Stage::Invoicing => {
            let config = StageConfig::new(kafka, stage.name(), vec![T::OrdersPaid]);
            let mut handler = InvoicingHandler::new(store, producer.clone());
            if let Some(files) = &settings.invoice_files {
                handler = handler.with_files(files.clone());
            }
            run_consumer(kafka, config, Arc::new(handler), producer, shutdown).await
        }
    }
}

/// Decodes a message's payload, or calls it poison.
pub(crate) fn decode<E: Event>(m: &Incoming) -> Result<E, HandlerError> {
    m.decode::<E>()
        .map_err(|e| HandlerError::Poison(e.to_string()))
}

/// A store failure: retry when it may pass, dead-letter when it cannot.
pub(crate) fn store_error(e: StoreError) -> HandlerError {
    if e.is_retriable() {
        HandlerError::Retriable(e.to_string())
    } else {
        HandlerError::Poison(e.to_string())
    }
}

/// A produce failure: retry unless the broker refuses the payload itself.
pub(crate) fn produce_error(e: orderflow_kafka::Error) -> HandlerError {
    if e.is_retriable() {
        HandlerError::Retriable(e.to_string())
    } else {
        HandlerError::Poison(e.to_string())
    }
}

/// What a step records on the order's read model besides its status.
#[derive(Debug, Default)]
pub(crate) struct StepDetails {
    pub detail: Option<String>,
    pub pricing: Option<Pricing>,
    pub invoice_number: Option<String>,
    /// The order revision the step is for.
    pub revision: i32,
}

/// The status change a step's event makes on the order's read model.
pub(crate) fn status_update<E: Event>(
    status: OrderStatus,
    event: &E,
    details: StepDetails,
) -> StatusUpdate {
    StatusUpdate {
        order_id: event.order_id().to_string(),
        customer_id: event.customer_id().to_string(),
        status,
        event_id: event.event_id().to_string(),
        at: event.occurred_at(),
        detail: details.detail,
        pricing: details.pricing,
        invoice_number: details.invoice_number,
        revision: details.revision,
    }
}

/// Records a step on the order's read model, then produces its event. Both are idempotent by
/// the event id, so a redelivered message may do this again safely.
pub(crate) async fn record_and_emit<E: Event>(
    store: &dyn Store,
    producer: &EventProducer,
    status: OrderStatus,
    event: &E,
    details: StepDetails,
) -> Result<(), HandlerError> {
    store
        .apply_status(status_update(status, event, details))
        .await
        .map_err(store_error)?;
    emit(producer, status, event).await
}

/// Produces the event of a step recorded on the order's read model, and observes the order's
/// latency to it.
pub(crate) async fn emit<E: Event>(
    producer: &EventProducer,
    status: OrderStatus,
    event: &E,
) -> Result<(), HandlerError> {
    producer.send(event).await.map_err(produce_error)?;
    if let Some(accepted_at) = accepted_at(event.order_id()) {
        metrics::metrics()
            .order_latency
            .with_label_values(&[status.as_str()])
            .observe(metrics::seconds_between(accepted_at, event.occurred_at()));
    }
    Ok(())
}

/// Whether the order was cancelled, outside a step: payment checks before it charges, and then
/// charges nothing. One read of the order's status.
pub(crate) async fn is_cancelled(store: &dyn Store, order_id: &str) -> Result<bool, HandlerError> {
    Ok(store.order_status(order_id).await.map_err(store_error)? == Some(OrderStatus::Cancelled))
}

/// When an order was accepted, read from its id: the API mints order ids as UUIDv7 at accept
/// time, whose first 48 bits are the Unix time in ms. `None` for an id of another form.
pub(crate) fn accepted_at(order_id: &str) -> Option<i64> {
    let id = uuid::Uuid::parse_str(order_id).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::accepted_at;

    #[test]
    fn the_accept_time_comes_from_a_uuid_v7_order_id() {
        // 0x0193_4b2c_5e10 ms = 2024-11-23T…, version nibble 7.
        assert_eq!(
            accepted_at("01934b2c-5e10-7abc-8def-0123456789ab"),
            Some(0x0193_4b2c_5e10)
        );
        assert_eq!(accepted_at("01934b2c-5e10-4abc-8def-0123456789ab"), None);
        assert_eq!(accepted_at("order-1"), None);
        let before = orderflow_schemas::now_millis();
        let id = format!(
            "{:08x}-{:04x}-7000-8000-000000000000",
            before >> 16,
            before & 0xffff
        );
        assert_eq!(accepted_at(&id), Some(before));
    }
}
