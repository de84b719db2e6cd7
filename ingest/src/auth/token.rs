//! Access tokens: JWTs signed with HMAC-SHA256 (`HS256`), compact form
//! `base64url(header).base64url(claims).base64url(signature)`.
//!
//! Written here on `hmac` + `sha2` (which the bridge already uses) rather than taken from
//! `jsonwebtoken`, whose crypto backends bring RSA, ECDSA and EdDSA we never use. Only `HS256`
//! is accepted: a token naming any other `alg` (`none` included) is refused before its
//! signature is looked at.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Role;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The customer id of the account.
    pub sub: String,
    pub role: Role,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// The issuer: always [`ISSUER`].
    pub iss: String,
    /// The login the token was issued for (its refresh token family): the token stops working
    /// once that login ends (logout, a reused refresh token, the account disabled). Tokens
    /// signed without one (`orderflow load`, tests) are not tied to a login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// The `iss` of every token we sign.
pub const ISSUER: &str = "orderflow";

/// Why a token was refused. Every case is a `401` to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not HS256")]
    Algorithm,
    #[error("the token's signature does not match")]
    Signature,
    #[error("the token has expired")]
    Expired,
}

/// Signs and checks access tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        TokenKeys {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length")
    }

    /// The signed compact JWT for these claims.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        let body =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize to JSON"));
        let signing_input = format!("{header}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// The claims of a token this key signed, if it has not expired at `now` (seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signing_input = &token[..header.len() + 1 + body.len()];
        let header: Header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Malformed);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "c1".into(),
            role: Role::Customer,
            iat: 100,
            exp,
            iss: ISSUER.into(),
            sid: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let keys = TokenKeys::new(b"secret");
        let token = keys.sign(&claims(200));
        assert_eq!(keys.verify(&token, 150).unwrap(), claims(200));
        assert_eq!(keys.verify(&token, 200), Err(TokenError::Expired));
    }

    #[test]
    fn another_key_or_an_edited_token_is_refused() {
        let keys = TokenKeys::new(b"secret");
        let token = keys.sign(&claims(200));
        assert_eq!(
            TokenKeys::new(b"other").verify(&token, 150),
            Err(TokenError::Signature)
        );
        // Make ourselves an admin, keeping the signature.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = claims(200);
        forged.role = Role::Admin;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            keys.verify(&parts.join("."), 150),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn alg_none_and_garbage_are_refused() {
        let keys = TokenKeys::new(b"secret");
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(200)).unwrap());
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert_eq!(keys.verify(&none, 150), Err(TokenError::Algorithm));
        assert_eq!(keys.verify("a.b", 150), Err(TokenError::Malformed));
        assert_eq!(keys.verify("", 150), Err(TokenError::Malformed));
        assert_eq!(keys.verify("x.y.z", 150), Err(TokenError::Malformed));
    }
}
