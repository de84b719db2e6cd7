//! The SES sink: customer emails, rendered locally from our templates ([`templates`]) and sent
//! as simple content through the SES v2 API, paced by a token bucket ([`pacer`]) sized from the
//! account's MaxSendRate. It takes only event types that notify; routing checks that at start.
//!
//! SES has no idempotency key: an email sent again after a crash (between SendEmail and the
//! delivered-marker) reaches the customer twice. Each email carries the event id in its
//! [`EVENT_ID_HEADER`] header, so that a mail pipeline (or a client rule) can drop the repeat.

pub mod config;
pub mod pacer;
pub mod templates;

use async_trait::async_trait;
use aws_sdk_sesv2::{
    types::{Body, Content, Destination, EmailContent, Message, MessageHeader},
    Client,
};
use tracing::{info, warn};

pub use self::config::SesConfig;
use self::{config::sender_address, pacer::Pacer, templates::Templates};
use crate::{aws, config::BuildContext, ConfigError, Delivery, Sink, SinkError};

/// The email header that carries the event id.
pub const EVENT_ID_HEADER: &str = "X-Orderflow-Event-Id";

pub struct SesSink {
    name: String,
    from: String,
    configuration_set: Option<String>,
    templates: Templates,
    pacer: Pacer,
    client: Client,
}

impl SesConfig {
    /// Checks the templates, provisions the sender identity when asked, and sizes the pacing.
    pub async fn build(&self, name: &str, ctx: &BuildContext) -> Result<SesSink, ConfigError> {
        self.validate().map_err(|e| ConfigError::sink(name, e))?;
        let templates = Templates::new(&self.recipient).map_err(|e| ConfigError::sink(name, e))?;
        let client = Client::new(ctx.aws().await?);
        let sender = sender_address(&self.from).unwrap_or_default();
        if ctx.provision {
            provision_identity(&client, sender)
                .await
                .map_err(|e| ConfigError::sink(name, e))?;
        }
        let rate = match self.max_send_rate {
            Some(rate) => rate,
            None => match client.get_account().send().await {
                Ok(account) => account
                    .send_quota
                    .map(|q| q.max_send_rate)
                    .filter(|r| *r > 0.0)
                    .unwrap_or(1.0),
                Err(e) => {
                    warn!(sink = name, error = %aws::sdk_error("GetAccount", &e),
                          "Cannot read the SES send rate; sending 1 email per second.");
                    1.0
                }
            },
        };
        info!(sink = name, from = %self.from, max_send_rate = rate, "SES sink ready.");
        Ok(SesSink {
            name: name.to_string(),
            from: self.from.clone(),
            configuration_set: self.configuration_set.clone(),
            templates,
            pacer: Pacer::new(rate),
            client,
        })
    }
}

/// Creates the sender identity unless it exists. (On AWS it then awaits verification by mail or
/// DNS; emulators take it as verified.)
async fn provision_identity(client: &Client, sender: &str) -> Result<(), String> {
    if client
        .get_email_identity()
        .email_identity(sender)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    match client
        .create_email_identity()
        .email_identity(sender)
        .send()
        .await
    {
        Ok(_) => {
            info!(identity = sender, "SES sender identity created.");
            Ok(())
        }
        Err(e) if aws::error_code(&e) == Some("AlreadyExistsException") => Ok(()),
        Err(e) => Err(aws::sdk_error(&format!("CreateEmailIdentity {sender}"), &e).to_string()),
    }
}

impl SesSink {
    /// The emails' sending rate, per second.
    pub async fn max_send_rate(&self) -> f64 {
        self.pacer.rate().await
    }
}

fn content(data: String) -> Result<Content, SinkError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(|e| SinkError::Rejected(format!("email content: {e}")))
}

#[async_trait]
impl Sink for SesSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, delivery: &Delivery<'_>) -> Result<(), SinkError> {
        let envelope = delivery.envelope;
        let email = self.templates.render(envelope)?;
        let to = self.templates.recipient(envelope)?;
        let message = Message::builder()
            .subject(content(email.subject)?)
            .body(
                Body::builder()
                    .text(content(email.text)?)
                    .html(content(email.html)?)
                    .build(),
            )
            .headers(
                MessageHeader::builder()
                    .name(EVENT_ID_HEADER)
                    .value(&envelope.id)
                    .build()
                    .map_err(|e| SinkError::Rejected(format!("email header: {e}")))?,
            )
            .build();
        self.pacer.wait().await;
        self.client
            .send_email()
            .from_email_address(&self.from)
            .destination(Destination::builder().to_addresses(to).build())
            .content(EmailContent::builder().simple(message).build())
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws::sdk_error("SendEmail", &e))
    }

    /// GetAccount; an endpoint that does not know it (an emulator answering 404) is asked for
    /// the sender identity instead.
    async fn healthcheck(&self) -> Result<(), SinkError> {
        match self.client.get_account().send().await {
            Ok(account) if account.sending_enabled => Ok(()),
            Ok(_) => Err(SinkError::Retriable(
                "SES sending is disabled for the account".into(),
            )),
            Err(e)
                if e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
                    && aws::error_code(&e).is_none() =>
            {
                self.client
                    .get_email_identity()
                    .email_identity(sender_address(&self.from).unwrap_or_default())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| aws::sdk_error("GetEmailIdentity", &e))
            }
            Err(e) => Err(aws::sdk_error("GetAccount", &e)),
        }
    }
}
