//! Who is calling: access tokens, roles and the [`Caller`] extractor every protected route
//! takes.
//!
//! # Layout
//! - [`token`]: signing and checking access JWTs (`HS256`).
//! - [`routes`]: register, verify, resend, login, refresh, logout (`/v1/auth/*`).
//! - [`password`]: argon2id password hashes, in `spawn_blocking`.
//! - [`secrets`]: refresh tokens and verification codes, stored as SHA-256 digests.
//! - [`limit`]: the in-process rate limits of login, register, verify and resend (per email,
//!   per client IP).
//! - [`proxy`]: the client IP those limits key on (`X-Forwarded-For` from trusted proxies).
//! - [`sessions`]: whether the login behind an access token is still live.
//! - [`Caller`]: the account behind a request's `Authorization: Bearer <token>`. A missing,
//!   malformed, tampered or expired token is a `401` (with `WWW-Authenticate: Bearer`); a
//!   valid token without the right role is a `403` ([`Caller::require_admin`]); a customer
//!   asking for another customer's resource gets `404`, as if it did not exist
//!   ([`Caller::may_access`]).
//!
//! The secret comes from `--jwt-secret` / `ORDERFLOW_JWT_SECRET`; `orderflow run` without one
//! generates a random secret once and keeps it in its data dir. No secret is built in.
//!
//! Every token the API accepts names its login (`sid`, the refresh token family a login
//! created), so every token can be revoked: a token without one, or whose login the store does
//! not know, is refused.

pub mod limit;
pub mod password;
pub mod proxy;
pub mod routes;
pub mod secrets;
pub mod sessions;
pub mod token;

use std::{sync::Arc, time::Duration};

use axum::{extract::FromRequestParts, http::request::Parts};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use token::{Claims, TokenError, TokenKeys, ISSUER};

use crate::{problem::Problem, ApiState};

/// Shortest secret the services accept (bytes).
pub const MIN_SECRET_LEN: usize = 32;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Orders for itself, reads and edits its own account.
    Customer,
    /// Everything: every customer, the catalogue, shipping.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
        }
    }
}

/// How the API signs and times tokens.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub keys: TokenKeys,
    /// Lifetime of an access token.
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one).
    pub refresh_ttl: Duration,
    /// The proxies whose `X-Forwarded-For` names the client IP ([`proxy`]).
    pub trusted_proxies: proxy::TrustedProxies,
}

impl AuthSettings {
    pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
    pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

    pub fn new(secret: &[u8]) -> Self {
        AuthSettings {
            keys: TokenKeys::new(secret),
            access_ttl: Self::DEFAULT_ACCESS_TTL,
            refresh_ttl: Self::DEFAULT_REFRESH_TTL,
            trusted_proxies: proxy::TrustedProxies::none(),
        }
    }

    /// Settings with a random key of this process's own: tokens it signs are good nowhere
    /// else and die with it.
    pub fn ephemeral() -> Self {
        let mut key = [0u8; 32];
        // An OS without randomness is one where nothing here can be safe: stop rather than
        // sign with a guessable key.
        getrandom::fill(&mut key).expect("the operating system provides randomness");
        Self::new(&key)
    }

    /// A signed access token of a login (`session_id`: its refresh token family): it stops
    /// working within [`sessions::Sessions::RECHECK`] of the login ending.
    pub fn session_token(
        &self,
        customer_id: &str,
        role: Role,
        session_id: &str,
        now: i64,
    ) -> String {
        self.sign(customer_id, role, Some(session_id.to_string()), now)
    }

    fn sign(&self, customer_id: &str, role: Role, sid: Option<String>, now: i64) -> String {
        self.keys.sign(&Claims {
            sub: customer_id.to_string(),
            role,
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: ISSUER.to_string(),
            sid,
        })
    }
}

/// Secrets that were published (built into earlier versions, or a fixed fallback of the
/// shipped deploy files): whoever read them could sign any token.
const PUBLISHED_SECRETS: [&str; 2] = [
    "orderflow-development-secret-do-not-use-in-production",
    "compose-local-only-secret-change-me-0123456789",
];

/// Checks a secret a service is asked to sign with: refused when shorter than
/// [`MIN_SECRET_LEN`] or published.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if PUBLISHED_SECRETS.contains(&secret) {
        return Err(
            "this JWT secret was published with earlier versions of Orderflow: set \
             --jwt-secret / ORDERFLOW_JWT_SECRET to a secret of your own (e.g. \
             `openssl rand -base64 48`)"
                .into(),
        );
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the JWT secret must be at least {MIN_SECRET_LEN} bytes long (it is {})",
            secret.len()
        ));
    }
    Ok(())
}

/// The account behind a request, from its `Authorization: Bearer <access token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub customer_id: String,
    pub role: Role,
    /// The login the token belongs to (its refresh token family), if it names one.
    pub session_id: Option<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// `403` unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Problem::forbidden("this needs the admin role"))
        }
    }

    /// Whether the caller may see what belongs to `customer_id`: its own, or anything for an
    /// admin. Handlers answer `404` when not, so that other customers' ids are not revealed.
    pub fn may_access(&self, customer_id: &str) -> bool {
        self.is_admin() || self.customer_id == customer_id
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "this needs an access token: `Authorization: Bearer <token>` (POST /v1/auth/login)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let claims = state
            .auth
            .keys
            .verify(token, now_secs())
            .map_err(|e| Problem::unauthorized(e.to_string()))?;
        let Some(session) = &claims.sid else {
            return Err(Problem::unauthorized(
                "this token names no login: log in (POST /v1/auth/login) for a token",
            ));
        };
        let ended = state
            .sessions
            .ended(&*state.store, &claims.sub, session)
            .await?;
        if ended {
            return Err(Problem::unauthorized(
                "the login of this token has ended (logged out, or the account was \
                 disabled): log in again",
            ));
        }
        Ok(Caller {
            customer_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_published_secrets_are_refused() {
        assert!(check_secret("short").unwrap_err().contains("32 bytes"));
        for published in PUBLISHED_SECRETS {
            assert!(check_secret(published).unwrap_err().contains("published"));
        }
        assert!(check_secret(&"k".repeat(32)).is_ok());
    }

    #[test]
    fn access_tokens_carry_the_account_role_and_login() {
        let auth = AuthSettings::new(&[7u8; 32]);
        let token = auth.session_token("c1", Role::Admin, "family-1", 1_000);
        let claims = auth.keys.verify(&token, 1_001).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("c1", Role::Admin));
        assert_eq!(claims.sid.as_deref(), Some("family-1"));
        assert_eq!(claims.exp, 1_000 + 15 * 60);
    }
}
