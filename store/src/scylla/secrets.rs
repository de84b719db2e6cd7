//! Secrets on their way, on ScyllaDB: card orders' payment tokens and the verification codes
//! the bridge is to email. `store/migrations/scylla/0008_secrets.cql`.
//!
//! A payment token is two static columns of the order's own partition (`payment_token`,
//! `payment_token_expires_at`), set by the logged batch that writes the order, so the order
//! never exists without its token. Both carry a TTL up to the token's expiry: whatever nobody
//! deletes (the order never got charged) goes by itself. A verification email's code is one
//! row of `verification_emails` by event id, with a TTL up to the code's expiry. Reads also
//! check the expiry, so a record reads as gone from `expires_at` on whatever the TTL's
//! rounding.

use scylla::{frame::types::Consistency, statement::prepared::PreparedStatement, value::CqlValue};

use super::{prepare, text, ScyllaStore};
use crate::{PaymentToken, Result, VerificationEmail};

pub(super) struct SecretStatements {
    /// Sets an order's payment token (a statement of the order's batch).
    pub(super) token_put: PreparedStatement,
    token_get: PreparedStatement,
    token_delete: PreparedStatement,
    email_put: PreparedStatement,
    email_get: PreparedStatement,
    email_delete: PreparedStatement,
}

impl SecretStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let q = Consistency::LocalQuorum;
        Ok(SecretStatements {
            token_put: prepare(
                session,
                format!(
                    "UPDATE {ks}.orders USING TTL ? SET payment_token = ?, \
                     payment_token_expires_at = ? WHERE order_id = ?"
                ),
                q,
            )
            .await?,
            token_get: prepare(
                session,
                format!(
                    "SELECT payment_token, payment_token_expires_at FROM {ks}.orders \
                     WHERE order_id = ? LIMIT 1"
                ),
                q,
            )
            .await?,
            token_delete: prepare(
                session,
                format!(
                    "DELETE payment_token, payment_token_expires_at FROM {ks}.orders \
                     WHERE order_id = ?"
                ),
                q,
            )
            .await?,
            email_put: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.verification_emails (event_id, code, expires_at) \
                     VALUES (?, ?, ?) USING TTL ?"
                ),
                q,
            )
            .await?,
            email_get: prepare(
                session,
                format!("SELECT code, expires_at FROM {ks}.verification_emails WHERE event_id = ?"),
                q,
            )
            .await?,
            email_delete: prepare(
                session,
                format!("DELETE FROM {ks}.verification_emails WHERE event_id = ?"),
                q,
            )
            .await?,
        })
    }
}

/// The longest TTL ScyllaDB (and Cassandra) take: 20 years.
const MAX_TTL_SECS: i64 = 630_720_000;

/// The TTL (seconds, at least 1) of a record that must be gone at `expires_at` (at most
/// [`MAX_TTL_SECS`]: a record that never expires lives that long).
pub(super) fn ttl_until(expires_at: i64, now: i64) -> i32 {
    let secs = expires_at.saturating_sub(now).max(0) / 1000 + 1;
    i32::try_from(secs.min(MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

impl ScyllaStore {
    /// The values of [`SecretStatements::token_put`] for an order created at `now`.
    pub(super) fn token_values(
        order_id: &str,
        token: &PaymentToken,
        now: i64,
    ) -> Vec<Option<CqlValue>> {
        vec![
            Some(CqlValue::Int(ttl_until(token.expires_at, now))),
            text(&token.token),
            Some(CqlValue::BigInt(token.expires_at)),
            text(order_id),
        ]
    }

    pub(super) async fn put_payment_token_impl(
        &self,
        order_id: &str,
        token: &PaymentToken,
        now: i64,
    ) -> Result<()> {
        self.run(
            &self.secrets.token_put,
            Self::token_values(order_id, token, now),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn get_payment_token_impl(
        &self,
        order_id: &str,
        now: i64,
    ) -> Result<Option<PaymentToken>> {
        let row = self
            .first::<(Option<String>, Option<i64>)>(&self.secrets.token_get, (order_id,))
            .await?;
        Ok(match row {
            Some((Some(token), Some(expires_at))) if expires_at > now => {
                Some(PaymentToken { token, expires_at })
            }
            _ => None,
        })
    }

    pub(super) async fn delete_payment_token_impl(&self, order_id: &str) -> Result<()> {
        self.run(&self.secrets.token_delete, (order_id,))
            .await
            .map(|_| ())
    }

    pub(super) async fn put_verification_email_impl(
        &self,
        email: &VerificationEmail,
    ) -> Result<()> {
        let ttl = ttl_until(email.expires_at, orderflow_schemas::now_millis());
        self.run(
            &self.secrets.email_put,
            (
                email.event_id.as_str(),
                email.code.as_str(),
                email.expires_at,
                ttl,
            ),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn get_verification_email_impl(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>> {
        let row = self
            .first::<(Option<String>, Option<i64>)>(&self.secrets.email_get, (event_id,))
            .await?;
        Ok(match row {
            Some((Some(code), Some(expires_at))) if expires_at > now => Some(VerificationEmail {
                event_id: event_id.to_string(),
                code,
                expires_at,
            }),
            _ => None,
        })
    }

    pub(super) async fn delete_verification_email_impl(&self, event_id: &str) -> Result<()> {
        self.run(&self.secrets.email_delete, (event_id,))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_run_to_the_expiry_within_what_the_server_takes() {
        assert_eq!(ttl_until(10_000, 0), 11);
        assert_eq!(ttl_until(0, 10_000), 1, "expired: gone at once");
        assert_eq!(ttl_until(i64::MAX, 0), MAX_TTL_SECS as i32, "never expires");
        assert_eq!(ttl_until(i64::MAX, i64::MIN), MAX_TTL_SECS as i32);
    }
}
