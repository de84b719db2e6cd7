//! What the bridge hands its sinks: a decoded event with its metadata (the [`Envelope`]), and
//! the customer [`Notification`] it becomes, when it becomes one.

use orderflow_schemas::{
    wire, AccountVerificationRequested, DecodeError, Event, OrderAccepted, OrderCancelled,
    OrderInvoiced, OrderModified, OrderPaid, OrderRejected, OrderShipped, OrderValidated,
    PaymentFailed, PaymentRefunded, SchemaIds, TopicKind,
};
use serde::{Deserialize, Serialize};

use crate::Notification;

/// The event types the bridge can route, named as in routing configs (`events = [...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    OrderAccepted,
    OrderValidated,
    OrderRejected,
    OrderPaid,
    PaymentFailed,
    OrderInvoiced,
    /// An email verification code to send.
    AccountVerification,
    /// An order was cancelled.
    OrderCancelled,
    /// An order was shipped.
    OrderShipped,
    /// A cancelled order's charge was refunded.
    PaymentRefunded,
    /// An unpaid order's quantities changed; its customer hears of it through the
    /// re-priced `order_validated` that follows.
    OrderModified,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::OrderAccepted,
        EventType::OrderValidated,
        EventType::OrderRejected,
        EventType::OrderPaid,
        EventType::PaymentFailed,
        EventType::OrderInvoiced,
        EventType::AccountVerification,
        EventType::OrderCancelled,
        EventType::OrderShipped,
        EventType::PaymentRefunded,
        EventType::OrderModified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderAccepted => "order_accepted",
            EventType::OrderValidated => "order_validated",
            EventType::OrderRejected => "order_rejected",
            EventType::OrderPaid => "order_paid",
            EventType::PaymentFailed => "payment_failed",
            EventType::OrderInvoiced => "order_invoiced",
            EventType::AccountVerification => "account_verification",
            EventType::OrderCancelled => "order_cancelled",
            EventType::OrderShipped => "order_shipped",
            EventType::PaymentRefunded => "payment_refunded",
            EventType::OrderModified => "order_modified",
        }
    }

    /// The topic events of this type are on.
    pub fn topic(self) -> TopicKind {
        match self {
            EventType::OrderAccepted => TopicKind::OrdersAccepted,
            EventType::OrderValidated => TopicKind::OrdersValidated,
            EventType::OrderRejected => TopicKind::OrdersRejected,
            EventType::OrderPaid => TopicKind::OrdersPaid,
            EventType::PaymentFailed => TopicKind::PaymentFailed,
            EventType::OrderInvoiced => TopicKind::OrdersInvoiced,
            EventType::AccountVerification => TopicKind::AccountsVerification,
            EventType::OrderCancelled => TopicKind::OrdersCancelled,
            EventType::OrderShipped => TopicKind::OrdersShipped,
            EventType::PaymentRefunded => TopicKind::OrdersRefunded,
            EventType::OrderModified => TopicKind::OrdersModified,
        }
    }

    /// The event type on a topic (`None` for the dead-letter topics).
    pub fn of_topic(kind: TopicKind) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.topic() == kind)
    }

    /// Whether events of this type become a customer notification (an email).
    pub fn notifies(self) -> bool {
        matches!(
            self,
            EventType::OrderValidated
                | EventType::OrderRejected
                | EventType::PaymentFailed
                | EventType::OrderInvoiced
                | EventType::AccountVerification
                | EventType::OrderCancelled
                | EventType::OrderShipped
                | EventType::PaymentRefunded
        )
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded event. Serialized as the body of the `event` mapping:
/// `{"type", "id", "order_id", "customer_id", "occurred_at", "schema_id", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The event id (`<order id>:<step>`): the deduplication key everywhere downstream.
    pub id: String,
    /// Empty for account events.
    pub order_id: String,
    pub customer_id: String,
    /// When it happened, ms since the Unix epoch.
    pub occurred_at: i64,
    /// The Avro schema id it was framed with.
    pub schema_id: u32,
    /// The event's fields, as JSON.
    pub data: serde_json::Value,
    /// The customer notification it becomes, if any.
    #[serde(skip)]
    pub notification: Option<Notification>,
    /// The customer's account email, when it has an account: the bridge looks it up before
    /// delivering a notification ([`crate::BridgeHandler`]).
    #[serde(skip)]
    pub email: Option<String>,
    /// The one-time code a verification email carries, read from the store by the event's id
    /// ([`Envelope::attach_verification_code`]); never part of the event (`data`).
    #[serde(skip)]
    pub verification_code: Option<String>,
}

