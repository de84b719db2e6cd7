//! The order operations, below the HTTP handlers: each writes the order's new state in the
//! store, drops the order from the read cache, announces the change with its event, and
//! returns a typed outcome. A handler parses the request, calls one, and maps the outcome to a
//! response; the seeder (and a test) call them without building a request.
//!
//! Writing the state and announcing the event are one place per operation: the state first
//! (atomic and idempotent in the store), then the event, built from what the store recorded and
//! with a stable id. When the broker fails after the write, the operation answers
//! [`OpError::Unannounced`]: the same call again finds the state written and announces it.
//!
//! # Layout
//! - [`place`]: [`place_order`], a new order (`OrderAccepted`).
//! - [`lifecycle`]: [`cancel_order`] (`OrderCancelled`) and [`ship_order`] (`OrderShipped`).
//! - [`modify`]: [`modify_order`], new quantities of an unpaid order (`OrderModified`).
//! - [`transfer`]: [`record_transfer`], the bank transfer that pays an order (`OrderPaid`).

pub mod lifecycle;
pub mod modify;
pub mod place;
pub mod transfer;

pub use lifecycle::{cancel_order, ship_order};
pub use modify::{modify_order, ItemChange, Modified};
pub use place::{place_order, NewOrder, Placed};
pub use transfer::{record_transfer, Transfer};

use orderflow_schemas::Event;
use orderflow_store::StoreError;

use crate::{problem::Problem, ApiState};

/// Why an operation failed. Both kinds are worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state is written but its event did not reach the event log; `detail` is what the
    /// caller is told (what is done, and that retrying announces it).
    #[error("{detail}: {source}")]
    Unannounced {
        detail: &'static str,
        #[source]
        source: orderflow_kafka::Error,
    },
}

impl From<OpError> for Problem {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Store(e) => e.into(),
            OpError::Unannounced { detail, source } => Problem::unannounced(detail, &source),
        }
    }
}

/// Puts `event` on its topic; `detail` is the answer when the broker fails.
async fn announce<E: Event>(
    state: &ApiState,
    event: &E,
    detail: &'static str,
) -> Result<(), OpError> {
    state
        .producer
        .send(event)
        .await
        .map_err(|source| OpError::Unannounced { detail, source })
}
