//! What the bridge hands its sinks: a decoded event with its metadata (the [`Envelope`]), and
//! the customer [`Notification`] it becomes, when it becomes one.

use orderflow_schemas::{
    wire, AccountVerificationRequested, DecodeError, Event, OrderAccepted, OrderCancelled,
    OrderInvoiced, OrderModified, OrderPaid, OrderRejected, OrderShipped, OrderValidated,
    PaymentFailed, PaymentRefunded, SchemaIds, TopicKind,
};
use serde::{Deserialize, Serialize};

use crate::Notification;

/// An event type the bridge can route: a catalogue topic that carries events, named as
/// [`TopicKind::event_type`] says (in routing configs, `events = [...]`, and envelopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(TopicKind);

impl EventType {
    /// Email verification codes to send.
    pub const ACCOUNT_VERIFICATION: EventType = EventType(TopicKind::AccountsVerification);

    /// Every event type, in catalogue order.
    pub fn all() -> impl Iterator<Item = EventType> {
        TopicKind::ALL.into_iter().filter_map(EventType::of_topic)
    }

    /// The event type on a topic (`None` for the dead-letter topics).
    pub fn of_topic(kind: TopicKind) -> Option<EventType> {
        kind.event_type().map(|_| EventType(kind))
    }

    pub fn as_str(self) -> &'static str {
        self.0
            .event_type()
            .expect("an event type is made only of a topic that carries events")
    }

    /// The topic events of this type are on.
    pub fn topic(self) -> TopicKind {
        self.0
    }

    /// Whether events of this type become a customer notification (an email).
    pub fn notifies(self) -> bool {
        matches!(
            self.0,
            TopicKind::OrdersValidated
                | TopicKind::OrdersRejected
                | TopicKind::PaymentFailed
                | TopicKind::OrdersInvoiced
                | TopicKind::AccountsVerification
                | TopicKind::OrdersCancelled
                | TopicKind::OrdersShipped
                | TopicKind::OrdersRefunded
        )
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        EventType::all()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = EventType::all().map(EventType::as_str).collect();
                serde::de::Error::custom(format!(
                    "unknown event type `{name}`, expected one of {}",
                    known.join(", ")
                ))
            })
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
    /// The event's fields, as JSON; `null` when decoded for a sink that does not read them
    /// ([`Envelope::decode_without_data`]).
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
        Self::decode_as(kind, ids, payload, true)
    }

    /// As [`Envelope::decode`], but without the event's fields as JSON (`data` is `null`): for
    /// a sink that reads only the notification and the metadata ([`Sink::reads_event_data`]).
    ///
    /// [`Sink::reads_event_data`]: crate::Sink::reads_event_data
    pub fn decode_without_data(
        kind: TopicKind,
        ids: &SchemaIds,
        payload: &[u8],
    ) -> Result<Option<Envelope>, DecodeError> {
        Self::decode_as(kind, ids, payload, false)
    }

    fn decode_as(
        kind: TopicKind,
        ids: &SchemaIds,
        payload: &[u8],
        with_data: bool,
    ) -> Result<Option<Envelope>, DecodeError> {
        let Some(t) = EventType::of_topic(kind) else {
            return Ok(None);
        };
        let p = (ids, payload, with_data);
        Ok(Some(match kind {
            TopicKind::OrdersAccepted => Self::of::<OrderAccepted>(t, p, |_| None)?,
            TopicKind::OrdersValidated => {
                Self::of::<OrderValidated>(t, p, |e| Some(Notification::confirmed(e)))?
            }
            TopicKind::OrdersRejected => {
                Self::of::<OrderRejected>(t, p, |e| Some(Notification::rejected(e)))?
            }
            TopicKind::OrdersPaid => Self::of::<OrderPaid>(t, p, |_| None)?,
            TopicKind::PaymentFailed => {
                Self::of::<PaymentFailed>(t, p, |e| Some(Notification::payment_failed(e)))?
            }
            TopicKind::OrdersInvoiced => {
                Self::of::<OrderInvoiced>(t, p, |e| Some(Notification::invoice_ready(e)))?
            }
            // Its email waits for the code, which is not in the event:
            // [`Envelope::attach_verification_code`].
            TopicKind::AccountsVerification => {
                Self::of::<AccountVerificationRequested>(t, p, |_| None)?
            }
            TopicKind::OrdersCancelled => {
                Self::of::<OrderCancelled>(t, p, |e| Some(Notification::cancelled(e)))?
            }
            TopicKind::OrdersShipped => {
                Self::of::<OrderShipped>(t, p, |e| Some(Notification::shipped(e)))?
            }
            TopicKind::OrdersRefunded => {
                Self::of::<PaymentRefunded>(t, p, |e| Some(Notification::refunded(e)))?
            }
            TopicKind::OrdersModified => Self::of::<OrderModified>(t, p, |_| None)?,
            // They carry no event: `of_topic` answered `None` above.
            TopicKind::DeadLetter | TopicKind::BridgeDeadLetter => return Ok(None),
        }))
    }

    fn of<E: Event>(
        event_type: EventType,
        (ids, payload, with_data): (&SchemaIds, &[u8], bool),
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
            data: if with_data {
                serde_json::to_value(&event).unwrap_or_default()
            } else {
                serde_json::Value::Null
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_that_carries_events_is_one_event_type_by_its_name() {
        let names: Vec<&str> = EventType::all().map(EventType::as_str).collect();
        assert_eq!(names.len(), TopicKind::ALL.len() - 2, "{names:?}");
        for t in EventType::all() {
            assert_eq!(EventType::of_topic(t.topic()), Some(t));
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, t.as_str());
            assert_eq!(serde_json::from_value::<EventType>(json).unwrap(), t);
        }
        assert_eq!(EventType::of_topic(TopicKind::DeadLetter), None);
        assert_eq!(EventType::of_topic(TopicKind::BridgeDeadLetter), None);
        assert_eq!(
            EventType::ACCOUNT_VERIFICATION.as_str(),
            "account_verification"
        );
        assert_eq!(
            EventType::of_topic(TopicKind::OrdersRefunded).map(EventType::as_str),
            Some("payment_refunded")
        );
        let e = serde_json::from_value::<EventType>("order_acepted".into()).unwrap_err();
        assert!(e.to_string().contains("order_accepted"), "{e}");
    }
}
