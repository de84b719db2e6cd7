//! Event types. Each mirrors one `.avsc` file field for field; the round-trip tests below keep
//! them in step.

use std::sync::OnceLock;

use apache_avro::Schema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::topics::TopicKind;

/// An event type: its Avro schema, its built-in schema id, and the topic it lives on.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The Avro record name (also the schema subject's record name).
    const NAME: &'static str;
    /// The built-in schema id: what messages are framed with when no registry is configured,
    /// and what a fresh embedded registry assigns. With a registry, the id is the registry's
    /// (`registry::SchemaIds`).
    const SCHEMA_ID: u32;
    /// The topic this event type is produced to.
    const TOPIC: TopicKind;

    /// The parsed Avro schema.
    fn schema() -> &'static Schema;
    /// The Avro schema as JSON text, as shipped in `schemas/avro/`.
    fn schema_text() -> &'static str;
    /// The order the event is about (empty for account events).
    fn order_id(&self) -> &str;
    /// The message key: the order id, or the customer id for account events.
    fn key(&self) -> &str {
        self.order_id()
    }
    /// The customer the order belongs to.
    fn customer_id(&self) -> &str;
    /// The id consumers deduplicate on.
    fn event_id(&self) -> &str;
    /// When the step happened (ms since the epoch).
    fn occurred_at(&self) -> i64;
}

macro_rules! event {
    ($ty:ident, $name:literal, $id:expr, $topic:expr, $file:literal) => {
        impl Event for $ty {
            const NAME: &'static str = $name;
            const SCHEMA_ID: u32 = $id;
            const TOPIC: TopicKind = $topic;

            fn schema() -> &'static Schema {
                static SCHEMA: OnceLock<Schema> = OnceLock::new();
                SCHEMA.get_or_init(|| {
                    Schema::parse_str(Self::schema_text()).expect(concat!(
                        "schemas/avro/",
                        $file,
                        " is valid Avro"
                    ))
                })
            }

            fn schema_text() -> &'static str {
                include_str!(concat!("../avro/", $file))
            }

            fn order_id(&self) -> &str {
                &self.order_id
            }

            fn customer_id(&self) -> &str {
                &self.customer_id
            }

            fn event_id(&self) -> &str {
                &self.event_id
            }

            fn occurred_at(&self) -> i64 {
                self.occurred_at
            }
        }
    };
}

/// The status an order is in, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Accepted,
    Validated,
    Rejected,
    Paid,
    PaymentFailed,
    Invoiced,
    /// Cancelled before shipping: final.
    Cancelled,
    /// Shipped by an admin: final.
    Shipped,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Accepted => "accepted",
            OrderStatus::Validated => "validated",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Paid => "paid",
            OrderStatus::PaymentFailed => "payment_failed",
            OrderStatus::Invoiced => "invoiced",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Shipped => "shipped",
        }
    }

    /// The position of the status in the pipeline; a later step never gives way to an earlier one.
    pub fn rank(self) -> u8 {
        match self {
            OrderStatus::Accepted => 0,
            OrderStatus::Validated => 1,
            OrderStatus::Rejected | OrderStatus::Paid | OrderStatus::PaymentFailed => 2,
            OrderStatus::Invoiced => 3,
            // Final, and exclusive (the store lets only one of them happen): no late pipeline
            // step moves an order out of them.
            OrderStatus::Cancelled | OrderStatus::Shipped => 4,
        }
    }

    /// Whether the order's life is over (cancelled or shipped).
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Shipped)
    }

    /// The suffix of event ids for this step: `<order id>:<step>`.
    pub fn event_id(self, order_id: &str) -> String {
        format!("{order_id}:{}", self.as_str())
    }

    /// The event id of this step for an order's revision: as
    /// [`OrderStatus::event_id`] for revision 0, with `:r<revision>` after it for the others,
    /// so each revision's step is its own event.
    pub fn revision_event_id(self, order_id: &str, revision: i32) -> String {
        match revision {
            0 => self.event_id(order_id),
            r => format!("{order_id}:{}:r{r}", self.as_str()),
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requested item of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i32,
}

/// Where an order ships to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Address {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

/// How an order is paid: the method's name. The gateway's card token never travels on a
/// topic: the API keeps it in the store with the order, and the payment stage reads it there
/// by order id (`Store::get_payment_token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub method: String,
}

