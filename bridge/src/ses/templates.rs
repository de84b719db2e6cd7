//! The customer emails, rendered with minijinja from the templates in `templates/`: a subject,
//! a text body and an HTML body (auto-escaped) per kind of email. The context is the event:
//! `order_id`, `customer_id`, `event` (every field of the event), `text` (the
//! notification's one-line summary) and, for `verify_email`, `code` (read from the store: the
//! event has no code); `| money` formats cents as `12.50`.

use minijinja::{AutoEscape, Environment, Value};
use serde::Serialize;

use crate::{Envelope, NotificationKind, SinkError};

/// Subject, text and HTML templates by email name.
const TEMPLATES: &[(&str, &str, &str, &str)] = &[
    (
        "order_confirmed",
        "Your order {{ order_id }} is {% if event.revision %}updated{% else %}confirmed{% endif %}",
        include_str!("templates/order_confirmed.txt"),
        include_str!("templates/order_confirmed.html"),
    ),
    (
        "order_rejected",
        "We could not accept your order {{ order_id }}",
        include_str!("templates/order_rejected.txt"),
        include_str!("templates/order_rejected.html"),
    ),
    (
        "payment_failed",
        "Payment for your order {{ order_id }} failed",
        include_str!("templates/payment_failed.txt"),
        include_str!("templates/payment_failed.html"),
    ),
    (
        "invoice_ready",
        "Invoice {{ event.invoice_number }} for your order {{ order_id }}",
        include_str!("templates/invoice_ready.txt"),
        include_str!("templates/invoice_ready.html"),
    ),
    (
        "order_shipped",
        "Your order {{ order_id }} is on its way",
        include_str!("templates/order_shipped.txt"),
        include_str!("templates/order_shipped.html"),
    ),
    (
        "order_cancelled",
        "Your order {{ order_id }} is cancelled",
        include_str!("templates/order_cancelled.txt"),
        include_str!("templates/order_cancelled.html"),
    ),
    (
        "payment_refunded",
        "Your refund for order {{ order_id }}",
        include_str!("templates/payment_refunded.txt"),
        include_str!("templates/payment_refunded.html"),
    ),
    // Sent to the account's own address (`event.email`).
    (
        "verify_email",
        "Your Orderflow verification code",
        include_str!("templates/verify_email.txt"),
        include_str!("templates/verify_email.html"),
    ),
];

