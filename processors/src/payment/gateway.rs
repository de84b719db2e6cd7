//! The payment gateway behind a small trait, and the deterministic simulated gateway that
//! `orderflow run` uses.

use async_trait::async_trait;

/// A charge to make. The idempotency key is the order id: a gateway that sees the same key
/// twice must charge once. Its `Debug` does not show the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub method: String,
    /// The card token, read from the store (never from an event).
    pub token: String,
}

impl std::fmt::Debug for ChargeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargeRequest")
            .field("idempotency_key", &self.idempotency_key)
            .field("amount_cents", &self.amount_cents)
            .field("currency", &self.currency)
            .field("method", &self.method)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What the gateway answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { payment_id: String },
    Declined { reason: String },
}

/// The gateway could not answer; the charge may be retried with the same key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payment gateway unavailable: {0}")]
pub struct GatewayError(pub String);

/// A refund of an approved charge. The idempotency key is the order
/// id: a gateway that sees the same key twice must refund once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub idempotency_key: String,
    /// The charge to refund.
    pub payment_id: String,
    pub amount_cents: i64,
    pub currency: String,
}

#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError>;
    /// Refunds a charge in full; the refund's id.
    async fn refund(&self, request: &RefundRequest) -> Result<String, GatewayError>;
}

/// A gateway that decides from the request alone:
/// - token `tok_decline` → declined (card declined);
/// - token `tok_insufficient_funds` → declined (insufficient funds);
/// - an amount over the limit → declined (amount over limit);
/// - a token that does not start with `tok_` → declined (invalid token);
/// - anything else → approved, with payment id `pay_<order id>`.
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    limit_cents: i64,
}

impl SimulatedGateway {
    pub fn new(limit_cents: i64) -> Self {
        SimulatedGateway { limit_cents }
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, r: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let declined = |reason: &str| {
            Ok(ChargeOutcome::Declined {
                reason: reason.to_string(),
            })
        };
        match r.token.as_str() {
            "tok_decline" => declined("card declined"),
            "tok_insufficient_funds" => declined("insufficient funds"),
            t if !t.starts_with("tok_") => declined("invalid payment token"),
            _ if r.amount_cents > self.limit_cents => declined(&format!(
                "amount {} exceeds the limit of {}",
                r.amount_cents, self.limit_cents
            )),
            _ => Ok(ChargeOutcome::Approved {
                payment_id: format!("pay_{}", r.idempotency_key),
            }),
        }
    }

    /// Always refunds, with refund id `ref_<order id>`.
    async fn refund(&self, r: &RefundRequest) -> Result<String, GatewayError> {
        Ok(format!("ref_{}", r.idempotency_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str, amount_cents: i64) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: "o1".into(),
            amount_cents,
            currency: "EUR".into(),
            method: "card".into(),
            token: token.into(),
        }
    }

    #[tokio::test]
    async fn simulated_gateway_declines_by_token_and_limit() {
        let g = SimulatedGateway::new(10_000);
        assert_eq!(
            g.charge(&request("tok_visa", 10_000)).await.unwrap(),
            ChargeOutcome::Approved {
                payment_id: "pay_o1".into()
            }
        );
        for (token, amount) in [
            ("tok_decline", 100),
            ("tok_insufficient_funds", 100),
            ("4111111111111111", 100),
            ("tok_visa", 10_001),
        ] {
            assert!(
                matches!(
                    g.charge(&request(token, amount)).await.unwrap(),
                    ChargeOutcome::Declined { .. }
                ),
                "{token} {amount}"
            );
        }
    }
}
