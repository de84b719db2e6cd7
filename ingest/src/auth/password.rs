//! Passwords: argon2id (the `argon2` crate's defaults, OWASP's recommendation: m = 19 MiB,
//! t = 2, p = 1, version 0x13, 16-byte random salt, 32-byte output), stored as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). Hashing is CPU- and memory-bound, so it
//! runs in `spawn_blocking`, never on the async workers.
//!
//! At most [`max_concurrent`] hashes run at once in the process (twice the CPUs): the others
//! wait for a permit, as futures, before they take a blocking thread. Without the bound a burst
//! of registrations or logins would start up to 512 blocking threads of 19 MiB each, and every
//! hash would finish late instead of most of them on time.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

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

/// How many argon2 computations run at once: twice the CPUs.
pub fn max_concurrent() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(max_concurrent()))
}

/// Runs `work` on the blocking pool once one of `permits` is free.
async fn bounded<T: Send + 'static>(
    permits: &Semaphore,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let _permit = permits
        .acquire()
        .await
        .map_err(|e| format!("no argon2 permit: {e}"))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the hashing task failed: {e}"))
}

/// [`hash_blocking`] off the async workers.
pub async fn hash(password: String) -> Result<String, String> {
    bounded(permits(), move || hash_blocking(&password)).await?
}

/// [`verify_blocking`] off the async workers. With `hash: None` (no such account) a dummy
/// hash is checked instead, so that an unknown email takes as long as a wrong password.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    bounded(permits(), move || match hash {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_permits_run_at_once() {
        use std::sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        };
        let permits = Arc::new(Semaphore::new(3));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (permits, running, most) = (permits.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    bounded(&permits, move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Long enough for the others to pile up behind the permits.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} ran at once");
        assert!(max_concurrent() >= 2);
    }
}
