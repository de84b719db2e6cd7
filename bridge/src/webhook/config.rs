//! `type = "webhook"`.

use serde::{Deserialize, Serialize};

/// An HTTP endpoint that gets each event as a signed JSON POST.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where to POST (`http://` or `https://`, verified against the system's root certificates).
    pub url: String,
    /// The HMAC-SHA256 key the receiver verifies `x-orderflow-signature` with. Keep it out of
    /// the file: `ORDERFLOW_BRIDGE__SINKS__<NAME>__SECRET`.
    pub secret: String,
    /// Give up on one request after this many seconds; it is then retried.
    pub timeout_secs: u64,
    /// Most deliveries to this sink in flight at once.
    pub max_in_flight: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            timeout_secs: 10,
            max_in_flight: 16,
        }
    }
}

/// Never prints the secret, nor the URL's path, query or user info (they often hold tokens).
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &super::redacted(&self.url))
            .field("secret", &"<redacted>")
            .field("timeout_secs", &self.timeout_secs)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err("url: expected http:// or https://".into());
        }
        if self.secret.is_empty() {
            return Err("needs a secret (ORDERFLOW_BRIDGE__SINKS__<NAME>__SECRET)".into());
        }
        if self.max_in_flight == 0 || self.timeout_secs == 0 {
            return Err("max_in_flight and timeout_secs must be > 0".into());
        }
        Ok(())
    }
}
