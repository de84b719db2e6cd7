//! Accounts: the customer behind the API, its email verification code and its
//! refresh tokens. Secrets are never stored as given: passwords as argon2id PHC strings,
//! verification codes and refresh tokens as SHA-256 digests (hex), computed by the caller. The
//! one exception is a verification code on its way to its owner ([`VerificationEmail`]): kept
//! in clear only until its email is sent, and never longer than the code lives.

use serde::{Deserialize, Serialize};

/// An account. Its `customer_id` is the id orders carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// A UUIDv7.
    pub customer_id: String,
    pub name: String,
    /// Lowercase and trimmed; unique across accounts.
    pub email: String,
    /// `customer` or `admin`.
    pub role: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    pub verified: bool,
    /// A disabled (deleted) account cannot log in; its orders stay.
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A one-time email verification code of an account (one live code per account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationCode {
    pub customer_id: String,
    /// SHA-256 of the code, hex.
    pub code_hash: String,
    pub expires_at: i64,
    /// Wrong tries so far.
    pub attempts: u32,
}

/// The clear code of one verification email, kept only until the bridge has sent the email
/// (then [`crate::AccountStore::delete_verification_email`]) and at most until the code expires. It
/// is keyed by the `AccountVerificationRequested` event's id, which is all the event carries
/// of it; checking a code uses the hash in [`VerificationCode`], never this. Its `Debug` does
/// not show the code.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationEmail {
    /// The id of the event that asks for the email.
    pub event_id: String,
    /// The one-time code, in clear: what the email says.
    pub code: String,
    /// When the code stops working (ms); the record reads as gone from then on.
    pub expires_at: i64,
}

impl std::fmt::Debug for VerificationEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationEmail")
            .field("event_id", &self.event_id)
            .field("code", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Wrong tries after which a verification code is dead.
pub const MAX_VERIFICATION_ATTEMPTS: u32 = 5;

/// What checking a verification code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The code matched: the account is verified now and the code is gone.
    Verified,
    /// The code did not match; `remaining` tries are left (0: the code is dead now).
    Wrong { remaining: u32 },
    /// The code has expired (it is gone now).
    Expired,
    /// The account has no live code (never sent, used, or dead).
    NoCode,
}

/// A refresh token, stored by the SHA-256 of its value. Tokens issued by refreshing one
/// another share its `family_id` (the login they descend from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    pub family_id: String,
    pub customer_id: String,
    pub expires_at: i64,
    /// Set once it was exchanged for a new one.
    #[serde(default)]
    pub used: bool,
}

/// What presenting a refresh token for rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token is used now and the new one (same family) is stored.
    Rotated {
        customer_id: String,
        /// The login the token belongs to (its refresh token family).
        family_id: String,
    },
    /// The token had been used already: someone replayed it. Its whole family is revoked.
    Reused,
    /// The family was revoked (logout, reuse, account deleted).
    Revoked,
    Expired,
    Unknown,
}
