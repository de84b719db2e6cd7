//! The operations below the HTTP handlers: each order operation writes the order's new state
//! in the store, drops the order from the read cache, wakes the outbox relay, and returns a
//! typed outcome; sending a verification code writes the code and wakes the relay. A handler
//! parses the request, calls one, and maps the outcome to a response; the seeder (and a test)
//! call them without building a request.
//!
//! The store queues the event that announces a change in the same write as the change (its
//! outbox, [`orderflow_store::OutboxStore`]), built from what it recorded and with a stable id;
//! the [`crate::relay`] puts it on its topic. So an operation's answer means the change and its
//! announcement are durable, a broker that is down delays the event instead of losing it, and a
//! repeated call, which changes nothing, announces nothing again.
//!
//! # Layout
//! - [`place`]: [`place_order`], a new order (`OrderAccepted`).
//! - [`lifecycle`]: [`cancel_order`] (`OrderCancelled`) and [`ship_order`] (`OrderShipped`).
//! - [`modify`]: [`modify_order`], new quantities of an unpaid order, and [`reprice_order`],
//!   new unit prices of its lines (`OrderModified`).
//! - [`transfer`]: [`record_transfer`], the bank transfer that pays an order (`OrderPaid`).
//! - [`verification`]: [`send_verification_code`], a new code for an account to verify its
//!   email with (`AccountVerificationRequested`).

pub mod lifecycle;
pub mod modify;
pub mod place;
pub mod transfer;
pub mod verification;

pub use lifecycle::{cancel_order, ship_order};
pub use modify::{
    modify_order, reprice_order, ItemChange, Modified, PriceChange, MAX_UNIT_PRICE_CENTS,
};
pub use place::{place_order, NewOrder, Placed};
pub use transfer::{record_transfer, Transfer};
pub use verification::{send_verification_code, CODE_TTL};

use orderflow_store::StoreError;

use crate::{problem::Problem, ApiState};

/// Why an operation failed: the store could not do it (worth a retry when unavailable), or
/// the system gave no randomness for a secret (a retry will not help).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NoRandomness(String),
}

impl From<OpError> for Problem {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Store(e) => e.into(),
            OpError::NoRandomness(e) => crate::auth::routes::internal(e),
        }
    }
}

/// After a write that queued an event keyed `key` (the order id; the customer id for account
/// events): the relay puts it on its topic, in the current request's trace.
fn announced(state: &ApiState, key: &str) {
    state.relay.announce(key);
}
