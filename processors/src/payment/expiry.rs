//! The expiry of unpaid orders: an order paid by bank transfer that still awaits its transfer
//! `ttl` after it was placed is cancelled ("payment not received in time"), its stock released,
//! and `OrderCancelled` produced, so the customer gets the cancelled email as after a cancel
//! through the API.
//!
//! The payment stage sweeps every `interval`: it pages through the orders placed before
//! `now - ttl` that await a transfer ([`OrderStore::list_unpaid_orders`], oldest first), expires each
//! ([`OrderStore::expire_unpaid_order`]: refused, atomically, once the transfer's payment is claimed,
//! so a transfer recorded at the same moment wins or loses whole), announces the cancel, and only
//! then lets go of the order ([`OrderStore::forget_unpaid_order`]). A crash between the cancel and the
//! announcement leaves the order listed: the next sweep announces it (the same event id).
//!
//! Several payment instances may sweep at once: the expiry is idempotent and each announces the
//! same event (`<order id>:cancelled`), which consumers deduplicate.
//!
//! [`OrderStore::list_unpaid_orders`]: orderflow_store::OrderStore::list_unpaid_orders
//! [`OrderStore::expire_unpaid_order`]: orderflow_store::OrderStore::expire_unpaid_order
//! [`OrderStore::forget_unpaid_order`]: orderflow_store::OrderStore::forget_unpaid_order

use std::{sync::Arc, time::Duration};

use orderflow_kafka::EventProducer;
use orderflow_schemas::{metrics, now_millis};
use orderflow_store::{cancellation_event, ExpireOutcome, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The reason an expired order's timeline and email give.
pub const EXPIRY_REASON: &str = "payment not received in time";
/// Orders handled per page of a sweep.
const PAGE: usize = 100;
/// Most pages one sweep handles; more orders wait for the next sweep.
const MAX_PAGES: usize = 100;
/// The `stage` label of the sweep's errors.
const STAGE: &str = "payment-expiry";

/// How unpaid orders expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpirySettings {
    /// How long an order waits for its bank transfer.
    pub ttl: Duration,
    /// How often the stage sweeps.
    pub interval: Duration,
}

impl ExpirySettings {
    /// Sweeps every twentieth of the TTL, between 1 s and 5 min: an order is cancelled at most
    /// 5 % (or 5 min) late, and an idle store is read rarely.
    pub fn with_ttl(ttl: Duration) -> Self {
        ExpirySettings {
            ttl,
            interval: (ttl / 20).clamp(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

/// Why a sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot announce the expiry of order {order_id}: {error}")]
    Produce {
        order_id: String,
        error: orderflow_kafka::Error,
    },
}

/// Sweeps every `settings.interval` until `shutdown`. A failed sweep is logged and tried again
/// at the next one (the store or the broker may be back by then).
pub async fn run_expiry(
    store: Arc<dyn Store>,
    producer: EventProducer,
    settings: ExpirySettings,
    shutdown: CancellationToken,
) {
    if settings.ttl.is_zero() {
        info!("Unpaid orders never expire (the TTL is 0).");
        return;
    }
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let cutoff = now_millis() - i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX);
        // A sweep stops with the stage: an order half done is finished by the next one.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            swept = sweep(&*store, &producer, cutoff) => match swept {
                Ok(0) => {}
                Ok(expired) => info!(expired, "Unpaid orders expired."),
                Err(e) => {
                    metrics::metrics()
                        .errors
                        .with_label_values(&[STAGE, metrics::error_type::RETRIABLE])
                        .inc();
                    warn!(error = %e, "Expiry sweep failed; trying again at the next one.");
                }
            },
        }
    }
}

/// Expires every order placed before `cutoff` (ms) that still awaits its transfer; how many it
/// cancelled (announced again after a crash included).
pub async fn sweep(
    store: &dyn Store,
    producer: &EventProducer,
    cutoff: i64,
) -> Result<usize, SweepError> {
    let mut expired = 0;
    for _ in 0..MAX_PAGES {
        let page = store.list_unpaid_orders(cutoff, PAGE).await?;
        let full = page.len() == PAGE;
        for order in page {
            let order_id = order.order_id.as_str();
            match store
                .expire_unpaid_order(order_id, EXPIRY_REASON, now_millis())
                .await?
            {
                ExpireOutcome::Cancelled(cancelled) => {
                    // Unpaid: nothing to refund.
                    let event = cancellation_event(&cancelled, None);
                    producer
                        .send(&event)
                        .await
                        .map_err(|error| SweepError::Produce {
                            order_id: order_id.to_string(),
                            error,
                        })?;
                    expired += 1;
                    debug!(%order_id, "Unpaid order expired.");
                }
                ExpireOutcome::NotAwaiting(status) => {
                    debug!(%order_id, status = status.as_str(), "Order no longer awaits a transfer.");
                }
                ExpireOutcome::NotFound => {}
            }
            store.forget_unpaid_order(order_id).await?;
        }
        if !full {
            break;
        }
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_interval_follows_the_ttl_within_bounds() {
        let interval = |ttl: u64| ExpirySettings::with_ttl(Duration::from_secs(ttl)).interval;
        assert_eq!(interval(72 * 3600), Duration::from_secs(300));
        assert_eq!(interval(3600), Duration::from_secs(180));
        assert_eq!(interval(2), Duration::from_secs(1));
    }
}
