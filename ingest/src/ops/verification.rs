//! Sending an account a verification code: a new code's hash for checking it
//! ([`Store::put_verification`], replacing the one before), then the clear code kept under the
//! id of the `AccountVerificationRequested` (for `accounts.verification`) that asks the bridge
//! to email it, with that event queued in the same write ([`Store::put_verification_email`]).
//! The event carries no code.
//!
//! [`Store::put_verification`]: orderflow_store::AccountStore::put_verification
//! [`Store::put_verification_email`]: orderflow_store::AccountStore::put_verification_email

use std::time::Duration;

use orderflow_schemas::{now_millis, AccountVerificationRequested};
use orderflow_store::{Account, OutboxEvent, VerificationCode, VerificationEmail};

use super::{announced, OpError};
use crate::{auth::secrets, ApiState};

/// How long a verification code works.
pub const CODE_TTL: Duration = Duration::from_secs(15 * 60);

/// Issues a code for the account and queues its event for `accounts.verification`. The event
/// carries no code: the store keeps its hash (for checking) and, until the bridge has emailed
/// it, the code itself under the event's id.
pub async fn send_verification_code(state: &ApiState, account: &Account) -> Result<(), OpError> {
    let code = secrets::verification_code().map_err(OpError::NoRandomness)?;
    let now = now_millis();
    let expires_at = now + CODE_TTL.as_millis() as i64;
    let event_id =
        AccountVerificationRequested::event_id_for(&account.customer_id, uuid::Uuid::now_v7());
    state
        .store
        .put_verification(VerificationCode {
            customer_id: account.customer_id.clone(),
            code_hash: secrets::code_digest(&account.customer_id, &code),
            expires_at,
            attempts: 0,
        })
        .await?;
    let event = AccountVerificationRequested {
        event_id: event_id.clone(),
        customer_id: account.customer_id.clone(),
        email: account.email.clone(),
        name: account.name.clone(),
        expires_at,
        occurred_at: now,
    };
    // The code waits in the store for the bridge, and the event that asks for the email is
    // queued in the same write (the outbox): the relay puts it on its topic.
    state
        .store
        .put_verification_email(
            VerificationEmail {
                event_id,
                code,
                expires_at,
            },
            Some(OutboxEvent::of(&event)?),
        )
        .await?;
    announced(state, &account.customer_id);
    Ok(())
}
