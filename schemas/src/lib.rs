//! Orderflow's event contract, shared by every stage.
//!
//! # Layout
//! - [`events`]: the Rust event types, one per Avro schema in `schemas/avro/*.avsc`, and the
//!   [`Event`] trait that ties a type to its schema, schema id and topic.
//! - [`topics`]: the topic catalogue (name, key, schema, producer, consumers).
//! - [`wire`]: the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro datum).
//! - [`registry`]: schema ids — the built-in ones, or those a Confluent-compatible registry
//!   gives at start-up ([`registry::register_catalogue`]) — the registry client, and the
//!   registry `orderflow run` keeps and serves itself.
//! - [`backoff`]: how long a retry waits ([`Backoff`]), for every retry loop of every stage.
//! - [`metrics`]: the Prometheus metric names every stage records, one process-wide registry,
//!   and the text exposition `GET /metrics` serves.
//!
//! Every event is keyed by its order id, so all events of one order land in one partition, in
//! order. Every event carries an `event_id` (`<order id>:<step>`) that consumers deduplicate on.

pub mod backoff;
pub mod events;
pub mod metrics;
pub mod registry;
pub mod topics;
pub mod wire;

pub use backoff::Backoff;
pub use events::{
    AccountVerificationRequested, Address, Event, OrderAccepted, OrderInvoiced, OrderItem,
    OrderLine, OrderPaid, OrderRejected, OrderStatus, OrderValidated, PaymentFailed, PaymentMethod,
};
pub use events::{OrderCancelled, OrderModified, OrderShipped, PaymentRefunded, RejectionCode};
pub use registry::SchemaIds;
pub use topics::{TopicKind, Topics};
pub use wire::{decode, decode_with, encode, encode_with, DecodeError, EncodeError};

/// Milliseconds since the Unix epoch, the unit of every event timestamp.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// FNV-1a, 64 bits, as 16 hex digits: a digest that stays the same across builds and platforms
/// (request fingerprints for idempotency keys, migration checksums). Not for security.
pub fn stable_digest(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Formats integer cents as a decimal amount: `1250` → `"12.50"`, `-5` → `"-0.05"`.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cents_format_as_decimal_amounts() {
        assert_eq!(super::format_cents(1250), "12.50");
        assert_eq!(super::format_cents(7), "0.07");
        assert_eq!(super::format_cents(-5), "-0.05");
        assert_eq!(super::format_cents(0), "0.00");
    }

    #[test]
    fn stable_digests_do_not_change() {
        assert_eq!(super::stable_digest(b""), "cbf29ce484222325");
        assert_eq!(super::stable_digest(b"a"), "af63dc4c8601ec8c");
    }
}