/// The template set for a kind of notification.
pub fn template_name(kind: NotificationKind) -> &'static str {
    match kind {
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

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The compiled templates, plus the recipient template of the sink's config.
pub struct Templates {
    env: Environment<'static>,
}

#[derive(Serialize)]
struct Context<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    event: &'a serde_json::Value,
    text: &'a str,
    /// The verification code (`verify_email` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

impl Templates {
    /// Compiles every template and `recipient` (checked at start, so a typo fails the start,
    /// not every send).
    pub fn new(recipient: &str) -> Result<Templates, String> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.add_filter("money", |cents: i64| {
            Value::from(orderflow_schemas::format_cents(cents))
        });
        for (name, subject, text, html) in TEMPLATES {
            for (suffix, source) in [("subject", subject), ("txt", text), ("html", html)] {
                env.add_template_owned(format!("{name}.{suffix}"), *source)
                    .map_err(|e| format!("template {name}.{suffix}: {e}"))?;
            }
        }
        env.add_template_owned("recipient", recipient.to_string())
            .map_err(|e| format!("recipient {recipient:?}: {e}"))?;
        Ok(Templates { env })
    }

    /// The email for an event that notifies.
    pub fn render(&self, envelope: &Envelope) -> Result<Email, SinkError> {
        let notification = envelope.notification.as_ref().ok_or_else(|| {
            SinkError::Rejected(format!("{} events send no email", envelope.event_type))
        })?;
        let name = template_name(notification.kind);
        let context = Context {
            order_id: &envelope.order_id,
            customer_id: &envelope.customer_id,
            event: &envelope.data,
            text: &notification.text,
            code: envelope.verification_code.as_deref(),
        };
        let render = |suffix: &str| {
            self.env
                .get_template(&format!("{name}.{suffix}"))
                .and_then(|t| t.render(&context))
                .map_err(|e| SinkError::Rejected(format!("rendering {name}.{suffix}: {e}")))
        };
        Ok(Email {
            subject: render("subject")?.trim().to_string(),
            text: render("txt")?,
            html: render("html")?,
        })
    }

    /// The customer's address: the account's own for a verification code (the account is not
    /// verified yet, so the address is the one to prove), else the account's email the bridge
    /// looked up, else (no account) the sink's recipient template.
    pub fn recipient(&self, envelope: &Envelope) -> Result<String, SinkError> {
        if envelope
            .notification
            .as_ref()
            .is_some_and(|n| n.kind == NotificationKind::VerifyEmail)
        {
            return envelope
                .data
                .get("email")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .ok_or_else(|| SinkError::Rejected("the verification event has no email".into()));
        }
        if let Some(email) = &envelope.email {
            return Ok(email.clone());
        }
        let context = Context {
            order_id: &envelope.order_id,
            customer_id: &envelope.customer_id,
            event: &envelope.data,
            text: "",
            code: None,
        };
        self.env
            .get_template("recipient")
            .and_then(|t| t.render(&context))
            .map(|r| r.trim().to_string())
            .map_err(|e| SinkError::Rejected(format!("rendering the recipient: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use orderflow_schemas::{wire, OrderLine, OrderValidated, PaymentMethod, TopicKind};

    use super::*;

    fn validated(customer_id: &str, name: &str) -> Envelope {
        validated_as(customer_id, name, "card", 0)
    }

    fn validated_as(customer_id: &str, name: &str, method: &str, revision: i32) -> Envelope {
        let event = OrderValidated {
            event_id: "o1:validated".into(),
            order_id: "o1".into(),
            customer_id: customer_id.into(),
            lines: vec![OrderLine {
                sku: "MUG-001".into(),
                name: name.into(),
                quantity: 2,
                unit_price_cents: 1250,
                line_total_cents: 2500,
            }],
            currency: "EUR".into(),
            subtotal_cents: 2500,
            tax_cents: 500,
            total_cents: 3000,
            payment: PaymentMethod {
                method: method.into(),
            },
            occurred_at: 0,
            revision,
        };
        Envelope::decode(
            TopicKind::OrdersValidated,
            &orderflow_schemas::SchemaIds::builtin(),
            &wire::encode(&event).unwrap(),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn a_modified_bank_transfer_order_is_an_update_that_says_how_to_pay() {
        let t = Templates::new("{{ customer_id }}@customers.example").unwrap();
        let email = t
            .render(&validated_as("c1", "Orderflow mug", "bank_transfer", 1))
            .unwrap();
        assert_eq!(email.subject, "Your order o1 is updated");
        assert!(
            email.text.contains("your order o1 now holds:"),
            "{}",
            email.text
        );
        assert!(
            email.text.contains("quoting o1 as the reference"),
            "{}",
            email.text
        );
        assert!(
            email.html.contains("quoting <strong>o1</strong>"),
            "{}",
            email.html
        );
        let card = t.render(&validated("c1", "Orderflow mug")).unwrap();
        assert!(!card.text.contains("bank transfer"), "{}", card.text);
    }

    #[test]
    fn a_confirmation_lists_the_lines_and_the_total_in_text_and_html() {
        let t = Templates::new("{{ customer_id }}@customers.example").unwrap();
        let email = t.render(&validated("c1", "Orderflow mug")).unwrap();
        assert_eq!(email.subject, "Your order o1 is confirmed");
        assert!(
            email.text.contains("2 × Orderflow mug: 25.00 EUR"),
            "{}",
            email.text
        );
        assert!(email.text.contains("Total:    30.00 EUR"), "{}", email.text);
        assert!(
            email.html.contains("<strong>30.00 EUR</strong>"),
            "{}",
            email.html
        );
        assert_eq!(
            t.recipient(&validated("c1", "x")).unwrap(),
            "c1@customers.example"
        );
    }

    #[test]
    fn a_customer_with_an_account_is_written_to_at_its_own_address() {
        let t = Templates::new("{{ customer_id }}@customers.example").unwrap();
        let mut envelope = validated("c1", "x");
        envelope.email = Some("ada@example.com".into());
        assert_eq!(t.recipient(&envelope).unwrap(), "ada@example.com");
    }

    #[test]
    fn html_bodies_escape_what_came_from_the_order() {
        let t = Templates::new("{{ customer_id }}@x.example").unwrap();
        let email = t.render(&validated("c1", "<script>mug</script>")).unwrap();
        assert!(email.html.contains("&lt;script&gt;mug"), "{}", email.html);
        assert!(!email.html.contains("<script>"));
        assert!(email.text.contains("<script>mug</script>"));
    }

    #[test]
    fn the_templates_for_later_events_compile() {
        // Shipped and cancelled render from whatever fields their events will have.
        let t = Templates::new("r@x.example").unwrap();
        let context = serde_json::json!({"order_id": "o1", "customer_id": "c1", "text": "",
            "event": {"carrier": "DHL", "tracking_number": "T1", "reason": "asked",
                      "refund_cents": 3000, "currency": "EUR"}});
        let shipped = t
            .env
            .get_template("order_shipped.txt")
            .unwrap()
            .render(&context)
            .unwrap();
        assert!(shipped.contains("DHL, tracking number T1"), "{shipped}");
        let cancelled = t
            .env
            .get_template("order_cancelled.txt")
            .unwrap()
            .render(&context)
            .unwrap();
        assert!(cancelled.contains("We refund 30.00 EUR"), "{cancelled}");
    }

    #[test]
    fn a_verification_code_goes_to_the_accounts_own_address() {
        let event = orderflow_schemas::AccountVerificationRequested {
            event_id: "c1:verify:1".into(),
            customer_id: "c1".into(),
            email: "ada@example.com".into(),
            name: "Ada <Lovelace>".into(),
            expires_at: 15 * 60_000,
            occurred_at: 0,
        };
        let mut envelope = Envelope::decode(
            TopicKind::AccountsVerification,
            &orderflow_schemas::SchemaIds::builtin(),
            &wire::encode(&event).unwrap(),
        )
        .unwrap()
        .unwrap();
        // No email without the code, which comes from the store, not the event.
        assert!(envelope.notification.is_none());
        envelope.attach_verification_code("042137").unwrap();
        assert!(!envelope.data.to_string().contains("042137"));
        let t = Templates::new("{{ customer_id }}@customers.example").unwrap();
        assert_eq!(t.recipient(&envelope).unwrap(), "ada@example.com");
        let email = t.render(&envelope).unwrap();
        assert_eq!(email.subject, "Your Orderflow verification code");
        assert!(email.text.contains("042137"), "{}", email.text);
        assert!(
            email.html.contains("<strong>042137</strong>"),
            "{}",
            email.html
        );
        assert!(
            email.html.contains("Ada &lt;Lovelace&gt;"),
            "{}",
            email.html
        );
        let n = envelope.notification.unwrap();
        assert!(
            n.text.contains("042137 . ") || n.text.contains("042137."),
            "{}",
            n.text
        );
    }

    #[test]
    fn a_broken_recipient_template_fails_at_start() {
        assert!(Templates::new("{{ customer_id").is_err());
    }
}
