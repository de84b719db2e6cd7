//! The webhook sink: an HTTP POST of the event as JSON (by the route's mapping), signed:
//!
//! - `x-orderflow-timestamp`: seconds since the Unix epoch when it was sent;
//! - `x-orderflow-signature`: `sha256=` and the hex HMAC-SHA256, keyed with the sink's secret,
//!   of `<timestamp>.<body>`; the receiver recomputes it and rejects old timestamps (replays);
//! - `x-orderflow-event-id`, `x-orderflow-event-type`: the receiver deduplicates on the id;
//! - `idempotency-key`: the event id again, under the name receivers that implement the IETF
//!   `Idempotency-Key` header look for.
//!
//! A POST repeated after a crash (between the receiver's 2xx and the bridge's delivered-marker)
//! carries the same event id: the receiver sees it twice unless it deduplicates on it.
//!
//! 2xx is taken; the status and transport errors are classified by [`crate::retry`].

pub mod config;

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub use self::config::WebhookConfig;
use crate::{
    retry::{self, Cause},
    ConfigError, Delivery, Sink, SinkError,
};

pub const SIGNATURE_HEADER: &str = "x-orderflow-signature";
pub const TIMESTAMP_HEADER: &str = "x-orderflow-timestamp";
pub const EVENT_ID_HEADER: &str = "x-orderflow-event-id";
pub const EVENT_TYPE_HEADER: &str = "x-orderflow-event-type";
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

pub struct WebhookSink {
    name: String,
    url: String,
    /// The URL as logs and dead-letter reasons show it: scheme, host and port only (webhook
    /// URLs often carry a token in their path, query or user info).
    shown: String,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl WebhookConfig {
    pub fn build(&self, name: &str) -> Result<WebhookSink, ConfigError> {
        self.validate().map_err(|e| ConfigError::sink(name, e))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(self.timeout_secs))
            .connect_timeout(Duration::from_secs(self.timeout_secs.min(5)))
            .build()
            .map_err(|e| ConfigError::sink(name, format!("HTTP client: {e}")))?;
        Ok(WebhookSink {
            name: name.to_string(),
            url: self.url.clone(),
            shown: redacted(&self.url),
            secret: self.secret.as_bytes().to_vec(),
            client,
        })
    }
}

/// `scheme://host[:port]/…` of a URL: what can be shown of it without a secret.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            (None, _) => "<a URL without a host>".into(),
        },
        Err(_) => "<not a URL>".into(),
    }
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, delivery: &Delivery<'_>) -> Result<(), SinkError> {
        let body = delivery.body()?;
        let timestamp = (orderflow_schemas::now_millis() / 1000) as u64;
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(&self.secret, timestamp, &body))
            .header(EVENT_ID_HEADER, &delivery.envelope.id)
            .header(IDEMPOTENCY_KEY_HEADER, &delivery.envelope.id)
            .header(EVENT_TYPE_HEADER, delivery.envelope.event_type.as_str())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let cause = if e.is_builder() {
                    Cause::Request
                } else {
                    Cause::Transport
                };
                // Without its URL, reqwest's error names no secret (it never names a header).
                retry::sink_error(cause, format!("POST {}: {}", self.shown, e.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(retry::sink_error(
            Cause::Response {
                status: status.as_u16(),
                code: None,
            },
            format!("POST {}: {status}", self.shown),
        ))
    }

    /// Nothing cheap and read-only can be asked of an arbitrary endpoint; a webhook is
    /// healthy when it is configured.
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Computed independently (Python's hmac module).
        let sig = signature(b"secret", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert_ne!(sig, signature(b"other", 1_700_000_000, b"{}"));
        assert_ne!(sig, signature(b"secret", 1_700_000_001, b"{}"));
    }
}
