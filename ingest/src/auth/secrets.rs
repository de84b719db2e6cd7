//! Random secrets and their digests: refresh tokens (256 random bits, base64url) and one-time
//! verification codes (6 digits). The store keeps only their SHA-256 (hex).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};

/// A new refresh token: 32 random bytes, base64url without padding (43 characters).
pub fn refresh_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A new 6-digit code, uniformly drawn.
pub fn verification_code() -> Result<String, String> {
    loop {
        let n = getrandom::u32().map_err(|e| format!("no randomness for a code: {e}"))?;
        // Reject the top sliver so every code is equally likely.
        if n < u32::MAX - u32::MAX % 1_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

/// SHA-256 of `value`, hex.
pub fn digest(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stored form of a verification code: bound to its account, so equal codes of two
/// accounts have different digests.
pub fn code_digest(customer_id: &str, code: &str) -> String {
    digest(&format!("{customer_id}:{code}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_codes_have_their_shapes() {
        let t = refresh_token().unwrap();
        assert_eq!(t.len(), 43);
        assert_ne!(t, refresh_token().unwrap());
        let c = verification_code().unwrap();
        assert!(c.len() == 6 && c.chars().all(|c| c.is_ascii_digit()), "{c}");
        assert_eq!(digest("abc").len(), 64);
        assert_ne!(code_digest("a", "123456"), code_digest("b", "123456"));
    }
}
