//! The topic catalogue. Names carry an optional prefix (`--topic-prefix`), so several pipelines
//! (or tests) can share one cluster.

/// Every topic Orderflow produces or consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    OrdersAccepted,
    OrdersValidated,
    OrdersRejected,
    OrdersPaid,
    PaymentFailed,
    OrdersInvoiced,
    DeadLetter,
    /// What the bridge could not deliver: a sink refused it for good.
    BridgeDeadLetter,
    /// Email verification codes to send, keyed by customer id.
    AccountsVerification,
    /// Cancelled orders.
    OrdersCancelled,
    /// Shipped orders.
    OrdersShipped,
    /// Refunds of cancelled paid orders.
    OrdersRefunded,
    /// Unpaid orders whose quantities changed.
    OrdersModified,
}

/// One row of the catalogue, as the README prints it.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub kind: TopicKind,
    /// The name without prefix.
    pub base_name: &'static str,
    /// What the message key is.
    pub key: &'static str,
    /// The Avro record on the topic (`None` for the dead-letter topic: raw bytes + headers).
    pub schema: Option<&'static str>,
    pub producer: &'static str,
    pub consumers: &'static str,
}

impl TopicKind {
    pub const ALL: [TopicKind; 13] = [
        TopicKind::OrdersAccepted,
        TopicKind::OrdersValidated,
        TopicKind::OrdersRejected,
        TopicKind::OrdersPaid,
        TopicKind::PaymentFailed,
        TopicKind::OrdersInvoiced,
        TopicKind::DeadLetter,
        TopicKind::BridgeDeadLetter,
        TopicKind::AccountsVerification,
        TopicKind::OrdersCancelled,
        TopicKind::OrdersShipped,
        TopicKind::OrdersRefunded,
        TopicKind::OrdersModified,
    ];

    /// The name of the events on this topic, as the bridge's routing configs (`events = [...]`)
    /// and envelopes (`type`) say it; `None` for the dead-letter topics, which carry no event
    /// of their own.
    pub fn event_type(self) -> Option<&'static str> {
        Some(match self {
            TopicKind::OrdersAccepted => "order_accepted",
            TopicKind::OrdersValidated => "order_validated",
            TopicKind::OrdersRejected => "order_rejected",
            TopicKind::OrdersPaid => "order_paid",
            TopicKind::PaymentFailed => "payment_failed",
            TopicKind::OrdersInvoiced => "order_invoiced",
            TopicKind::AccountsVerification => "account_verification",
            TopicKind::OrdersCancelled => "order_cancelled",
            TopicKind::OrdersShipped => "order_shipped",
            TopicKind::OrdersRefunded => "payment_refunded",
            TopicKind::OrdersModified => "order_modified",
            TopicKind::DeadLetter | TopicKind::BridgeDeadLetter => return None,
        })
    }

    pub fn spec(self) -> TopicSpec {
        let (base_name, schema, producer, consumers) = match self {
            TopicKind::OrdersAccepted => (
                "orders.accepted",
                Some("OrderAccepted"),
                "ingest",
                "validation",
            ),
            TopicKind::OrdersValidated => (
                "orders.validated",
                Some("OrderValidated"),
                "validation",
                "payment, bridge",
            ),
            TopicKind::OrdersRejected => (
                "orders.rejected",
                Some("OrderRejected"),
                "validation",
                "bridge",
            ),
            TopicKind::OrdersPaid => (
                "orders.paid",
                Some("OrderPaid"),
                "payment",
                "invoicing, bridge",
            ),
            TopicKind::PaymentFailed => (
                "orders.payment-failed",
                Some("PaymentFailed"),
                "payment",
                "bridge",
            ),
            TopicKind::OrdersInvoiced => (
                "orders.invoiced",
                Some("OrderInvoiced"),
                "invoicing",
                "bridge",
            ),
            TopicKind::DeadLetter => (
                "orderflow.dead-letter",
                None,
                "every stage",
                "operators (`kcat`, replay)",
            ),
            TopicKind::BridgeDeadLetter => (
                "orderflow.bridge.dead-letter",
                None,
                "bridge",
                "operators (`orderflow dlq replay`)",
            ),
            TopicKind::AccountsVerification => (
                "accounts.verification",
                Some("AccountVerificationRequested"),
                "ingest",
                "bridge",
            ),
            TopicKind::OrdersCancelled => (
                "orders.cancelled",
                Some("OrderCancelled"),
                "ingest",
                "payment (refunds), bridge",
            ),
            TopicKind::OrdersRefunded => (
                "orders.refunded",
                Some("PaymentRefunded"),
                "payment",
                "bridge",
            ),
            TopicKind::OrdersModified => (
                "orders.modified",
                Some("OrderModified"),
                "ingest",
                "validation (re-pricing), bridge",
            ),
            TopicKind::OrdersShipped => {
                ("orders.shipped", Some("OrderShipped"), "ingest", "bridge")
            }
        };
        TopicSpec {
            kind: self,
            base_name,
            key: match self {
                TopicKind::AccountsVerification => "customer id",
                _ => "order id (the source message's key on the dead-letter topic)",
            },
            schema,
            producer,
            consumers,
        }
    }
}

/// Topic names with the deployment's prefix applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topics {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full name of a topic.
    pub fn name(&self, kind: TopicKind) -> String {
        format!("{}{}", self.prefix, kind.spec().base_name)
    }

    /// Which catalogue topic a full name is, if any.
    pub fn kind_of(&self, name: &str) -> Option<TopicKind> {
        let base = name.strip_prefix(self.prefix.as_str())?;
        TopicKind::ALL
            .into_iter()
            .find(|kind| kind.spec().base_name == base)
    }

    /// Every topic's full name.
    pub fn all(&self) -> Vec<String> {
        TopicKind::ALL.iter().map(|k| self.name(*k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_names_map_back_to_their_kind() {
        let topics = Topics::new("t1-");
        for kind in TopicKind::ALL {
            let name = topics.name(kind);
            assert!(name.starts_with("t1-"));
            assert_eq!(topics.kind_of(&name), Some(kind));
        }
        assert_eq!(topics.kind_of("orders.accepted"), None);
        assert_eq!(topics.kind_of("t1-unknown"), None);
    }
}
