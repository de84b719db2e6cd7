//! Passwords: argon2id (the `argon2` crate's defaults, OWASP's recommendation: m = 19 MiB,
//! t = 2, p = 1, version 0x13, 16-byte random salt, 32-byte output), stored as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). Hashing is CPU- and memory-bound, so it
//! runs in `spawn_blocking`, never on the async workers.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Shortest password accepted (characters).
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted (characters), so that nobody makes us hash megabytes.
pub const MAX_PASSWORD: usize = 128;

/// The PHC string of `password` with a fresh random salt.
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash too).
pub fn verify_blocking(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// [`hash_blocking`] off the async workers.
pub async fn hash(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| format!("the hashing task failed: {e}"))?
}

/// [`verify_blocking`] off the async workers. With `hash: None` (no such account) a dummy
/// hash is checked instead, so that an unknown email takes as long as a wrong password.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_blocking(&password, &hash),
        None => {
            verify_blocking(&password, dummy_hash());
            false
        }
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("orderflow-dummy-password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_blocking("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_blocking("correct horse", &hash));
        assert!(!verify_blocking("correct horsE", &hash));
        assert!(!verify_blocking("x", "not a phc string"));
        assert_ne!(hash, hash_blocking("correct horse").unwrap(), "salted");
    }
}
