//! What an order event becomes for a customer.

use orderflow_schemas::{
    format_cents, AccountVerificationRequested, DecodeError, OrderCancelled, OrderInvoiced,
    OrderRejected, OrderShipped, OrderValidated, PaymentFailed, PaymentRefunded, SchemaIds,
    TopicKind,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    OrderConfirmed,
    OrderRejected,
    PaymentFailed,
    InvoiceReady,
    /// The one-time code that verifies an account's email.
    VerifyEmail,
    /// The order was cancelled.
    OrderCancelled,
    /// The order is on its way.
    OrderShipped,
    /// A cancelled order's payment came back.
    PaymentRefunded,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::OrderConfirmed => "order_confirmed",
            NotificationKind::OrderRejected => "order_rejected",
            NotificationKind::PaymentFailed => "payment_failed",
            NotificationKind::InvoiceReady => "invoice_ready",
            NotificationKind::VerifyEmail => "verify_email",
            NotificationKind::OrderCancelled => "order_cancelled",
            NotificationKind::OrderShipped => "order_shipped",
            NotificationKind::PaymentRefunded => "payment_refunded",
        }
    }
}

/// A message for a customer about an order (or, `verify_email`, about its account: then
/// `order_id` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The id of the event it came from; sinks deduplicate on it.
    pub id: String,
    pub kind: NotificationKind,
    pub order_id: String,
    pub customer_id: String,
    pub subject: String,
    pub text: String,
    /// When the event happened, ms since the Unix epoch.
    pub occurred_at: i64,
}

impl Notification {
    /// The notification for a message on a catalogue topic (framed with an id from `ids`), or
    /// `None` when that topic's events notify nobody, or (a verification event) not before the
    /// code is read from the store ([`crate::Envelope::attach_verification_code`]).
    pub fn from_message(
        kind: TopicKind,
        ids: &SchemaIds,
        payload: &[u8],
    ) -> Result<Option<Self>, DecodeError> {
        Ok(crate::Envelope::decode(kind, ids, payload)?.and_then(|e| e.notification))
    }

    pub(crate) fn confirmed(e: &OrderValidated) -> Self {
        let items = e
            .lines
            .iter()
            .map(|l| format!("{} × {}", l.quantity, l.name))
            .collect::<Vec<_>>()
            .join(", ");
        let total = format!("Total {} {}.", format_cents(e.total_cents), e.currency);
        // A bank transfer pays it: say how (the order id is the reference).
        let how_to_pay = if e.payment.is_offline() {
            format!(
                " Please pay by bank transfer, quoting {} as the reference.",
                e.order_id
            )
        } else {
            String::new()
        };
        let (subject, text) = if e.revision > 0 {
            (
                format!("Order {} updated", e.order_id),
                format!("Your order now holds: {items}. {total}{how_to_pay}"),
            )
        } else {
            (
                format!("Order {} confirmed", e.order_id),
                format!("We have your order: {items}. {total}{how_to_pay}"),
            )
        };
        Notification {
            subject,
            text,
            id: e.event_id.clone(),
            kind: NotificationKind::OrderConfirmed,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    pub(crate) fn rejected(e: &OrderRejected) -> Self {
        Notification {
            subject: format!("Order {} could not be accepted", e.order_id),
            text: format!("We could not accept your order: {}.", e.reason),
            id: e.event_id.clone(),
            kind: NotificationKind::OrderRejected,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    pub(crate) fn payment_failed(e: &PaymentFailed) -> Self {
        Notification {
            subject: format!("Payment for order {} failed", e.order_id),
            text: format!(
                "The payment of {} {} was not accepted: {}.",
                format_cents(e.amount_cents),
                e.currency,
                e.reason
            ),
            id: e.event_id.clone(),
            kind: NotificationKind::PaymentFailed,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    pub(crate) fn invoice_ready(e: &OrderInvoiced) -> Self {
        Notification {
            subject: format!("Invoice {} for order {}", e.invoice_number, e.order_id),
            text: format!(
                "Your invoice {} is ready: subtotal {}, tax {}, total {} {}.",
                e.invoice_number,
                format_cents(e.subtotal_cents),
                format_cents(e.tax_cents),
                format_cents(e.total_cents),
                e.currency
            ),
            id: e.event_id.clone(),
            kind: NotificationKind::InvoiceReady,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    /// The verification code email; the SES sink sends it to the event's `email`. The code is
    /// not in the event: the bridge reads it from the store ([`crate::BridgeHandler`]).
    pub(crate) fn verify_email(e: &AccountVerificationRequested, code: &str) -> Self {
        let minutes = ((e.expires_at - e.occurred_at) / 60_000).max(1);
        Notification {
            subject: "Your Orderflow verification code".into(),
            text: format!("Your verification code is {code}. It expires in {minutes} minutes."),
            id: e.event_id.clone(),
            kind: NotificationKind::VerifyEmail,
            order_id: String::new(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    // --- Cancel and ship ---

    pub(crate) fn cancelled(e: &OrderCancelled) -> Self {
        let mut text = match &e.reason {
            Some(reason) => format!("Your order is cancelled: {reason}."),
            None => "Your order is cancelled.".to_string(),
        };
        if e.paid && e.refund_cents > 0 {
            text.push_str(&format!(
                " We refund {} {}.",
                format_cents(e.refund_cents),
                e.currency
            ));
        }
        Notification {
            subject: format!("Order {} cancelled", e.order_id),
            text,
            id: e.event_id.clone(),
            kind: NotificationKind::OrderCancelled,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    pub(crate) fn shipped(e: &OrderShipped) -> Self {
        Notification {
            subject: format!("Order {} shipped", e.order_id),
            text: "Your order is on its way.".into(),
            id: e.event_id.clone(),
            kind: NotificationKind::OrderShipped,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }

    pub(crate) fn refunded(e: &PaymentRefunded) -> Self {
        Notification {
            subject: format!("Refund for order {}", e.order_id),
            text: format!(
                "We refunded {} {} for your cancelled order.",
                format_cents(e.amount_cents),
                e.currency
            ),
            id: e.event_id.clone(),
            kind: NotificationKind::PaymentRefunded,
            order_id: e.order_id.clone(),
            customer_id: e.customer_id.clone(),
            occurred_at: e.occurred_at,
        }
    }
}