impl PaymentMethod {
    /// The method paid offline: the payment stage charges nothing; the order waits
    /// for an admin to record the transfer, and its quantities may change until then.
    pub const BANK_TRANSFER: &'static str = "bank_transfer";

    /// Whether the order is paid offline ([`PaymentMethod::BANK_TRANSFER`]).
    pub fn is_offline(&self) -> bool {
        self.method == Self::BANK_TRANSFER
    }
}

/// A priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAccepted {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
    pub payment: PaymentMethod,
    pub occurred_at: i64,
}
event!(
    OrderAccepted,
    "io.orderflow.events.OrderAccepted",
    1,
    TopicKind::OrdersAccepted,
    "order_accepted.avsc"
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderValidated {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub payment: PaymentMethod,
    pub occurred_at: i64,
    /// The order's revision these lines are for (0 as placed, +1 per modification).
    #[serde(default)]
    pub revision: i32,
}
event!(
    OrderValidated,
    "io.orderflow.events.OrderValidated",
    2,
    TopicKind::OrdersValidated,
    "order_validated.avsc"
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub reason_code: String,
    pub reason: String,
    pub occurred_at: i64,
}
event!(
    OrderRejected,
    "io.orderflow.events.OrderRejected",
    3,
    TopicKind::OrdersRejected,
    "order_rejected.avsc"
);

/// Why validation rejected an order: [`OrderRejected::reason_code`] on the wire, a string there
/// (the Avro schema keeps strings, so a code this build does not know still decodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    /// A SKU the catalogue does not have, or no longer sells.
    UnknownSku,
    /// Fewer units available than the order asks for.
    OutOfStock,
    /// The order itself is not valid (a quantity that is not positive, mixed currencies).
    InvalidOrder,
}

impl RejectionCode {
    pub const ALL: [RejectionCode; 3] = [
        RejectionCode::UnknownSku,
        RejectionCode::OutOfStock,
        RejectionCode::InvalidOrder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionCode::UnknownSku => "unknown_sku",
            RejectionCode::OutOfStock => "out_of_stock",
            RejectionCode::InvalidOrder => "invalid_order",
        }
    }
}

impl std::fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RejectionCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RejectionCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| format!("unknown rejection code {s:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub occurred_at: i64,
}
event!(
    OrderPaid,
    "io.orderflow.events.OrderPaid",
    4,
    TopicKind::OrdersPaid,
    "order_paid.avsc"
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub reason: String,
    pub occurred_at: i64,
}
event!(
    PaymentFailed,
    "io.orderflow.events.PaymentFailed",
    5,
    TopicKind::PaymentFailed,
    "payment_failed.avsc"
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderInvoiced {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub invoice_number: String,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub occurred_at: i64,
}
event!(
    OrderInvoiced,
    "io.orderflow.events.OrderInvoiced",
    6,
    TopicKind::OrdersInvoiced,
    "order_invoiced.avsc"
);

// --- Account events --------------------------------------------------------

/// An account needs its email verified: the bridge emails it the code (`verify_email`). The
/// code is not in the event: the bridge reads it from the store under `event_id`
/// (`Store::get_verification_email`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountVerificationRequested {
    pub event_id: String,
    pub customer_id: String,
    pub email: String,
    pub name: String,
    pub expires_at: i64,
    pub occurred_at: i64,
}

impl AccountVerificationRequested {
    /// The event id of one verification request of an account: `<customer id>:verify:<request>`,
    /// `request` telling the account's requests apart (a UUIDv7).
    pub fn event_id_for(customer_id: &str, request: impl std::fmt::Display) -> String {
        format!("{customer_id}:verify:{request}")
    }
}

impl Event for AccountVerificationRequested {
    const NAME: &'static str = "io.orderflow.events.AccountVerificationRequested";
    // The next free id after the order events (ids are contiguous:
    // a fresh registry assigns them in catalogue order).
    const SCHEMA_ID: u32 = 7;
    const TOPIC: TopicKind = TopicKind::AccountsVerification;

    fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            Schema::parse_str(Self::schema_text())
                .expect("schemas/avro/account_verification.avsc is valid Avro")
        })
    }

    fn schema_text() -> &'static str {
        include_str!("../avro/account_verification.avsc")
    }

    fn order_id(&self) -> &str {
        ""
    }

    fn key(&self) -> &str {
        &self.customer_id
    }

    fn customer_id(&self) -> &str {
        &self.customer_id
    }

    fn event_id(&self) -> &str {
        &self.event_id
    }

    fn occurred_at(&self) -> i64 {
        self.occurred_at
    }
}
// --- end of account events ----------------------------------------------------------------------

// --- Order lifecycle events ------------------------------------------

/// An order cancelled before it shipped; its stock is released, and a refund is due when
/// `paid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub reason: Option<String>,
    pub paid: bool,
    pub refund_cents: i64,
    pub currency: String,
    pub occurred_at: i64,
}
event!(
    OrderCancelled,
    "io.orderflow.events.OrderCancelled",
    8,
    TopicKind::OrdersCancelled,
    "order_cancelled.avsc"
);

/// An order an admin marked as shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub occurred_at: i64,
}
event!(
    OrderShipped,
    "io.orderflow.events.OrderShipped",
    9,
    TopicKind::OrdersShipped,
    "order_shipped.avsc"
);
/// The approved charge of a cancelled order, refunded (by the payment stage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub refund_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub occurred_at: i64,
}
event!(
    PaymentRefunded,
    "io.orderflow.events.PaymentRefunded",
    10,
    TopicKind::OrdersRefunded,
    "payment_refunded.avsc"
);

/// An unpaid order whose quantities changed: its reservation holds the new
/// quantities already; validation re-prices it and produces `OrderValidated` for `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderModified {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub revision: i32,
    pub items: Vec<OrderItem>,
    pub occurred_at: i64,
}
event!(
    OrderModified,
    "io.orderflow.events.OrderModified",
    11,
    TopicKind::OrdersModified,
    "order_modified.avsc"
);

impl PaymentRefunded {
    /// The event id of an order's refund: `<order id>:refunded`.
    pub fn event_id_for(order_id: &str) -> String {
        format!("{order_id}:refunded")
    }
}

impl OrderModified {
    /// The event id of an order's `revision`: `<order id>:modified:r<revision>`.
    pub fn event_id_for(order_id: &str, revision: i32) -> String {
        format!("{order_id}:modified:r{revision}")
    }
}
// --- end of order lifecycle events ---------------------------------------------------------------

/// Every schema of the catalogue: (record name, schema id, topic, schema text).
pub fn catalogue() -> [(&'static str, u32, TopicKind, &'static str); 11] {
    fn row<E: Event>() -> (&'static str, u32, TopicKind, &'static str) {
        (E::NAME, E::SCHEMA_ID, E::TOPIC, E::schema_text())
    }
    [
        row::<OrderAccepted>(),
        row::<OrderValidated>(),
        row::<OrderRejected>(),
        row::<OrderPaid>(),
        row::<PaymentFailed>(),
        row::<OrderInvoiced>(),
        row::<AccountVerificationRequested>(),
        row::<OrderCancelled>(),
        row::<OrderShipped>(),
        row::<PaymentRefunded>(),
        row::<OrderModified>(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_keep_their_form() {
        assert_eq!(OrderStatus::Accepted.event_id("o1"), "o1:accepted");
        assert_eq!(
            OrderStatus::PaymentFailed.event_id("o1"),
            "o1:payment_failed"
        );
        assert_eq!(
            OrderStatus::Validated.revision_event_id("o1", 0),
            "o1:validated"
        );
        assert_eq!(
            OrderStatus::Validated.revision_event_id("o1", 2),
            "o1:validated:r2"
        );
        assert_eq!(OrderModified::event_id_for("o1", 1), "o1:modified:r1");
        assert_eq!(PaymentRefunded::event_id_for("o1"), "o1:refunded");
        assert_eq!(
            AccountVerificationRequested::event_id_for("c1", 7),
            "c1:verify:7"
        );
    }

    #[test]
    fn rejection_codes_read_back_from_their_strings() {
        for code in RejectionCode::ALL {
            assert_eq!(code.as_str().parse::<RejectionCode>(), Ok(code));
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
        assert!("inactive_product".parse::<RejectionCode>().is_err());
    }
}
