//! `type = "ses"`.

use serde::{Deserialize, Serialize};

/// Customer emails through SES (v2 API), rendered from our own templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SesConfig {
    /// The sender, `address` or `Name <address>`: an identity verified in SES (created when
    /// provisioning).
    pub from: String,
    /// The configuration set to send with (event publishing, suppression lists).
    pub configuration_set: Option<String>,
    /// Where a customer's emails go: a template over the event's `customer_id` and `order_id`.
    /// Orders carry a customer id, not an address: until the customers resource
    /// gives addresses, this maps the id to one.
    pub recipient: String,
    /// Emails per second. Default: the account's MaxSendRate (GetAccount) at start, or 1 when
    /// that cannot be read.
    pub max_send_rate: Option<f64>,
    /// Most deliveries to this sink in flight at once.
    pub max_in_flight: usize,
}

impl Default for SesConfig {
    fn default() -> Self {
        SesConfig {
            from: String::new(),
            configuration_set: None,
            recipient: "{{ customer_id }}@customers.example".into(),
            max_send_rate: None,
            max_in_flight: 8,
        }
    }
}

impl SesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if sender_address(&self.from).is_none() {
            return Err(format!("from {:?}: expected an email address", self.from));
        }
        if let Some(rate) = self.max_send_rate {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err("max_send_rate must be a positive number".into());
            }
        }
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be > 0".into());
        }
        Ok(())
    }
}

/// The address in `address` or `Name <address>`.
pub fn sender_address(from: &str) -> Option<&str> {
    let address = match (from.find('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => &from[open + 1..close],
        _ => from,
    }
    .trim();
    (address.contains('@') && !address.contains(char::is_whitespace)).then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_address_is_found_with_or_without_a_name() {
        assert_eq!(sender_address("a@b.example"), Some("a@b.example"));
        assert_eq!(
            sender_address("Orderflow <orders@shop.example>"),
            Some("orders@shop.example")
        );
        assert_eq!(sender_address("nobody"), None);
        assert_eq!(sender_address(""), None);
    }
}