impl Envelope {
    /// Decodes a message of a catalogue topic (`None` for topics that carry no event).
    pub fn decode(
        kind: TopicKind,
        ids: &SchemaIds,
        payload: &[u8],
    ) -> Result<Option<Envelope>, DecodeError> {
        let Some(event_type) = EventType::of_topic(kind) else {
            return Ok(None);
        };
        let t = event_type;
        let p = (ids, payload);
        Ok(Some(match event_type {
            EventType::OrderAccepted => Self::of::<OrderAccepted>(t, p, |_| None)?,
            EventType::OrderValidated => {
                Self::of::<OrderValidated>(t, p, |e| Some(Notification::confirmed(e)))?
            }
            EventType::OrderRejected => {
                Self::of::<OrderRejected>(t, p, |e| Some(Notification::rejected(e)))?
            }
            EventType::OrderPaid => Self::of::<OrderPaid>(t, p, |_| None)?,
            EventType::PaymentFailed => {
                Self::of::<PaymentFailed>(t, p, |e| Some(Notification::payment_failed(e)))?
            }
            EventType::OrderInvoiced => {
                Self::of::<OrderInvoiced>(t, p, |e| Some(Notification::invoice_ready(e)))?
            }
            // Its email waits for the code, which is not in the event:
            // [`Envelope::attach_verification_code`].
            EventType::AccountVerification => {
                Self::of::<AccountVerificationRequested>(t, p, |_| None)?
            }
            EventType::OrderCancelled => {
                Self::of::<OrderCancelled>(t, p, |e| Some(Notification::cancelled(e)))?
            }
            EventType::OrderShipped => {
                Self::of::<OrderShipped>(t, p, |e| Some(Notification::shipped(e)))?
            }
            EventType::PaymentRefunded => {
                Self::of::<PaymentRefunded>(t, p, |e| Some(Notification::refunded(e)))?
            }
            EventType::OrderModified => Self::of::<OrderModified>(t, p, |_| None)?,
        }))
    }

    fn of<E: Event>(
        event_type: EventType,
        (ids, payload): (&SchemaIds, &[u8]),
        notification: impl FnOnce(&E) -> Option<Notification>,
    ) -> Result<Envelope, DecodeError> {
        let event: E = wire::decode_with(ids, payload)?;
        Ok(Envelope {
            event_type,
            id: event.event_id().to_string(),
            order_id: event.order_id().to_string(),
            customer_id: event.customer_id().to_string(),
            occurred_at: event.occurred_at(),
            // The id the message was framed with (the registry's, when there is one).
            schema_id: wire::schema_id(payload)?,
            // Serializing a plain struct of strings, numbers and lists cannot fail.
            data: serde_json::to_value(&event).unwrap_or_default(),
            notification: notification(&event),
            email: None,
            verification_code: None,
        })
    }

    /// Gives a verification event the code its email is to carry: the notification (the email)
    /// says it from now on, and the email templates get it as `code`. The event itself (`data`,
    /// what the `event` mapping sends) stays without it.
    pub fn attach_verification_code(&mut self, code: &str) -> Result<(), DecodeError> {
        let event: AccountVerificationRequested = serde_json::from_value(self.data.clone())
            .map_err(|e| DecodeError::Avro {
                name: AccountVerificationRequested::NAME,
                message: e.to_string(),
            })?;
        self.notification = Some(Notification::verify_email(&event, code));
        self.verification_code = Some(code.to_string());
        Ok(())
    }
}
